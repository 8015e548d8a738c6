"""Length extrapolation of position encodings (FLOATER's claim): none / sinusoidal / learned /
floater, trained on sequences of length <= L, evaluated at exactly L, 1.5L and 2L.

Task ``order_lookback`` (``attn_dynamics/data/order.py``): predict the content token that stood
``lookback`` places before a marker; a model without positions cannot solve it. The paper's
2-layer encoder (embedding 64, MLP 128, 2 heads), Adam 1e-3, 3 seeds per encoding (vmapped).
A CPU-sized version: L = 32 (eval 32, 48, 64), 1500 steps of batch 32.

    python -m experiments.sweep --config=configs/floater_extrapolation.py --workdir=runs/fx
    python -m experiments.analyses extrapolation runs/fx

``learned`` has a table of ``max(model.max_len, longest eval length)`` = 2L rows: rows beyond
L never receive a gradient (no training sequence reaches them), so its 1.5L and 2L columns show
an untrained encoding, not extrapolation. ``floater`` integrates its ODE past L (the same
vector field, further in time); sinusoidal is defined at every position.
"""

from configs import floater_order
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = floater_order.get_config()
    length = 32
    c.seeds = tuple(range(8))  # paired: every encoding sees the same batches per seed
    c.data.min_len = length // 4
    c.data.train_len = length
    c.data.eval_lengths = (length, 3 * length // 2, 2 * length)
    c.data.eval_regions = ("all", "within", "beyond")  # beyond: the answer lies past L
    c.data.train_size = 0  # fresh examples every step
    c.data.eval_size = 512
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.model.max_len = 2 * length
    c.train.num_steps = 1500
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 1500
    c.train.progress_bar = False
    if smoke:
        defaults.smoke(c)
        c.train.checkpoint_every = 1_000
        c.data.min_len = 4
        c.data.train_len = 8
        c.data.eval_lengths = (8, 12, 16)
        c.model.max_len = 16
        c.data.eval_size = 16
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
    return c


def get_sweep():
    return {"model.position": ("none", "sinusoidal", "learned", "floater")}
