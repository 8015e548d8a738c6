"""What this host offers, found without importing JAX, and the XLA CPU settings a run starts with.

XLA reads its flags once, when a backend starts, so :func:`configure` runs before any JAX
computation (``experiments.run`` and each sweep cell call it; a count or pass list already in
``XLA_FLAGS`` is the user's and is kept). On a host without GPU or TPU it adds two flags:

* ``--xla_disable_hlo_passes=cse_barrier_expander``: XLA:CPU removes the optimisation barriers
  that ``jax.checkpoint`` (and the blockwise attention's backward) place before the
  recomputation, then runs CSE and schedules, which merges each recomputed value back into the
  forward pass and keeps it alive until the backward: remat then saves nothing. Kept, the
  barriers do their job: the LRA-size encoder step's XLA temporaries drop from 349 to 233 MiB,
  no slower (benchmarks/RESULTS.md, "step (cpu)"). Results are unchanged: a barrier is an
  identity.
* ``--xla_force_host_platform_device_count``, when ``config.mesh.cpu_devices_per_core`` asks
  for it: XLA runs an op that is under about a millisecond of work on one thread, and an
  encoder step at Pathfinder or LRA sizes is hundreds of such ops, so one CPU device leaves
  cores idle; with the host split into several devices the ``('seeds', 'data')`` mesh gives
  each its share of the seeds or the batch and they run side by side (the 256-token step 1.7x
  faster with 2 devices per core than with one device, benchmarks/RESULTS.md).

Accelerator hosts get neither: the flags concern the CPU backend, and runs there were not
measured with them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

COUNT_FLAG = "--xla_force_host_platform_device_count"
DISABLED_PASSES_FLAG = "--xla_disable_hlo_passes"
BARRIER_EXPANDER = "cse_barrier_expander"


def visible_gpus() -> list[str]:
    """GPU ids this process may use (empty on CPU-only runs)."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() in ("cpu", "tpu"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return [] if ids in ([], ["-1"]) else ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def tpu_present() -> bool:
    """TPU chips on this host that JAX would use (JAX_PLATFORMS=cpu opts out)."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def cpu_count() -> int:
    """This process's cores (its affinity: a sweep worker pinned to one core has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_xla_flags(xla_flags: str, devices: int = 1) -> str:
    """``xla_flags`` with the remat barriers kept and, for ``devices > 1``, that many CPU
    devices; a device count already there is kept, a pass list is extended."""
    flags = xla_flags.split()
    disabled = [f for f in flags if f.startswith(DISABLED_PASSES_FLAG + "=")]
    if not disabled:
        flags.append(f"{DISABLED_PASSES_FLAG}={BARRIER_EXPANDER}")
    elif BARRIER_EXPANDER not in disabled[-1].partition("=")[2].split(","):
        flags[flags.index(disabled[-1])] = f"{disabled[-1]},{BARRIER_EXPANDER}"
    if devices > 1 and not any(f.startswith(COUNT_FLAG + "=") for f in flags):
        flags.append(f"{COUNT_FLAG}={devices}")
    return " ".join(flags)


def configure(cpu_devices_per_core: int = 0) -> None:
    """Set this process's XLA CPU flags (see the module docstring); effective only if no JAX
    backend has started in it yet. No-op on a GPU or TPU host."""
    if visible_gpus() or tpu_present():
        return
    devices = cpu_devices_per_core * cpu_count()
    os.environ["XLA_FLAGS"] = cpu_xla_flags(os.environ.get("XLA_FLAGS", ""), devices)
