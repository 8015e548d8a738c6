"""What every dataset shares: step-indexed grain pipelines, eval passes, sharding, workers.

A dataset decodes examples by position (``_examples(split, positions)``, vectorised over a
batch); everything else is a grain ``MapDataset`` built here:

* training: ``grain.MapDataset.range(...)`` -> this process's slice -> ``map`` (element
  number -> positions by :class:`TrainOrder` -> examples). Element ``step`` is this process's
  rows of the batch of ``step``, a pure function of the config (seed included) and the step,
  so the step number is the whole "data position": resuming at ``k`` gives exactly the
  batches a run from 0 saw at ``k..``.
* evaluation: the same over ``EvalOrder``, one finite pass with the last batch padded
  (``weight`` 0 on padding rows).

Orders are functions of the element number, not grain sources: a grain source records
metrics on every read, which costs more (~0.05 ms) than a whole in-memory batch.

Random access (``ds.train_batch(step)``) reads the pipeline in the calling thread; iteration
(``ds.train_iter(start)``, ``ds.eval_batches(split)``) goes through grain's
``to_iter_dataset`` with ``config.prefetch`` threads and, when ``config.workers > 0``,
``mp_prefetch`` worker processes (same batches either way; with workers, ``train_batch`` of
consecutive steps reads such a stream too). Worker processes live until the
iterator is exhausted or closed, or until :meth:`Dataset.close` (or the end of a
``with dataset:`` block) closes every iterator the dataset opened.

The order of the training examples is one fresh permutation of the train set per epoch, drawn
vectorised with NumPy from ``(seed, epoch)``; batches run across epoch ends. grain's own
``shuffle().repeat().batch()`` gives the same kind of order, but it shuffles and batches one
example at a time: 12.9 ms of CPU to order a batch of 256 (grain 0.2.18) where the whole
synthetic minibatch here takes about 0.2 ms, which would make the in-memory pools slower than
the training step they feed.

Multi-host: each process reads only its own rows (``[process_index::process_count]`` of the
per-process row blocks, grain's sharding idiom); with a mesh, the rows of all processes are
assembled into one ``jax.Array`` sharded over the mesh axis ``data``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from absl import flags

# JAX and grain are imported where they are used, so that config files, which read the datasets'
# default configs, load without them: a bad command line is rejected before JAX starts.
if TYPE_CHECKING:
    import grain
    import jax
    from jax.sharding import Mesh

Batch = dict[str, "np.ndarray | jax.Array"]

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
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

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


# --------------------------------------------------------------------------------------------
# Orders: which example positions make up each element of a pipeline


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, size: int, epoch: int) -> np.ndarray:
    """The order of the ``size`` training examples in ``epoch`` (read-only, cached)."""
    perm = np.random.default_rng([seed, SHUFFLE_STREAM, epoch]).permutation(size)
    perm.flags.writeable = False
    return perm


@dataclasses.dataclass(frozen=True)
class TrainOrder:
    """``order(k)``: the example positions of rows
    ``[k * rows, (k + 1) * rows)`` of the endless training stream.

    ``size == 0``: the stream is the positions themselves (fresh examples forever).
    Otherwise row ``r`` is example ``perm_e[r % size]`` of epoch ``e = r // size``, with
    ``perm_e`` the epoch's permutation (``shuffle``) or the identity (full batch).
    """

    size: int
    rows: int
    seed: int
    shuffle: bool = True

    def __len__(self) -> int:
        return sys.maxsize // self.rows

    def __call__(self, k: int) -> np.ndarray:
        first = int(k) * self.rows
        if self.size == 0:
            return np.arange(first, first + self.rows, dtype=np.int64)
        epoch, offset = divmod(first, self.size)
        if offset + self.rows <= self.size:  # the common case: within one epoch
            rows = slice(offset, offset + self.rows)
            if not self.shuffle:
                return np.arange(self.size, dtype=np.int64)[rows]
            return epoch_permutation(self.seed, self.size, epoch)[rows]
        pos = first + np.arange(self.rows, dtype=np.int64)
        epochs, offsets = pos // self.size, pos % self.size
        if not self.shuffle:
            return offsets
        out = np.empty(self.rows, np.int64)
        for e in np.unique(epochs):
            here = epochs == e
            out[here] = epoch_permutation(self.seed, self.size, int(e))[offsets[here]]
        return out


@dataclasses.dataclass(frozen=True)
class EvalOrder:
    """``order(k)``: ``(positions, weight)`` of share ``k % shards``
    of eval batch ``k // shards`` over ``size`` examples. Padding rows of the last batch
    repeat its first example and weigh 0."""

    size: int
    batch_size: int
    shards: int = 1

    def __len__(self) -> int:
        return -(-self.size // self.batch_size) * self.shards

    def __call__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= k < len(self):
            raise IndexError(f"eval element {k} out of range [0, {len(self)})")
        batch, share = divmod(k, self.shards)
        rows = self.batch_size // self.shards
        start = batch * self.batch_size
        pos = start + share * rows + np.arange(rows, dtype=np.int64)
        real = pos < self.size
        return np.where(real, pos, start), real.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Decoding (picklable: mp_prefetch sends the pipeline to its worker processes)


@dataclasses.dataclass(frozen=True)
class _Decode:
    """Element number -> its positions (``order``) -> the examples there."""

    dataset: Dataset
    split: str
    order: TrainOrder | EvalOrder

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        if isinstance(self.order, EvalOrder):
            positions, weight = self.order(k)
            return dict(self.dataset._examples(self.split, positions), weight=weight)
        return self.dataset._examples(self.split, self.order(k))


def _pipeline(dataset: Dataset, split: str, order, shard: tuple[int, int]) -> grain.MapDataset:
    """Elements ``index, index + count, ...`` of ``order``, decoded."""
    import grain

    index, count = shard
    elements = grain.MapDataset.range(len(order))
    if count > 1:
        elements = elements[index::count]
    return elements.map(_Decode(dataset, split, order))  # one map: a map costs ~10 us a call


# --------------------------------------------------------------------------------------------


class Dataset:
    """Base class. Subclasses set ``name``, ``info``, ``eval_splits``, the batch sizes,
    ``train_size`` (0: an endless stream) and ``full_batch``, and implement ``_examples`` and
    ``_eval_size``. Use as a context manager (or call :meth:`close`) to stop workers."""

    name: str = "dataset"
    info: dict
    eval_splits: tuple[str, ...] = ()
    train_batch_size: int
    eval_batch_size: int
    train_size: int = 0  # 0: an endless stream of fresh examples
    full_batch: bool = False  # every step reads the train set in order (no shuffle)

    def __init__(self, config, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh
        self.seed = int(config.seed)
        self.prefetch = int(config.get("prefetch", 2))
        self.workers = int(config.get("workers", 0))
        if self.prefetch < 0 or self.workers < 0:
            raise ValueError(
                f"{self.name}: prefetch and workers must be >= 0, got {self.prefetch}, "
                f"{self.workers}"
            )
        self._iterators: set = set()  # open grain iterators, closed by close()
        self._train_pipelines: dict[tuple[int, int], grain.MapDataset] = {}
        self._stream, self._stream_step = None, 0  # train_batch's stream with workers

    # ---- to implement ----------------------------------------------------------------------
    def _examples(self, split: str, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at ``positions`` of ``split``, stacked (a pure function)."""
        raise NotImplementedError

    def _eval_size(self, split: str) -> int:
        raise NotImplementedError

    # ---- checks ----------------------------------------------------------------------------
    def _check_batch_sizes(self) -> None:
        """Raise ValueError when a batch size does not split over devices and processes."""
        n_data = data_axis_size(self.mesh)
        procs = self.shard[1]
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

    # ---- pipelines -------------------------------------------------------------------------
    @property
    def shard(self) -> tuple[int, int]:
        """``(index, count)`` of this process's share of every batch: the JAX process with a
        mesh, the whole batch without one."""
        if self.mesh is None:
            return 0, 1
        import jax

        return jax.process_index(), jax.process_count()

    def train_indices(self, step: int) -> np.ndarray:
        """Positions in the train split of the rows of the (global) batch of ``step``."""
        order = TrainOrder(self.train_size, self.train_batch_size, self.seed, not self.full_batch)
        return order(step)

    def train_batches(self, shard: tuple[int, int] | None = None) -> grain.MapDataset:
        """Element ``step``: the rows of share ``shard`` (default: this process's) of the
        batch of ``step``, as host NumPy arrays."""
        shard = self.shard if shard is None else shard
        if shard not in self._train_pipelines:
            rows = self.train_batch_size // shard[1]
            order = TrainOrder(self.train_size, rows, self.seed, not self.full_batch)
            self._train_pipelines[shard] = _pipeline(self, "train", order, shard)
        return self._train_pipelines[shard]

    def eval_dataset(self, split: str, shard: tuple[int, int] | None = None) -> grain.MapDataset:
        """One pass over ``split``: element ``k`` is the share ``shard`` of eval batch ``k``,
        with ``weight`` (0 on padding rows)."""
        if split not in self.eval_splits:
            raise ValueError(
                f"{self.name}: unknown eval split {split!r}; valid: {self.eval_splits}"
            )
        shard = self.shard if shard is None else shard
        order = EvalOrder(self._eval_size(split), self.eval_batch_size, shard[1])
        return _pipeline(self, split, order, shard)

    def _put(self, batch: dict[str, np.ndarray]) -> Batch:
        return batch if self.mesh is None else shard_batch(batch, self.mesh)

    def _iterate(self, ds: grain.MapDataset) -> Iterator[Batch]:
        """``ds`` in order, prefetched by grain threads (and worker processes)."""
        import grain

        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.prefetch, prefetch_buffer_size=self.prefetch)
        )
        if self.workers > 0:
            if not flags.FLAGS.is_parsed():
                # grain <= 0.2.18's mp_prefetch reads an absl flag, which raises outside an absl
                # app (google/grain#1355): take the defaults, as an app with no flags would.
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        it = iter(it_ds)
        self._iterators.add(it)
        try:
            for batch in it:
                yield self._put(batch)
        finally:
            self._iterators.discard(it)
            it.close()

    # ---- the interface ---------------------------------------------------------------------
    def train_batch(self, step: int) -> Batch:
        """The batch of training step ``step``: a pure function of (config, step).

        With ``workers > 0``, consecutive steps are served by one :meth:`train_iter` stream
        (the workers draw ahead of the caller); any other step restarts the stream there."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.workers == 0:
            return self._put(self.train_batches()[int(step)])
        if self._stream is None or self._stream_step != step:
            if self._stream is not None:
                self._stream.close()
            self._stream, self._stream_step = self.train_iter(step), step
        self._stream_step += 1
        return next(self._stream)

    def train_iter(self, start_step: int = 0) -> Iterator[Batch]:
        """Batches of steps ``start_step, start_step + 1, ...`` (prefetched)."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        return self._iterate(self.train_batches()[int(start_step) :])

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """One pass over ``split``; the last batch is padded, ``weight`` is 0 on padding rows."""
        return self._iterate(self.eval_dataset(split))

    def close(self) -> None:
        """Close every iterator this dataset opened (and so stop their worker processes)."""
        self._stream = None
        while self._iterators:
            self._iterators.pop().close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # What worker processes need to decode: no devices, no open iterators.
        state = dict(self.__dict__, mesh=None, _iterators=set(), _train_pipelines={})
        state["_stream"] = None
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.info}>"


def check_fields(config, required: Sequence[str], name: str) -> None:
    missing = [f for f in required if f not in config]
    if missing:
        raise ValueError(f"config.data for {name!r} lacks the fields {missing}")
