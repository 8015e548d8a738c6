"""All of W_Q, W_K, W_V trained by full-batch GD on the theory model (finding 1: global optimum
with either kernel). Same data and sizes as qk_frozen.py.

    python -m experiments.run --config=configs/qkv_trained.py --config.model.kernel=gaussian
"""

from configs import qk_frozen


def get_config(arg=None):
    c = qk_frozen.get_config(arg)
    c.train.trainable = "QKV"
    return c
