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
from experiments.analyses import comparisons, plots, stats, tables
from experiments.analyses.cells import Outcomes

ACCURACY_LEVELS = (0.6, 0.7)  # "steps to accuracy" columns of the kernels analysis


def mean_std(values) -> str:
    """``0.713 ± 0.043``: mean ± sample std (ddof = 1) over seeds."""
    mean, std = stats.mean_std(values)
    return f"{mean:.3f} ± " + (f"{std:.3f}" if np.isfinite(std) else "–")


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
        "final train loss (mean ± std)": mean_std(c.final_loss),
    }
    for split, figures in c.summary.get("evaluation", {}).items():
        if "accuracy" in figures:
            row[f"{split} accuracy"] = mean_std(figures["accuracy"])
            row[f"{split} accuracy per seed"] = ", ".join(
                f"{a:.3f}" for a in np.atleast_1d(figures["accuracy"])
            )
    row["wall s"] = tables.fmt(float(c.summary.get("wall_seconds", float("nan"))), 3)
    return row


def steps_to_accuracy(curve: tuple[np.ndarray, np.ndarray] | None, level: float) -> np.ndarray:
    """Per seed, the first evaluated step with accuracy >= ``level``; a seed that never gets
    there is censored at one evaluation interval past the last (so it ranks last)."""
    if curve is None:
        return np.array([])
    steps, acc = curve
    interval = steps[-1] - steps[-2] if len(steps) > 1 else steps[-1]
    reached = acc >= level
    first = steps[np.argmax(reached, axis=0)]
    return np.where(reached.any(axis=0), first, steps[-1] + interval).astype(float)


