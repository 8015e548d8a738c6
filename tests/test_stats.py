"""The analyses' paired statistics against independent references: the sign test against the
binomial sum written out, the permutation test against brute-force enumeration of sign flips,
the bootstrap interval against the normal-theory interval on a large sample, the sample std
against ``statistics.stdev``; and the pairing of cells by (data draw, seed)."""

from __future__ import annotations

import itertools
import math
import pathlib
import statistics

import numpy as np
import pytest

from experiments.analyses import comparisons, stats
from experiments.analyses.cells import Outcomes


def binomial_two_sided(wins: int, losses: int) -> float:
    """Exact two-sided sign test written out: 2 x the smaller tail of Binomial(n, 1/2)."""
    n, k = wins + losses, min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def brute_force_permutation_p(d: np.ndarray) -> float:
    """Share of all 2^n sign flips whose |mean| is at least the observed one."""
    observed = abs(d.mean())
    flips = [abs((np.array(s) * d).mean()) for s in itertools.product((1, -1), repeat=d.size)]
    return float(np.mean(np.array(flips) >= observed - 1e-12))


@pytest.mark.parametrize("draw", range(6))
def test_paired_matches_independent_references(draw):
    rng = np.random.default_rng(1000 + draw)
    n = int(rng.integers(5, 11))
    a = rng.normal(size=n)
    b = a + rng.normal(0.4 * (draw % 3), 1.0, size=n)
    result = stats.paired(a, b)
    d = b - a
    assert result.n == n and result.dropped == 0
    assert result.mean == pytest.approx(d.mean(), rel=1e-12)
    assert result.std == pytest.approx(statistics.stdev(d.tolist()), rel=1e-12)
    assert (result.wins, result.losses, result.ties) == (int((d > 0).sum()), int((d < 0).sum()), 0)
    assert result.sign_p == pytest.approx(binomial_two_sided(result.wins, result.losses))
    assert result.permutation_p == pytest.approx(brute_force_permutation_p(d), abs=1e-9)
    assert result.ci_low <= result.mean <= result.ci_high
    assert result.min_sign_p == pytest.approx(2.0 ** (1 - n))


def test_sign_test_floor_three_pairs_cannot_decide():
    result = stats.paired([0.1, 0.2, 0.3], [0.5, 0.6, 0.9])
    assert result.wins == 3 and result.sign_p == pytest.approx(0.25)
    assert result.min_sign_p == pytest.approx(0.25)  # 2 ** (1 - 3): never below 5%


def test_bootstrap_interval_agrees_with_normal_theory_on_a_large_sample():
    rng = np.random.default_rng(7)
    d = rng.normal(0.3, 1.0, size=400)
    result = stats.paired(np.zeros_like(d), d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert result.ci_low == pytest.approx(d.mean() - half, abs=0.02)
    assert result.ci_high == pytest.approx(d.mean() + half, abs=0.02)


def test_reruns_are_identical_and_non_finite_pairs_are_dropped():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=12), rng.normal(size=12)
    a[2], b[5] = np.nan, np.inf
    first, second = stats.paired(a, b), stats.paired(a, b)
    assert first == second  # the resampling generator is seeded: analyses rewrite the same bytes
    assert first.n == 10 and first.dropped == 2


def test_binary_outcomes_give_the_exact_mcnemar_test():
    reached_a = np.array([1, 1, 0, 0, 0, 1, 0, 0], float)
    reached_b = np.array([1, 1, 1, 1, 1, 1, 1, 0], float)
    result = stats.paired(reached_a, reached_b)
    assert (result.wins, result.losses, result.ties) == (4, 0, 4)
    assert result.sign_p == pytest.approx(2 * 0.5**4)  # 4 discordant pairs, all one way
    assert result.mean == pytest.approx(0.5)


@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_pairs(n):
    rng = np.random.default_rng(100 + n)
    a, b = rng.normal(size=n), rng.normal(size=n)
    result = stats.paired(a, b)
    assert result.n == n
    assert result.permutation_p == pytest.approx(brute_force_permutation_p(b - a))
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)  # fewer than 3 pairs


def test_no_pairs():
    result = stats.paired([], [])
    assert result.n == 0 and result.sign_p == 1.0 and result.permutation_p == 1.0


def test_unequal_arms_are_refused():
    with pytest.raises(ValueError, match="one length"):
        stats.paired([1.0, 2.0], [1.0])


def outcomes(name, kernel, draws, seeds, values) -> Outcomes:
    n = len(seeds)
    flags = np.zeros(n, bool)
    nan = np.full(n, np.nan)
    return Outcomes(
        name=name, path=pathlib.Path(name), fields={"model.kernel": kernel}, config={},
        summary={}, seeds=np.array(seeds), converged=flags, steps=nan,
        converged_baseline=flags, steps_baseline=nan, baseline_unknown=flags,
        draw=np.array(draws), initial_loss=nan, final_loss=nan, relative_final_loss=nan,
        baseline_relative_final_loss=np.array(values, float), diverged=flags, init={},
        final_grad_norm=nan, loss_increases=nan,
    )  # fmt: skip


def test_cells_pair_by_draw_and_seed_whatever_their_order():
    a = outcomes("a", "softmax", ["0", "0", "1", "1"], [0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0])
    # the same pairs in another order, and one seed the reference lacks
    b = outcomes("b", "gaussian", ["1", "0", "1", "0", "2"], [1, 0, 0, 1, 0],
                 [40.0, 10.0, 30.0, 20.0, 99.0])  # fmt: skip
    va, vb = comparisons.aligned(a, b, a.baseline_relative_final_loss,
                                 b.baseline_relative_final_loss)  # fmt: skip
    np.testing.assert_array_equal(vb / va, [10.0] * 4)
    rows, records = comparisons.against_reference(
        [a, b], "model.kernel", "softmax", {"log10 loss": comparisons.log_baseline_loss}
    )
    assert [r["cell"] for r in rows] == ["b"] and rows[0]["pairs"] == "4"
    assert records[0]["log10 loss"]["mean"] == pytest.approx(1.0)
