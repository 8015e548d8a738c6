"""The main job: W_Q, W_K frozen, W_V trained by full-batch GD, over-parameterised (d >= n*N).

With W_Q, W_K fixed the model output is Phi W_V, linear in W_V, so the squared loss is a convex
quadratic; with d = 64 >= n*N = 32 the attention-output matrix Phi has full row rank and GD
drives the loss to zero (logged: sigma_min of Phi, singular-value ratios).

    python -m experiments.run --config=configs/qk_frozen.py
    python -m experiments.run --config=configs/qk_frozen.py --config.model.kernel=gaussian
"""

from experiments import defaults


def get_config(arg=None):
    c = defaults.base_config()
    c.model.name = "theory"
    c.model.kernel = "softmax"
    c.model.dim = 64  # d
    c.model.out_dim = 4
    c.data.num_samples = 8  # n
    c.data.seq_len = 4  # N: n*N = 32 <= d
    c.data.batch_size = 0  # full batch
    c.train.trainable = "V"
    c.train.optimizer = "gd"
    c.train.learning_rate = 1.0
    c.train.num_steps = 2000
    c.train.log_every = 10
    c.train.checkpoint_every = 500
    c.train.loss_threshold = 1e-3
    if arg == "smoke":
        defaults.smoke(c)
    return c
