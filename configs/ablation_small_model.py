"""Ablation: only W_Q trained in small models (d in {1, 2, 4}, few tokens): sub-optimal minima?

Finding 3 of Song et al. (2024): with only W_Q trained GD reaches the global optimum with the
Gaussian kernel, while softmax can stall at a sub-optimal local solution. With d >= nN neither
normalised kernel has a spurious critical point in W_Q (REPRODUCING 1.3); genuine sub-optimal
local minima can only appear in small, under-parameterised models. This config asks how often
GD ends in one, per kernel.

Realisable targets: ``student_teacher_regression`` with ``teacher_kv = 'shared'``: W_K and W_V
are drawn once per data draw (from ``data.seed``, ``model.shared_init = 'KV'``) and shared by
every seed; each seed draws only its own W_Q. The teacher is that same model with an independent
W_Q of scale 1 (another draw of the init distribution; with scale 3 the un-normalised kernel's
targets are ~0 at d = 4), so a zero-loss global optimum exists and "sub-optimal" is well
defined, and all seeds of a data draw train on the same problem in one compiled program.

Setting: n = 4 samples of N = 3 tokens, d in {1, 2, 4} (< nN = 12), out_dim 1, the teacher of
the model's own kernel, kernels softmax, row-normalised Gaussian and un-normalised Gaussian
(both sigma^2 = sqrt(d), the default), full-batch GD with a small step (lr 0.02) for 60k steps,
128 seeds per cell, data draws 0 and 1. Then the stuck-seed classification, from the
checkpoints (gradient, full Hessian w.r.t. W_Q in float64, loss vs the baseline):

    python -m experiments.sweep --config=configs/ablation_small_model.py --workdir=runs/abl_small
    python -m experiments.measure minima runs/abl_small
    python -m experiments.analyses small_model runs/abl_small

``:smoke`` runs seconds per cell (8 seeds, 20 steps).
"""

from attn_dynamics import data
from experiments import defaults
from experiments.validation import variants

KERNELS = ("softmax", "gaussian", "gaussian_unnormalized")
DIMS = (1, 2, 4)
NUM_SEEDS = 128
DATA_DRAWS = (0, 1)


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.seeds = tuple(range(NUM_SEEDS))
    c.model.name = "theory"
    c.model.kernel = "softmax"
    c.model.dim = 2
    c.model.out_dim = 1
    c.model.implementation = "explicit"  # a handful of tokens: the fused paths buy nothing
    c.model.shared_init = "KV"  # frozen W_K, W_V: one draw per data draw, every seed's own W_Q
    c.data = data.default_config("student_teacher_regression")
    c.data.num_samples = 4
    c.data.seq_len = 3
    defaults.link_student_teacher(c)
    c.data.teacher_kv = "shared"
    c.model.shared_init_seed = c.data.get_ref("seed").identity()  # W_K, W_V of the data draw
    c.data.teacher_q_scale = 1.0  # the global W_Q: another draw of the init distribution
    c.train.trainable = "Q"
    c.train.optimizer = "gd"
    c.train.learning_rate = 0.02
    c.train.num_steps = 60_000
    c.train.log_every = 1_000
    c.train.checkpoint_every = 30_000
    c.train.progress_bar = False
    if smoke:
        defaults.smoke(c)
        c.seeds = tuple(range(8))
        c.train.checkpoint_every = 1_000
    return c


def get_sweep():
    return {"model.kernel": KERNELS, "model.dim": DIMS, "data.seed": DATA_DRAWS}
