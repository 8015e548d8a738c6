"""Every registered kernel against an independent float64 NumPy reference, plus its contract.

Tests iterate over ``kernels.names()``, so a kernel registered by a user (two are registered
below, through the public decorators) is held to the same contract as the built-in ones:
masked entries and fully masked rows are exactly zero, normalised kernels have rows summing to
one, and neither values nor gradients are ever NaN/Inf, in float32 and bfloat16, for coincident
and for far-apart queries and keys. Where a kernel has a NumPy reference here (every built-in
kernel and the two test kernels) it must match it to a relative error of 1e-5 in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_dynamics import attention, kernels
from attn_dynamics.attention import MultiHeadAttention

# --------------------------------------------------------------------------------------------
# Two user kernels, registered once at import through the public decorators.

HOT = "test_kernels_hot"  # softmax form with its own option
CAUCHY = "test_kernels_cauchy"  # general, un-normalised


@kernels.register_softmax(HOT)
def _hot() -> kernels.SoftmaxForm:
    return kernels.SoftmaxForm(
        scale=lambda d, temperature=2.0, **_: temperature / math.sqrt(d),
        key_bias=lambda k, **_: None,
    )


@kernels.register(CAUCHY)
def _cauchy(q, k, mask=None, **_):
    sq = kernels.squared_norms(q).swapaxes(-1, -2) + kernels.squared_norms(k)
    sq_dist = jnp.maximum(sq - 2.0 * kernels.dot_scores(q, k), 0.0)
    return kernels.apply_mask(1.0 / (1.0 + sq_dist / q.shape[-1]), mask)


BUILTIN = ("gaussian", "gaussian_unnormalized", "linear", "softmax")

# --------------------------------------------------------------------------------------------
# Independent float64 NumPy references (no library code). Layout: q [..., Tq, h, d],
# k [..., Tk, h, d], weights [..., h, Tq, Tk], mask broadcastable to the weights.


def np_dot(q, k):
    return np.einsum("...qhd,...khd->...hqk", q, k)


def np_sq_dist(q, k):
    diff = q[..., :, None, :, :] - k[..., None, :, :, :]  # [..., Tq, Tk, h, d]
    return np.moveaxis(np.sum(diff**2, axis=-1), -1, -3)  # [..., h, Tq, Tk]


def np_full_mask(mask, shape):
    return np.ones(shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), shape)


def np_normalise(weights, mask):
    """Row-normalise non-negative weights over unmasked keys; fully masked rows are zero."""
    weights = np.where(np_full_mask(mask, weights.shape), weights, 0.0)
    total = weights.sum(-1, keepdims=True)
    return np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)


def np_masked_softmax(logits, mask):
    mask = np_full_mask(mask, logits.shape)
    top = np.max(np.where(mask, logits, -np.inf), axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np_normalise(np.where(mask, np.exp(logits - top), 0.0), mask)


def np_masked(weights, mask):
    return np.where(np_full_mask(mask, weights.shape), weights, 0.0)


def _sigma2(q, sigma2):
    return math.sqrt(q.shape[-1]) if sigma2 is None else sigma2


REFERENCES = {
    "softmax": lambda q, k, mask: np_masked_softmax(np_dot(q, k) / math.sqrt(q.shape[-1]), mask),
    "gaussian": lambda q, k, mask, sigma2=None: np_normalise(
        np.exp(-np_sq_dist(q, k) / (2.0 * _sigma2(q, sigma2))), mask
    ),
    "gaussian_unnormalized": lambda q, k, mask, sigma2=None: np_masked(
        np.exp(-np_sq_dist(q, k) / (2.0 * _sigma2(q, sigma2))), mask
    ),
    "linear": lambda q, k, mask: np_masked(np_dot(q, k) / math.sqrt(q.shape[-1]), mask),
    HOT: lambda q, k, mask, temperature=2.0: np_masked_softmax(
        temperature * np_dot(q, k) / math.sqrt(q.shape[-1]), mask
    ),
    CAUCHY: lambda q, k, mask: np_masked(1.0 / (1.0 + np_sq_dist(q, k) / q.shape[-1]), mask),
}
OPTIONS = {  # a non-default option per kernel that has one
    "gaussian": {"sigma2": 1.7},
    "gaussian_unnormalized": {"sigma2": 5.0},
    HOT: {"temperature": 0.5},
}


def max_rel_err(actual, expected) -> float:
    """Max element-wise relative error. Entries smaller than 1% of the largest are compared to
    that 1%: a signed kernel (linear) has entries near zero whose float32 error is set by the
    size of the terms of q.k, not by their (cancelled) sum."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    floor = max(1e-2 * float(np.max(np.abs(expected))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), floor)))