def mean_accuracy(curve: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Per seed, the accuracy averaged over every evaluation after step 0: the area under the
    learning curve, larger for a model that learns sooner."""
    if curve is None:
        return np.array([])
    steps, acc = curve
    return acc[steps > 0].mean(axis=0)


def speed_row(c: Outcomes, curve) -> dict:
    row = {"cell": c.name}
    for level in ACCURACY_LEVELS:
        steps = steps_to_accuracy(curve, level)
        last = curve[0][-1] if curve is not None else None
        row[f"first eval at >= {level} (per seed; '>' never)"] = ", ".join(
            f">{int(last)}" if s > last else str(int(s)) for s in steps
        )
    row["accuracy averaged over evaluations"] = mean_std(mean_accuracy(curve))
    return row


def kernels(root: pathlib.Path) -> str:
    """Real tasks: test accuracy per cell (mean ± sample std over seeds), how soon each seed
    reaches fixed accuracies, every kernel against softmax paired by seed, the curves."""
    cells = cells_lib.load_all(root)
    losses = {c.name: cells_lib.series(c.path) for c in cells}
    curves = {c.name: accuracy_curve(c.path) for c in cells}
    plots.training_and_accuracy(
        {k: v for k, v in losses.items() if len(v[0])},
        {k: v for k, v in curves.items() if v is not None},
        root / "kernels.png",
    )
    split = next((accuracy_split(rundirs.read_evals(c.path)) for c in cells), None)
    quantities = {
        f"final {split} accuracy": lambda c: final_accuracy(c, split),
        "accuracy averaged over evaluations": lambda c: mean_accuracy(curves[c.name]),
        **{
            f"steps to {level} (censored)": (
                lambda c, level=level: steps_to_accuracy(curves[c.name], level)
            )
            for level in ACCURACY_LEVELS
        },
    }
    pooled = cells_lib.merge_draws(cells)  # pairs: (draw, seed)
    paired_rows, records = comparisons.against_reference(
        pooled,
        "model.kernel",
        "softmax",
        {label: comparisons.pooled(of, cells) for label, of in quantities.items()},
    )
    text = f"# Kernels on a real task\n\nRun directory: `{root}`. Data draws: "
    text += ", ".join(sorted({d for c in cells for d in c.draws})) + ". "
    text += tables.runtime(cells)
    text += tables.markdown([kernels_row(c) for c in cells])
    text += f"\n## How soon ({split} accuracy)\n\n"
    text += tables.markdown([speed_row(c, curves[c.name]) for c in cells])
    if paired_rows:
        text += (
            "\n## Paired difference with softmax\n\nEach kernel minus softmax, seed by seed "
            "within a data draw (same initial weights, same batches): mean difference with its "
            f"95% BCa bootstrap interval ({stats.BOOTSTRAP_RESAMPLES} resamples), seeds "
            "better(+)/worse(−)/tied in the sense of a larger value, the exact two-sided "
            "sign-test p and the paired permutation p. For the steps, negative is sooner; a "
            "seed that never reached the level counts as one evaluation past the last.\n\n"
            + tables.markdown(paired_rows)
        )
    text += "\n![loss and accuracy](kernels.png)\n"
    per_seed = {
        c.name: {"seeds": c.seeds.tolist(), "draw": c.draw.tolist()}
        | {label: of(c).tolist() for label, of in quantities.items()}
        for c in cells
    }
    return tables.write(root, "kernels", text, {"per_seed": per_seed, "comparisons": records})


def final_accuracy(c: Outcomes, split: str | None) -> np.ndarray:
    """Per-seed accuracy on ``split`` at the end of training (empty without one)."""
    figures = c.summary.get("evaluation", {}).get(split, {})
    return np.atleast_1d(np.asarray(figures.get("accuracy", []), float))


REGION_TITLES = {
    "": "anywhere",
    "within": "within L",
    "beyond": "beyond L",
}


def split_order(split: str) -> tuple[int, int]:
    """Sort key of ``len_<n>[_<region>]``: by length, then anywhere / within / beyond."""
    n, _, region = split.removeprefix("len_").partition("_")
    return int(n), list(REGION_TITLES).index(region)


def length_splits(c: Outcomes) -> list[str]:
    """The cell's ``len_<n>[_<region>]`` eval splits in :func:`split_order`."""
    evaluation = c.summary.get("evaluation", {})
    return sorted((s for s in evaluation if s.startswith("len_")), key=split_order)


def split_accuracy(c: Outcomes, split: str) -> np.ndarray:
    """Per-seed accuracy on ``split`` at the end of training."""
    return np.atleast_1d(np.asarray(c.summary["evaluation"][split]["accuracy"], float))


def split_title(split: str, trained: int | None) -> str:
    """``2L=64, beyond L``: the length (as a multiple of the training length) and the region
    of the label-deciding tokens."""
    n, _, region = split.removeprefix("len_").partition("_")
    times = f"{int(n) / trained:g}L=" if trained else "L="
    return f"{times}{n}, {REGION_TITLES[region]}"


def chance_level(config: dict) -> float | None:
    """Accuracy of guessing on the order tasks: labels are uniform over their classes."""
    data = config.get("data", {})
    classes = {"order_lookback": data.get("num_tokens"), "order_precedence": 2}
    k = classes.get(data.get("name"))
    return 1.0 / k if k else None


def extrapolation(root: pathlib.Path) -> str:
    """Position encodings against eval length and where the answer lies: accuracy per split
    (mean ± sample std over seeds, every seed), each encoding against sinusoidal paired by
    seed, the figure."""
    cells = cells_lib.load_all(root)
    trained = cells_lib.config_value(cells[0].config, "data.train_len")
    trained = int(trained) if trained else None
    splits = list(dict.fromkeys(s for c in cells for s in length_splits(c)))
    rows, seed_rows, curves = [], [], {}
    per_seed: dict[str, dict] = {}
    for c in cells:
        row = {"cell": c.name, "seeds": len(c.seeds)}
        per_seed[c.name] = {"seeds": c.seeds.tolist()}
        for split in length_splits(c):
            acc = split_accuracy(c, split)
            row[split_title(split, trained)] = mean_std(acc)
            seed_rows.append(
                {"cell": c.name, "split": split_title(split, trained)}
                | {f"seed {s}": f"{a:.3f}" for s, a in zip(c.seeds, acc, strict=True)}
            )
            per_seed[c.name][split] = acc.tolist()
        rows.append(row)
        for region in REGION_TITLES:
            chosen = [
                s for s in length_splits(c) if s.partition("_")[2].partition("_")[2] == region
            ]
            if chosen:
                lengths = np.array([split_order(s)[0] for s in chosen])
                label = f"{c.name} ({REGION_TITLES[region]})"
                curves[label] = (lengths, np.stack([split_accuracy(c, s) for s in chosen]))
    quantities = {split_title(s, trained): (lambda c, s=s: split_accuracy(c, s)) for s in splits}
    paired_rows, records = comparisons.against_reference(
        cells, "model.position", "sinusoidal", quantities
    )
    plots.accuracy_vs_length(curves, root / "extrapolation.png")
    chance = chance_level(cells[0].config)
    text = f"# Length extrapolation per position encoding\n\nRun directory: `{root}`. "
    if trained:
        text += f"Trained on lengths <= L = {trained}. "
    text += (
        "Splits: 'anywhere', the label-deciding tokens anywhere in the sequence; 'within L', "
        "all of them at positions < L (trained positions, in a longer sequence); 'beyond L', "
        "all at positions >= L, never seen in training. "
    )
    if chance is not None:
        text += f"Chance: {chance:.4f} (labels uniform over {round(1 / chance)} classes). "
    text += tables.runtime(cells)
    text += "## Test accuracy (mean ± sample std over seeds)\n\n" + tables.markdown(rows)
    if paired_rows:
        text += (
            "\n## Paired difference with sinusoidal\n\nEach encoding minus sinusoidal, seed "
            "by seed (same initialisation seed and batches): mean difference in accuracy with "
            f"its 95% BCa bootstrap interval ({stats.BOOTSTRAP_RESAMPLES} resamples), seeds "
            "better/worse/tied, exact two-sided sign-test p and paired permutation p.\n\n"
            + tables.markdown(paired_rows)
        )
    text += "\n## Every seed\n\n" + tables.markdown(seed_rows)
    text += "\n![extrapolation](extrapolation.png)\n"
    figures = {"chance": chance, "train_len": trained, "accuracy": per_seed}
    return tables.write(root, "extrapolation", text, figures | {"comparisons": records})
