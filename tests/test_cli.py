"""``python -m experiments.run`` on bad input, --help and --show_config; config validation.

Every bad input exits 2 with exactly one line on stderr naming the bad value, before JAX is
imported (checked with ``-X importtime``), leaving an existing workdir byte-for-byte untouched.
These subprocesses never import JAX, so each costs a fraction of a second.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import pytest

from experiments import defaults, run, validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem[0] != "_")
HEAVY_MODULES = ("jax", "jaxlib", "flax", "optax", "orbax")


def cli(
    *args: str, module: str = "experiments.run"
) -> tuple[subprocess.CompletedProcess, list[str], set[str]]:
    """The process, its stderr lines (import-time report removed) and the modules it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    lines, imported = [], set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            lines.append(line)
    return result, lines, imported


def snapshot(root: pathlib.Path) -> dict:
    """Every path under ``root`` with its bytes (files) and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted([root, *root.rglob("*")])
    }


@pytest.fixture(scope="module")
def existing_workdir(tmp_path_factory) -> pathlib.Path:
    """A workdir holding a run's files, which no rejected command may touch."""
    workdir = tmp_path_factory.mktemp("existing")
    (workdir / "config.json").write_text(json.dumps({"seeds": [0]}) + "\n")
    (workdir / "metrics.jsonl").write_text('{"step": 0, "loss": 1.5}\n{"step": 5, "loss": 0.7}\n')
    (workdir / "checkpoints" / "5").mkdir(parents=True)
    (workdir / "checkpoints" / "5" / "state").write_bytes(os.urandom(64))
    return workdir


