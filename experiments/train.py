"""Training: ``train_and_evaluate(config, workdir)``, which the CLI and notebooks call.

One jitted, donated step trains every seed of ``config.seeds`` at once (vmap over a leading
seed axis of params and optimiser state); the batch is shared by the seeds and sharded over a
1-D ``data`` mesh of every device. Gradients are taken w.r.t. the trainable leaves only and the
optimiser holds state for them only (see :mod:`attn_dynamics.freezing`).

A seed whose loss or update is not finite is *diverged*: its parameters stay at the last finite
values (so no checkpoint ever holds a NaN) and it is reported; the run stops once every seed has
diverged, with ``status: diverged``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn_dynamics import attention, data, diagnostics, freezing, kernels, models, position
from experiments import checkpointing, logs

PyTree = Any
INIT_STREAM, DROPOUT_STREAM = 0, 1  # fold_in ids: changing the frozen set never changes init

MODELS = ("theory", "encoder")
OPTIMIZERS = ("gd", "sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")
# Fields that may differ when an existing workdir is resumed (they do not change the run).
RESUMABLE_CHANGES = ("train.num_steps", "train.progress_bar", "train.stop_at_threshold")


class ConfigError(ValueError):
    """Bad user input, found before anything expensive runs; the CLI exits 2 with it."""


# --------------------------------------------------------------------------------------------
# Building blocks from the config


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
        embedding=m.embedding,
        pooling=m.pooling,
        position=m.position,
        position_options=position_options(config),
        max_len=max(m.max_len, info.get("max_len", 0), info.get("seq_len", 0)),
        dropout_rate=m.dropout_rate,
    )


def position_options(config) -> dict:
    return dict(config.model.floater) if config.model.position == "floater" else {}


def build_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
    lr: Any = t.learning_rate
    if t.schedule == "cosine":
        lr = optax.cosine_decay_schedule(t.learning_rate, t.num_steps)
    elif t.schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, t.learning_rate, t.warmup_steps, max(t.num_steps, t.warmup_steps + 1)
        )
    elif t.schedule == "linear":
        lr = optax.linear_schedule(t.learning_rate, 0.0, t.num_steps)
    opt = {
        "gd": lambda: optax.sgd(lr),  # full batch: data.batch_size = 0
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=t.momentum),
        "adam": lambda: optax.adam(lr, b1=t.b1, b2=t.b2),
        "adamw": lambda: optax.adamw(lr, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay),
    }[t.optimizer]()
    if t.grad_clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
    return opt


def trainable_spec(t: ml_collections.ConfigDict):
    layers = None if t.trainable_layers is None else tuple(int(i) for i in t.trainable_layers)
    return t.trainable, layers


def example_inputs(model, batch: dict) -> tuple:
    if isinstance(model, models.TheoryModel):
        return (batch["inputs"],)
    return (batch["inputs"], batch["valid"])


# --------------------------------------------------------------------------------------------
# Validation: every check that can fail on user input runs before any compilation


def _choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: {list(valid)}")


def validate(config: ml_collections.ConfigDict) -> None:
    m, t = config.model, config.train
    _choice("config.model.name", m.name, MODELS)
    _choice("config.model.kernel", m.kernel, kernels.names())
    _choice("config.model.implementation", m.implementation, attention.IMPLEMENTATIONS)
    if m.implementation == "fast" and kernels.lookup(m.kernel).softmax_form is None:
        fast = [n for n in kernels.names() if kernels.lookup(n).softmax_form is not None]
        raise ConfigError(
            f"config.model.implementation='fast' needs a softmax kernel, not {m.kernel!r}; "
            f"valid: {fast} (or implementation='explicit')"
        )
    if m.name == "encoder":
        _choice("config.model.position", m.position, position.names())
        _choice("config.model.pooling", m.pooling, ("mean", "cls"))
        _choice("config.model.embedding", m.embedding, ("tokens", "dense"))
    _choice("config.train.optimizer", t.optimizer, OPTIMIZERS)
    _choice("config.train.schedule", t.schedule, SCHEDULES)
    seeds = tuple(config.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"config.seeds must be distinct integers, got {seeds!r}")
    for name in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if t[name] <= 0:
            raise ConfigError(f"config.train.{name} must be positive, got {t[name]!r}")
    if t.init_from is not None and checkpointing.latest_step(pathlib.Path(t.init_from)) is None:
        raise ConfigError(
            f"config.train.init_from={t.init_from!r} holds no checkpoint (give a run's workdir "
            "or its checkpoints/ folder)"
        )
    if not (isinstance(t.learning_rate, float | int) and t.learning_rate > 0):
        raise ConfigError(f"config.train.learning_rate must be positive, got {t.learning_rate!r}")


def check_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writable, and if it holds a run, a run of this config (else nothing there is touched)."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"workdir {str(workdir)!r} is not writable ({e.strerror})") from None
    saved = workdir / "config.json"
    if saved.exists():
        before, now = _flatten(json.loads(saved.read_text())), _flatten(_config_dict(config))
        changed = sorted(
            k
            for k in set(before) | set(now)
            if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES
        )
        if changed:
            raise ConfigError(
                f"workdir {str(workdir)!r} holds a run of another config (differs in "
                f"{changed[:5]}); use a fresh --workdir or the same config to resume"
            )


def _config_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------------------------
# Losses and steps (pure; vmapped over the seed axis)


def make_loss(model, task: str) -> Callable:
    """``loss(params, batch, rng) -> (loss, aux)`` for the training objective."""
    if task == "regression":

        def loss(params, batch, rng, position_terms=None):
            preds = model.apply({"params": params}, batch["inputs"])
            return models.regression_loss(preds, batch["targets"]), {}

    else:

        def loss(params, batch, rng, position_terms=None):
            logits = model.apply(
                {"params": params},
                batch["inputs"],
                batch["valid"],
                train=True,
                rngs={"dropout": rng},
                position_terms=position_terms,
            )
            acc = jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32))
            return models.classification_loss(logits, batch["labels"]), {"accuracy": acc}

    return loss


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    threshold: float,
    *,
    use_cache: bool = False,
    refresh_cache: Callable | None = None,
):
    """``step(state, frozen, init_trainable, batch) -> (state, metrics)`` over all seeds.

    Each seed's outcome (initial, last and min loss, first step at ``threshold * initial``,
    divergence step) is tracked on the device inside ``state``, so the host needs to fetch
    nothing between logging steps and every step is still accounted for exactly.

    With FLOATER's ``update_every > 1`` the state holds cached position terms: a step with
    ``use_cache`` treats them as constants; a re-solving step differentiates through the solve
    and ``refresh_cache(params)`` re-solves from the updated parameters.
    """

    def one_seed(trainable, opt_state, outcome, rng, cache, frozen, init_trainable, step, batch):
        params_of = lambda t: freezing.merge(t, frozen)
        terms = cache if use_cache else None
        (loss, aux), grads = jax.value_and_grad(
            lambda t: loss_fn(params_of(t), batch, jax.random.fold_in(rng, step), terms),
            has_aux=True,
        )(trainable)
        updates, new_opt_state = tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        finite = jnp.isfinite(loss) & _all_finite(new_trainable)
        ok = outcome["alive"] & finite
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        metrics = {
            "loss": loss,
            **aux,
            "grad_norm": diagnostics.global_norm(grads),
            "update_norm": diagnostics.global_norm(updates),
            "param_norm": diagnostics.global_norm(trainable),
            "dist_from_init": diagnostics.global_norm(
                jax.tree.map(jnp.subtract, trainable, init_trainable)
            ),
            **_prefixed("param_norm", diagnostics.norms_by_matrix(params_of(trainable))),
            **_prefixed("grad_norm", diagnostics.norms_by_matrix(grads)),
            **_prefixed("update_norm", diagnostics.norms_by_matrix(updates)),
        }
        outcome = track_outcome(outcome, step, loss, finite, threshold)
        new_trainable = keep(new_trainable, trainable)
        if cache is not None and refresh_cache is not None:
            cache = refresh_cache(params_of(new_trainable))
        return new_trainable, keep(new_opt_state, opt_state), outcome, cache, metrics

    seeds = jax.vmap(one_seed, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None))

    def step(state, frozen, init_trainable, batch):
        trainable, opt_state, outcome, cache, metrics = seeds(
            state["trainable"],
            state["opt_state"],
            state["outcome"],
            state["rng"],
            state.get("position_cache"),
            frozen,
            init_trainable,
            state["step"],
            batch,
        )
        new_state = dict(
            state, trainable=trainable, opt_state=opt_state, outcome=outcome, step=state["step"] + 1
        )
        if cache is not None:
            new_state["position_cache"] = cache
        return new_state, dict(metrics, alive_after=outcome["alive"])

    return step


def initial_outcome(num_seeds: int) -> dict:
    # Distinct arrays per field: the state is donated, and one buffer cannot be donated twice.
    nan = lambda: jnp.full((num_seeds,), jnp.nan, jnp.float32)
    never = lambda: jnp.full((num_seeds,), -1, jnp.int32)
    return {
        "alive": jnp.ones((num_seeds,), bool),
        "diverged_at": never(),
        "threshold_step": never(),
        "initial_loss": nan(),
        "last_loss": nan(),
        "min_loss": nan(),
    }


def track_outcome(o: dict, step, loss, finite, threshold: float) -> dict:
    """One seed's outcome after the loss of ``step`` (a no-op once the seed has diverged)."""
    live = o["alive"] & finite
    initial = jnp.where(jnp.isnan(o["initial_loss"]) & live, loss, o["initial_loss"])
    reached = live & (o["threshold_step"] < 0) & (loss <= threshold * initial)
    return {
        "alive": live,
        "diverged_at": jnp.where(o["alive"] & ~finite, step, o["diverged_at"]),
        "threshold_step": jnp.where(reached, step, o["threshold_step"]),
        "initial_loss": initial,
        "last_loss": jnp.where(live, loss, o["last_loss"]),
        "min_loss": jnp.where(live, jnp.fmin(loss, o["min_loss"]), o["min_loss"]),
    }


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in d.items()}


