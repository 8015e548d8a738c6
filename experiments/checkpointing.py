"""Orbax checkpoints of a run: params, optimiser state, step, RNG, per-seed outcome.

The data position is the step itself: every dataset's ``train_batch(step)`` is a deterministic
function of the step, so a resumed run sees exactly the batches it would have seen.

Saving is synchronous: the states here are small next to a step, and a synchronous save turns a
full disk or a lost permission into an exception at the save, not a background thread that dies
while the run waits forever. A checkpoint that does not restore is moved aside into
``checkpoints.quarantine/`` (with a warning) so the next save of that step succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp

from attn_dynamics import freezing
from experiments.state import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the message is one line)."""


class Checkpointer:
    def __init__(self, directory: pathlib.Path, keep: int):
        self.directory = directory.absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # nothing is pending: saves are synchronous
            self.manager.close()

    @staticmethod
    def _payload(state: TrainState, frozen: dict) -> dict:
        payload = {
            "step": state.step,
            "params": freezing.merge(state.trainable, frozen),
            "opt_state": state.opt_state,
            "outcome": state.outcome,
            "rng": jax.random.key_data(state.rng),
        }
        if state.position_cache is not None:
            payload["position_cache"] = state.position_cache
        return payload

    def save(self, step: int, state: TrainState, frozen: dict) -> None:
        if step in self.manager.all_steps():
            return
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(self._payload(state, frozen))),
            )
        except Exception as e:  # noqa: BLE001 -- disk full, permission lost, ...
            self._remove_partial(step)
            raise CheckpointError(
                f"could not write the checkpoint of step {step} in {self.directory} "
                f"({_first_line(e)}); the last good checkpoint is kept"
            ) from None

    def _remove_partial(self, step: int) -> None:
        """Orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames when complete."""
        for path in self.directory.glob(f"{step}.*"):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.manager.reload()

    def restore_latest(self, state: TrainState, frozen: dict, mask) -> TrainState | None:
        """The state of the newest checkpoint that restores cleanly.

        ``state`` and ``frozen`` are a fresh run's, used as the abstract restore target (which
        also re-lays a checkpoint out on this run's mesh). A checkpoint that does not restore is
        quarantined with a warning, falling back to the previous one.
        """
        template = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._payload(state, frozen))
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                with _quiet_unraisable():
                    restored = self.manager.restore(
                        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))
                    )
            except Exception as e:  # noqa: BLE001 -- any failure means "not usable"
                self.quarantine(step, e)
                continue
            payload = restored["state"]
            trainable, _ = freezing.split(payload["params"], mask)
            return TrainState(
                step=payload["step"],
                trainable=trainable,
                opt_state=payload["opt_state"],
                outcome=payload["outcome"],
                rng=jax.random.wrap_key_data(payload["rng"]),
                position_cache=payload.get("position_cache"),
            )
        return None

    def quarantine(self, step: int, error: Exception) -> None:
        target = quarantine(self.directory, step)
        logging.warning(
            "checkpoint at step %d is unreadable (%s); moved to %s, falling back to an older one",
            step,
            _first_line(error),
            target,
        )
        self.manager.reload()


def quarantine(directory: pathlib.Path, step: int) -> pathlib.Path:
    """Move ``directory/<step>`` aside into ``<directory>.quarantine/`` and return where."""
    aside = directory.parent / f"{directory.name}.quarantine"
    aside.mkdir(exist_ok=True)
    target = aside / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
    shutil.move(str(directory / str(step)), target)
    return target


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


@contextlib.contextmanager
def _quiet_unraisable():
    """A failed orbax restore leaves coroutines that were never awaited; Python reports each as
    ``Exception ignored in: <coroutine ...>`` (~170 lines). They are not errors of the run."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if type(unraisable.object).__name__ != "coroutine":
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _checkpoint_dir(path: pathlib.Path) -> pathlib.Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def latest_step(path: pathlib.Path) -> int | None:
    """The newest checkpoint step under a run's workdir (or its checkpoints/ folder)."""
    directory = _checkpoint_dir(path)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    return max(steps, default=None)


def load_params(path: pathlib.Path) -> dict:
    """The parameters (seed axis first) of the newest readable checkpoint of a run.

    The one way analyses, the landscape and warm starts read another run's weights: without a
    template (the caller does not know the run's optimiser), skipping unreadable checkpoints.
    """
    directory = _checkpoint_dir(pathlib.Path(path)).absolute()
    manager = ocp.CheckpointManager(directory)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                with _quiet_unraisable():
                    return manager.restore(step)["state"]["params"]
            except Exception as e:  # noqa: BLE001
                logging.warning("checkpoint %s/%d is unreadable (%s)", directory, step,
                                _first_line(e))  # fmt: skip
    finally:
        manager.close()
    raise FileNotFoundError(f"no readable checkpoint in {directory}")
