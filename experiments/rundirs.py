"""Reading run directories: the one place that parses what a run (and a sweep) writes.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object
per logged step; evaluation rows carry ``"eval": true``) and, once the run has ended,
``summary.json``. A sweep root also holds ``sweep.json``: its axes and one entry per cell,
``{"name": <directory relative to the root>, <dotted field>: <value>, ...}``.

Damage is reported as :class:`RunDirError`, one line naming the file and how to recover. A
torn last line of ``metrics.jsonl`` (a run killed mid-write) is skipped with a warning: the run
regenerates it on resume. Older runs wrote non-finite numbers as ``NaN`` / ``Infinity``, which
Python's ``json`` reads as floats.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings

CONFIG, METRICS, SUMMARY, INDEX = "config.json", "metrics.jsonl", "summary.json", "sweep.json"


class RunDirError(ValueError):
    """A run directory's file is missing or damaged; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run directory of a sweep: where it is, its name relative to the analysed root, and
    the config fields the sweep set for it (empty for a run found without an index)."""

    path: pathlib.Path
    name: str
    overrides: dict = dataclasses.field(default_factory=dict)


def _load_json(path: pathlib.Path, recover: str):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(
            f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); {recover}"
        ) from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot be read ({e.strerror}); {recover}") from None


def read_config(run_dir: str | os.PathLike) -> dict:
    """The resolved config the run was started with (``config.json``)."""
    path = pathlib.Path(run_dir) / CONFIG
    if not path.exists():
        raise RunDirError(f"{path}: missing, so {str(run_dir)!r} is not a run directory")
    config = _load_json(path, "rerun the same command in a fresh workdir to recreate it")
    if not isinstance(config, dict):
        raise RunDirError(f"{path}: holds {type(config).__name__}, not a JSON object")
    return config


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """``summary.json``, or None while the run has not finished (or never started)."""
    path = pathlib.Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    summary = _load_json(
        path, "delete it and rerun the same command in the same workdir to rewrite it"
    )
    if not isinstance(summary, dict):
        raise RunDirError(f"{path}: holds {type(summary).__name__}, not a JSON object")
    return summary


def _rows(run_dir: str | os.PathLike) -> list[dict]:
    path = pathlib.Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # a kill mid-write; resuming the run rewrites the row
                warnings.warn(f"{path}: skipped the torn last line {number}", stacklevel=3)
                continue
            raise RunDirError(
                f"{path}: line {number} is not JSON ({e.msg}); resume the run in the same "
                "workdir to rewrite its metrics, or delete the line"
            ) from None
        if not isinstance(row, dict) or "step" not in row:
            raise RunDirError(f"{path}: line {number} is not a metrics row (no 'step')")
        rows.append(row)
    return rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The training rows of ``metrics.jsonl`` in step order (evaluation rows left out)."""
    return [r for r in _rows(run_dir) if not r.get("eval")]


def read_evals(run_dir: str | os.PathLike) -> list[dict]:
    """The evaluation rows of ``metrics.jsonl`` (``"eval": true``) in step order."""
    return [r for r in _rows(run_dir) if r.get("eval")]


def read_index(root: str | os.PathLike) -> dict | None:
    """A sweep root's ``sweep.json`` (``axes`` and ``cells``), or None when there is none."""
    path = pathlib.Path(root) / INDEX
    if not path.exists():
        return None
    index = _load_json(path, "rerun the sweep command on this root to rewrite it")
    if not isinstance(index, dict) or not isinstance(index.get("cells"), list):
        raise RunDirError(f"{path}: has no 'cells' list; rerun the sweep command to rewrite it")
    return index


def list_cells(root: str | os.PathLike) -> list[Cell]:
    """The run directories under ``root``: a sweep's cells in grid order from ``sweep.json``
    (including cells that have not run yet), else every directory holding ``config.json``.

    Sweeps nested under a sweep root (a second sweep into a subdirectory) follow its cells;
    names are paths relative to ``root``.
    """
    root = pathlib.Path(root)
    return list(_walk(root, root, in_sweep=False))


def _walk(root: pathlib.Path, directory: pathlib.Path, *, in_sweep: bool):
    """Cells under ``directory``; below a sweep root only nested sweeps count (a stray run
    directory there is a leftover of another grid, not a cell)."""
    index = read_index(directory)
    indexed = set()
    if index is not None:
        for entry in index["cells"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise RunDirError(
                    f"{directory / INDEX}: a cell entry without a 'name'; rerun the sweep "
                    "command to rewrite it"
                )
            overrides = {k: v for k, v in entry.items() if k != "name"}
            path = directory / entry["name"]
            indexed.add(path)
            yield Cell(path=path, name=_relative(root, path), overrides=overrides)
    elif (directory / CONFIG).exists():
        if not in_sweep:
            yield Cell(path=directory, name=_relative(root, directory))
        return
    in_sweep = in_sweep or index is not None
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and p not in indexed):
        yield from _walk(root, sub, in_sweep=in_sweep)


def _relative(root: pathlib.Path, path: pathlib.Path) -> str:
    return path.relative_to(root).as_posix() if path != root else root.name


def config_value(config: dict, field: str):
    """``config['a']['b']`` for ``field='a.b'``; None where the path does not exist."""
    node = config
    for key in field.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def flatten(config: dict, prefix: str = "") -> dict:
    """A saved config as ``{'a.b': value}``: what two runs' configs are compared by."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
