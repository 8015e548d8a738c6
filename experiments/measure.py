"""Quantities computed from a finished run's checkpoints, written into its run directory.

    python -m experiments.measure sharpness RUNDIR [--iters 300] [--tol 1e-5] [--force]
    python -m experiments.measure minima RUNDIR [--force]

RUNDIR is one run or a sweep root (every finished run under it is measured). ``sharpness``
writes ``sharpness.json`` into each run directory: the top Hessian eigenvalue of the training
loss w.r.t. the *trained* parameters (power iteration on Hessian-vector products, frozen
matrices held fixed), per seed at the last checkpoint (``final``), and for
``student_teacher_regression`` runs also at the teacher's W_Q, a zero-loss minimum
(``teacher``, with the loss there, ``teacher_loss``). A run that already has the file is skipped
unless ``--force``. ``minima`` writes ``minima.json`` (Q-only runs): per seed, global optimum,
sub-optimal local minimum or neither, from the gradient and the float64 Hessian w.r.t. W_Q
(:mod:`experiments.minima`). The analyses (``python -m experiments.analyses``) only read
these files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections

from experiments import checkpointing, rundirs

SHARPNESS_ITERS = 300  # power iterations per estimate (each stops earlier once converged)
SHARPNESS_TOL = 1e-5


def problem(run_config, loss_batches: int = 1):
    """``(model, jitted loss(params) -> scalar on fixed batches, init params [seeds], mask)``.

    The loss is the training objective on the first ``loss_batches`` training batches (the
    whole data set for full-batch configs); ``mask`` marks the trained leaves of one seed's
    parameters.
    """
    from attn_dynamics import data, freezing
    from experiments import train

    ds = data.get_dataset(run_config.data, mesh=None)
    model = train.build_model(run_config, ds.info)
    batches = [ds.train_batch(i) for i in range(loss_batches)]
    example = train.example_inputs(model, batches[0])
    init = train.init_params(model, tuple(run_config.seeds), example)
    loss_of_batch = train.make_loss(model, ds.info["task"])
    rng = jax.random.key(0)  # dropout is off in these configs; the key is a placeholder

    def loss(params):
        values = [loss_of_batch(params, b, rng)[0] for b in batches]
        return sum(values) / len(values)

    spec, layers = train.trainable_spec(run_config.train)
    mask = freezing.trainable_mask(jax.tree.map(lambda a: a[0], init), spec, layers)
    return model, jax.jit(loss), init, mask


def seed_params(stacked, index: int):
    """One seed's parameters from a tree with a leading seed axis."""
    return jax.tree.map(lambda a: jnp.asarray(a[index]), stacked)


def sharpness(
    run_dir: pathlib.Path, *, num_iters: int = SHARPNESS_ITERS, tol: float = SHARPNESS_TOL
) -> dict:
    """The figures of ``sharpness.json`` for one finished run (see the module docstring)."""
    from attn_dynamics import diagnostics
    from attn_dynamics.data import student_teacher

    config = ml_collections.ConfigDict(rundirs.read_config(run_dir))
    _, loss, init, mask = problem(config)
    trained = checkpointing.load_params(run_dir)

    def top(params, i: int) -> float:
        lam, _ = diagnostics.sharpness(
            loss, params, mask, jax.random.key(i), num_iters=num_iters, tol=tol
        )
        return float(lam)

    out: dict = {"power_iterations": num_iters, "tol": tol}
    out["final"] = [top(seed_params(trained, i), i) for i in range(len(config.seeds))]
    if config.data.name == "student_teacher_regression":
        params = seed_params(init, 0)
        params["attention"]["query"]["kernel"] = student_teacher.teacher_query(config.data)
        out["teacher"] = [top(params, 0)]
        out["teacher_loss"] = [float(loss(params))]
    return out


def finished_runs(root: pathlib.Path) -> list[pathlib.Path]:
    """The run directories under ``root`` (``root`` itself if it is one) that have ended."""
    cells = rundirs.list_cells(root)
    return [c.path for c in cells if rundirs.read_summary(c.path) is not None]


def minima(run_dir: pathlib.Path) -> dict:
    """Global optimum, sub-optimal local minimum or neither per seed (:mod:`experiments.minima`)."""
    from experiments import minima as minima_lib

    return minima_lib.minima(run_dir)


MEASURES = {"sharpness": sharpness, "minima": minima}


def measure_runs(
    root: pathlib.Path, what: str = "sharpness", *, force: bool = False, **options
) -> list[pathlib.Path]:
    """Writes ``<what>.json`` into every finished run under ``root`` that lacks it (all of them
    with ``force``); returns the files written. ``options`` go to the measure function."""
    written = []
    for run_dir in finished_runs(pathlib.Path(root)):
        out = run_dir / f"{what}.json"
        if out.exists() and not force:
            continue
        out.write_text(json.dumps(MEASURES[what](run_dir, **options)) + "\n")
        written.append(out)
    return written


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.measure",
        description="Compute quantities from finished runs' checkpoints into their run dirs.",
    )
    parser.add_argument("measure", choices=sorted(MEASURES), help="what to compute")
    parser.add_argument("rundir", type=pathlib.Path, help="a run directory or a sweep root")
    parser.add_argument("--iters", type=int, default=SHARPNESS_ITERS, help="power iterations")
    parser.add_argument("--tol", type=float, default=SHARPNESS_TOL, help="relative tolerance")
    parser.add_argument("--force", action="store_true", help="recompute existing files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.rundir.is_dir():
        print(f"error: run directory {str(args.rundir)!r} does not exist", file=sys.stderr)
        return 2
    try:
        if not finished_runs(args.rundir):
            raise FileNotFoundError(f"no finished run (summary.json) under {str(args.rundir)!r}")
        options = {"num_iters": args.iters, "tol": args.tol} if args.measure == "sharpness" else {}
        written = measure_runs(args.rundir, args.measure, force=args.force, **options)
    except (rundirs.RunDirError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"{path}: {path.read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
