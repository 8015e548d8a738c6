"""Optimisers and learning-rate schedules by name, as big_vision does it.

``config.train.optimizer`` is the name of any optax optimiser (``adam``, ``lion``, ``adafactor``,
``sgd``, ...) and ``config.train.optimizer_kwargs`` its keyword arguments; the learning rate
always comes from ``config.train.learning_rate`` (and ``config.train.schedule``). Five older names
stay as aliases with their old defaults:

    gd, sgd    -> optax.sgd           (gd: full-batch, i.e. ``data.batch_size = 0``)
    momentum   -> optax.sgd(momentum=0.9)
    adam       -> optax.adam
    adamw      -> optax.adamw(weight_decay=0.0)

``config.train.schedule`` is ``constant``, ``cosine``, ``warmup_cosine``, ``linear`` or the name
of any optax schedule (``exponential_decay``, ``polynomial_schedule``, ...), with
``config.train.schedule_kwargs``; the peak/initial value and the decay length are filled in
from the learning rate and ``num_steps`` unless given.

Unknown names raise ``ValueError`` listing the valid ones (the runner turns it into exit 2).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optax

ALIASES: dict[str, tuple[str, dict]] = {
    "gd": ("sgd", {}),
    "sgd": ("sgd", {}),
    "momentum": ("sgd", {"momentum": 0.9}),
    "adam": ("adam", {}),
    "adamw": ("adamw", {"weight_decay": 0.0}),
}

SCHEDULE_ALIASES: dict[str, str] = {
    "cosine": "cosine_decay_schedule",
    "warmup_cosine": "warmup_cosine_decay_schedule",
    "linear": "linear_schedule",
}

# optax functions that take a learning rate but are building blocks, not optimisers.
# (lbfgs needs the loss value at every update, which a plain gradient step does not pass.)
_NOT_OPTIMIZERS = frozenset({"lbfgs", "scale_by_learning_rate", "scale_by_rprop"})
_NOT_SCHEDULES = frozenset({"inject_hyperparams", "inject_stateful_hyperparams", "join_schedules"})


@functools.cache
def optimizer_names() -> tuple[str, ...]:
    """Every optax optimiser (a public function whose first argument is the learning rate)."""
    names = set(ALIASES)
    for name in dir(optax):
        fn = getattr(optax, name)
        if name.startswith("_") or name in _NOT_OPTIMIZERS or not inspect.isfunction(fn):
            continue
        params = list(inspect.signature(fn).parameters)
        if params and params[0] == "learning_rate":
            names.add(name)
    return tuple(sorted(names))


@functools.cache
def schedule_names() -> tuple[str, ...]:
    optax_schedules = (
        n
        for n in dir(optax.schedules)
        if inspect.isfunction(getattr(optax.schedules, n))
        and not n.startswith("_")
        and n not in _NOT_SCHEDULES
    )
    return tuple(sorted({"constant", *SCHEDULE_ALIASES, *optax_schedules}))


def build_optimizer(
    name: str,
    learning_rate: float,
    kwargs: Mapping[str, Any] | None = None,
    *,
    schedule: str = "constant",
    schedule_kwargs: Mapping[str, Any] | None = None,
    num_steps: int = 1,
    warmup_steps: int = 0,
    grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """The optax optimiser ``name(learning_rate=schedule, **kwargs)``, clipped if asked."""
    if name not in optimizer_names():
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {list(optimizer_names())}")
    base, defaults = ALIASES.get(name, (name, {}))
    factory = getattr(optax, base)
    kwargs = {**defaults, **dict(kwargs or {})}
    _check_kwargs(f"optimizer {name!r}", factory, kwargs, exclude=("learning_rate",))
    lr = build_schedule(schedule, learning_rate, schedule_kwargs, num_steps, warmup_steps)
    opt = factory(learning_rate=lr, **kwargs)
    if grad_clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip_norm), opt)
    return opt


def build_schedule(
    name: str,
    learning_rate: float,
    kwargs: Mapping[str, Any] | None,
    num_steps: int,
    warmup_steps: int = 0,
) -> float | optax.Schedule:
    if name not in schedule_names():
        raise ValueError(f"unknown schedule {name!r}; valid choices: {list(schedule_names())}")
    if name == "constant":
        return learning_rate
    factory = getattr(optax.schedules, SCHEDULE_ALIASES.get(name, name))
    filled = _schedule_defaults(factory, learning_rate, num_steps, warmup_steps)
    kwargs = {**filled, **dict(kwargs or {})}
    _check_kwargs(f"schedule {name!r}", factory, kwargs)
    return factory(**kwargs)


def _schedule_defaults(factory: Callable, lr: float, num_steps: int, warmup: int) -> dict:
    """Fill the schedule's value and length arguments that the train config already says."""
    params = inspect.signature(factory).parameters
    filled = {}
    for value_arg in ("peak_value", "init_value", "value"):
        if value_arg in params:
            filled[value_arg] = lr
            break
    if "peak_value" in params and "init_value" in params:
        filled["init_value"] = 0.0  # warm up from zero to the learning rate
    for length_arg in ("decay_steps", "transition_steps"):
        if length_arg in params:
            filled[length_arg] = (
                max(num_steps - warmup, 1) if "warmup_steps" in params else num_steps
            )
    if "warmup_steps" in params:
        filled["warmup_steps"] = warmup
        if "decay_steps" in params:  # optax counts the warm-up inside decay_steps
            filled["decay_steps"] = max(num_steps, warmup + 1)
    if "end_value" in params and factory is optax.schedules.linear_schedule:
        filled["end_value"] = 0.0
    return filled


def _check_kwargs(what: str, factory: Callable, kwargs: Mapping, exclude=()) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if p not in exclude]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"{what} takes no argument {unknown[0]!r}; valid arguments: {valid}")
