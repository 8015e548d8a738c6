"""Small models, only W_Q trained (``configs/ablation_small_model.py``): how often does GD end at
a sub-optimal local minimum, per kernel and width d?

Reads the ``minima.json`` that ``python -m experiments.measure minima ROOT`` writes into each
run (the per-seed classes and their checks, :mod:`experiments.minima`) and each run's
``summary.json``; writes ``ablation_small_model.md`` and ``small_model_slice.png`` (the loss
along slices through the highest stuck minimum of each kernel) into ROOT.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from matplotlib.figure import Figure

from experiments.analyses import cells as cells_lib
from experiments.analyses import plots, tables
from experiments.analyses.cells import Outcomes, field_of

CLASSES = ("global", "stuck", "saddle", "moving", "near_global", "diverged")  # minima.CLASSES
CRITERION = (
    "A seed is **global** when its final loss (float64, at the checkpoint) is at most "
    "`baseline_threshold` x the best constant predictor's loss (the run's baseline-relative "
    "criterion), and **stuck** at a sub-optimal local minimum only when all three checks hold: "
    "gradient near zero (norm <= {grad:g} and Newton step ||H⁻¹g|| <= {newton:g} x (1 + ||W_Q||)), "
    "Hessian w.r.t. W_Q positive definite (smallest eigenvalue > {eig:g} x the largest "
    "magnitude, float64) and the minimum's loss >= {margin:g} x the global threshold. The others: "
    "saddle (stationary, Hessian not positive definite), moving (gradient or Newton step too "
    "large: still descending or on a plateau), near_global (a minimum below the margin), "
    "diverged.\n\n"
)


def read_minima(run: Outcomes) -> dict | None:
    path = run.path / "minima.json"
    return json.loads(path.read_text()) if path.exists() else None


def group_key(cell: Outcomes) -> tuple[str, int]:
    return str(field_of(cell, "model.kernel")), int(field_of(cell, "model.dim"))


def pooled_seeds(measured: list[dict]) -> list[dict]:
    """Every seed record of the runs, with its loss relative to its run's baseline."""
    return [
        {**s, "relative_loss": s["loss"] / m["baseline_loss"], "global_level": m["global_level"]}
        for m in measured
        for s in m["seeds"]
    ]


def checks_of(stuck: list[dict]) -> dict:
    """The worst case of each check over the stuck seeds (what the criterion had to accept)."""
    if not stuck:
        return {k: "–" for k in ("max grad norm", "max Newton step", "min λmin/λmax")}
    return {
        "max grad norm": tables.fmt(max(s["grad_norm"] for s in stuck), 2),
        "max Newton step": tables.fmt(max(s["newton_step"] for s in stuck), 2),
        "min λmin/λmax": tables.fmt(min(s["eig_min"] / s["eig_max"] for s in stuck), 2),
    }


def frequency_row(kernel: str, dim: int, runs: list[Outcomes], measured: list[dict]) -> dict:
    """Counts per class over the runs (data draws) of one kernel x d, the stuck fraction with
    each draw's count, the loss of the stuck minima and the checks they passed."""
    seeds = pooled_seeds(measured)
    counts = {c: sum(s["class"] == c for s in seeds) for c in CLASSES}
    stuck = [s for s in seeds if s["class"] == "stuck"]
    per_draw = " / ".join(str(m["counts"]["stuck"]) for m in measured)
    reached = sum(int(np.sum([x["steps_to_baseline"] is not None for x in r.summary["seeds"]]))
                  for r in runs)  # fmt: skip
    row = {"kernel": kernel, "d": dim, "draws": len(runs), "seeds": len(seeds)}
    row.update({c: counts[c] for c in CLASSES})
    row["stuck fraction"] = tables.fmt(counts["stuck"] / max(len(seeds), 1), 2)
    row["stuck per draw"] = per_draw
    row["stuck loss / baseline: median [min, max]"] = tables.quantiles(
        np.array([s["relative_loss"] for s in stuck], float)
    )
    row.update(checks_of(stuck))
    row["reached baseline criterion (summary.json)"] = f"{reached}/{len(seeds)}"
    return row


def cell_row(run: Outcomes, m: dict) -> dict:
    """One run (kernel, d, data draw): its baseline, the teacher's loss and the class counts."""
    return {
        "cell": run.name,
        "baseline loss": tables.fmt(m["baseline_loss"]),
        "teacher loss": tables.fmt(m["teacher_loss"], 2),
        **{c: m["counts"][c] for c in CLASSES},
    }


