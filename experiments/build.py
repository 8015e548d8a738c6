"""Building blocks of a run from its config: model, optimiser, trainable spec, parameters.

Pure functions of the config (and the data set's ``info``), shared by the runner, the
landscape and the notebooks.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from attn_dynamics import models, streams
from experiments import checkpointing, hooks, optim
from experiments.distributed import gather
from experiments.validation import ConfigError

PyTree = Any
INIT_STREAM, DROPOUT_STREAM = streams.INIT, streams.DROPOUT


def build_model(config: ml_collections.ConfigDict, info: dict):
    m = config.model
    kernel_options = {} if m.sigma2 is None else {"sigma2": m.sigma2}
    if m.name == "theory":
        return models.TheoryModel(
            dim=info["dim"],
            out_dim=info["out_dim"],
            num_heads=m.num_heads,
            kernel=m.kernel,
            kernel_options=kernel_options,
            output_projection=m.output_projection,
            qk_init_scale=m.qk_init_scale,
            v_init_scale=m.v_init_scale,
            implementation=m.implementation,
            dtype=compute_dtype(m),
            shared_init=m.get("shared_init", ""),  # runs written before the field existed
            shared_init_seed=m.get("shared_init_seed", 0),
        )
    return models.EncoderClassifier(
        num_classes=info["num_classes"],
        vocab_size=info.get("vocab_size", m.vocab_size),
        num_layers=m.num_layers,
        embed_dim=m.embed_dim,
        mlp_dim=m.mlp_dim,
        num_heads=m.num_heads,
        kernel=m.kernel,
        kernel_options=kernel_options,
        implementation=m.implementation,
        dtype=compute_dtype(m),
        embedding=m.embedding,
        pooling=m.pooling,
        position=m.position,
        position_options=position_options(config),
        max_len=max(m.max_len, info.get("max_len", 0), info.get("seq_len", 0)),
        dropout_rate=m.dropout_rate,
    )


def compute_dtype(m: ml_collections.ConfigDict):
    """``config.model.dtype`` as a jnp dtype; float32 is ``None`` (the modules' default), so a
    float32 model is the very same program as before the option existed."""
    return None if m.dtype == "float32" else jnp.dtype(m.dtype)


def position_options(config) -> dict:
    return dict(config.model.floater) if config.model.position == "floater" else {}


def build_optimizer(t: ml_collections.ConfigDict):
    """The optax optimiser ``t.optimizer`` (any name, see :mod:`experiments.optim`); with
    ``stable_step_fraction``, followed by a per-seed step scale (:func:`set_step_scale`)."""
    tx = optim.build_optimizer(
        t.optimizer,
        t.learning_rate,
        t.optimizer_kwargs.to_dict(),
        schedule=t.schedule,
        schedule_kwargs=t.schedule_kwargs.to_dict(),
        num_steps=t.num_steps,
        warmup_steps=t.warmup_steps,
        grad_clip_norm=t.grad_clip_norm,
    )
    if t.get("stable_step_fraction", 0.0) > 0:
        # in the state, so that vmap gives every seed its own and checkpoints keep it
        tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=1.0))
    return tx


def step_scale(opt_state) -> jax.Array:
    """The per-seed step scale of a :func:`build_optimizer` state with one (``[seeds]``)."""
    return opt_state[-1].hyperparams["step_size"]


def set_step_scale(opt_state, scale: jax.Array):
    """``opt_state`` with each seed's updates multiplied by ``scale[seed]``."""
    scaled = opt_state[-1]._replace(hyperparams={"step_size": scale})
    return (*opt_state[:-1], scaled)


def stable_step_scale(sharpness: jax.Array, fraction: float, learning_rate: float) -> jax.Array:
    """The scale that makes a seed's learning rate ``fraction x 2 / sharpness``; 1 (the
    configured rate) where the sharpness is not a positive finite number."""
    usable = jnp.isfinite(sharpness) & (sharpness > 0)
    safe = jnp.where(usable, sharpness, 1.0)
    return jnp.where(usable, fraction * 2.0 / (safe * learning_rate), 1.0).astype(jnp.float32)


def with_stable_step(state, frozen, loss_fn, batch, fraction: float, learning_rate: float):
    """``state`` with each seed's learning rate ``fraction x 2 / its sharpness`` on ``batch``
    (at initialisation: the same fraction of every seed's stability limit)."""
    top = hooks.per_seed_sharpness(loss_fn, num_iters=50, largest="algebraic")
    sharpness = top(state.trainable, frozen, batch)
    scale = stable_step_scale(sharpness, fraction, learning_rate)
    logging.info(
        "stable_step_fraction=%g: sharpness at init %s -> learning rates %s",
        fraction,
        [f"{v:.4g}" for v in gather(sharpness)],
        [f"{v:.4g}" for v in gather(scale) * learning_rate],
    )
    return state.replace(opt_state=set_step_scale(state.opt_state, scale))


def learning_rates(state, config) -> list[float] | None:
    """Each seed's learning rate where ``stable_step_fraction`` set them, else None."""
    if config.train.stable_step_fraction <= 0:
        return None
    return (gather(step_scale(state.opt_state)) * config.train.learning_rate).tolist()


def trainable_spec(t: ml_collections.ConfigDict):
    layers = None if t.trainable_layers is None else tuple(int(i) for i in t.trainable_layers)
    return t.trainable, layers


def example_inputs(model, batch: dict) -> tuple:
    if isinstance(model, models.TheoryModel):
        return (batch["inputs"],)
    return (batch["inputs"], batch["valid"])


def seed_keys(seeds, stream: int) -> jax.Array:
    return jnp.stack([jax.random.fold_in(jax.random.key(s), stream) for s in seeds])


def init_params(model, seeds, example: tuple) -> PyTree:
    """``vmap(init)`` over the seeds: a stack with a leading seed axis."""
    init = lambda k: model.init(k, *example)["params"]
    return jax.jit(jax.vmap(init))(seed_keys(seeds, INIT_STREAM))  # jitted: eager init is slow


def solve_every(config) -> int:
    """FLOATER's ``update_every`` (1: re-solve every step); other encodings solve nothing."""
    m = config.model
    if m.name == "encoder" and m.position == "floater":
        return max(1, int(m.floater.update_every))
    return 1


def position_refresher(model, batch: dict) -> Callable:
    """``params -> position terms`` over the training length, solved once, no gradient."""
    from attn_dynamics import floater

    length = batch["inputs"].shape[1] + (model.pooling == "cls")
    return lambda params: floater.cached_terms(model, {"params": params}, length)


def warm_start(params: PyTree, source: str) -> PyTree:
    """Copy every parameter ``source``'s checkpoint shares with ``params`` (same path, shape),
    keeping the rest: fine-tuning a FLOATER model from a non-FLOATER one, the paper's recipe."""
    from attn_dynamics import floater

    try:
        saved = checkpointing.load_params(pathlib.Path(source))
    except FileNotFoundError as e:
        raise ConfigError(f"config.train.init_from={source!r}: {e}") from None
    seeds = jax.tree_util.tree_leaves(params)[0].shape[0]
    saved_seeds = jax.tree_util.tree_leaves(saved)[0].shape[0]
    if saved_seeds not in (1, seeds):
        raise ConfigError(
            f"config.train.init_from={source!r} holds {saved_seeds} seeds; this run trains "
            f"{seeds} (use 1 or {seeds})"
        )
    if saved_seeds != seeds:
        saved = jax.tree.map(lambda x: jnp.repeat(x, seeds, axis=0), saved)
    return floater.warm_start_params(params, saved)
