"""Record a benchmark's figures in benchmarks/RESULTS.md, each script in its own section."""

from __future__ import annotations

import datetime
import pathlib
import platform
import re

import jax

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    dev = jax.devices()[0]
    return (
        f"{dev.platform} ({dev.device_kind}, {jax.device_count()} device(s)), "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
    )


def record(section: str, body: str, *, path: pathlib.Path = RESULTS) -> None:
    """Replace (or append) the section ``section`` of RESULTS.md with ``body``."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    stamp = datetime.date.today().isoformat()
    block = f"{begin}\n## {section} ({stamp}, {machine()})\n\n{body.strip()}\n{end}"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nWritten by the scripts in this folder; rerun one to "
        "refresh its section.\n"
    )
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)
