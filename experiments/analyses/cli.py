"""The command line of the analyses: ``python -m experiments.analyses KIND RUNDIR``."""

from __future__ import annotations

import argparse
import pathlib
import sys

from experiments import rundirs
from experiments.analyses import ANALYSES


def parser(prog: str = "python -m experiments.analyses") -> argparse.ArgumentParser:
    kinds = "\n".join(
        f"  {name:<15} {(fn.__doc__ or '').strip().splitlines()[0]}"
        for name, fn in ANALYSES.items()
    )
    p = argparse.ArgumentParser(
        prog=prog,
        description="Tables and figures from a sweep's run directories (reads them only); "
        "writes RUNDIR/ablation_KIND.md and its PNGs and prints the markdown.",
        epilog=f"analyses:\n{kinds}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=list(ANALYSES), metavar="KIND", help="the analysis to run")
    p.add_argument("rundir", type=pathlib.Path, metavar="RUNDIR", help="the sweep's --workdir")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m experiments.analyses") -> int:
    args = parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    if not args.rundir.is_dir():
        print(f"error: run directory {str(args.rundir)!r} does not exist", file=sys.stderr)
        return 2
    try:
        text = ANALYSES[args.kind](args.rundir)
    except (FileNotFoundError, rundirs.RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0
