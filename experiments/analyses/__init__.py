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

import importlib

# kind -> the module that defines the function of that name; imported on first use, so that
# rejecting a bad command line costs no SciPy or matplotlib import
_MODULES = {
    "kernel_subsets": "theory",
    "q_only": "theory",
    "overparam": "theory",
    "kernels": "tasks",
    "extrapolation": "tasks",
    "small_model": "small_model",
    "positions": "encodings",
}


class Analysis:
    """``analysis(rundir) -> markdown``: the function ``name`` of its module, imported when it
    is first called (or its ``__doc__`` read)."""

    def __init__(self, name: str):
        self.name = name

    @property
    def function(self):
        module = importlib.import_module(f"experiments.analyses.{_MODULES[self.name]}")
        return getattr(module, self.name)

    @property
    def __doc__(self):  # noqa: D105 -- the analysis's own docstring, for --help
        return self.function.__doc__

    def __call__(self, root):
        return self.function(root)


ANALYSES = {name: Analysis(name) for name in _MODULES}


def __getattr__(name: str):
    """``analyses.kernel_subsets`` and the like: the analysis functions themselves."""
    if name in _MODULES:
        return ANALYSES[name].function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ANALYSES", "Analysis", *_MODULES]
