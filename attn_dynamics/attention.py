"""Multi-head attention: pure functions over arrays, and a Flax module that only holds weights.

Arrays follow ``jax.nn.dot_product_attention``: ``[..., T, heads, head_dim]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_dynamics import blockwise, kernels

Array = jax.Array
Implementation = Literal["auto", "fast", "blockwise", "explicit"]
IMPLEMENTATIONS = ("auto", "fast", "blockwise", "explicit")
# Query and key block sizes of the blockwise path (measured on CPU, benchmarks/RESULTS.md)
BLOCK_Q, BLOCK_K = 128, 1024


def attention_weights(
    q: Array, k: Array, *, kernel: str = "softmax", mask: Array | None = None, **options
) -> Array:
    """``[..., heads, Tq, Tk]`` weights of the named kernel (the explicit path)."""
    return kernels.get(kernel)(q, k, mask, **options)


def explicit_attention(
    q: Array, k: Array, v: Array, *, kernel: str = "softmax", mask: Array | None = None, **options
) -> Array:
    """Weights materialised, then applied: works for every kernel; ``[..., Tq, heads, dv]``."""
    weights = attention_weights(q, k, kernel=kernel, mask=mask, **options)
    return jnp.einsum("...hqk,...khd->...qhd", weights, v.astype(weights.dtype))


def fused_attention(
    q: Array, k: Array, v: Array, *, kernel: str = "softmax", mask: Array | None = None, **options
) -> Array:
    """Softmax kernels through ``jax.nn.dot_product_attention`` (flash attention on GPU)."""
    form = _softmax_form(kernel)
    batch_shape = q.shape[:-3]
    scale, bias = form.scale(q.shape[-1], **options), form.key_bias(k, **options)
    if bias is not None:
        # A key bias passed as the op's `bias` is broadcast to [B, h, Tq, Tk] and its gradient
        # costs another pass over that array (up to 2x slower on CPU for the Gaussian kernel);
        # folded into one more q/k feature it is part of the matmuls.
        q, k = kernels.fold_key_bias(q, k, bias, scale)
    d, dv = q.shape[-1], v.shape[-1]
    # The fused op wants one head size for q, k and v; zero-padding the smaller side is exact
    # (zeros add nothing to q.k, and padded value columns are sliced off).
    q, k, v = _pad_last(q, dv), _pad_last(k, dv), _pad_last(v, d)
    flat = lambda x: x.reshape((-1, *x.shape[-3:]))  # the fused op takes exactly one batch axis
    q, k, v = flat(q), flat(k), flat(v)
    mask4 = None if mask is None else _flat_heads(mask, batch_shape)
    out = _cudnn_attention(q, k, v, mask4, scale)
    if out is None:
        out = jax.nn.dot_product_attention(q, k, v, mask=mask4, scale=scale, implementation="xla")
    out = out.reshape((*batch_shape, *out.shape[-3:]))[..., :dv]
    if mask is not None:
        # The fused op gives a fully masked row the mean of v; the kernel contract says zeros.
        has_key = jnp.swapaxes(jnp.any(mask, axis=-1), -1, -2)[..., None]  # [..., Tq, h, 1]
        out = jnp.where(has_key, out, 0.0)
    return out


def blockwise_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kernel: str = "softmax",
    mask: Array | None = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    **options,
) -> Array:
    """Softmax kernels block by block with an online softmax (:mod:`attn_dynamics.blockwise`).

    No ``[..., h, Tq, Tk]`` array is stored for the backward pass: it recomputes each block's
    scores. Computes in float32 and returns the inputs' dtype.
    """
    form = _softmax_form(kernel)
    batch_shape, heads = q.shape[:-3], q.shape[-2]
    dtype = jnp.result_type(q, k, v)
    q, k, v = (x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in (q, k, v))
    scale, bias = form.scale(q.shape[-1], **options), form.key_bias(k, **options)
    if bias is not None:
        q, k = kernels.fold_key_bias(q, k, bias, scale)
    # [..., T, h, d] -> [N, T, d] with N = batch x heads: one batch axis for the kernel
    flat = lambda x: jnp.swapaxes(x, -2, -3).reshape((-1, x.shape[-3], x.shape[-1]))
    mask3 = None if mask is None else _flat_mask(mask, (*batch_shape, heads))
    out = blockwise.attention(
        flat(q * scale), flat(k), flat(v), mask3, block_q=block_q, block_k=block_k
    )
    out = jnp.swapaxes(out.reshape((*batch_shape, heads, *out.shape[-2:])), -2, -3)
    return out.astype(dtype)


def _flat_mask(mask: Array, lead_shape: tuple[int, ...]) -> Array:
    """Broadcastable ``[..., h, Tq, Tk]`` -> ``[M, Tq or 1, Tk]``, ``M = 1`` or batch x heads."""
    mask = jnp.asarray(mask)
    mask = mask.reshape((1,) * (len(lead_shape) + 2 - mask.ndim) + mask.shape)
    if all(n == 1 for n in mask.shape[:-2]):
        return mask.reshape((1, *mask.shape[-2:]))
    return jnp.broadcast_to(mask, (*lead_shape, *mask.shape[-2:])).reshape((-1, *mask.shape[-2:]))


def _softmax_form(kernel: str) -> kernels.SoftmaxForm:
    form = kernels.lookup(kernel).softmax_form
    if form is None:
        raise ValueError(
            f"kernel {kernel!r} has no softmax form, so no fast path; use implementation="
            f"'explicit' or one of {[n for n in kernels.names() if _has_fast_path(n)]}"
        )
    return form


def _cudnn_attention(q: Array, k: Array, v: Array, mask, scale: float) -> Array | None:
    """cuDNN flash attention where it can run (GPU, 16-bit inputs), else None.

    ``jax.nn.dot_product_attention`` never picks cuDNN by itself; cuDNN wants fp16/bf16 and
    head sizes that are multiples of 8 (zero padding is exact, as above).
    """
    if jax.default_backend() != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16):
        return None
    head = -(-q.shape[-1] // 8) * 8
    try:
        return jax.nn.dot_product_attention(
            _pad_last(q, head),
            _pad_last(k, head),
            _pad_last(v, head),
            mask=mask,
            scale=scale,
            implementation="cudnn",
        )[..., : v.shape[-1]]
    except (ValueError, NotImplementedError, RuntimeError):  # unsupported shape or cuDNN
        return None


def default_implementation(kernel: str, num_keys: int | None = None) -> str:
    """What ``auto`` takes for ``kernel`` (with ``num_keys`` keys) on the default backend.

    Softmax-form kernels: on CPU the blockwise path from one query block of keys up (measured
    faster than the explicit einsums and than XLA's fused op, with a fraction of the memory:
    benchmarks/RESULTS.md, "step" and "attention"); shorter sequences fit in one block, where
    the blockwise path saves no memory and only adds the backward's recomputation, so they
    stay explicit. On GPU/TPU the fused op, which is flash attention there (cuDNN); it was not
    measured against the blockwise path. Other kernels: the explicit path, the only one.
    """
    if not _has_fast_path(kernel):
        return "explicit"
    if jax.default_backend() != "cpu":
        return "fast"
    return "blockwise" if num_keys is None or num_keys >= BLOCK_Q else "explicit"


def _pad_last(x: Array, size: int) -> Array:
    pad = size - x.shape[-1]
    return x if pad <= 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def _flat_heads(x: Array, batch_shape: tuple[int, ...]) -> Array:
    """Broadcastable ``[..., h, Tq, Tk]`` -> 4-D ``[B or 1, h, Tq, Tk]`` for the fused op."""
    x = jnp.asarray(x)
    x = x.reshape((1,) * (len(batch_shape) + 3 - x.ndim) + x.shape)
    lead = x.shape[: len(batch_shape)]
    if all(n == 1 for n in lead):
        return x.reshape((1, *x.shape[-3:]))
    return jnp.broadcast_to(x, (*batch_shape, *x.shape[-3:])).reshape((-1, *x.shape[-3:]))


def _has_fast_path(kernel: str) -> bool:
    return kernels.lookup(kernel).softmax_form is not None


def multi_head_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kernel: str = "softmax",
    mask: Array | None = None,
    implementation: Implementation = "auto",
    **options,
) -> Array:
    """Attention output ``[..., Tq, heads, dv]``.

    ``implementation``: ``fast`` is ``jax.nn.dot_product_attention`` (flash attention on GPU),
    ``blockwise`` the online-softmax kernel of :mod:`attn_dynamics.blockwise` (both for
    softmax-form kernels only), ``explicit`` materialises the weights (any kernel) and ``auto``
    picks one per backend (:func:`default_implementation`).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; valid: {IMPLEMENTATIONS}")
    if implementation == "auto":
        implementation = default_implementation(kernel, k.shape[-3])
    attend = {
        "fast": fused_attention,
        "blockwise": blockwise_attention,
        "explicit": explicit_attention,
    }[implementation]
    return attend(q, k, v, kernel=kernel, mask=mask, **options)


