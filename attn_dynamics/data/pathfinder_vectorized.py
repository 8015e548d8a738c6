"""The vectorised Pathfinder generator: all images of a batch drawn at once with NumPy.

The task, knobs, paddle stamps and marker disks are the reference generator's
(:mod:`attn_dynamics.data.pathfinder`, from :mod:`.pathfinder_geometry`); the search differs,
so the images differ. The reference walks one contour at a time in pure Python and
backtracks when stuck. Here every contour of the batch walks in lock step, one paddle a step:

* a contour is a group of ``replicas`` walks; each walk tries ``TRIES`` turns in random order
  and takes the first that fits. A stuck walk takes over a living walk of its group and another
  of that walk's admissible turns (backtracking by one step, in parallel); the group fails
  when all its walks are stuck at once.
* the two main contours: ``candidates`` contours per image are walked in the empty frame, and
  the first pair ``(i, j, s)`` where candidate j moved by the symmetry ``s`` of the square
  keeps clear of candidate i is taken: two random contours conditioned on lying apart. The
  frame and the connectivity rule are symmetric, so a moved contour is a contour; the 8
  symmetries make a pair that fits 8 times likelier than without. Images with no such pair
  draw again with fresh bits (a few per cent at 32x32, about half of the 16x16 images).
  Which contour carries the positive markers is a coin flip.
* distractors all walk at once around the main contours, then are kept in order while they
  keep clear of those kept before (the reference walks each around the ones before); the
  others are left out, as in the reference.

Occupancy is a bitset: one ``uint64`` per row of the grid (the image padded by ``pad``, its
pixels outside ``[margin, resolution - 1 - margin]`` blocked), so whether a paddle fits,
bounds included, is one AND of a 64-bit window around the walk with the paddle's mask. Both
must fit in 64 bits: resolutions 16 to 40 (:func:`geometry` raises ValueError beyond; use the
reference generator there).

The label rests on the reference's guarantees: consecutive paddles of a contour are within
``spec.link`` px (Chebyshev), and every pixel of a contour and its marker disks is more than
``spec.link`` px from every other contour, so "the markers are connected with neighbourhood
radius ``link``" is exactly the label (the tests check it with two flood fills).

Randomness is counter-based (:func:`attn_dynamics.data.order.random_bits` of ``(seed,
stream, index)`` and a draw number) and every operation is row-wise, so an image is a pure
function of ``(spec, seed, stream, index)`` whatever batch it is drawn in.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from attn_dynamics.data import base, order
from attn_dynamics.data.pathfinder_geometry import (
    ANGLE_BINS,
    MAX_TURN,
    SUB,
    TRIES,
    Spec,
    disk_offsets,
    stamps,
)

WORD = 64  # bits per grid row
TAG = 0x7A7F << 48  # random_bits streams of this generator: TAG | stream << 32 | draw
LABEL_DRAW, DISTRACTOR_DRAW, MAIN_DRAW = 0, 1, 2  # MAIN_DRAW + round: that round's candidates
MAX_ROUNDS = 50  # rounds of main-contour candidates before giving up
_U = np.uint64


@dataclasses.dataclass(frozen=True)
class Search:
    """How hard to search: walks per contour, main-contour candidates per image and round,
    walks per distractor."""

    replicas: int
    candidates: int
    distractor_replicas: int


def search_for(spec: Spec) -> Search:
    # Small images leave little room for two contours: more candidates to pair. Tuned for
    # batch time at 16x16 contour 6 and 32x32 contour 14 (benchmarks/data.py).
    if spec.resolution < 24:
        return Search(replicas=8, candidates=16, distractor_replicas=4)
    return Search(replicas=4, candidates=4, distractor_replicas=4)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The spec's paddles as bit masks on the padded grid (pixel ``(y, x)`` is bit ``x`` of
    row ``y``; a paddle's window is ``height`` x ``span`` pixels from its start's floor plus
    ``(top, left)``, bit ``r * span + c`` for pixel ``(r, c)`` of the window)."""

    spec: Spec
    pad: int
    size: int  # grid rows and columns: resolution + 2 * pad
    top: int
    left: int
    height: int
    span: int
    window: np.ndarray  # uint64 [stamps]: the paddle's pixels in its window
    rows: np.ndarray  # uint64 [stamps, height]: the same, one word per window row
    end: np.ndarray  # int64 [stamps, 2]: end pixel (marker centre) from the start's floor
    move: np.ndarray  # int64 [stamps, 2]: next start's floor from this start's floor
    next_frac: np.ndarray  # int64 [stamps]: next start's sub-pixel offset, fy * SUB + fx
    keys: np.ndarray  # int64 [stamps, P]: canvas offsets (flat, width ``size``), repeated
    values: np.ndarray  # float32 [stamps, P]: ink (0 on the repeats)
    disk: np.ndarray  # uint64 [2r+1]: marker disk rows, bit 0 = column centre - r
    disk_keys: np.ndarray  # int64 [D]: canvas offsets of the disk
    border: np.ndarray  # uint64 [size]: the blocked frame


