"""LRA Image: CIFAR-10 in grayscale as 1024 pixel tokens (``image_seq``), 2-layer encoder.

    python -m experiments.run --config=configs/lra_image.py --config.model.kernel=gaussian
    python -m experiments.run --config=configs/lra_image.py --config.data.dataset=mnist

Needs tfds ``cifar10`` (or ``mnist``) prepared as ArrayRecord, once, on a machine with internet:

    pip install tensorflow tensorflow-datasets && python -c "import tensorflow_datasets as tfds; \\
      tfds.builder('cifar10', data_dir='$HOME/tensorflow_datasets')\\
      .download_and_prepare(file_format='array_record')"

``:smoke`` resamples the images to 8x8 (64 tokens); it still reads cifar10 (tests use a tiny
local copy from ``attn_dynamics.data.testing.build_tiny_tfds``). Optimiser settings are our
choice (LRA-like Adam).
"""

from attn_dynamics import data
from configs.lra_text import set_encoder
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.data = data.default_config("image_seq")
    c.data.dataset = "cifar10"
    set_encoder(c, num_classes=10, vocab_size=c.data.get_ref("token_offset") + 256, max_len=1024)
    c.train.optimizer = "adam"
    c.train.learning_rate = 5e-4
    c.train.num_steps = 10_000
    c.train.log_every = 50
    c.train.eval_every = 1_000
    c.train.checkpoint_every = 1_000
    c.train.loss_threshold = 0.0
    if smoke:
        defaults.smoke(c)
        c.data.resolution = 8  # 64 tokens
        c.model.max_len = 64
        c.data.batch_size = 4
        c.data.eval_batch_size = 4
        c.data.eval_size = 8
    return c
