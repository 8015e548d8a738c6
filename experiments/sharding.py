"""The device mesh of a run: ``('seeds', 'data')``.

Seeds are the parallel axis of a convergence study, so they are sharded first: the leading seed
axis of the parameters, the optimiser state, the outcome and the RNG goes over ``seeds``; the
devices left take the batch (``data``). The shape is chosen from the device count, the number
of seeds and the batch sizes, or set with ``config.mesh.seeds`` / ``config.mesh.data``.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("seeds", "data")


def _largest_divisor(n: int, of: int) -> int:
    """The largest divisor of ``n`` that also divides ``of``."""
    return math.gcd(n, of)


def mesh_shape(
    num_devices: int, num_seeds: int, batch_sizes: tuple[int, ...], seeds: int = 0, data: int = 0
) -> tuple[int, int]:
    """``(seeds, data)`` axis sizes; 0 means "choose". Raises ValueError naming what would work.

    The automatic choice shards the seeds over as many devices as divide the seed count, then
    the batch over as many of the remaining devices as divide every batch size; devices that
    fit neither stay idle (a 1-seed, 4-example full-batch run uses 4 of 8 devices).
    """
    batch = math.gcd(*batch_sizes) if batch_sizes else 1
    s = seeds or _largest_divisor(num_devices, num_seeds)
    d = data or _largest_divisor(num_devices // s if num_devices % s == 0 else 1, batch)
    problems = []
    if num_seeds % s:
        problems.append(f"config.mesh.seeds={s} does not divide the {num_seeds} seeds")
    if batch % d:
        problems.append(f"config.mesh.data={d} does not divide the batch size {batch}")
    if s * d > num_devices:
        problems.append(f"seeds x data = {s} x {d} needs {s * d} devices, {num_devices} exist")
    if problems:
        fit_s = _largest_divisor(num_devices, num_seeds)
        fit_d = _largest_divisor(num_devices // fit_s, batch)
        raise ValueError(
            f"mesh: {'; '.join(problems)}; with {num_devices} devices, {num_seeds} seeds and batch "
            f"{batch}, config.mesh.seeds={fit_s} config.mesh.data={fit_d} works (0 = automatic)"
        )
    return s, d


def make_mesh(shape: tuple[int, int]) -> jax.sharding.Mesh:
    """A ``('seeds', 'data')`` mesh on the first ``seeds * data`` devices. Auto axis types: the
    compiler propagates shardings (Explicit would make every gather and SVD spell them out)."""
    n = shape[0] * shape[1]
    devices = np.asarray(jax.devices()[:n]).reshape(shape)
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.sharding.Mesh(devices, AXES, axis_types=auto)


def seed_sharded(mesh: jax.sharding.Mesh, tree, num_seeds: int):
    """Shardings for a pytree whose arrays carry a leading seed axis (scalars: replicated)."""

    def spec(x):
        leading = getattr(x, "ndim", 0) >= 1 and x.shape[0] == num_seeds
        return NamedSharding(mesh, P("seeds") if leading else P())

    return jax.tree.map(spec, tree)
