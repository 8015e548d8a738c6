"""Entry point: ``python -m experiments.run --config=configs/qk_frozen.py [--workdir=DIR]``.

Flags only; the work is ``train.train_and_evaluate(config, workdir)``. Any config field can be
overridden (``--config.model.kernel=gaussian --config.train.trainable=Q``); ``:smoke`` after
the file name shrinks the experiment to seconds. Bad input exits with status 2 and one line on
stderr, before anything is compiled or written.
"""

from __future__ import annotations

import datetime
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file, optionally with ':arg' (e.g. ':smoke').",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (resumes what is there); default: a fresh one under runs/."
)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_argument(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config_file(spec: str):
    """The config a ``path[:arg]`` spec names, loaded directly (to diagnose bad overrides)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_under_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _bad_override(argv: list[str], config) -> str | None:
    """A one-line description of the first override naming no config field, if any."""
    for a in argv:
        if not a.startswith("--config."):
            continue
        path = a[len("--config.") :].split("=", 1)[0].split(".")
        node = config
        for depth, key in enumerate(path):
            fields = sorted(node.keys()) if hasattr(node, "keys") else []
            if key not in fields:
                where = ".".join(["config", *path[:depth]])
                return f"unknown config field {'.'.join(path)!r}; valid fields of {where}: {fields}"
            node = node[key]
    return None


def parse(argv: list[str]):
    """``(config, workdir)`` from the command line, or exit 2 with a one-line message."""
    spec = _config_argument(argv)
    if spec is None:
        fail("--config is required, e.g. --config=configs/qk_frozen.py")
    path = spec.partition(":")[0]
    if not pathlib.Path(path).is_file():
        known = sorted(str(p) for p in pathlib.Path("configs").glob("*.py"))
        fail(f"config file {path!r} not found; available: {known}")
    try:
        flags.FLAGS(argv)
        config = _CONFIG.value  # loads the file and applies the overrides
    except Exception as e:  # noqa: BLE001 -- report any parse failure as one line
        reason = None
        try:
            reason = _bad_override(argv, _load_config_file(spec))
        except Exception as load_error:  # noqa: BLE001
            reason = f"config {spec!r} failed to load: {load_error!r}"
        fail(reason or " ".join(str(e).split()))
    del config
    workdir = _WORKDIR.value
    if workdir is None:
        name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        workdir = str(pathlib.Path("runs") / f"{name}-{stamp}")
    return _CONFIG.value, workdir


def main(argv: list[str] | None = None) -> int:
    config, workdir = parse(sys.argv if argv is None else argv)
    from experiments import train  # after flag parsing: bad flags fail before jax loads

    print(f"workdir: {workdir}", file=sys.stderr)
    try:
        summary = train.train_and_evaluate(config, workdir)
    except train.ConfigError as e:
        fail(str(e))
    except train.data.DatasetNotPrepared as e:
        fail(str(e))
    print(
        f"status: {summary['status']}  final loss: {summary['final_loss']}  "
        f"wall time: {summary['wall_seconds']:.1f} s  workdir: {workdir}",
        file=sys.stderr,
    )
    return {"done": 0, "diverged": 1, "interrupted": 130}.get(summary["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
