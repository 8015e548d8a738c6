"""Softmax vs Gaussian kernel on LRA Text (byte-level IMDb), several seeds (finding 5).

The paper's 2-layer encoder (embedding 64, MLP 128, 2 heads) from ``lra_text.py``, trained by
SGD; 3 seeds per kernel trained at once (vmapped); test accuracy (mean ± std over seeds) and
training loss vs steps (mean with a ±std band):

    python -m experiments.sweep --config=configs/lra_text_kernels.py --workdir=runs/lra_text
    python -m experiments.analyses kernels runs/lra_text

Needs tfds ``imdb_reviews`` prepared as ArrayRecord (see ``lra_text.py``). Full size (1000
tokens, 10k steps of batch 32, 3 seeds) is a GPU job. ``:cpu`` is the version a 2-core CPU
runs in about half an hour: 256 tokens, 1000 steps, 2000 test reviews. ``:smoke`` (seconds)
still needs the data set (the tests point ``data.data_dir`` at a tiny local copy).
"""

from configs import lra_text
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    args = variants(arg, ["cpu", "smoke"])
    c = lra_text.get_config()
    c.seeds = (0, 1, 2)
    c.train.progress_bar = False
    if "cpu" in args:
        c.data.seq_len = 256
        c.data.eval_size = 2000
        c.train.num_steps = 1000
        c.train.eval_every = 250
        c.train.checkpoint_every = 1000
    if "smoke" in args:
        defaults.smoke(c)
        c.train.checkpoint_every = 1_000
        c.data.seq_len = 32
        c.data.batch_size = 4
        c.data.eval_batch_size = 4
        c.data.eval_size = 8
    return c


def get_sweep():
    return {"model.kernel": ("softmax", "gaussian")}
