"""Per-seed bookkeeping: statuses, both convergence criteria, the baseline level, JSON output."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import logs, steps
from experiments.state import initial_outcome, track_outcome


def outcome_after(losses: np.ndarray, threshold: float, baseline: float) -> dict:
    """Run the on-device tracker over a [steps, seeds] loss table (NaN/inf: not finite)."""
    o = initial_outcome(losses.shape[1])
    for step, row in enumerate(losses):
        row = jnp.asarray(row, jnp.float32)
        o = track_outcome(o, step, row, jnp.isfinite(row), threshold, jnp.float32(baseline))
    return {k: np.asarray(v) for k, v in o.items()}


def test_seeds_that_diverge_do_not_relabel_the_others():
    rng = np.random.default_rng()
    losses = np.exp(-np.linspace(0, 9, 40))[:, None] * rng.uniform(1, 2, (1, 8))
    for seed, at in ((1, 12), (2, 30), (5, 35)):
        losses[at:, seed] = np.inf if seed != 2 else np.nan
    o = outcome_after(losses, threshold=1e-3, baseline=1e-4)
    summary = logs.summarize(
        o, tuple(range(8)), interrupted=False, final_step=40, loss_threshold=1e-3,
        baseline_loss=0.5, baseline_threshold=2e-4, evaluation={"test": {"loss": [np.inf] * 8}},
    )  # fmt: skip
    statuses = [s["status"] for s in summary["seeds"]]
    assert statuses == ["done", "diverged", "diverged", "done", "done", "diverged", "done", "done"]
    assert summary["status"] == "done" and summary["num_diverged"] == 3
    assert [s["diverged_at"] for s in summary["seeds"]][1:3] == [12, 30]
    for i, s in enumerate(summary["seeds"]):
        expected = np.flatnonzero(losses[:, i] <= 1e-3 * losses[0, i])
        assert s["steps_to_threshold"] == (int(expected[0]) if expected.size else None)
        below = np.flatnonzero(losses[:, i] <= 1e-4)
        assert s["steps_to_baseline"] == (int(below[0]) if below.size else None)
    json.dumps(summary, allow_nan=False)  # infinities were written as null
    assert summary["seeds"][0]["eval/test/loss"] is None


def test_a_run_is_diverged_only_when_every_seed_diverged():
    losses = np.array([[1.0, 1.0], [np.nan, 0.5], [np.nan, np.inf]])
    o = outcome_after(losses, 1e-3, np.nan)
    summary = logs.summarize(
        o, (0, 1), interrupted=False, final_step=3, loss_threshold=1e-3, baseline_loss=None,
        baseline_threshold=1e-3, evaluation={},
    )  # fmt: skip
    assert summary["status"] == "diverged" and summary["num_diverged"] == 2
    assert summary["fraction_converged_baseline"] == 0.0  # NaN level: the criterion is off


def test_a_near_trivial_fit_meets_the_initial_loss_criterion_but_not_the_baseline():
    """Targets nearly constant: predicting their mean is already 1e-3 x the initial loss."""
    rng = np.random.default_rng()
    targets = 3.0 + 1e-3 * rng.normal(size=(16, 4, 1))
    baseline = steps.baseline_loss({"targets": targets}, "regression")
    closed_form = 0.5 * np.mean(np.sum((targets - targets.mean(0)) ** 2, axis=(1, 2)))
    assert baseline == pytest.approx(closed_form, rel=1e-12)
    initial = 0.5 * np.mean(np.sum(targets**2, axis=(1, 2)))  # a model predicting zero
    trivial = baseline * 1.01  # a fit barely better than the constant predictor
    o = outcome_after(np.array([[initial], [trivial]]), 1e-3, 1e-3 * baseline)
    assert o["threshold_step"][0] == 1 and o["baseline_step"][0] == -1


def test_classification_baseline_is_the_label_entropy():
    labels = np.array([0, 0, 0, 1, 2, 2])
    p = np.array([3, 1, 2]) / 6
    assert steps.baseline_loss({"labels": labels}, "classification") == pytest.approx(
        -np.sum(p * np.log(p))
    )


def test_non_finite_metrics_are_null_and_named():
    line = logs.dumps({"step": 3, "loss": float("inf"), "loss/seeds": [1.0, float("nan")]})
    record = json.loads(line)
    assert record["loss"] is None and record["loss/seeds"] == [1.0, None]
    assert record["nonfinite"] == ["loss", "loss/seeds"]
