"""Length-extrapolation splits of the order tasks: where the label-deciding tokens stand.

A 'beyond L' split must put every token that decides the label at a position never seen in
training, a 'within L' split every one of them inside the trained range; the label rule is
checked independently (``order.labels_of`` on the tokens), and the splits that existed before
the regions were added still draw the same examples (checksums of the earlier generator)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from attn_dynamics.data import order

# sha256 (first 16 hex digits) of examples drawn by the generator before eval regions existed
EARLIER = {
    ("order_lookback", 8, 32): "4458aec10840b89b",
    ("order_lookback", 48, 48): "af6aba29e993a7a0",
    ("order_precedence", 8, 32): "2ae62ab7ce78f01e",
    ("order_precedence", 48, 48): "87ba5ec8c6127224",
}


@pytest.mark.parametrize(("task", "min_len", "max_len"), list(EARLIER))
def test_region_free_examples_are_unchanged(task, min_len, max_len):
    kw = dict(seed=3, stream=7, num_tokens=16, min_len=min_len, max_len=max_len, lookback=3)
    ex = order.generate(task, np.arange(100, 300), width=max_len, **kw)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(ex[k]).tobytes() for k in sorted(ex)))
    assert digest.hexdigest()[:16] == EARLIER[(task, min_len, max_len)]


def dataset(task: str, seed: int) -> order.OrderTask:
    c = order.default_config(task)
    c.min_len, c.train_len, c.eval_lengths = 8, 24, (24, 40, 48)
    c.eval_regions = ("all", "within", "beyond")
    c.eval_size, c.train_size, c.seed = 256, 0, seed
    return order.OrderTask(c)


def deciding_positions(task: str, tokens: np.ndarray, num_tokens: int, lookback: int):
    """[rows, k] positions of the label-deciding tokens, found from the tokens alone."""
    first = np.argmax(tokens == num_tokens + 1, axis=1)
    if task == "order_lookback":
        return np.stack([first - lookback, first], axis=1)
    return np.stack([first, np.argmax(tokens == num_tokens + 2, axis=1)], axis=1)


@pytest.mark.parametrize("task", order.TASKS)
def test_beyond_and_within_splits_place_the_deciding_tokens(task):
    seed = int(np.random.default_rng().integers(1 << 30))  # fresh draws every run
    ds = dataset(task, seed)
    assert ds.eval_splits == (
        "len_24", "len_40", "len_40_within", "len_40_beyond",
        "len_48", "len_48_within", "len_48_beyond",
    )  # fmt: skip
    for split in ds.eval_splits:
        ex = ds._examples(split, np.arange(256))
        n = int(split.split("_")[1])
        assert ex["inputs"].shape == (256, n) and ex["valid"].all()
        pos = deciding_positions(task, ex["inputs"], ds.num_tokens, ds.lookback)
        assert ((ex["inputs"] == ds.num_tokens + 1).sum(1) == 1).all()
        if split.endswith("_beyond"):
            assert (pos >= ds.train_len).all() and (pos < n).all()
        elif split.endswith("_within"):
            assert (pos >= 0).all() and (pos < ds.train_len).all()
        labels = order.labels_of(task, ex["inputs"], ds.num_tokens, ds.lookback)
        np.testing.assert_array_equal(labels, ex["labels"])
        classes = ds.info["num_classes"]
        counts = np.bincount(ex["labels"], minlength=classes)
        assert counts.min() > 0  # every class drawn: chance is 1 / num_classes


def test_beyond_positions_cover_the_whole_untrained_range():
    ds = dataset("order_lookback", 0)
    ex = ds._examples("len_48_beyond", np.arange(256))
    pos = deciding_positions("order_lookback", ex["inputs"], ds.num_tokens, ds.lookback)
    assert pos[:, 0].min() == ds.train_len and pos[:, 1].max() == 47


def test_regions_are_validated():
    c = order.default_config("order_lookback")
    c.eval_regions = ("outside",)
    with pytest.raises(ValueError, match="eval_regions"):
        order.OrderTask(c)
    c.eval_regions = ("beyond",)
    c.train_len, c.eval_lengths = 64, (64, 66)  # 2 positions past L: no room for lookback 3
    with pytest.raises(ValueError, match="eval length >= train_len"):
        order.OrderTask(c)
