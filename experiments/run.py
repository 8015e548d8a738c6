"""Entry point: ``python -m experiments.run --config=configs/qk_frozen.py [--workdir=DIR]``.

Flags only; the work is ``train.train_and_evaluate(config, workdir)``. Any config field can be
overridden (``--config.model.kernel=gaussian --config.train.trainable=Q``); ``:smoke`` after
the file name shrinks the experiment to seconds; ``--show_config`` lists every field with its
value and comment. Bad input exits with status 2 and one line on stderr, before JAX is imported
(for configs that do not import it themselves) and before anything is written.
"""

from __future__ import annotations

import ast
import datetime
import importlib.util
import io
import logging
import os
import pathlib
import sys
import textwrap
import threading
import tokenize

from absl import flags
from ml_collections import config_flags

from experiments import distributed, host, validation

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file, optionally with ':variant' (e.g. ':smoke'; several: ':cpu,smoke').",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (resumes what is there); default: a fresh one under runs/."
)
_SHOW_CONFIG = flags.DEFINE_boolean(
    "show_config",
    False,
    "Print every field of the config (overrides applied) with its value and comment, then exit "
    "without running.",
)

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordination service."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process, 0..N-1.")
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed",
    False,
    "Multi-host without the three flags above: JAX detects the cluster (SLURM, TPU pod, MPI).",
)

HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort", "--helpfull", "-helpfull")

USAGE = """\
usage: python -m experiments.run --config=FILE[:VARIANT] [--config.FIELD=VALUE ...] \
[--workdir=DIR]
       python -m experiments.run --config=FILE[:VARIANT] --show_config

Train the experiment a config file describes, every seed of config.seeds at once, in a run
directory: config.json, metrics.jsonl (one row per logged step), checkpoints/, summary.json and
log.txt. Rerunning on the same directory resumes it; a finished run is not retrained.

flags:
{flags}

config files: {configs}
  ':VARIANT' after the file name picks a variant the file defines (e.g. ':smoke', a run of
  seconds); an unknown variant is an error that lists the valid ones.

list a config's fields, values and comments (runs nothing):
  python -m experiments.run --config=configs/qk_frozen.py --show_config

exit status: 0 done; 1 diverged or failed; 2 bad input (one line on stderr); 130 interrupted.
"""


