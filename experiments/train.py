"""Training: ``train_and_evaluate(config, workdir)``, which the CLI, sweeps and notebooks call.

A run is three parts:

* :func:`prepare`: every check that can fail on user input, then the model, data, optimiser and
  mesh; nothing is written before it returns.
* :func:`start`: the workdir lock, the initial (or restored) :class:`~experiments.state.TrainState`
  sharded over the ``('seeds', 'data')`` mesh, the writers.
* :func:`loop`: one jitted, donated step per iteration (every seed of ``config.seeds`` at once,
  vmapped), then the hooks that are due (:mod:`experiments.hooks`): log, evaluate, checkpoint,
  stop, and the caller's own.

Longer than this package's ~400-line mark because the three parts share two records
(:class:`Setup`, :class:`Run`) and their ordering rules (rows before checkpoints, the lock
before any write); the pieces without that coupling live in ``build``, ``steps`` and ``hooks``.

A seed whose loss or update is not finite, or whose loss exceeds ``train.diverge_above`` x its
initial loss, is *diverged*: its parameters stay at their last values before (so no checkpoint
ever holds a NaN) and it is reported; the run stops once every seed has diverged, with
``status: diverged``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attn_dynamics import data, freezing, models
from experiments import checkpointing, hooks, host, logs, sharding, steps, validation
from experiments.build import (  # noqa: F401 -- the runner's public building blocks
    DROPOUT_STREAM,
    INIT_STREAM,
    build_model,
    build_optimizer,
    example_inputs,
    init_params,
    learning_rates,
    position_options,
    position_refresher,
    seed_keys,
    solve_every,
    trainable_spec,
    warm_start,
    with_stable_step,
)
from experiments.distributed import gather
from experiments.hooks import StopOnSignal
from experiments.state import TrainState, initial_outcome
from experiments.steps import make_loss, make_train_step  # noqa: F401 -- public API
from experiments.validation import ConfigError  # noqa: F401 -- bad input: the CLI exits 2
from experiments.workdir import (
    RESUMABLE_CHANGES,  # noqa: F401 -- public API
    WorkdirError,
    check_same_config,
    ensure_writable,
    locked,
    read_summary,
)

PyTree = Any

DETERMINISTIC_GPU_FLAG = validation.DETERMINISTIC_GPU_FLAG


class RunFailed(RuntimeError):
    """The run could not go on (a checkpoint or a file could not be written); one line."""


# --------------------------------------------------------------------------------------------
# Validation: every check that can fail on user input runs before any compilation


def validate(config: ml_collections.ConfigDict) -> None:
    """:func:`experiments.validation.validate` (no JAX needed) plus what needs the libraries."""
    validation.validate(config)
    t = config.train
    if t.deterministic_gpu and DETERMINISTIC_GPU_FLAG not in os.environ.get("XLA_FLAGS", ""):
        raise ConfigError(
            "config.train.deterministic_gpu needs XLA_FLAGS to hold "
            f"{DETERMINISTIC_GPU_FLAG} before JAX starts (experiments.run sets it; in a "
            "notebook set os.environ['XLA_FLAGS'] before importing jax)"
        )
    try:
        build_optimizer(t)
    except ValueError as e:
        raise ConfigError(f"config.train: {e}") from None


def warn_if_cpu_devices_missed(per_core: int) -> None:
    """The config asked for several CPU devices but JAX's CPU backend had already started
    with one (a notebook, a script that computed before training): say how to get them."""
    if per_core and jax.default_backend() == "cpu" and jax.local_device_count() == 1:
        count = per_core * host.cpu_count()
        if count > 1:
            logging.warning(
                "config.mesh.cpu_devices_per_core=%d: JAX's CPU backend started before it could "
                "apply, so this run has 1 CPU device; set XLA_FLAGS=%s=%d before importing jax "
                "(experiments.run does)",
                per_core,
                host.COUNT_FLAG,
                count,
            )


# --------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`prepare` built from a valid config; nothing written yet."""

    config: ml_collections.ConfigDict
    ds: Any
    model: Any
    mask: PyTree
    tx: Any
    mesh: jax.sharding.Mesh
    example: tuple
    first_batch: dict


