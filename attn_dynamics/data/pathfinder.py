"""``pathfinder``: Pathfinder images as pixel sequences, generated on the fly or from LRA files.

Two sources (``config.source``):

* ``'generated'`` (default, no download): a procedural generator in the style of Linsley
  et al. (2018) / the LRA release. Every image has two main dashed, curved contours of
  ``contour_length`` paddles, distractor contours (``contour_length // 3`` paddles each, as
  many as the LRA settings' distractor budget allows) and two round markers on contour ends.
  Label 1: both markers are the two ends of one contour; label 0: they sit on the two
  different main contours. Positives and negatives are drawn by the same process (the label is
  drawn first and only decides where the markers go), and negatives pick the pair of ends whose
  distance is closest to the positive one, so ink and marker distance carry no label signal.
  Difficulty is the contour length: 6 (``curv_baseline``), 9, 14 (``curv_contour_length_14``,
  the LRA task), 20. Images are pure functions of ``(seed, split, index)``: random access.
  Two implementations (``config.generator``), same task and knobs, different images:
  ``'vectorized'`` (default; :mod:`.pathfinder_vectorized`, NumPy over the whole batch,
  resolutions 16 to 40) and ``'reference'`` (this module: per image, pure Python with
  backtracking, the generator of the runs recorded before it; kept bit for bit).
* ``'lra'``: the LRA release files (``pathfinder{32,64,128}/<difficulty>/{metadata,imgs}``),
  prepared once into an ArrayRecord tfds dataset by
  :class:`attn_dynamics.data.lra_pathfinder.LraPathfinder` (no TensorFlow needed):
  ``python -m attn_dynamics.data.lra_pathfinder --manual_dir=... --data_dir=...``. Splits are
  the first 80% / next 10% / last 10% of the difficulty's records (as LRA does).

Tokens are pixel intensities ``0..255`` (+ ``token_offset``), row-major, all valid.
``workers > 0`` draws the batches of ``train_iter`` / ``eval_batches`` in that many grain
worker processes (same images); ``close()`` the dataset (or use it in a ``with`` block) to stop
them.

Generator geometry (at 32x32; lengths scale with ``resolution / 32``): paddles 2 px long and
1 px wide, 1 px gaps, turns of at most ``MAX_TURN`` between paddles, marker disks of radius 1.
Consecutive paddles of a contour are within ``spec.link`` pixels (Chebyshev distance) of each
other, and different contours (markers included) are always more than ``spec.link`` pixels
apart, so "connected with neighbourhood radius ``spec.link``" is exactly the label: the tests
check it with an independent flood fill.
"""

from __future__ import annotations

import dataclasses
import math
import random

import ml_collections
import numpy as np
from ml_collections import config_dict

from attn_dynamics.data import base, pathfinder_vectorized
from attn_dynamics.data.pathfinder_geometry import (  # noqa: F401 (re-exported)
    ANGLE_BINS,
    DISTRACTOR_BUDGET,
    MAX_TURN,
    SUB,
    TRIES,
    Spec,
    Stamp,
    stamps,
)
from attn_dynamics.data.pathfinder_geometry import disk_offsets as _disk

SOURCES = ("generated", "lra")
GENERATORS = ("vectorized", "reference")
DIFFICULTIES = {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}


def difficulty_name(contour_length: int) -> str:
    return DIFFICULTIES.get(contour_length, f"curv_contour_length_{contour_length}")


def default_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "pathfinder"
    d.source = "generated"  # 'generated' (no files) | 'lra' (LRA release files)
    # generated: 'vectorized' (NumPy, whole batch) | 'reference' (per image, the recorded runs')
    d.generator = "vectorized"
    d.resolution = 32  # 32 | 64 | 128 (lra); any >= 16 (generated)
    d.contour_length = 14  # paddles per contour: 6 (easy), 9, 14 (LRA hard), 20
    d.token_offset = 0  # 0: tokens 0..255 (vocab 256); 1: 1..256
    d.train_size = 160_000  # generated only (lra: 80% of the difficulty's records)
    d.eval_size = 2_000  # generated: test images; lra: cap per eval split (0: all)
    d.batch_size = 64
    d.eval_batch_size = 64
    d.data_dir = config_dict.placeholder(str)  # lra: tfds data dir
    d.manual_dir = config_dict.placeholder(str)  # lra: folder holding pathfinder32/ etc.
    d.download = False  # lra: prepare from manual_dir if not prepared yet
    d.workers = 0  # processes drawing the batches of train_iter / eval_batches (0: none)
    d.seed = 0
    return d


# --------------------------------------------------------------------------------------------
# The generator


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a 2-D mask by a ``(2r+1)^2`` square (Chebyshev ball), separable."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, radius + 1):
            if axis == 0:
                out[d:] |= src[:-d]
                out[:-d] |= src[d:]
            else:
                out[:, d:] |= src[:, :-d]
                out[:, :-d] |= src[:, d:]
    return out


