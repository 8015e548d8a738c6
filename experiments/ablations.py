"""The analyses' former module, kept so that existing commands and notebooks work:
``python -m experiments.ablations KIND RUNDIR`` is ``python -m experiments.analyses KIND RUNDIR``
and ``ablations.q_only(root)`` is :func:`experiments.analyses.q_only`. New code uses
:mod:`experiments.analyses` (tables and plots), :mod:`experiments.measure` (sharpness from
checkpoints) and :mod:`attn_dynamics.data.student_teacher` (the Q-only data set).
"""

import sys

from experiments.analyses import ANALYSES, extrapolation, kernel_subsets, kernels, overparam, q_only
from experiments.analyses.cli import main as _main

__all__ = ["ANALYSES", "extrapolation", "kernel_subsets", "kernels", "main", "overparam", "q_only"]


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python -m experiments.ablations")


if __name__ == "__main__":
    sys.exit(main())
