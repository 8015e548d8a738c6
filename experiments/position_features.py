"""Position features of a trained encoder at positions past its training length.

FLOATER's own evidence for extrapolation is a picture: the position features over positions,
continued past the longest training sequence (a learned table is untrained there; the ODE
keeps integrating the same vector field). :func:`features` computes them from a finished
run's last checkpoint; ``python -m experiments.measure positions RUNDIR`` writes them into
each run as ``positions.npz`` and ``python -m experiments.analyses positions RUNDIR`` draws
them. Which feature is shown, by encoding:

* ``sinusoidal`` and ``learned``: the term added to the token embeddings, ``[T, D]``;
* ``floater`` (``qkv_bias`` injection, the reference code's form): the first block's
  per-position *query* bias ``b_q(t_i)``, ``[T, D]`` (``every_layer``: the first block's input
  term);
* ``none``: nothing to show.
"""

from __future__ import annotations

import pathlib

import numpy as np

FEATURES_FILE = "positions.npz"
LENGTH_FACTOR = 2  # positions 0 .. 2L - 1, L the training length


def first_block_feature(terms) -> tuple[np.ndarray | None, str]:
    """``([T, D] or None, what it is)`` from a :class:`~attn_dynamics.position.PositionTerms`."""
    # FLOATER's learned terms first: its qkv_bias form also keeps the sinusoidal at the input
    if terms.qkv_bias is not None:  # [layers, 3, T, D]
        return np.asarray(terms.qkv_bias[0, 0]), "query bias of block 1"
    if terms.per_layer is not None:  # [layers, T, D]
        return np.asarray(terms.per_layer[0]), "input term of block 1"
    if terms.at_input is not None:
        return np.asarray(terms.at_input), "term added to the token embeddings"
    return None, "no position information"


def features(run_dir: pathlib.Path, length: int | None = None) -> dict:
    """``{'features': [seeds, T, D], 'what', 'position', 'train_len', 'length'}`` of a finished
    encoder run (``length`` defaults to :data:`LENGTH_FACTOR` x the training length, capped by
    a learned table's rows)."""
    import jax
    import ml_collections

    from attn_dynamics import data
    from experiments import build, checkpointing, rundirs

    config = ml_collections.ConfigDict(rundirs.read_config(run_dir))
    info = data.get_dataset(config.data, mesh=None).info
    model = build.build_model(config, info)
    params = checkpointing.load_params(run_dir)
    train_len = int(info["seq_len"])
    length = LENGTH_FACTOR * train_len if length is None else int(length)
    if config.model.position == "learned":
        length = min(length, int(info["max_len"]), int(config.model.max_len) or length)
    apply = jax.jit(lambda p: model.apply({"params": p}, length, method=type(model).position_terms))
    per_seed, what = [], ""
    for i in range(len(config.seeds)):
        feature, what = first_block_feature(apply(jax.tree.map(lambda a, i=i: a[i], params)))
        if feature is not None:
            per_seed.append(feature)
    stacked = np.stack(per_seed) if per_seed else np.zeros((0, length, 0), np.float32)
    return {
        "features": stacked.astype(np.float32),
        "what": what,
        "position": str(config.model.position),
        "train_len": train_len,
        "length": length,
        "seeds": np.asarray(config.seeds),
    }


def write(run_dir: pathlib.Path) -> pathlib.Path:
    """Computes :func:`features` and writes them to ``run_dir/positions.npz``."""
    out = pathlib.Path(run_dir) / FEATURES_FILE
    np.savez_compressed(out, **features(run_dir))
    return out


def read(run_dir: pathlib.Path) -> dict | None:
    """The ``positions.npz`` of a run as a dict, None when not measured."""
    path = pathlib.Path(run_dir) / FEATURES_FILE
    if not path.exists():
        return None
    with np.load(path) as f:
        return {k: (f[k].item() if f[k].ndim == 0 else f[k]) for k in f.files}
