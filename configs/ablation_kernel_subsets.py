"""Ablation: attention kernel x trainable subset on the theory model (findings 1-4).

kernel {softmax, gaussian} x trainable {QKV, V, Q, K}, 16 seeds per cell trained at once
(vmapped), full-batch GD on the setting of ``qk_frozen.py`` (n = 4 samples of N = 4 tokens in
d = 64 dimensions, out_dim 4, targets from a random *softmax* teacher for both kernels, so
that the kernels are compared on the same data; ``--config.data.teacher_kernel=gaussian``, or
deleting that line, gives each kernel a teacher of its own form), three data draws
(``data.seed`` 0, 1, 2: each draws new inputs X and a new teacher; the students' initialisation
depends on ``config.seeds`` only). Two convergence criteria per seed: loss <=
``train.loss_threshold`` x its initial loss, and loss <= ``train.baseline_threshold`` x the best
constant predictor's loss (stricter here: that loss is ~5x below the initial one). Every cell
runs all 10k steps: stopping at the first criterion would cut the second short.

    python -m experiments.sweep --config=configs/ablation_kernel_subsets.py --workdir=runs/abl_ks
    python -m experiments.analyses kernel_subsets runs/abl_ks

The data teacher is a random model with its *own* W_V, so with only W_Q (or only W_K) trained
the targets are generally not reachable at all (the student's frozen W_V fixes the span of its
outputs); the Q-only finding needs realisable targets and is ``ablation_q_only.py``.
``:smoke`` runs the same grid in seconds (20 steps, 2 seeds).
"""

from configs import qk_frozen
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = qk_frozen.get_config()
    c.seeds = tuple(range(16))
    c.data.teacher_kernel = "softmax"  # one target set for both kernels (see the docstring)
    c.train.num_steps = 10_000
    c.train.log_every = 100
    c.train.checkpoint_every = 10_000
    c.train.stop_at_threshold = False  # it stops at the initial-relative eps only
    c.train.progress_bar = False
    if smoke:
        defaults.smoke(c)
        c.train.checkpoint_every = 1_000  # one checkpoint, at the end: seconds per cell
    return c


def get_sweep():
    return {
        "model.kernel": ("softmax", "gaussian", "gaussian_unnormalized"),
        "train.trainable": ("QKV", "V", "Q", "K"),
        "data.seed": (0, 1, 2),  # data draws: inputs X and the teacher
    }
