"""The single-layer theory model and the encoder classifier for real tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_dynamics import floater, position, streams  # noqa: F401  (floater registers it)
from attn_dynamics.attention import Implementation, MultiHeadAttention

Array = jax.Array


def scaled_normal(scale: float) -> nn.initializers.Initializer:
    """``N(0, scale^2 / fan_in)``: scale 1 is LeCun-normal; the theory varies it per matrix."""
    return nn.initializers.variance_scaling(scale**2, "fan_in", "normal")


SHARED_INIT_CHOICES = ("", "Q", "K", "V", "QK", "QV", "KV", "QKV")  # TheoryModel.shared_init


def shared_initializer(
    init: nn.initializers.Initializer, seed: int, matrix: str
) -> nn.initializers.Initializer:
    """``init`` drawn from a key of ``(seed, matrix)`` alone, ignoring the key it is given: under
    ``vmap`` over seeds every seed gets the same matrix (e.g. frozen W_K, W_V of one data draw
    shared by many seeds that each draw their own W_Q)."""
    key = streams.shared_key(seed, matrix)
    return lambda _, shape, dtype=jnp.float32: init(key, shape, dtype)


class TheoryModel(nn.Module):
    """One attention layer ``T(X) = A(X W_Q, X W_K) X W_V`` (optionally ``... W_O``), no biases.

    ``X`` is ``[n, N, d]``; the output is ``[n, N, out_dim]``. This is the object of the
    convergence theorems: with ``output_projection=False`` the output is linear in ``W_V``.
    """

    dim: int
    out_dim: int
    num_heads: int = 1
    kernel: str = "softmax"
    kernel_options: Mapping[str, Any] | None = None
    output_projection: bool = False
    qk_init_scale: float = 1.0
    v_init_scale: float = 1.0
    implementation: Implementation = "auto"
    dtype: Any = None  # compute dtype (None: the inputs'); parameters stay float32
    shared_init: str = ""  # letters of the matrices every seed shares (SHARED_INIT_CHOICES)
    shared_init_seed: int = 0  # the key those shared matrices are drawn from

    def _init(self, matrix: str, scale: float) -> nn.initializers.Initializer:
        init = scaled_normal(scale)
        if matrix in self.shared_init:
            return shared_initializer(init, self.shared_init_seed, matrix)
        return init

    def setup(self):
        if self.shared_init not in SHARED_INIT_CHOICES:
            raise ValueError(
                f"unknown shared_init {self.shared_init!r}; valid: {list(SHARED_INIT_CHOICES)}"
            )
        self.attention = MultiHeadAttention(
            num_heads=self.num_heads,
            qk_features=self.dim,
            v_features=self.dim if self.output_projection else self.out_dim,
            out_features=self.out_dim if self.output_projection else None,
            kernel=self.kernel,
            kernel_options=self.kernel_options,
            implementation=self.implementation,
            use_bias=False,
            qk_init=self._init("Q", self.qk_init_scale),
            k_init=self._init("K", self.qk_init_scale),
            v_init=self._init("V", self.v_init_scale),
            dtype=self.dtype,
        )

    def __call__(self, x: Array) -> Array:
        return self.attention(x)

    def attention_weights(self, x: Array) -> Array:
        """``[n, heads, N, N]``: the kernel matrix of every sample."""
        return self.attention.attention_weights(x)


def regression_loss(predictions: Array, targets: Array) -> Array:
    """``1/(2n) sum_i ||T(X_i) - Y_i||_F^2``: the theorems' squared loss, averaged over samples."""
    sq_err = jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
    return 0.5 * jnp.mean(jnp.sum(sq_err.reshape(sq_err.shape[0], -1), axis=-1))


def classification_loss(logits: Array, labels: Array) -> Array:
    logits = logits.astype(jnp.float32)
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))


def recomputed(fn: Callable) -> Callable:
    """``fn`` with its intermediates recomputed in the backward pass instead of stored.

    For the elementwise chains of GELU and LayerNorm: autodiff would keep every intermediate
    (six ``[B, T, mlp_dim]`` arrays for tanh-GELU, four ``[B, T, d]`` for LayerNorm), which was
    most of an encoder step's memory; recomputing them from the input is a few cheap passes
    that XLA fuses into the backward kernels that read that input anyway. Inside the rematted
    MLP it still pays: the MLP's own recomputation would otherwise hold GELU's intermediates
    during its backward (XLA temporaries at length 1024: 349 MiB with it, 381 without).
    """
    return jax.checkpoint(fn)


