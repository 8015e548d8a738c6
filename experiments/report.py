"""Tables and plots from run directories: ``attn-dynamics-report DIR`` (= ``python -m
experiments.report DIR``).

DIR is one run or a sweep (``sweep.json``, read through :mod:`experiments.rundirs`). Cells that
differ only in the data draw (``data.seed``) or in the seeds they train (a ``seeds`` axis) are
one row: seeds are pooled within a draw, and every figure is computed per draw and then given
as the median over draws with its [min, max], so a table does not rest on one draw.

Writes ``DIR/report.md`` (per row: draws, seeds, fraction of seeds that reached each
convergence criterion -- loss <= ``train.loss_threshold`` x its initial loss, and loss <=
``train.baseline_threshold`` x the best constant predictor's loss -- and median steps to it,
final loss and final/initial loss (medians over seeds), diverged seeds, evaluation
accuracies), ``DIR/report.json`` (the same figures as numbers) and ``DIR/loss_curves.png``
(median loss per row, interquartile band over all its seeds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys

import numpy as np
from absl import flags

from experiments import cli, rundirs
from experiments.rundirs import config_value

DRAW_FIELDS = ("data.seed",)  # a new draw of the data: figures per draw, then across draws
POOLED_FIELDS = ("seeds",)  # more seeds of the same draw: pooled


@dataclasses.dataclass
class Draw:
    """One data draw of a row: the per-seed outcomes of every cell with that draw."""

    key: str  # the draw's field values, as JSON
    cells: list[rundirs.Cell]
    summaries: list[dict]

    @property
    def seeds(self) -> list[dict]:
        return [s for summary in self.summaries for s in summary["seeds"]]


@dataclasses.dataclass
class Row:
    label: str
    draws: list[Draw]
    threshold: float | None = None
    baseline_threshold: float | None = None

    @property
    def cells(self) -> list[rundirs.Cell]:
        return [c for d in self.draws for c in d.cells]


def find_rows(root: pathlib.Path) -> tuple[list[Row], list[rundirs.Cell]]:
    """``(rows, unfinished cells)``: finished cells grouped into rows and data draws."""
    rows: dict[tuple, Row] = {}
    unfinished = []
    for cell in rundirs.list_cells(root):
        summary = rundirs.read_summary(cell.path)
        if summary is None:
            unfinished.append(cell)
            continue
        group = cell.name.rsplit("/", 1)[0] if "/" in cell.name else ""
        kept = {k: v for k, v in cell.overrides.items() if k not in DRAW_FIELDS + POOLED_FIELDS}
        if cell.overrides:
            key: tuple = (group, *((k, json.dumps(v)) for k, v in kept.items()))
            label = _label(group, kept)
        else:  # a run found without an index is a row of its own
            key, label = (cell.name,), cell.name
        row = rows.setdefault(key, Row(label, []))
        draw = json.dumps(_draw_of(cell))
        for d in row.draws:
            if d.key == draw:
                d.cells.append(cell)
                d.summaries.append(summary)
                break
        else:
            row.draws.append(Draw(draw, [cell], [summary]))
        row.threshold = summary.get("loss_threshold", row.threshold)
        row.baseline_threshold = summary.get("baseline_threshold", row.baseline_threshold)
    return list(rows.values()), unfinished


def _draw_of(cell: rundirs.Cell) -> list:
    if all(f in cell.overrides for f in DRAW_FIELDS):
        return [cell.overrides[f] for f in DRAW_FIELDS]
    config = rundirs.read_config(cell.path)
    return [config_value(config, f) for f in DRAW_FIELDS]


def _label(group: str, fields: dict) -> str:
    from experiments import grid  # names as the sweep writes them (no JAX)

    name = grid.cell_name(fields) if fields else "all"
    return f"{group}/{name}" if group else name


# --------------------------------------------------------------------------------------------
# Figures: per draw, then across draws


def _finite(values) -> np.ndarray:
    x = np.array([np.nan if v is None else v for v in values], float)
    return x[np.isfinite(x)]


def draw_figures(draw: Draw) -> dict:
    """Numbers of one draw over its seeds."""
    seeds = draw.seeds
    steps = _finite(s["steps_to_threshold"] for s in seeds)
    baseline = _finite(s.get("steps_to_baseline") for s in seeds)  # absent in older summaries
    finals = _finite(s["final_loss"] for s in seeds)
    rel = _finite(s.get("relative_final_loss") for s in seeds)
    figures = {
        "seeds": len(seeds),
        "reached": int(steps.size),
        "fraction_reached": steps.size / len(seeds) if seeds else math.nan,
        "median_steps": float(np.median(steps)) if steps.size else math.nan,
        "reached_baseline": int(baseline.size),
        "fraction_reached_baseline": baseline.size / len(seeds) if seeds else math.nan,
        "median_steps_baseline": float(np.median(baseline)) if baseline.size else math.nan,
        "final_loss": float(np.median(finals)) if finals.size else math.nan,
        "relative_final_loss": float(np.median(rel)) if rel.size else math.nan,
        "diverged": sum(s["status"] == "diverged" for s in seeds),
    }
    for summary_split, values in _accuracies(draw).items():
        figures[summary_split] = float(np.mean(values)) if values.size else math.nan
    return figures


def _accuracies(draw: Draw) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for summary in draw.summaries:
        for split, figures in summary.get("evaluation", {}).items():
            if "accuracy" in figures:
                out.setdefault(f"{split} acc", []).extend(figures["accuracy"])
    return {k: _finite(v) for k, v in out.items()}


def spread(values) -> dict:
    """``{'median', 'min', 'max'}`` over the finite values (nan when there are none)."""
    x = _finite(values)
    if not x.size:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}


FIGURES = (
    "fraction_reached",
    "median_steps",
    "fraction_reached_baseline",
    "median_steps_baseline",
    "final_loss",
    "relative_final_loss",
)


def row_figures(row: Row) -> dict:
    """A row's numbers: per-draw figures, their median [min, max] over draws, pooled counts."""
    per_draw = [draw_figures(d) for d in row.draws]
    statuses = [s["status"] for d in row.draws for s in d.summaries]
    out = {
        "label": row.label,
        "cells": [c.name for c in row.cells],
        "draws": len(per_draw),
        "seeds": sum(f["seeds"] for f in per_draw),
        "reached": sum(f["reached"] for f in per_draw),
        "reached_baseline": sum(f["reached_baseline"] for f in per_draw),
        "diverged": sum(f["diverged"] for f in per_draw),
        "status": _worst(statuses),
        "per_draw": per_draw,
    }
    names = list(FIGURES) + sorted({k for f in per_draw for k in f if k.endswith(" acc")})
    for name in names:
        out[name] = spread(f.get(name) for f in per_draw)
    return out


