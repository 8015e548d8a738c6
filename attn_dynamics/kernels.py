"""Attention kernels: a registry of pure functions ``fn(q, k, mask=None, **options) -> weights``.

Layout follows ``jax.nn.dot_product_attention``: ``q`` is ``[..., Tq, heads, d]``, ``k`` is
``[..., Tk, heads, d]`` and the weights are ``[..., heads, Tq, Tk]``. ``mask`` is boolean,
broadcastable to the weights, ``True`` where a query may attend to a key. A fully masked row
gets all-zero weights.

Two kinds of kernel are registered:

* *softmax kernels* are ``softmax_j(scale * q_i . k_j + bias_j)`` with a per-key bias. They are
  defined by a :class:`SoftmaxForm` and get the fast paths of :mod:`attn_dynamics.attention`:
  the blockwise online-softmax kernel (:mod:`attn_dynamics.blockwise`, the CPU default) and
  ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU for 16-bit inputs).
* *general kernels* return their weight matrix directly and always use the explicit path.

Register your own with :func:`register` (general) or :func:`register_softmax` (softmax form);
it then works by name everywhere (configs, sweeps, tests iterating over :func:`names`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
WeightsFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class SoftmaxForm:
    """``logits = scale * q.k + key_bias``: what the fast attention paths need.

    ``key_bias(k, **options)`` returns a ``[..., heads, 1, Tk]`` array (or None) and
    ``scale(d, **options)`` a Python float.
    """

    scale: Callable[..., float]
    key_bias: Callable[..., Array | None]


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str
    weights: WeightsFn
    softmax_form: SoftmaxForm | None = None
    normalized: bool = False  # rows sum to one over unmasked keys


_REGISTRY: dict[str, Kernel] = {}


def names() -> list[str]:
    return sorted(_REGISTRY)


def lookup(name: str) -> Kernel:
    """The registered :class:`Kernel` called ``name``; ValueError listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention kernel {name!r}; valid kernels: {names()}") from None


def get(name: str) -> WeightsFn:
    """The pure weight function ``fn(q, k, mask=None, **options)`` of kernel ``name``."""
    return lookup(name).weights


def register(name: str, *, normalized: bool = False) -> Callable[[WeightsFn], WeightsFn]:
    """Decorator registering a general kernel ``fn(q, k, mask=None, **options) -> weights``.

    The function must return ``[..., heads, Tq, Tk]`` and honour ``mask`` (zeros where masked).
    """

    def decorate(fn: WeightsFn) -> WeightsFn:
        _add(Kernel(name, fn, None, normalized))
        return fn

    return decorate


def register_softmax(name: str) -> Callable[[Callable[..., SoftmaxForm]], SoftmaxForm]:
    """Decorator registering a softmax kernel from a function returning its :class:`SoftmaxForm`.

    Example (a temperature-scaled dot product)::

        @kernels.register_softmax("hot")
        def hot():
            return kernels.SoftmaxForm(scale=lambda d, temperature=2.0: temperature / d**0.5,
                                       key_bias=lambda k, **_: None)
    """

    def decorate(make_form: Callable[[], SoftmaxForm]) -> SoftmaxForm:
        form = make_form()

        def weights(q: Array, k: Array, mask: Array | None = None, **options) -> Array:
            return masked_softmax(softmax_logits(form, q, k, **options), mask)

        weights.__name__ = weights.__qualname__ = name
        _add(Kernel(name, weights, form, normalized=True))
        return form

    return decorate


def _add(kernel: Kernel) -> None:
    if kernel.name in _REGISTRY:
        raise ValueError(f"attention kernel {kernel.name!r} is already registered")
    _REGISTRY[kernel.name] = kernel


# --------------------------------------------------------------------------------------------
# Shared pieces


def dot_scores(q: Array, k: Array) -> Array:
    """``q_i . k_j`` for every head: ``[..., Tq, h, d] x [..., Tk, h, d] -> [..., h, Tq, Tk]``."""
    return jnp.einsum("...qhd,...khd->...hqk", q, k)


def squared_norms(x: Array) -> Array:
    """``||x_j||^2`` laid out as ``[..., h, 1, T]`` so it broadcasts over queries."""
    return jnp.swapaxes(jnp.sum(jnp.square(x), axis=-1), -1, -2)[..., None, :]


def softmax_logits(form: SoftmaxForm, q: Array, k: Array, **options) -> Array:
    scale, bias = form.scale(q.shape[-1], **options), form.key_bias(k, **options)
    if bias is not None:
        q, k = fold_key_bias(q, k, bias, scale)
    return scale * dot_scores(q, k)


