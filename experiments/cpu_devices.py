"""The CPU split into several XLA devices, so that a run's mesh keeps every core busy.

On CPU, XLA runs an op that is under about a millisecond of work on one thread, and an encoder
step at Pathfinder or LRA sizes is hundreds of such ops (per-head attention blocks, 64-wide
projections), so one CPU device leaves cores idle. With the host split into several XLA devices
(``--xla_force_host_platform_device_count``) the ``('seeds', 'data')`` mesh gives each device
its share of the seeds or of the batch and their programs run side by side: measured 1.6x
faster at 256 tokens with 2 devices per core (``benchmarks/RESULTS.md``, "step (cpu)").

``config.mesh.cpu_devices_per_core`` asks for it; XLA reads the count once, when its CPU
backend starts, so :func:`configure` runs before any JAX computation (``experiments.run`` and
each sweep cell do so). A count already in ``XLA_FLAGS`` is the user's and wins. GPU and TPU
runs are unaffected: the flag adds host devices only, and the mesh takes the accelerators.
No JAX import here: the parent of a sweep stays light.
"""

from __future__ import annotations

import os

COUNT_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
    """This process's cores (its affinity: a sweep worker pinned to one core has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def with_device_count(xla_flags: str, per_core: int, cores: int) -> str:
    """``xla_flags`` with a host device count of ``per_core x cores`` added; unchanged when
    ``per_core`` is 0 (XLA's default: one CPU device) or the flags already set a count."""
    if per_core <= 0 or COUNT_FLAG in xla_flags:
        return xla_flags
    return f"{xla_flags} {COUNT_FLAG}={per_core * cores}".strip()


def configure(per_core: int) -> None:
    """Ask XLA for ``per_core`` CPU devices per available core; effective only if the CPU
    backend has not started yet in this process."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = with_device_count(flags, per_core, available_cores())