def make_theory_diagnostics(model) -> Callable:
    """Per-seed theory quantities on a batch: sigma_min(Phi) and singular-value ratios."""

    def one_seed(params, x):
        weights = model.apply({"params": params}, x, method=models.TheoryModel.attention_weights)
        return diagnostics.theory_quantities(params, weights, x)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None)))


def make_eval_step(model, task: str) -> Callable:
    """Weighted sums ``(loss * w, correct * w, w)`` over a batch for every seed."""

    def one_seed(params, batch, terms):
        if task == "regression":
            preds = model.apply({"params": params}, batch["inputs"])
            per_example = 0.5 * jnp.sum(
                jnp.square(preds - batch["targets"]).reshape(preds.shape[0], -1), axis=-1
            )
            correct = jnp.zeros_like(per_example)
        else:
            logits = model.apply(
                {"params": params}, batch["inputs"], batch["valid"], position_terms=terms
            ).astype(jnp.float32)
            log_probs = jax.nn.log_softmax(logits)
            per_example = -jnp.take_along_axis(log_probs, batch["labels"][:, None], -1)[:, 0]
            correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
        w = batch.get("weight", jnp.ones_like(per_example))
        return jnp.sum(per_example * w), jnp.sum(correct * w), jnp.sum(w)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0)))