@pytest.fixture(scope="module")
def dict_config(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("configs") / "returns_dict.py"
    path.write_text("def get_config(arg=None):\n    return {'seeds': (0,)}\n")
    return path


QK_FROZEN = ROOT / "configs" / "qk_frozen.py"
MAIN = "--config=configs/qk_frozen.py"
ENCODER = ["--config.model.name=encoder", "--config.model.embed_dim=12"]
BAD_INPUTS = {  # case: (arguments, words the error line must contain)
    "unknown variant": (["--config=configs/qk_frozen.py:nope"], ["'nope'", "smoke"]),
    "unknown variant of an encoder config": (
        ["--config=configs/order_task.py:nope"],
        ["'nope'", "lookback, precedence, smoke"],
    ),
    "encoder config dropout 1.5": (
        ["--config=configs/pathfinder.py", "--config.model.dropout_rate=1.5"],
        ["dropout_rate", "1.5"],
    ),
    "get_config returns a dict": (["--config={dict_config}"], ["returns_dict.py", "dict"]),
    "learning rate inf": ([MAIN, "--config.train.learning_rate=inf"], ["learning_rate", "inf"]),
    "learning rate nan": ([MAIN, "--config.train.learning_rate=nan"], ["learning_rate", "nan"]),
    "learning rate negative": ([MAIN, "--config.train.learning_rate=-1"], ["learning_rate", "-1"]),
    "dropout 1.5": ([MAIN, "--config.model.dropout_rate=1.5"], ["dropout_rate", "1.5", "[0, 1)"]),
    "negative warmup": ([MAIN, "--config.train.warmup_steps=-10"], ["warmup_steps", "-10"]),
    "negative stable step": (
        [MAIN, "--config.train.stable_step_fraction=-0.5"],
        ["stable_step_fraction", "-0.5"],
    ),
    "zero num_steps": ([MAIN, "--config.train.num_steps=0"], ["num_steps", "0"]),
    "encoder heads": (
        [MAIN, *ENCODER, "--config.model.num_heads=5"],
        ["embed_dim=12", "num_heads=5", "[1, 2, 3, 4, 6, 12]"],
    ),
    "theory heads": ([MAIN, "--config.model.num_heads=3"], ["num_heads=3", "[1, 2, 4]"]),
    "unknown kernel": ([MAIN, "--config.model.kernel=gausian"], ["'gausian'", "'gaussian'"]),
    "fast path of a general kernel": (
        [MAIN, "--config.model.kernel=linear", "--config.model.implementation=fast"],
        ["'fast'", "'linear'", "softmax", "explicit"],
    ),
    "blockwise path of a general kernel": (
        [
            MAIN,
            "--config.model.kernel=gaussian_unnormalized",
            "--config.model.implementation=blockwise",
        ],
        ["'blockwise'", "'gaussian_unnormalized'", "softmax"],
    ),
    "unknown field": ([MAIN, "--config.model.kernl=gaussian"], ["kernl", "kernel"]),
    "wrong type": ([MAIN, "--config.train.learning_rate=fast"], ["learning_rate", "fast"]),
    "missing config file": (
        ["--config=configs/no_such_config.py"],
        ["no_such_config.py", "configs/qk_frozen.py"],
    ),
    "minibatch larger than the data set": (
        [MAIN, "--config.data.batch_size=5"],
        ["batch_size=5", "num_samples=4"],
    ),
    "repeated seeds": ([MAIN, "--config.seeds=(3,3)"], ["seeds", "(3, 3)"]),
    "init_from missing": (
        [MAIN, "--config.train.init_from=/no/such/run"],
        ["init_from", "/no/such/run"],
    ),
    "unknown flag": ([MAIN, "--worksdir=x"], ["worksdir"]),
    "stray argument": ([MAIN, "configs/qk_frozen.py"], ["configs/qk_frozen.py"]),
    "no config": (["--workdir=x"], ["--config"]),
    "trainable letters": ([MAIN, "--config.train.trainable=QX"], ["'QX'", "Q, K, V"]),
    "trainable regex": ([MAIN, "--config.train.trainable=re:["], ["'re:['", "regular expression"]),
    "diverge_above below 1": ([MAIN, "--config.train.diverge_above=0.5"], ["diverge_above", "0.5"]),
    "a packaged config's unknown variant by name": (["--config=qk_frozen:nope"], ["'nope'"]),
}
# Rejected in well under this (the issue measured 5 s where JAX was imported first); the
# interpreter, absl and ml_collections take ~0.4 s on an idle 2-core machine.
REJECT_SECONDS = 2.0


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_before_jax(case, existing_workdir, dict_config):
    args, must_mention = BAD_INPUTS[case]
    args = [a.format(dict_config=dict_config) for a in args]
    before = snapshot(existing_workdir)
    start = time.perf_counter()
    result, lines, imported = cli(*args, f"--workdir={existing_workdir}")
    assert time.perf_counter() - start < REJECT_SECONDS
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""
    assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))
    assert snapshot(existing_workdir) == before


def test_every_config_file_loads_without_jax():
    """Config files read the datasets' default configs, never JAX: the checks above stay fast."""
    code = (
        "import importlib, sys\n"
        f"for name in {CONFIG_NAMES!r}:\n"
        "    importlib.import_module(f'configs.{name}').get_config()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY_MODULES!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_missing_config_lists_only_config_files():
    _, lines, _ = cli("--config=configs/no_such_config.py")
    assert "__init__" not in lines[0]
    listed = lines[0].split("available: ", 1)[1]
    assert all(f"configs/{name}.py" in listed for name in CONFIG_NAMES)


def test_available_configs_skip_package_and_private_files(tmp_path):
    for name in ("__init__.py", "_helpers.py", "b.py", "a.py", "notes.txt"):
        (tmp_path / name).write_text("")
    assert run.available_configs(tmp_path) == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_help_exits_0_with_flags_and_how_to_list_fields(flag, existing_workdir):
    before = snapshot(existing_workdir)
    result, lines, imported = cli(flag, MAIN, f"--workdir={existing_workdir}")
    assert result.returncode == 0 and lines == [], result.stderr[-2000:]
    for text in ("usage:", "--config=FILE", "--config.FIELD=VALUE", "--workdir", "--show_config"):
        assert text in result.stdout, text
    assert "configs/qk_frozen.py" in result.stdout
    assert ("--flagfile" in result.stdout) == (flag == "--helpfull")  # absl's own flags
    assert not imported & set(HEAVY_MODULES)
    assert snapshot(existing_workdir) == before


def test_deterministic_gpu_sets_xla_flags_before_jax_starts():
    code = (
        "import os, sys; from experiments import run; "
        "run.parse(sys.argv); print(os.environ['XLA_FLAGS']); print('jax' in sys.modules)"
    )
    args = [MAIN, "--config.train.deterministic_gpu=True", "--workdir=unused"]
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": "--xla_dump_to=/tmp/x"},
        check=True,
    )
    xla_flags, jax_loaded = out.stdout.splitlines()
    assert xla_flags.split() == ["--xla_dump_to=/tmp/x", validation.DETERMINISTIC_GPU_FLAG]
    assert jax_loaded == "False"


