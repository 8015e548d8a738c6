"""The Pathfinder generators (vectorised and reference): label balance, labels checked by
independent flood fills, determinism and random access, the reference kept bit for bit, the
dataset around them, the LRA-files path, and the sample grid."""

from __future__ import annotations

import hashlib
import io
import time
from collections import deque

import numpy as np
import pytest

from attn_dynamics import data
from attn_dynamics.data import base, pathfinder, pathfinder_vectorized, testing


def connected(image: np.ndarray, a: tuple[int, int], b: tuple[int, int], radius: int) -> bool:
    """Breadth-first search over ink pixels (> 0), neighbours within Chebyshev ``radius``."""
    ink = image > 0
    n_rows, n_cols = ink.shape
    seen = np.zeros_like(ink)
    seen[a] = True
    queue = deque([a])
    offsets = [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy or dx
    ]
    while queue:
        y, x = queue.popleft()
        if (y, x) == b:
            return True
        for dy, dx in offsets:
            yy, xx = y + dy, x + dx
            if 0 <= yy < n_rows and 0 <= xx < n_cols and ink[yy, xx] and not seen[yy, xx]:
                seen[yy, xx] = True
                queue.append((yy, xx))
    return False


def check_images(spec: pathfinder.Spec, count: int, seed: int = 0) -> float:
    labels = []
    for i in range(count):
        image, label, (m0, m1) = pathfinder.generate_image(spec, seed, i, details=True)
        assert image.shape == (spec.resolution,) * 2 and image.dtype == np.uint8
        r = spec.marker_radius
        for y, x in (m0, m1):  # the markers are drawn, fully bright
            assert (image[y - r : y + r + 1, x - r : x + r + 1][r, :] == 255).all()
        assert connected(image, m0, m1, spec.link) == bool(label), (spec, seed, i)
        labels.append(label)
    return float(np.mean(labels))


def test_balance_and_connectivity_2000_images():
    spec = pathfinder.Spec.make(32, 14)
    assert spec.link == 1  # at 32x32 the check is a plain 8-connected flood fill
    balance = check_images(spec, 2000)
    assert 0.45 <= balance <= 0.55, balance


@pytest.mark.parametrize(
    "resolution,length,count", [(32, 6, 200), (32, 9, 200), (32, 20, 200), (64, 14, 60)]
)
def test_connectivity_other_difficulties(resolution, length, count):
    spec = pathfinder.Spec.make(resolution, length)
    balance = check_images(spec, count, seed=1)
    assert 0.3 < balance < 0.7


def test_difficulty_means_longer_contours():
    ink = {}
    for length in (6, 14, 20):
        spec = pathfinder.Spec.make(32, length)
        ink[length] = np.mean(
            [(pathfinder.generate_image(spec, 0, i)[0] > 0).mean() for i in range(30)]
        )
    assert ink[6] < ink[14] < ink[20]


def test_deterministic_random_access():
    spec = pathfinder.Spec.make(32, 14)
    a = [pathfinder.generate_image(spec, 3, i) for i in (5, 0, 9)]
    b = [pathfinder.generate_image(spec, 3, i) for i in (9, 5, 0)]
    for (x, lx), (y, ly) in zip(a, [b[1], b[2], b[0]], strict=True):
        np.testing.assert_array_equal(x, y)
        assert lx == ly
    assert not np.array_equal(a[0][0], pathfinder.generate_image(spec, 4, 5)[0])
    test_image = pathfinder.generate_image(spec, 3, 5, stream=3)[0]
    assert not np.array_equal(a[0][0], test_image)  # train and test streams differ


# ---- the vectorised generator ---------------------------------------------------------------


def check_vectorized(
    spec: pathfinder.Spec, count: int, seed: int, stream: int = base.TRAIN_STREAM
) -> float:
    """Shape, bright markers, and label == the BFS flood fill, on ``count`` images."""
    images, labels, markers = pathfinder_vectorized.generate_images(
        spec, seed, np.arange(count), stream, details=True
    )
    assert images.shape == (count, spec.resolution, spec.resolution)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    for image, label, (m0, m1) in zip(images, labels, markers, strict=True):
        assert image[tuple(m0)] == image[tuple(m1)] == 255
        assert connected(image, tuple(m0), tuple(m1), spec.link) == bool(label)
    return float(labels.mean())


def test_vectorized_balance_and_connectivity_2000_images():
    balance = check_vectorized(pathfinder.Spec.make(32, 14), 2000, seed=0)
    assert 0.45 <= balance <= 0.55, balance


@pytest.mark.parametrize("resolution,length", [(16, 6), (32, 6), (32, 9), (32, 20), (40, 14)])
def test_vectorized_connectivity_other_difficulties(resolution, length):
    spec = pathfinder.Spec.make(resolution, length)
    assert 0.3 < check_vectorized(spec, 200, seed=1) < 0.7