# --------------------------------------------------------------------------------------------
# Inputs


def qk(rng, batch=(3,), tq=6, tk=6, heads=2, d=8, dtype=np.float32):
    """Random float32 queries and keys (never zeros) and their exact float64 values."""
    q = rng.normal(size=(*batch, tq, heads, d)).astype(dtype)
    k = rng.normal(size=(*batch, tk, heads, d)).astype(dtype)
    return q, k


def random_mask(rng, batch, tq, tk, kind):
    """``[B, 1, Tq, Tk]`` / ``[1, Tq, Tk]`` masks from the library helpers; padding ones always
    leave some query rows fully masked (sample 0 has only its first token valid)."""
    if kind is None:
        return None
    valid = rng.random(size=(*batch, max(tq, tk))) < 0.6
    valid[..., 0] = True
    valid.reshape(-1, valid.shape[-1])[0] = False
    valid.reshape(-1, valid.shape[-1])[0, 0] = True
    padding = kernels.padding_mask(jnp.asarray(valid[..., :tq]), jnp.asarray(valid[..., :tk]))
    causal = kernels.causal_mask(tq, tk)
    if kind == "padding":
        return padding
    if kind == "causal":
        return causal
    assert kind == "combined"
    return padding & causal.reshape((1,) * (padding.ndim - causal.ndim) + causal.shape)


def all_names():
    return kernels.names()


def normalised_names():
    return [n for n in kernels.names() if kernels.lookup(n).normalized]


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


# --------------------------------------------------------------------------------------------
# Reference comparisons


def test_builtins_and_test_kernels_registered():
    assert set(BUILTIN) | {HOT, CAUCHY} <= set(kernels.names())
    assert {"softmax", "gaussian", HOT} <= set(normalised_names())
    for name in ("softmax", "gaussian", HOT):
        assert kernels.lookup(name).softmax_form is not None
    for name in ("gaussian_unnormalized", "linear", CAUCHY):
        assert kernels.lookup(name).softmax_form is None


def test_every_builtin_has_a_reference():
    assert set(BUILTIN) <= set(REFERENCES)


@pytest.mark.parametrize("mask_kind", [None, "padding", "causal", "combined"])
@pytest.mark.parametrize("name", [n for n in all_names() if n in REFERENCES])
def test_matches_float64_reference(name, mask_kind, rng):
    batch, tq, tk = (2, 3), 5, 7
    q, k = qk(rng, batch, tq, tk, d=8)
    mask = random_mask(rng, batch, tq, tk, mask_kind)
    got = kernels.get(name)(jnp.asarray(q), jnp.asarray(k), mask)
    assert got.dtype == jnp.float32 and got.shape == (*batch, 2, tq, tk)
    expected = REFERENCES[name](q.astype(np.float64), k.astype(np.float64), mask)
    assert max_rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_match_reference(name, rng):
    q, k = qk(rng)
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    fn = kernels.get(name)
    got = fn(jnp.asarray(q), jnp.asarray(k), None, **OPTIONS[name])
    assert max_rel_err(got, REFERENCES[name](q64, k64, None, **OPTIONS[name])) <= 1e-5
    # ... and the option matters: the default differs.
    default = fn(jnp.asarray(q), jnp.asarray(k), None)
    assert max_rel_err(default, REFERENCES[name](q64, k64, None)) <= 1e-5
    assert not np.allclose(default, got, rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["gaussian", "gaussian_unnormalized"])
