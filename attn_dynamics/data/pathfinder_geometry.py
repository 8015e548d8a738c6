"""Pathfinder paddles and markers, shared by both generators (:mod:`.pathfinder`, the
reference, and :mod:`.pathfinder_vectorized`): the difficulty spec, every paddle shape
rasterised once (a stamp per angle bin and sub-pixel offset), and the marker disk.

Paddles are 2 px long and 1 px wide at 32x32 (lengths scale with ``resolution / 32``), 1 px
gaps, turns of at most ``MAX_TURN`` between paddles; positions are kept in ``1 / SUB`` px.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

DISTRACTOR_BUDGET = {32: 20, 64: 22, 128: 35}  # paddles of distractors (LRA generator args)
ANGLE_BINS = 64
SUB = 4  # positions are kept in 1/SUB pixel units
MAX_TURN = 0.8  # radians between consecutive paddles
TRIES = 6  # turn angles tried per paddle before backtracking


@dataclasses.dataclass(frozen=True)
class Spec:
    resolution: int = 32
    contour_length: int = 14
    paddle_length: float = 2.0
    gap: float = 0.75
    width: float = 1.0
    marker_radius: int = 1
    margin: int = 1
    distractor_length: int = 4
    num_distractors: int = 5
    link: int = 1  # Chebyshev radius that joins consecutive paddles (and nothing else)

    @classmethod
    def make(cls, resolution: int = 32, contour_length: int = 14) -> Spec:
        if resolution < 16:
            raise ValueError(f"pathfinder: resolution must be >= 16, got {resolution}")
        if contour_length < 1:
            raise ValueError(f"pathfinder: contour_length must be >= 1, got {contour_length}")
        s = max(1.0, resolution / 32)
        dlen = max(1, contour_length // 3)
        budget = DISTRACTOR_BUDGET.get(resolution, round(20 * (resolution / 32) ** 2))
        gap = 0.75 * s
        return cls(
            resolution=resolution,
            contour_length=contour_length,
            paddle_length=2.0 * s,
            gap=gap,
            width=1.0 * s,
            marker_radius=max(1, round(s)),
            margin=1,
            distractor_length=dlen,
            num_distractors=budget // dlen,
            link=math.ceil(gap + 0.5 / SUB),
        )


@dataclasses.dataclass(frozen=True)
class Stamp:
    keys: tuple[int, ...]  # flat pixel offsets (row * S + col) from the floor of the start
    values: np.ndarray  # float32 ink in (0, 1]
    lo: tuple[int, int]  # min row/col offset
    hi: tuple[int, int]  # max row/col offset
    end: tuple[int, int]  # paddle end, in 1/SUB px, relative to the start
    step: tuple[int, int]  # next paddle's start (end + gap), relative to the start


def _make_stamp(spec: Spec, angle: int, fy: int, fx: int) -> Stamp:
    """The pixels of a paddle at angle bin ``angle`` starting at sub-pixel offset ``(fy, fx)``.

    Pixels within ``width / 2 + 0.25`` of the segment are ink, with antialiased coverage
    dimmed towards the paddle ends so that the dashes show.
    """
    theta = 2 * math.pi * angle / ANGLE_BINS
    uy, ux = math.sin(theta), math.cos(theta)
    ay, ax = fy / SUB, fx / SUB
    ey = round((ay + spec.paddle_length * uy) * SUB)
    ex = round((ax + spec.paddle_length * ux) * SUB)
    by, bx = ey / SUB, ex / SUB
    half = spec.width / 2
    ext = int(math.ceil(half + 1))
    ys, xs = np.mgrid[
        math.floor(min(ay, by)) - ext : math.ceil(max(ay, by)) + ext + 1,
        math.floor(min(ax, bx)) - ext : math.ceil(max(ax, bx)) + ext + 1,
    ].astype(np.float64)
    dy, dx = by - ay, bx - ax
    along = ((ys - ay) * dy + (xs - ax) * dx) / (dy * dy + dx * dx)
    t = np.clip(along, 0.0, 1.0)
    dist = np.hypot(ys - (ay + t * dy), xs - (ax + t * dx))
    keep = dist <= half + 0.25
    taper = 0.45 + 0.55 * np.clip(4 * along * (1 - along), 0.0, 1.0)
    values = (np.clip(half + 0.5 - dist, 0.0, 1.0) * taper)[keep].astype(np.float32)
    rows, cols = ys[keep].astype(np.int64), xs[keep].astype(np.int64)
    sy = ey + round(spec.gap * uy * SUB)
    sx = ex + round(spec.gap * ux * SUB)
    return Stamp(
        tuple((rows * spec.resolution + cols).tolist()),
        values,
        (int(rows.min()), int(cols.min())),
        (int(rows.max()), int(cols.max())),
        (ey - fy, ex - fx),
        (sy - fy, sx - fx),
    )


@functools.lru_cache(maxsize=16)
def stamps(spec: Spec) -> list[Stamp]:
    """Every paddle shape, indexed by ``(angle * SUB + fy) * SUB + fx``."""
    return [
        _make_stamp(spec, a, fy, fx)
        for a in range(ANGLE_BINS)
        for fy in range(SUB)
        for fx in range(SUB)
    ]


@functools.lru_cache(maxsize=8)
def disk_offsets(radius: int, size: int) -> tuple[int, ...]:
    """Flat offsets of a marker disk (``dy^2 + dx^2 <= r^2 + r``: 3x3 for r = 1)."""
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    keep = dy * dy + dx * dx <= radius * radius + radius
    return tuple((dy[keep] * size + dx[keep]).tolist())