@pytest.mark.parametrize("resolution,length", [(16, 6), (32, 14)])
def test_vectorized_labels_equal_scipy_flood_fill(resolution, length):
    """On fresh draws (a seed and the test stream used nowhere else): the label is "the two
    markers lie in one 8-connected component of the ink" (link is 1 at these sizes)."""
    from scipy import ndimage

    spec = pathfinder.Spec.make(resolution, length)
    assert spec.link == 1
    images, labels, markers = pathfinder_vectorized.generate_images(
        spec, 11, np.arange(1000, 1400), base.EVAL_STREAM, details=True
    )
    for image, label, (m0, m1) in zip(images, labels, markers, strict=True):
        components, _ = ndimage.label(image > 0, structure=np.ones((3, 3)))
        assert components[tuple(m0)] > 0
        assert (components[tuple(m0)] == components[tuple(m1)]) == bool(label)
    assert 0.4 < labels.mean() < 0.6


def test_vectorized_difficulty_means_more_ink():
    ink = {}
    for length in (6, 14, 20):
        images, _ = pathfinder_vectorized.generate_images(
            pathfinder.Spec.make(32, length), 0, np.arange(64)
        )
        ink[length] = (images > 0).mean()
    assert ink[6] < ink[14] < ink[20]


def test_vectorized_random_access_and_batch_order_independence():
    spec = pathfinder.Spec.make(16, 6)
    gen = pathfinder_vectorized.generate_images
    a_images, a_labels = gen(spec, 3, [5, 0, 9])
    b_images, b_labels = gen(spec, 3, [9, 77, 5, 0, 1])
    np.testing.assert_array_equal(a_images, b_images[[2, 3, 0]])
    np.testing.assert_array_equal(a_labels, b_labels[[2, 3, 0]])
    for i, index in enumerate([5, 0, 9]):  # alone, in a batch of one
        np.testing.assert_array_equal(gen(spec, 3, [index])[0][0], a_images[i])
    assert not np.array_equal(a_images[0], gen(spec, 4, [5])[0][0])  # seeds differ
    assert not np.array_equal(a_images[0], gen(spec, 3, [5], 3)[0][0])  # streams differ


def test_vectorized_sizes_outside_its_range_say_use_the_reference():
    with pytest.raises(ValueError, match="generator='reference'"):
        pathfinder_vectorized.geometry(pathfinder.Spec.make(64, 14))
    c = data.default_config("pathfinder")
    c.resolution = 64
    with pytest.raises(ValueError, match="generator='reference'"):
        data.get_dataset(c)
    c.generator = "reference"
    assert data.get_dataset(c).spec.resolution == 64


# ---- the reference generator: unchanged, still selectable ---------------------------------

# sha256[:16] of images + labels of indices (0, 1, 2, 7, 1000), computed before the vectorised
# generator was added (commit 9d03846): the recorded runs' images.
REFERENCE_HASHES = {
    (16, 6, 0, 2): "5e60a294ad2c1060",
    (32, 14, 0, 2): "e8947b27755ffe81",
    (16, 6, 1, 3): "da553d0d99bdf68a",
}


@pytest.mark.parametrize("key", sorted(REFERENCE_HASHES))
def test_reference_generator_is_unchanged(key):
    resolution, length, seed, stream = key
    images, labels = pathfinder.generate_images(
        pathfinder.Spec.make(resolution, length), seed, [0, 1, 2, 7, 1000], stream
    )
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.int32).tobytes()).hexdigest()
    assert digest[:16] == REFERENCE_HASHES[key]


def test_recorded_config_selects_the_reference_generator():
    """``pathfinder_kernels:cpu`` with ``generator='reference'`` gives the recorded runs'
    batches (the hash of step 5's batch, computed before the change); the default draws
    other images of the same shape."""
    from configs import pathfinder_kernels

    c = pathfinder_kernels.get_config("cpu")
    assert c.data.generator == "vectorized"
    new = data.get_dataset(c.data).train_batch(5)
    c.data.generator = "reference"
    old = data.get_dataset(c.data).train_batch(5)
    digest = hashlib.sha256(old["inputs"].tobytes() + old["labels"].tobytes()).hexdigest()
    assert digest[:16] == "63f98f62324806ea"
    assert new["inputs"].shape == old["inputs"].shape == (32, 256)
    assert not np.array_equal(new["inputs"], old["inputs"])


def one_image(generator: str, spec, seed: int, index: int):
    if generator == "reference":
        return pathfinder.generate_image(spec, seed, index)
    images, labels = pathfinder_vectorized.generate_images(spec, seed, [index])
    return images[0], labels[0]