def test_sigma2_closed_form(name, rng):
    """exp(-||q_i - k_j||^2 / (2 sigma^2)), computed here from explicit differences."""
    d = 8
    q, k = qk(rng, d=d)
    diff = q.astype(np.float64)[:, :, None] - k.astype(np.float64)[:, None, :]  # [B,Tq,Tk,h,d]
    fn = kernels.get(name)
    for sigma2 in (0.5, 3.0, None):
        s2 = math.sqrt(d) if sigma2 is None else sigma2
        raw = np.exp(-np.sum(diff**2, -1) / (2 * s2)).transpose(0, 3, 1, 2)  # [B, h, Tq, Tk]
        expected = raw / raw.sum(-1, keepdims=True) if name == "gaussian" else raw
        kwargs = {} if sigma2 is None else {"sigma2": sigma2}
        got = fn(jnp.asarray(q), jnp.asarray(k), None, **kwargs)
        assert max_rel_err(got, expected) <= 1e-5
    explicit_default = fn(jnp.asarray(q), jnp.asarray(k), None, sigma2=math.sqrt(d))
    np.testing.assert_allclose(fn(jnp.asarray(q), jnp.asarray(k)), explicit_default, rtol=1e-6)


def test_gaussian_is_softmax_with_key_norm_bias(rng):
    """The identity the stable implementation relies on, checked in float64 (not x64 JAX)."""
    q, k = qk(rng)
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    s2 = 2.5
    logits = (np_dot(q64, k64) - 0.5 * np.sum(k64**2, -1).swapaxes(-1, -2)[..., None, :]) / s2
    np.testing.assert_allclose(
        np_masked_softmax(logits, None), REFERENCES["gaussian"](q64, k64, None, sigma2=s2), 1e-12
    )


def test_float64_matches_reference_tightly(rng):
    q, k = qk(rng, dtype=np.float64)
    with jax.enable_x64(True):
        for name in BUILTIN:
            got = kernels.get(name)(jnp.asarray(q), jnp.asarray(k))
            assert got.dtype == jnp.float64
            assert max_rel_err(got, REFERENCES[name](q, k, None)) <= 1e-12


# --------------------------------------------------------------------------------------------
# Contract of every registered kernel


@pytest.mark.parametrize("mask_kind", [None, "padding", "combined"])
@pytest.mark.parametrize("name", normalised_names())
def test_normalised_rows_sum_to_one(name, mask_kind, rng):
    batch, tq, tk = (3,), 6, 6
    q, k = qk(rng, batch, tq, tk, d=8)
    mask = random_mask(rng, batch, tq, tk, mask_kind)
    weights = np.asarray(kernels.get(name)(jnp.asarray(q), jnp.asarray(k), mask), np.float64)
    assert np.all(weights >= 0)
    sums = weights.sum(-1)
    has_key = np_full_mask(mask, weights.shape).any(-1)
    np.testing.assert_allclose(sums[has_key], 1.0, atol=1e-5)
    np.testing.assert_array_equal(sums[~has_key], 0.0)


@pytest.mark.parametrize("mask_kind", ["padding", "causal", "combined"])
@pytest.mark.parametrize("name", all_names())
def test_masked_entries_are_zero(name, mask_kind, rng):
    batch, tq, tk = (3,), 6, 6
    q, k = qk(rng, batch, tq, tk, d=8)
    mask = random_mask(rng, batch, tq, tk, mask_kind)
    weights = np.asarray(kernels.get(name)(jnp.asarray(q), jnp.asarray(k), mask))
    full = np_full_mask(mask, weights.shape)
    assert np.all(np.isfinite(weights))
    np.testing.assert_array_equal(weights[~full], 0.0)
    fully_masked = ~full.any(-1)
    if mask_kind != "causal":
        assert fully_masked.any()  # the padding masks always leave some rows with no key
    np.testing.assert_array_equal(weights[fully_masked], 0.0)
    if name in REFERENCES:  # unmasked entries are unaffected by the mask
        expected = REFERENCES[name](q.astype(np.float64), k.astype(np.float64), mask)
        assert max_rel_err(weights, expected) <= 1e-5


def far_apart(rng, shape, dtype):
    """Queries and keys with ||q_i - k_j||^2 ~ 1e4 for every pair (all keys 100 away)."""
    q = rng.normal(size=shape)
    direction = rng.normal(size=shape[-1])
    k = rng.normal(size=shape) + 100.0 * direction / np.linalg.norm(direction)
    sq = np_sq_dist(q, k)
    assert 0.8e4 < sq.min() and sq.max() < 1.2e4
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype)


def coincident(rng, shape, dtype):
    q = jnp.asarray(rng.normal(size=shape), dtype)
    return q, q


