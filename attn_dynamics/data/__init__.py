"""Input pipelines: one registry of datasets behind one interface.

    from attn_dynamics import data
    cfg = data.default_config("imdb_bytes")       # every field of that dataset, name included
    ds = data.get_dataset(config.data, mesh=None)  # cheap; ValueError / DatasetNotPrepared
    ds.info                                      # task, shapes, sizes
    ds.train_batch(step)                         # a pure function of (config, step)
    ds.train_iter(start_step)                    # batches of start_step, start_step + 1, ...
    ds.eval_splits, ds.eval_batches(split)       # finite passes, padded, with 'weight'
    ds.train_batches()[step]                     # the grain MapDataset behind train_batch
    ds.close()  # or `with data.get_dataset(...) as ds:`: stops prefetch threads and workers

Batches: regression ``{'inputs' f32 [B, N, d], 'targets' f32 [B, N, out_dim]}``; classification
``{'inputs' i32 [B, T], 'valid' bool [B, T], 'labels' i32 [B]}``; eval batches add ``'weight'``
f32 [B] (0 on padding rows). With a mesh (axis ``'data'``) they are ``jax.Array``s sharded over
the batch axis; each process builds only its own rows.

Pipelines are grain ``MapDataset``s (random access by step; iteration through grain's
prefetch threads and, with ``config.workers``, worker processes): see :mod:`.base`.

Datasets: ``synthetic_regression`` (the theory setting), ``imdb_bytes`` (LRA Text),
``image_seq`` (mnist / cifar10 pixels; LRA Image), ``pathfinder`` (generated or LRA files),
``order_lookback`` and ``order_precedence`` (order-dependent synthetic tasks with length
extrapolation splits). Real datasets are tfds data read without TensorFlow, offline.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from attn_dynamics.data import image, order, pathfinder, student_teacher, synthetic, text
from attn_dynamics.data.base import Dataset, DatasetNotPrepared, shard_batch

__all__ = [
    "Dataset",
    "DatasetNotPrepared",
    "default_config",
    "get_dataset",
    "names",
    "register",
    "shard_batch",
]

_REGISTRY: dict[str, tuple[Callable[[], ml_collections.ConfigDict], Callable[..., Dataset]]] = {
    "synthetic_regression": (synthetic.default_config, synthetic.SyntheticRegression),
    "imdb_bytes": (text.default_config, text.ImdbBytes),
    "image_seq": (image.default_config, image.ImageSeq),
    "pathfinder": (pathfinder.default_config, pathfinder.Pathfinder),
    "order_lookback": (lambda: order.default_config("order_lookback"), order.OrderTask),
    "order_precedence": (lambda: order.default_config("order_precedence"), order.OrderTask),
    "student_teacher_regression": (
        student_teacher.default_config,
        student_teacher.StudentTeacherRegression,
    ),
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid: {names()}")
    return _REGISTRY[name]


def register(name: str, default_config: Callable, factory: Callable) -> None:
    """Add a dataset: ``default_config()`` -> ConfigDict, ``factory(config, mesh)`` -> Dataset."""
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    _REGISTRY[name] = (default_config, factory)


def default_config(name: str) -> ml_collections.ConfigDict:
    """Every field of dataset ``name`` with its default (unset ones are placeholders)."""
    return _lookup(name)[0]()


def get_dataset(config: ml_collections.ConfigDict, mesh=None) -> Dataset:
    """The dataset ``config.name``. Validation and the "is it prepared" check run first and
    cheaply: ValueError for a bad config, :class:`DatasetNotPrepared` (one line saying how to
    prepare it) for tfds data missing locally. Nothing touches the network unless
    ``config.download`` is True."""
    return _lookup(config.name)[1](config, mesh)