def fold_key_bias(q: Array, k: Array, bias: Array, scale: float) -> tuple[Array, Array]:
    """``(q', k')`` with ``scale * q'_i . k'_j == scale * q_i . k_j + bias_j``.

    The per-key bias ``[..., h, 1, Tk]`` becomes one more feature: ``q' = [q, 1]`` and
    ``k'_j = [k_j, bias_j / scale]``. The logits are then a plain scaled matmul: no bias is
    broadcast over ``[..., h, Tq, Tk]`` and added, and its gradient (a sum over queries of the
    logits' gradient, one more pass over that array) comes out of the matmul that computes
    the gradient of ``k'``.
    """
    column = jnp.swapaxes(bias[..., 0, :], -1, -2)[..., None] / scale  # [..., Tk, h, 1]
    column = jnp.broadcast_to(column, (*k.shape[:-1], 1)).astype(k.dtype)
    ones = jnp.ones((*q.shape[:-1], 1), q.dtype)
    return jnp.concatenate([q, ones], axis=-1), jnp.concatenate([k, column], axis=-1)


def masked_softmax(logits: Array, mask: Array | None) -> Array:
    """Softmax over the last axis; masked entries and fully masked rows are exactly zero."""
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    # Masked logits get the dtype's lowest value (finite, so no inf - inf = NaN); a fully masked
    # row then is a uniform softmax, which the final `where` zeroes along with its gradient.
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)


def apply_mask(weights: Array, mask: Array | None) -> Array:
    return weights if mask is None else jnp.where(mask, weights, 0.0)


def causal_mask(num_queries: int, num_keys: int | None = None) -> Array:
    """``[1, Tq, Tk]`` boolean lower-triangular mask (query i sees keys j <= i)."""
    num_keys = num_queries if num_keys is None else num_keys
    return jnp.tril(jnp.ones((num_queries, num_keys), bool))[None]


def padding_mask(query_valid: Array, key_valid: Array | None = None) -> Array:
    """``[..., 1, Tq, Tk]`` mask from per-token validity flags ``[..., T]``."""
    key_valid = query_valid if key_valid is None else key_valid
    return (query_valid[..., :, None] & key_valid[..., None, :])[..., None, :, :]


def default_sigma2(d: int) -> float:
    """The paper's usual bandwidth, sigma^2 = sqrt(d)."""
    return math.sqrt(d)


# --------------------------------------------------------------------------------------------
# Built-in kernels


@register_softmax("softmax")
def _softmax() -> SoftmaxForm:
    """``softmax_j(q_i . k_j / sqrt(d))``."""
    return SoftmaxForm(scale=lambda d, **_: 1.0 / math.sqrt(d), key_bias=lambda k, **_: None)


def _gaussian_scale(d: int, sigma2: float | None = None, **_) -> float:
    return 1.0 / (default_sigma2(d) if sigma2 is None else sigma2)


def _gaussian_key_bias(k: Array, sigma2: float | None = None, **_) -> Array:
    # exp(-||q-k||^2 / 2s2) normalised over keys == softmax((q.k - ||k||^2/2) / s2): the ||q||^2
    # term is constant along the row and cancels, so no exp of a large negative ever appears.
    return -0.5 * _gaussian_scale(k.shape[-1], sigma2) * squared_norms(k)


@register_softmax("gaussian")
def _gaussian() -> SoftmaxForm:
    """Row-normalised Gaussian kernel ``exp(-||q_i - k_j||^2 / (2 sigma^2))``."""
    return SoftmaxForm(scale=_gaussian_scale, key_bias=_gaussian_key_bias)


@register("gaussian_unnormalized")
def gaussian_unnormalized(
    q: Array, k: Array, mask: Array | None = None, *, sigma2: float | None = None
) -> Array:
    """The raw Gaussian kernel matrix ``exp(-||q_i - k_j||^2 / (2 sigma^2))``, as analysed."""
    # Expanded square instead of ||q - k||: no sqrt, so the gradient at q = k is finite.
    sq_dist = squared_norms(q).swapaxes(-1, -2) + squared_norms(k) - 2.0 * dot_scores(q, k)
    sq_dist = jnp.maximum(sq_dist, 0.0)  # cancellation can make it slightly negative
    return apply_mask(jnp.exp(-0.5 * _gaussian_scale(q.shape[-1], sigma2) * sq_dist), mask)


@register("linear")
def linear(q: Array, k: Array, mask: Array | None = None, **_) -> Array:
    """No nonlinearity: ``q_i . k_j / sqrt(d)`` (options of other kernels are ignored)."""
    return apply_mask(dot_scores(q, k) / math.sqrt(q.shape[-1]), mask)