@pytest.mark.parametrize("mask_kind", [None, "padding"])
@pytest.mark.parametrize("case", [coincident, far_apart], ids=["coincident", "far"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", all_names())
def test_finite_values_and_gradients(name, dtype, case, mask_kind, rng):
    batch, t, heads, d = (3,), 6, 2, 8  # the shapes of qk(): compiled ops are shared
    q, k = case(rng, (*batch, t, heads, d), dtype)
    mask = random_mask(rng, batch, t, t, mask_kind)
    cotangent = jnp.asarray(rng.normal(size=(*batch, heads, t, t)), jnp.float32)
    fn = kernels.get(name)

    def loss(q, k):
        return jnp.sum(fn(q, k, mask).astype(jnp.float32) * cotangent)

    weights = fn(q, k, mask)
    assert weights.dtype == dtype
    assert np.all(np.isfinite(np.asarray(weights, np.float32)))
    grads = jax.grad(loss, argnums=(0, 1))(q, k)
    for g in grads:
        assert g.dtype == dtype
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
    if case is coincident and mask_kind is None and kernels.lookup(name).normalized:
        sums = np.asarray(weights, np.float32).sum(-1)
        np.testing.assert_allclose(sums, 1.0, atol=3e-2 if dtype == jnp.bfloat16 else 1e-5)
    if mask is not None:  # a fully masked query row has zero gradient
        no_key = ~np_full_mask(mask, weights.shape).any(-1)  # [B, h, Tq]
        grad_q = np.asarray(grads[0], np.float32)  # [B, Tq, h, d]
        np.testing.assert_array_equal(grad_q[no_key.swapaxes(-1, -2)], 0.0)


def test_gaussian_far_apart_is_accurate_where_naive_exp_underflows(rng):
    """Row-normalised Gaussian stays a proper distribution when every exp(-||q-k||^2/2s2)
    underflows to zero in float32 (||q - k||^2 ~ 1e4): the softmax form never takes that exp."""
    q, k = far_apart(rng, (3, 6, 2, 8), jnp.float32)
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    assert np.all(np.exp(-np_sq_dist(q64, k64) / (2 * math.sqrt(8))).astype(np.float32) == 0)
    logits = (np_dot(q64, k64) - 0.5 * np.sum(k64**2, -1).swapaxes(-1, -2)[..., None, :]) / (
        math.sqrt(8)
    )
    weights = np.asarray(kernels.get("gaussian")(q, k), np.float64)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    # Float32 cancellation in q.k - ||k||^2/2 (terms ~1e4) limits accuracy to ~1e-3 here.
    np.testing.assert_allclose(weights, np_masked_softmax(logits, None), atol=5e-3)


# --------------------------------------------------------------------------------------------
# Registry and helpers


def test_unknown_kernel_names_it_and_lists_valid_ones():
    for call in (
        lambda: kernels.get("no_such_kernel"),
        lambda: kernels.lookup("no_such_kernel"),
        lambda: attention.attention_weights(
            jnp.ones((3, 1, 2)), jnp.ones((3, 1, 2)), kernel="no_such_kernel"
        ),
    ):
        with pytest.raises(ValueError, match="no_such_kernel") as info:
            call()
        for name in BUILTIN:
            assert repr(name) in str(info.value)


def test_unknown_kernel_in_module_raises():
    module = MultiHeadAttention(num_heads=1, qk_features=4, kernel="no_such_kernel")
    with pytest.raises(ValueError, match=r"no_such_kernel.*softmax"):
        module.init(jax.random.key(0), jnp.ones((2, 3, 4)))


def test_double_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        kernels.register("softmax")(lambda q, k, mask=None: None)
    with pytest.raises(ValueError, match="already registered"):
        kernels.register_softmax(HOT)(
            lambda: kernels.SoftmaxForm(scale=lambda d, **_: 1.0, key_bias=lambda k, **_: None)
        )


def test_mask_helpers():
    causal = np.asarray(kernels.causal_mask(4, 6))
    assert causal.shape == (1, 4, 6)
    np.testing.assert_array_equal(causal[0], np.tril(np.ones((4, 6), bool)))
    valid = jnp.asarray([[True, True, False], [True, False, False]])
    pad = np.asarray(kernels.padding_mask(valid))
    assert pad.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(
        pad[:, 0], np.asarray(valid)[:, :, None] & np.asarray(valid)[:, None, :]
    )
    assert kernels.default_sigma2(16) == 4.0