def flatten(config, prefix: str = "") -> dict:
    out = {}
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict) and value.keys():
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, ml_collections.ConfigDict):
            out[f"{prefix}{key}"] = {}
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_show_config_prints_every_field_with_value_and_comment(existing_workdir):
    before = snapshot(existing_workdir)
    override = "--config.model.kernel=gaussian"
    result, lines, imported = cli(
        f"{MAIN}:smoke", override, "--show_config", f"--workdir={existing_workdir}"
    )
    assert result.returncode == 0 and lines == [], result.stderr[-2000:]
    printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    config = importlib.import_module("configs.qk_frozen").get_config("smoke")
    config.model.kernel = "gaussian"  # the data teacher's kernel follows it
    expected = flatten(config)
    assert expected["data.teacher_kernel"] == "gaussian"
    assert set(printed) == set(expected)
    for field, value in expected.items():
        assert printed[field].split("  # ")[0].rstrip() == repr(value), field
    # Comments come from the source lines setting a field, `c.a.b = ...  # <comment>`: the
    # config file's own, else the schema's.
    for source, field in [(defaults.__file__, "model.implementation"), (QK_FROZEN, "data.seq_len")]:
        assignment = f"c.{field} ="
        line = next(
            line for line in pathlib.Path(source).read_text().splitlines() if assignment in line
        )
        assert printed[field].endswith("# " + line.split("# ", 1)[1]), field
    assert not imported & set(HEAVY_MODULES)
    assert snapshot(existing_workdir) == before


def test_show_config_takes_data_comments_from_the_data_sets_default_config():
    from attn_dynamics.data import order

    described = run.describe_config(order_task())
    line = next(line for line in described.splitlines() if line.startswith("data.num_tokens = "))
    source = pathlib.Path(order.__file__).read_text()
    schema = next(line for line in source.splitlines() if "d.num_tokens =" in line)
    assert line.endswith("# " + schema.split("# ", 1)[1])


# --------------------------------------------------------------------------------------------
# Variants of every config file


def config_module(name: str):
    return importlib.import_module(f"configs.{name}")


def valid_variants(name: str) -> list[str]:
    """The variants ``name``'s rejection of an unknown one lists."""
    with pytest.raises(ValueError) as error:
        config_module(name).get_config("nope")
    return error.value.args[0].split("valid variants: ", 1)[1].split(", ")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_rejects_an_unknown_variant_with_the_valid_ones(name):
    with pytest.raises(ValueError, match="'nope'") as error:
        config_module(name).get_config("smoke,nope")
    message = str(error.value)
    assert "\n" not in message and "valid variants: " in message
    assert "smoke" in valid_variants(name)


def run_config(name: str, variant: str | None):
    config = config_module(name).get_config(variant)
    return config.run if name == "landscape" else config  # landscape trains config.run


