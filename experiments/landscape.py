"""2-D loss landscapes and sharpness around trained weights, one per attention kernel.

    python -m experiments.landscape --config=configs/landscape.py --workdir=runs/landscape
    python -m experiments.landscape --config=configs/landscape.py:theory --workdir=runs/ls_th

For every kernel of ``config.kernels``: train ``config.run`` with that kernel into
``WORKDIR/kernel=<name>`` (``train.train_and_evaluate``; a finished run is reused, an
unfinished one resumes), load the final parameters of seed ``config.seed_index`` from its
checkpoint, and evaluate the training loss (``config.loss_batches`` fixed training batches) on
the grid ``theta + a d1 + b d2``, ``a, b`` in ``[-grid_range, grid_range]``, with ``d1, d2``
random filter-normalised directions (Li et al. 2018) over the trained parameters: the same
random draw for every kernel, each normalised to its own weights. Also the top Hessian
eigenvalue (power iteration on Hessian-vector products) at initialisation and after training.

Writes into WORKDIR: ``landscape.npz`` (grids and surfaces), ``landscape.json`` (figures),
``landscape.md`` (table), ``landscape_contour.png``, ``landscape_surface.png``.
"""

from __future__ import annotations

import copy
import json
import pathlib
import sys
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli, rundirs, validation
from experiments import run as run_cli

DEFAULT_WORKDIR = "runs/landscape"


def is_finished(workdir: pathlib.Path) -> bool:
    summary = rundirs.read_summary(workdir) if (workdir / rundirs.CONFIG).exists() else None
    return summary is not None and summary.get("status") in ("done", "diverged")


