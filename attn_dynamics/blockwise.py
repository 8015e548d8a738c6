"""Blockwise attention with an online softmax: FlashAttention's algorithm in plain JAX.

``out_i = sum_j softmax_j(q_i . k_j) v_j`` over the unmasked keys, computed one block of queries
and one block of keys at a time. The forward pass keeps a running row maximum and row sum per
query (the online softmax) and stores only the output and each row's log-sum-exp; the backward
pass (a :func:`jax.custom_vjp`) recomputes every block's scores from ``q`` and ``k``. Nothing
of size ``[N, Tq, Tk]`` is ever stored, so memory is ``O(T d)`` per sequence instead of
``O(T^2)``, and each block's scores stay in cache between the passes that use them.

Arrays here are ``[N, T, d]`` (batch and heads flattened into ``N``); scaling, key biases and
the layout of :mod:`attn_dynamics.attention` are handled by the caller (see
:func:`attn_dynamics.attention.blockwise_attention`). The mask is boolean ``[M, Tm, Tk]`` with
``M`` in ``{1, N}`` and ``Tm`` in ``{1, Tq}`` (a key-padding mask needs no query axis). A query
with no unmasked key gets a zero output and zero gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def attention(
    q: Array, k: Array, v: Array, mask: Array | None = None, *, block_q: int, block_k: int
) -> Array:
    """``softmax(q k^T) v`` over ``[N, T, d]`` arrays, in float32, blockwise; ``[N, Tq, dv]``.

    Lengths that are not a multiple of the block sizes are zero-padded (padded keys masked,
    padded queries dropped). Blocks larger than the sequence shrink to it.
    """
    tq, tk = q.shape[1], k.shape[1]
    block_q, block_k = min(block_q, tq), min(block_k, tk)
    pad_q, pad_k = -tq % block_q, -tk % block_k
    if mask is not None:
        mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)
        if mask.shape[1] != 1:
            mask = _pad_axis(mask, 1, pad_q, False)
        mask = _pad_axis(mask, 2, pad_k, False)
    elif pad_k:  # padded keys must not be attended
        mask = _pad_axis(jnp.ones((1, 1, tk), bool), 2, pad_k, False)
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    q, k, v = _pad_axis(q, 1, pad_q), _pad_axis(k, 1, pad_k), _pad_axis(v, 1, pad_k)
    return _attention(q, k, v, mask, block_q, block_k)[:, :tq]


def _pad_axis(x: Array, axis: int, pad: int, value=0) -> Array:
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


# --------------------------------------------------------------------------------------------
# The kernel: lengths are multiples of the block sizes here.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, mask, block_q, block_k):
    return _forward(q, k, v, mask, block_q, block_k)[0]


def _blocks(x: Array, size: int) -> Array:
    """``[N, T, ...] -> [T // size, N, size, ...]``: the scan axis first."""
    return jnp.swapaxes(x.reshape((x.shape[0], -1, size, *x.shape[2:])), 0, 1)


def _unblocks(x: Array) -> Array:
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0], -1, *x.shape[3:]))


def _query_blocks(mask: Array | None, block_q: int):
    """Per-query-block mask slices for ``lax.scan`` (None when the mask has no query axis)."""
    if mask is None or mask.shape[1] == 1:
        return None
    return _blocks(mask, block_q)


def _mask_of(mask: Array | None, mask_block: Array | None) -> Array | None:
    return mask if mask_block is None else mask_block


def _key_slice(x: Array, j, block_k: int) -> Array:
    return lax.dynamic_slice_in_dim(x, j * block_k, block_k, axis=1)


def _scores(qi: Array, kj: Array, mask_ij: Array | None) -> Array:
    s = jnp.einsum("nqd,nkd->nqk", qi, kj)
    return s if mask_ij is None else jnp.where(mask_ij, s, -jnp.inf)


def _mask_slice(mask: Array | None, j, block_k: int) -> Array | None:
    if mask is None:
        return None
    return lax.dynamic_slice_in_dim(mask, j * block_k, block_k, axis=2)