def sweep_cells(name: str, base) -> list:
    axes = getattr(config_module(name), "get_sweep", dict)()
    cells = []
    for values in itertools.product(*axes.values()):
        cell = copy.deepcopy(base)
        for field, value in zip(axes, values, strict=True):
            *parents, leaf = field.split(".")
            node = cell
            for key in parents:
                node = node[key]
            node[leaf] = value
        cells.append(cell)
    return cells


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_shipped_config_variant_and_sweep_cell_validates(name):
    for variant in [None, *valid_variants(name)]:
        for cell in sweep_cells(name, run_config(name, variant)):
            validation.validate(cell)


def test_variants_parse_combinations_and_exclusions():
    assert validation.variants(None, ["smoke"]) == set()
    assert validation.variants(" cpu, smoke ", ["cpu", "smoke"]) == {"cpu", "smoke"}
    with pytest.raises(validation.ConfigError, match="'gpu'.*valid variants: cpu, smoke"):
        validation.variants("smoke,gpu", ["smoke", "cpu"])
    with pytest.raises(validation.ConfigError, match="exclude each other"):
        validation.variants("a,b", ["a", "b", "smoke"], exclusive=["a", "b"])
    with pytest.raises(validation.ConfigError, match="none"):
        validation.variants("smoke", [])


# --------------------------------------------------------------------------------------------
# validate() in process: the checks the CLI table does not reach, and agreement with the code
# it stands in for


def smoke_config(name: str, **fields):
    """``configs/<name>.py:smoke`` with ``section__field=value`` overrides."""
    config = config_module(name).get_config("smoke")
    for field, value in fields.items():
        *parents, leaf = field.split("__")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def qk_frozen(**fields):
    return smoke_config("qk_frozen", **fields)


def order_task(**fields):
    return smoke_config("order_task", **fields)


