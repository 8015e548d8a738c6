"""FLOATER on the order-dependent synthetic task: train on lengths up to 64, evaluate at 64, 96
and 128 (extrapolation: FLOATER integrates its ODE further; it never clips or wraps).

    python -m experiments.run --config=configs/floater_order.py
    python -m experiments.run --config=configs/floater_order.py:smoke
    python -m experiments.run --config=configs/floater_order.py --config.model.position=sinusoidal
    python -m experiments.run --config=configs/floater_order.py \
        --config.model.floater.injection=input

``--config.model.position`` picks any encoding (none / sinusoidal / learned / floater); the
``model.floater`` fields apply only to 'floater'. The fixed-step solve over the longest eval
length takes ``(128 - 1) * rk4_substeps`` RK4 steps, within ``model.floater.max_steps``.
"""

from attn_dynamics import data
from configs.lra_text import set_encoder
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.data = data.default_config("order_lookback")
    num_tokens = c.data.get_ref("num_tokens")
    # Labels: the content token `lookback` places before the marker; vocabulary: content
    # tokens, the marker and padding.
    set_encoder(c, num_classes=num_tokens, vocab_size=num_tokens + 2, max_len=128)
    c.model.position = "floater"
    c.model.floater.injection = "qkv_bias"  # the reference code's form
    c.model.floater.solver = "rk4"
    c.model.floater.dt = 0.01
    c.model.floater.rk4_substeps = 5
    c.model.floater.update_every = 1
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-3
    c.train.num_steps = 5_000
    c.train.log_every = 50
    c.train.eval_every = 1_000
    c.train.checkpoint_every = 1_000
    c.train.loss_threshold = 0.0  # classification: report, do not stop
    if smoke:
        defaults.smoke(c)
        c.data.min_len = 8
        c.data.train_len = 16
        c.data.eval_lengths = (16, 24, 32)  # still 2x the training length
        c.model.max_len = 32
        c.data.train_size = 256
        c.data.eval_size = 16
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
    return c
