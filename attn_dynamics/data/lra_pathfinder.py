"""The LRA Pathfinder release as a local tfds dataset (ArrayRecord), prepared without TensorFlow.

The LRA release (``https://storage.googleapis.com/long-range-arena/lra_release.gz``, about
7.7 GB) holds ``lra_release/lra_release/pathfinder{32,64,128,256}/<difficulty>/`` with
``metadata/*.npy`` (text despite the suffix: one line per image, ``<dir> <file> <id> <label>
...``) and ``imgs/<k>/sample_<i>.png``. :class:`LraPathfinder` turns one resolution into a tfds
dataset with one split per difficulty folder found (``curv_baseline``, ``curv_contour_length_9``,
``curv_contour_length_14``, ...). Prepare once (minutes; PNGs are copied, not re-encoded):

    python -m attn_dynamics.data.lra_pathfinder --manual_dir=/path/to/lra_release/lra_release \\
        --data_dir=~/tensorflow_datasets --resolution=32

then train with ``--config.data.source=lra --config.data.data_dir=~/tensorflow_datasets``.
The train / validation / test splits are the first 80% / next 10% / last 10% of the records of
the chosen difficulty (tfds stores them in a hashed, i.e. shuffled, order), as in LRA.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from attn_dynamics.data import tfds_utils
from attn_dynamics.data.base import DatasetNotPrepared

RESOLUTIONS = (32, 64, 128, 256)
URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
TRAIN_FRACTION, VALIDATION_FRACTION = 0.8, 0.1


def find_root(manual_dir: str | os.PathLike, resolution: int) -> pathlib.Path | None:
    """The ``pathfinder{resolution}`` folder under ``manual_dir`` (a few layouts accepted)."""
    base = pathlib.Path(manual_dir).expanduser()
    name = f"pathfinder{resolution}"
    for candidate in (
        base / name,
        base / "lra_release" / name,
        base / "lra_release" / "lra_release" / name,
        base,
    ):
        if candidate.is_dir() and any(candidate.glob("*/metadata")):
            return candidate
    return None


def _png_bytes(path: pathlib.Path, resolution: int) -> bytes:
    """The file's bytes if it is an 8-bit grayscale PNG of the right size, else re-encoded."""
    from PIL import Image

    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        if im.mode == "L" and im.size == (resolution, resolution) and im.format == "PNG":
            return raw
        gray = im.convert("L").resize((resolution, resolution))
    out = io.BytesIO()
    gray.save(out, format="PNG")
    return out.getvalue()