REJECTED = {  # case: (config, words of the message)
    "bool seed": (lambda: qk_frozen(seeds=(True,)), ["seeds"]),
    "no seeds": (lambda: qk_frozen(seeds=()), ["seeds"]),
    "minibatch beyond a generated pool": (
        lambda: order_task(data__train_size=6, data__batch_size=8),
        ["batch_size=8", "train_size=6"],
    ),
    "zero minibatch": (lambda: order_task(data__batch_size=0), ["batch_size", "0"]),
    "zero eval batch": (lambda: order_task(data__eval_batch_size=0), ["eval_batch_size"]),
    "unknown position": (lambda: order_task(model__position="rope"), ["'rope'", "'floater'"]),
    "unknown pooling": (lambda: order_task(model__pooling="max"), ["'max'", "'cls'"]),
    "floater solver": (
        lambda: order_task(model__position="floater", model__floater__solver="euler"),
        ["'euler'", "'rk4'"],
    ),
    "floater dt": (lambda: order_task(model__position="floater", model__floater__dt=0.0), ["dt"]),
    "unknown data set": (
        lambda: qk_frozen(data__name="mnist"),
        ["'mnist'", "'synthetic_regression'"],
    ),
    "encoder on regression data": (
        lambda: qk_frozen(model__name="encoder", model__num_heads=2),
        ["encoder", "synthetic_regression", "order_lookback"],
    ),
    "theory on classification data": (
        lambda: order_task(model__name="theory"),
        ["theory", "order_lookback"],
    ),
    "negative sigma2": (lambda: qk_frozen(model__sigma2=-1.0), ["sigma2", "-1.0"]),
    "infinite clip norm": (lambda: qk_frozen(train__grad_clip_norm=math.inf), ["grad_clip_norm"]),
    "optimizer not a string": (lambda: qk_frozen(train__optimizer=None), ["optimizer", "None"]),
    "negative cpu devices": (
        lambda: order_task(mesh__cpu_devices_per_core=-1),
        ["mesh.cpu_devices_per_core", ">= 0", "-1"],
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_validate_rejects(case):
    make_config, must_mention = REJECTED[case]
    with pytest.raises(validation.ConfigError) as error:
        validation.validate(make_config())
    message = str(error.value)
    assert "\n" not in message
    for word in must_mention:
        assert word in message, (word, message)


def test_validate_is_not_a_run_config():
    with pytest.raises(validation.ConfigError, match="no field 'model'"):
        validation.validate(ml_collections.ConfigDict({"seeds": (0,)}))
    with pytest.raises(validation.ConfigError, match="experiments.landscape"):
        validation.validate(config_module("landscape").get_config("theory"))


def test_init_from_needs_a_checkpoint_step(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(validation.ConfigError, match="holds no checkpoint"):
        validation.validate(qk_frozen(train__init_from=str(tmp_path)))
    (tmp_path / "checkpoints" / "20").mkdir()
    validation.validate(qk_frozen(train__init_from=str(tmp_path)))
    validation.validate(qk_frozen(train__init_from=str(tmp_path / "checkpoints")))


def test_builtin_names_are_what_a_fresh_process_registers():
    """The built-in tuples stand in for registries that import JAX: they must match them."""
    code = textwrap.dedent(
        """
        import json
        from attn_dynamics import attention, data, floater, kernels, position
        print(json.dumps({
            "kernels": kernels.names(),
            "softmax_form": [n for n in kernels.names() if kernels.lookup(n).softmax_form],
            "positions": position.names(),
            "datasets": data.names(),
            "regression": [n for n in data.names() if "out_dim" in data.default_config(n)],
            "implementations": list(attention.IMPLEMENTATIONS),
            "floater": [list(floater.INJECTIONS), list(floater.SOLVERS), list(floater.ADJOINTS)],
        }))
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True
    )
    registered = json.loads(out.stdout)
    v = validation
    assert registered["kernels"] == sorted(v.BUILTIN_KERNELS)
    assert registered["softmax_form"] == sorted(v.SOFTMAX_FORM_KERNELS)
    assert registered["positions"] == sorted(v.BUILTIN_POSITIONS)
    assert registered["datasets"] == sorted(v.BUILTIN_DATASETS)
    assert registered["regression"] == sorted(v.REGRESSION_DATASETS)
    assert registered["implementations"] == list(v.IMPLEMENTATIONS)
    assert registered["floater"] == [
        list(v.FLOATER_INJECTIONS),
        list(v.FLOATER_SOLVERS),
        list(v.FLOATER_ADJOINTS),
    ]


def test_a_registered_kernel_is_accepted_once_the_registry_is_loaded(monkeypatch):
    from attn_dynamics import kernels

    custom = kernels.Kernel("my_cosine", kernels.get("linear"))
    monkeypatch.setitem(kernels._REGISTRY, "my_cosine", custom)
    validation.validate(qk_frozen(model__kernel="my_cosine"))
    with pytest.raises(validation.ConfigError, match="softmax-form"):
        validation.validate(qk_frozen(model__kernel="my_cosine", model__implementation="fast"))


@pytest.mark.parametrize(
    "dim, out_dim, heads, output_projection",
    [(8, 4, 2, False), (8, 4, 8, False), (6, 4, 3, False), (6, 4, 3, True), (6, 3, 3, False)],
)
def test_theory_head_check_agrees_with_the_model(dim, out_dim, heads, output_projection):
    """validate() accepts exactly the head counts TheoryModel can be built with."""
    from attn_dynamics import models

    config = qk_frozen(
        model__dim=dim,
        model__out_dim=out_dim,
        model__num_heads=heads,
        model__output_projection=output_projection,
    )
    model = models.TheoryModel(
        dim=dim, out_dim=out_dim, num_heads=heads, output_projection=output_projection
    )
    try:
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 3, dim), "f4"))
        builds = True
    except ValueError:
        builds = False
    try:
        validation.validate(config)
        accepted = True
    except validation.ConfigError:
        accepted = False
    assert accepted == builds


# --------------------------------------------------------------------------------------------
# Every entry point: one style (absl flags defined in main, a usage line, complete help,
# one-line errors with exit 2)


def defined_flags(module: str) -> set[str]:
    """The flags ``module``'s command defines (on a FlagValues of its own)."""
    from absl import flags

    from experiments import measure, sweep

    fv = flags.FlagValues()
    if module in ("experiments.run", "experiments.sweep"):
        run.define_flags(fv, ["prog"])
    if module == "experiments.sweep":
        sweep.define_flags(fv)
        return set(fv) - set(sweep.MULTI_HOST_FLAGS)  # refused there: attn-dynamics-run's
    if module == "experiments.measure":
        measure.define_flags(fv)
    if module == "experiments.landscape":
        return {"config", "workdir"}
    return set(fv)


ENTRY_POINTS = {  # module: (a bad command line, words its one error line must contain)
    "experiments.run": (["--config=qk_frozen", "--nope=1"], ["'nope'"]),
    "experiments.sweep": (
        ["--config=qk_frozen:smoke", "--workdir=unused"],
        ["nothing to sweep", "--axis", "--single_cell"],
    ),
    "experiments.report": (["a", "b"], ["expected one directory", "['a', 'b']"]),
    "experiments.analyses": (["q_onyl", "."], ["'q_onyl'", "kernel_subsets"]),
    "experiments.measure": (["sharpness", ".", "--iters=many"], ["--iters=many"]),
    "experiments.landscape": (["--config=qk_frozen"], ["not a landscape config"]),
}
# A command whose help imports its libraries (SciPy, matplotlib: the analyses' docstrings).
IMPORTS_ITS_LIBRARIES = ("experiments.analyses",)


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_has_a_usage_line_and_help_listing_each_flag(module):
    result, lines, imported = cli("--help", module=module)
    assert result.returncode == 0 and lines == [], result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {module}"), result.stdout[:200]
    for name in defined_flags(module):
        assert f"--{name}=" in result.stdout or f"--[no]{name}" in result.stdout, name
    assert "exit status" in result.stdout
    if module not in IMPORTS_ITS_LIBRARIES:
        assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_rejects_bad_input_in_one_line_with_exit_2(module, tmp_path):
    args, must_mention = ENTRY_POINTS[module]
    start = time.perf_counter()
    result, lines, imported = cli(*args, module=module)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert elapsed < REJECT_SECONDS and not imported & set(HEAVY_MODULES)
    assert not (ROOT / "unused").exists()


def test_the_minima_library_points_to_the_command_that_runs_it():
    result, lines, _ = cli("--help", module="experiments.minima")
    assert result.returncode == 0 and lines == []
    assert result.stdout.startswith("usage: python -m experiments.measure minima RUNDIR")
    result, lines, _ = cli("runs/q", module="experiments.minima")
    assert result.returncode == 2
    assert lines == ["error: experiments.minima is a library; run: python -m experiments.measure "
                     "minima runs/q"]  # fmt: skip


def test_importing_the_commands_defines_no_flags():
    """Each command defines its flags in main: a notebook imports them all side by side."""
    modules = [f"experiments.{m}" for m in ("run", "sweep", "report", "measure", "landscape")]
    code = (
        # absl.logging defines absl's own flags when a library imports it: not ours
        "from absl import flags, logging; import importlib; before = set(flags.FLAGS)\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(set(flags.FLAGS) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_a_command_parses_twice_in_one_process(tmp_path):
    from experiments import sweep

    argv = ["sweep", "--config=qk_frozen:smoke", f"--workdir={tmp_path}", "--single_cell"]
    for _ in range(2):  # flags on a FlagValues of each call: no DuplicateFlagError
        parsed = sweep.parse(argv)
        assert parsed.axes == {} and parsed.run.workdir == str(tmp_path)
    axis = sweep.parse([*argv[:3], "--axis=model.kernel=softmax,gaussian"])
    assert axis.axes == {"model.kernel": ("softmax", "gaussian")}


def test_a_run_without_workdir_is_given_the_command_that_resumes_it():
    parsed = run.parse(["attn-dynamics-run", "--config=qk_frozen:smoke", "--config.seeds=(0,1)"])
    assert not parsed.workdir_given and parsed.workdir.startswith("runs/qk_frozen-")
    assert run.resume_command(parsed) == (
        "attn-dynamics-run --config=qk_frozen:smoke '--config.seeds=(0,1)' "
        f"--workdir={parsed.workdir}"
    )


def test_configs_resolve_by_path_or_by_name_against_the_package(tmp_path, monkeypatch):
    packaged = str(ROOT / "configs" / "qk_frozen.py")
    monkeypatch.chdir(tmp_path)  # no configs/ here: the package's are found
    for spec in ("configs/qk_frozen.py", "qk_frozen.py", "qk_frozen"):
        assert run.resolve_config(f"{spec}:smoke") == f"{packaged}:smoke"
    (tmp_path / "mine.py").write_text("")
    assert run.resolve_config("mine.py") == "mine.py"  # a file here wins
    assert run.resolve_config("configs/nope.py") == "configs/nope.py"  # left to fail clearly
    assert "qk_frozen" in run.available_configs()  # names, outside a checkout


# --------------------------------------------------------------------------------------------
# Runs: divergence above a threshold, a schedule-reshaping resume, the progress bar in a log


def test_a_loss_far_above_its_start_is_divergence(tmp_path):
    from experiments import train

    config = qk_frozen(train__learning_rate=0.4, train__num_steps=20)  # grows to 2e34, finite
    config.train.diverge_above = None  # only non-finite losses: the seed ends "done"
    off = train.train_and_evaluate(config, tmp_path / "off")
    assert off["status"] == "done" and off["final_loss"] > 1e30
    config.train.diverge_above = defaults.base_config().train.diverge_above  # 1e6
    on = train.train_and_evaluate(config, tmp_path / "on")
    assert on["status"] == "diverged" and on["num_diverged"] == len(config.seeds)
    for seed in on["seeds"]:
        assert 0 < seed["diverged_at"] < 20
        assert seed["final_loss"] <= 1e6 * seed["initial_loss"]  # the last loss before


def test_resuming_with_more_steps_is_refused_when_the_schedule_would_change(tmp_path):
    from experiments import train

    config = qk_frozen(train__schedule="cosine", train__num_steps=10)
    train.train_and_evaluate(config, tmp_path)
    config.train.num_steps = 30
    with pytest.raises(train.ConfigError) as error:
        train.train_and_evaluate(config, tmp_path)
    message = str(error.value)
    assert "--config.train.num_steps=10" in message and "init_from" in message
    assert "\n" not in message
    assert train.schedule_changes(config.train, 10)
    config.train.schedule = "constant"
    assert not train.schedule_changes(config.train, 10)
    config.train.schedule = "cosine"
    config.train.unlock()
    config.train.schedule_kwargs.decay_steps = 100  # a length of its own: num_steps is free
    assert not train.schedule_changes(config.train, 10)


def test_the_progress_bar_is_a_line_a_minute_off_a_terminal():
    import io

    from experiments import logs

    log = io.StringIO()  # not a terminal
    progress = logs.progress_bar(True, 5, 100, stream=log)
    progress.set_postfix(loss="1.0e-03")
    for _ in range(94):
        progress.update(1)
    assert log.getvalue() == ""  # under a minute: nothing yet
    progress.update(1)  # the last step: one line
    assert "\r" not in log.getvalue()
    (line,) = log.getvalue().splitlines()
    assert line.startswith("train: step 100/100 (100%)") and line.endswith("loss=1.0e-03")