@pytest.mark.parametrize("generator", pathfinder.GENERATORS)
def test_generated_dataset_matches_generator(generator):
    c = data.default_config("pathfinder")
    c.batch_size, c.eval_batch_size, c.train_size, c.eval_size = 8, 8, 64, 10
    c.generator = generator
    ds = data.get_dataset(c)
    batch = ds.train_batch(2)
    for row, index in enumerate(ds.train_indices(2)):
        image, label = one_image(generator, ds.spec, c.seed, int(index))
        np.testing.assert_array_equal(batch["inputs"][row], image.reshape(-1))
        assert batch["labels"][row] == label
    assert batch["valid"].all() and ds.info["seq_len"] == 1024
    assert [len(b["labels"]) for b in ds.eval_batches("test")] == [8, 8]
    c.token_offset = 1
    assert data.get_dataset(c).train_batch(2)["inputs"].min() == 1


def test_bad_configs():
    c = data.default_config("pathfinder")
    c.source = "web"
    with pytest.raises(ValueError, match="valid: \\['generated', 'lra'\\]"):
        data.get_dataset(c)
    c = data.default_config("pathfinder")
    c.resolution = 8
    with pytest.raises(ValueError, match="resolution"):
        data.get_dataset(c)
    c = data.default_config("pathfinder")
    c.generator = "fast"
    with pytest.raises(ValueError, match="valid: \\['vectorized', 'reference'\\]"):
        data.get_dataset(c)


def test_lra_source_reads_the_release_layout(tmp_path):
    from PIL import Image

    manual = testing.write_lra_pathfinder_files(tmp_path / "release", num_images=30)
    c = data.default_config("pathfinder")
    c.source, c.data_dir, c.manual_dir, c.download = (
        "lra",
        str(tmp_path / "tfds"),
        str(manual),
        True,
    )
    c.batch_size, c.eval_batch_size = 4, 4
    ds = data.get_dataset(c)
    assert ds.eval_splits == ("validation", "test")
    assert ds.train_size == 24 and ds._eval_size("validation") == ds._eval_size("test") == 3
    # every record equals its PNG and metadata line
    folder = manual / "pathfinder32" / "curv_contour_length_14"
    truth = {}
    for meta in folder.glob("metadata/*.npy"):
        for line in meta.read_text().splitlines():
            d, f, _, label, *_ = line.split()
            png = np.asarray(Image.open(io.BytesIO((folder / d / f).read_bytes())))
            truth[png.tobytes()] = int(label)
    seen = set()
    for split in ("train", "validation", "test"):
        size = ds.train_size if split == "train" else ds._eval_size(split)
        images, labels = ds.images(split, np.arange(size))
        for image, label in zip(images, labels, strict=True):
            assert truth[image.tobytes()] == label
            seen.add(image.tobytes())
    assert len(seen) == 30  # the three splits partition the records
    c.contour_length = 6
    with pytest.raises(ValueError, match="curv_baseline"):
        data.get_dataset(c)


def _runs(mask: np.ndarray, min_length: int = 20) -> list[tuple[int, int]]:
    """``[start, stop)`` of every run of True longer than ``min_length``."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a > min_length]


def test_sample_grid_shows_the_generated_images(tmp_path):
    import importlib.util
    import pathlib

    from PIL import Image

    path = pathlib.Path(__file__).parents[1] / "docs" / "make_pathfinder_grid.py"
    spec = importlib.util.spec_from_file_location("make_pathfinder_grid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.make_grid(tmp_path / "grid.png", per_row=2, seed=3)
    pixels = np.asarray(Image.open(out).convert("L")).astype(int)
    # The tiles are the dark blocks on the white figure: 2 columns, one row per difficulty.
    dark = pixels < 128
    cols = _runs(dark.mean(0) > 0.3)
    rows = _runs(dark[:, slice(*cols[0])].mean(1) > 0.5)
    assert len(cols) == 2 and len(rows) == len(module.LENGTHS)
    for (r0, r1), length in zip(rows, module.LENGTHS, strict=True):
        for col, (c0, c1) in enumerate(cols):
            # the centre of each of the 32 x 32 cells of the tile, drawn nearest-neighbour
            ys = (r0 + (np.arange(32) + 0.5) * (r1 - r0) / 32).astype(int)
            xs = (c0 + (np.arange(32) + 0.5) * (c1 - c0) / 32).astype(int)
            image, _ = pathfinder.generate_image(pathfinder.Spec.make(32, length), 3, col)
            assert np.abs(pixels[np.ix_(ys, xs)] - image).max() <= 1, (length, col)


@pytest.mark.slow
def test_worker_processes_draw_the_same_batches_and_stop_on_close():
    import multiprocessing

    c = data.default_config("pathfinder")
    c.batch_size, c.train_size = 8, 64
    plain = data.get_dataset(c)
    c.workers = 2
    with data.get_dataset(c) as pooled:
        for step in (3, 4):  # consecutive steps: one stream of batches drawn by the workers
            a, b = plain.train_batch(step), pooled.train_batch(step)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        assert len(multiprocessing.active_children()) >= 2  # the grain workers
    # leaving the block closed the stream left open, and with it its workers
    deadline = time.time() + 30
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
