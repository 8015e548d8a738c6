"""Shared test setup: strict rank promotion everywhere, fresh random inputs per test."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A fresh NumPy generator per test (seeded from OS entropy; the seed is printed on failure)."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    request.node.user_properties.append(("numpy_seed", seed))
    print(f"numpy seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def key(rng) -> jax.Array:
    return jax.random.key(int(rng.integers(2**31)))
