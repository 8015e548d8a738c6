"""Opening prepared tensorflow-datasets data offline, as ArrayRecord, without TensorFlow.

``tensorflow_datasets`` is imported here only (lazily), never TensorFlow: records are read
through ``builder.as_data_source()`` (ArrayRecord random access) and decoded with NumPy/PIL.
Preparing the public datasets (imdb_reviews, mnist, cifar10) generally needs TensorFlow and
the network: that is a one-time step on a machine with internet, see :func:`prepare_command`.
"""

from __future__ import annotations

import contextlib
import logging
import os

from attn_dynamics.data.base import DatasetNotPrepared


def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


def default_data_dir() -> str:
    """tfds's data dir when none is given: ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def prepare_command(tfds_name: str, data_dir: str) -> str:
    return (
        'pip install tensorflow tensorflow-datasets && python -c "import tensorflow_datasets '
        f"as tfds; tfds.builder('{tfds_name}', data_dir='{data_dir}')"
        ".download_and_prepare(file_format='array_record')\""
    )


class _MissingInfoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _quiet_missing_info():
    """Hide tfds's warning about an unprepared folder: our own error says it better."""
    log = logging.getLogger("absl")
    f = _MissingInfoFilter()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


def open_builder(dataset: str, tfds_name: str, data_dir: str | None, download: bool = False):
    """A prepared tfds builder in ArrayRecord format, or :class:`DatasetNotPrepared` (one line).

    Never touches the network unless ``download`` is True (``try_gcs=False`` always).
    """
    lib = tfds()
    root = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    with _quiet_missing_info():
        builder = lib.builder(tfds_name, data_dir=root, try_gcs=False)
        prepared = builder.is_prepared()
    if not prepared:
        if download:
            builder.download_and_prepare(file_format="array_record")
        else:
            raise DatasetNotPrepared(
                f"{dataset}: tfds dataset '{tfds_name}' is not prepared in data_dir={root} "
                f"(looked for {builder.data_dir}); prepare it once on a machine with internet: "
                f"{prepare_command(tfds_name, root)} ; then copy {root}/{tfds_name.split('/')[0]} "
                "here (or set config.data.data_dir), or set config.data.download=True"
            )
    check_array_record(dataset, tfds_name, builder, root)
    return builder


def check_array_record(dataset: str, tfds_name: str, builder, root: str) -> None:
    fmt = builder.info.file_format
    fmt_name = getattr(fmt, "value", str(fmt))
    if fmt_name != "array_record":
        raise DatasetNotPrepared(
            f"{dataset}: tfds dataset '{tfds_name}' in data_dir={root} is prepared as "
            f"{fmt_name}, but reading without TensorFlow needs ArrayRecord; re-prepare it: "
            f"{prepare_command(tfds_name, root)} (or convert it with `tfds convert_format "
            f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record`)"
        )


def data_sources(builder) -> dict:
    """``{split: ArrayRecordDataSource}``: random access, ``__getitems__`` for batches."""
    return dict(builder.as_data_source())


class TfdsDataset:
    """Mixin for :class:`~attn_dynamics.data.base.Dataset`: examples from tfds data sources.

    ``self.ranges`` maps each split of ours to ``(tfds split, first record, number of records)``
    so a split can be a slice of a tfds split (Pathfinder's train/validation/test).
    """

    ranges: dict[str, tuple[str, int, int]]

    def _open(self, tfds_name: str, *, train: str = "train", evals=("test",)) -> None:
        c = self.config
        builder = open_builder(self.name, tfds_name, c.data_dir, bool(c.download))
        self.sources = data_sources(builder)
        self.ranges = {"train": (train, 0, len(self.sources[train]))}
        for split in evals:
            self.ranges[split] = (split, 0, len(self.sources[split]))
        self._finish_ranges(evals)

    def _finish_ranges(self, evals) -> None:
        cap = int(self.config.eval_size)
        for split in evals:
            name, start, size = self.ranges[split]
            self.ranges[split] = (name, start, min(size, cap) if cap > 0 else size)
        self.train_size = self.ranges["train"][2]
        self.eval_splits = tuple(evals)
        if self.train_size < 1:
            raise ValueError(f"{self.name}: the train split is empty")

    def _records(self, split: str, indices) -> list[dict]:
        name, start, _ = self.ranges[split]
        return self.sources[name].__getitems__([start + int(i) for i in indices])

    def _eval_size(self, split: str) -> int:
        return self.ranges[split][2]
