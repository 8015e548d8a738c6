"""FLOATER: position encodings as the solution of a neural ODE (Liu et al., ICML 2020).

Position vectors follow ``dp/dt = h(t, p; theta)``; token ``i`` is encoded by ``p(t_i)`` with
``t_i = i * dt``. One vector field ``h`` is shared by all layers; every layer (and, in the
q/k/v-bias form, every one of q/k/v) has its own learned initial value ``p(0)``, so all initial
values form one batched state ``[L, d]`` / ``[L, 3, d]`` solved by **one** ``diffeqsolve`` per
call, saving every grid point (``SaveAt(ts=...)``).

Pieces, from pure to Flax:

* vector fields are pure functions ``apply(t, p, theta) -> dp/dt`` on rows ``p [N, d]`` (all
  initial values stacked: one matmul for every layer and q/k/v) with their
  parameters ``theta`` passed through diffrax's ``args`` (never closed over), kept in a registry
  (:func:`register_vector_field`, :func:`vector_field_names`): ``'mlp'`` (the reference:
  ``Linear(d+1 -> hidden)`` on ``[p, t]``, ReLU, ``Linear(hidden+1 -> d)`` on ``[., t]``,
  Xavier-normal weights, zero biases; 526,336 parameters at d = hidden = 512), ``'linear'``
  (``dp/dt = A p``), ``'sinusoidal'`` (a rotation per frequency pair: its solution from
  ``p(0) = [0, 1, 0, 1, ...]`` is :func:`attn_dynamics.position.sinusoidal_table`) and
  ``'zero'`` (``h = 0``: constant positions);
* :func:`solve` integrates a field from ``p(0)`` over ``t_i = i * dt``, ``i < length``, and returns
  ``[length, *p0.shape]``: fixed-step classic RK4 (:class:`RK4`, built on diffrax's
  ``AbstractERK`` with its Butcher tableau; steps ``dt / rk4_substeps``, ``rk4_substeps`` of
  them per diffrax step from one position to the next, see :func:`rk4`) or adaptive Tsit5 /
  Dopri5 with a PID controller; ``RecursiveCheckpointAdjoint`` (default: the exact gradient of
  the discrete solve; with RK4 every step is checkpointed while that fits in 256 MiB, so the
  backward pass recomputes each step once instead of O(log n) times) or
  ``BacksolveAdjoint``; ``max_steps`` bounds time and memory and exceeding it is an error that
  names ``config.model.floater.max_steps``;
* :class:`Floater` is the Flax module behind ``position.make('floater', ...)``: it holds
  ``vector_field`` and ``initial_value`` parameters and returns
  :class:`~attn_dynamics.position.PositionTerms` for the three injections:

  - ``'input'``: ``p(t_i)`` (one initial value) added once to the token embeddings (``at_input``);
  - ``'every_layer'``: ``p^(n)(t_i)`` added at the input of block ``n`` (``per_layer``);
  - ``'qkv_bias'`` (the reference code's form): per-position biases on the q/k/v projections of
    every block (``qkv_bias [L, 3, T, d]``), with the sinusoidal encoding still added once at the
    input (``at_input``).

Lengths. Only the positions a call asks for are solved (the grid is ``t_0 .. t_{length-1}``),
so a training step solves up to its batch length, and a longer sequence at evaluation is
encoded by integrating further along the same ODE: never clipped or wrapped. ``max_len`` is no
limit for FLOATER; the fixed-step solve needs ``(length - 1) * rk4_substeps <= max_steps``.

Warm start. ``warm_start=True`` zeros the last layer of ``h`` (so ``h = 0``) and every ``p(0)``,
so ``p(t) = 0`` exactly and, at step 0, the model computes exactly what it computes without
FLOATER: for ``'qkv_bias'`` the **sinusoidal** model (the zero biases add nothing, the sinusoidal
input encoding stays); for ``'input'`` and ``'every_layer'`` the **``position='none'``** model.
:func:`warm_start_params` copies a pretrained non-FLOATER model's parameters into a FLOATER
model's (same paths and shapes), keeping the new FLOATER parameters: the paper's fine-tuning
recipe (``config.train.init_from``).

Evaluation and caching. The ODE does not depend on the data, so at evaluation the positions are
solved once and reused: ``terms = floater.cached_terms(model, variables, length)`` (one solve,
gradients stopped), then ``model.apply(variables, x, position_terms=terms)`` for every batch.
The encoder slices the cached terms to each batch's length, so one cache for the longest length
serves all shorter batches.

``update_every = k`` (the reference re-solves every 400 updates). The runner uses
:func:`resolve_due` (``step % k == 0``): on those steps it applies the model *without*
``position_terms`` (the solve is inside the differentiated function: exact gradients for ``h``
and every ``p(0)``) and afterwards refreshes the cache with :func:`cached_terms` from the updated
parameters; on the other steps it passes the cached terms. Gradient semantics: cached positions
are constants, so between re-solves ``h`` and ``p(0)`` receive **zero gradient** (stateful
optimisers such as Adam may still move them through their momentum, and weight decay still
applies); the rest of the model trains every step against positions that are at most ``k - 1``
updates stale. ``k = 1`` is exact backpropagation through the solve at every step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from diffrax._local_interpolation import AbstractLocalInterpolation
from diffrax._misc import linear_rescale

from attn_dynamics import position

Array = jax.Array
PyTree = Any

INJECTIONS = ("input", "every_layer", "qkv_bias")
SOLVERS = ("rk4", "tsit5", "dopri5")
ADJOINTS = ("recursive_checkpoint", "backsolve")
MAX_STEPS_OPTION = "config.model.floater.max_steps"
# Memory allowed for the forward-pass checkpoints of a fixed-step solve: up to this, every step
# is a checkpoint (backward = one pass, no recomputation); beyond, fewer (binomial recomputation).
CHECKPOINT_BYTES = 256 * 2**20
# RK4 stages per diffrax step up to which :func:`solve` unrolls them (faster steps, longer
# compiles: about 2x at 20 stages); beyond, diffrax's stage loop.
UNROLL_MAX_STAGES = 20


# ----------------------------------------------------------------------------- classic RK4

_RK4_A = np.array(
    [[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0, 0, 1.0, 0]]
)
_RK4_B = np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6])
_RK4_C = np.array([0.0, 0.5, 0.5, 1.0])


def rk4_tableau(substeps: int = 1) -> diffrax.ButcherTableau:
    """Classic RK4 (``c = [1/2, 1/2, 1]``, ``a = [[1/2], [0, 1/2], [0, 0, 1]]``,
    ``b = [1/6, 1/3, 1/3, 1/6]``); with ``substeps = s > 1``, ``s`` consecutive classic RK4
    steps of size ``h / s`` written as one explicit RK method of ``4 s`` stages and step ``h``
    (block lower-triangular ``a``: the same arithmetic, one diffrax step per ``s`` RK4 steps)."""
    n = 4 * substeps
    a, c, b = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    for j in range(substeps):
        rows = slice(4 * j, 4 * j + 4)
        a[rows, : 4 * j] = np.tile(_RK4_B, j)[None, :] / substeps
        a[rows, rows] = _RK4_A / substeps
        c[rows] = (j + _RK4_C) / substeps
        b[rows] = _RK4_B / substeps
    # No embedded method: the difference to the first-order (Euler) step is a crude error
    # estimate, present because diffrax requires one; RK4 is meant for constant steps.
    b_error = b.copy()
    b_error[0] -= 1.0
    return diffrax.ButcherTableau(
        c=c[1:], a_lower=tuple(a[i, :i] for i in range(1, n)), b_sol=b, b_error=b_error
    )


def _rk4_dense_weights(s: Array) -> Array:
    """The classic RK4 continuous extension (third order, no extra evaluations):
    ``y(t0 + s h) = y0 + sum_i b_i(s) k_i``; at ``s = 1`` the weights are ``b``."""
    s2, s3 = s * s, s * s * s
    middle = s2 - 2 * s3 / 3
    return jnp.stack([s - 1.5 * s2 + 2 * s3 / 3, middle, middle, 2 * s3 / 3 - s2 / 2])


class _RK4Interpolation(AbstractLocalInterpolation):
    """Dense output of :class:`RK4`: within RK4 sub-step ``j`` of the ``substeps`` in a step,
    ``y = y_j + sum_i b_i(sigma) k_{j,i}`` (``y_j`` the sub-step's start, ``sigma`` the position
    inside it); third-order accurate, exact at the sub-step ends."""

    substeps: ClassVar[int] = 1
    t0: Any
    t1: Any
    y0: PyTree
    k: PyTree

    def __init__(self, *, t0, t1, y0, y1, k):
        del y1  # part of diffrax's interpolation API
        self.t0 = t0
        self.t1 = t1
        self.y0 = y0
        self.k = k

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return jtu.tree_map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        n = self.substeps
        x = linear_rescale(self.t0, t0, self.t1) * n
        j = jnp.clip(jnp.floor(x), 0, n - 1)
        sub = jnp.asarray(np.repeat(np.arange(n), 4))  # the sub-step of every stage
        done = jnp.asarray(np.tile(_RK4_B, n))
        current = jnp.tile(_rk4_dense_weights(x - j), n)
        weights = jnp.where(sub < j, done, jnp.where(sub == j, current, 0.0)) / n

        def _evaluate(y0, k):
            with jax.numpy_dtype_promotion("standard"):
                return y0 + jnp.tensordot(weights.astype(k.dtype), k, axes=1)

        return jtu.tree_map(_evaluate, self.y0, self.k)


class RK4(diffrax.AbstractERK):
    """The classic fourth-order Runge--Kutta method (diffrax ships none), with its third-order
    continuous extension for dense / ``SaveAt(ts=...)`` output. Use it with constant steps.
    :func:`rk4` gives the variant that takes ``substeps`` RK4 steps per diffrax step.

    ``unroll=True`` (default) evaluates the tableau's stages in straight-line code instead of
    diffrax's generic stage loop (a checkpointed while loop): the same arithmetic (up to
    floating-point summation order), about 30% faster forward + backward for FLOATER-sized
    vector fields on CPU, at some compile time. ``unroll=False`` uses diffrax's loop."""

    tableau: ClassVar[diffrax.ButcherTableau] = rk4_tableau(1)
    interpolation_cls: ClassVar[Callable[..., _RK4Interpolation]] = _RK4Interpolation
    unroll: bool = True

    def order(self, terms):
        del terms
        return 4

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        if not self.unroll:
            return super().step(terms, t0, t1, y0, args, solver_state, made_jump)
        tableau = self.tableau
        c = np.concatenate([[0.0], tableau.c])
        h = t1 - t0
        control = terms.contr(t0, t1)
        ks = []  # k_i = h f(t0 + c_i h, y0 + sum_j a_ij k_j), diffrax's convention
        for i in range(len(c)):
            z = y0
            if i:
                for a_ij, k_j in zip(tableau.a_lower[i - 1], ks, strict=True):
                    if a_ij != 0:
                        z = jtu.tree_map(lambda z_, k_, a=a_ij: z_ + a * k_, z, k_j)
            ks.append(terms.vf_prod(t0 + c[i] * h, z, args, control))
        k = jtu.tree_map(lambda *stages: jnp.stack(stages), *ks)

        def combine(weights):
            return jtu.tree_map(
                lambda y, k_: y + jnp.tensordot(jnp.asarray(weights, k_.dtype), k_, axes=1), y0, k
            )

        y1 = combine(tableau.b_sol)
        y_error = jtu.tree_map(jnp.subtract, combine(tableau.b_error), y0)
        dense_info = {"y0": y0, "y1": y1, "k": k}
        return y1, y_error, dense_info, solver_state, diffrax.RESULTS.successful


