"""The analyses' figures, drawn on ``matplotlib.figure.Figure`` objects (no pyplot, no backend
switch: importing or calling this from a notebook leaves its backend alone). Each function
takes what it draws and the PNG path to write."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from matplotlib.figure import Figure

from experiments.analyses.cells import INIT_QUANTITIES, Outcomes, field_of, short_key
from experiments.analyses.tables import SHORT

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _save(fig: Figure, path: pathlib.Path, dpi: int = 90, **tight) -> None:
    fig.tight_layout(**tight)
    fig.savefig(path, dpi=dpi)


def _threshold_line(ax, threshold: float, **label) -> bool:
    if math.isfinite(threshold) and threshold > 0:
        ax.axhline(threshold, color="gray", lw=0.8, ls="--", **label)
        return True
    return False


def _panels(cells: list[Outcomes], field: str | None) -> list[tuple[str, list[Outcomes]]]:
    if field is None:
        return [("", cells)]
    out: dict[str, list[Outcomes]] = {}
    for c in cells:
        out.setdefault(str(field_of(c, field)), []).append(c)
    return list(out.items())


def init_scatter(
    cells: list[Outcomes],
    path: pathlib.Path,
    *,
    panel_field: str | None,
    color_field: str | None,
    quantities=INIT_QUANTITIES[:2],
) -> None:
    """Init quantity (x) vs final/initial loss (y, log), filled = reached eps, hollow = not;
    diverged seeds are left out (the tables count them)."""
    panels = _panels(cells, panel_field)
    fig = Figure(figsize=(2.8 * len(panels) + 0.6, 2.4 * len(quantities) + 0.4))
    axes = fig.subplots(len(quantities), len(panels), squeeze=False)
    colors: dict[str, str] = {}
    for col, (panel, members) in enumerate(panels):
        for row, q in enumerate(quantities):
            ax = axes[row, col]
            for c in members:
                key = str(field_of(c, color_field)) if color_field else c.name
                rgb = colors.setdefault(key, color(len(colors)))
                x, y = c.init[q], np.maximum(c.relative_final_loss, 1e-16)
                # diverged seeds left out: their last finite loss would set the axis
                yes, no = c.converged & ~c.diverged, ~c.converged & ~c.diverged
                ax.scatter(x[yes], y[yes], s=16, color=rgb, label=f"{key} (reached)")
                ax.scatter(
                    x[no], y[no], s=16, facecolors="none", edgecolors=rgb, label=f"{key} (not)"
                )
            _threshold_line(ax, members[0].threshold)
            ax.set_yscale("log")
            ax.set_xlabel(f"{SHORT[q]} at init", fontsize=8)
            if col == 0:
                ax.set_ylabel("final / initial loss", fontsize=8)
            if row == 0 and panel:
                ax.set_title(f"{short_key(panel_field)}={panel}", fontsize=9)
            ax.tick_params(labelsize=7)
    seen: dict = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(
        list(seen.values()),
        list(seen),
        fontsize=7,
        loc="lower center",
        ncol=min(len(seen), 6),
        frameon=False,
    )
    _save(fig, path, rect=(0, 0.08, 1, 1))


def short_label(c: Outcomes) -> str:
    """The cell's field values, one per line (``softmax\\nQKV``), else its name."""
    return "\n".join(str(v) for v in c.fields.values()) if c.fields else c.name


def final_loss(cells: list[Outcomes], path: pathlib.Path) -> None:
    """Final/initial loss of every seed that did not diverge, per cell (strip plot), eps
    dashed."""
    fig = Figure(figsize=(max(4.0, 0.75 * len(cells) + 1.5), 3.6))
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # horizontal jitter, the same on every redraw
    for i, c in enumerate(cells):
        y = np.maximum(c.relative_final_loss, 1e-16)
        x = i + 0.12 * rng.standard_normal(len(y))
        yes, no = c.converged & ~c.diverged, ~c.converged & ~c.diverged  # diverged: left out
        ax.scatter(x[yes], y[yes], s=12, color="tab:blue")
        ax.scatter(x[no], y[no], s=12, facecolors="none", edgecolors="tab:red")
        if (yes | no).any():
            ax.hlines(np.nanmedian(y[yes | no]), i - 0.3, i + 0.3, color="black", lw=1.5)
    thr = cells[0].threshold
    if _threshold_line(ax, thr, label=f"eps = {thr:g} x initial"):
        ax.legend(fontsize=7, loc="best")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([short_label(c) for c in cells], fontsize=7)
    ax.set_ylabel("final / initial loss (per seed)")
    _save(fig, path)


def pooled_curves(
    curves: list[list[tuple[np.ndarray, np.ndarray]]],
    labels: list[str],
    threshold: float,
    path: pathlib.Path,
) -> None:
    """Median loss relative to step 0, with the min-max band over seeds, per pooled cell.

    ``curves[i]``: the ``(steps [T], losses [T, seeds])`` of each run pooled into cell ``i``.
    Runs stop once they reach eps (``stop_at_threshold``): each is held at its last value.
    """
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (runs, label) in enumerate(zip(curves, labels, strict=True)):
        runs = [(s, v) for s, v in runs if len(s)]
        if not runs:
            continue
        steps = max((s for s, _ in runs), key=len)
        losses = np.full((len(steps), sum(v.shape[1] for _, v in runs)), np.nan)
        col = 0
        for _, v in runs:
            rel = v / v[:1]
            losses[: len(rel), col : col + rel.shape[1]] = rel
            losses[len(rel) :, col : col + rel.shape[1]] = rel[-1]
            col += rel.shape[1]
        lo, mid, hi = np.nanpercentile(losses, [0, 50, 100], axis=1)
        ax.plot(steps + 1, mid, color=color(i), lw=1.4, label=label)
        ax.fill_between(steps + 1, lo, hi, color=color(i), alpha=0.15, lw=0)
    ax.set_xscale("log")
    _threshold_line(ax, threshold)
    ax.set_yscale("log")
    ax.set_xlabel("step + 1 (runs that reached eps are held at their stopping value)")
    ax.set_ylabel("loss / initial loss (median, min-max over seeds)")
    ax.legend(fontsize=7)
    _save(fig, path)


