"""Ablation: initialisation scale of W_Q, W_K relative to W_V (finding 4's singular-value ratio).

The theory asks, at initialisation, for a large enough ratio of the singular values of W_Q, W_K
to those of W_V. Here the ratio is set directly: W_Q, W_K ~ N(0, s_qk^2 / d) and
W_V ~ N(0, s_v^2 / d) with s_qk in {0.25, 1, 4} and s_v in {0.25, 1, 4}, all of Q, K, V trained
by GD (the model and data of ``ablation_kernel_subsets.py``: n = 4, N = 4, d = 64, up to 10k
steps, 16 seeds, every cell run for all 10k steps, three data draws ``data.seed`` 0, 1, 2),
both kernels, at lr 0.05 (that of the other theory ablations, unstable for the larger scales)
and 0.01.

    python -m experiments.sweep --config=configs/ablation_init_scale.py --workdir=runs/abl_init
    python -m experiments.analyses kernel_subsets runs/abl_init
"""

from configs import ablation_kernel_subsets


def get_config(arg=None):
    c = ablation_kernel_subsets.get_config(arg)
    c.train.trainable = "QKV"
    return c


def get_sweep():
    return {
        "model.kernel": ("softmax", "gaussian"),
        "model.qk_init_scale": (0.25, 1.0, 4.0),
        "model.v_init_scale": (0.25, 1.0, 4.0),
        "train.learning_rate": (0.05, 0.01),
        "data.seed": (0, 1, 2),  # data draws: inputs X and the teacher
    }
