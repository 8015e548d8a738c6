"""What every dataset shares: deterministic batches by step, eval passes, sharding, prefetch.

A dataset is a random-access collection of examples (``_examples(split, indices)``) plus a rule
that maps a training step to the global indices of its batch (``_train_indices(step)``). Both
are pure functions of the config (seed included) and the step, so the step number is the whole
"data position": resuming at step ``k`` gives exactly the batches a run from 0 saw at ``k..``.

With a mesh, each process builds only its own rows of the global batch and the rows are
assembled into one ``jax.Array`` sharded over the mesh axis ``data``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Batch = dict[str, np.ndarray | jax.Array]

# Purposes folded into NumPy seed sequences, so streams never overlap.
SHUFFLE_STREAM = 1
TRAIN_STREAM = 2
EVAL_STREAM = 3


class DatasetNotPrepared(RuntimeError):
    """A tfds dataset is not prepared locally; the message (one line) says how to prepare it."""


def data_axis_size(mesh: Mesh | None) -> int:
    if mesh is None:
        return 1
    if "data" not in mesh.axis_names:
        raise ValueError(f"the mesh has no axis named 'data' (axes: {mesh.axis_names})")
    return int(mesh.shape["data"])


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local rows -> global ``jax.Array``s sharded over the mesh axis ``data``.

    Every process passes its own rows (the same number on each); the global batch is their
    concatenation over processes. With one process this is a sharded ``device_put``.
    """
    n_data = data_axis_size(mesh)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % n_data:
            raise ValueError(
                f"batch of {global_rows} rows ({name!r}) cannot be split over the {n_data} "
                "devices of mesh axis 'data'; use a batch size divisible by the device count"
            )
        out[name] = jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))
    return out


def epoch_positions(step: int, batch_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, offset) of every row of the batch of ``step`` in an endless walk over epochs."""
    pos = np.int64(step) * batch_size + np.arange(batch_size, dtype=np.int64)
    return pos // size, pos % size


class Dataset:
    """Base class. Subclasses set ``name``, ``info``, ``eval_splits``, the batch sizes and
    implement ``_examples``, ``_eval_size`` and (unless they shuffle a finite train set with
    :meth:`_shuffled_indices`) ``_train_indices``."""

    name: str = "dataset"
    info: dict
    eval_splits: tuple[str, ...] = ()
    train_batch_size: int
    eval_batch_size: int
    train_size: int = 0  # 0: an endless stream of fresh examples

    def __init__(self, config, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh
        self.seed = int(config.seed)
        self.prefetch = int(config.get("prefetch", 2))
        self._perms: dict[int, np.ndarray] = {}
        self._perms_lock = threading.Lock()

    # ---- to implement ----------------------------------------------------------------------
    def _examples(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _eval_size(self, split: str) -> int:
        raise NotImplementedError

    # ---- checks ----------------------------------------------------------------------------
    def _check_batch_sizes(self) -> None:
        """Raise ValueError when a batch size does not split over devices and processes."""
        n_data = data_axis_size(self.mesh)
        procs = jax.process_count() if self.mesh is not None else 1
        for what, size in (
            ("batch_size", self.train_batch_size),
            ("eval_batch_size", self.eval_batch_size),
        ):
            if size <= 0:
                raise ValueError(f"{self.name}: {what} must be positive, got {size}")
            for count, unit in ((n_data, "devices on mesh axis 'data'"), (procs, "processes")):
                if size % count:
                    raise ValueError(
                        f"{self.name}: {what} {size} is not divisible by the {count} {unit}; "
                        f"set config.data.{what} to a multiple of {count}"
                    )

    # ---- training --------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        with self._perms_lock:  # train_batch may run in the prefetch thread and the caller's
            perm = self._perms.get(epoch)
            if perm is None:
                rng = np.random.default_rng([self.seed, SHUFFLE_STREAM, int(epoch)])
                perm = rng.permutation(self.train_size)
                if len(self._perms) > 4:
                    self._perms.pop(min(self._perms))
                self._perms[epoch] = perm
            return perm

    def _shuffled_indices(self, step: int) -> np.ndarray:
        """A fresh permutation of the train set per epoch; batches run across epoch ends."""
        epoch, offset = epoch_positions(step, self.train_batch_size, self.train_size)
        out = np.empty(self.train_batch_size, np.int64)
        for e in np.unique(epoch):
            rows = epoch == e
            out[rows] = self._permutation(int(e))[offset[rows]]
        return out

    def _train_indices(self, step: int) -> np.ndarray:
        if self.train_size > 0:
            return self._shuffled_indices(step)
        return np.int64(step) * self.train_batch_size + np.arange(self.train_batch_size)

    def _local(self, rows: np.ndarray) -> np.ndarray:
        """This process's share of the global rows (all of them without a mesh)."""
        if self.mesh is None or jax.process_count() == 1:
            return rows
        per = len(rows) // jax.process_count()
        start = jax.process_index() * per
        return rows[start : start + per]

    def _put(self, batch: dict[str, np.ndarray]) -> Batch:
        return batch if self.mesh is None else shard_batch(batch, self.mesh)

    def train_batch(self, step: int) -> Batch:
        """The batch of training step ``step``: a pure function of (config, step)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        indices = self._local(self._train_indices(int(step)))
        return self._put(self._examples("train", indices))

    def train_iter(self, start_step: int = 0) -> Iterator[Batch]:
        """Batches of steps ``start_step, start_step + 1, ...``, prefetched in a thread."""
        if self.prefetch <= 0:
            return (self.train_batch(s) for s in _count(start_step))
        return _prefetched(self.train_batch, start_step, self.prefetch)

    # ---- evaluation ------------------------------------------------------------------------
    def eval_batches(self, split: str) -> Iterator[Batch]:
        """One pass over ``split``; the last batch is padded, ``weight`` is 0 on padding rows."""
        if split not in self.eval_splits:
            raise ValueError(
                f"{self.name}: unknown eval split {split!r}; valid: {self.eval_splits}"
            )
        size, bs = self._eval_size(split), self.eval_batch_size
        for start in range(0, size, bs):
            real = min(bs, size - start)
            indices = np.arange(start, start + bs, dtype=np.int64)
            indices[real:] = start  # padding rows repeat a real example and weigh nothing
            weight = (np.arange(bs) < real).astype(np.float32)
            local = self._local(np.arange(bs))
            batch = self._examples(split, indices[local])
            batch["weight"] = weight[local]
            yield self._put(batch)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.info}>"


def _count(start: int) -> Iterator[int]:
    step = start
    while True:
        yield step
        step += 1


def _prefetched(fn, start: int, depth: int) -> Iterator[Batch]:
    """``fn(start), fn(start + 1), ...`` computed ``depth`` ahead in a daemon thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        step = start
        try:
            while not stop.is_set():
                if not put((fn(step), None)):
                    return
                step += 1
        except BaseException as e:  # re-raised in the consumer
            put((None, e))

    thread = threading.Thread(target=work, name="data-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            yield item
    finally:
        stop.set()


def check_fields(config, required: Sequence[str], name: str) -> None:
    missing = [f for f in required if f not in config]
    if missing:
        raise ValueError(f"config.data for {name!r} lacks the fields {missing}")
