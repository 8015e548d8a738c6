"""The real-task ablations: accuracy over seeds per cell.

* :func:`kernels` -- softmax vs Gaussian on Pathfinder / LRA text
  (``configs/pathfinder_kernels.py``, ``configs/lra_text_kernels.py``): test accuracy and
  training loss against steps;
* :func:`extrapolation` -- position encodings against the evaluation length
  (``configs/floater_extrapolation.py``).
"""

from __future__ import annotations

import pathlib

import numpy as np

from experiments import rundirs
from experiments.analyses import cells as cells_lib
from experiments.analyses import plots, tables
from experiments.analyses.cells import Outcomes


def mean_std(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std():.3f}"


def accuracy_split(evals: list[dict]) -> str | None:
    """The split to plot: test, else validation, else the first with an accuracy."""
    names = {k.split("/")[1] for r in evals for k in r if k.endswith("/accuracy")}
    for preferred in ("test", "validation", "val", "train"):
        if preferred in names:
            return preferred
    return sorted(names)[0] if names else None


def accuracy_curve(run_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps [T], accuracy [T, seeds])`` on the :func:`accuracy_split`, None without one."""
    evals = rundirs.read_evals(run_dir)
    split = accuracy_split(evals)
    if split is None:
        return None
    key = f"eval/{split}/accuracy"
    rows = [r for r in evals if key in r]
    steps = np.array([r["step"] for r in rows])
    return steps, np.array([r.get(f"{key}/seeds", [r[key]]) for r in rows], float)


def kernels_row(c: Outcomes) -> dict:
    row = {
        "cell": c.name,
        "seeds": len(c.seeds),
        "final train loss (mean ± std)": (
            f"{np.nanmean(c.final_loss):.3f} ± {np.nanstd(c.final_loss):.3f}"
        ),
    }
    for split, figures in c.summary.get("evaluation", {}).items():
        if "accuracy" in figures:
            row[f"{split} accuracy"] = mean_std(figures["accuracy"])
            row[f"{split} accuracy per seed"] = ", ".join(
                f"{a:.3f}" for a in np.atleast_1d(figures["accuracy"])
            )
    row["wall s"] = tables.fmt(float(c.summary.get("wall_seconds", float("nan"))), 3)
    return row


def kernels(root: pathlib.Path) -> str:
    """Real tasks: test accuracy per cell (mean ± std over seeds), loss/accuracy vs steps."""
    cells = cells_lib.load_all(root)
    losses = {c.name: cells_lib.series(c.path) for c in cells}
    accuracies = {c.name: accuracy_curve(c.path) for c in cells}
    plots.training_and_accuracy(
        {k: v for k, v in losses.items() if len(v[0])},
        {k: v for k, v in accuracies.items() if v is not None},
        root / "kernels.png",
    )
    text = f"# Softmax vs Gaussian on a real task\n\nRun directory: `{root}`.\n\n"
    text += tables.markdown([kernels_row(c) for c in cells])
    text += "\n![loss and accuracy](kernels.png)\n"
    return tables.write(root, "kernels", text)


def length_accuracy(c: Outcomes) -> tuple[np.ndarray, list[np.ndarray]]:
    """The evaluation lengths of the ``len_<L>`` splits (ascending) and the per-seed
    accuracies at each."""
    evaluation = c.summary.get("evaluation", {})
    splits = sorted((s for s in evaluation if s.startswith("len_")), key=lambda s: int(s[4:]))
    lengths = np.array([int(s[4:]) for s in splits])
    return lengths, [np.asarray(evaluation[s]["accuracy"], float) for s in splits]


def extrapolation(root: pathlib.Path) -> str:
    """Position encodings: accuracy at every eval length (mean ± std over seeds), plot."""
    cells = cells_lib.load_all(root)
    rows, curves = [], {}
    for c in cells:
        lengths, acc = length_accuracy(c)
        trained = cells_lib.config_value(c.config, "data.train_len")
        row = {"cell": c.name, "seeds": len(c.seeds)}
        for length, a in zip(lengths, acc, strict=True):
            times = f" ({length / int(trained):g}x)" if trained else ""
            row[f"L={length}{times}"] = mean_std(a)
        rows.append(row)
        if acc:
            curves[c.name] = (lengths, np.stack(acc))
    plots.accuracy_vs_length(curves, root / "extrapolation.png")
    text = f"# Length extrapolation per position encoding\n\nRun directory: `{root}`.\n\n"
    text += tables.markdown(rows) + "\n![extrapolation](extrapolation.png)\n"
    return tables.write(root, "extrapolation", text)
