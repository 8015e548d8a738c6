"""FLOATER's vector fields ``h(t, p; theta)``: a registry of ``(field, init)`` pairs.

``mlp`` is the reference code's field (two ``Linear(d+1 -> d)`` on ``[p, t]``); ``linear``,
``sinusoidal`` (whose solution is the sinusoidal encoding) and ``zero`` are there for ablations.
:mod:`attn_dynamics.floater` solves the ODE with whichever field a config names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

# ----------------------------------------------------------------------------- vector fields


@dataclasses.dataclass(frozen=True)
class VectorField:
    """A vector field ``h``: ``apply(t, p, theta) -> dp/dt`` (pure; :func:`solve` passes every
    state as rows ``p [N, d]``, all initial values in one batch) and
    ``init(key, *, dim, hidden_dim, dt, warm_start, dtype) -> theta``. ``warm_start=True`` must
    give ``h(t, 0) = 0`` for all ``t``. ``initial_value(key, shape, dtype)``, when given, replaces
    the default initialisation of ``p(0)`` (the ``'sinusoidal'`` field starts at ``[0, 1, ...]``).
    """

    apply: Callable[[Array, Array, PyTree], Array]
    init: Callable[..., PyTree]
    initial_value: Callable[[Array, tuple[int, ...], Any], Array] | None = None


_VECTOR_FIELDS: dict[str, VectorField] = {}


def register_vector_field(name: str, field: VectorField) -> VectorField:
    if name in _VECTOR_FIELDS:
        raise ValueError(f"vector field {name!r} is already registered")
    _VECTOR_FIELDS[name] = field
    return field


def vector_field_names() -> list[str]:
    return sorted(_VECTOR_FIELDS)


def get_vector_field(name: str) -> VectorField:
    if name not in _VECTOR_FIELDS:  # the message floater.check_options gives for this field
        raise ValueError(
            f"unknown config.model.floater.vector_field {name!r}; valid choices: "
            f"{vector_field_names()}"
        )
    return _VECTOR_FIELDS[name]


def mlp_field(t: Array, p: Array, theta: PyTree) -> Array:
    """The reference ``h``: ``W_2 [ReLU(W_1 [p, t] + b_1), t] + b_2`` on rows ``p [N, d]``.

    The time column of each weight is applied as ``t * w_t`` (no concatenation); the matmuls run
    once over all initial values (``p [L, 3, d]`` is one batch of ``3L`` rows)."""
    w1, b1 = theta["dense_in"]["kernel"], theta["dense_in"]["bias"]
    w2, b2 = theta["dense_out"]["kernel"], theta["dense_out"]["bias"]
    t = jnp.asarray(t, p.dtype)
    hidden = jax.nn.relu(p @ w1[:-1] + (t * w1[-1:] + b1[None]))
    return hidden @ w2[:-1] + (t * w2[-1:] + b2[None])


def _mlp_init(key, *, dim, hidden_dim, dt, warm_start, dtype):
    del dt
    hidden_dim = hidden_dim or dim
    xavier = nn.initializers.xavier_normal()
    key_in, key_out = jax.random.split(key)
    out_init = nn.initializers.zeros if warm_start else xavier
    return {
        "dense_in": {
            "kernel": xavier(key_in, (dim + 1, hidden_dim), dtype),
            "bias": jnp.zeros((hidden_dim,), dtype),
        },
        "dense_out": {
            "kernel": out_init(key_out, (hidden_dim + 1, dim), dtype),
            "bias": jnp.zeros((dim,), dtype),
        },
    }


def linear_field(t: Array, p: Array, theta: PyTree) -> Array:
    """``dp/dt = A p`` (rows ``p [N, d]``, ``A = theta['matrix'] [d, d]``)."""
    del t
    return p @ theta["matrix"].T


def _linear_init(key, *, dim, hidden_dim, dt, warm_start, dtype):
    del hidden_dim, dt
    if warm_start:
        return {"matrix": jnp.zeros((dim, dim), dtype)}
    return {"matrix": jax.random.normal(key, (dim, dim), dtype) / math.sqrt(dim)}


def sinusoidal_field(t: Array, p: Array, theta: PyTree) -> Array:
    """A rotation per pair: ``p_{2i}' = w_i p_{2i+1}``, ``p_{2i+1}' = -w_i p_{2i}``.

    From ``p(0) = [0, 1, 0, 1, ...]`` the solution is ``p_{2i}(t) = sin(w_i t)``,
    ``p_{2i+1}(t) = cos(w_i t)``: with ``w_i = base^(-2i/d) / dt`` it is the sinusoidal encoding
    of position ``t / dt``."""
    del t
    pairs = p.reshape(*p.shape[:-1], p.shape[-1] // 2, 2)
    w = theta["frequency"].astype(p.dtype)[None]
    rotated = jnp.stack([w * pairs[..., 1], -w * pairs[..., 0]], axis=-1)
    return rotated.reshape(p.shape)


def sinusoidal_frequencies(dim: int, dt: float, base: float = 10_000.0, dtype=jnp.float32):
    """``w_i = base^(-2i/d) / dt``, ``i < d/2``: the rates that make ``'sinusoidal'`` reproduce
    :func:`attn_dynamics.position.sinusoidal_table` on the grid ``t_i = i * dt``."""
    return jnp.exp(-math.log(base) * jnp.arange(0, dim, 2, dtype=dtype) / dim) / dt


def _sinusoidal_init(key, *, dim, hidden_dim, dt, warm_start, dtype):
    del key, hidden_dim, warm_start  # h(t, 0) = 0 already
    if dim % 2:
        raise ValueError(f"the 'sinusoidal' vector field needs an even dimension, got {dim}")
    return {"frequency": sinusoidal_frequencies(dim, dt, dtype=dtype)}


def _sinusoidal_initial_value(key, shape, dtype):
    del key
    return jnp.broadcast_to(jnp.tile(jnp.array([0.0, 1.0], dtype), shape[-1] // 2), shape)


def zero_field(t: Array, p: Array, theta: PyTree) -> Array:
    del t, theta
    return jnp.zeros_like(p)


register_vector_field("mlp", VectorField(mlp_field, _mlp_init))
register_vector_field("linear", VectorField(linear_field, _linear_init))
register_vector_field(
    "sinusoidal", VectorField(sinusoidal_field, _sinusoidal_init, _sinusoidal_initial_value)
)
register_vector_field("zero", VectorField(zero_field, lambda key, **kw: {}))


def num_params(theta: PyTree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(theta))
