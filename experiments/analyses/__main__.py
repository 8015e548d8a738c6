"""``python -m experiments.analyses KIND RUNDIR`` (``--help`` lists the analyses)."""

import sys

from experiments.analyses.cli import main

if __name__ == "__main__":
    sys.exit(main())
