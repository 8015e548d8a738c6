"""Orbax checkpoints of a run: params, optimiser state, step, RNG, data position, tracker.

The data position is the step itself: every dataset's ``train_batch(step)`` is a deterministic
function of the step, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import pathlib

import jax
import orbax.checkpoint as ocp

from attn_dynamics import freezing


class Checkpointer:
    def __init__(self, directory: pathlib.Path, keep: int):
        self.manager = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # Saving is asynchronous: wait, or the last checkpoint may be half-written at exit.
        self.manager.wait_until_finished()
        self.manager.close()

    @staticmethod
    def _payload(state: dict, frozen: dict) -> dict:
        return {
            "step": state["step"],
            "params": freezing.merge(state["trainable"], frozen),
            "opt_state": state["opt_state"],
            "outcome": state["outcome"],
            "rng": jax.random.key_data(state["rng"]),
            "data_position": state["step"],
            **({"position_cache": state["position_cache"]} if "position_cache" in state else {}),
        }

    def save(self, step: int, state: dict, frozen: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(self._payload(state, frozen)))
        )

    def restore_latest(self, state: dict, frozen: dict, mask) -> dict | None:
        """The state of the newest checkpoint that restores cleanly.

        ``state`` and ``frozen`` are a fresh run's, used as the abstract restore target (which
        also re-lays a checkpoint out on this run's mesh). A corrupt or half-written checkpoint
        is skipped with a warning, falling back to the previous one.
        """
        template = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._payload(state, frozen))
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(template)),
                )
            except Exception as e:  # noqa: BLE001 -- any failure means "not usable"
                first_line = (str(e).splitlines() or [type(e).__name__])[0][:200]
                logging.warning(
                    "checkpoint at step %d is unreadable (%s); falling back to an older one",
                    step,
                    first_line,
                )
                continue
            payload = restored["state"]
            trainable, _ = freezing.split(payload["params"], mask)
            return {
                "step": payload["step"],
                "trainable": trainable,
                "opt_state": payload["opt_state"],
                "outcome": payload["outcome"],
                "rng": jax.random.wrap_key_data(payload["rng"]),
                **(
                    {"position_cache": payload["position_cache"]}
                    if "position_cache" in payload
                    else {}
                ),
            }
        return None


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
    """The parameters (seed axis first) of the newest checkpoint of another run."""
    manager = ocp.CheckpointManager(_checkpoint_dir(path).absolute())
    try:
        restored = manager.restore(manager.latest_step())
    finally:
        manager.close()
    return restored["state"]["params"]