class LraPathfinder(tfds.core.GeneratorBasedBuilder):
    """Pathfinder images of the LRA release, one split per difficulty folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "LRA release files as ArrayRecord."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"pathfinder{r}") for r in RESOLUTIONS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {URL}, extract it, and pass the folder that holds pathfinder32/ "
        "(lra_release/lra_release) as manual_dir."
    )

    @property
    def resolution(self) -> int:
        return int(self.builder_config.name.removeprefix("pathfinder"))

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description="LRA Pathfinder (Linsley et al. 2018; Tay et al. 2021), from local files.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(r, r, 1)),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/google-research/long-range-arena",
        )

    def _split_generators(self, dl_manager):
        root = find_root(dl_manager.manual_dir, self.resolution)
        if root is None:
            raise FileNotFoundError(
                f"no pathfinder{self.resolution}/<difficulty>/metadata under "
                f"{dl_manager.manual_dir}; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        folders = sorted(p.parent for p in root.glob("*/metadata") if p.is_dir())
        return {folder.name: self._generate_examples(folder) for folder in folders}

    def _generate_examples(self, folder: pathlib.Path):
        for meta in sorted(folder.glob("metadata/*.npy")):
            for line in meta.read_text().splitlines():
                parts = line.split()
                if len(parts) < 4:
                    continue
                key = f"{parts[0]}/{parts[1]}"
                yield (
                    key,
                    {
                        "image": _png_bytes(folder / parts[0] / parts[1], self.resolution),
                        "label": int(parts[3]),
                    },
                )


def builder(resolution: int, data_dir: str | None) -> LraPathfinder:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"pathfinder (lra): resolution must be one of {RESOLUTIONS}")
    root = os.path.expanduser(data_dir) if data_dir else tfds_utils.default_data_dir()
    return LraPathfinder(config=f"pathfinder{resolution}", data_dir=root)


def prepare(
    manual_dir: str, data_dir: str | None = None, resolution: int = 32, *, quiet: bool = False
) -> LraPathfinder:
    """Build the ArrayRecord dataset from the extracted release (no TensorFlow needed)."""
    b = builder(resolution, data_dir)
    if quiet:
        tfds.disable_progress_bar()
    b.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(manual_dir),
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        ),
    )
    return b


def prepare_command(manual_dir: str | None, data_dir: str, resolution: int) -> str:
    return (
        f"python -m attn_dynamics.data.lra_pathfinder --manual_dir={manual_dir or '<lra_release>'}"
        f" --data_dir={data_dir} --resolution={resolution}"
    )


class LraSplits:
    """Train / validation / test index ranges over one difficulty split (e.g.
    ``curv_contour_length_14``) of the prepared data."""

    def __init__(self, config, resolution: int, difficulty: str):
        with tfds_utils._quiet_missing_info():
            b = builder(resolution, config.data_dir)
            prepared = b.is_prepared()
        root = str(pathlib.Path(b.data_dir).parents[2])
        if not prepared:
            if config.download and config.manual_dir:
                b = prepare(config.manual_dir, root, resolution)
            else:
                raise DatasetNotPrepared(
                    f"pathfinder: LRA Pathfinder{resolution} is not prepared in data_dir={root} "
                    f"(looked for {b.data_dir}); download and extract {URL} (no TensorFlow "
                    f"needed), then run: {prepare_command(config.manual_dir, root, resolution)} "
                    "(or set config.data.manual_dir and config.data.download=True; or use "
                    "config.data.source=generated, which needs no files)"
                )
        tfds_utils.check_array_record("pathfinder", b.name, b, root)
        sources = dict(b.as_data_source())
        if difficulty not in sources:
            raise ValueError(
                f"pathfinder (lra): no split {difficulty!r} (set config.data.contour_length "
                f"to match) in {b.data_dir}; available: {sorted(sources)}"
            )
        self.source = sources[difficulty]
        n = len(self.source)
        n_train, n_val = int(n * TRAIN_FRACTION), int(n * VALIDATION_FRACTION)
        cap = int(config.eval_size)
        self.ranges = {
            "train": (difficulty, 0, n_train),
            "validation": (difficulty, n_train, n_val),
            "test": (difficulty, n_train + n_val, n - n_train - n_val),
        }
        for split in ("validation", "test"):
            name, start, size = self.ranges[split]
            self.ranges[split] = (name, start, min(size, cap) if cap > 0 else size)
        if n_train < 1:
            raise ValueError(f"pathfinder (lra): split {difficulty!r} is empty")

    def images(self, split: str, indices) -> tuple[np.ndarray, np.ndarray]:
        _, start, _ = self.ranges[split]
        records = self.source.__getitems__([start + int(i) for i in indices])
        images = np.stack([r["image"][..., 0] for r in records])
        return images, np.asarray([r["label"] for r in records], np.int32)


def open_splits(config, resolution: int, difficulty: str) -> LraSplits:
    return LraSplits(config, resolution, difficulty)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual_dir", required=True, help="folder holding pathfinder32/ etc.")
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
    parser.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS)
    args = parser.parse_args(argv)
    b = prepare(args.manual_dir, args.data_dir, args.resolution)
    print(f"prepared {b.data_dir}: {dict(b.info.splits)}")


if __name__ == "__main__":
    main()
