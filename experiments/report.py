"""Tables and plots from run directories: ``python -m experiments.report DIR``.

DIR is one run or a sweep (a tree of runs). Writes ``DIR/report.md`` (one row per run: fraction
of seeds that reached the loss threshold, median steps to it, final loss mean +- std over seeds,
plus evaluation figures) and ``DIR/loss_curves.png`` (median loss per run with an interquartile
band over seeds).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from experiments import logs


def find_runs(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p.parent for p in root.rglob("summary.json"))


def run_label(root: pathlib.Path, run_dir: pathlib.Path) -> str:
    return str(run_dir.relative_to(root)) if run_dir != root else run_dir.name


def cell_row(summary: dict) -> dict:
    seeds = summary["seeds"]
    steps = [s["steps_to_threshold"] for s in seeds if s["steps_to_threshold"] is not None]
    finals = np.array([s["final_loss"] for s in seeds if s["final_loss"] is not None], float)
    rel = np.array(
        [s["relative_final_loss"] for s in seeds if s.get("relative_final_loss") is not None], float
    )
    row = {
        "seeds": len(seeds),
        "converged": f"{len(steps)}/{len(seeds)}",
        "fraction_converged": len(steps) / len(seeds),
        "median_steps": int(np.median(steps)) if steps else None,
        "final_loss": (f"{finals.mean():.3g} ± {finals.std():.2g}" if finals.size else "n/a"),
        "relative_final_loss": f"{np.median(rel):.2g}" if rel.size else "n/a",
        "diverged": sum(s["status"] == "diverged" for s in seeds),
        "status": summary["status"],
    }
    for split, figures in summary.get("evaluation", {}).items():
        for name, values in figures.items():
            if name == "accuracy":
                v = np.asarray(values, float)
                row[f"{split} acc"] = f"{v.mean():.3f} ± {v.std():.3f}"
    return row


def markdown_table(rows: list[tuple[str, dict]], threshold: float | None) -> str:
    columns = [
        "run",
        "seeds",
        "converged",
        "median_steps",
        "final_loss",
        "relative_final_loss",
        "diverged",
        "status",
    ]
    extra = sorted({k for _, r in rows for k in r if k.endswith(" acc")})
    columns += extra
    header = {
        "converged": "reached threshold",
        "median_steps": "median steps to threshold",
        "final_loss": "final loss (mean ± std)",
        "relative_final_loss": "final/initial (median)",
    }
    lines = []
    if threshold is not None:
        lines.append(f"Threshold: loss <= {threshold:g} x initial loss.\n")
    lines.append("| " + " | ".join(header.get(c, c) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for label, row in rows:
        cells = [label] + [row.get(c) for c in columns[1:]]
        lines.append("| " + " | ".join("–" if v is None else str(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def loss_matrix(run_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [T], losses [T, seeds])`` from metrics.jsonl."""
    records = [r for r in logs.read_metrics(run_dir) if not r.get("eval") and "loss" in r]
    steps = np.array([r["step"] for r in records])
    losses = np.array([r.get("loss/seeds", [r["loss"]]) for r in records], float)
    return steps, losses


def plot_loss_curves(root: pathlib.Path, runs: list[pathlib.Path], path: pathlib.Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for run_dir in runs:
        steps, losses = loss_matrix(run_dir)
        if not steps.size:
            continue
        losses = np.where(np.isfinite(losses), losses, np.nan)
        lo, mid, hi = np.nanpercentile(losses, [25, 50, 75], axis=1)
        (line,) = ax.plot(steps, mid, lw=1.5, label=run_label(root, run_dir))
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (median, IQR band over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(root: pathlib.Path) -> pathlib.Path:
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no summary.json under {str(root)!r}: nothing to report")
    rows, threshold = [], None
    for run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        threshold = summary.get("loss_threshold", threshold)
        rows.append((run_label(root, run_dir), cell_row(summary)))
    plot_loss_curves(root, runs, root / "loss_curves.png")
    text = f"# Report: {root}\n\n" + markdown_table(rows, threshold)
    text += "\n![loss curves](loss_curves.png)\n"
    out = root / "report.md"
    out.write_text(text)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m experiments.report DIR", file=sys.stderr)
        return 2
    root = pathlib.Path(argv[1])
    if not root.is_dir():
        print(f"error: {str(root)!r} is not a directory", file=sys.stderr)
        return 2
    try:
        out = write_report(root)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
