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
# The kernel: lengths are multiples of the block sizes here. Memory is what shapes it: the loops
# slice the [N, T, d] arrays in place (a scan over pre-blocked copies would hold another copy of
# q and d_out), and with one key block (T <= block_k) no loop starts from a zero-filled
# whole-length buffer: XLA would hoist the zeros to the start of the program and keep a copy per
# loop alive until the loop runs (48 MiB at LRA sizes). The forward's blocks come out as stacked
# scan outputs, and the backward starts its dK, dV sums from the first query block's terms.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, mask, block_q, block_k):
    return _forward(q, k, v, mask, block_q, block_k)[0]


def _rows(x: Array | None, i, size: int, axis: int = 1) -> Array | None:
    """Block ``i`` of ``size`` along ``axis`` (None stays None)."""
    return None if x is None else lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def _mask_rows(mask: Array | None, i, block_q: int) -> Array | None:
    """The mask's rows for query block ``i`` (all of it when it has no query axis)."""
    return mask if mask is None or mask.shape[1] == 1 else _rows(mask, i, block_q)


def _add_rows(x: Array, block: Array, j) -> Array:
    """``x`` with ``block`` added to its rows of block ``j``."""
    size = block.shape[1]
    return lax.dynamic_update_slice_in_dim(x, _rows(x, j, size) + block, j * size, axis=1)


def _unblocks(x: Array) -> Array:
    """Stacked per-block outputs ``[T // b, N, b, ...] -> [N, T, ...]``."""
    return jnp.swapaxes(x, 0, 1).reshape((x.shape[1], -1, *x.shape[3:]))


def _scores(qi: Array, kj: Array, mask_ij: Array | None) -> Array:
    s = jnp.einsum("nqd,nkd->nqk", qi, kj)
    return s if mask_ij is None else jnp.where(mask_ij, s, -jnp.inf)


def _loop(num: int, body, init):
    """``fori_loop`` over ``num`` blocks; one block is a plain call (no loop to schedule)."""
    return body(0, init) if num == 1 else lax.fori_loop(0, num, body, init)


