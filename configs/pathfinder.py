"""Pathfinder (32x32, contour length 14 = LRA "hard"), 2-layer encoder trained with Adam, the
paper's image task. Images are generated on the fly by default, so it runs with no download:

    python -m experiments.run --config=configs/pathfinder.py --config.model.kernel=gaussian
    python -m experiments.run --config=configs/pathfinder.py --config.data.contour_length=6

With the LRA release instead (prepared once, no TensorFlow needed; see
``attn_dynamics/data/lra_pathfinder.py``):

    python -m attn_dynamics.data.lra_pathfinder --manual_dir=.../lra_release/lra_release \\
        --data_dir=$HOME/tensorflow_datasets --resolution=32
    python -m experiments.run --config=configs/pathfinder.py --config.data.source=lra

Generation runs in the calling thread with the vectorised generator (``data.generator``;
about 0.6 ms per 32x32 image on one CPU core, ``benchmarks/RESULTS.md`` "data (cpu)", far
faster than a CPU training step); on a GPU host, where a step takes milliseconds, draw batches
in parallel processes with ``--config.data.workers=8``. ``--config.data.generator=reference``
selects the per-image generator of the runs recorded before it.

``:smoke`` draws 16x16 images with contours of 4 paddles (256 tokens). Learning rate, batch
size and step count are our choices (the paper does not state them).
"""

from attn_dynamics import data
from configs.lra_text import set_encoder
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.data = data.default_config("pathfinder")
    resolution = c.data.get_ref("resolution")
    set_encoder(
        c,
        num_classes=2,
        vocab_size=c.data.get_ref("token_offset") + 256,
        max_len=resolution * resolution,
    )
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-3
    c.train.num_steps = 20_000
    c.train.log_every = 50
    c.train.eval_every = 2_000
    c.train.checkpoint_every = 1_000
    c.train.loss_threshold = 0.0
    if smoke:
        defaults.smoke(c)
        c.data.resolution = 16
        c.data.contour_length = 4
        c.model.max_len = 256
        c.data.train_size = 64
        c.data.eval_size = 8
        c.data.batch_size = 4
        c.data.eval_batch_size = 4
    return c
