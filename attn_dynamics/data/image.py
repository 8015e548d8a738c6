"""``image_seq``: tfds ``mnist`` / ``cifar10`` as sequences of grayscale pixel tokens.

The LRA "Image" task is ``cifar10`` in grayscale, 1024 tokens of values 0..255. Grayscale is
``round(0.2989 R + 0.5870 G + 0.1140 B)`` (the ITU-R 601 weights of
``tf.image.rgb_to_grayscale``). Tokens are ``pixel + token_offset`` (offset 0 as in LRA, vocab
256; offset 1 reserves 0, vocab 257); every token is valid. ``resolution`` (unset: native)
resamples to ``resolution x resolution`` by nearest neighbour, for smoke tests.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from ml_collections import config_dict

from attn_dynamics.data import base, tfds_utils

DATASETS = {"mnist": (28, 10), "cifar10": (32, 10)}  # native side, classes
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)


def default_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "image_seq"
    d.dataset = "cifar10"  # 'cifar10' | 'mnist'
    d.data_dir = config_dict.placeholder(str)  # unset: $TFDS_DATA_DIR or ~/tensorflow_datasets
    d.download = False  # True: let tfds download and prepare (needs TensorFlow and internet)
    d.resolution = config_dict.placeholder(int)  # unset: native (32 cifar10, 28 mnist)
    d.token_offset = 0  # 0: tokens 0..255 (LRA); 1: 1..256 with 0 reserved
    d.batch_size = 64
    d.eval_batch_size = 64
    d.eval_size = 0  # 0: the whole test split
    d.seed = 0
    return d


def to_tokens(images: np.ndarray, resolution: int | None, offset: int) -> np.ndarray:
    """``[B, H, W, C]`` uint8 -> ``[B, r*r]`` int32 grayscale tokens (+ offset)."""
    x = images
    if x.shape[-1] == 3:
        x = np.rint(x.astype(np.float32) @ GRAY_WEIGHTS)
    else:
        x = x[..., 0]
    if resolution is not None and resolution != x.shape[1]:
        rows = (np.arange(resolution) * x.shape[1]) // resolution
        cols = (np.arange(resolution) * x.shape[2]) // resolution
        x = x[:, rows][:, :, cols]
    x = np.clip(x, 0, 255).astype(np.int32)
    return x.reshape(x.shape[0], -1) + offset


class ImageSeq(tfds_utils.TfdsDataset, base.Dataset):
    name = "image_seq"

    def __init__(self, config, mesh=None):
        base.Dataset.__init__(self, config, mesh)
        base.check_fields(config, list(default_config()), self.name)
        if config.dataset not in DATASETS:
            raise ValueError(
                f"image_seq: unknown dataset {config.dataset!r}; valid: {sorted(DATASETS)}"
            )
        if int(config.token_offset) not in (0, 1):
            raise ValueError(f"image_seq: token_offset must be 0 or 1, got {config.token_offset}")
        side, classes = DATASETS[config.dataset]
        self.resolution = None if config.resolution is None else int(config.resolution)
        if self.resolution is not None and self.resolution <= 0:
            raise ValueError(f"image_seq: resolution must be positive, got {self.resolution}")
        self.side = self.resolution or side
        self.offset = int(config.token_offset)
        self.train_batch_size = int(config.batch_size)
        self.eval_batch_size = int(config.eval_batch_size)
        self._check_batch_sizes()
        self._open(config.dataset)
        self.info = {
            "task": "classification",
            "num_classes": classes,
            "vocab_size": 256 + self.offset,
            "seq_len": self.side * self.side,
            "max_len": self.side * self.side,
            "train_size": self.train_size,
        }

    def _examples(self, split, indices):
        records = self._records(split, indices)
        images = np.stack([r["image"] for r in records])
        tokens = to_tokens(images, self.resolution, self.offset)
        labels = np.asarray([r["label"] for r in records], np.int32)
        return {"inputs": tokens, "valid": np.ones(tokens.shape, bool), "labels": labels}