@dataclasses.dataclass
class Run:
    """Everything a hook may look at; ``done`` is the number of steps done."""

    setup: Setup
    workdir: pathlib.Path
    state: TrainState
    frozen: PyTree
    frozen_at_start: PyTree  # a host copy: the frozen leaves must end exactly as they began
    trainable0: PyTree
    baseline_loss: float  # the best constant predictor's loss on the first batch
    baseline: np.ndarray  # per seed: the loss level of the baseline-relative criterion
    ckpt: checkpointing.Checkpointer
    writer: Any
    log: hooks.MetricLog
    evaluate: Callable[[PyTree], dict]
    done: int
    num_steps: int
    stop_reason: str | None = None

    def params(self) -> PyTree:
        return freezing.merge(self.state.trainable, self.frozen)


def prepare(config: ml_collections.ConfigDict) -> Setup:
    """Validate ``config`` and build what the run needs; raise ConfigError on bad input."""
    validate(config)
    seeds = tuple(config.seeds)
    try:
        probe = data.get_dataset(config.data, mesh=None)  # batch sizes decide the mesh
        shape = sharding.mesh_shape(
            jax.device_count(),
            len(seeds),
            (probe.train_batch_size, probe.eval_batch_size),
            config.mesh.seeds,
            config.mesh.data,
        )
        _close(probe)
        mesh = sharding.make_mesh(shape)
        ds = data.get_dataset(config.data, mesh=mesh)
    except data.DatasetNotPrepared:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = build_model(config, ds.info)
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
    return Setup(config, ds, model, mask, build_optimizer(config.train), mesh, example, first_batch)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    hooks: Sequence[hooks.Hook] = (),
    metrics: Sequence[hooks.Metric] = (),
) -> dict:
    """Train ``config`` in ``workdir`` (resuming what is there) and return the summary.

    ``hooks`` run after the steps they are due (after the built-in evaluation and checkpoint);
    ``metrics`` add figures to the logged rows. SIGINT/SIGTERM request the due hooks, a
    checkpoint and a clean stop (``status: interrupted``) instead of killing the run.
    """
    stop = StopOnSignal()
    path = pathlib.Path(workdir)
    with stop.installed(), contextlib.ExitStack() as owned:
        setup = prepare(config)
        owned.callback(_close, setup.ds)
        if jax.process_index() == 0:  # the others share process 0's files
            try:
                ensure_writable(path)
                owned.enter_context(locked(path))
                reshaped = functools.partial(schedule_changes, config.train)
                check_same_config(path, _config_dict(config), schedule_changes=reshaped)
            except WorkdirError as e:
                raise ConfigError(str(e)) from None
        finished = _finished_summary(path, config)
        if finished is not None:
            logging.info("%s already finished (%s); nothing to do", path, finished["status"])
            return finished
        return _run(setup, path, stop, tuple(hooks), tuple(metrics))


def _finished_summary(path: pathlib.Path, config) -> dict | None:
    """The summary of a run of this config that already finished, which a rerun leaves as is."""
    summary = read_summary(path)
    if summary is None or summary.get("status") not in ("done", "diverged"):
        return None
    if summary.get("num_steps") != config.train.num_steps:
        return None  # asked for more (or fewer) steps: resume
    if checkpointing.latest_step(path) != summary.get("final_step"):
        return None
    return summary