def overparam(series: dict[str, dict[str, np.ndarray]], path: pathlib.Path) -> None:
    """Per series (label -> ``ratio``, ``fraction``, ``fraction_baseline``, ``relative``,
    ``sigma_min`` arrays over d / (nN)): fraction reaching eps (solid) and the baseline level
    (dashed), median final/initial loss, median sigma_min(Phi)."""
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    for i, (label, s) in enumerate(series.items()):
        for ax, what in zip(axes, ("fraction", "relative", "sigma_min"), strict=True):
            ax.plot(s["ratio"], s[what], "o-", color=color(i), label=label)
        if "fraction_baseline" in s:
            axes[0].plot(s["ratio"], s["fraction_baseline"], "s--", color=color(i), ms=4)
    axes[0].set_ylabel("fraction reaching eps (—), baseline (--)")
    axes[1].set_ylabel("median final/initial loss")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("median σmin(Φ) at init")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d / (n N)")
        ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def training_and_accuracy(
    losses: dict[str, tuple[np.ndarray, np.ndarray]],
    accuracies: dict[str, tuple[np.ndarray, np.ndarray]],
    path: pathlib.Path,
) -> None:
    """Left: training loss vs step (mean ± std band over seeds); right: test accuracy vs step,
    each seed thin and the mean bold (seeds that leave chance and seeds that do not are both
    visible; a std bar would blur them). Both map a cell's label to ``(steps [T], values [T,
    seeds])``."""
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    labels = list(dict.fromkeys([*losses, *accuracies]))
    for i, label in enumerate(labels):
        if label in losses:
            steps, values = losses[label]
            mean, std = np.nanmean(values, 1), np.nanstd(values, 1)
            axes[0].plot(steps, mean, color=color(i), lw=1.3, label=label)
            axes[0].fill_between(steps, mean - std, mean + std, color=color(i), alpha=0.15, lw=0)
        if label in accuracies:
            steps, values = accuracies[label]
            axes[1].plot(steps, values, color=color(i), lw=0.7, alpha=0.4)
            axes[1].plot(steps, values.mean(1), color=color(i), marker="o", ms=3, label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (mean ± std over seeds)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("test accuracy (each seed; mean bold)")
    for ax in axes:
        ax.legend(fontsize=7)
    _save(fig, path)


def accuracy_vs_length(curves: dict[str, tuple[np.ndarray, np.ndarray]], path) -> None:
    """Accuracy (mean ± std over seeds) against the evaluation sequence length, per cell:
    label -> ``(lengths [L], accuracy [L, seeds])``."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.subplots()
    for i, (label, (lengths, acc)) in enumerate(curves.items()):
        ax.errorbar(
            lengths,
            acc.mean(1),
            yerr=acc.std(1),
            color=color(i),
            marker="o",
            ms=4,
            capsize=3,
            label=label,
        )
    ax.set_xlabel("evaluation sequence length")
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.legend(fontsize=7)
    _save(fig, path)


def position_features(panels: list[tuple[str, np.ndarray, int]], path: pathlib.Path) -> None:
    """Per encoding (rows): one seed's position features as a map (positions x features)
    and, over every seed, the feature norm and the step between neighbouring positions;
    ``panels``: ``(label, features [seeds, T, D], training length L)``."""
    fig = Figure(figsize=(10.0, 2.3 * len(panels)))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (label, feats, train_len), (ax_map, ax_norm) in zip(panels, axes, strict=True):
        first = feats[0]
        scale = float(np.abs(first).max()) or 1.0
        image = ax_map.imshow(
            first.T, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale, origin="lower"
        )
        fig.colorbar(image, ax=ax_map, fraction=0.04)
        ax_map.axvline(train_len - 0.5, color="black", lw=1.0, ls="--")
        ax_map.set_title(f"{label}: seed 0", fontsize=8)
        ax_map.set_ylabel("feature", fontsize=8)
        positions = np.arange(feats.shape[1])
        norm = np.linalg.norm(feats, axis=-1)  # [seeds, T]
        step = np.linalg.norm(np.diff(feats, axis=1), axis=-1)  # [seeds, T - 1]
        for values, x, name, c in ((norm, positions, "‖p_i‖", 0), (step, positions[1:],
                                   "‖p_i − p_(i−1)‖", 1)):  # fmt: skip
            ax_norm.plot(x, np.median(values, 0), color=color(c), label=f"{name}, median")
            ax_norm.fill_between(x, values.min(0), values.max(0), color=color(c), alpha=0.2)
        ax_norm.axvline(train_len - 0.5, color="black", lw=1.0, ls="--")
        ax_norm.set_yscale("log")
        ax_norm.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("position (dashed: L; past it never trained)")
    _save(fig, path)
