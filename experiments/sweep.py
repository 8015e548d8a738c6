"""Run a grid of configs into one directory tree; rerunning skips finished cells.

    python -m experiments.sweep --config=configs/ablation_kernel_subsets.py --workdir=runs/abl
    python -m experiments.sweep --config=configs/qk_frozen.py \
        --axis=model.kernel=softmax,gaussian --axis=train.trainable=QKV,V,Q

The grid is the product of the config file's ``get_sweep()`` axes (if it defines one) and the
``--axis`` flags (which replace an axis of the same name). Seeds are not an axis: every cell
trains ``config.seeds`` at once (vmapped). Each cell is an ordinary run directory
``WORKDIR/<field>=<value>,...``; ``python -m experiments.report WORKDIR`` tabulates them.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import pathlib
import sys

from absl import flags

from experiments import run

_AXES = flags.DEFINE_multi_string(
    "axis", [], "FIELD=V1,V2,...: a grid axis over a config field (dotted path)."
)


def load_sweep_axes(config_spec: str) -> dict[str, tuple]:
    path = config_spec.partition(":")[0]
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.get_sweep()) if hasattr(module, "get_sweep") else {}


def parse_axis(text: str, config) -> tuple[str, tuple]:
    """``'model.kernel=softmax,gaussian'`` -> ``('model.kernel', ('softmax', 'gaussian'))``,
    values converted to the field's type."""
    field, sep, values = text.partition("=")
    if not sep or not values:
        raise ValueError(f"--axis {text!r} is not FIELD=V1,V2,...")
    current = get_field(config, field)
    kind = type(current) if current is not None else str
    convert = (lambda v: v.lower() in ("1", "true", "yes")) if kind is bool else kind
    return field, tuple(convert(v) for v in values.split(","))


def get_field(config, field: str):
    node = config
    for i, key in enumerate(field.split(".")):
        if not hasattr(node, "keys") or key not in node.keys():
            where = ".".join(["config", *field.split(".")[:i]])
            valid = sorted(node.keys()) if hasattr(node, "keys") else []
            raise ValueError(f"unknown sweep field {field!r}; valid fields of {where}: {valid}")
        node = node[key]
    return node


def set_field(config, field: str, value) -> None:
    *parents, leaf = field.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[leaf] = value


def cells(axes: dict[str, tuple]) -> list[dict]:
    names = list(axes)
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(axes[n] for n in names))
    ]


def cell_name(cell: dict) -> str:
    return (
        ",".join(f"{field.rsplit('.', 1)[-1]}={value}" for field, value in cell.items()) or "base"
    )


def is_finished(cell_dir: pathlib.Path) -> bool:
    summary = cell_dir / "summary.json"
    if not summary.exists():
        return False
    return json.loads(summary.read_text()).get("status") in ("done", "diverged")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    base, workdir = run.parse(argv)
    from experiments import train

    try:
        axes = load_sweep_axes(run._config_argument(argv))
        axes.update(parse_axis(a, base) for a in _AXES.value)
        for field, values in axes.items():
            for value in values:  # every cell's config is checked before the first one runs
                config = copy.deepcopy(base)
                set_field(config, field, value)
                train.validate(config)
    except (ValueError, TypeError) as e:
        run.fail(str(e))

    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    grid = cells(axes)
    (root / "sweep.json").write_text(
        json.dumps(
            {
                "axes": {k: list(v) for k, v in axes.items()},
                "cells": [dict(name=cell_name(c), **c) for c in grid],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    for i, cell in enumerate(grid):
        cell_dir = root / cell_name(cell)
        if is_finished(cell_dir):
            print(f"[{i + 1}/{len(grid)}] {cell_dir.name}: finished, skipped", file=sys.stderr)
            continue
        print(f"[{i + 1}/{len(grid)}] {cell_dir.name}", file=sys.stderr)
        config = copy.deepcopy(base)
        for field, value in cell.items():
            set_field(config, field, value)
        try:
            summary = train.train_and_evaluate(config, cell_dir)
        except train.ConfigError as e:
            run.fail(f"cell {cell_dir.name}: {e}")
        if summary["status"] == "interrupted":
            return 130
    print(f"sweep done: {root}  (report: python -m experiments.report {root})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
