"""The theory ablations: which cells reach eps, how fast, and what at initialisation predicts it.

* :func:`kernel_subsets` -- kernel x trainable subset (``configs/ablation_kernel_subsets.py``,
  ``configs/ablation_init_scale.py``);
* :func:`q_only` -- only W_Q trained on realisable targets, one run per seed pooled per cell
  (``configs/ablation_q_only.py``); its sharpness table reads the ``sharpness.json`` that
  ``python -m experiments.measure sharpness ROOT`` writes into each run;
* :func:`overparam` -- width d relative to n*N (``configs/ablation_overparam.py``).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from experiments.analyses import cells as cells_lib
from experiments.analyses import comparisons, plots, tables
from experiments.analyses.cells import Outcomes, field_of, short_key

INIT_INTRO = (
    "Medians of the step-0 quantities among seeds that reached eps (conv.) and those that did "
    "not (for σmin(Φ) also split by the baseline criterion), over the seeds of every draw; ρ is "
    "the Spearman rank correlation over those seeds of the quantity with log(final/initial "
    "loss) (negative: larger values, lower final loss).\n\n"
)
OUTCOME_INTRO = (
    "Seeds reaching each criterion (pooled over draws; 'per draw': draw by draw), median steps "
    "to it, final loss relative to the initial loss and to the baseline loss (median [min, max] "
    "over the seeds that did not diverge), diverged seeds.\n\n"
)
FIGURES = (
    "\n![init vs convergence](init_vs_convergence.png)\n"
    "![final loss](final_loss_distribution.png)\n![loss curves](loss_curves.png)\n"
)


def kernel_subsets(root: pathlib.Path) -> str:
    """Kernel x trainable subset: outcome table, init quantities vs convergence, plots."""
    from experiments import report

    runs = cells_lib.load_all(root)
    cells = cells_lib.merge_draws(runs)
    plots.init_scatter(
        cells,
        root / "init_vs_convergence.png",
        panel_field="train.trainable",
        color_field="model.kernel",
    )
    plots.final_loss(cells, root / "final_loss_distribution.png")
    report.write_report(root)  # report.md and loss_curves.png, the runner's standard view
    text = tables.header("Ablation: kernel x trainable subset", root, cells)
    text += tables.runtime(runs)
    text += "## Outcome per cell\n\n" + OUTCOME_INTRO
    text += tables.markdown([tables.outcome_row(c) for c in cells]) + tables.teacher_rows(cells)
    text += draws_section(cells)
    comparison, figures = kernel_comparison_section(cells)
    text += comparison + stall_section(cells)
    text += "\n## Initialisation vs convergence\n\n" + INIT_INTRO
    text += tables.markdown([tables.init_row(c) for c in cells]) + FIGURES
    return tables.write(root, "kernel_subsets", text, figures)


def draws_section(cells: list[Outcomes]) -> str:
    return (
        "\n## Data draws\n\nPer kernel and draw, median [min, max] over the seeds of every "
        "cell: the baseline loss (the best constant predictor's on the draw's targets), the "
        "initial loss, and their ratio (> 1: the baseline criterion is the stricter one).\n\n"
        + tables.markdown(tables.draw_rows(cells))
    )


def kernel_comparison_section(cells: list[Outcomes]) -> tuple[str, dict]:
    """Each kernel against softmax, paired by draw and seed; the JSON figures beside it."""
    rows, records = comparisons.against_reference(
        cells, "model.kernel", "softmax", comparisons.THEORY_QUANTITIES
    )
    if not rows:
        return "", {"comparisons": []}
    text = "\n## Paired comparison with softmax\n\n" + comparisons.THEORY_INTRO
    return text + tables.markdown(rows), {"comparisons": records}


def stall_section(cells: list[Outcomes]) -> str:
    return (
        "\n## Stalled or oscillating?\n\nLive seeds (not diverged) by outcome: the gradient "
        "norm at the last logged step and the share of logged intervals over which the loss "
        "went up, median [min, max] over seeds (a seed at a stationary point has a small "
        "gradient; one descending monotonically has 0% of intervals up).\n\n"
        + tables.markdown([tables.stall_row(c) for c in cells])
    )


def read_sharpness(run: Outcomes) -> dict | None:
    path = run.path / "sharpness.json"
    return json.loads(path.read_text()) if path.exists() else None


def sharpness_section(root: pathlib.Path, pooled: list[Outcomes], runs: list[Outcomes]) -> str:
    """The sharpness table, or how to compute what it needs."""
    rows, missing = [], 0
    for c in pooled:
        measured = [read_sharpness(r) for r in cells_lib.members(c, runs)]
        missing += sum(m is None for m in measured)
        if None not in measured:
            lr = float(cells_lib.config_value(c.config, "train.learning_rate"))
            rows.append(tables.sharpness_row(c, measured, lr))
    text = (
        "\n## Sharpness vs the step size\n\nTop Hessian eigenvalue of the loss w.r.t. W_Q "
        "(power iteration on Hessian-vector products) at the final parameters and at the "
        "teacher's W_Q (a zero-loss minimum); GD with step lr cannot settle in a minimum whose "
        "sharpness exceeds 2 / lr. Medians, or every value when there are at most 6.\n\n"
    )
    if missing:
        text += (
            f"({missing} run(s) not measured yet: `python -m experiments.measure sharpness "
            f"{root}` writes their sharpness.json.)\n\n"
        )
    return text + tables.markdown(rows)


def q_only(root: pathlib.Path) -> str:
    """Q-only, student-teacher targets: one run per seed, pooled per kernel (and other axes)."""
    runs = cells_lib.load_all(root)
    pooled = cells_lib.merge_seeds(runs, drop=("seeds", *cells_lib.DRAW_FIELDS))
    plots.init_scatter(
        pooled,
        root / "init_vs_convergence.png",
        panel_field=None,
        color_field=None,
        quantities=("sigma_min_attention_output", "sv_ratio_q_v"),
    )
    plots.final_loss(pooled, root / "final_loss_distribution.png")
    plots.pooled_curves(
        [[cells_lib.series(r.path) for r in cells_lib.members(c, runs)] for c in pooled],
        [c.name for c in pooled],
        pooled[0].threshold,
        root / "loss_curves.png",
    )
    text = tables.header("Ablation: only W_Q trained, realisable targets", root, pooled)
    text += tables.runtime(runs)
    text += "## Outcome per kernel (seeds and draws pooled)\n\n" + OUTCOME_INTRO
    if any(c.baseline_unknown.any() for c in pooled):
        text += (
            "'baseline unknown': seeds whose run stopped at eps (train.stop_at_threshold) "
            "before they met the baseline level.\n\n"
        )
    text += tables.markdown([tables.outcome_row(c) for c in pooled]) + tables.teacher_rows(pooled)
    comparison, figures = kernel_comparison_section(pooled)
    text += draws_section(pooled) + comparison + stall_section(pooled)
    text += sharpness_section(root, pooled, runs)
    text += "\n## Initialisation vs convergence\n\n"
    text += tables.markdown([tables.init_row(c) for c in pooled]) + FIGURES
    return tables.write(root, "q_only", text, figures)


def live_relative_loss(c: Outcomes) -> float:
    """Median final/initial loss of the seeds that did not diverge (nan if none)."""
    x = c.relative_final_loss[~c.diverged]
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def overparam(root: pathlib.Path) -> str:
    """d relative to n*N: fraction converged and sigma_min(Phi) per d, per subset/kernel."""
    runs = cells_lib.load_all(root)
    cells = cells_lib.merge_draws(runs)
    by_series: dict[str, list[tuple[float, Outcomes]]] = {}
    for c in cells:
        d = float(field_of(c, "model.dim"))
        n_n = float(field_of(c, "data.num_samples")) * float(field_of(c, "data.seq_len"))
        others = [f"{short_key(k)}={v}" for k, v in c.fields.items() if k != "model.dim"]
        # a nested sweep (e.g. one per d with its own sigma2) is a series of its own
        sweep = c.group.split("/")[0]
        label = ",".join(others) or "all"
        by_series.setdefault(f"{sweep}: {label}" if sweep else label, []).append((d / n_n, c))
    series, rows = {}, []
    for label, points in by_series.items():
        points.sort(key=lambda p: p[0])
        sigma_min = [np.nanmedian(c.init["sigma_min_attention_output"]) for _, c in points]
        series[label] = {
            "ratio": np.array([r for r, _ in points]),
            "fraction": np.array([c.converged.mean() for _, c in points]),
            "fraction_baseline": np.array([c.converged_baseline.mean() for _, c in points]),
            "relative": np.array([live_relative_loss(c) for _, c in points]),
            "sigma_min": np.array(sigma_min),
        }
        for (ratio, c), smin in zip(points, sigma_min, strict=True):
            row = {"cell": c.name, "d/(nN)": tables.fmt(float(ratio), 3)}
            row.update({k: v for k, v in tables.outcome_row(c).items() if k != "cell"})
            row["median σmin(Φ) at init"] = tables.fmt(float(smin))
            rows.append(row)
    plots.overparam(series, root / "overparam.png")
    text = tables.header("Ablation: over-parameterisation d / (nN)", root, cells)
    text += tables.runtime(runs)
    text += OUTCOME_INTRO + tables.markdown(rows) + tables.teacher_rows(cells)
    comparison, figures = kernel_comparison_section(cells)
    text += comparison + stall_section(cells)
    text += "\n![over-parameterisation](overparam.png)\n"
    return tables.write(root, "overparam", text, figures)
