"""The Pathfinder generator: label balance, labels checked by an independent flood fill,
determinism, the dataset around it, the LRA-files path, and the sample grid."""

from __future__ import annotations

import io
import time
from collections import deque

import numpy as np
import pytest

from attn_dynamics import data
from attn_dynamics.data import pathfinder, testing


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


def test_generated_dataset_matches_generator():
    c = data.default_config("pathfinder")
    c.batch_size, c.eval_batch_size, c.train_size, c.eval_size = 8, 8, 64, 10
    ds = data.get_dataset(c)
    batch = ds.train_batch(2)
    for row, index in enumerate(ds.train_indices(2)):
        image, label = pathfinder.generate_image(ds.spec, c.seed, int(index))
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
