"""The main job: W_Q, W_K frozen, W_V trained by full-batch GD, over-parameterised (d >= n*N).

With W_Q, W_K fixed the model output is Phi W_V, linear in W_V, so the squared loss is a convex
quadratic; with d = 64 >= n*N = 16 the attention-output matrix Phi has full row rank and GD
drives the loss to zero (logged: sigma_min of Phi, singular-value ratios). How fast depends on
the conditioning of Phi, which attention's averaging of tokens makes poor (rows of one sample
are similar): the step count here is set by that, not by d.

    python -m experiments.run --config=configs/qk_frozen.py
    python -m experiments.run --config=configs/qk_frozen.py --config.model.kernel=gaussian
"""

from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.model.name = "theory"
    c.model.kernel = "softmax"
    c.model.dim = 64  # d
    c.model.out_dim = 4
    c.data.num_samples = 4  # n
    c.data.seq_len = 4  # N: n*N = 16 <= d
    c.data.targets = "teacher"  # realisable targets from a random model of the same form
    c.data.batch_size = 0  # full batch
    c.train.trainable = "V"
    c.train.optimizer = "gd"
    c.train.learning_rate = 0.05  # below 2 / L for the loss's curvature L (about 25 here)
    c.train.num_steps = 3000
    c.train.log_every = 20
    c.train.checkpoint_every = 500
    c.train.loss_threshold = 1e-3
    if smoke:
        defaults.smoke(c)
    return c
