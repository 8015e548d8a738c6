"""Tiny local stand-ins for the tfds datasets, for tests and benchmarks (no download, no TF).

:func:`build_tiny_tfds` prepares a few random examples of ``imdb_reviews``, ``mnist`` or
``cifar10`` in a ``data_dir`` under the *real* dataset's name, config and version, in
ArrayRecord format, by subclassing the real tfds builder and replacing only its example
generator. The pipelines then read them exactly as they would read the prepared public data.
:func:`write_lra_pathfinder_files` writes a miniature LRA Pathfinder release (metadata and
PNGs, drawn by the generator) for the ``source='lra'`` path.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

TINY = ("imdb_reviews", "mnist", "cifar10")
_WORDS = ["good", "bad", "film", "plot", "actor", "naïve", "déjà", "vu", "the", "a", "—", "ok"]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(out, format="PNG")
    return out.getvalue()


def _examples(name: str, n: int, rng: np.random.Generator, split: str):
    for i in range(n):
        label = int(rng.integers(2 if name == "imdb_reviews" else 10))
        if name == "imdb_reviews":
            words = rng.choice(_WORDS, size=int(rng.integers(1, 300)))
            yield f"{split}_{i}", {"text": " ".join(words), "label": label}
        else:
            shape = (28, 28, 1) if name == "mnist" else (32, 32, 3)
            ex = {"image": _png(rng.integers(0, 256, shape, dtype=np.uint8)), "label": label}
            if name == "cifar10":
                ex["id"] = f"{split}_{i}"
            yield f"{split}_{i}", ex


def build_tiny_tfds(
    name: str,
    data_dir: str | pathlib.Path,
    *,
    num_train: int = 48,
    num_test: int = 20,
    seed: int = 0,
) -> str:
    """Prepare a tiny ``name`` (imdb_reviews | mnist | cifar10) in ``data_dir``; returns it."""
    import tensorflow_datasets as tfds

    if name not in TINY:
        raise ValueError(f"no tiny builder for {name!r}; valid: {list(TINY)}")
    parent = tfds.builder_cls(name)
    splits = {"train": num_train, "test": num_test}
    if name == "imdb_reviews":
        splits["unsupervised"] = 2

    def _split_generators(self, dl_manager):
        rng = np.random.default_rng(seed)
        return {s: _examples(name, n, rng, s) for s, n in splits.items()}

    tiny = type(
        f"Tiny{parent.__name__}",
        (parent,),
        {
            "name": name,
            "pkg_dir_path": parent._get_pkg_dir_path(),
            "_split_generators": _split_generators,
            "__module__": __name__,
        },
        skip_registration=True,
    )
    tfds.disable_progress_bar()
    builder = tiny(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    return str(data_dir)


def write_lra_pathfinder_files(
    manual_dir: str | pathlib.Path,
    *,
    resolution: int = 32,
    contour_length: int = 14,
    num_images: int = 40,
    per_metadata_file: int = 16,
    seed: int = 0,
) -> pathlib.Path:
    """A miniature ``pathfinder{resolution}/<difficulty>/{metadata,imgs}`` tree under
    ``manual_dir`` (returned)."""
    from attn_dynamics.data import pathfinder

    spec = pathfinder.Spec.make(resolution, contour_length)
    folder = pathlib.Path(manual_dir) / f"pathfinder{resolution}"
    folder = folder / pathfinder.difficulty_name(contour_length)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    lines: dict[int, list[str]] = {}
    for i in range(num_images):
        sub = i // per_metadata_file
        (folder / "imgs" / str(sub)).mkdir(parents=True, exist_ok=True)
        image, label = pathfinder.generate_image(spec, seed, i)
        (folder / "imgs" / str(sub) / f"sample_{i}.png").write_bytes(_png(image[..., None]))
        lines.setdefault(sub, []).append(f"imgs/{sub} sample_{i}.png {i} {label} {contour_length}")
    for sub, rows in lines.items():
        (folder / "metadata" / f"{sub}.npy").write_text("\n".join(rows) + "\n")
    return pathlib.Path(manual_dir)
