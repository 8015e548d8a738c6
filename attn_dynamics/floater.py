"""FLOATER: position encodings as the solution of a neural ODE (Liu et al., ICML 2020).

(One module above 400 lines on purpose: the vector fields, the solve, the Flax module and the
runner helpers are one method read together, and a third of the file is its documentation.)

Position vectors follow ``dp/dt = h(t, p; theta)``; token ``i`` is encoded by ``p(t_i)`` with
``t_i = i * dt``. One vector field ``h`` is shared by all layers; every layer (and, in the
q/k/v-bias form, every one of q/k/v) has its own learned initial value ``p(0)``, so all initial
values form one batched state ``[L, d]`` / ``[L, 3, d]``, solved at once.

Pieces, from pure to Flax:

* vector fields are pure functions ``apply(t, p, theta) -> dp/dt`` on rows ``p [N, d]`` (all
  initial values stacked: one matmul for every layer and q/k/v) with their parameters ``theta``
  passed as an argument (diffrax's ``args``; never closed over), kept in a registry
  (:func:`register_vector_field`, :func:`vector_field_names`): ``'mlp'`` (the reference:
  ``Linear(d+1 -> hidden)`` on ``[p, t]``, ReLU, ``Linear(hidden+1 -> d)`` on ``[., t]``,
  Xavier-normal weights, zero biases; 526,336 parameters at d = hidden = 512), ``'linear'``
  (``dp/dt = A p``), ``'sinusoidal'`` (a rotation per frequency pair: its solution from
  ``p(0) = [0, 1, 0, 1, ...]`` is :func:`attn_dynamics.position.sinusoidal_table`) and
  ``'zero'`` (``h = 0``: constant positions);
* :func:`solve` integrates a field from ``p(0)`` over ``t_i = i * dt``, ``i < length``, and returns
  ``[length, *p0.shape]``. Fixed-step classic RK4 takes steps ``dt / rk4_substeps``. With the
  default ``adjoint='recursive_checkpoint'`` it is a ``lax.scan`` over the positions whose body,
  the ``rk4_substeps`` steps from one position to the next, is a ``jax.checkpoint``: the exact
  gradient of the discrete solve, the backward pass keeping one state per position (no more
  memory than the output) and recomputing each step once. With ``'backsolve'`` it is a
  ``diffrax.diffeqsolve`` with :class:`RK4` (classic RK4 as a diffrax ``AbstractERK`` Butcher
  tableau) and ``BacksolveAdjoint``. Adaptive Tsit5 / Dopri5 (PID controller) are one
  ``diffrax.diffeqsolve`` with ``RecursiveCheckpointAdjoint`` or ``BacksolveAdjoint``.
  ``max_steps`` bounds time and memory; exceeding it is an error that names
  ``config.model.floater.max_steps``. (The scan is as fast as a hand-unrolled diffrax RK4 step
  and faster than diffrax's generic stage loop: ``benchmarks/floater.py``.)
* :func:`check_options` validates FLOATER options (``config.model.floater``'s fields) with one
  line naming the field, the bad value and the valid choices; the factory and :func:`solve`
  call it, and so can a config check before anything is built;
* :class:`Floater` is the Flax module behind ``position.make('floater', ...)``: it holds
  ``vector_field`` and ``initial_value`` parameters and returns
  :class:`~attn_dynamics.position.PositionTerms` for the three injections:

  - ``'input'``: ``p(t_i)`` (one initial value) added once to the token embeddings (``at_input``);
  - ``'every_layer'``: ``p^(n)(t_i)`` added at the input of block ``n`` (``per_layer``);
  - ``'qkv_bias'`` (the reference code's form): per-position biases on the q/k/v projections of
    every block (``qkv_bias [L, 3, T, d]``), with the sinusoidal encoding still added once at the
    input (``at_input``).

  Importing this module registers ``'floater'`` with :mod:`attn_dynamics.position` (which does
  not import it: the encoding is a plug-in of the position interface).

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

``update_every = k`` (the reference re-solves every 400 updates). On steps ``step % k == 0``
the runner applies the model *without* ``position_terms`` (the solve is inside the
differentiated function: exact gradients for ``h`` and every ``p(0)``) and afterwards refreshes
the cache with :func:`cached_terms` from the updated parameters; on the other steps it passes the
cached terms. Gradient semantics: cached positions are constants, so between re-solves ``h`` and
``p(0)`` receive **zero gradient** (stateful optimisers such as Adam may still move them through
their momentum, and weight decay still applies); the rest of the model trains every step against
positions that are at most ``k - 1`` updates stale. ``k = 1`` is exact backpropagation through
the solve at every step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn_dynamics import position
from attn_dynamics.floater_fields import (  # noqa: F401 -- the public names live here too
    VectorField,
    _sinusoidal_initial_value,
    get_vector_field,
    linear_field,
    mlp_field,
    num_params,
    register_vector_field,
    sinusoidal_field,
    sinusoidal_frequencies,
    vector_field_names,
    zero_field,
)

Array = jax.Array
PyTree = Any

INJECTIONS = ("input", "every_layer", "qkv_bias")
SOLVERS = ("rk4", "tsit5", "dopri5")
ADJOINTS = ("recursive_checkpoint", "backsolve")
MAX_STEPS_OPTION = "config.model.floater.max_steps"


# ----------------------------------------------------------------------------- classic RK4


def rk4_step(apply: Callable, t: Array, y: Array, h: float, theta: PyTree) -> Array:
    """One classic fourth-order Runge--Kutta step of size ``h`` from ``(t, y)``."""
    k1 = apply(t, y, theta)
    k2 = apply(t + h / 2, y + (h / 2) * k1, theta)
    k3 = apply(t + h / 2, y + (h / 2) * k2, theta)
    k4 = apply(t + h, y + h * k3, theta)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def _step_end_interpolation(*, t0, t1, y0, y1, k) -> diffrax.LocalLinearInterpolation:
    # RK4 here steps onto its save points, so dense output is never needed between steps; the
    # linear interpolant is exact at the step ends (diffrax requires some interpolation).
    del k
    return diffrax.LocalLinearInterpolation(t0=t0, t1=t1, y0=y0, y1=y1)


class RK4(diffrax.AbstractERK):
    """The classic fourth-order Runge--Kutta method (diffrax ships none) as a diffrax explicit RK
    Butcher tableau, for constant steps that land on the save points (``StepTo`` /
    ``ConstantStepSize``): its error estimate is the difference to Euler, and its dense output
    between steps is linear."""

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]),
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.array([1 / 6 - 1, 1 / 3, 1 / 3, 1 / 6]),  # RK4 minus Euler
    )
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = staticmethod(
        _step_end_interpolation
    )

    def order(self, terms):
        del terms
        return 4


# ----------------------------------------------------------------------------- options

_CHOICES: dict[str, tuple[str, ...] | Callable[[], list[str]]] = {
    "injection": INJECTIONS,
    "solver": SOLVERS,
    "adjoint": ADJOINTS,
    "vector_field": lambda: vector_field_names(),
}
_MIN_INT = {"rk4_substeps": 1, "max_steps": 1, "update_every": 1, "hidden_dim": 0}
_POSITIVE = ("dt", "rtol", "atol", "sinusoidal_base")
OPTIONS = (*_CHOICES, *_MIN_INT, *_POSITIVE, "warm_start")


def check_options(**options: Any) -> None:
    """Raise a one-line ValueError for the first invalid FLOATER option (any of
    ``config.model.floater``'s fields, :data:`OPTIONS`), naming the field, the bad value and the
    valid choices. The one place FLOATER options are validated."""
    for name, value in options.items():
        field = f"config.model.floater.{name}"
        if name in _CHOICES:
            valid = _CHOICES[name]
            valid = list(valid() if callable(valid) else valid)
            if value not in valid:
                raise ValueError(f"unknown {field} {value!r}; valid choices: {valid}")
        elif name in _MIN_INT:
            is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if not (is_int and value >= _MIN_INT[name]):
                raise ValueError(f"{field} must be an integer >= {_MIN_INT[name]}, got {value!r}")
        elif name in _POSITIVE:
            is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (is_real and value > 0):
                raise ValueError(f"{field} must be a number > 0, got {value!r}")
        elif name == "warm_start":
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{field} must be True or False, got {value!r}")
        else:
            raise ValueError(
                f"unknown field config.model.floater.{name}; valid fields: {sorted(OPTIONS)}"
            )


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


def _rk4_scan(apply, theta: PyTree, p0: Array, ts: Array, dt: float, substeps: int) -> Array:
    """Classic RK4 over the grid ``ts``, ``substeps`` steps per interval: ``[len(ts), *p0.shape]``.

    A ``lax.scan`` over the intervals; each interval is one ``jax.checkpoint``, so reverse mode
    stores one state per position and recomputes the interval's stages once (the exact gradient
    of the discrete solve, as ``diffrax.RecursiveCheckpointAdjoint`` with a checkpoint per step).
    The sub-steps are a loop, not unrolled: as fast, and compiles in a fraction of the time."""
    h = dt / substeps

    @jax.checkpoint
    def interval(y, t):
        y = jax.lax.fori_loop(0, substeps, lambda j, y: rk4_step(apply, t + j * h, y, h, theta), y)
        return y, y

    _, ys = jax.lax.scan(interval, p0, ts[:-1])
    return jnp.concatenate([p0[None], ys])


def _diffeqsolve(apply, theta, p0, ts, dt, *, solver, rk4_substeps, rtol, atol, adjoint, max_steps):
    """One ``diffrax.diffeqsolve`` saving at ``ts``: RK4 (``BacksolveAdjoint``) or Tsit5 /
    Dopri5 with either adjoint; ``theta`` through ``args``."""
    diffrax_max_steps = max_steps
    if solver == "rk4":
        h = dt / rk4_substeps
        # Steps of dt / rk4_substeps that land exactly on every save point.
        grid = (ts[:-1, None] + h * jnp.arange(rk4_substeps, dtype=ts.dtype)[None]).reshape(-1)
        diffrax_solver = RK4()
        controller, dt0 = diffrax.StepTo(ts=jnp.append(grid, ts[-1])), None
        diffrax_max_steps = num_fixed_steps(len(ts), rk4_substeps)
        # The adjoint ODE runs backwards between save points (StepTo's increasing grid cannot).
        backward = {"stepsize_controller": diffrax.ConstantStepSize(), "dt0": -h}
    else:
        diffrax_solver = diffrax.Tsit5() if solver == "tsit5" else diffrax.Dopri5()
        controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), dt
        backward = {"stepsize_controller": controller}
    if adjoint == "recursive_checkpoint":
        adjoint_ = diffrax.RecursiveCheckpointAdjoint()
    else:
        adjoint_ = diffrax.BacksolveAdjoint(solver=diffrax_solver, **backward)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(apply),
        diffrax_solver,
        t0=ts[0],
        t1=ts[-1],
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
        sol.ys,
        sol.result == diffrax.RESULTS.max_steps_reached,
        f"FLOATER: the {solver} ODE solve over {len(ts)} positions needed more than "
        f"max_steps={max_steps} steps; raise {MAX_STEPS_OPTION} (or loosen "
        "config.model.floater.rtol / atol)",
    )
    return eqx.error_if(
        ys, sol.result != diffrax.RESULTS.successful, f"FLOATER: the {solver} ODE solve failed"
    )


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

    The whole batched state ``p0 [..., d]`` (all layers and q/k/v at once) is solved as one;
    ``theta`` is passed to the field, never closed over by a solver. ``solver='rk4'`` takes
    constant classic RK4 steps ``dt / rk4_substeps`` (the reference: ``dt / 5``) and needs
    ``(length - 1) * rk4_substeps <= max_steps``, checked before solving; ``'tsit5'`` /
    ``'dopri5'`` adapt their steps to ``rtol`` / ``atol`` (a PID controller) and fail at run time
    when they need more than ``max_steps``. Both errors name ``config.model.floater.max_steps``.
    ``length``, ``dt`` and the options are static (Python numbers): changing them retraces.
    """
    apply = _apply_fn(field)
    check_options(
        solver=solver,
        adjoint=adjoint,
        dt=dt,
        rk4_substeps=rk4_substeps,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    p0 = jnp.asarray(p0)
    if not jnp.issubdtype(p0.dtype, jnp.floating):
        raise TypeError(f"p0 must be floating point, got {p0.dtype}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if solver == "rk4" and num_fixed_steps(length, rk4_substeps) > max_steps:
        raise ValueError(
            f"FLOATER: solving {length} positions with solver='rk4' and "
            f"rk4_substeps={rk4_substeps} takes {num_fixed_steps(length, rk4_substeps)} steps, "
            f"more than max_steps={max_steps}; raise {MAX_STEPS_OPTION} to at least "
            f"{num_fixed_steps(length, rk4_substeps)} (or lower config.model.floater.rk4_substeps)"
        )
    if length == 1:
        return p0[None]
    shape = p0.shape
    rows = p0.reshape(-1, shape[-1])  # all initial values as rows of one state
    ts = jnp.arange(length, dtype=p0.dtype) * jnp.asarray(dt, p0.dtype)
    if solver == "rk4" and adjoint == "recursive_checkpoint":
        ys = _rk4_scan(apply, theta, rows, ts, dt, rk4_substeps)
    else:
        ys = _diffeqsolve(
            apply,
            theta,
            rows,
            ts,
            dt,
            solver=solver,
            rk4_substeps=rk4_substeps,
            rtol=rtol,
            atol=atol,
            adjoint=adjoint,
            max_steps=max_steps,
        )
    return ys.reshape(length, *shape)


# ----------------------------------------------------------------------------- Flax module


def initial_value_shape(injection: str, num_layers: int, dim: int) -> tuple[int, ...]:
    check_options(injection=injection)
    return {"input": (dim,), "every_layer": (num_layers, dim), "qkv_bias": (num_layers, 3, dim)}[
        injection
    ]


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
    check_options(injection=injection)
    length = positions.shape[0]
    if injection == "input":
        return position.PositionTerms(at_input=positions)
    if injection == "every_layer":
        return position.PositionTerms(per_layer=jnp.moveaxis(positions, 0, 1))
    return position.PositionTerms(  # qkv_bias
        at_input=position.sinusoidal_table(length, dim, base=sinusoidal_base),
        qkv_bias=jnp.moveaxis(positions, 0, 2),
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
    check_options(
        injection=injection,
        hidden_dim=hidden_dim,
        solver=solver,
        dt=dt,
        rk4_substeps=rk4_substeps,
        rtol=rtol,
        atol=atol,
        adjoint=adjoint,
        max_steps=max_steps,
        warm_start=warm_start,
        update_every=update_every,
        vector_field=vector_field,
        sinusoidal_base=sinusoidal_base,
    )
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
