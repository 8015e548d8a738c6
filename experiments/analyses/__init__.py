"""Analyses of sweeps: markdown tables and figures from run directories, nothing trained.

    python -m experiments.analyses KIND RUNDIR      # KIND: see ANALYSES, or --help

An analysis only reads what runs left in their directories (through :mod:`experiments.rundirs`)
and writes ``ablation_<KIND>.md`` and its PNGs into RUNDIR. Quantities that need the model
(sharpness from checkpoints) are computed beforehand by :mod:`experiments.measure`.

Modules: :mod:`.cells` (per-seed outcomes of a sweep's cells), :mod:`.tables` (rows, statistics,
markdown), :mod:`.plots` (figures on ``matplotlib.figure.Figure``, no global backend),
:mod:`.theory` (kernel x subset, Q-only, over-parameterisation), :mod:`.tasks` (real tasks:
kernels, length extrapolation), :mod:`.encodings` (position features past the training length,
parameter counts), :mod:`.stats` and :mod:`.comparisons` (paired tests between arms).
"""

from __future__ import annotations

from experiments.analyses.encodings import positions
from experiments.analyses.small_model import small_model
from experiments.analyses.tasks import extrapolation, kernels
from experiments.analyses.theory import kernel_subsets, overparam, q_only

ANALYSES = {
    "kernel_subsets": kernel_subsets,
    "q_only": q_only,
    "overparam": overparam,
    "kernels": kernels,
    "extrapolation": extrapolation,
    "small_model": small_model,
    "positions": positions,
}

__all__ = [
    "ANALYSES",
    "extrapolation",
    "kernel_subsets",
    "kernels",
    "overparam",
    "positions",
    "q_only",
    "small_model",
]