def _forward(q, k, v, mask, block_q, block_k):
    n = q.shape[0]
    num_k = k.shape[1] // block_k

    def query_block(i):
        qi, mask_i = _rows(q, i, block_q), _mask_rows(mask, i, block_q)

        def key_block(j, carry):
            row_max, row_sum, acc = carry
            s = _scores(qi, _rows(k, j, block_k), _rows(mask_i, j, block_k, axis=2))
            new_max = jnp.maximum(row_max, jnp.max(s, axis=-1))
            # rows with no unmasked key so far keep max -inf: shift by 0 there (no inf - inf)
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            p = jnp.exp(s - shift[..., None])
            correction = jnp.exp(row_max - shift)
            row_sum = correction * row_sum + jnp.sum(p, axis=-1)
            acc = correction[..., None] * acc + jnp.einsum("nqk,nkd->nqd", p, _rows(v, j, block_k))
            return new_max, row_sum, acc

        init = (
            jnp.full((n, block_q), -jnp.inf, jnp.float32),
            jnp.zeros((n, block_q), jnp.float32),
            jnp.zeros((n, block_q, v.shape[-1]), jnp.float32),
        )
        row_max, row_sum, acc = _loop(num_k, key_block, init)
        has_key = row_sum > 0.0
        out = acc / jnp.where(has_key, row_sum, 1.0)[..., None]
        # log-sum-exp; +inf for empty rows makes every recomputed probability exp(-inf) = 0
        lse = jnp.where(has_key, row_max + jnp.log(jnp.where(has_key, row_sum, 1.0)), jnp.inf)
        return out, lse

    out, lse = lax.map(query_block, jnp.arange(q.shape[1] // block_q))
    return _unblocks(out), _unblocks(lse)


def _attention_fwd(q, k, v, mask, block_q, block_k):
    out, lse = _forward(q, k, v, mask, block_q, block_k)
    return out, (q, k, v, mask, out, lse)


def _attention_bwd(block_q, block_k, residuals, d_out):
    # Nothing below may start before the cotangent exists: XLA would otherwise schedule the
    # first block's recomputed scores into the forward pass and keep them (as jax.checkpoint's
    # barrier does for its recomputation)
    *residuals, d_out = lax.optimization_barrier((*residuals, d_out))
    q, k, v, mask, out, lse = residuals
    n, tq, d = q.shape
    num_k = k.shape[1] // block_k
    # D_i = sum_j P_ij dP_ij = d_out_i . out_i: the softmax Jacobian's row term
    delta = jnp.sum(d_out * out, axis=-1)

    def query_block(i, dk, dv):
        """dQ^T of query block ``i``, and dK, dV with its terms added (None: its terms)."""
        qi, d_out_i, lse_i = _rows(q, i, block_q), _rows(d_out, i, block_q), _rows(lse, i, block_q)
        delta_i, mask_i = _rows(delta, i, block_q), _mask_rows(mask, i, block_q)

        def key_block(j, dq_t_i):
            """dQ^T with key block ``j``'s terms added; that block's dK and dV terms."""
            kj, vj = _rows(k, j, block_k), _rows(v, j, block_k)
            # Scores transposed, [N, bk, bq]: then dK and dV are plain matmuls of them and only
            # dQ contracts over the first axis (a transposed operand costs XLA's CPU dot ~2x).
            s = jnp.einsum("nkd,nqd->nkq", kj, qi)
            mask_ij = _rows(mask_i, j, block_k, axis=2)
            if mask_ij is not None:
                s = jnp.where(jnp.swapaxes(mask_ij, -1, -2), s, -jnp.inf)
            p = jnp.exp(s - lse_i[:, None, :])
            dp = jnp.einsum("nkd,nqd->nkq", vj, d_out_i)
            ds = p * (dp - delta_i[:, None, :])
            # dQ^T = K^T dS, [N, d, bq]: as dQ = dS^T K the dot would contract the first axis of
            # both operands, which XLA's CPU dot runs ~3x slower (benchmarks/RESULTS.md)
            dq_t_i = dq_t_i + jnp.einsum("nkd,nkq->ndq", kj, ds)
            dk_j = jnp.einsum("nkq,nqd->nkd", ds, qi)
            return dq_t_i, dk_j, jnp.einsum("nkq,nqd->nkd", p, d_out_i)

        if num_k == 1:
            dq_t_i, dk_i, dv_i = key_block(0, 0.0)
            return dq_t_i, dk_i if dk is None else dk + dk_i, dv_i if dv is None else dv + dv_i

        def add_key_block(j, carry):
            dq_t_i, dk, dv = carry
            dq_t_i, dk_j, dv_j = key_block(j, dq_t_i)
            return dq_t_i, _add_rows(dk, dk_j, j), _add_rows(dv, dv_j, j)

        dk = jnp.zeros_like(k) if dk is None else dk
        dv = jnp.zeros_like(v) if dv is None else dv
        return lax.fori_loop(0, num_k, add_key_block, (jnp.zeros((n, d, block_q)), dk, dv))

    def add_query_block(i, carry):
        dq_t, dk, dv = carry
        dq_t_i, dk, dv = query_block(i, dk, dv)
        return lax.dynamic_update_slice_in_dim(dq_t, dq_t_i, i * block_q, axis=2), dk, dv

    dq_t_first, dk, dv = query_block(0, None, None)
    # dQ^T [N, d, T]: the first block's, zero-padded (the loop writes the rest in place)
    dq_t = jnp.pad(dq_t_first, ((0, 0), (0, 0), (0, tq - block_q)))
    if tq > block_q:
        dq_t, dk, dv = lax.fori_loop(1, tq // block_q, add_query_block, (dq_t, dk, dv))
    # transposed back outside the loop, where XLA cannot fold it into the dot
    return jnp.swapaxes(dq_t, 1, 2), dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)