def _run(setup: Setup, path: pathlib.Path, stop, user_hooks, user_metrics) -> dict:
    config, model, ds = setup.config, setup.model, setup.ds
    t_start = time.time()
    writes = jax.process_index() == 0
    if writes:
        # The config, and what made the run (ignored when it resumes: workdir.NOT_THE_RUN).
        recorded = {**_config_dict(config), "provenance": logs.provenance()}
        (path / "config.json").write_text(json.dumps(recorded, indent=2) + "\n")
        logs.setup_logging(path)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    logging.info("jax %s on %s; mesh %s", jax.__version__, jax.devices(), dict(setup.mesh.shape))
    warn_if_cpu_devices_missed(config.mesh.get("cpu_devices_per_core", 0))

    seeds = tuple(config.seeds)
    state, frozen, trainable0 = initial_state(setup)
    ckpt = checkpointing.Checkpointer(path / "checkpoints", config.train.keep_checkpoints)
    restored = ckpt.restore_latest(state, frozen, setup.mask)
    if restored is not None:
        state = jax.device_put(restored, sharding.seed_sharded(setup.mesh, restored, len(seeds)))
        logging.info("resumed from step %d", int(state.step))
    elif config.train.stable_step_fraction > 0:  # a resumed state carries its rates
        loss_fn = make_loss(model, ds.info["task"])
        t = config.train
        state = with_stable_step(
            state, frozen, loss_fn, setup.first_batch, t.stable_step_fraction, t.learning_rate
        )
    start = int(state.step)
    writer = logs.NullWriter()
    if writes:
        writer = logs.MetricWriter(path, seeds, start=start, config_json=_config_dict(config))
    metrics = (*builtin_metrics(setup), *user_metrics)
    log_every = config.train.log_every
    num_steps = config.train.num_steps
    _check_rows(writer, start, num_steps, log_every, metrics)

    task = ds.info["task"]
    baseline_loss = steps.baseline_loss(gather(setup.first_batch), task)
    baseline = np.full((len(seeds),), config.train.baseline_threshold * baseline_loss, np.float32)
    progress = logs.progress_bar(config.train.progress_bar and writes, start, num_steps)
    run = Run(
        setup=setup,
        workdir=path,
        state=state,
        frozen=frozen,
        frozen_at_start=gather(frozen),
        trainable0=trainable0,
        baseline_loss=baseline_loss,
        baseline=baseline,
        ckpt=ckpt,
        writer=writer,
        log=hooks.MetricLog(writer, metrics, log_every, progress),
        evaluate=steps.make_evaluator(model, task, ds),
        done=start,
        num_steps=num_steps,
    )
    t_compile = time.time()
    step_fns = compile_steps(run, config)
    compile_seconds = time.time() - t_compile
    all_hooks = (*builtin_hooks(config), *user_hooks)
    try:
        with ckpt:
            loop(run, step_fns, all_hooks, stop, progress)
            run.log.flush(durable=True)
            ckpt.save(int(run.state.step), run.state, run.frozen)
    except (checkpointing.CheckpointError, OSError) as e:
        _abandon(run.writer)
        raise RunFailed(str(e) if isinstance(e, checkpointing.CheckpointError) else
                        f"could not write into {path} ({e.strerror or e}); the last good "
                        "checkpoint is kept") from None  # fmt: skip
    finally:
        progress.close()
    return finish(run, stop.requested, compile_seconds, time.time() - t_start, writes)


def initial_state(setup: Setup) -> tuple[TrainState, PyTree, PyTree]:
    """Fresh ``(state, frozen, trainable0)``, laid out over the mesh: seeds over ``seeds``.

    Built by one jitted function with output shardings, from host parameters: every process
    computes its own shards, nothing is sent between hosts (and no NaN placeholder is compared
    across processes, as a ``device_put`` of global values would)."""
    config, model = setup.config, setup.model
    seeds = tuple(config.seeds)
    params = init_params(model, seeds, setup.example)
    if config.train.init_from is not None:
        params = warm_start(params, config.train.init_from)
    refresh = None
    if solve_every(config) > 1:
        refresh = position_refresher(model, setup.first_batch)

    def build(params):
        trainable, frozen = freezing.split(params, setup.mask)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            trainable=trainable,
            opt_state=jax.vmap(setup.tx.init)(trainable),
            outcome=initial_outcome(len(seeds)),
            rng=seed_keys(seeds, DROPOUT_STREAM),
            position_cache=None if refresh is None else jax.vmap(refresh)(params),
        )
        return state, frozen

    host_params = jax.device_get(params)
    layout = sharding.seed_sharded(setup.mesh, jax.eval_shape(build, host_params), len(seeds))
    state, frozen = jax.jit(build, out_shardings=layout)(host_params)
    trainable0 = jax.tree.map(jnp.copy, state.trainable)  # not aliased with the donated state
    return state, frozen, trainable0


