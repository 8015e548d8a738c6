"""Entry point: ``attn-dynamics-run --config=qk_frozen [--workdir=DIR]`` (or ``python -m
experiments.run --config=configs/qk_frozen.py``).

Flags only; the work is ``train.train_and_evaluate(config, workdir)``. Any config field can be
overridden (``--config.model.kernel=gaussian --config.train.trainable=Q``); ``:smoke`` after
the file name shrinks the experiment to seconds; ``--show_config`` lists every field with its
value and comment. A config is a file path, or the name of a config the package ships
(``qk_frozen``, ``configs/qk_frozen.py`` outside a checkout). Bad input exits with status 2 and
one line on stderr, before JAX is imported (for configs that do not import it themselves) and
before anything is written. Importing this module defines no flags (:func:`define_flags`).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib.util
import io
import logging
import os
import pathlib
import shlex
import sys
import textwrap
import threading
import tokenize

from absl import flags
from ml_collections import config_flags

from experiments import cli, distributed, host, validation

fail = cli.fail  # the name sweeps and scripts use


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The flags of a run (``sweep`` and ``landscape`` define the same ones beside theirs)."""

    config: flags.FlagHolder
    workdir: flags.FlagHolder
    show_config: flags.FlagHolder
    coordinator_address: flags.FlagHolder
    num_processes: flags.FlagHolder
    process_id: flags.FlagHolder
    distributed: flags.FlagHolder


def define_flags(fv: flags.FlagValues, argv: list[str]) -> RunFlags:
    """Define the run's flags on ``fv``; ``argv`` is what will be parsed (the config flag
    defines a flag per ``--config.FIELD`` it holds)."""
    return RunFlags(
        config=config_flags.DEFINE_config_file(
            "config",
            None,
            "A config file, or the name of one the package ships (qk_frozen), optionally with "
            "':variant' (e.g. ':smoke'; several: ':cpu,smoke').",
            flag_values=fv,
            lock_config=True,
            sys_argv=argv,
        ),
        workdir=flags.DEFINE_string(
            "workdir",
            None,
            "Run directory; rerunning with the same one resumes it. Default: a fresh "
            "timestamped one under runs/ (printed, with the command that resumes it).",
            flag_values=fv,
        ),
        show_config=flags.DEFINE_boolean(
            "show_config",
            False,
            "Print every field of the config (overrides applied) with its value and comment, "
            "then exit without running.",
            flag_values=fv,
        ),
        coordinator_address=flags.DEFINE_string(
            "coordinator_address",
            None,
            "Multi-host: HOST:PORT of process 0's coordination service.",
            flag_values=fv,
        ),
        num_processes=flags.DEFINE_integer(
            "num_processes", None, "Multi-host: how many processes.", flag_values=fv
        ),
        process_id=flags.DEFINE_integer(
            "process_id", None, "Multi-host: this process, 0..N-1.", flag_values=fv
        ),
        distributed=flags.DEFINE_boolean(
            "distributed",
            False,
            "Multi-host without the three flags above: JAX detects the cluster (SLURM, TPU "
            "pod, MPI).",
            flag_values=fv,
        ),
    )


@dataclasses.dataclass(frozen=True)
class Invocation:
    """A parsed, validated command line."""

    config: object  # ml_collections.ConfigDict
    workdir: str
    workdir_given: bool
    flags: RunFlags
    argv: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# --help


def available_configs(directory: pathlib.Path | None = None) -> list[str]:
    """The config files of ``directory`` (not ``__init__.py`` or private helpers); without
    one, those of ``./configs`` in a checkout, else the names of the configs the package
    ships."""
    if directory is None:
        if pathlib.Path("configs").is_dir():
            directory = pathlib.Path("configs")
        elif (packaged := packaged_configs()) is not None:
            return sorted(p.stem for p in packaged.glob("*.py") if not p.name.startswith("_"))
        else:
            return []
    return sorted(str(p) for p in directory.glob("*.py") if not p.name.startswith("_"))