def analyse_kernel(config, kernel: str, root: pathlib.Path) -> dict:
    import jax

    from attn_dynamics import diagnostics
    from experiments import checkpointing, measure, train

    run = copy.deepcopy(config.run)
    run.model.kernel = kernel
    if kernel in config.get("sigma2", {}):
        run.model.sigma2 = float(config.sigma2[kernel])
    workdir = root / f"kernel={kernel}"
    t0 = time.time()
    if not is_finished(workdir):
        train.train_and_evaluate(run, workdir)
    train_seconds = time.time() - t0
    summary = rundirs.read_summary(workdir)
    _, loss, init, mask = measure.problem(run, int(config.loss_batches))
    params = measure.seed_params(checkpointing.load_params(workdir), config.seed_index)
    step = checkpointing.latest_step(workdir)
    init_params = measure.seed_params(init, config.seed_index)

    t1 = time.time()
    k1, k2, k3 = jax.random.split(jax.random.key(config.direction_seed), 3)
    d1 = diagnostics.filter_normalized_direction(k1, params, mask)
    d2 = diagnostics.filter_normalized_direction(k2, params, mask)
    grid = np.linspace(-config.grid_range, config.grid_range, config.grid_points)
    surface = np.asarray(
        diagnostics.loss_surface(loss, params, d1, d2, grid, grid, chunk=config.chunk)
    )
    surface_seconds = time.time() - t1

    t2 = time.time()
    sharp = {}  # w.r.t. the trained parameters (frozen ones held fixed)
    for name, p in (("init", init_params), ("trained", params)):
        lam, iters = diagnostics.sharpness(
            loss, p, mask, k3, num_iters=config.hessian_iters, tol=config.hessian_tol
        )
        sharp[name] = (float(lam), int(iters))
    hessian_seconds = time.time() - t2

    evaluation = summary.get("evaluation", {})
    acc = {s: float(np.mean(v["accuracy"])) for s, v in evaluation.items() if "accuracy" in v}
    return {
        "kernel": kernel,
        "workdir": str(workdir),
        "checkpoint_step": step,
        "loss_at_center": float(surface[config.grid_points // 2, config.grid_points // 2]),
        "surface_min": float(surface.min()),
        "surface_max": float(surface.max()),
        "surface_mean": float(surface.mean()),
        "sharpness_init": sharp["init"][0],
        "sharpness_trained": sharp["trained"][0],
        "power_iterations": [sharp["init"][1], sharp["trained"][1]],
        "final_train_loss": summary.get("final_loss"),
        "eval_accuracy": acc,
        "train_seconds": float(summary.get("wall_seconds", train_seconds)),
        "surface_seconds": surface_seconds,
        "hessian_seconds": hessian_seconds,
        "grid": grid,
        "surface": surface,
    }


def plot(results: list[dict], root: pathlib.Path) -> None:
    """Contours and 3-D surfaces, on ``Figure`` objects (a notebook's backend is left alone)."""
    from matplotlib.figure import Figure

    surfaces = [r["surface"] for r in results]
    lo = min(float(s.min()) for s in surfaces)
    hi = max(float(np.percentile(s, 98)) for s in surfaces)
    levels = np.geomspace(max(lo, 1e-6), max(hi, lo * 1.01 + 1e-6), 16)

    fig = Figure(figsize=(3.9 * len(results), 3.6))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        g = r["grid"]
        cs = ax.contour(g, g, r["surface"].T, levels=levels, cmap="viridis", linewidths=0.9)
        ax.clabel(cs, fontsize=6, fmt="%.2g")
        ax.plot([0], [0], "r+", ms=8)
        ax.set_title(f"{r['kernel']}: sharpness {r['sharpness_trained']:.3g}", fontsize=8)
        ax.set_xlabel("direction 1 (filter-normalised)")
        ax.set_ylabel("direction 2")
    fig.tight_layout()
    fig.savefig(root / "landscape_contour.png", dpi=90)

    fig = Figure(figsize=(4.6 * len(results), 4.0))
    for i, r in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1, projection="3d")
        a, b = np.meshgrid(r["grid"], r["grid"], indexing="ij")
        z = np.minimum(r["surface"], hi)
        ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_zlim(min(lo, float(z.min())), hi)
        ax.set_title(r["kernel"], fontsize=9)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(root / "landscape_surface.png", dpi=80)


def table(results: list[dict], config) -> str:
    cols = [
        "kernel",
        "final train loss",
        "eval accuracy",
        "loss at centre",
        "surface mean",
        "surface max",
        "sharpness at init",
        "sharpness trained",
        "train s",
        "surface s",
        "hessian s",
    ]
    lines = [
        f"# Loss landscape, {len(results)} kernels\n",
        f"Grid {config.grid_points}x{config.grid_points} over [-{config.grid_range}, "
        f"{config.grid_range}]^2 along two filter-normalised random directions (direction seed "
        f"{config.direction_seed}); training loss on {config.loss_batches} fixed batch(es); "
        "sharpness = largest Hessian eigenvalue of that loss w.r.t. the trained parameters "
        "(power iteration on Hessian-vector products; at initialisation the Hessian can be "
        "indefinite, and this is its largest positive eigenvalue).\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in results:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in r["eval_accuracy"].items()) or "–"
        final = r["final_train_loss"]
        vals = [
            r["kernel"],
            "–" if final is None else f"{final:.4g}",
            acc,
            f"{r['loss_at_center']:.4g}",
            f"{r['surface_mean']:.4g}",
            f"{r['surface_max']:.4g}",
            f"{r['sharpness_init']:.4g}",
            f"{r['sharpness_trained']:.4g}",
            f"{r['train_seconds']:.0f}",
            f"{r['surface_seconds']:.0f}",
            f"{r['hessian_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(vals) + " |")
    lines.append("\n![contours](landscape_contour.png)\n![surfaces](landscape_surface.png)\n")
    return "\n".join(lines)


def run(config, root: pathlib.Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    results = [analyse_kernel(config, k, root) for k in config.kernels]
    np.savez(
        root / "landscape.npz",
        grid=results[0]["grid"],
        **{f"surface_{r['kernel']}": r["surface"] for r in results},
    )
    (root / "landscape.json").write_text(
        json.dumps(
            [{k: v for k, v in r.items() if k not in ("grid", "surface")} for r in results],
            indent=2,
        )
        + "\n"
    )
    plot(results, root)
    text = table(results, config)
    (root / "landscape.md").write_text(text)
    return text


def usage(argv: list[str] | None = None, *, full: bool = False) -> str:
    prog = cli.program(argv, "landscape")
    fv = flags.FlagValues()
    run_cli.define_flags(fv, [prog])
    return cli.help_text(
        f"usage: {prog} --config=FILE[:VARIANT] [--config.FIELD=VALUE ...] [--workdir=DIR]",
        "For every kernel of config.kernels: train config.run with it into "
        "WORKDIR/kernel=<name> (a finished run is reused, an unfinished one resumes), then "
        "evaluate the training loss on a 2-D grid along two filter-normalised random "
        "directions around the trained weights, and the top Hessian eigenvalue at "
        "initialisation and after training. Writes landscape.npz, landscape.json, "
        "landscape.md and the contour and surface PNGs into WORKDIR.",
        [*run_cli.config_rows(), ("--workdir=DIR", f"Output directory ({DEFAULT_WORKDIR}).")],
        epilog=f"e.g. {prog} --config=landscape:theory --workdir=runs/ls_th\n\n"
        "exit status: 0 written; 2 bad input (one line on stderr).",
        full=full,
    )


def parse(argv: list[str]):
    """``(config, workdir)``: the landscape config (its ``config.run`` validated), or exit 2
    with one line, before JAX is imported."""
    argv, _ = run_cli.with_resolved_config(argv)
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "configs/landscape.py[:args]", flag_values=fv, lock_config=True,
        sys_argv=argv,
    )  # fmt: skip
    workdir = flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Output directory.", flag_values=fv)
    config, rest = run_cli.parse_config(fv, holder, argv)
    if rest:
        cli.fail(f"unexpected argument {rest[0]!r}; flags are --name=value (see --help)")
    if "run" not in config or "kernels" not in config:
        cli.fail("not a landscape config (it needs config.run and config.kernels), e.g. "
                 "--config=landscape")  # fmt: skip
    try:
        for kernel in config.kernels:  # each kernel's run, as analyse_kernel trains it
            cell = copy.deepcopy(config.run)
            cell.model.kernel = kernel
            validation.validate(cell)
    except validation.ConfigError as e:
        cli.fail(e)
    return config, pathlib.Path(workdir.value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if kind := cli.help_requested(argv[1:]):
        print(usage(argv, full=kind == "full"), end="")
        return 0
    config, workdir = parse(argv)
    print(run(config, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
