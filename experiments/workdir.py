"""A run's workdir: exclusive ownership and the record of which config it holds.

The lock is an ``flock`` on ``<workdir>/.lock``: the kernel releases it when its holder dies, so a
lock left by a killed run is never stale, and the file only tells who held it last (pid, host).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Callable, Iterator

from experiments.rundirs import flatten

# Fields that may differ when an existing workdir is resumed (they do not change the run).
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.progress_bar",
    "train.stop_at_threshold",
    "mesh.cpu_devices_per_core",  # a layout: the checkpoint is laid out on the new mesh
)
# Parts of config.json that are no part of the run: what made it (`provenance`, rewritten on
# every start) and the trackers (`logging.*`, which may change on resume). Prefixes.
NOT_THE_RUN = ("provenance.", "logging.")
# Fields added since runs were first written, with the value that behaves as before they
# existed: a run directory whose config.json lacks one resumes when the field has that value.
ADDED_FIELDS = {
    "data.teacher_sigma2": None,
    "train.stable_step_fraction": 0.0,
    "model.shared_init": "",
    "model.shared_init_seed": 0,
    "data.teacher_kv": "seed",
    "mesh.cpu_devices_per_core": 0,
    "data.generator": "reference",  # pathfinder: the generator before the vectorised one
    "data.eval_regions": ["all"],  # order tasks: only the len_<n> splits, as before
    # 0.2.0. Before it, only non-finite losses diverged; an older run resumes under the
    # default, which changes nothing for a seed below 1e6 x its initial loss.
    "train.diverge_above": 1e6,
}


class WorkdirError(ValueError):
    """The workdir cannot be used as asked (one line: what and how to fix it)."""


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
    """Hold ``workdir`` exclusively; a second process gets a WorkdirError naming the holder."""
    path = workdir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirError(
                f"workdir {str(workdir)!r} is in use by {holder}; wait for it to finish or use "
                "another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_writable(workdir: pathlib.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {str(workdir)!r} is not writable ({e.strerror})") from None


def differences(before: dict, now: dict) -> list[str]:
    """The fields (dotted) in which two config.json objects differ as runs: fields added since
    ``before`` was written count at their :data:`ADDED_FIELDS` value; :data:`NOT_THE_RUN` and
    :data:`RESUMABLE_CHANGES` do not count."""
    before, now = _the_run(before), _the_run(now)
    before = {**{k: v for k, v in ADDED_FIELDS.items() if k in now}, **before}
    return sorted(
        k
        for k in set(before) | set(now)
        if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES
    )


def _the_run(config_json: dict) -> dict:
    flat = flatten(config_json)
    return {k: v for k, v in flat.items() if not k.startswith(NOT_THE_RUN)}


def check_same_config(
    workdir: pathlib.Path,
    config_json: dict,
    *,
    schedule_changes: Callable[[int], bool] | None = None,
) -> None:
    """If ``workdir`` holds a run, it must be a run of this config (else nothing is touched).

    ``schedule_changes(old_num_steps)``: whether the learning-rate schedule would change shape
    if a run of ``old_num_steps`` went on with this config's ``train.num_steps`` (a decaying
    schedule whose length is ``num_steps``); such a resume is refused, naming the fix.
    """
    saved = workdir / "config.json"
    if not saved.exists():
        return
    try:
        before = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WorkdirError(
            f"{saved} is damaged (not JSON); if this workdir holds a run of this config, delete "
            "that file and rerun to resume, else use a fresh --workdir"
        ) from None
    changed = differences(before, config_json)
    if changed:
        raise WorkdirError(
            f"workdir {str(workdir)!r} holds a run of another config (differs in "
            f"{changed[:5]}); use a fresh --workdir or the same config to resume"
        )
    old, new = before.get("train", {}).get("num_steps"), config_json["train"]["num_steps"]
    if old is not None and old != new and schedule_changes is not None and schedule_changes(old):
        schedule = config_json["train"]["schedule"]
        raise WorkdirError(
            f"workdir {str(workdir)!r} holds a run of train.num_steps={old}, and its "
            f"{schedule!r} learning-rate schedule lasts num_steps: going on to {new} would "
            f"change the schedule mid-run; resume with --config.train.num_steps={old}, or "
            f"train {new} steps in a fresh --workdir (warm-started from this run with "
            f"--config.train.init_from={workdir})"
        )


def read_summary(workdir: pathlib.Path) -> dict | None:
    """The finished run's summary, or None (absent or torn: the run regenerates it)."""
    try:
        return json.loads((workdir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
