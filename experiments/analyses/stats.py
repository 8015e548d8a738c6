"""Paired comparisons between two arms (kernels, encodings) that saw the same seeds and data.

A comparison is paired: arm A and arm B ran with the same initialisation seeds, data draws and
batches, so the unit of evidence is the per-pair difference ``b - a``. For it we report

* the mean difference with a bootstrap confidence interval (``scipy.stats.bootstrap``, BCa,
  a fixed generator so that an analysis rerun writes the same bytes),
* the sample standard deviation (``ddof = 1``) of the differences,
* an exact two-sided sign test (``scipy.stats.binomtest`` on the pairs that differ), which can
  never go below ``2 ** (1 - n)`` with ``n`` such pairs: 3 pairs cannot decide at 5%, 6 can,
* an exact paired permutation test of the mean difference (every sign flip when ``2 ** n`` is
  small enough, else ``PERMUTATION_RESAMPLES`` random flips).

For a binary outcome (reached the criterion or not) the differences are -1, 0 or 1 and the sign
test is the exact McNemar test on the discordant pairs.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9_999
PERMUTATION_RESAMPLES = 9_999
EXACT_PERMUTATION_MAX_PAIRS = 16  # 2 ** 16 sign flips: exact and still fast
SEED = 0  # the resampling generator's seed: reruns are byte-identical


@dataclasses.dataclass(frozen=True)
class Paired:
    """The paired comparison of ``b - a`` over ``n`` pairs (pairs with a non-finite side are
    dropped and counted in ``dropped``)."""

    n: int
    dropped: int
    mean: float  # mean of b - a
    std: float  # sample std of b - a (ddof = 1); nan for n < 2
    ci_low: float  # bootstrap interval of the mean difference; nan when it cannot be formed
    ci_high: float
    wins: int  # pairs with b > a
    losses: int  # pairs with b < a
    ties: int
    sign_p: float  # exact two-sided sign test on the pairs that differ
    permutation_p: float  # two-sided paired permutation test of the mean difference
    min_sign_p: float  # the smallest sign-test p-value n differing pairs allow: 2 ** (1 - n)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: p-value of ``wins`` vs ``losses`` under a fair coin (ties
    excluded, as in the standard test); 1.0 when every pair ties."""
    n = wins + losses
    return 1.0 if n == 0 else float(stats.binomtest(wins, n, 0.5).pvalue)


def bootstrap_interval(differences: np.ndarray) -> tuple[float, float]:
    """BCa bootstrap interval of the mean difference (percentile where BCa's acceleration is
    undefined, e.g. 0/1 outcomes with few discordant pairs); ``(nan, nan)`` with fewer than 3
    pairs or when every difference is equal (no spread to resample)."""
    if differences.size < 3 or np.ptp(differences) == 0:
        return float("nan"), float("nan")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            result = stats.bootstrap(
                (differences,),
                np.mean,
                confidence_level=CONFIDENCE,
                n_resamples=BOOTSTRAP_RESAMPLES,
                method=method,
                rng=np.random.default_rng(SEED),
            )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            break
    return float(low), float(high)


def permutation_p(differences: np.ndarray) -> float:
    """Two-sided paired permutation test of mean(differences) = 0 (random sign flips)."""
    if differences.size < 2 or not differences.any():
        return 1.0  # one pair: its two sign flips have the same |mean|
    exact = differences.size <= EXACT_PERMUTATION_MAX_PAIRS
    result = stats.permutation_test(
        (differences,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf if exact else PERMUTATION_RESAMPLES,
        alternative="two-sided",
        rng=np.random.default_rng(SEED),
    )
    return float(result.pvalue)


def paired(a, b) -> Paired:
    """Compare arm ``b`` with arm ``a`` pair by pair (``a[i]`` and ``b[i]`` are one pair)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired arms must be 1-D and of one length, got {a.shape}, {b.shape}")
    finite = np.isfinite(a) & np.isfinite(b)
    d = b[finite] - a[finite]
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    low, high = bootstrap_interval(d)
    return Paired(
        n=int(d.size),
        dropped=int((~finite).sum()),
        mean=float(d.mean()) if d.size else float("nan"),
        std=float(d.std(ddof=1)) if d.size > 1 else float("nan"),
        ci_low=low,
        ci_high=high,
        wins=wins,
        losses=losses,
        ties=int(d.size - wins - losses),
        sign_p=sign_test(wins, losses),
        permutation_p=permutation_p(d),
        min_sign_p=float(2.0 ** (1 - (wins + losses))) if wins + losses else 1.0,
    )


def mean_std(x) -> tuple[float, float]:
    """Mean and sample std (ddof = 1) of the finite values; std nan with fewer than 2."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if not x.size:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")


def describe(result: Paired, digits: int = 3) -> str:
    """One cell of a table: ``+0.061 [0.03, 0.09], 7/1/0, p_sign 0.07, p_perm 0.02``."""

    def f(x: float) -> str:
        return "–" if not np.isfinite(x) else f"{x:+.{digits}g}"

    interval = f" [{f(result.ci_low)}, {f(result.ci_high)}]" if np.isfinite(result.ci_low) else ""
    return (
        f"{f(result.mean)}{interval}, +{result.wins}/−{result.losses}/={result.ties}, "
        f"p_sign {result.sign_p:.2g}, p_perm {result.permutation_p:.2g}"
    )