def slice_choice(groups: dict, kernel: str) -> tuple[int, Outcomes, dict] | None:
    """The kernel's run with the most stuck seeds (ties: the smaller d): ``(d, run, minima)``."""
    best = None
    for (k, dim), members in sorted(groups.items()):
        for run, m in members:
            if k == kernel and "slice" in m:
                score = (m["counts"]["stuck"], -dim)
                if best is None or score > best[0]:
                    best = (score, dim, run, m)
    return None if best is None else best[1:]


def slice_figure(chosen: dict[str, tuple[int, Outcomes, dict]], path: pathlib.Path) -> None:
    """Per kernel: loss / baseline along the line from the stuck minimum (t = 0) to the
    teacher's W_Q (t = 1, zero loss), and along the Hessian's softest direction."""
    fig = Figure(figsize=(4.2 * max(len(chosen), 1), 6.4))
    if not chosen:
        fig.text(0.5, 0.5, "no stuck seed in any run", ha="center")
        fig.savefig(path, dpi=90)
        return
    axes = fig.subplots(2, len(chosen), squeeze=False)
    for col, (kernel, (dim, run, m)) in enumerate(chosen.items()):
        sl, base, level = m["slice"], m["baseline_loss"], m["global_level"]
        draw = field_of(run, "data.seed")
        for row, (x, y, label) in enumerate(
            (
                (sl["t"], sl["loss_to_teacher"], "t: stuck W_Q (0) -> teacher's W_Q (1)"),
                (sl["s"], sl["loss_softest"], "s: along the softest Hessian direction"),
            )
        ):
            ax = axes[row, col]
            ax.plot(x, np.maximum(np.asarray(y) / base, 1e-16), color=plots.color(col), lw=1.3)
            ax.axhline(level / base, color="gray", lw=0.8, ls="--", label="global threshold")
            ax.axvline(0.0, color="black", lw=0.6, ls=":")
            if row == 0:
                ax.axvline(1.0, color="tab:green", lw=0.6, ls=":")
                ax.set_title(f"{kernel}, d={dim}, draw {draw}, seed {sl['seed']}", fontsize=9)
            ax.set_yscale("log")
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("loss / baseline", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def small_model(root: pathlib.Path) -> str:
    """Small Q-only models: global / stuck at a sub-optimal minimum / other, per kernel x d."""
    runs = cells_lib.load_all(root)
    groups: dict[tuple[str, int], list[tuple[Outcomes, dict]]] = {}
    missing = 0
    for run in runs:
        m = read_minima(run)
        missing += m is None
        if m is not None:
            groups.setdefault(group_key(run), []).append((run, m))
    text = tables.header("Ablation: small models, only W_Q trained", root, runs)
    if missing:
        text += (
            f"({missing} run(s) not measured yet: `python -m experiments.measure minima "
            f"{root}` writes their minima.json.)\n\n"
        )
    if not groups:
        return tables.write(root, "small_model", text)
    tol = next(iter(groups.values()))[0][1]["tolerances"]
    text += "## Stuck at a sub-optimal local minimum, per kernel x d\n\n" + CRITERION.format(**tol)
    rows = [
        frequency_row(k, d, [r for r, _ in members], [m for _, m in members])
        for (k, d), members in groups.items()
    ]
    text += tables.markdown(rows)
    text += "\n## Per run (data draw)\n\n"
    text += tables.markdown([cell_row(r, m) for members in groups.values() for r, m in members])
    kernels = list(dict.fromkeys(k for k, _ in groups))
    chosen = {k: c for k in kernels if (c := slice_choice(groups, k)) is not None}
    slice_figure(chosen, root / "small_model_slice.png")
    text += (
        "\n## A loss slice through a stuck minimum\n\nPer kernel, the run with the most stuck "
        "seeds and in it the stuck seed of highest loss; top: along the line to the teacher's "
        "W_Q (t = 1, zero loss), bottom: along the softest eigen-direction of the Hessian, "
        "scaled to the same distance. Kernels without a stuck seed have no panel.\n\n"
        "![loss slice](small_model_slice.png)\n"
    )
    return tables.write(root, "small_model", text)