class MLP(nn.Module):
    hidden_dim: int
    dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        h = recomputed(nn.gelu)(nn.Dense(self.hidden_dim, dtype=self.dtype, name="mlp_in")(x))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_out")(h)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    num_heads: int
    mlp_dim: int
    kernel: str = "softmax"
    kernel_options: Mapping[str, Any] | None = None
    implementation: Implementation = "auto"
    dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, qkv_bias=None, *, train: bool) -> Array:
        dim = x.shape[-1]
        attention = MultiHeadAttention(
            num_heads=self.num_heads,
            qk_features=dim,
            out_features=dim,
            kernel=self.kernel,
            kernel_options=self.kernel_options,
            implementation=self.implementation,
            dtype=self.dtype,
            name="attention",
        )
        # statistics in float32; recomputed in the backward pass (see `recomputed`)
        norm = lambda name: nn.remat(nn.LayerNorm)(dtype=self.dtype, name=name)
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = x + dropout(attention(norm("ln_attention")(x), mask=mask, qkv_bias=qkv_bias))
        # The MLP is recomputed in the backward pass too: it then stores only its input instead
        # of four [B, T, *] arrays, for one extra matmul, a few percent of a step's FLOPs at
        # LRA lengths (attention's T^2 products dominate).
        mlp = nn.remat(MLP, static_argnums=(2,))(
            self.mlp_dim, self.dropout_rate, self.dtype, name="mlp"
        )
        return x + dropout(mlp(norm("ln_mlp")(x), train))


class EncoderClassifier(nn.Module):
    """Embedding, position encoding, ``num_layers`` pre-LN blocks, pooling, linear head.

    ``inputs`` are integer tokens ``[B, T]`` (bytes, pixel intensities: ``embedding='tokens'``)
    or real features ``[B, T, C]`` (``embedding='dense'``). ``valid`` ``[B, T]`` marks real
    tokens; padding is masked out of attention and pooling.
    """

    num_classes: int
    vocab_size: int = 257
    num_layers: int = 2
    embed_dim: int = 64
    mlp_dim: int = 128
    num_heads: int = 2
    kernel: str = "softmax"
    kernel_options: Mapping[str, Any] | None = None
    implementation: Implementation = "auto"
    embedding: str = "tokens"
    pooling: str = "mean"
    position: str = "sinusoidal"
    position_options: Mapping[str, Any] | None = None
    max_len: int = 1024
    dropout_rate: float = 0.0
    # Compute dtype (None: float32). Parameters and the optimiser state stay float32; the
    # attention softmax / kernel, LayerNorm statistics and the loss are computed in float32.
    dtype: Any = None

    def setup(self):
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling {self.pooling!r}; valid: ['cls', 'mean']")
        if self.embedding == "tokens":
            self.embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)
        elif self.embedding == "dense":
            self.embed = nn.Dense(self.embed_dim, dtype=self.dtype)
        else:
            raise ValueError(f"unknown embedding {self.embedding!r}; valid: ['dense', 'tokens']")
        if self.pooling == "cls":
            self.cls = self.param("cls", nn.initializers.normal(0.02), (self.embed_dim,))
        self.position_encoding = position.make(
            self.position,
            dim=self.embed_dim,
            num_layers=self.num_layers,
            max_len=self.max_len + (self.pooling == "cls"),
            **dict(self.position_options or {}),
        )
        self.blocks = [
            EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.kernel,
                self.kernel_options,
                self.implementation,
                self.dropout_rate,
                self.dtype,
                name=f"block_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.final_norm = nn.LayerNorm(dtype=self.dtype)
        self.head = nn.Dense(self.num_classes, dtype=self.dtype)

    def position_terms(self, length: int) -> position.PositionTerms:
        """The position terms for ``length`` positions (CLS included), to compute once and cache."""
        return self.position_encoding(length)

    def __call__(
        self,
        inputs: Array,
        valid: Array | None = None,
        *,
        train: bool = False,
        position_terms: position.PositionTerms | None = None,
    ) -> Array:
        x = self.embed(inputs)
        batch, length = x.shape[:2]
        valid = jnp.ones((batch, length), bool) if valid is None else valid.astype(bool)
        if self.pooling == "cls":
            cls = jnp.broadcast_to(self.cls.astype(x.dtype), (batch, 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
            valid = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1)
        terms = self.position_terms(x.shape[1]) if position_terms is None else position_terms
        if terms.at_input is not None:
            x = x + terms.at_input[None, : x.shape[1]].astype(x.dtype)
        mask = valid[:, None, None, :]  # [B, heads=1, Tq=1, Tk]: padding keys are never attended
        for i, block in enumerate(self.blocks):
            if terms.per_layer is not None:
                x = x + terms.per_layer[i, None, : x.shape[1]].astype(x.dtype)
            qkv_bias = None
            if terms.qkv_bias is not None:
                qkv_bias = tuple(terms.qkv_bias[i, j, None, : x.shape[1]] for j in range(3))
            x = block(x, mask, qkv_bias, train=train)
        x = self.final_norm(x)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = valid[..., None].astype(x.dtype)
            pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return self.head(pooled)
