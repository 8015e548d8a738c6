"""The train state: one typed pytree that the step, the hooks and the checkpointer share.

Every array but ``step`` has a leading seed axis (``config.seeds`` are trained at once, vmapped),
so the state shards over the mesh axis ``seeds`` as it is.

Each seed's *outcome* is tracked on the device inside the state, so the host fetches nothing
between logged steps and every step is still accounted for exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: the number of updates done (= the data position)
    trainable: PyTree  # the trained leaves only; frozen ones live outside the state
    opt_state: PyTree  # optimiser state for the trained leaves only
    outcome: dict  # per-seed bookkeeping, see `initial_outcome`
    rng: jax.Array  # per-seed typed keys (dropout)
    position_cache: PyTree = None  # FLOATER terms between re-solves (`update_every > 1`)


def initial_outcome(num_seeds: int) -> dict:
    # Distinct arrays per field: the state is donated, and one buffer cannot be donated twice.
    nan = lambda: jnp.full((num_seeds,), jnp.nan, jnp.float32)
    never = lambda: jnp.full((num_seeds,), -1, jnp.int32)
    return {
        "alive": jnp.ones((num_seeds,), bool),
        "diverged_at": never(),
        "threshold_step": never(),
        "baseline_step": never(),
        "initial_loss": nan(),
        "last_loss": nan(),
        "min_loss": nan(),
    }


def track_outcome(o: dict, step, loss, finite, threshold: float, baseline_threshold) -> dict:
    """One seed's outcome after the loss of ``step`` (a no-op once the seed has diverged).

    Two convergence criteria: ``loss <= threshold * initial loss`` and
    ``loss <= baseline_threshold`` (an absolute level, ``threshold x`` a trivial predictor's
    loss, computed by the caller; NaN disables it).
    """
    live = o["alive"] & finite
    initial = jnp.where(jnp.isnan(o["initial_loss"]) & live, loss, o["initial_loss"])
    first = lambda hit, at: jnp.where(live & (at < 0) & hit, step, at)
    return {
        "alive": live,
        "diverged_at": jnp.where(o["alive"] & ~finite, step, o["diverged_at"]),
        "threshold_step": first(loss <= threshold * initial, o["threshold_step"]),
        "baseline_step": first(loss <= baseline_threshold, o["baseline_step"]),
        "initial_loss": initial,
        "last_loss": jnp.where(live, loss, o["last_loss"]),
        "min_loss": jnp.where(live, jnp.fmin(loss, o["min_loss"]), o["min_loss"]),
    }
