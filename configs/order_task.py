"""Order-dependent synthetic classification for position-encoding studies (no files).

``order_lookback`` (default): which content token stood ``lookback`` places before the marker;
``order_precedence`` (arg ``precedence``): does token A come before token B. Train on lengths
``min_len..train_len``; evaluate at every length of ``eval_lengths`` (splits ``len_64``,
``len_96``, ``len_128``: extrapolation beyond the training lengths). A model without position
information cannot solve either task (the label is not a function of the multiset of tokens).

    python -m experiments.run --config=configs/order_task.py --config.model.position=floater
    python -m experiments.run --config=configs/order_task.py:precedence
    python -m experiments.run --config=configs/order_task.py:precedence,smoke

``model.max_len`` must cover the longest eval length (128 here; raise it with eval_lengths).
"""

from attn_dynamics import data
from configs.lra_text import set_encoder
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    args = variants(arg, ["lookback", "precedence", "smoke"], exclusive=["lookback", "precedence"])
    task = "order_precedence" if "precedence" in args else "order_lookback"
    c = defaults.base_config()
    c.data = data.default_config(task)
    if task == "order_lookback":
        num_classes, vocab_size = c.data.get_ref("num_tokens"), c.data.get_ref("num_tokens") + 2
    else:
        num_classes, vocab_size = 2, c.data.get_ref("num_tokens") + 3
    set_encoder(c, num_classes=num_classes, vocab_size=vocab_size, max_len=128)
    c.model.position = "sinusoidal"
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-3
    c.train.num_steps = 5_000
    c.train.log_every = 50
    c.train.eval_every = 1_000
    c.train.checkpoint_every = 1_000
    c.train.loss_threshold = 0.0
    if "smoke" in args:
        defaults.smoke(c)
        c.data.min_len = 8
        c.data.train_len = 16
        c.data.eval_lengths = (16, 24, 32)
        c.model.max_len = 32
        c.data.train_size = 256
        c.data.eval_size = 16
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
    return c