@dataclasses.dataclass
class Contour:
    paddles: list  # (flat keys, values) per paddle
    ends: tuple[int, int]  # flat pixel index of both ends (marker centres)


class _Drawer:
    """Draws contours one after another; each keeps more than ``link`` px from the others.

    Occupancy is a flat ``bytearray`` (pure-Python indexing beats NumPy on a few pixels).
    """

    BLOCKED = 100

    def __init__(self, spec: Spec, rng: random.Random):
        self.spec, self.rng = spec, rng
        n = spec.resolution
        self.n = n
        self.stamps = stamps(spec)
        self.blocked = np.zeros(n * n, bool)  # within `link` of a committed contour
        self.occ = bytearray(n * n)  # BLOCKED where `blocked`
        self.canvas = np.zeros(n * n, np.float32)
        self.lo, self.hi = spec.margin, n - 1 - spec.margin

    def _marker_ok(self, py: int, px: int) -> bool:
        r = self.spec.marker_radius
        if min(py, px) - r < self.lo or max(py, px) + r > self.hi:
            return False
        base, occ = py * self.n + px, self.occ
        return not any(occ[base + k] for k in _disk(r, self.n))

    def contour(self, length: int, markers: bool, starts: int) -> Contour | None:
        """A self-avoiding walk of ``length`` paddles: depth first, turns tried in random
        order, backtracking when stuck; ``None`` if ``starts`` start points all fail."""
        spec, rng, n, stamp_list = self.spec, self.rng, self.n, self.stamps
        lo, hi = self.lo, self.hi
        r = spec.marker_radius if markers else 0
        lo_q, hi_q = (lo + r) * SUB, (hi - r) * SUB
        half = SUB // 2
        scale = ANGLE_BINS / (2 * math.pi)
        for _ in range(starts):
            span = hi_q - lo_q + 1
            qy, qx = lo_q + int(rng.random() * span), lo_q + int(rng.random() * span)
            start = ((qy + half) // SUB, (qx + half) // SUB)
            if markers and not self._marker_ok(*start):
                continue
            occ = bytearray(self.occ)  # + 1 per own paddle <= k - 2 at depth k
            path: list = []  # (absolute keys, values, end pixel)
            pos = [(qy, qx, rng.uniform(0, 2 * math.pi))]
            todo = [self._turns(True)]
            budget = 12 * length
            while True:
                k = len(path)
                if k == length:
                    if not markers or self._marker_ok(*path[-1][2]):
                        return Contour([p[:2] for p in path], (start, path[-1][2]))
                    todo.append([])
                if not todo[k] or budget == 0:
                    if k == 0 or budget == 0:
                        break
                    todo.pop()
                    pos.pop()
                    path.pop()
                    if k >= 2:
                        for key in path[-1][0]:
                            occ[key] -= 1
                    continue
                budget -= 1
                qy, qx, th_prev = pos[k]
                th = th_prev + todo[k].pop()
                angle = round(th * scale) % ANGLE_BINS
                py, px = qy // SUB, qx // SUB
                st = stamp_list[(angle * SUB + qy % SUB) * SUB + qx % SUB]
                if (
                    py + st.lo[0] < lo
                    or px + st.lo[1] < lo
                    or py + st.hi[0] > hi
                    or px + st.hi[1] > hi
                ):
                    continue
                base = py * n + px
                keys = [base + key for key in st.keys]
                if any(occ[key] for key in keys):
                    continue
                if k >= 1:
                    for key in path[-1][0]:
                        occ[key] += 1
                ey, ex = qy + st.end[0], qx + st.end[1]
                path.append((keys, st.values, ((ey + half) // SUB, (ex + half) // SUB)))
                pos.append((qy + st.step[0], qx + st.step[1], th))
                todo.append(self._turns(False))
        return None

    def _turns(self, first: bool) -> list[float]:
        """Turn angles to try: one per stratum of the allowed range (jittered), visited from
        a random stratum on in a random direction."""
        rng = self.rng
        lo, width = (0.0, 2 * math.pi / TRIES) if first else (-MAX_TURN, 2 * MAX_TURN / TRIES)
        jitter, begin = rng.random(), int(rng.random() * TRIES)
        turns = [lo + ((begin + j) % TRIES + jitter) * width for j in range(TRIES)]
        if rng.random() < 0.5:
            turns.reverse()
        return turns

    def commit(self, c: Contour, markers: bool) -> None:
        ink = np.zeros(self.n * self.n, bool)
        for keys, values in c.paddles:
            np.maximum.at(self.canvas, keys, values)
            ink[keys] = True
        if markers:
            disk = np.asarray(_disk(self.spec.marker_radius, self.n))
            for py, px in c.ends:
                ink[py * self.n + px + disk] = True
        grown = dilate(ink.reshape(self.n, self.n), self.spec.link)
        self.blocked |= grown.reshape(-1)
        self.occ = bytearray(self.blocked.astype(np.uint8) * self.BLOCKED)

    def marker(self, at: tuple[int, int]) -> None:
        disk = np.asarray(_disk(self.spec.marker_radius, self.n))
        self.canvas[at[0] * self.n + at[1] + disk] = 1.0


def _image_seed(seed: int, stream: int, index: int) -> int:
    from attn_dynamics.data.order import random_bits

    return int(random_bits(seed, stream, np.array([index]), 1)[0, 0])


def generate_image(
    spec: Spec, seed: int, index: int, stream: int = base.TRAIN_STREAM, *, details: bool = False
):
    """``(image uint8 [S, S], label)`` for example ``index``; with ``details`` also the markers.

    Deterministic in ``(spec, seed, stream, index)``.
    """
    rng = random.Random(_image_seed(seed, stream, index))
    label = int(rng.random() < 0.5)
    for _attempt in range(100):
        d = _Drawer(spec, rng)
        a = d.contour(spec.contour_length, True, 40)
        if a is None:
            continue
        d.commit(a, True)
        b = d.contour(spec.contour_length, True, 40)
        if b is None:
            continue
        d.commit(b, True)
        break
    else:  # pragma: no cover - never seen for the supported settings
        raise RuntimeError(f"pathfinder generator could not place two contours for {spec}")
    for _ in range(spec.num_distractors):
        c = d.contour(spec.distractor_length, False, 8)
        if c is not None:
            d.commit(c, False)
    (a0, a1), ends_b = a.ends, b.ends
    if label:
        pair = (a0, a1)
    else:
        target = math.dist(a0, a1)
        options = [(p, q) for p in (a0, a1) for q in ends_b]
        pair = options[int(np.argmin([abs(math.dist(p, q) - target) for p, q in options]))]
    for end in pair:
        d.marker(end)
    image = np.rint(d.canvas * 255).astype(np.uint8).reshape(spec.resolution, spec.resolution)
    if details:
        return image, label, pair
    return image, label


def generate_images(spec: Spec, seed: int, indices, stream: int = base.TRAIN_STREAM):
    """``(images uint8 [B, S, S], labels int32 [B])`` for a list of indices."""
    pairs = [generate_image(spec, seed, int(i), stream) for i in indices]
    return np.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs], np.int32)


# --------------------------------------------------------------------------------------------
# The dataset


class Pathfinder(base.Dataset):
    name = "pathfinder"

    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        base.check_fields(config, list(default_config()), self.name)
        c = config
        if c.source not in SOURCES:
            raise ValueError(f"pathfinder: unknown source {c.source!r}; valid: {list(SOURCES)}")
        if c.generator not in GENERATORS:
            raise ValueError(
                f"pathfinder: unknown generator {c.generator!r}; valid: {list(GENERATORS)}"
            )
        if int(c.token_offset) not in (0, 1):
            raise ValueError(f"pathfinder: token_offset must be 0 or 1, got {c.token_offset}")
        self.offset = int(c.token_offset)
        self.resolution = int(c.resolution)
        self.spec = Spec.make(self.resolution, int(c.contour_length))
        self.train_batch_size = int(c.batch_size)
        self.eval_batch_size = int(c.eval_batch_size)
        self._check_batch_sizes()
        if c.source == "generated":
            if int(c.train_size) < 0 or int(c.eval_size) <= 0:
                raise ValueError("pathfinder: generated needs train_size >= 0 and eval_size > 0")
            self.generate = generate_images
            if c.generator == "vectorized":
                pathfinder_vectorized.geometry(self.spec)  # ValueError: size not supported
                self.generate = pathfinder_vectorized.generate_images
            self.train_size = int(c.train_size)
            self.eval_splits = ("test",)
            self.lra = None
        else:
            from attn_dynamics.data import lra_pathfinder

            self.lra = lra_pathfinder.open_splits(
                c, self.resolution, difficulty_name(int(c.contour_length))
            )
            self.train_size = self.lra.ranges["train"][2]
            self.eval_splits = ("validation", "test")
        self.info = {
            "task": "classification",
            "num_classes": 2,
            "vocab_size": 256 + self.offset,
            "seq_len": self.resolution**2,
            "max_len": self.resolution**2,
            "train_size": self.train_size,
        }

    def _eval_size(self, split):
        if self.lra is not None:
            return self.lra.ranges[split][2]
        return int(self.config.eval_size)

    def images(self, split: str, indices) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [B, S, S], labels int32 [B])``."""
        if self.lra is not None:
            return self.lra.images(split, indices)
        stream = base.TRAIN_STREAM if split == "train" else base.EVAL_STREAM
        return self.generate(self.spec, self.seed, indices, stream)

    def _examples(self, split, indices):
        images, labels = self.images(split, indices)
        tokens = images.reshape(len(images), -1).astype(np.int32) + self.offset
        return {"inputs": tokens, "valid": np.ones(tokens.shape, bool), "labels": labels}
