"""What every command line shares: absl flags on a ``FlagValues`` of the command's own, a usage
line, help that lists every flag, one-line errors with exit status 2.

Each entry point defines its flags inside ``main`` (through a ``define_flags(fv)`` function), so
importing a module defines nothing: the modules are libraries too, imported by notebooks and
tests side by side without absl's ``DuplicateFlagError``. Nothing here imports JAX.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import NoReturn

from absl import flags

HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort", "--helpfull", "-helpfull")
WIDTH = 100
ABSL_ROWS = (  # what absl's parser itself understands, in any FlagValues
    ("--flagfile=FILE", "Read flags from FILE, one per line (repeatable)."),
    ("--undefok=NAMES", "Comma-separated flag names that may be given without being defined."),
)


def fail(message: object) -> NoReturn:
    """Exit 2 with ``error: <message>`` on one line of stderr (newlines folded)."""
    sys.exit(error(message))


def error(message: object) -> int:
    """Print ``error: <message>`` on one line of stderr; the exit status 2, for ``return``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def help_requested(argv: Sequence[str]) -> str | None:
    """``'full'`` for --helpfull, ``'short'`` for the other help flags, else None (flags after
    a ``--`` are arguments, not requests)."""
    for a in argv:
        if a == "--":
            break
        if a in HELP_FLAGS:
            return "full" if "full" in a else "short"
    return None


SCRIPTS = ("run", "sweep", "report")  # the console scripts: attn-dynamics-<name>


def program(argv: Sequence[str] | None, name: str) -> str:
    """How to call command ``name`` (``'run'``, ``'analyses'``, ...) the way the user called
    this one: ``attn-dynamics-<name>`` from a console script, else ``python -m
    experiments.<name>``."""
    called = os.path.basename(argv[0]) if argv else ""
    if called.startswith("attn-dynamics-") and name in SCRIPTS:
        return f"attn-dynamics-{name}"
    return f"python -m experiments.{name}"


def parse(fv: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parse ``argv`` (``argv[0]``: the program) into ``fv``; the positional arguments after
    it, or exit 2 with one line (an unknown flag, a value of the wrong type)."""
    try:
        return fv(list(argv))[1:]
    except flags.Error as e:
        fail(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)


def flag_rows(fv: flags.FlagValues, skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(--name=VALUE, help [default])`` for every flag defined in ``fv``, in definition
    order: help generated from the flags themselves cannot omit one."""
    rows = []
    for flag in _all_flags(fv):
        if flag.name in skip:
            continue
        if isinstance(flag, flags.BooleanFlag):
            name = f"--[no]{flag.name}"
        else:
            name = f"--{flag.name}=" + (flag.short_name or _placeholder(flag))
        default = flag.default if flag.default not in (None, [], False, "") else None
        text = one_line(_ABSL_ADDITIONS.sub("", flag.help))
        text += f" (default: {default})" if default is not None else ""
        rows.append((name, text))
    return rows


def _all_flags(fv: flags.FlagValues) -> list:
    found, names = [], set()
    for module_flags in fv.flags_by_module_dict().values():
        for flag in module_flags:
            if flag.name not in names:
                names.add(flag.name)
                found.append(flag)
    return found


# What absl adds to a multi or enum flag's help; the placeholder says it already.
_ABSL_ADDITIONS = re.compile(r";\s*repeat this option to specify a list of values$|^<[^>]*>: ")
METAVARS = {"workdir": "DIR", "coordinator_address": "HOST:PORT"}


def _placeholder(flag) -> str:
    if flag.name in METAVARS:
        return METAVARS[flag.name]
    kind = flag.flag_type()
    if kind.startswith("multi"):
        return "VALUE (repeatable)"
    if hasattr(flag.parser, "enum_values"):
        return "{" + "|".join(flag.parser.enum_values) + "}"
    return {"int": "N", "float": "X"}.get(kind, "VALUE")


def table(rows: Sequence[tuple[str, str]]) -> str:
    """Two aligned columns, wrapped at :data:`WIDTH`."""
    width = min(max((len(name) for name, _ in rows), default=0) + 2, 30)
    lines = []
    for name, text in rows:
        if len(name) + 2 > width:  # a long name gets a line of its own
            lines.append(f"  {name}")
            name = ""
        lines.append(
            textwrap.fill(
                f"{name:<{width}}{text}",
                WIDTH,
                initial_indent="  ",
                subsequent_indent=" " * (width + 2),
            )
        )
    return "\n".join(lines)


def help_text(
    usage: str,
    about: str,
    rows: Sequence[tuple[str, str]],
    *,
    epilog: str = "",
    fv: flags.FlagValues | None = None,
    full: bool = False,
) -> str:
    """``usage: ...``, what the command does, its flags, and ``epilog``; with ``full``, also
    absl's own flags (``--flagfile``, ...)."""
    rows = [*rows, ("-h, --help", "This help; --helpfull: also absl's own flags.")]
    parts = [usage.rstrip(), "", textwrap.fill(one_line(about), WIDTH), "", "flags:", table(rows)]
    if epilog:
        parts += ["", epilog.rstrip()]
    if full:
        parts += ["", "absl flags:", table(ABSL_ROWS)]
    return "\n".join(parts) + "\n"
