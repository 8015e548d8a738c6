"""Synthetic classification tasks whose label depends on token *order*, for position studies.

Both tasks draw ``V = num_tokens`` content tokens (ids ``1..V``; 0 is padding) iid uniform and
insert special tokens; the label is a function of *where* things stand, so a model without
position information (which sees a multiset of tokens) cannot do better than chance-like
guessing. Training sequences have a random length in ``[min_len, train_len]``, padded to
``train_len`` with ``valid`` False on padding; eval split ``len_{n}`` has every sequence of
length exactly ``n`` for each ``n`` in ``eval_lengths`` (length extrapolation).

Where the label-deciding tokens stand is what a length-extrapolation test must control: in
``len_{n}`` the marker is uniform over the sequence, so at ``n = 2L`` half the answers still lie
in the trained range ``[0, L)``. ``eval_regions`` adds, for every eval length ``n > L``:

* ``len_{n}_within``: the label-deciding tokens (marker and the token it points at; A and B)
  all at positions ``< L``: the trained range, inside a longer sequence;
* ``len_{n}_beyond``: all of them at positions ``>= L``, never seen in training, so only an
  encoding that carries position information past ``L`` can score above chance.

* ``order_lookback``: one marker token ``V + 1`` at position ``m >= lookback``; the label is
  the content token ``lookback`` places before it (``num_classes = V``, vocab ``V + 2``).
* ``order_precedence``: tokens ``A = V + 1`` and ``B = V + 2`` once each at distinct random
  positions; label 1 iff ``A`` comes first (``num_classes = 2``, vocab ``V + 3``).

Examples are pure functions of ``(seed, split, index)`` through a counter-based hash
(SplitMix64), vectorised over a batch, so random access and exact resumption are free.
``train_size = 0`` draws fresh examples at every step; otherwise a pool of ``train_size``
examples is reshuffled every epoch.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from attn_dynamics.data import base

TASKS = ("order_lookback", "order_precedence")
REGIONS = ("all", "within", "beyond")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def default_config(name: str = "order_lookback") -> ml_collections.ConfigDict:
    if name not in TASKS:
        raise ValueError(f"unknown order task {name!r}; valid: {list(TASKS)}")
    d = ml_collections.ConfigDict()
    d.name = name
    d.num_tokens = 16  # V content tokens
    if name == "order_lookback":
        d.lookback = 3  # the label is the token this many places before the marker
    d.min_len = 16
    d.train_len = 64
    d.eval_lengths = (64, 96, 128)  # eval splits 'len_64', 'len_96', 'len_128'
    # regions of the label-deciding tokens evaluated at every eval length > train_len:
    # 'all' (split len_{n}: anywhere), 'within' (len_{n}_within: all < train_len), 'beyond'
    # (len_{n}_beyond: all >= train_len)
    d.eval_regions = ("all",)
    d.train_size = 100_000  # 0: fresh examples every step
    d.eval_size = 1024  # examples per eval split
    d.batch_size = 64
    d.eval_batch_size = 128
    d.seed = 0
    return d


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective scramble of uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_bits(seed: int, stream: int, indices: np.ndarray, columns: int) -> np.ndarray:
    """``uint64 [len(indices), columns]``: well-mixed bits per (seed, stream, index, column)."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed) * _GOLDEN + np.uint64(stream))
        rows = _mix(key ^ (np.asarray(indices, np.uint64) * _GOLDEN))[:, None]
        cols = np.arange(1, columns + 1, dtype=np.uint64)[None, :] * _GOLDEN
        return _mix(rows + cols)


