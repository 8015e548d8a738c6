"""The blockwise (online-softmax) attention path against float64 NumPy and the explicit path.

Small shapes with small blocks, so that every case runs several query and key blocks with
ragged tails (length 37 in blocks of 8 and 16), plus the one-key-block case.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_dynamics import attention, blockwise, kernels

LENGTH = 37
BLOCKS = {"ragged": (8, 16), "one-key-block": (16, 64)}
TOLERANCE = 1e-5  # relative (Frobenius) error of outputs and gradients, float32


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def np_attention_and_grads(q, k, v, mask, cotangent, kernel, sigma2=None):
    """Float64 output and gradients of ``sum(out * cotangent)`` w.r.t. q, k, v.

    ``logits = scale q.k + bias(k)`` with the built-in kernels' scale and per-key bias
    (softmax: 1/sqrt(d), none; Gaussian: 1/sigma2, -||k||^2 / (2 sigma2)).
    """
    d = q.shape[-1]
    sigma2 = np.sqrt(d) if sigma2 is None else sigma2
    scale = 1.0 / np.sqrt(d) if kernel == "softmax" else 1.0 / sigma2
    logits = scale * np.einsum("...qhd,...khd->...hqk", q, k)
    if kernel == "gaussian":
        logits = logits - 0.5 * scale * np.swapaxes(np.sum(k**2, -1), -1, -2)[..., None, :]
    full = np.broadcast_to(mask, logits.shape) if mask is not None else np.ones(logits.shape, bool)
    row_max = np.max(np.where(full, logits, -np.inf), -1, keepdims=True)
    e = np.where(full, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
    total = e.sum(-1, keepdims=True)
    p = np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)  # [..., h, Tq, Tk]
    out = np.einsum("...hqk,...khd->...qhd", p, v)
    d_p = np.einsum("...qhd,...khd->...hqk", cotangent, v)
    d_logits = p * (d_p - np.sum(d_p * p, -1, keepdims=True))
    dq = scale * np.einsum("...hqk,...khd->...qhd", d_logits, k)
    dk = scale * np.einsum("...hqk,...qhd->...khd", d_logits, q)
    if kernel == "gaussian":  # d bias_j / d k_j = -scale k_j
        dk = dk - scale * np.swapaxes(d_logits.sum(-2), -1, -2)[..., None] * k
    dv = np.einsum("...hqk,...qhd->...khd", p, cotangent)
    return out, (dq, dk, dv)


def make_mask(rng, batch_shape, kind):
    """Masks as callers build them; every kind leaves some query rows with no key."""
    valid = rng.random(size=(*batch_shape, LENGTH)) < 0.7
    valid.reshape(-1, LENGTH)[0] = False  # sample 0: nothing valid, every row empty
    valid.reshape(-1, LENGTH)[-1, 0] = True
    if kind == "none":
        return None
    if kind == "keys":  # the encoder's key-padding mask [..., 1, 1, Tk]
        return jnp.asarray(valid)[..., None, None, :]
    causal = kernels.causal_mask(LENGTH)
    return kernels.padding_mask(jnp.asarray(valid)) & causal.reshape(
        (1,) * len(batch_shape) + causal.shape
    )


@functools.partial(jax.jit, static_argnames=("kernel", "blocks"))
def both_paths(q, k, v, mask, cotangent, *, kernel, blocks):
    """(output, grads) of the blockwise and the explicit path, compiled together."""

    def run(attend):
        def loss(q, k, v):
            out = attend(q, k, v, kernel=kernel, mask=mask)
            return jnp.sum(out * cotangent), out

        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    block_q, block_k = blocks
    fast = functools.partial(attention.blockwise_attention, block_q=block_q, block_k=block_k)
    return run(fast), run(attention.explicit_attention)


def random_inputs(rng, batch_shape, heads, d, dv):
    shapes = [(*batch_shape, LENGTH, heads, n) for n in (d, d, dv, dv)]
    return [rng.normal(size=s) for s in shapes]


@pytest.mark.parametrize(
    "kernel, mask_kind, blocks",
    [
        ("softmax", "none", "ragged"),
        ("softmax", "keys", "ragged"),
        ("softmax", "padding-causal", "one-key-block"),
        ("gaussian", "none", "one-key-block"),
        ("gaussian", "keys", "ragged"),
        ("gaussian", "padding-causal", "ragged"),
    ],
)
def test_matches_float64_reference(kernel, mask_kind, blocks, rng):
    batch_shape, heads = (2, 2), 3
    q, k, v, cot = random_inputs(rng, batch_shape, heads, 8, 5)
    mask = make_mask(rng, batch_shape, mask_kind)
    expected, expected_grads = np_attention_and_grads(
        q, k, v, None if mask is None else np.asarray(mask), cot, kernel
    )
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, cot)]
    (out, grads), (explicit, explicit_grads) = both_paths(
        *f32[:3], mask, f32[3], kernel=kernel, blocks=BLOCKS[blocks]
    )
    assert out.shape == expected.shape and out.dtype == jnp.float32
    assert relative_error(out, expected) <= TOLERANCE
    assert relative_error(out, explicit) <= TOLERANCE
    for got, ref, other in zip(grads, expected_grads, explicit_grads, strict=True):
        assert relative_error(got, ref) <= TOLERANCE
        assert relative_error(got, other) <= TOLERANCE
    if mask is not None:  # rows without a key: exactly zero output and query gradient
        empty = ~np.broadcast_to(np.asarray(mask), (*batch_shape, heads, LENGTH, LENGTH)).any(-1)
        empty = np.swapaxes(empty, -1, -2)  # [..., Tq, h]
        assert empty.any()
        np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[0])[empty], 0.0)


@kernels.register_softmax("test_blockwise_tilted")
def _tilted() -> kernels.SoftmaxForm:
    # softmax_j(2 q.k / d + tilt * sum(k_j)): another scale and a per-key bias with an option
    return kernels.SoftmaxForm(
        scale=lambda d, **_: 2.0 / d,
        key_bias=lambda k, tilt=0.3, **_: tilt * jnp.swapaxes(k.sum(-1), -1, -2)[..., None, :],
    )


def other_softmax_form_names():
    """Every softmax-form kernel registered besides the two built-ins tested above (this
    module's, and those of other test modules collected in the same session)."""
    return [
        n
        for n in kernels.names()
        if kernels.lookup(n).softmax_form is not None and n not in ("softmax", "gaussian")
    ]


@pytest.mark.parametrize("kernel", other_softmax_form_names())
def test_every_softmax_form_kernel_equals_explicit(kernel, rng):
    """User kernels take the blockwise path by name, through their own scale and key bias."""
    q, k, v, cot = (jnp.asarray(x, jnp.float32) for x in random_inputs(rng, (3,), 2, 6, 4))
    mask = make_mask(rng, (3,), "keys")
    (out, grads), (explicit, explicit_grads) = both_paths(
        q, k, v, mask, cot, kernel=kernel, blocks=BLOCKS["ragged"]
    )
    assert relative_error(out, explicit) <= TOLERANCE
    for got, ref in zip(grads, explicit_grads, strict=True):
        assert relative_error(got, ref) <= TOLERANCE


@pytest.mark.parametrize("kernel", ["softmax", "gaussian"])
def test_bfloat16_finite_for_far_apart_and_coincident(kernel, rng):
    base = rng.normal(size=(2, LENGTH, 2, 8))
    direction = rng.normal(size=8)
    far = base + 100.0 * direction / np.linalg.norm(direction)  # ||q - k||^2 ~ 1e4
    v = jnp.asarray(rng.normal(size=base.shape), jnp.bfloat16)
    mask = make_mask(rng, (2,), "keys")
    attend = functools.partial(
        attention.blockwise_attention, kernel=kernel, mask=mask, block_q=8, block_k=16
    )

    @jax.jit
    def output_and_grads(q, k, v):
        loss = lambda q, k, v: (jnp.sum(attend(q, k, v).astype(jnp.float32)), attend(q, k, v))
        return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)[::-1]

    for q, k in ((base, base), (base, far)):
        q, k = jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
        out, grads = output_and_grads(q, k, v)
        assert out.dtype == jnp.bfloat16
        for x in (out, *grads):
            assert x.dtype == jnp.bfloat16
            assert np.all(np.isfinite(np.asarray(x, np.float32)))


def test_kernel_core_memory_is_linear_in_length():
    """The compiled forward + backward never holds an [N, T, T] array (nor does the forward
    keep one for the backward): its temporaries grow like T, not T^2."""

    def temp_bytes(length):
        x = jnp.zeros((4, length, 8), jnp.float32)
        grad = jax.grad(
            lambda q, k, v: jnp.sum(blockwise.attention(q, k, v, block_q=16, block_k=32)),
            argnums=(0, 1, 2),
        )
        return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(256), temp_bytes(1024)
    assert large < 4 * 4 * 1024 * 1024  # one [4, 1024, 1024] float32 array is 16 MiB
    assert large <= 4.5 * small  # 4x the length: about 4x the memory, not 16x
