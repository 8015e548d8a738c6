"""Ablation: over-parameterisation, embedding dimension d relative to n*N (finding 4).

The theory model of ``qk_frozen.py`` (n = 4 samples of N = 4 tokens, nN = 16, out_dim 4,
targets from a random softmax teacher for both kernels, as in ``ablation_kernel_subsets.py``),
with d in {8, 16, 32, 64, 128}, i.e. d / (nN) in {0.5, 1, 2, 4, 8}, for V-only and QKV
training, both kernels, 16 seeds per cell, three data draws (``data.seed`` 0, 1, 2: inputs X
and teacher), every cell run for all 10k steps (see ``ablation_kernel_subsets.py``).
With d < nN the attention-output matrix Phi ([nN, d]) cannot have full row rank, so V-only GD
cannot fit generic targets.

The loss curvature grows with d (the V-only Hessian's top eigenvalue sigma_max(Phi)^2 / n,
measured at initialisation over 16 seeds: about 0.35 d + 2, e.g. 4.7 at d = 8, 22 at d = 64,
43 at d = 128 for softmax), so the learning rate is scaled as lr = 3.2 / (d + 8) (0.044 at
d = 64, near qk_frozen.py's 0.05): every cell runs at a similar fraction (0.45-0.65 x 2/L for
the median seed) of its stable step size, so the comparison is about conditioning, not step
size.

    python -m experiments.sweep --config=configs/ablation_overparam.py --workdir=runs/abl_op
    python -m experiments.analyses overparam runs/abl_op
"""

from configs import qk_frozen
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = qk_frozen.get_config()
    c.seeds = tuple(range(16))
    c.data.teacher_kernel = "softmax"  # one target set for both kernels (see the docstring)
    c.train.learning_rate = 3.2 / (c.model.get_ref("dim").to_float() + 8.0)
    c.train.num_steps = 10_000
    c.train.log_every = 100
    c.train.checkpoint_every = 10_000
    c.train.stop_at_threshold = False  # it stops at the initial-relative eps only
    c.train.progress_bar = False
    if smoke:
        defaults.smoke(c)
        c.train.checkpoint_every = 1_000
    return c


def get_sweep():
    return {
        "model.dim": (8, 16, 32, 64, 128),
        "train.trainable": ("V", "QKV"),
        "model.kernel": ("softmax", "gaussian"),
        "data.seed": (0, 1, 2),  # data draws: inputs X and the teacher
    }