def generate(
    task: str,
    indices: np.ndarray,
    *,
    seed: int,
    stream: int,
    num_tokens: int,
    width: int,
    min_len: int,
    max_len: int,
    lookback: int = 1,
    region: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Examples ``indices``: lengths uniform in ``[min_len, max_len]``, padded to ``width``.

    ``region = (lo, hi)`` puts every label-deciding token at a position in ``[lo, hi)`` (the
    marker and the token ``lookback`` before it; A and B); ``None`` is ``[0, length)``.
    """
    b = len(indices)
    bits = random_bits(seed, stream, indices, width + 3)
    tokens = (1 + bits[:, :width] % np.uint64(num_tokens)).astype(np.int32)
    span = np.uint64(max_len - min_len + 1)
    length = (min_len + bits[:, width] % span).astype(np.int64)
    pos = np.arange(width)[None, :]
    valid = pos < length[:, None]
    rows = np.arange(b)
    lo, hi = (0, length) if region is None else region
    lo, hi = np.broadcast_to(np.int64(lo), (b,)), np.broadcast_to(np.asarray(hi, np.int64), (b,))
    if task == "order_lookback":
        first = lo + lookback  # the marker's first position: its target is at >= lo
        marker = first + (bits[:, width + 1] % (hi - first).astype(np.uint64)).astype(np.int64)
        tokens[rows, marker] = num_tokens + 1
        labels = tokens[rows, marker - lookback] - 1
    elif task == "order_precedence":
        size = hi - lo
        a = lo + (bits[:, width + 1] % np.asarray(size, np.uint64)).astype(np.int64)
        shift = 1 + (bits[:, width + 2] % np.asarray(size - 1, np.uint64)).astype(np.int64)
        bpos = lo + (a - lo + shift) % size
        tokens[rows, a] = num_tokens + 1
        tokens[rows, bpos] = num_tokens + 2
        labels = (a < bpos).astype(np.int32)
    else:
        raise ValueError(f"unknown order task {task!r}; valid: {list(TASKS)}")
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    return {"inputs": tokens, "valid": valid, "labels": labels.astype(np.int32)}


def labels_of(task: str, tokens: np.ndarray, num_tokens: int, lookback: int = 1) -> np.ndarray:
    """The label rule applied to token sequences (for checks: e.g. on permuted sequences)."""
    if task == "order_lookback":
        marker = np.argmax(tokens == num_tokens + 1, axis=1)
        return tokens[np.arange(len(tokens)), marker - lookback] - 1
    a = np.argmax(tokens == num_tokens + 1, axis=1)
    b = np.argmax(tokens == num_tokens + 2, axis=1)
    return (a < b).astype(np.int32)


class OrderTask(base.Dataset):
    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        self.name = task = config.name
        base.check_fields(config, list(default_config(task)), task)
        c = config
        self.num_tokens = int(c.num_tokens)
        self.lookback = int(c.lookback) if task == "order_lookback" else 1
        self.min_len, self.train_len = int(c.min_len), int(c.train_len)
        self.eval_lengths = tuple(int(n) for n in c.eval_lengths)
        need = self.lookback + 1 if task == "order_lookback" else 2
        if self.num_tokens < 2:
            raise ValueError(f"{task}: num_tokens must be >= 2, got {self.num_tokens}")
        if task == "order_lookback" and self.lookback < 1:
            raise ValueError(f"{task}: lookback must be >= 1, got {self.lookback}")
        if not need <= self.min_len <= self.train_len:
            raise ValueError(
                f"{task}: need {need} <= min_len <= train_len, got min_len={self.min_len}, "
                f"train_len={self.train_len}"
            )
        if not self.eval_lengths or min(self.eval_lengths) < need:
            raise ValueError(f"{task}: eval_lengths must be non-empty and >= {need}")
        self.eval_regions = tuple(str(r) for r in c.eval_regions)
        if not self.eval_regions or any(r not in REGIONS for r in self.eval_regions):
            raise ValueError(
                f"{task}: eval_regions {self.eval_regions} must be a non-empty subset of "
                f"{list(REGIONS)}"
            )
        if (
            set(self.eval_regions) - {"all"}
            and min(self.train_len, max(self.eval_lengths) - self.train_len) < need
        ):
            raise ValueError(
                f"{task}: eval_regions 'within'/'beyond' need train_len >= {need} and an eval "
                f"length >= train_len + {need}, got train_len={self.train_len}, "
                f"eval_lengths={self.eval_lengths}"
            )
        if int(c.eval_size) <= 0 or int(c.train_size) < 0:
            raise ValueError(f"{task}: eval_size must be > 0 and train_size >= 0")
        self.train_size = int(c.train_size)
        self.train_batch_size = int(c.batch_size)
        self.eval_batch_size = int(c.eval_batch_size)
        self._check_batch_sizes()
        self.eval_splits = tuple(self._split_names())
        self.info = {
            "task": "classification",
            "num_classes": self.num_tokens if task == "order_lookback" else 2,
            "vocab_size": self.num_tokens + (2 if task == "order_lookback" else 3),
            "seq_len": self.train_len,
            "max_len": max(self.train_len, *self.eval_lengths),
            "train_size": self.train_size,
        }

    def _split_names(self):
        """``len_{n}`` (region 'all') for every eval length; ``len_{n}_within`` and
        ``len_{n}_beyond`` where the length leaves room past ``train_len``."""
        need = self.lookback + 1 if self.name == "order_lookback" else 2
        for n in self.eval_lengths:
            for region in self.eval_regions:
                if region == "all":
                    yield f"len_{n}"
                elif n - self.train_len >= need:
                    yield f"len_{n}_{region}"

    def _region(self, split: str) -> tuple[int, int, tuple[int, int] | None]:
        """``(length, stream offset, region)`` of eval split ``len_{n}[_{region}]``."""
        n, _, region = split.removeprefix("len_").partition("_")
        n = int(n)
        if not region:
            return n, 0, None
        bounds = {"within": (0, self.train_len), "beyond": (self.train_len, n)}[region]
        return n, 100 * REGIONS.index(region), bounds

    def _examples(self, split, indices):
        kw = dict(
            seed=self.seed,
            num_tokens=self.num_tokens,
            lookback=self.lookback,
        )
        task_stream = 100 * TASKS.index(self.name)
        if split == "train":
            return generate(
                self.name,
                indices,
                stream=task_stream + base.TRAIN_STREAM,
                width=self.train_len,
                min_len=self.min_len,
                max_len=self.train_len,
                **kw,
            )
        n, offset, region = self._region(split)
        stream = task_stream + base.EVAL_STREAM + 1_000 * n + offset
        return generate(
            self.name, indices, stream=stream, width=n, min_len=n, max_len=n, region=region, **kw
        )

    def _eval_size(self, split):
        return int(self.config.eval_size)
