"""What the training loop does besides stepping, each with its own cadence.

Two kinds, in the manner of init2winit's callbacks:

* a :class:`Metric` adds figures to the logged row of a step. It sees the parameters *at* that
  step (before its update) and the step's batch, returns per-seed arrays, and runs only on the
  steps it is due (``step % every == 0`` and the last step); the host fetches its result one
  logged step late, with the row. Theory quantities and sharpness are metrics.
* a :class:`Hook` acts on the run after a step (evaluate, checkpoint, stop, anything a user
  passes to ``train_and_evaluate(..., hooks=...)``); it is due after ``every`` steps.

Order after a step: the hooks in the order given; a stop request is honoured only after them,
so an evaluation or checkpoint that was due is never skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import jax
import numpy as np

from attn_dynamics import diagnostics, freezing
from experiments.distributed import gather

if TYPE_CHECKING:
    from experiments.train import Run

PerSeed = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Metric:
    """``fn(trainable, frozen, batch) -> {name: [seeds]}``, added to the rows it is due on."""

    name: str
    every: int
    fn: Callable[[Any, dict], PerSeed]

    def due(self, step: int, last: bool) -> bool:
        return self.every > 0 and (step % self.every == 0 or last)


class Hook(Protocol):
    every: int  # due after every `every` steps (0: never during training)

    def __call__(self, run: Run) -> None: ...


def due(hook: Hook, done: int) -> bool:
    return hook.every > 0 and done % hook.every == 0


class MetricLog:
    """Rows of ``metrics.jsonl``, each fetched one logged step late so the host never stalls
    the device; :meth:`flush` forces the pending row out (before a checkpoint, at the end)."""

    def __init__(self, writer, metrics: tuple[Metric, ...], log_every: int, progress=None):
        self.writer, self.metrics, self.log_every = writer, metrics, log_every
        self.progress = progress
        self.pending = None

    def due(self, step: int, last: bool) -> bool:
        return step % self.log_every == 0 or last or any(m.due(step, last) for m in self.metrics)

    def metrics_due(self, step: int, last: bool) -> bool:
        return any(m.due(step, last) for m in self.metrics)

    def extra(self, step: int, last: bool, trainable, frozen, batch) -> dict:
        """The due metrics, dispatched now (asynchronously) on the parameters at ``step``."""
        out = {}
        for m in self.metrics:
            if m.due(step, last):
                out.update(m.fn(trainable, frozen, batch))
        return out

    def push(self, step: int, row: dict) -> None:
        self.flush()
        self.pending = (step, row)

    def flush(self, *, durable: bool = False) -> None:
        if self.pending is not None:
            step, row = self.pending
            self.pending = None
            host = gather(row)
            alive = np.asarray(host.pop("alive"))
            self.writer.write(step, host, alive=alive)
            if self.progress is not None:
                live = np.asarray(host["loss"])[alive]
                self.progress.set_postfix(loss=f"{np.mean(live) if live.size else np.nan:.3e}")
        if durable:
            self.writer.sync()


@dataclasses.dataclass
class Evaluate:
    """An evaluation row after every ``every`` steps (the final one is the run's own)."""

    every: int

    def __call__(self, run: Run) -> None:
        if run.done < run.num_steps:
            run.writer.write_eval(run.done, run.evaluate(run.params()))


@dataclasses.dataclass
class SaveCheckpoint:
    """A checkpoint after every ``every`` steps, committed only once every row before it is
    durably in ``metrics.jsonl`` (a kill between the two can then never lose a row)."""

    every: int

    def __call__(self, run: Run) -> None:
        run.log.flush(durable=True)
        run.ckpt.save(run.done, run.state, run.frozen)


@dataclasses.dataclass
class StopAtThreshold:
    """Stop once every live seed has met both convergence criteria (``train.stop_at_threshold``):
    the loss threshold relative to the initial loss and, where it is on (a finite level), the
    baseline-relative one. Stopping at the first alone left the stricter baseline criterion
    unknown for seeds that were still on their way to it.

    Checked after each logged step (``step % log_every == 0``), whose metrics the host reads
    anyway: checking every step would add a device-to-host sync per step. A run therefore
    stops at most ``log_every`` steps after the threshold step that ``summary.json`` records."""

    log_every: int
    every: int = 1

    def __call__(self, run: Run) -> None:
        if (run.done - 1) % self.log_every:
            return
        o = gather(run.state.outcome)
        if np.all(criteria_met(o, run.baseline) | ~o["alive"]):
            run.stop_reason = "threshold"


def criteria_met(outcome: dict, baseline: np.ndarray) -> np.ndarray:
    """Per seed: every convergence criterion that is on has been met (baseline NaN: off)."""
    met = outcome["threshold_step"] >= 0
    return np.where(np.isfinite(baseline), met & (outcome["baseline_step"] >= 0), met)


def sharpness_metric(loss_fn: Callable, every: int, num_iters: int = 20) -> Metric:
    """The top Hessian eigenvalue of the training loss w.r.t. the trained parameters, per seed,
    on the step's batch. Drawn against ``2 / learning_rate`` it shows the edge of stability."""
    sharpness = per_seed_sharpness(loss_fn, num_iters)
    return Metric("sharpness", every, lambda t, f, b: {"sharpness": sharpness(t, f, b)})


def per_seed_sharpness(loss_fn: Callable, num_iters: int = 20, largest: str = "magnitude"):
    """``(trainable, frozen, batch) -> [seeds]``: each seed's top Hessian eigenvalue w.r.t. its
    trained parameters (power iteration on Hessian-vector products, never the Hessian)."""

    def one_seed(trainable, frozen, batch, key):
        loss = lambda t: loss_fn(freezing.merge(t, frozen), batch, key)[0]
        top = diagnostics.top_hessian_eigenvalue
        return top(loss, trainable, key, num_iters=num_iters, largest=largest)[0]

    per_seed = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None, 0)))

    def fn(trainable, frozen, batch):
        num_seeds = jax.tree_util.tree_leaves(trainable)[0].shape[0]
        return per_seed(trainable, frozen, batch, _keys(num_seeds))

    return fn


def _keys(n: int) -> jax.Array:
    return jax.random.split(jax.random.key(0), n)  # fixed start vectors: reruns agree


class StopOnSignal:
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
