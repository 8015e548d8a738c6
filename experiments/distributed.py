"""Many hosts on JAX's own distributed runtime (``jax.distributed.initialize``).

* Explicit: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every host.
* Automatic: ``--distributed`` where JAX detects the cluster itself (SLURM, TPU pods, Open MPI,
  ...); on a Cloud TPU pod slice every worker runs the same command.

Every process runs the same program: the mesh spans all devices of all processes, each process
reads only its share of each batch, orbax saves and restores collectively, and only process 0
writes ``metrics.jsonl``, ``summary.json``, plots and TensorBoard events. On CPU the
collectives go through gloo. A process that dies is noticed by the others through the
coordination service's heartbeat, so they end (non-zero) instead of waiting forever.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Cluster:
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # let JAX detect SLURM / TPU / Open MPI
    heartbeat_timeout_seconds: int = 30

    @property
    def wanted(self) -> bool:
        return self.auto or self.coordinator_address is not None


def check(cluster: Cluster) -> str | None:
    """One line saying what is wrong with the flags, or None (no JAX needed)."""
    explicit = (cluster.coordinator_address, cluster.num_processes, cluster.process_id)
    if any(x is not None for x in explicit) and any(x is None for x in explicit):
        return (
            "--coordinator_address, --num_processes and --process_id go together (got "
            f"{cluster.coordinator_address!r}, {cluster.num_processes!r}, {cluster.process_id!r})"
        )
    if cluster.num_processes is not None and not 0 <= cluster.process_id < cluster.num_processes:
        return f"--process_id={cluster.process_id} must be in [0, {cluster.num_processes})"
    return None


def initialize(cluster: Cluster) -> None:
    """Join the cluster before any other JAX call (a no-op for a single process)."""
    if not cluster.wanted:
        return
    import jax

    # gloo: CPU collectives across processes (the default CPU client has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=cluster.coordinator_address,
        num_processes=cluster.num_processes,
        process_id=cluster.process_id,
        heartbeat_timeout_seconds=cluster.heartbeat_timeout_seconds,
    )


def gather(tree):
    """Host copies of (possibly cross-process) arrays: every process gets the whole value."""
    import jax

    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
