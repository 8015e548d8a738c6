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

CLASSES = ("global", "stuck", "saddle", "moving", "low_minimum", "diverged")  # minima's
CRITERION = (
    "A seed is **global** when its final loss (float64, at the checkpoint) is at most "
    "`baseline_threshold` x the best constant predictor's loss (the run's baseline-relative "
    "criterion), and **stuck** at a sub-optimal local minimum only when all three checks hold: "
    "gradient near zero (norm <= {grad:g} and Newton step ||H⁻¹g|| <= {newton:g} x (1 + ||W_Q||)), "
    "Hessian w.r.t. W_Q positive definite (smallest eigenvalue > {eig:g} x the largest "
    "magnitude, float64) and the minimum's loss >= {margin:g} x the global threshold. The others: "
    "saddle (stationary, Hessian not positive definite), moving (gradient or Newton step too "
    "large: still descending or on a plateau), low_minimum (a minimum by the first two checks "
    "whose loss lies between the threshold and the margin: sub-optimal, not well above), "
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
    moving = np.array([s["relative_loss"] for s in seeds if s["class"] == "moving"], float)
    row["moving loss / baseline: median [min, max]"] = tables.quantiles(moving)
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


CLASS_COLORS = {"global": "tab:green", "stuck": "tab:red", "low_minimum": "tab:orange"}


def landscape_panel(ax, members: list[tuple[Outcomes, dict]]) -> None:
    """d = 1: loss / baseline over W_Q per data draw, the teacher's W_Q dashed, and the final
    W_Q of every seed as a tick coloured by its class (grey: the other classes)."""
    for i, (run, m) in enumerate(members):
        scan = m["scan"]
        y = np.maximum(np.asarray(scan["loss"]) / m["baseline_loss"], 1e-16)
        ax.plot(
            scan["w"], y, color=plots.color(i), lw=1.2, label=f"draw {field_of(run, 'data.seed')}"
        )
        ax.axvline(m["teacher_w_q"][0], color=plots.color(i), lw=0.8, ls="--")
        final = np.array([s["w_q"][0] for s in m["seeds"]])
        colors = [CLASS_COLORS.get(s["class"], "gray") for s in m["seeds"]]
        row = np.full(len(final), 0.03 + 0.05 * i)  # a rug per draw, in axes height
        ax.scatter(final, row, marker="|", s=40, c=colors, transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=2.0)  # the basins near 0 linear, far-out seeds still shown
    ax.set_xlabel("W_Q (d = 1, symlog); dashed: teacher; ticks: seeds' final W_Q", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")


def slice_panel(ax, chosen, key: str, label: str) -> None:
    """The loss / baseline along one of the recorded slices of the chosen stuck seed."""
    if chosen is None:
        ax.text(0.5, 0.5, "no stuck seed", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([]), ax.set_yticks([])
        return
    dim, run, m = chosen
    sl = m["slice"]
    x = sl["t"] if key == "loss_to_teacher" else sl["s"]
    ax.plot(x, np.maximum(np.asarray(sl[key]) / m["baseline_loss"], 1e-16), color="tab:red")
    ax.axhline(m["global_level"] / m["baseline_loss"], color="gray", lw=0.8, ls="--")
    ax.axvline(0.0, color="black", lw=0.6, ls=":")
    if key == "loss_to_teacher":
        ax.axvline(1.0, color="tab:green", lw=0.6, ls=":")
    draw = field_of(run, "data.seed")
    ax.set_title(f"d={dim}, draw {draw}, seed {sl['seed']}", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel(label, fontsize=8)


def slice_figure(groups: dict, kernels: list[str], path: pathlib.Path) -> None:
    """One column per kernel. Top: the d = 1 landscape. Middle: loss along the line from the
    highest stuck minimum (t = 0) to the teacher's W_Q (t = 1, zero loss). Bottom: along the
    Hessian's softest eigen-direction at that minimum (s = 0), scaled to the same distance."""
    fig = Figure(figsize=(4.0 * len(kernels), 8.4))
    axes = fig.subplots(3, len(kernels), squeeze=False)
    for col, kernel in enumerate(kernels):
        flat = [(r, m) for (k, d), ms in groups.items() if k == kernel and d == 1 for r, m in ms]
        if flat and all("scan" in m for _, m in flat):
            landscape_panel(axes[0, col], flat)
        axes[0, col].set_title(kernel, fontsize=10)
        chosen = slice_choice(groups, kernel)
        slice_panel(axes[1, col], chosen, "loss_to_teacher", "t: stuck W_Q (0) -> teacher's (1)")
        slice_panel(axes[2, col], chosen, "loss_softest", "s: softest Hessian direction")
    for row in range(3):
        axes[row, 0].set_ylabel("loss / baseline", fontsize=8)
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
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
    text += tables.runtime(runs)
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
    slice_figure(groups, kernels, root / "small_model_slice.png")
    text += (
        "\n## Loss slices through stuck minima\n\nOne column per kernel. Top: for d = 1 the "
        "whole landscape in W_Q per data draw (dashed: the teacher's W_Q; ticks: every seed's "
        "final W_Q, green global, red stuck, orange low minimum). Middle and bottom: in the "
        "kernel's run with the most stuck seeds, the stuck seed of highest loss: the loss along "
        "the line to the teacher's W_Q (t = 1, zero loss) and along the softest eigen-direction "
        "of its Hessian, scaled to the same distance; dashed: the global threshold.\n\n"
        "![loss slices](small_model_slice.png)\n"
    )
    return tables.write(root, "small_model", text)