def builtin_metrics(setup: Setup) -> tuple[hooks.Metric, ...]:
    config, model = setup.config, setup.model
    out = []
    if isinstance(model, models.TheoryModel):
        theory = steps.make_theory_diagnostics(model)
        out.append(hooks.Metric("theory", config.train.log_every, theory))
    if config.train.sharpness_every > 0:
        loss_fn = make_loss(model, setup.ds.info["task"])
        out.append(hooks.sharpness_metric(loss_fn, config.train.sharpness_every))
    return tuple(out)


def builtin_hooks(config) -> tuple[hooks.Hook, ...]:
    t = config.train
    out: list[hooks.Hook] = [hooks.Evaluate(t.eval_every), hooks.SaveCheckpoint(t.checkpoint_every)]
    if t.stop_at_threshold:
        out.append(hooks.StopAtThreshold(t.log_every))
    return tuple(out)


def compile_steps(run: Run, config) -> dict[str, Callable]:
    """The compiled step(s): ``solve`` (every step) and, with FLOATER caching, ``cached``."""
    setup = run.setup
    loss_fn = make_loss(setup.model, setup.ds.info["task"])
    threshold = config.train.loss_threshold
    batch = setup.first_batch if run.done == 0 else setup.ds.train_batch(run.done)
    args = (run.state, run.frozen, run.trainable0, batch, np.asarray(True), run.baseline)
    compile_step = lambda fn: jax.jit(fn, donate_argnums=0).lower(*args).compile()
    refresh = None
    if solve_every(config) > 1:
        refresh = position_refresher(setup.model, setup.first_batch)
    diverge_above = config.train.get("diverge_above")
    out = {"solve": compile_step(make_train_step(loss_fn, setup.tx, threshold,
                                                 refresh_cache=refresh,
                                                 diverge_above=diverge_above))}  # fmt: skip
    if solve_every(config) > 1:
        out["cached"] = compile_step(make_train_step(loss_fn, setup.tx, threshold, use_cache=True,
                                                     diverge_above=diverge_above))  # fmt: skip
    return out


def loop(run: Run, step_fns: dict, all_hooks, stop, progress) -> None:
    """Steps ``run.done .. num_steps - 1``; the hooks that are due after each."""
    setup, update_every = run.setup, solve_every(run.setup.config)
    previous_alive = None  # the step before's `alive`, read one step late: no stall
    for step in range(run.done, run.num_steps):
        batch = setup.first_batch if step == 0 else setup.ds.train_batch(step)
        last = step == run.num_steps - 1
        logged = run.log.due(step, last)
        row = {}
        if logged:
            if run.log.metrics_due(step, last):
                # Parameters *at* this step (before its update), copied out of the donated state.
                at_step = jax.tree.map(jnp.copy, run.state.trainable)
                row = run.log.extra(step, last, at_step, run.frozen, batch)
            row["alive"] = jnp.copy(run.state.outcome["alive"])
        compiled = step_fns["solve"] if step % update_every == 0 else step_fns["cached"]
        run.state, metrics = compiled(
            run.state, run.frozen, run.trainable0, batch, np.asarray(logged), run.baseline
        )
        if logged:
            run.log.push(step, {**metrics, **row})
        run.done = step + 1
        progress.update(1)
        for hook in all_hooks:
            if hooks.due(hook, run.done):
                hook(run)
        if previous_alive is not None and not np.asarray(gather(previous_alive)).any():
            break  # every seed had diverged by the step before: this one changed nothing
        previous_alive = jnp.copy(run.state.outcome["alive"])
        if stop.requested or run.stop_reason:
            break