# --------------------------------------------------------------------------------------------
# The run


def seed_keys(seeds, stream: int) -> jax.Array:
    return jnp.stack([jax.random.fold_in(jax.random.key(s), stream) for s in seeds])


def init_params(model, seeds, example: tuple) -> PyTree:
    """``vmap(init)`` over the seeds: a stack with a leading seed axis."""
    init = lambda k: model.init(k, *example)["params"]
    return jax.jit(jax.vmap(init))(seed_keys(seeds, INIT_STREAM))  # jitted: eager init is slow


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh of every device. Auto axis type: the compiler propagates shardings
    (recent jax defaults to Explicit, which would make every gather/SVD spell out its sharding)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Train ``config`` in ``workdir`` (resuming what is there) and return the summary.

    SIGINT/SIGTERM from the first moment on request a checkpoint and a clean stop
    (``status: interrupted``) instead of killing the run.
    """
    stop = _StopFlag()
    with stop.installed():
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config, workdir, stop: _StopFlag) -> dict:
    workdir = pathlib.Path(workdir)
    t_start = time.time()
    validate(config)
    if config.train.deterministic_gpu:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true"
        ).strip()
    mesh = make_mesh()
    try:
        ds = data.get_dataset(config.data, mesh=mesh)
    except data.DatasetNotPrepared:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    info = ds.info
    seeds = tuple(config.seeds)
    model = build_model(config, info)
    first_batch = ds.train_batch(0)
    example = example_inputs(model, first_batch)
    spec, layers = trainable_spec(config.train)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *example)["params"])
    try:
        mask = freezing.trainable_mask(abstract, spec, layers)
        if not jax.tree_util.tree_leaves(freezing.split(abstract, mask)[0]):
            raise ValueError(f"trainable spec {spec!r} leaves no parameter to train")
    except ValueError as e:
        raise ConfigError(f"config.train.trainable: {e}") from None
    check_workdir(workdir, config)  # last check: nothing is written before every check passed

    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    logs.setup_logging(workdir)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    logging.info("jax %s on %s", jax.__version__, jax.devices())

    tx = build_optimizer(config.train)
    params = init_params(model, seeds, example)
    trainable0, frozen = freezing.split(params, mask)
    replicated = NamedSharding(mesh, P())
    state = {
        "step": jnp.zeros((), jnp.int32),
        "trainable": trainable0,
        "opt_state": jax.vmap(tx.init)(trainable0),
        "outcome": initial_outcome(len(seeds)),
        "rng": seed_keys(seeds, DROPOUT_STREAM),
    }
    if config.train.init_from is not None:
        params = warm_start(params, config.train.init_from)
        trainable0, frozen = freezing.split(params, mask)
        state["trainable"], state["opt_state"] = trainable0, jax.vmap(tx.init)(trainable0)
    update_every = solve_every(config)
    refresh = None
    if update_every > 1:
        refresh = position_refresher(model, info, first_batch)
        state["position_cache"] = jax.vmap(refresh)(params)
    state, frozen, trainable0 = jax.device_put((state, frozen, trainable0), replicated)
    trainable0 = jax.tree.map(jnp.copy, trainable0)  # not aliased with the donated state

    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    restored = ckpt.restore_latest(state, frozen, mask)
    if restored is not None:
        state = jax.device_put(restored, replicated)
        logging.info("resumed from step %d", int(state["step"]))
    start = int(state["step"])
    writer = logs.MetricWriter(workdir, seeds, truncate_after=start)

    loss_fn = make_loss(model, info["task"])
    threshold = config.train.loss_threshold
    t_compile = time.time()
    batch = first_batch if start == 0 else ds.train_batch(start)
    compile_step = lambda fn: (
        jax.jit(fn, donate_argnums=0).lower(state, frozen, trainable0, batch).compile()
    )
    solving_step = compile_step(make_train_step(loss_fn, tx, threshold, refresh_cache=refresh))
    cached_step = None
    if update_every > 1:
        cached_step = compile_step(make_train_step(loss_fn, tx, threshold, use_cache=True))
    compile_seconds = time.time() - t_compile
    theory_diag = make_theory_diagnostics(model) if info["task"] == "regression" else None
    evaluate = make_evaluator(model, info["task"], ds)

    num_steps, log_every = config.train.num_steps, config.train.log_every
    progress = logs.progress_bar(config.train.progress_bar, start, num_steps)
    pending = None  # metrics of the last logged step, fetched one logged step late

    def flush(pending):
        if pending is None:
            return
        at, metrics, diag_params, diag_inputs = pending
        host = jax.device_get(metrics)
        if diag_params is not None:
            host.update(jax.device_get(theory_diag(diag_params, diag_inputs)))
        alive = np.asarray(host.pop("alive"))
        host.pop("alive_after")
        writer.write(at, host, alive=alive)
        live = np.asarray(host["loss"])[alive]
        progress.set_postfix(loss=f"{np.mean(live) if live.size else float('nan'):.3e}")

    def should_stop() -> bool:
        if config.train.stop_at_threshold:
            o = jax.device_get(state["outcome"])
            return bool(np.all((o["threshold_step"] >= 0) | ~o["alive"]))
        return False

    previous_alive = None  # the step before's `alive`, read one step late: no stall
    with ckpt:
        for step in range(start, num_steps):
            if previous_alive is not None and not np.asarray(previous_alive).any():
                break  # every seed has diverged
            if step != start:
                batch = ds.train_batch(step)
            logged = step % log_every == 0 or step == num_steps - 1
            diag = (None, None)
            if logged and theory_diag is not None:
                # Parameters *at* this step (before its update), copied out of the donated state.
                diag = (
                    jax.tree.map(jnp.copy, freezing.merge(state["trainable"], frozen)),
                    batch["inputs"],
                )
            alive_before = jnp.copy(state["outcome"]["alive"]) if logged else None
            compiled = solving_step if step % update_every == 0 else cached_step
            state, metrics = compiled(state, frozen, trainable0, batch)
            previous_alive = metrics["alive_after"]
            progress.update(1)
            if logged:
                flush(pending)
                pending = (step, dict(metrics, alive=alive_before), *diag)
                if stop.requested or should_stop():
                    break
            eval_every = config.train.eval_every
            if eval_every > 0 and (step + 1) % eval_every == 0 and step + 1 < num_steps:
                writer.write_eval(step + 1, evaluate(freezing.merge(state["trainable"], frozen)))
            if (step + 1) % config.train.checkpoint_every == 0:
                ckpt.save(step + 1, state, frozen)
        flush(pending)
        final_step = int(state["step"])
        ckpt.save(final_step, state, frozen)
    progress.close()

    outcome = jax.device_get(state["outcome"])
    status = "done"
    if not outcome["alive"].any():
        status = "diverged"
    elif stop.requested:
        status = "interrupted"
    params = freezing.merge(state["trainable"], frozen)
    evaluation = evaluate(params) if status != "interrupted" else {}
    if evaluation:
        writer.write_eval(final_step, evaluation)
    if status == "done" and not outcome["alive"].all():
        status = "diverged"  # some seeds diverged, the others finished
    summary = logs.summarize(
        outcome,
        seeds,
        status=status,
        final_step=final_step,
        loss_threshold=config.train.loss_threshold,
        evaluation=evaluation,
        max_frozen_change=max_frozen_change(frozen, init_params(model, seeds, example), mask),
        wall_seconds=time.time() - t_start,
        compile_seconds=compile_seconds,
        environment=logs.environment(),
    )
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    writer.close()
    logs.plot_curves(workdir)
    if status == "diverged":
        print(f"run diverged; see {workdir / 'summary.json'}", file=sys.stderr)
    return summary


def solve_every(config) -> int:
    """FLOATER's ``update_every`` (1: re-solve every step); other encodings solve nothing."""
    m = config.model
    if m.name == "encoder" and m.position == "floater":
        return max(1, int(m.floater.update_every))
    return 1