def config_rows() -> list[tuple[str, str]]:
    return [
        (
            "--config=FILE[:VARIANT]",
            "A config file, or the name of one the package ships (qk_frozen); ':VARIANT' picks "
            "a variant the file defines (e.g. ':smoke', a run of seconds). Required.",
        ),
        (
            "--config.FIELD=VALUE",
            "Override one config field by its dotted path, e.g. --config.model.kernel=gaussian "
            "--config.train.num_steps=200 (repeatable).",
        ),
    ]


def usage(argv: list[str] | None = None, *, full: bool = False) -> str:
    prog = cli.program(argv, "run")
    fv = flags.FlagValues()
    define_flags(fv, [prog])
    configs = ", ".join(available_configs()) or "(none found)"
    epilog = "\n".join(
        [
            textwrap.fill(f"configs: {configs}", cli.WIDTH, subsequent_indent="  "),
            "",
            "list a config's fields, values and comments (runs nothing):",
            f"  {prog} --config=qk_frozen --show_config",
            "",
            textwrap.fill(
                "exit status: 0 done; 1 diverged or failed; 2 bad input (one line on stderr); "
                "3 multi-host: a peer was lost (one line, with the command that resumes); "
                "130 interrupted.",
                cli.WIDTH,
                subsequent_indent="  ",
            ),
        ]
    )
    return cli.help_text(
        f"usage: {prog} --config=FILE[:VARIANT] [--config.FIELD=VALUE ...] [--workdir=DIR]\n"
        f"       {prog} --config=FILE[:VARIANT] --show_config",
        "Train the experiment a config file describes, every seed of config.seeds at once, in "
        "a run directory: config.json, metrics.jsonl (one row per logged step), checkpoints/, "
        "summary.json, tensorboard/ and log.txt. Rerunning with the same --workdir resumes it; "
        "a finished run is not retrained.",
        [*config_rows(), *cli.flag_rows(fv, skip=("config",))],
        epilog=epilog,
        full=full,
    )


# --------------------------------------------------------------------------------------------
# Loading a config: every failure is one line, before the file's overrides are applied


def packaged_configs() -> pathlib.Path | None:
    """The folder of the ``configs`` package (this checkout's, or the installed one's)."""
    try:
        spec = importlib.util.find_spec("configs")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def resolve_config(spec: str) -> str:
    """``path[:variant]`` with the path made to exist: as given, else the config of that name
    in the ``configs`` package (``configs/qk_frozen.py``, ``qk_frozen.py`` and ``qk_frozen``
    all name it), so an installed package runs its configs from any folder."""
    path, sep, variant = spec.partition(":")
    if pathlib.Path(path).is_file():
        return spec
    packaged = packaged_configs()
    name = pathlib.Path(path).name
    candidate = packaged / (name if name.endswith(".py") else f"{name}.py") if packaged else None
    if candidate is not None and candidate.is_file() and not name.startswith("_"):
        return f"{candidate}{sep}{variant}"
    return spec


def _config_argument(argv: list[str]) -> tuple[int, str] | tuple[None, None]:
    """``(index, value)`` of the ``--config`` flag in ``argv``."""
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a.startswith("--config="):
            return i, a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None, None


