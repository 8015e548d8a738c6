"""Per-seed outcomes of the cells of a sweep, as arrays over seeds, from its run directories.

Everything is read through :mod:`experiments.rundirs`: ``summary.json`` (per-seed status, loss
at the start and end, steps to each convergence criterion), ``metrics.jsonl`` (the theory
quantities logged at step 0, the gradient norm and loss at logged steps) and ``config.json``.

Two convergence criteria per seed: *eps* (loss <= ``train.loss_threshold`` x the seed's initial
loss) and *baseline* (loss <= ``train.baseline_threshold`` x the best constant predictor's loss
on the training targets, a level a near-trivial fit does not meet). Cells that differ only in
``data.seed`` are draws of one cell (:func:`merge_draws`); every pooled array keeps each seed's
draw, so figures can be given per draw as well as pooled.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np

from experiments import rundirs
from experiments.rundirs import config_value

INIT_QUANTITIES = ("sigma_min_attention_output", "sv_ratio_q_v", "sv_ratio_k_v")
DRAW_FIELDS = ("data.seed",)  # a new draw of the data (inputs X, and the teacher where it has one)


@dataclasses.dataclass
class Outcomes:
    """One cell (or several pooled, see :func:`merge_seeds`): its sweep fields, config and
    summary, and arrays with one entry per seed."""

    name: str
    path: pathlib.Path
    fields: dict  # the config fields the sweep set for the cell
    config: dict
    summary: dict
    seeds: np.ndarray
    converged: np.ndarray  # bool: the loss reached eps (relative to its initial loss)
    steps: np.ndarray  # steps to eps, nan where not reached
    converged_baseline: np.ndarray  # bool: the loss reached the baseline-relative level
    steps_baseline: np.ndarray  # steps to it, nan where not reached
    # bool: not known whether it would have reached the baseline level (its run stopped at eps
    # before, or the summary predates the criterion)
    baseline_unknown: np.ndarray
    draw: np.ndarray  # the data draw (data.seed) of each seed, as text
    initial_loss: np.ndarray
    final_loss: np.ndarray
    relative_final_loss: np.ndarray
    baseline_relative_final_loss: np.ndarray  # final loss / the best constant predictor's
    diverged: np.ndarray  # bool
    init: dict  # quantity of INIT_QUANTITIES -> per-seed values at step 0
    final_grad_norm: np.ndarray  # at the last logged step
    loss_increases: np.ndarray  # fraction of logged intervals over which the loss went up
    group: str = ""  # the sweep it belongs to, relative to the analysed root ("" top level)

    @property
    def threshold(self) -> float:
        return float(self.summary.get("loss_threshold", float("nan")))

    @property
    def baseline_threshold(self) -> float:
        return float(self.summary.get("baseline_threshold", float("nan")))

    @property
    def draws(self) -> list[str]:
        """The data draws pooled into the cell, in first-seen order."""
        return list(dict.fromkeys(self.draw.tolist()))


PER_SEED = (  # the array fields, concatenated when cells are pooled
    "seeds",
    "converged",
    "steps",
    "converged_baseline",
    "steps_baseline",
    "baseline_unknown",
    "draw",
    "initial_loss",
    "final_loss",
    "relative_final_loss",
    "baseline_relative_final_loss",
    "diverged",
    "final_grad_norm",
    "loss_increases",
)


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def per_seed(row: dict, name: str, num_seeds: int) -> np.ndarray:
    """A logged quantity for every seed (``name/seeds`` when there are several seeds)."""
    if f"{name}/seeds" in row:
        return np.asarray(row[f"{name}/seeds"], float)
    if name in row and num_seeds == 1:
        return np.asarray([row[name]], float)
    return np.full(num_seeds, np.nan)


def series(run_dir: pathlib.Path, name: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """``(steps [T], values [T, seeds])`` of a quantity logged at training steps."""
    rows = [r for r in rundirs.read_metrics(run_dir) if name in r]
    steps = np.array([r["step"] for r in rows])
    values = np.array([r.get(f"{name}/seeds", [r[name]]) for r in rows], float)
    return steps, values


def stopped_early(summary: dict) -> bool:
    """The run ended before its last step without being interrupted (``stop_at_threshold``)."""
    final, planned = summary.get("final_step"), summary.get("num_steps")
    done = summary.get("status") == "done"
    return done and final is not None and planned is not None and final < planned


def baseline_unknown(summary: dict) -> np.ndarray:
    """Per seed: whether the baseline criterion's outcome is unknown. A run stopped at eps may
    stop before a live seed meets the (possibly stricter) baseline level; a summary written
    before the criterion existed has no ``steps_to_baseline``."""
    early = stopped_early(summary)
    return np.array(
        [
            "steps_to_baseline" not in s
            or (early and s["status"] == "done" and s["steps_to_baseline"] is None)
            for s in summary["seeds"]
        ]
    )


def draw_of(fields: dict, config: dict) -> str:
    """The cell's data draw as text (its ``data.seed``; '' where the config has none)."""
    values = []
    for field in DRAW_FIELDS:
        value = fields[field] if field in fields else config_value(config, field)
        values.append("" if value is None else str(value))
    return ",".join(values)


