"""Quantities computed from a finished run's checkpoints, written into its run directory.

    python -m experiments.measure sharpness RUNDIR [--iters 300] [--tol 1e-5] [--force]
    python -m experiments.measure minima RUNDIR [--force]
    python -m experiments.measure positions RUNDIR [--force]

RUNDIR is one run or a sweep root (every finished run under it is measured). ``sharpness``
writes ``sharpness.json`` into each run directory: the top Hessian eigenvalue of the training
loss w.r.t. the *trained* parameters (power iteration on Hessian-vector products, frozen
matrices held fixed), per seed at the last checkpoint (``final``), and for
``student_teacher_regression`` runs also at the teacher's W_Q, a zero-loss minimum
(``teacher``, with the loss there, ``teacher_loss``). A run that already has the file is skipped
unless ``--force``. ``minima`` writes ``minima.json`` (Q-only runs): per seed, global optimum,
sub-optimal local minimum or neither, from the gradient and the float64 Hessian w.r.t. W_Q
(:mod:`experiments.minima`). ``positions`` writes ``positions.npz`` (encoder runs): each seed's
position features at positions 0 .. 2L-1, L the training length
(:mod:`experiments.position_features`). The analyses (``python -m experiments.analyses``) only read
these files.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import ml_collections
from absl import flags

from experiments import cli, rundirs

SHARPNESS_ITERS = 300  # power iterations per estimate (each stops earlier once converged)
SHARPNESS_TOL = 1e-5


def problem(run_config, loss_batches: int = 1):
    """``(model, jitted loss(params) -> scalar on fixed batches, init params [seeds], mask)``.

    The loss is the training objective on the first ``loss_batches`` training batches (the
    whole data set for full-batch configs); ``mask`` marks the trained leaves of one seed's
    parameters.
    """
    import jax

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
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a: jnp.asarray(a[index]), stacked)


def sharpness(
    run_dir: pathlib.Path, *, num_iters: int = SHARPNESS_ITERS, tol: float = SHARPNESS_TOL
) -> dict:
    """The figures of ``sharpness.json`` for one finished run (see the module docstring)."""
    import jax

    from attn_dynamics import diagnostics
    from attn_dynamics.data import student_teacher
    from experiments import checkpointing

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


def positions(run_dir: pathlib.Path) -> pathlib.Path:
    """Position features past the training length (:mod:`experiments.position_features`)."""
    from experiments import position_features

    return position_features.write(run_dir)


MEASURES = {"sharpness": sharpness, "minima": minima, "positions": positions}
OUTPUTS = {"positions": "positions.npz"}  # the others write <measure>.json


def measure_runs(
    root: pathlib.Path, what: str = "sharpness", *, force: bool = False, **options
) -> list[pathlib.Path]:
    """Writes ``<what>.json`` into every finished run under ``root`` that lacks it (all of them
    with ``force``); returns the files written. ``options`` go to the measure function."""
    written = []
    for run_dir in finished_runs(pathlib.Path(root)):
        out = run_dir / OUTPUTS.get(what, f"{what}.json")
        if out.exists() and not force:
            continue
        result = MEASURES[what](run_dir, **options)
        if out.suffix == ".json":
            out.write_text(json.dumps(result) + "\n")
        written.append(out)
    return written


PROG = "python -m experiments.measure"


@dataclasses.dataclass(frozen=True)
class MeasureFlags:
    iters: flags.FlagHolder
    tol: flags.FlagHolder
    force: flags.FlagHolder


def define_flags(fv: flags.FlagValues) -> MeasureFlags:
    return MeasureFlags(
        iters=flags.DEFINE_integer(
            "iters", SHARPNESS_ITERS, "sharpness: power iterations per estimate.", flag_values=fv
        ),
        tol=flags.DEFINE_float(
            "tol", SHARPNESS_TOL, "sharpness: relative tolerance that ends them.", flag_values=fv
        ),
        force=flags.DEFINE_boolean(
            "force", False, "Recompute runs that already have the file.", flag_values=fv
        ),
    )


def usage(prog: str = PROG, *, full: bool = False) -> str:
    fv = flags.FlagValues()
    define_flags(fv)
    return cli.help_text(
        f"usage: {prog} {{{'|'.join(sorted(MEASURES))}}} RUNDIR [--iters=N] [--tol=X] [--force]",
        "Compute quantities from finished runs' checkpoints into their run directories "
        "(RUNDIR: one run or a sweep root; every finished run under it): sharpness writes "
        "sharpness.json (top Hessian eigenvalue per seed), minima writes minima.json (Q-only "
        "runs: global optimum, sub-optimal local minimum or neither), positions writes "
        "positions.npz (encoder runs: position features at positions 0 .. 2L-1). The analyses "
        "(python -m experiments.analyses) read these files.",
        cli.flag_rows(fv),
        epilog="exit status: 0 written (or nothing left to measure); 2 bad input or no finished "
        "run under RUNDIR (one line on stderr).",
        full=full,
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``argv``: the arguments after the program name (``['sharpness', 'runs/x']``)."""
    argv = sys.argv[1:] if argv is None else argv
    if kind := cli.help_requested(argv):
        print(usage(prog, full=kind == "full"), end="")
        sys.exit(0)
    fv = flags.FlagValues()
    f = define_flags(fv)
    args = cli.parse(fv, [prog, *argv])
    if len(args) != 2 or args[0] not in MEASURES:
        cli.fail(f"expected MEASURE RUNDIR with MEASURE one of {sorted(MEASURES)}, got {args}")
    if f.iters.value < 1 or not f.tol.value > 0:
        cli.fail(f"--iters must be >= 1 and --tol > 0, got {f.iters.value} and {f.tol.value}")
    what, rundir = args[0], pathlib.Path(args[1])
    if not rundir.is_dir():
        return cli.error(f"run directory {str(rundir)!r} does not exist")
    try:
        if not finished_runs(rundir):
            raise FileNotFoundError(f"no finished run (summary.json) under {str(rundir)!r}")
        options = {"num_iters": f.iters.value, "tol": f.tol.value} if what == "sharpness" else {}
        written = measure_runs(rundir, what, force=f.force.value, **options)
    except (rundirs.RunDirError, FileNotFoundError) as e:
        return cli.error(e)
    for path in written:
        print(f"{path}: {path.read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
