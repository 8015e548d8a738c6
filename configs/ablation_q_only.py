"""Ablation: only W_Q trained, softmax vs Gaussian kernels, on targets W_Q alone can reach.

Finding 3 of Song et al. (2024): with only W_Q trained, GD is guaranteed to reach the global
optimum with the Gaussian kernel only; softmax can stall. For "global optimum" to mean zero loss
the targets must be reachable by moving W_Q alone, so the data set here is
``student_teacher_regression`` (``attn_dynamics/data/student_teacher.py``): the teacher
*is* the student of the run's seed at initialisation (same W_K, same W_V, same kernel) with
W_Q replaced by an independent draw of scale ``data.teacher_q_scale`` (3: a peakier attention
than the student's).
A teacher of that form needs the run to train one seed, so seeds are a sweep axis here (one
run per seed; the analysis pools them). Three data draws (``data.seed`` 0, 1, 2) change the
inputs X only: the teacher's weights come from the student's seed (its W_K, W_V and its own
W_Q draw), so a draw is the same teacher on new inputs (and hence new targets).

Every run trains all 10k steps: of the two convergence criteria, eps (1e-3 x its initial loss)
and baseline (1e-3 x the best constant predictor's loss), the second is the stricter one for
about half the seeds of the normalised kernels (their initial loss is 0.4-2.5x the baseline
loss) and for every seed of the un-normalised Gaussian (initial loss 170-1200x the baseline
loss), so stopping at eps would leave it unknown.

Setting: n = 4 samples of N = 4 tokens, d = 64 >= nN = 16 (W_Q can set every query
independently), out_dim 4, full-batch GD, eps = 1e-3 x initial loss, 10k steps, learning
rates 0.1 and 0.02. Two sweeps (the un-normalised Gaussian needs its own bandwidth,
sigma^2 = d, and a sweep grid is a product):

    python -m experiments.sweep --config=configs/ablation_q_only.py --workdir=runs/abl_q
    python -m experiments.sweep --config=configs/ablation_q_only.py \\
        --workdir=runs/abl_q/unnormalized --axis=model.kernel=gaussian_unnormalized \\
        --config.model.sigma2=64
    python -m experiments.measure sharpness runs/abl_q
    python -m experiments.analyses q_only runs/abl_q

With sigma^2 = sqrt(d) = 8 the un-normalised kernel is exp(-||q - k||^2 / 16) ~ exp(-8) for
typical queries and keys here (||q - k||^2 ~ 2d): outputs and gradients vanish.
``:smoke`` runs seconds (20 steps, seeds 0 and 1).
"""

from attn_dynamics import data
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.seeds = (0,)
    c.model.name = "theory"
    c.model.kernel = "softmax"
    c.model.dim = 64
    c.model.out_dim = 4
    c.data = data.default_config("student_teacher_regression")
    c.data.num_samples = 4
    c.data.seq_len = 4
    defaults.link_student_teacher(c)
    c.data.teacher_q_scale = 3.0
    c.train.trainable = "Q"
    c.train.optimizer = "gd"
    c.train.learning_rate = 0.1
    c.train.num_steps = 10_000
    c.train.log_every = 100
    c.train.checkpoint_every = 10_000
    c.train.loss_threshold = 1e-3
    c.train.stop_at_threshold = False  # it stops at eps only (see the docstring)
    c.train.progress_bar = False
    if smoke:
        defaults.smoke(c)
        c.train.checkpoint_every = 1_000
    return c


def get_sweep():
    return {
        "model.kernel": ("softmax", "gaussian"),
        "train.learning_rate": (0.1, 0.02),
        "seeds": tuple((s,) for s in range(16)),
        "data.seed": (0, 1, 2),  # data draws: inputs X (the teacher's weights stay)
    }