def fail(message: str) -> None:
    """Exit 2 with one line on stderr (any newline in ``message`` is folded)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------------------------
# --help


def help_requested(argv: list[str]) -> str | None:
    """``'full'`` for --helpfull, ``'short'`` for the other help flags, else None."""
    for a in argv[1:]:
        if a == "--":
            break
        if a in HELP_FLAGS:
            return "full" if "full" in a else "short"
    return None


def available_configs(directory: pathlib.Path = pathlib.Path("configs")) -> list[str]:
    """The config files of ``directory`` (not ``__init__.py`` or private helpers)."""
    return sorted(str(p) for p in directory.glob("*.py") if not p.name.startswith("_"))


def usage(*, full: bool = False) -> str:
    rows = [
        ("--config=FILE[:VARIANT]", flags.FLAGS["config"].help + " Required."),
        (
            "--config.FIELD=VALUE",
            "Override one config field by its dotted path, e.g. --config.model.kernel=gaussian "
            "--config.train.num_steps=200 (repeatable).",
        ),
        ("--workdir=DIR", flags.FLAGS["workdir"].help),
        ("--show_config", flags.FLAGS["show_config"].help),
        ("--coordinator_address=H:P", flags.FLAGS["coordinator_address"].help),
        ("--num_processes=N", flags.FLAGS["num_processes"].help),
        ("--process_id=I", flags.FLAGS["process_id"].help),
        ("--distributed", flags.FLAGS["distributed"].help),
        ("-h, --help", "This help. --helpfull: also absl's own flags."),
    ]
    width = max(len(name) for name, _ in rows) + 2
    table = "\n".join(
        textwrap.fill(
            f"{name:<{width}}{text}",
            100,
            initial_indent="  ",
            subsequent_indent=" " * (width + 2),
        )
        for name, text in rows
    )
    configs = ", ".join(available_configs()) or "(none under ./configs)"
    configs = textwrap.fill(configs, 100, initial_indent=" " * 14, subsequent_indent="  ")
    text = USAGE.format(flags=table, configs=configs.strip())
    if full:
        text += "\nall flags:\n" + flags.FLAGS.get_help()
    return text


# --------------------------------------------------------------------------------------------
# Loading a config: every failure is one line, before the file's overrides are applied


def _config_argument(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _importable(path: pathlib.Path) -> None:
    """Let ``from configs import ...`` in a config file work from any working directory."""
    package = path.resolve().parent
    if (package / "__init__.py").exists() and str(package.parent) not in sys.path:
        sys.path.insert(0, str(package.parent))


def load_config(spec: str):
    """The ConfigDict of a ``path[:variant]`` spec, without overrides; exits 2 on failure."""
    import ml_collections

    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        listed = file.parent if file.parent.is_dir() and file.parent != pathlib.Path() else None
        known = available_configs(listed or pathlib.Path("configs"))
        fail(f"config file {path!r} not found; available: {known}")
    _importable(file)
    try:
        module_spec = importlib.util.spec_from_file_location("_config_under_check", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            fail(f"config file {path!r} defines no get_config(arg=None)")
        config = module.get_config(variant) if variant else module.get_config()
    except ValueError as e:  # validation.ConfigError included: an unknown variant, ...
        fail(f"config {spec!r}: {e}")
    except Exception as e:  # noqa: BLE001 -- whatever the file raises, one line
        fail(f"config {spec!r} failed to load: {type(e).__name__}: {e}")
    if not isinstance(config, ml_collections.ConfigDict):
        fail(
            f"get_config() of {path!r} returned a {type(config).__name__}, not an "
            "ml_collections.ConfigDict (start from experiments.defaults.base_config())"
        )
    return config


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
    """``(config, workdir)`` from the command line, validated, or exit 2 with a one-line
    message. ``--show_config`` prints the config and exits 0 here."""
    spec = _config_argument(argv)
    if spec is None:
        fail("--config is required, e.g. --config=configs/qk_frozen.py (see --help)")
    loaded = load_config(spec)
    try:
        rest = flags.FLAGS(argv)
        config = _CONFIG.value  # loads the file again and applies the overrides
    except Exception as e:  # noqa: BLE001 -- report any parse failure as one line
        fail(_bad_override(argv, loaded) or str(e))
    if len(rest) > 1:
        fail(f"unexpected argument {rest[1]!r}; flags are --name=value (see --help)")
    if _SHOW_CONFIG.value:
        print(describe_config(config, pathlib.Path(spec.partition(":")[0])))
        sys.exit(0)
    try:
        validation.validate(config)
    except validation.ConfigError as e:
        fail(str(e))
    if config.train.get("deterministic_gpu", False):
        set_xla_flag(validation.DETERMINISTIC_GPU_FLAG)
    if problem := distributed.check(cluster()):
        fail(problem)
    workdir = _WORKDIR.value
    if workdir is None:
        name = pathlib.Path(spec.partition(":")[0]).stem
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        workdir = str(pathlib.Path("runs") / f"{name}-{stamp}")
    return config, workdir


def cluster() -> distributed.Cluster:
    return distributed.Cluster(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        auto=_DISTRIBUTED.value,
    )


def set_xla_flag(flag: str) -> None:
    """Add ``flag`` to XLA_FLAGS; it takes effect if no device computation ran yet (XLA reads
    its flags when the backend starts, not when JAX is imported)."""
    current = os.environ.get("XLA_FLAGS", "")
    if flag not in current.split():
        os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


# --------------------------------------------------------------------------------------------
# --show_config: every field, its value, and the comment of its line in the schema's source


_DATA_MODULES = {  # data set -> module of attn_dynamics.data defining its default_config
    "synthetic_regression": "synthetic",
    "student_teacher_regression": "student_teacher",
    "imdb_bytes": "text",
    "image_seq": "image",
    "pathfinder": "pathfinder",
    "order_lookback": "order",
    "order_precedence": "order",
}


def _flatten(config, prefix: str = "") -> dict:
    out = {}
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys") and len(value.keys()):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif hasattr(value, "keys"):
            out[f"{prefix}{key}"] = {}  # an empty section: still a field one can fill
        else:
            out[f"{prefix}{key}"] = value
    return out


def _source_comments(
    file: pathlib.Path, function: str, root: str, prefix: str, *, nested: bool = True
) -> dict[str, str]:
    """``{prefix + 'a.b': comment}`` for the ``root.a.b = ...`` lines of ``function`` in
    ``file``: the line's trailing comment, else the comment lines right above it.
    ``nested=False`` skips assignments inside ``if`` blocks (a variant's own settings)."""
    try:
        source = file.read_text()
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    trailing, whole_line = {}, {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (whole_line if not tok.line[: tok.start[1]].strip() else trailing)[tok.start[0]] = text
    comments = {}
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name == function):
            continue
        for stmt in ast.walk(node) if nested else node.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                continue
            parts, target = [], stmt.targets[0]
            while isinstance(target, ast.Attribute):
                parts.append(target.attr)
                target = target.value
            if not (parts and isinstance(target, ast.Name) and target.id == root):
                continue
            comment = trailing.get(stmt.lineno)
            if comment is None:
                above, line = [], stmt.lineno - 1
                while line in whole_line:
                    above.insert(0, whole_line[line])
                    line -= 1
                # A sentence (or several lines) above documents the field; a one-line label
                # ("# encoder classifier") heads a group of fields and is left out.
                if len(above) > 1 or (above and above[0].endswith(".")):
                    comment = " ".join(above)
            if comment:
                comments[prefix + ".".join(reversed(parts))] = comment
    return comments


def field_comments(config, source: pathlib.Path | None = None) -> dict[str, str]:
    """Comments of the fields: from the config file ``source`` (its ``get_config``'s own
    lines), else from the schema (``experiments.defaults`` and the data set's
    ``default_config``). A config wrapping a run config in ``config.run`` (the landscape's)
    gets those of the run config under ``run.``."""
    if "model" not in config:
        inner = config.get("run")
        if inner is None or not hasattr(inner, "keys"):
            return {}
        comments = {f"run.{k}": v for k, v in field_comments(inner).items()}
    else:
        comments = {}
        data_name = str(config.get("data", {}).get("name", "")).removesuffix("_cached")
        module = _DATA_MODULES.get(data_name)
        package = importlib.util.find_spec("attn_dynamics")  # finds, does not import
        if module and package and package.origin:
            data_file = pathlib.Path(package.origin).parent / "data" / f"{module}.py"
            comments.update(_source_comments(data_file, "default_config", "d", "data."))
        defaults = pathlib.Path(__file__).resolve().parent / "defaults.py"
        comments.update(_source_comments(defaults, "base_config", "c", ""))
        if data_name == "synthetic_regression":
            comments.update(_source_comments(defaults, "synthetic_regression_config", "d", "data."))
        comments.update(_source_comments(defaults, "floater_config", "f", "model.floater."))
    if source is not None:
        comments.update(_source_comments(source, "get_config", "c", "", nested=False))
    return comments


def describe_config(config, source: pathlib.Path | None = None) -> str:
    """One line per field: ``path = value  # comment``."""
    fields = _flatten(config)
    comments = field_comments(config, source)
    lines = [f"{path} = {value!r}" for path, value in fields.items()]
    width = min(max(map(len, lines), default=0), 48) + 2
    out = []
    for line, path in zip(lines, fields, strict=True):
        comment = comments.get(path)
        out.append(f"{line:<{width}}# {comment}" if comment else line)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def quiet_abandoned_writers() -> None:
    """After a failed checkpoint write, orbax's abandoned writer tasks and threads report the
    same error again when they are collected, possibly after our line (asyncio's "Task
    exception was never retrieved", a closed event loop): the one line printed on failure is
    what the user reads last. The process is about to exit."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if kind := help_requested(argv):
        print(usage(full=kind == "full"))
        return 0
    config, workdir = parse(argv)
    host.configure(config.mesh.get("cpu_devices_per_core", 0))  # XLA CPU flags, before JAX
    distributed.initialize(cluster())  # before any other JAX call
    from experiments import train  # imports JAX: only once the config is known to be valid

    try:
        summary = train.train_and_evaluate(config, workdir)
    except train.ConfigError as e:
        fail(str(e))
    except train.data.DatasetNotPrepared as e:
        fail(str(e))
    except train.RunFailed as e:
        quiet_abandoned_writers()
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"status: {summary['status']}  final loss: {summary['final_loss']}  "
        f"wall time: {summary['wall_seconds']:.1f} s  workdir: {workdir}",
        file=sys.stderr,
    )
    return {"done": 0, "diverged": 1, "interrupted": 130}.get(summary["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