eqxi.doc_remove_args("scan_kind")(RK4.__init__)


@functools.cache
def _rk4_class(substeps_: int) -> type[RK4]:
    if substeps_ == 1:
        return RK4

    class Interpolation(_RK4Interpolation):
        substeps: ClassVar[int] = substeps_

    class RK4Substeps(RK4):
        tableau: ClassVar[diffrax.ButcherTableau] = rk4_tableau(substeps_)
        interpolation_cls: ClassVar[Callable[..., _RK4Interpolation]] = Interpolation

    RK4Substeps.__name__ = RK4Substeps.__qualname__ = f"RK4x{substeps_}"
    return RK4Substeps


def rk4(substeps: int = 1, *, unroll: bool = True) -> RK4:
    """Classic RK4 taking ``substeps`` RK4 steps of size ``h / substeps`` per diffrax step ``h``.

    :func:`solve` steps once per position (``h = dt``) with ``substeps = rk4_substeps``: the same
    RK4 steps of size ``dt / rk4_substeps`` as stepping ``dt / rk4_substeps`` at a time, but
    ``rk4_substeps`` times fewer iterations of diffrax's step loop (the loop's bookkeeping, and
    above all its checkpointed backward pass, dominate the cost of a small vector field)."""
    if substeps < 1:
        raise ValueError(f"rk4_substeps must be >= 1, got {substeps}")
    return _rk4_class(int(substeps))(unroll=unroll)


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
    if name not in _VECTOR_FIELDS:
        raise ValueError(
            f"unknown vector field {name!r}; valid vector fields: {vector_field_names()}"
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


# ----------------------------------------------------------------------------- the solve


def _apply_fn(field) -> Callable[[Array, Array, PyTree], Array]:
    if isinstance(field, str):
        return get_vector_field(field).apply
    if isinstance(field, VectorField):
        return field.apply
    if callable(field):
        return field
    raise TypeError(
        f"field must be a vector-field name, a VectorField or f(t, p, theta); got {field!r}"
    )


def num_fixed_steps(length: int, rk4_substeps: int) -> int:
    """Steps of the fixed-step RK4 solve over ``length`` positions."""
    return max(length - 1, 0) * rk4_substeps


def solve(
    field: str | VectorField | Callable[[Array, Array, PyTree], Array],
    theta: PyTree,
    p0: Array,
    length: int,
    *,
    dt: float = 0.01,
    solver: str = "rk4",
    rk4_substeps: int = 5,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    adjoint: str = "recursive_checkpoint",
    max_steps: int = 4096,
) -> Array:
    """``p(t_i)`` for ``t_i = i * dt``, ``i < length``: ``[length, *p0.shape]``, in ``p0``'s dtype.

    One ``diffrax.diffeqsolve`` for the whole batched state ``p0 [..., d]`` (all layers and q/k/v
    at once); ``theta`` goes through ``args``. ``solver='rk4'`` takes constant classic RK4 steps
    ``dt / rk4_substeps`` (the reference: ``dt / 5``), ``rk4_substeps`` of them inside each
    diffrax step from one position to the next (:func:`rk4`), and needs
    ``(length - 1) * rk4_substeps <= max_steps`` (RK4 steps), checked before solving; ``'tsit5'`` /
    ``'dopri5'`` adapt their steps to ``rtol`` / ``atol`` (a PID controller) and fail at run time
    when they need more than ``max_steps``. Both errors name ``config.model.floater.max_steps``.
    ``length``, ``dt`` and the options are static (Python numbers): changing them retraces.
    """
    apply = _apply_fn(field)
    p0 = jnp.asarray(p0)
    if not jnp.issubdtype(p0.dtype, jnp.floating):
        raise TypeError(f"p0 must be floating point, got {p0.dtype}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown FLOATER solver {solver!r}; valid solvers: {list(SOLVERS)}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"unknown FLOATER adjoint {adjoint!r}; valid adjoints: {list(ADJOINTS)}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if length == 1:
        return p0[None]
    shape, dtype = p0.shape, p0.dtype
    p0 = p0.reshape(-1, shape[-1])  # all initial values as rows of one state
    ts = jnp.arange(length, dtype=dtype) * jnp.asarray(dt, dtype)
    t1 = ts[-1]
    if solver == "rk4":
        if rk4_substeps < 1:
            raise ValueError(f"rk4_substeps must be >= 1, got {rk4_substeps}")
        steps = num_fixed_steps(length, rk4_substeps)
        if steps > max_steps:
            raise ValueError(
                f"FLOATER: solving {length} positions with solver='rk4' and "
                f"rk4_substeps={rk4_substeps} takes {steps} steps, more than "
                f"max_steps={max_steps}; "
                f"raise {MAX_STEPS_OPTION} to at least {steps} (or lower "
                "config.model.floater.rk4_substeps)"
            )
        # One diffrax step per position (rk4_substeps RK4 steps inside it): the step ends are
        # exactly the save points, so the saved values are RK4 steps, not interpolations.
        diffrax_solver = rk4(rk4_substeps, unroll=4 * rk4_substeps <= UNROLL_MAX_STAGES)
        controller = diffrax.StepTo(ts=ts)
        dt0 = None
        diffrax_max_steps = length - 1
        state_bytes = (2 + 4 * rk4_substeps) * p0.size * p0.dtype.itemsize  # y, stages
        checkpoints = int(
            min(length - 1, max(CHECKPOINT_BYTES // state_bytes, 2 * length.bit_length()))
        )
    else:
        diffrax_solver = diffrax.Tsit5() if solver == "tsit5" else diffrax.Dopri5()
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = dt
        diffrax_max_steps = max_steps
        checkpoints = None
    if adjoint == "recursive_checkpoint":
        adjoint_ = diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
    else:
        # The adjoint ODE runs backwards one interval [t_{i+1} -> t_i] at a time: one RK4 step
        # of -dt each (StepTo's increasing grid cannot run backwards); adaptive as forwards.
        backward = {"solver": diffrax_solver, "stepsize_controller": controller}
        if solver == "rk4":
            backward.update(stepsize_controller=diffrax.ConstantStepSize(), dt0=-dt)
        adjoint_ = diffrax.BacksolveAdjoint(**backward)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(apply),
        diffrax_solver,
        t0=ts[0],
        t1=t1,
        dt0=dt0,
        y0=p0,
        args=theta,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        adjoint=adjoint_,
        max_steps=diffrax_max_steps,
        throw=False,
    )
    ys = eqx.error_if(
        sol.ys.reshape(length, *shape),
        sol.result == diffrax.RESULTS.max_steps_reached,
        f"FLOATER: the {solver} ODE solve over {length} positions needed more than "
        f"max_steps={max_steps} steps; raise {MAX_STEPS_OPTION} (or loosen "
        "config.model.floater.rtol / atol)",
    )
    return eqx.error_if(
        ys, sol.result != diffrax.RESULTS.successful, f"FLOATER: the {solver} ODE solve failed"
    )


# ----------------------------------------------------------------------------- Flax module


def initial_value_shape(injection: str, num_layers: int, dim: int) -> tuple[int, ...]:
    if injection == "input":
        return (dim,)
    if injection == "every_layer":
        return (num_layers, dim)
    if injection == "qkv_bias":
        return (num_layers, 3, dim)
    raise ValueError(
        f"unknown FLOATER injection {injection!r}; valid injections: {list(INJECTIONS)}"
    )


def _default_initial_value(key, shape, dtype):
    # Xavier-uniform as in the reference (torch's fans for its [3, L, d] bias tensor).
    dim, count = shape[-1], int(np.prod(shape[:-1]))
    fans = dim * (shape[0] + 3) if len(shape) == 3 else dim + count
    bound = math.sqrt(6.0 / fans)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def terms_from_positions(
    positions: Array, injection: str, *, dim: int, sinusoidal_base: float = 10_000.0
) -> position.PositionTerms:
    """``positions [T, *initial_value_shape]`` from :func:`solve` -> the encoder's terms."""
    length = positions.shape[0]
    if injection == "input":
        return position.PositionTerms(at_input=positions)
    if injection == "every_layer":
        return position.PositionTerms(per_layer=jnp.moveaxis(positions, 0, 1))
    if injection == "qkv_bias":
        return position.PositionTerms(
            at_input=position.sinusoidal_table(length, dim, base=sinusoidal_base),
            qkv_bias=jnp.moveaxis(positions, 0, 2),
        )
    raise ValueError(
        f"unknown FLOATER injection {injection!r}; valid injections: {list(INJECTIONS)}"
    )


class Floater(nn.Module):
    """FLOATER position encoding: parameters ``vector_field`` (``theta`` of ``h``) and
    ``initial_value`` (``p(0)``: ``[d]``, ``[L, d]`` or ``[L, 3, d]`` by injection); calling it
    with a length solves the ODE (a pure function of those parameters) and returns the terms."""

    dim: int
    num_layers: int
    injection: str = "qkv_bias"
    vector_field: str = "mlp"
    hidden_dim: int = 0  # 0: dim
    solver: str = "rk4"
    dt: float = 0.01
    rk4_substeps: int = 5
    rtol: float = 1e-3
    atol: float = 1e-6
    adjoint: str = "recursive_checkpoint"
    max_steps: int = 4096
    warm_start: bool = False
    sinusoidal_base: float = 10_000.0
    param_dtype: Any = jnp.float32

    def setup(self):
        field = get_vector_field(self.vector_field)
        shape = initial_value_shape(self.injection, self.num_layers, self.dim)
        self.theta = self.param(
            "vector_field",
            lambda key: field.init(
                key,
                dim=self.dim,
                hidden_dim=self.hidden_dim,
                dt=self.dt,
                warm_start=self.warm_start,
                dtype=self.param_dtype,
            ),
        )
        if self.warm_start:
            init = nn.initializers.zeros
        else:
            init = field.initial_value or _default_initial_value
        self.p0 = self.param("initial_value", init, shape, self.param_dtype)

    def positions(self, length: int) -> Array:
        """``[length, *initial_value.shape]``: ``p(t_i)`` of every initial value."""
        return solve(
            self.vector_field,
            self.theta,
            self.p0,
            length,
            dt=self.dt,
            solver=self.solver,
            rk4_substeps=self.rk4_substeps,
            rtol=self.rtol,
            atol=self.atol,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
        )

    def __call__(self, length: int) -> position.PositionTerms:
        return terms_from_positions(
            self.positions(length),
            self.injection,
            dim=self.dim,
            sinusoidal_base=self.sinusoidal_base,
        )


@position.register("floater")
def _floater(
    *,
    dim: int,
    num_layers: int,
    max_len: int,
    injection: str = "qkv_bias",
    hidden_dim: int = 0,
    solver: str = "rk4",
    dt: float = 0.01,
    rk4_substeps: int = 5,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    adjoint: str = "recursive_checkpoint",
    max_steps: int = 4096,
    warm_start: bool = False,
    update_every: int = 1,
    vector_field: str = "mlp",
    sinusoidal_base: float = 10_000.0,
) -> nn.Module:
    """``position.make('floater', ..., **config.model.floater)``. ``max_len`` is no limit (the
    grid extends to any length); ``update_every`` is the runner's business (see the module doc)."""
    del max_len
    if injection not in INJECTIONS:
        raise ValueError(
            f"unknown FLOATER injection {injection!r}; valid injections: {list(INJECTIONS)}"
        )
    if solver not in SOLVERS:
        raise ValueError(f"unknown FLOATER solver {solver!r}; valid solvers: {list(SOLVERS)}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"unknown FLOATER adjoint {adjoint!r}; valid adjoints: {list(ADJOINTS)}")
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")
    get_vector_field(vector_field)
    return Floater(
        dim=dim,
        num_layers=num_layers,
        injection=injection,
        vector_field=vector_field,
        hidden_dim=hidden_dim,
        solver=solver,
        dt=float(dt),
        rk4_substeps=int(rk4_substeps),
        rtol=float(rtol),
        atol=float(atol),
        adjoint=adjoint,
        max_steps=int(max_steps),
        warm_start=bool(warm_start),
        sinusoidal_base=float(sinusoidal_base),
    )


# ----------------------------------------------------------------------------- runner helpers


def cached_terms(model: nn.Module, variables: PyTree, length: int) -> position.PositionTerms:
    """The position terms of ``length`` positions (CLS included when the model pools with one),
    solved once, gradients stopped: pass them as ``model.apply(variables, x, position_terms=...)``
    for every evaluation batch (any length up to ``length``), or between re-solves with
    ``update_every > 1``. ``model`` is an :class:`~attn_dynamics.models.EncoderClassifier`
    (anything with a ``position_terms(length)`` method). Jit it with ``length`` static."""
    terms = model.apply(variables, length, method=type(model).position_terms)
    return jax.lax.stop_gradient(terms)


def resolve_due(step: int, update_every: int) -> bool:
    """Whether training step ``step`` re-solves the ODE (and differentiates through it)."""
    return update_every <= 1 or step % update_every == 0


def warm_start_params(floater_params: PyTree, pretrained_params: PyTree) -> PyTree:
    """A FLOATER model's parameters with every parameter it shares with ``pretrained_params``
    (a non-FLOATER model of the same architecture: same path and shape) copied over; the
    FLOATER-only parameters (``.../position_encoding/vector_field``, ``initial_value``) keep
    their values (zeros with ``warm_start=True``: the result computes exactly what the pretrained
    model computes). Pretrained parameters with no counterpart (e.g. a learned position table)
    are dropped; a shared path with a different shape is an error. Works on ``{'params': ...}``
    variable dicts or bare parameter trees (both sides alike), dicts or FrozenDicts."""
    frozen = isinstance(floater_params, flax.core.FrozenDict)
    target = flax.traverse_util.flatten_dict(flax.core.unfreeze(floater_params), sep="/")
    source = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained_params), sep="/")
    mismatched = [
        f"{path}: {np.shape(source[path])} vs {np.shape(leaf)}"
        for path, leaf in target.items()
        if path in source and np.shape(source[path]) != np.shape(leaf)
    ]
    if mismatched:
        raise ValueError(
            "warm_start_params: pretrained and FLOATER parameters differ in shape at "
            + "; ".join(mismatched)
        )
    shared = [path for path in target if path in source]
    if not shared:
        raise ValueError(
            "warm_start_params: the pretrained parameters share no path with the FLOATER model "
            "(both must be {'params': ...} variable dicts, or both bare parameter trees)"
        )
    merged = {
        path: jnp.asarray(source[path], dtype=jnp.result_type(leaf)) if path in source else leaf
        for path, leaf in target.items()
    }
    result = flax.traverse_util.unflatten_dict(merged, sep="/")
    return flax.core.freeze(result) if frozen else result


def param_report(theta: PyTree) -> Mapping[str, int]:
    """Parameter count per top-level entry of a vector field's ``theta`` (for logs)."""
    return {name: num_params(sub) for name, sub in theta.items()}