def finish(run: Run, interrupted: bool, compile_seconds: float, wall: float, writes: bool) -> dict:
    setup, config = run.setup, run.setup.config
    final_step = int(run.state.step)
    outcome = gather(run.state.outcome)
    evaluation = {} if interrupted else run.evaluate(run.params())
    if evaluation and not run.writer.has_eval(final_step):
        run.writer.write_eval(final_step, evaluation)
    rates = learning_rates(run.state, config)
    summary = logs.summarize(
        outcome,
        tuple(config.seeds),
        interrupted=interrupted,
        final_step=final_step,
        loss_threshold=config.train.loss_threshold,
        baseline_loss=run.baseline_loss,
        baseline_threshold=config.train.baseline_threshold,
        evaluation=evaluation,
        num_steps=config.train.num_steps,
        max_frozen_change=max_frozen_change(run.frozen, run.frozen_at_start),
        learning_rates=rates,
        mesh=dict(setup.mesh.shape),
        wall_seconds=wall,
        compile_seconds=compile_seconds,
        diverge_above=config.train.get("diverge_above"),
        environment=logs.environment(),
    )
    run.writer.finish(summary)
    run.writer.close()
    if writes:
        text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
        (run.workdir / "summary.json").write_text(text)
        logs.plot_curves(run.workdir, learning_rate=rates or config.train.learning_rate)
    if summary["status"] == "diverged":
        print(f"run diverged; see {run.workdir / 'summary.json'}", file=sys.stderr)
    return summary


def _check_rows(writer, start: int, num_steps: int, log_every: int, metrics) -> None:
    """Before resuming at ``start``, every row a run up to there logged must be in the file."""
    expected = [s for s in range(start) if s % log_every == 0]
    missing = logs.missing_rows(writer.kept, expected) if start else []
    if missing and not isinstance(writer, logs.NullWriter):
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"{writer.path} lacks the rows of steps {shown} that precede the checkpoint of "
            f"step {start}; restore the file, or rerun in a fresh --workdir"
        )


def _abandon(writer) -> None:
    """Close the writers of a failed run; what they cannot flush (a full disk) is dropped
    here rather than reported again at interpreter exit."""
    if not hasattr(writer, "trackers"):  # a NullWriter (processes other than 0) holds no file
        return
    for close in (writer.file.close, *(t.close for t in writer.trackers)):
        with contextlib.suppress(OSError):
            close()


def _close(ds) -> None:
    if hasattr(ds, "close"):
        ds.close()


def schedule_changes(t: ml_collections.ConfigDict, old_num_steps: int) -> bool:
    """Whether ``t``'s learning-rate schedule, built for ``old_num_steps`` (as a run of that
    length built it), differs from the one for ``t.num_steps`` over the steps both share: a
    decaying schedule takes its length from ``num_steps`` unless its kwargs give one."""
    from experiments import optim

    def schedule(num_steps: int):
        kwargs = t.schedule_kwargs.to_dict()
        return optim.build_schedule(t.schedule, t.learning_rate, kwargs, num_steps, t.warmup_steps)

    before, now = schedule(old_num_steps), schedule(t.num_steps)
    if not (callable(before) and callable(now)):
        return False  # constant
    shared = min(old_num_steps, t.num_steps)
    steps = np.unique(np.linspace(0, shared, 65).astype(np.int32))
    return not np.allclose([before(s) for s in steps], [now(s) for s in steps], rtol=1e-6)


def _config_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


def max_frozen_change(frozen, frozen_at_start) -> float:
    """Largest |change| of any frozen parameter during the run (must be exactly 0.0)."""
    diffs = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), gather(frozen), frozen_at_start)
    return float(max(jax.tree_util.tree_leaves(diffs), default=0.0))
