"""Paired comparisons between the arms of a sweep: a cell against its reference cell.

Two cells are arms of one comparison when their sweep fields agree except the compared field
(``model.kernel``, ``model.position``); their seeds pair up by ``(data draw, seed)``: the same
initialisation, data and batches on both sides. The statistics are :mod:`.stats`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from experiments.analyses import stats
from experiments.analyses.cells import Outcomes, field_of, members


def pair_keys(c: Outcomes) -> list[tuple[str, int]]:
    """``(data draw, seed)`` of each of the cell's seeds: what identifies a pair."""
    return list(zip(c.draw.tolist(), c.seeds.tolist(), strict=True))


def aligned(a: Outcomes, b: Outcomes, values_a, values_b) -> tuple[np.ndarray, np.ndarray]:
    """``values_a`` and ``values_b`` restricted to the pairs both cells have, in ``b``'s
    order (a pair is one data draw and seed)."""
    index = {key: i for i, key in enumerate(pair_keys(a))}
    pairs = [(index[key], j) for j, key in enumerate(pair_keys(b)) if key in index]
    ia = np.array([i for i, _ in pairs], int)
    ib = np.array([j for _, j in pairs], int)
    return np.asarray(values_a, float)[ia], np.asarray(values_b, float)[ib]


def counterpart(c: Outcomes, cells: list[Outcomes], field: str, reference) -> Outcomes | None:
    """The cell that differs from ``c`` only in ``field``, set to ``reference``: in ``c``'s own
    (nested) sweep if there, else at the top level."""
    others = {k: str(v) for k, v in c.fields.items() if k != field}
    for group in dict.fromkeys((c.group, "")):
        for r in cells:
            if r.group != group or str(field_of(r, field)) != str(reference):
                continue
            if {k: str(v) for k, v in r.fields.items() if k != field} == others:
                return r
    return None


def pooled(of: Callable[[Outcomes], np.ndarray], runs: list[Outcomes]):
    """``of`` for a cell of :func:`cells.merge_draws`: the values of the runs it pools, in
    the order its per-seed arrays have."""
    return lambda c: np.concatenate([np.asarray(of(r), float) for r in members(c, runs)])


def log_baseline_loss(c: Outcomes) -> np.ndarray:
    """log10(final / baseline loss) per seed; nan for a diverged seed (its last finite loss
    says nothing; the 'reached' comparison counts it as a miss)."""
    x = np.where(c.diverged, np.nan, c.baseline_relative_final_loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.maximum(x, 1e-30))


def against_reference(
    cells: list[Outcomes],
    field: str,
    reference,
    quantities: dict[str, Callable[[Outcomes], np.ndarray]],
) -> tuple[list[dict], list[dict]]:
    """Every cell whose ``field`` is not ``reference`` against its counterpart that is: one
    markdown row and one JSON record per cell, a :func:`stats.paired` per quantity."""
    rows, records = [], []
    for c in cells:
        if str(field_of(c, field)) == str(reference):
            continue
        ref = counterpart(c, cells, field, reference)
        if ref is None:
            continue
        row = {"cell": c.name, "against": ref.name}
        record = {"cell": c.name, "against": ref.name}
        for label, of in quantities.items():
            result = stats.paired(*aligned(ref, c, of(ref), of(c)))
            row["pairs"] = str(result.n)
            row[label] = stats.describe(result)
            record[label] = result.as_dict()
        rows.append(row)
        records.append(record)
    return rows, records


THEORY_QUANTITIES = {  # b - a where b is the cell and a the reference (softmax)
    "reached baseline (difference in share)": lambda c: c.converged_baseline.astype(float),
    "log10 final/baseline loss": log_baseline_loss,
}

THEORY_INTRO = (
    "Each kernel against softmax on the same seeds and data draws (pairs: draw x seed). "
    "'reached baseline': the difference in the share of seeds that reached the baseline level "
    "(+: more for this kernel; +wins/−losses/=ties count the discordant and concordant pairs; "
    "the sign test on them is the exact McNemar test). 'log10 final/baseline loss': mean "
    "paired difference (+: this kernel ends higher, i.e. worse) with its 95% BCa bootstrap "
    f"interval ({stats.BOOTSTRAP_RESAMPLES} resamples), wins/losses/ties, the exact sign-test "
    "p-value and the paired permutation p-value (two-sided; diverged seeds dropped from the "
    "loss comparison).\n\n"
)