def _worst(statuses: list[str]) -> str:
    for s in ("interrupted", "diverged"):
        if s in statuses:
            return s
    return statuses[0] if statuses else "n/a"


# --------------------------------------------------------------------------------------------
# Formatting


def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def _cell(figure: dict, spec: str, draws: int) -> str:
    text = _fmt(figure["median"], spec)
    if draws > 1 and math.isfinite(figure["median"]):
        text += f" [{_fmt(figure['min'], spec)}, {_fmt(figure['max'], spec)}]"
    return text


def _reached(f: dict, count: str, fraction: str) -> str:
    """``12/16``, or with several draws the per-draw fraction's median [min, max] (pooled)."""
    pooled = f"{f[count]}/{f['seeds']}"
    return pooled if f["draws"] == 1 else f"{_cell(f[fraction], '.2f', f['draws'])} ({pooled})"


def markdown_table(
    figures: list[dict], threshold: float | None, baseline_threshold: float | None = None
) -> str:
    accs = sorted({k for f in figures for k in f if k.endswith(" acc")})
    columns = [
        "run",
        "draws",
        "seeds",
        "reached threshold",
        "median steps to threshold",
        "reached baseline",
        "median steps to baseline",
        "final loss (median)",
        "final/initial (median)",
        "diverged",
        "status",
        *accs,
    ]
    lines = []
    if threshold is not None:
        lines.append(f"Threshold: loss <= {threshold:g} x initial loss.")
    if baseline_threshold is not None:
        lines.append(
            f"Baseline: loss <= {baseline_threshold:g} x the best constant predictor's loss on "
            "the training targets."
        )
    if any(f["draws"] > 1 for f in figures):
        lines.append(
            "With several data draws (data.seed), a figure is the median over draws of its "
            "per-draw value [min, max]; 'reached' is the fraction of seeds per draw (pooled "
            "count in brackets)."
        )
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for f in figures:
        draws = f["draws"]
        values = [
            f["label"],
            str(draws),
            str(f["seeds"]),
            _reached(f, "reached", "fraction_reached"),
            _cell(f["median_steps"], ".0f", draws),
            _reached(f, "reached_baseline", "fraction_reached_baseline"),
            _cell(f["median_steps_baseline"], ".0f", draws),
            _cell(f["final_loss"], ".3g", draws),
            _cell(f["relative_final_loss"], ".2g", draws),
            str(f["diverged"]),
            f["status"],
            *(_cell(f[a], ".3f", draws) if a in f else "–" for a in accs),
        ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# Curves


def loss_matrix(run_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [T], losses [T, seeds])`` from metrics.jsonl."""
    records = [r for r in rundirs.read_metrics(run_dir) if "loss" in r]
    steps = np.array([r["step"] for r in records])
    losses = np.array([r.get("loss/seeds", [r["loss"]]) for r in records], float)
    return steps, losses


def row_losses(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """Steps and losses of every seed of a row (cells cut to their common logged steps)."""
    pairs = [loss_matrix(c.path) for c in row.cells]
    pairs = [(s, x) for s, x in pairs if s.size]
    if not pairs:
        return np.array([]), np.zeros((0, 0))
    common = pairs[0][0]
    for s, _ in pairs[1:]:
        common = np.intersect1d(common, s)
    losses = [x[np.isin(s, common)] for s, x in pairs]
    return common, np.concatenate(losses, axis=1)


def plot_loss_curves(rows: list[Row], path: pathlib.Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for row in rows:
        steps, losses = row_losses(row)
        if not steps.size:
            continue
        losses = np.where(np.isfinite(losses), losses, np.nan)
        lo, mid, hi = np.nanpercentile(losses, [25, 50, 75], axis=1)
        (line,) = ax.plot(steps, mid, lw=1.5, label=row.label)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (median, IQR band over seeds and draws)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------
# Entry points


def aggregate(root: str | pathlib.Path) -> list[dict]:
    """The figures of every row under ``root`` (what ``report.json`` holds)."""
    rows, _ = find_rows(pathlib.Path(root))
    return [row_figures(r) for r in rows]


def write_report(root: str | pathlib.Path) -> pathlib.Path:
    root = pathlib.Path(root)
    rows, unfinished = find_rows(root)
    if not rows:
        raise FileNotFoundError(f"no finished run (summary.json) under {str(root)!r}")
    figures = [row_figures(r) for r in rows]
    threshold = next((r.threshold for r in rows if r.threshold is not None), None)
    baseline = next((r.baseline_threshold for r in rows if r.baseline_threshold), None)
    plot_loss_curves(rows, root / "loss_curves.png")
    text = f"# Report: {root}\n\n" + markdown_table(figures, threshold, baseline)
    if unfinished:
        names = ", ".join(c.name for c in unfinished)
        text += f"\nNot finished (no summary.json): {names}\n"
    text += "\n![loss curves](loss_curves.png)\n"
    (root / "report.json").write_text(json.dumps(figures, indent=2) + "\n")
    out = root / "report.md"
    out.write_text(text)
    return out


def usage(argv: list[str] | None = None, *, full: bool = False) -> str:
    prog = cli.program(argv, "report")
    return cli.help_text(
        f"usage: {prog} DIR   (a run directory or a sweep's --workdir)",
        "Tables and plots from finished runs: cells that differ only in the data draw "
        "(data.seed) or in their seeds are one row; each figure is computed per draw, then "
        "given as the median over draws with its [min, max]. Writes DIR/report.md (printed), "
        "DIR/report.json and DIR/loss_curves.png; reads the runs, changes none.",
        [],
        epilog="exit status: 0 written; 2 bad input or nothing finished under DIR (one line on "
        "stderr).",
        full=full,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if kind := cli.help_requested(argv[1:]):
        print(usage(argv, full=kind == "full"), end="")
        return 0
    args = cli.parse(flags.FlagValues(), argv)
    if len(args) != 1:
        prog = cli.program(argv, "report")
        return cli.error(f"expected one directory, got {args or 'none'}; usage: {prog} DIR")
    root = pathlib.Path(args[0])
    if not root.is_dir():
        return cli.error(
            f"{str(root)!r} is not a directory (a run directory or a sweep's --workdir)"
        )
    try:
        out = write_report(root)
    except (FileNotFoundError, rundirs.RunDirError) as e:
        return cli.error(e)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
