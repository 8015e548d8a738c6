"""Only W_Q trained (finding 3: convergence guaranteed only with the Gaussian kernel; softmax
may stall at a sub-optimal point). Switch the kernel by override:

    python -m experiments.run --config=configs/q_only.py --config.model.kernel=gaussian
"""

from configs import qk_frozen


def get_config(arg=None):
    c = qk_frozen.get_config(arg)
    c.train.trainable = "Q"
    c.train.learning_rate = 0.5
    return c