def _forward(q, k, v, mask, block_q, block_k):
    num_k = k.shape[1] // block_k

    def query_block(_, xs):
        qi, mask_i = xs
        mask_i = _mask_of(mask, mask_i)
        n, bq = qi.shape[:2]

        def key_block(j, carry):
            row_max, row_sum, acc = carry
            s = _scores(qi, _key_slice(k, j, block_k), _mask_slice(mask_i, j, block_k))
            new_max = jnp.maximum(row_max, jnp.max(s, axis=-1))
            # rows with no unmasked key so far keep max -inf: shift by 0 there (no inf - inf)
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            p = jnp.exp(s - shift[..., None])
            correction = jnp.exp(row_max - shift)
            row_sum = correction * row_sum + jnp.sum(p, axis=-1)
            acc = correction[..., None] * acc + jnp.einsum(
                "nqk,nkd->nqd", p, _key_slice(v, j, block_k)
            )
            return new_max, row_sum, acc

        init = (
            jnp.full((n, bq), -jnp.inf, jnp.float32),
            jnp.zeros((n, bq), jnp.float32),
            jnp.zeros((n, bq, v.shape[-1]), jnp.float32),
        )
        row_max, row_sum, acc = (
            key_block(0, init) if num_k == 1 else lax.fori_loop(0, num_k, key_block, init)
        )
        has_key = row_sum > 0.0
        out = acc / jnp.where(has_key, row_sum, 1.0)[..., None]
        # log-sum-exp; +inf for empty rows makes every recomputed probability exp(-inf) = 0
        lse = jnp.where(has_key, row_max + jnp.log(jnp.where(has_key, row_sum, 1.0)), jnp.inf)
        return None, (out, lse)

    _, (out, lse) = lax.scan(query_block, None, (_blocks(q, block_q), _query_blocks(mask, block_q)))
    return _unblocks(out), _unblocks(lse)


def _attention_fwd(q, k, v, mask, block_q, block_k):
    out, lse = _forward(q, k, v, mask, block_q, block_k)
    return out, (q, k, v, mask, out, lse)


def _attention_bwd(block_q, block_k, residuals, d_out):
    q, k, v, mask, out, lse = residuals
    num_k = k.shape[1] // block_k
    # D_i = sum_j P_ij dP_ij = d_out_i . out_i: the softmax Jacobian's row term
    delta = jnp.sum(d_out * out, axis=-1)

    def query_block(carry, xs):
        dk, dv = carry
        qi, d_out_i, lse_i, delta_i, mask_i = xs
        mask_i = _mask_of(mask, mask_i)

        def key_block(j, carry):
            dq_t, dk, dv = carry
            kj, vj = _key_slice(k, j, block_k), _key_slice(v, j, block_k)
            # Scores transposed, [N, bk, bq]: then dK and dV are plain matmuls of them and only
            # dQ contracts over the first axis (a transposed operand costs XLA's CPU dot ~2x).
            s = jnp.einsum("nkd,nqd->nkq", kj, qi)
            mask_ij = _mask_slice(mask_i, j, block_k)
            if mask_ij is not None:
                s = jnp.where(jnp.swapaxes(mask_ij, -1, -2), s, -jnp.inf)
            p = jnp.exp(s - lse_i[:, None, :])
            dp = jnp.einsum("nkd,nqd->nkq", vj, d_out_i)
            ds = p * (dp - delta_i[:, None, :])
            # dQ^T = K^T dS, [N, d, bq]: as dQ = dS^T K the dot would contract the first axis of
            # both operands, which XLA's CPU dot runs ~3x slower (benchmarks/RESULTS.md)
            dq_t = dq_t + jnp.einsum("nkd,nkq->ndq", kj, ds)
            dk_j = jnp.einsum("nkq,nqd->nkd", ds, qi)
            dv_j = jnp.einsum("nkq,nqd->nkd", p, d_out_i)
            if num_k == 1:
                return dq_t, dk + dk_j, dv + dv_j
            start = j * block_k
            dk = lax.dynamic_update_slice_in_dim(
                dk, _key_slice(dk, j, block_k) + dk_j, start, axis=1
            )
            dv = lax.dynamic_update_slice_in_dim(
                dv, _key_slice(dv, j, block_k) + dv_j, start, axis=1
            )
            return dq_t, dk, dv

        init = (jnp.zeros_like(jnp.swapaxes(qi, -1, -2)), dk, dv)
        dq_t, dk, dv = (
            key_block(0, init) if num_k == 1 else lax.fori_loop(0, num_k, key_block, init)
        )
        return (dk, dv), dq_t

    xs = (
        _blocks(q, block_q),
        _blocks(d_out, block_q),
        _blocks(lse, block_q),
        _blocks(delta, block_q),
        _query_blocks(mask, block_q),
    )
    (dk, dv), dq_t = lax.scan(query_block, (jnp.zeros_like(k), jnp.zeros_like(v)), xs)
    # transposed back outside the loop, where XLA cannot fold it into the dot
    return _unblocks(jnp.swapaxes(dq_t, -1, -2)), dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)
