"""Position encodings seen directly: the features past the training length (FLOATER's own
figure) and what each encoding costs in parameters.

* :func:`positions` -- reads the ``positions.npz`` that ``python -m experiments.measure
  positions ROOT`` wrote into each run of a length-extrapolation sweep, draws the features
  over positions 0 .. 2L per encoding, and tabulates their smoothness inside and past L;
* :func:`parameter_counts` -- position-encoding parameters by encoding, width, depth and
  maximum length, counted from the library's own modules (``jax.eval_shape``: no arrays).
"""

from __future__ import annotations

import pathlib

import numpy as np

from experiments import position_features
from experiments.analyses import cells as cells_lib
from experiments.analyses import plots, tables

# (setting, width d, blocks, FLOATER hidden width (0: d)) at which to count parameters
SIZES = (
    ("this project's encoder", 64, 2),
    ("Transformer base (WMT14, the FLOATER paper)", 512, 6),
    ("BERT/RoBERTa base (GLUE, the FLOATER paper)", 768, 12),
)
MAX_LENGTHS = (64, 512, 1024, 4096)


def count(name: str, *, dim: int, num_layers: int, max_len: int) -> int:
    """Parameters of the position encoding ``name`` (its Flax module, default options)."""
    import jax

    from attn_dynamics import models, position  # models registers 'floater'

    del models
    module = position.make(name, dim=dim, num_layers=num_layers, max_len=max_len)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), 8))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def parameter_counts() -> list[dict]:
    rows = []
    for setting, dim, layers in SIZES:
        for name in ("sinusoidal", "learned", "floater"):
            row = {"setting": f"{setting}: d = {dim}, {layers} blocks", "encoding": name}
            for max_len in MAX_LENGTHS:
                n = count(name, dim=dim, num_layers=layers, max_len=max_len)
                row[f"max length {max_len}"] = f"{n:,}"
            rows.append(row)
    return rows


def smoothness_row(label: str, feats: np.ndarray, train_len: int) -> dict:
    """Median over seeds and positions of the step ‖p_i − p_(i−1)‖ relative to ‖p_i‖, inside
    the training range and past it."""
    step = np.linalg.norm(np.diff(feats, axis=1), axis=-1)
    norm = np.linalg.norm(feats[:, 1:], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = step / norm
    inside, past = relative[:, : train_len - 1], relative[:, train_len - 1 :]
    return {
        "encoding": label,
        "seeds": feats.shape[0],
        "feature": "",
        "‖p_i‖ median, < L": tables.fmt(float(np.median(norm[:, : train_len - 1]))),
        "‖p_i‖ median, >= L": tables.fmt(float(np.median(norm[:, train_len - 1 :]))),
        "step/‖p_i‖ median, < L": tables.fmt(float(np.nanmedian(inside))),
        "step/‖p_i‖ median, >= L": tables.fmt(float(np.nanmedian(past))),
    }


def positions(root: pathlib.Path) -> str:
    """Position features at positions 0 to 2L per encoding, and the parameter-count table."""
    panels, rows = [], []
    for c in cells_lib.load_all(root):
        measured = position_features.read(c.path)
        if measured is None or measured["features"].size == 0:
            continue
        feats, train_len = measured["features"], int(measured["train_len"])
        panels.append((c.name, feats, train_len))
        row = smoothness_row(c.name, feats, train_len)
        row["feature"] = str(measured["what"])
        rows.append(row)
    text = f"# Position features past the training length\n\nRun directory: `{root}`. "
    if panels:
        plots.position_features(panels, root / "position_features.png")
        text += (
            "Per encoding, the position feature of every seed at positions 0 .. 2L - 1 "
            "(FLOATER: the first block's query bias b_q(t_i), the part it learns; sinusoidal "
            "and learned: the term added to the embeddings): its norm and the step between "
            "neighbouring positions relative to it, medians over seeds and positions, inside "
            "the training range (< L) and past it.\n\n" + tables.markdown(rows)
        )
        text += "\n![position features](position_features.png)\n"
    else:
        text += (
            "No run has positions.npz yet: `python -m experiments.measure positions "
            f"{root}` writes them.\n"
        )
    text += (
        "\n## Position-encoding parameters\n\nCounted from the library's modules (default "
        "options: FLOATER with the reference code's MLP field and per-block q/k/v initial "
        "values); a learned table grows with the maximum length, FLOATER does not.\n\n"
        + tables.markdown(parameter_counts())
    )
    return tables.write(root, "positions", text)
