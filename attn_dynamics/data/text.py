"""``imdb_bytes``: IMDb reviews as UTF-8 bytes (the LRA "Text" task), from tfds ``imdb_reviews``.

Token = byte + 1 (0 is padding; vocab 257), truncated / padded to ``seq_len`` (LRA: 1000 or
4000), binary labels. Read from prepared ArrayRecord files without TensorFlow; prepare once with
``tfds.builder('imdb_reviews', data_dir=...).download_and_prepare(file_format='array_record')``.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from ml_collections import config_dict

from attn_dynamics.data import base, tfds_utils

VOCAB_SIZE = 257  # 256 byte values + padding


def default_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "imdb_bytes"
    d.data_dir = config_dict.placeholder(str)  # unset: $TFDS_DATA_DIR or ~/tensorflow_datasets
    d.download = False  # True: let tfds download and prepare (needs TensorFlow and internet)
    d.seq_len = 1000  # LRA: 1000 (also 4000)
    d.batch_size = 32
    d.eval_batch_size = 32
    d.eval_size = 0  # 0: the whole test split; otherwise its first eval_size reviews
    d.seed = 0
    return d


def encode_bytes(texts, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens int32 [B, seq_len], valid bool [B, seq_len])``: byte + 1, 0-padded."""
    tokens = np.zeros((len(texts), seq_len), np.int32)
    for i, text in enumerate(texts):
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        b = np.frombuffer(raw[:seq_len], np.uint8)
        tokens[i, : len(b)] = b.astype(np.int32) + 1
    return tokens, tokens > 0


class ImdbBytes(tfds_utils.TfdsDataset, base.Dataset):
    name = "imdb_bytes"

    def __init__(self, config, mesh=None):
        base.Dataset.__init__(self, config, mesh)
        base.check_fields(config, list(default_config()), self.name)
        self.seq_len = int(config.seq_len)
        if self.seq_len <= 0:
            raise ValueError(f"{self.name}: seq_len must be positive, got {self.seq_len}")
        self.train_batch_size = int(config.batch_size)
        self.eval_batch_size = int(config.eval_batch_size)
        self._check_batch_sizes()
        self._open("imdb_reviews")
        self.info = {
            "task": "classification",
            "num_classes": 2,
            "vocab_size": VOCAB_SIZE,
            "seq_len": self.seq_len,
            "max_len": self.seq_len,
            "train_size": self.train_size,
        }

    def _examples(self, split, indices):
        records = self._records(split, indices)
        tokens, valid = encode_bytes([r["text"] for r in records], self.seq_len)
        labels = np.asarray([r["label"] for r in records], np.int32)
        return {"inputs": tokens, "valid": valid, "labels": labels}