def position_refresher(model, info: dict, batch: dict) -> Callable:
    """``params -> position terms`` over the training length, solved once, no gradient."""
    from attn_dynamics import floater

    length = batch["inputs"].shape[1] + (model.pooling == "cls")
    return lambda params: floater.cached_terms(model, {"params": params}, length)


def warm_start(params: PyTree, source: str) -> PyTree:
    """Copy every parameter ``source``'s checkpoint shares with ``params`` (same path, shape),
    keeping the rest: fine-tuning a FLOATER model from a non-FLOATER one, the paper's recipe."""
    from attn_dynamics import floater

    saved = checkpointing.load_params(pathlib.Path(source))
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


def make_evaluator(model, task: str, ds) -> Callable[[PyTree], dict]:
    """``params -> {split: {'loss': [per seed], 'accuracy': [...]}}``, compiled once per run."""
    eval_step = make_eval_step(model, task)
    terms_of = None
    if isinstance(model, models.EncoderClassifier):
        solve = lambda p, length: model.apply(
            {"params": p}, length, method=models.EncoderClassifier.position_terms
        )
        terms_of = jax.jit(jax.vmap(solve, in_axes=(0, None)), static_argnums=1)

    def evaluate(params) -> dict:
        out = {}
        for split in ds.eval_splits:
            totals, terms = None, None
            for batch in ds.eval_batches(split):
                if terms is None and terms_of is not None:
                    # Position terms once per split (one FLOATER solve, not one per batch).
                    length = batch["inputs"].shape[1] + (model.pooling == "cls")
                    terms = terms_of(params, length)
                sums = np.asarray(jax.device_get(eval_step(params, batch, terms)))
                totals = sums if totals is None else totals + sums
            if totals is None:
                continue
            loss, correct, weight = totals
            out[split] = {"loss": (loss / weight).tolist()}
            if task != "regression":
                out[split]["accuracy"] = (correct / weight).tolist()
        return out

    return evaluate


def max_frozen_change(frozen, initial_params, mask) -> float:
    """Largest |change| of any frozen parameter since initialisation (must be exactly 0.0)."""
    _, frozen0 = freezing.split(initial_params, mask)
    diffs = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), frozen, frozen0)
    leaves = jax.tree_util.tree_leaves(diffs)
    return float(max((float(x) for x in leaves), default=0.0))


class _StopFlag:
    """SIGINT/SIGTERM request a checkpoint and a clean exit instead of killing the run."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        logging.warning("signal %d: saving a checkpoint and stopping", signum)

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners): no handlers
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