def load(path: pathlib.Path, name: str, fields: dict, summary: dict, group: str = "") -> Outcomes:
    """The outcomes of the finished run at ``path`` (its ``summary``, already read)."""
    seeds = summary["seeds"]
    n = len(seeds)
    steps = np.array([_float(s["steps_to_threshold"]) for s in seeds])
    steps_baseline = np.array([_float(s.get("steps_to_baseline")) for s in seeds])
    config = rundirs.read_config(path)
    rows = rundirs.read_metrics(path)
    first = next((r for r in rows if r["step"] == 0), rows[0] if rows else {})
    losses = np.array([per_seed(r, "loss", n) for r in rows]).reshape(-1, n)
    increases = np.mean(np.diff(losses, axis=0) > 0, axis=0) if len(losses) > 1 else np.nan
    return Outcomes(
        name=name,
        path=path,
        fields=dict(fields),
        config=config,
        summary=summary,
        seeds=np.array([s["seed"] for s in seeds]),
        converged=np.isfinite(steps),
        steps=steps,
        converged_baseline=np.isfinite(steps_baseline),
        steps_baseline=steps_baseline,
        baseline_unknown=baseline_unknown(summary),
        draw=np.array([draw_of(fields, config)] * n),
        initial_loss=np.array([_float(s["initial_loss"]) for s in seeds]),
        final_loss=np.array([_float(s["final_loss"]) for s in seeds]),
        relative_final_loss=np.array([_float(s.get("relative_final_loss")) for s in seeds]),
        baseline_relative_final_loss=np.array(
            [_float(s.get("baseline_relative_final_loss")) for s in seeds]
        ),
        diverged=np.array([s["status"] == "diverged" for s in seeds]),
        init={q: per_seed(first, q, n) for q in INIT_QUANTITIES},
        final_grad_norm=per_seed(rows[-1] if rows else {}, "grad_norm", n),
        loss_increases=np.broadcast_to(increases, (n,)).astype(float),
        group=group,
    )


def load_all(root: pathlib.Path) -> list[Outcomes]:
    """The finished cells under ``root`` in grid order (nested sweeps after the top level).

    Raises :class:`FileNotFoundError` when none has finished and
    :class:`experiments.rundirs.RunDirError` for a damaged file.
    """
    root = pathlib.Path(root)
    out = []
    for cell in rundirs.list_cells(root):
        summary = rundirs.read_summary(cell.path)
        if summary is None:
            continue
        parent = cell.path.parent
        in_sweep = parent != root and (parent / rundirs.INDEX).exists()
        group = parent.relative_to(root).as_posix() if in_sweep else ""
        out.append(load(cell.path, cell.name, cell.overrides, summary, group))
    if not out:
        raise FileNotFoundError(f"no finished run (summary.json) under {str(root)!r}")
    return out


def field_of(cell: Outcomes, field: str):
    """A sweep field's value for the cell (from the sweep, else from its config.json)."""
    if field in cell.fields:
        return cell.fields[field]
    return config_value(cell.config, field)


def short_key(field: str) -> str:
    """``'train.learning_rate'`` -> ``'learning_rate'``."""
    return field.rsplit(".", 1)[-1]


def short_label(fields: dict) -> str:
    """``learning_rate=0.1,kernel=softmax``: the fields by their last key."""
    return ",".join(f"{short_key(k)}={v}" for k, v in fields.items()) or "all"


def cell_label(fields: dict) -> str:
    """The run directory name of a cell with these fields (as the sweep writes it)."""
    from experiments import grid  # no JAX

    return grid.cell_name(fields) if fields else "all"


def merge_seeds(
    cells: list[Outcomes], drop: tuple[str, ...], label: Callable[[dict], str] = short_label
) -> list[Outcomes]:
    """Pool cells that differ only in the fields ``drop`` (e.g. one run per seed, data draws)
    into one named ``label(kept fields)``; cells of different (nested) sweeps are never pooled
    together. A cell pooled from one run keeps that run's path."""
    groups: dict[tuple, list[Outcomes]] = {}
    for c in cells:
        key = (c.group, *((k, str(v)) for k, v in c.fields.items() if k not in drop))
        groups.setdefault(key, []).append(c)
    merged = []
    for (group, *key), members in groups.items():
        first = members[0]
        name = label({k: first.fields[k] for k, _ in key})
        merged.append(
            Outcomes(
                name=f"{group}/{name}" if group else name,
                path=first.path if len(members) == 1 else first.path.parent,
                fields={k: first.fields[k] for k, _ in key},
                config=first.config,
                summary=dict(first.summary, status=worst([m.summary["status"] for m in members])),
                init={q: np.concatenate([m.init[q] for m in members]) for q in INIT_QUANTITIES},
                group=group,
                **{f: np.concatenate([getattr(m, f) for m in members]) for f in PER_SEED},
            )
        )
    return merged


def merge_draws(cells: list[Outcomes], drop: tuple[str, ...] = ()) -> list[Outcomes]:
    """Pool the data draws of each cell (and the fields ``drop``), named like its run
    directories without the draw: with one draw per cell the names are the directories'."""
    return merge_seeds(cells, (*DRAW_FIELDS, *drop), label=cell_label)


def members(pooled: Outcomes, runs: list[Outcomes]) -> list[Outcomes]:
    """The runs a cell of :func:`merge_seeds` was pooled from."""
    return [
        r
        for r in runs
        if r.group == pooled.group
        and all(str(r.fields.get(k)) == str(v) for k, v in pooled.fields.items())
    ]


def worst(statuses: list[str]) -> str:
    for s in ("failed", "interrupted", "diverged"):
        if s in statuses:
            return s
    return statuses[0] if statuses else "n/a"
