"""The command line of the analyses: ``python -m experiments.analyses KIND RUNDIR``.

``main(argv)`` takes the arguments after the program name (``['q_only', 'runs/abl_q']``); help
and bad input end the process as argparse did (``SystemExit`` 0 and 2), a run directory that
cannot be read returns 2. Each analysis is ``ANALYSES[kind](rundir) -> markdown``.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from experiments import cli, rundirs
from experiments.analyses import ANALYSES

PROG = "python -m experiments.analyses"


def first_sentence(doc: str) -> str:
    paragraph = cli.one_line(doc.strip().split("\n\n")[0])
    return paragraph.split(". ")[0].rstrip(".") + "."


def usage(prog: str = PROG, *, full: bool = False) -> str:
    kinds = [(name, first_sentence(fn.__doc__ or "")) for name, fn in ANALYSES.items()]
    return cli.help_text(
        f"usage: {prog} KIND RUNDIR",
        "Tables and figures from a sweep's run directories (reads them only); writes "
        "RUNDIR/ablation_KIND.md and its PNGs and prints the markdown. Quantities that need the "
        "model (sharpness, minima, position features) are computed first by python -m "
        "experiments.measure.",
        [],
        epilog="analyses (KIND):\n" + cli.table(kinds) + "\n\nRUNDIR: the sweep's --workdir\n\n"
        "exit status: 0 written; 2 bad input or an unreadable run directory (one line on "
        "stderr).",
        full=full,
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if kind := cli.help_requested(argv):
        print(usage(prog, full=kind == "full"), end="")
        sys.exit(0)
    args = cli.parse(flags.FlagValues(), [prog, *argv])
    if len(args) != 2:
        cli.fail(f"expected KIND RUNDIR, got {args or 'nothing'}; usage: {prog} KIND RUNDIR")
    kind, rundir = args[0], pathlib.Path(args[1])
    if kind not in ANALYSES:
        cli.fail(f"unknown analysis {kind!r}; valid: {list(ANALYSES)}")
    if not rundir.is_dir():
        return cli.error(f"run directory {str(rundir)!r} does not exist")
    try:
        text = ANALYSES[kind](rundir)
    except (FileNotFoundError, rundirs.RunDirError) as e:
        return cli.error(e)
    print(text)
    return 0