class MultiHeadAttention(nn.Module):
    """Q, K, V and output projections as separately named submodules around a pure kernel.

    Parameter paths read ``.../query/kernel``, ``.../key/kernel``, ``.../value/kernel`` and
    ``.../out/kernel``, which is what :mod:`attn_dynamics.freezing` selects on.
    """

    num_heads: int
    qk_features: int  # heads * head_dim of queries and keys
    v_features: int | None = None  # heads * head_dim of values; defaults to qk_features
    out_features: int | None = None  # None: no output projection (heads concatenated)
    kernel: str = "softmax"
    kernel_options: Mapping[str, Any] | None = None  # e.g. {'sigma2': 4.0}
    implementation: Implementation = "auto"
    use_bias: bool = True
    qk_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    v_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    k_init: nn.initializers.Initializer | None = None  # W_K's own initialiser (None: qk_init)
    dtype: Any = None

    def setup(self):
        for name, features in (("qk_features", self.qk_features), ("v_features", self._v_features)):
            if features % self.num_heads:
                raise ValueError(f"{name}={features} is not divisible by heads={self.num_heads}")
        dense = lambda features, init: nn.Dense(
            features, use_bias=self.use_bias, kernel_init=init, dtype=self.dtype
        )
        self.query = dense(self.qk_features, self.qk_init)
        self.key = dense(self.qk_features, self.k_init or self.qk_init)
        self.value = dense(self._v_features, self.v_init)
        if self.out_features is not None:
            self.out = nn.Dense(self.out_features, use_bias=self.use_bias, dtype=self.dtype)

    @property
    def _v_features(self) -> int:
        return self.v_features or self.qk_features

    def _split_heads(self, x: Array) -> Array:
        return x.reshape((*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads))

    def _queries_keys(self, inputs_q, inputs_kv, qkv_bias):
        q, k = self.query(inputs_q), self.key(inputs_kv)
        bq, bk, _ = qkv_bias or (None, None, None)
        q = q if bq is None else q + bq.astype(q.dtype)
        k = k if bk is None else k + bk.astype(k.dtype)
        return self._split_heads(q), self._split_heads(k)

    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        mask: Array | None = None,
        qkv_bias: tuple[Array | None, Array | None, Array | None] | None = None,
    ) -> Array:
        """``inputs [..., T, D] -> [..., T, out_features or v_features]``.

        ``qkv_bias`` are extra per-position biases ``[T, features]`` added to the projected
        queries, keys and values (FLOATER's q/k/v-bias form); None entries add nothing.
        """
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        q, k = self._queries_keys(inputs_q, inputs_kv, qkv_bias)
        v = self.value(inputs_kv)
        bv = (qkv_bias or (None, None, None))[2]
        v = self._split_heads(v if bv is None else v + bv.astype(v.dtype))
        out = multi_head_attention(
            q,
            k,
            v,
            kernel=self.kernel,
            mask=mask,
            implementation=self.implementation,
            **dict(self.kernel_options or {}),
        )
        out = out.reshape((*out.shape[:-2], self._v_features))
        return out if self.out_features is None else self.out(out)

    def attention_weights(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        mask: Array | None = None,
        qkv_bias: tuple[Array | None, Array | None, Array | None] | None = None,
    ) -> Array:
        """The ``[..., heads, Tq, Tk]`` weight matrix (explicit path; for diagnostics and plots)."""
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        q, k = self._queries_keys(inputs_q, inputs_kv, qkv_bias)
        return attention_weights(
            q, k, kernel=self.kernel, mask=mask, **dict(self.kernel_options or {})
        )