def with_resolved_config(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with its ``--config`` value resolved (:func:`resolve_config`), and that value."""
    index, spec = _config_argument(argv)
    if spec is None:
        return list(argv), None
    resolved = resolve_config(spec)
    argv = list(argv)
    argv[index] = f"--config={resolved}" if argv[index].startswith("--config=") else resolved
    return argv, resolved


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
        known = available_configs(listed)
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


def parse_config(fv: flags.FlagValues, holder, argv: list[str]):
    """``(config, positional arguments)``: the config file of ``argv`` loaded, its overrides
    applied; any failure one line and exit 2. ``argv``'s --config must be resolved."""
    _, spec = _config_argument(argv)
    if spec is None:
        fail("--config is required, e.g. --config=qk_frozen (see --help)")
    loaded = load_config(spec)
    try:
        rest = fv(argv)[1:]
        config = holder.value  # loads the file again and applies the overrides
    except Exception as e:  # noqa: BLE001 -- report any parse failure as one line
        fail(_bad_override(argv, loaded) or str(e))
    return config, rest


def default_workdir(spec: str) -> str:
    name = pathlib.Path(spec.partition(":")[0]).stem
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return str(pathlib.Path("runs") / f"{name}-{stamp}")


def parse(argv: list[str], fv: flags.FlagValues | None = None) -> Invocation:
    """The validated command line of a run, or exit 2 with a one-line message;
    ``--show_config`` prints the config and exits 0 here. ``fv`` may hold more flags (the
    sweep's); the run's are defined on it here."""
    given_argv = tuple(argv)
    argv, spec = with_resolved_config(argv)
    fv = flags.FlagValues() if fv is None else fv
    run_flags = define_flags(fv, argv)
    config, rest = parse_config(fv, run_flags.config, argv)
    if rest:
        fail(f"unexpected argument {rest[0]!r}; flags are --name=value (see --help)")
    if run_flags.show_config.value:
        print(describe_config(config, pathlib.Path(spec.partition(":")[0])))
        sys.exit(0)
    try:
        validation.validate(config)
    except validation.ConfigError as e:
        fail(str(e))
    if config.train.get("deterministic_gpu", False):
        set_xla_flag(validation.DETERMINISTIC_GPU_FLAG)
    the_cluster = cluster(run_flags)
    if problem := distributed.check(the_cluster):
        fail(problem)
    workdir = run_flags.workdir.value
    if workdir is None and the_cluster.wanted:
        fail("a multi-host run needs --workdir, a directory every process sees")
    given = workdir is not None
    return Invocation(config, workdir if given else default_workdir(spec), given, run_flags,
                      given_argv)  # fmt: skip


def resume_command(invocation: Invocation, command: str = "run") -> str:
    """The command line that resumes this run: the same one, with its --workdir."""
    prog = cli.program(invocation.argv, command)
    args = [a for a in invocation.argv[1:] if not a.startswith("--workdir")]
    return shlex.join([*prog.split(), *args, f"--workdir={invocation.workdir}"])


def cluster(run_flags: RunFlags) -> distributed.Cluster:
    return distributed.Cluster(
        coordinator_address=run_flags.coordinator_address.value,
        num_processes=run_flags.num_processes.value,
        process_id=run_flags.process_id.value,
        auto=run_flags.distributed.value,
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
    if kind := cli.help_requested(argv[1:]):
        print(usage(argv, full=kind == "full"), end="")
        return 0
    invocation = parse(argv)
    config, workdir = invocation.config, invocation.workdir
    if not invocation.workdir_given:
        print(f"workdir: {workdir} (resume: {resume_command(invocation)})", file=sys.stderr)
    the_cluster = cluster(invocation.flags)
    if the_cluster.wanted and not the_cluster.supervised:
        # One process of many: the work runs in a child, so that a lost peer (which JAX's
        # runtime answers with a C++ abort) ends this process with one line and exit 3.
        return distributed.supervise(
            [sys.executable, "-m", "experiments.run", *argv[1:]],
            lost_peer=lambda text: distributed.lost_peer_line(
                the_cluster, text, resume_command(invocation)
            ),
        )
    host.configure(config.mesh.get("cpu_devices_per_core", 0))  # XLA CPU flags, before JAX
    distributed.initialize(the_cluster)  # before any other JAX call
    from experiments import train  # imports JAX: only once the config is known to be valid

    try:
        summary = train.train_and_evaluate(config, workdir)
    except Exception as e:
        if the_cluster.supervised and (detail := distributed.lost_peer(e)):
            distributed.leave_lost_peer(detail)  # the supervisor prints the line
        if isinstance(e, train.ConfigError | train.data.DatasetNotPrepared):
            fail(str(e))
        if isinstance(e, train.RunFailed):
            quiet_abandoned_writers()
            print(f"error: {e}", file=sys.stderr)
            return 1
        if the_cluster.supervised:
            distributed.leave_failed()  # the traceback, without waiting for the peers
        raise
    print(
        f"status: {summary['status']}  final loss: {summary['final_loss']}  "
        f"wall time: {summary['wall_seconds']:.1f} s  workdir: {workdir}",
        file=sys.stderr,
    )
    return {"done": 0, "diverged": 1, "interrupted": 130}.get(summary["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