@functools.lru_cache(maxsize=16)
def geometry(spec: Spec) -> Geometry:
    table, n = stamps(spec), spec.resolution
    # Stamp keys are row * n + col with |col| < n / 2: split them back into (row, col).
    pixels = []
    for st in table:
        rows, cols = divmod(np.asarray(st.keys) + n // 2, n)
        pixels.append((rows, cols - n // 2))
    top = min(int(r.min()) for r, _ in pixels)
    left = min(int(c.min()) for _, c in pixels)
    height = max(int(r.max()) for r, _ in pixels) - top + 1
    span = max(int(c.max()) for _, c in pixels) - left + 1
    stride = max(abs(v) for st in table for v in (*st.step, *st.end)) // SUB + 1
    pad = max(-top, -left, height + top, span + left) + stride + spec.marker_radius + 1
    size = n + 2 * pad
    if height * span > WORD or size > WORD:
        raise ValueError(
            f"pathfinder: the vectorized generator supports resolutions up to 40 (got {n}); "
            "set data.generator='reference'"
        )
    window = np.zeros(len(table), _U)
    rows_bits = np.zeros((len(table), height), _U)
    width = max(len(st.keys) for st in table)
    keys = np.zeros((len(table), width), np.int64)
    values = np.zeros((len(table), width), np.float32)
    for i, (st, (r, c)) in enumerate(zip(table, pixels, strict=True)):
        for y, x in zip(r - top, c - left, strict=True):
            rows_bits[i, y] |= _U(1) << _U(x)
            window[i] |= _U(1) << _U(y * span + x)
        flat = r * size + c
        keys[i] = np.r_[flat, np.full(width - len(flat), flat[0])]  # repeats change no max
        values[i, : len(flat)] = st.values
    frac = np.arange(len(table)) % (SUB * SUB)
    fy, fx = frac // SUB, frac % SUB
    half = SUB // 2
    ends = np.asarray([st.end for st in table])
    steps = np.asarray([st.step for st in table])
    end = np.stack([(fy + ends[:, 0] + half) // SUB, (fx + ends[:, 1] + half) // SUB], 1)
    ny, nx = fy + steps[:, 0], fx + steps[:, 1]
    move = np.stack([ny // SUB, nx // SUB], 1)
    r = spec.marker_radius
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    in_disk = dy * dy + dx * dx <= r * r + r  # the reference's disk (pathfinder._disk)
    disk = (in_disk * (_U(1) << np.arange(2 * r + 1, dtype=_U))).sum(1).astype(_U)
    lo, hi = pad + spec.margin, pad + n - 1 - spec.margin
    inside = ((_U(1) << _U(hi + 1)) - _U(1)) ^ ((_U(1) << _U(lo)) - _U(1))
    border = np.full(size, ~_U(0), _U)
    border[lo : hi + 1] = ~inside
    return Geometry(
        spec=spec,
        pad=pad,
        size=size,
        top=top,
        left=left,
        height=height,
        span=span,
        window=window,
        rows=rows_bits,
        end=end,
        move=move,
        next_frac=(ny % SUB) * SUB + nx % SUB,
        keys=keys,
        values=values,
        disk=disk,
        disk_keys=np.asarray(disk_offsets(r, size), np.int64),
        border=border,
    )


# --------------------------------------------------------------------------------------------
# Bits


def uniforms(seed: int, stream: int, indices: np.ndarray, draw: int, columns: int) -> np.ndarray:
    """``float64 [len(indices), columns]`` in [0, 1), a pure function of each row's index."""
    bits = order.random_bits(seed, TAG | stream << 32 | draw, indices, columns)
    return (bits >> _U(11)).astype(np.float64) * 2.0**-53


def window(grid, owner, y, x, height: int, span: int) -> np.ndarray:
    """uint64 like ``y``: the ``height x span`` pixels from ``(y, x)`` on of grid rows
    ``grid[owner]`` (``[..., size]`` bit rows), packed row after row."""
    lines = grid[owner[..., None], y[..., None] + np.arange(height)]
    bits = (lines >> x[..., None].astype(_U)) & ((_U(1) << _U(span)) - _U(1))
    return np.bitwise_or.reduce(bits << (np.arange(height, dtype=_U) * _U(span)), axis=-1)


def _turns(u: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``[..., L, TRIES]`` turns in angle bins from ``u [..., L, 3]`` (jitter, first stratum,
    direction): one per stratum of the allowed range (the whole circle for paddles where
    ``first``), from a random stratum on in a random direction (``_Drawer._turns``)."""
    lo = np.where(first, 0.0, -MAX_TURN)[:, None]
    width = np.where(first, 2 * math.pi / TRIES, 2 * MAX_TURN / TRIES)[:, None]
    begin = np.floor(u[..., 1:2] * TRIES)
    j = np.arange(TRIES)
    j = np.where(u[..., 2:3] < 0.5, j[::-1], j)
    return (lo + ((begin + j) % TRIES + u[..., 0:1]) * width) * (ANGLE_BINS / (2 * math.pi))


def draws_per_walk(length: int) -> int:
    return 3 + 3 * length  # start y, x, heading; per paddle: jitter, first stratum, direction


# --------------------------------------------------------------------------------------------
# Walks


@dataclasses.dataclass
class Walks:
    """Contours, one per row (valid where ``ok``): each paddle's stamp and start floor."""

    ok: np.ndarray  # bool [N]
    stamp: np.ndarray  # int64 [N, L]
    y: np.ndarray  # int64 [N, L]: grid row of each paddle's start floor
    x: np.ndarray  # int64 [N, L]: grid column
    ends: np.ndarray  # int64 [N, 2, 2]: grid (row, col) of both ends (marker centres)


def walk(geo: Geometry, blocked: np.ndarray, u: np.ndarray, group: int, markers: bool) -> Walks:
    """One contour per row of ``blocked`` (uint64 [G, size] bit rows) from ``group`` walks in
    lock step (``u [G * group, draws_per_walk(L)]``).

    A paddle must miss the blocked pixels and the walk's own paddles up to two back (the one
    before may touch it); with ``markers`` both end disks must miss the blocked pixels. A walk
    left with no admissible turn takes over the first living walk of its group and another of
    that walk's admissible turns (what backtracking does in the reference); a group fails when
    all its walks are stuck at once."""
    n, length = len(u), (u.shape[1] - 3) // 3
    rows, owner = np.arange(n), np.arange(n) // group
    occupied = np.repeat(blocked, group, 0)  # the blocked pixels and the walk's own paddles
    y, x, frac, start = _starts(geo, u, markers)
    heading = u[:, 2] * ANGLE_BINS
    alive = ~_disk_hits(geo, blocked, owner, start) if markers else np.ones(n, bool)
    rescued, donor = _donors(alive, group)
    for array in (y, x, frac, heading, start):
        array[rescued] = array[donor]
    alive[rescued] = True
    turns = _turns(u[:, 3:].reshape(n, length, 3), first=np.arange(length) == 0)
    stamp, ys, xs = (np.zeros((n, length), np.int64) for _ in range(3))
    end = start
    for k in range(length):
        angles = heading[:, None] + turns[:, k]  # [N, TRIES] in angle bins
        candidates = (np.rint(angles).astype(np.int64) & (ANGLE_BINS - 1)) * SUB * SUB
        candidates += frac[:, None]
        around = window(occupied, rows, y + geo.top, x + geo.left, geo.height, geo.span)
        fits = (geo.window[candidates] & around[:, None]) == 0
        if markers and k >= length - 2:
            ends = np.stack([y[:, None], x[:, None]], -1) + geo.end[candidates]
            room = fits & ~_disk_hits(geo, blocked, owner[:, None], ends)
            # The last paddle must leave room for its marker; the one before prefers to.
            fits = room if k == length - 1 else np.where(room.any(1, keepdims=True), room, fits)
        alive &= fits.any(1)
        rescued, donor = _donors(alive, group)
        for array in (y, x, frac, heading, start, stamp, ys, xs, occupied, fits, angles):
            array[rescued] = array[donor]
        candidates[rescued] = candidates[donor]
        alive[rescued] = True
        choice = _choices(fits, rescued, group)
        st = candidates[rows, choice]
        if k >= 1:  # the paddle before the new one now counts as the walk's own ink
            live = rows[alive]
            _draw_bits(geo, occupied, live, stamp[live, k - 1], ys[live, k - 1], xs[live, k - 1])
        stamp[:, k], ys[:, k], xs[:, k] = st, y, x
        heading = angles[rows, choice]
        end = np.stack([y, x], 1) + geo.end[st]
        y = np.where(alive, y + geo.move[st, 0], y)  # failed groups stay on the grid
        x = np.where(alive, x + geo.move[st, 1], x)
        frac = geo.next_frac[st]
    first = np.arange(len(blocked)) * group  # a living group's walks are all alive
    return Walks(alive[first], stamp[first], ys[first], xs[first], np.stack([start, end], 1)[first])


def _starts(geo: Geometry, u: np.ndarray, markers: bool):
    """First paddles' start floors ``(y, x)``, sub-pixel offsets and start pixels, uniform
    over the frame (less a marker's radius) as in the reference."""
    spec, half = geo.spec, SUB // 2
    r = spec.marker_radius if markers else 0
    lo_q, hi_q = (spec.margin + r) * SUB, (spec.resolution - 1 - spec.margin - r) * SUB
    qy = lo_q + (u[:, 0] * (hi_q - lo_q + 1)).astype(np.int64)
    qx = lo_q + (u[:, 1] * (hi_q - lo_q + 1)).astype(np.int64)
    start = np.stack([(qy + half) // SUB, (qx + half) // SUB], 1) + geo.pad
    return qy // SUB + geo.pad, qx // SUB + geo.pad, (qy % SUB) * SUB + qx % SUB, start


def _donors(alive: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Dead walks of groups with a living walk, and the first living walk of each's group."""
    living = alive.reshape(-1, group)
    rescued = np.flatnonzero(~alive & np.repeat(living.any(1), group))
    return rescued, rescued - rescued % group + living.argmax(1)[rescued // group]


def _choices(fits: np.ndarray, rescued: np.ndarray, group: int) -> np.ndarray:
    """The turn each walk takes: its first admissible one; the ``m``-th walk rescued in a
    group takes its donor's ``m``-th next admissible turn (cycling), so rescues branch out."""
    rank = np.zeros(len(fits), np.int64)
    rank[rescued] = (
        np.arange(len(rescued)) + 1 - np.searchsorted(rescued // group, rescued // group)
    )
    rank %= np.maximum(fits.sum(1), 1)
    return (fits & (np.cumsum(fits, 1) - 1 == rank[:, None])).argmax(1)


def _disk_hits(geo: Geometry, blocked: np.ndarray, owner, centres: np.ndarray) -> np.ndarray:
    """Whether a marker disk at grid pixels ``centres [..., 2]`` meets ``blocked[owner]``."""
    r = geo.spec.marker_radius
    side = 2 * r + 1
    around = window(blocked, owner, centres[..., 0] - r, centres[..., 1] - r, side, side)
    disk = np.bitwise_or.reduce(geo.disk << (np.arange(side, dtype=_U) * _U(side)))
    return (around & disk) != 0


def _draw_bits(geo: Geometry, grid, owner, stamp, y, x) -> None:
    """Set the pixels of paddles ``stamp`` at ``(y, x)`` in rows ``grid[owner]`` (in place;
    ``owner`` must not repeat)."""
    lines = y[:, None] + geo.top + np.arange(geo.height)
    grid[owner[:, None], lines] |= geo.rows[stamp] << (x + geo.left)[:, None].astype(_U)


# --------------------------------------------------------------------------------------------
# Contours on images


def ink_bits(geo: Geometry, walks: Walks) -> np.ndarray:
    """uint64 [N, size]: the completed walks' pixels, zero for failed ones."""
    grid = np.zeros((len(walks.ok), geo.size), _U)
    ok = np.flatnonzero(walks.ok)
    lines = walks.y[ok][:, :, None] + geo.top + np.arange(geo.height)
    bits = geo.rows[walks.stamp[ok]] << (walks.x[ok] + geo.left)[:, :, None].astype(_U)
    np.bitwise_or.at(grid, (ok[:, None, None], lines), bits)  # paddles of a walk share rows
    return grid


def dilate(grid: np.ndarray, radius: int) -> np.ndarray:
    """Bit rows grown by a ``(2r+1)^2`` square (Chebyshev ball)."""
    out = grid.copy()
    for _ in range(radius):
        out |= (out << _U(1)) | (out >> _U(1))
    grown = out.copy()
    for d in range(1, radius + 1):
        grown[:, d:] |= out[:, :-d]
        grown[:, :-d] |= out[:, d:]
    return grown


def transform(a: np.ndarray, t: int) -> np.ndarray:
    """Symmetry ``t`` (0..7) of the square on the last two axes: bit 2 transposes, bit 1
    flips rows, bit 0 flips columns."""
    if t & 4:
        a = np.swapaxes(a, -1, -2)
    if t & 2:
        a = a[..., ::-1, :]
    if t & 1:
        a = a[..., ::-1]
    return a


def transform_points(yx: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
    """``(row, col)`` points ``[B, ..., 2]`` moved as :func:`transform` ``t [B]`` moves pixels."""
    t = t.reshape((-1,) + (1,) * (yx.ndim - 1))[..., 0]
    y, x = yx[..., 0], yx[..., 1]
    y, x = np.where(t & 4, x, y), np.where(t & 4, y, x)
    y = np.where(t & 2, n - 1 - y, y)
    x = np.where(t & 1, n - 1 - x, x)
    return np.stack([y, x], -1)


def paint(geo: Geometry, walks: Walks) -> np.ndarray:
    """float32 [N, S, S]: each walk's ink alone (zero for failed walks)."""
    n, area, size = len(walks.ok), geo.size**2, geo.size
    canvas = np.zeros(n * area, np.float32)
    keys = (np.arange(n) * area)[:, None, None] + (walks.y * size + walks.x)[:, :, None]
    keys = keys + geo.keys[walks.stamp]
    np.maximum.at(canvas, keys, geo.values[walks.stamp] * walks.ok[:, None, None])
    p, s = geo.pad, geo.spec.resolution
    return canvas.reshape(n, size, size)[:, p : p + s, p : p + s]


def disks(geo: Geometry, centres: np.ndarray) -> np.ndarray:
    """bool [B, S, S]: marker disks at ``centres [B, k, 2]`` (image coordinates)."""
    n, s, r = len(centres), geo.spec.resolution, geo.spec.marker_radius
    out = np.zeros((n, s + 2 * r, s + 2 * r), bool)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= r * r + r
    centres = np.clip(centres, 0, s - 1)  # failed walks' ends are anywhere; theirs are unused
    rows = np.arange(n)[:, None, None]
    out[rows, centres[:, :, :1] + r + dy[keep], centres[:, :, 1:] + r + dx[keep]] = True
    return out[:, r : r + s, r : r + s]


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """bool [..., S, S] masks grown by a ``(2r+1)^2`` square (Chebyshev ball)."""
    out = mask.copy()
    for axis in (-1, -2):
        src = out.copy()
        for d in range(1, radius + 1):
            lead, trail = [slice(None)] * out.ndim, [slice(None)] * out.ndim
            lead[axis], trail[axis] = slice(d, None), slice(None, -d)
            out[tuple(lead)] |= src[tuple(trail)]
            out[tuple(trail)] |= src[tuple(lead)]
    return out


def packed(mask: np.ndarray) -> np.ndarray:
    """uint64 [..., words]: bool [..., S, S] masks as bits (for fast overlap tests)."""
    bits = np.packbits(mask.reshape(mask.shape[:-2] + (-1,)), axis=-1)
    bits = np.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, -bits.shape[-1] % 8)])
    return np.ascontiguousarray(bits).view(np.uint64)


def main_contours(geo: Geometry, seed: int, stream: int, indices: np.ndarray):
    """The two main contours of every image: ``(ink [B, 2, S, S], ends [B, 2, 2, 2])`` of the
    first and the second (ends as ``(row, col)``).

    Round ``t`` of an image walks ``candidates`` contours in the empty frame (draw
    ``MAIN_DRAW + t``) and takes the first pair ``(i, j, s)`` (i != j) such that candidate j
    moved by symmetry ``s`` of the square keeps more than ``link`` px (marker disks
    included) from candidate i: two random contours conditioned on lying apart. The frame and
    the connectivity rule are symmetric, so a moved contour is a contour. Images with no such
    pair go on to the next round."""
    spec, n = geo.spec, len(indices)
    search = search_for(spec)
    k, rep, s = search.candidates, search.replicas, spec.resolution
    columns = k * rep * draws_per_walk(spec.contour_length)
    ink_out = np.zeros((n, 2, s, s), np.float32)
    ends_out = np.zeros((n, 2, 2, 2), np.int64)
    pending = np.arange(n)
    for t in range(MAX_ROUNDS):
        m = len(pending)
        u = uniforms(seed, stream, indices[pending], MAIN_DRAW + t, columns)
        frames = np.tile(geo.border, (m * k, 1))
        walks = walk(geo, frames, u.reshape(m * k * rep, -1), rep, True)
        ends = (walks.ends - geo.pad).reshape(m, k, 2, 2)
        ink = paint(geo, walks).reshape(m, k, s, s)
        solid = (ink > 0) | disks(geo, ends.reshape(m * k, 2, 2)).reshape(m, k, s, s)
        moved = np.stack([transform(solid, sym) for sym in range(8)], 2)  # [m, k, 8, S, S]
        near = packed(grow(solid, spec.link))[:, :, None, None]  # [m, k, 1, 1, words]
        clash = (near & packed(moved)[:, None]).any(-1)  # [m, i, j, sym]
        ok = walks.ok.reshape(m, k)
        good = ~clash & ok[:, :, None, None] & ok[:, None, :, None]
        good &= ~np.eye(k, dtype=bool)[None, :, :, None]
        found = good.reshape(m, -1).any(1)
        i, j, sym = np.unravel_index(good.reshape(m, -1).argmax(1), (k, k, 8))
        rows, done = np.flatnonzero(found), pending[found]
        i, j, sym = i[found], j[found], sym[found]
        ink_out[done, 0] = ink[rows, i]
        ends_out[done, 0] = ends[rows, i]
        ink_out[done, 1] = np.stack([transform(ink, y) for y in range(8)], 2)[rows, j, sym]
        ends_out[done, 1] = transform_points(ends[rows, j], sym, s)
        pending = pending[~found]
        if not len(pending):
            return ink_out, ends_out
    raise RuntimeError(  # pragma: no cover - never seen for the supported settings
        f"pathfinder (vectorized) could not place two contours in {MAX_ROUNDS} rounds: {spec}"
    )


def to_grid(geo: Geometry, mask: np.ndarray) -> np.ndarray:
    """uint64 [B, size]: bool [B, S, S] masks as blocked bit rows of the padded grid."""
    s, p = geo.spec.resolution, geo.pad
    bits = _U(1) << (np.arange(s, dtype=_U) + _U(p))
    grid = np.tile(geo.border, (len(mask), 1))
    grid[:, p : p + s] |= np.bitwise_or.reduce(np.where(mask, bits, _U(0)), axis=-1)
    return grid


def distractors(geo: Geometry, seed: int, stream: int, indices, blocked) -> Walks:
    """``spec.num_distractors`` short contours per image, all walked around ``blocked`` at
    once, then kept in order while each keeps more than ``link`` px from those kept before.
    Returns them as rows ``image * num_distractors + d`` (``ok`` False: left out)."""
    spec, n = geo.spec, len(indices)
    count, rep = spec.num_distractors, search_for(spec).distractor_replicas
    columns = count * rep * draws_per_walk(spec.distractor_length)
    u = uniforms(seed, stream, indices, DISTRACTOR_DRAW, columns)
    walks = walk(geo, np.repeat(blocked, count, 0), u.reshape(n * count * rep, -1), rep, False)
    ink = ink_bits(geo, walks).reshape(n, count, -1)
    kept = np.zeros((n, geo.size), _U)
    ok = walks.ok.reshape(n, count)
    for d in range(count):
        ok[:, d] &= ~(ink[:, d] & kept).any(1)
        kept |= dilate(ink[:, d] * ok[:, d, None].astype(_U), spec.link)
    walks.ok = ok.reshape(-1)
    return walks


def marker_pairs(marked: np.ndarray, other: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """int64 [B, 2, 2]: the markers' ``(row, col)`` from both contours' ends ``[B, 2, 2]``.
    Label 1: both ends of ``marked``; label 0: one end of each contour, the pair whose
    distance is closest to the distance between ``marked``'s ends (so marker distance carries
    no label signal)."""
    a, b = marked.astype(np.float64), other.astype(np.float64)
    target = np.hypot(*(a[:, 0] - a[:, 1]).T)
    options = [(i, j) for i in (0, 1) for j in (0, 1)]  # the reference's order
    gaps = np.stack([np.abs(np.hypot(*(a[:, i] - b[:, j]).T) - target) for i, j in options], 1)
    best = np.asarray(options)[gaps.argmin(1)]
    rows = np.arange(len(a))
    negative = np.stack([marked[rows, best[:, 0]], other[rows, best[:, 1]]], 1)
    return np.where(labels[:, None, None] == 1, marked, negative)


def generate_images(
    spec: Spec, seed: int, indices, stream: int = base.TRAIN_STREAM, *, details: bool = False
):
    """``(images uint8 [B, S, S], labels int32 [B])`` for ``indices``; with ``details`` also
    the markers' ``(row, col)`` (int64 [B, 2, 2]). Each image depends only on
    ``(spec, seed, stream, index)``."""
    geo = geometry(spec)
    indices = np.asarray(indices, np.int64).reshape(-1)
    n = len(indices)
    coins = uniforms(seed, stream, indices, LABEL_DRAW, 2)
    labels = (coins[:, 0] < 0.5).astype(np.int32)
    ink, ends = main_contours(geo, seed, stream, indices)
    solid = (ink > 0).any(1) | disks(geo, ends.reshape(n, 4, 2))
    clutter = distractors(geo, seed, stream, indices, to_grid(geo, grow(solid, spec.link)))
    canvas = np.maximum(ink.max(1), paint(geo, clutter).reshape(n, -1, *ink.shape[-2:]).max(1))
    swap = (coins[:, 1] < 0.5).astype(np.int64)  # which contour carries the positive markers
    rows = np.arange(n)
    markers = marker_pairs(ends[rows, swap], ends[rows, 1 - swap], labels)
    canvas[disks(geo, markers)] = 1.0
    images = np.rint(canvas * 255).astype(np.uint8)
    return (images, labels, markers) if details else (images, labels)
