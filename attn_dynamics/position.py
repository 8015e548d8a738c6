"""Position encodings behind one interface.

Every encoding is a Flax module built by :func:`make` and called with a sequence length; it
returns :class:`PositionTerms`, the three places a transformer can take position information:

* ``at_input``  ``[T, D]``: added once to the token embeddings (sinusoidal, learned);
* ``per_layer`` ``[L, T, D]``: added at the input of every block (FLOATER, ``every_layer``);
* ``qkv_bias``  ``[L, 3, T, D]``: per-position biases on the q/k/v projections of every block
  (FLOATER, ``qkv_bias``: the reference code's form).

The encoder adds whichever terms are present, so a new encoding needs no model change. An
encoding defined in its own module registers itself with :func:`register` when imported and
depends on this module, never the reverse: :mod:`attn_dynamics.floater` is imported by
:mod:`attn_dynamics.models`, so every model (and config check) sees ``'floater'``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class PositionTerms:
    at_input: Array | None = None
    per_layer: Array | None = None
    qkv_bias: Array | None = None


PositionFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, PositionFactory] = {}


def register(name: str) -> Callable[[PositionFactory], PositionFactory]:
    """Decorator: ``factory(*, dim, num_layers, max_len, **options) -> nn.Module``."""

    def decorate(factory: PositionFactory) -> PositionFactory:
        if name in _REGISTRY:
            raise ValueError(f"position encoding {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def names() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, *, dim: int, num_layers: int, max_len: int, **options) -> nn.Module:
    """The position-encoding module ``name``; ValueError listing the valid names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown position encoding {name!r}; valid encodings: {names()}")
    return _REGISTRY[name](dim=dim, num_layers=num_layers, max_len=max_len, **options)


def sinusoidal_table(length: int, dim: int, *, base: float = 10_000.0) -> Array:
    """Vaswani et al.: ``pe[t, 2i] = sin(t / base^(2i/D))``, ``pe[t, 2i+1] = cos(...)``."""
    positions = jnp.arange(length, dtype=jnp.float32)[:, None]
    inv_freq = jnp.exp(-math.log(base) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions * inv_freq[None, :]
    table = jnp.zeros((length, dim), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(angles))
    return table.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))


class NoPosition(nn.Module):
    def __call__(self, length: int) -> PositionTerms:
        return PositionTerms()


class Sinusoidal(nn.Module):
    dim: int
    base: float = 10_000.0

    def __call__(self, length: int) -> PositionTerms:
        return PositionTerms(at_input=sinusoidal_table(length, self.dim, base=self.base))


class Learned(nn.Module):
    dim: int
    max_len: int
    init_std: float = 0.02

    @nn.compact
    def __call__(self, length: int) -> PositionTerms:
        table = self.param(
            "embedding", nn.initializers.normal(self.init_std), (self.max_len, self.dim)
        )
        if length > self.max_len:
            raise ValueError(
                f"learned position encoding has max_len={self.max_len} and cannot encode length "
                f"{length}; raise model.max_len or use 'sinusoidal' or 'floater', which extrapolate"
            )
        return PositionTerms(at_input=table[:length])


@register("none")
def _none(*, dim: int, num_layers: int, max_len: int) -> nn.Module:
    return NoPosition()


@register("sinusoidal")
def _sinusoidal(*, dim: int, num_layers: int, max_len: int, base: float = 10_000.0) -> nn.Module:
    return Sinusoidal(dim, base)


@register("learned")
def _learned(*, dim: int, num_layers: int, max_len: int, init_std: float = 0.02) -> nn.Module:
    return Learned(dim, max_len, init_std)
