"""Checks of a run config that need no JAX: ``validate(config)`` raises :class:`ConfigError`.

Everything a user can get wrong by typing (a name, a range, a divisibility, a size, a path) is
checked here, before the runner imports JAX, so bad input costs a fraction of a second and one
line. Checks that need the model or the data built (a trainable spec matching no parameter, tfds
data not prepared, optax names) run later in :mod:`experiments.train`.

This module must stay importable without JAX: registries (kernels, position encodings, data
sets) are consulted only when their module is already loaded, the only way a user can have
registered a name of their own; otherwise the built-in names below are the complete list.
"""

from __future__ import annotations

import math
import numbers
import pathlib
import re
import sys
from collections.abc import Iterable

MODELS = ("theory", "encoder")
IMPLEMENTATIONS = ("auto", "fast", "blockwise", "explicit")  # attn_dynamics.attention's
SOFTMAX_ONLY_IMPLEMENTATIONS = ("fast", "blockwise")  # paths built on a kernel's softmax form
POOLINGS = ("mean", "cls")
DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes; parameters stay float32
EMBEDDINGS = ("tokens", "dense")
# Built-in registry entries (tests/test_cli.py checks them against the registries).
BUILTIN_KERNELS = ("gaussian", "gaussian_unnormalized", "linear", "softmax")
SOFTMAX_FORM_KERNELS = ("gaussian", "softmax")  # those with a fused and a blockwise path
BUILTIN_POSITIONS = ("floater", "learned", "none", "sinusoidal")
BUILTIN_DATASETS = (
    "image_seq",
    "imdb_bytes",
    "order_lookback",
    "order_precedence",
    "pathfinder",
    "student_teacher_regression",
    "synthetic_regression",
)
REGRESSION_DATASETS = ("student_teacher_regression", "synthetic_regression")
# attn_dynamics.models.SHARED_INIT_CHOICES; attn_dynamics.data.student_teacher.TEACHER_KV
SHARED_INIT_CHOICES = ("", "Q", "K", "V", "QK", "QV", "KV", "QKV")
TEACHER_KV = ("seed", "shared")
TRAINABLE_LETTERS = "QKV"  # attn_dynamics.freezing.MATRIX_MODULES
# attn_dynamics.floater.{INJECTIONS, SOLVERS, ADJOINTS}
FLOATER_INJECTIONS = ("input", "every_layer", "qkv_bias")
FLOATER_SOLVERS = ("rk4", "tsit5", "dopri5")
FLOATER_ADJOINTS = ("recursive_checkpoint", "backsolve")
# XLA reads its flags when the backend starts: the runner sets this one for
# config.train.deterministic_gpu before anything runs on a device.
DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"


class ConfigError(ValueError):
    """Bad user input, found before anything expensive runs; the CLI exits 2 with it."""


def variants(arg: str | None, valid: Iterable[str], *, exclusive: Iterable[str] = ()) -> set[str]:
    """The comma-separated variants of a ``config.py:arg`` spec, e.g. ``'precedence,smoke'``.

    Every ``get_config(arg)`` calls this, so an unknown variant fails with the valid ones
    instead of being ignored. ``exclusive`` names variants of which at most one may be given.
    """
    valid = sorted(valid)
    given = {a.strip() for a in (arg or "").split(",")} - {""}
    unknown = sorted(given - set(valid))
    if unknown:
        choices = ", ".join(valid) if valid else "none (the file takes no ':arg')"
        raise ConfigError(f"unknown config variant {unknown[0]!r}; valid variants: {choices}")
    clash = sorted(given & set(exclusive))
    if len(clash) > 1:
        raise ConfigError(f"config variants {clash} exclude each other; give one of them")
    return given


# --------------------------------------------------------------------------------------------
# Registries: built-in names unless the registry module is loaded (only then can a user-defined
# name exist), so validating a config never imports JAX by itself.


def _loaded(module: str):
    return sys.modules.get(module)


def kernel_names() -> list[str]:
    kernels = _loaded("attn_dynamics.kernels")
    return kernels.names() if kernels else list(BUILTIN_KERNELS)


def has_softmax_form(kernel: str) -> bool:
    kernels = _loaded("attn_dynamics.kernels")
    if kernels and kernel not in BUILTIN_KERNELS:
        return kernels.lookup(kernel).softmax_form is not None
    return kernel in SOFTMAX_FORM_KERNELS


def position_names() -> list[str]:
    position = _loaded("attn_dynamics.position")
    return position.names() if position else list(BUILTIN_POSITIONS)


def dataset_names() -> list[str]:
    data = _loaded("attn_dynamics.data")
    return data.names() if data else list(BUILTIN_DATASETS)


# --------------------------------------------------------------------------------------------
# Field checks: each raises one line naming the field, the value and what is valid.


def _choice(field: str, value, valid: Iterable[str]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"unknown config.{field} {value!r}; valid choices: {valid}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(field: str, value, *, minimum: int) -> None:
    if not (_is_int(value) and value >= minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"config.{field} must be {what}, got {value!r}")


def _real(field: str, value, *, low: float, high: float = math.inf, open_low=False, open_high=True):
    """A finite number in the interval (``open_*``: that end excluded)."""
    ok = (
        _is_real(value)
        and math.isfinite(value)
        and (value > low if open_low else value >= low)
        and (value < high if open_high else value <= high)
    )
    if not ok:
        if high == math.inf:
            valid = f"{'>' if open_low else '>='} {low:g}"
        else:
            valid = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ConfigError(f"config.{field} must be a finite number {valid}, got {value!r}")


def _str(field: str, value) -> None:
    if not (isinstance(value, str) and value):
        raise ConfigError(f"config.{field} must be a non-empty string, got {value!r}")


# --------------------------------------------------------------------------------------------


def validate(config) -> None:
    """Raise :class:`ConfigError` (one line) at the first field a run could not use."""
    if "model" not in config and hasattr(config.get("run"), "keys"):
        raise ConfigError(
            "config has no field 'model' but a run config in config.run: a config for an "
            "analysis (e.g. python -m experiments.landscape), not for experiments.run"
        )
    for section in ("seeds", "model", "data", "train"):
        if section not in config:
            raise ConfigError(
                f"config has no field {section!r}: not a run config (its fields: "
                f"{sorted(config.keys())}); start from experiments.defaults.base_config()"
            )
    check_seeds(config.seeds)
    check_model(config)
    check_data(config.data)
    check_train(config.train)
    check_mesh(config.get("mesh"))
    if config.data.get("name") == "student_teacher_regression":
        check_student_teacher(config)


def check_seeds(seeds) -> None:
    seeds = tuple(seeds) if isinstance(seeds, list | tuple) else seeds
    if not (
        isinstance(seeds, tuple)
        and seeds
        and all(_is_int(s) for s in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        raise ConfigError(
            f"config.seeds must be a non-empty tuple of distinct integers, got {seeds!r}"
        )


def check_model(config) -> None:
    m = config.model
    _choice("model.name", m.name, MODELS)
    _choice("model.kernel", m.kernel, kernel_names())
    if m.get("sigma2") is not None:
        _real("model.sigma2", m.sigma2, low=0.0, open_low=True)
    _choice("model.implementation", m.implementation, IMPLEMENTATIONS)
    _choice("model.dtype", m.get("dtype", "float32"), DTYPES)
    if m.implementation in SOFTMAX_ONLY_IMPLEMENTATIONS and not has_softmax_form(m.kernel):
        valid = [k for k in kernel_names() if has_softmax_form(k)]
        raise ConfigError(
            f"config.model.implementation={m.implementation!r} needs a softmax-form kernel, not "
            f"{m.kernel!r}; valid kernels: {valid} (or implementation='explicit')"
        )
    _int("model.num_heads", m.num_heads, minimum=1)
    if "dropout_rate" in m:
        _real("model.dropout_rate", m.dropout_rate, low=0.0, high=1.0)
    if m.name == "theory":
        check_theory(config)
    else:
        check_encoder(m)
        if config.data.get("name") in REGRESSION_DATASETS:
            classification = sorted(set(dataset_names()) - set(REGRESSION_DATASETS))
            raise ConfigError(
                f"config.model.name='encoder' (a classifier) needs a classification data set, "
                f"not config.data.name={config.data.name!r}; valid: {classification} (or "
                "model.name='theory' for regression)"
            )


def check_theory(config) -> None:
    """The single attention layer: its widths come from the data (``data.dim``, ``out_dim``)."""
    m, d = config.model, config.data
    if "dim" not in d or "out_dim" not in d:
        raise ConfigError(
            f"config.model.name='theory' needs a regression data set (with data.dim and "
            f"data.out_dim), not config.data.name={d.get('name')!r}; use model.name='encoder'"
        )
    _int("data.dim", d.dim, minimum=1)
    _int("data.out_dim", d.out_dim, minimum=1)
    for name in ("qk_init_scale", "v_init_scale"):
        if name in m:
            _real(f"model.{name}", m[name], low=0.0)
    _choice("model.shared_init", m.get("shared_init", ""), SHARED_INIT_CHOICES)
    _int("model.shared_init_seed", m.get("shared_init_seed", 0), minimum=0)
    # W_Q, W_K map d -> d and W_V maps d -> (d with an output projection, else out_dim); each
    # is split into num_heads equal heads.
    widths = {"data.dim": d.dim}
    if not m.get("output_projection", False):
        widths["data.out_dim"] = d.out_dim
    for field, width in widths.items():
        if width % m.num_heads:
            common = math.gcd(*widths.values())
            divisors = [h for h in range(1, common + 1) if common % h == 0]
            raise ConfigError(
                f"config.model.num_heads={m.num_heads} does not divide config.{field}={width} "
                f"(each head gets an equal share); valid num_heads: {divisors}"
            )


def check_encoder(m) -> None:
    for name in ("num_layers", "embed_dim", "mlp_dim", "max_len", "num_classes", "vocab_size"):
        if name in m:
            _int(f"model.{name}", m[name], minimum=1)
    if m.embed_dim % m.num_heads:
        divisors = [h for h in range(1, m.embed_dim + 1) if m.embed_dim % h == 0]
        raise ConfigError(
            f"config.model.embed_dim={m.embed_dim} is not divisible by config.model.num_heads="
            f"{m.num_heads} (each head gets an equal share); valid num_heads: {divisors}"
        )
    _choice("model.position", m.position, position_names())
    _choice("model.pooling", m.pooling, POOLINGS)
    _choice("model.embedding", m.embedding, EMBEDDINGS)
    if m.position == "floater" and "floater" in m:
        check_floater(m.floater)


def check_floater(f) -> None:
    _choice("model.floater.injection", f.injection, FLOATER_INJECTIONS)
    _choice("model.floater.solver", f.solver, FLOATER_SOLVERS)
    _choice("model.floater.adjoint", f.adjoint, FLOATER_ADJOINTS)
    _real("model.floater.dt", f.dt, low=0.0, open_low=True)
    for name in ("rtol", "atol"):
        _real(f"model.floater.{name}", f[name], low=0.0, open_low=True)
    for name in ("rk4_substeps", "max_steps", "update_every"):
        _int(f"model.floater.{name}", f[name], minimum=1)
    _int("model.floater.hidden_dim", f.hidden_dim, minimum=0)


def check_data(d) -> None:
    if "name" not in d:
        raise ConfigError(f"config.data has no 'name'; valid data sets: {dataset_names()}")
    _choice("data.name", d.name, dataset_names())
    if "eval_batch_size" in d:
        _int("data.eval_batch_size", d.eval_batch_size, minimum=1)
    if "batch_size" not in d:
        return
    if "num_samples" in d:  # a fixed regression set; batch_size 0 means the full batch
        _int("data.num_samples", d.num_samples, minimum=1)
        _int("data.batch_size", d.batch_size, minimum=0)
        size, size_field = d.num_samples, "data.num_samples"
    else:
        _int("data.batch_size", d.batch_size, minimum=1)
        # A finite pool of generated examples (0: fresh ones every step); tfds data sets and
        # LRA files have their size in the files, checked when they are opened.
        generated = d.get("source", "generated") == "generated"
        size = d.get("train_size", 0) if generated else 0
        size_field = "data.train_size"
        if not _is_int(size):
            raise ConfigError(f"config.{size_field} must be an integer >= 0, got {size!r}")
    if size > 0 and d.batch_size > size:
        raise ConfigError(
            f"config.data.batch_size={d.batch_size} is larger than the training set "
            f"(config.{size_field}={size}); valid: 1..{size}"
            + (" (0: full batch)" if size_field == "data.num_samples" else "")
        )


def check_student_teacher(config) -> None:
    """The teacher's W_K, W_V must be the students': the one seed's own (``'seed'``), or the
    model's shared draws from ``data.seed`` (``'shared'``)."""
    d, m = config.data, config.model
    kv = d.get("teacher_kv", "seed")
    _choice("data.teacher_kv", kv, TEACHER_KV)
    shares_kv = {"K", "V"} <= set(m.get("shared_init", ""))
    if kv == "shared" and not (shares_kv and m.get("shared_init_seed", 0) == d.seed):
        raise ConfigError(
            f"config.data.teacher_kv='shared' needs the students' W_K, W_V shared and drawn from "
            f"the data seed: config.model.shared_init containing 'KV' (got "
            f"{m.get('shared_init', '')!r}) and config.model.shared_init_seed == config.data.seed "
            f"(got {m.get('shared_init_seed', 0)!r} and {d.seed!r})"
        )
    if kv == "seed" and set(m.get("shared_init", "")) & {"K", "V"}:
        raise ConfigError(
            f"config.model.shared_init={m.shared_init!r} shares W_K or W_V across seeds, but "
            "config.data.teacher_kv='seed' copies one seed's own; valid: teacher_kv='shared' "
            "(with shared_init 'KV'), or shared_init without K and V"
        )


def check_mesh(m) -> None:
    if m is None:
        return
    for field in ("seeds", "data", "cpu_devices_per_core"):
        if field in m:
            _int(f"mesh.{field}", m[field], minimum=0)


def check_train(t) -> None:
    _str("train.optimizer", t.optimizer)  # any optax name: checked against optax later
    _str("train.schedule", t.schedule)
    _str("train.trainable", t.trainable)
    check_trainable(t.trainable)
    if t.get("diverge_above") is not None:
        _real("train.diverge_above", t.diverge_above, low=1.0, high=math.inf, open_low=True)
    _real("train.learning_rate", t.learning_rate, low=0.0, open_low=True)
    _int("train.warmup_steps", t.warmup_steps, minimum=0)
    for name in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        _int(f"train.{name}", t[name], minimum=1)
    if "eval_every" in t:
        _int("train.eval_every", t.eval_every, minimum=0)
    for name in ("b1", "b2"):
        if name in t:
            _real(f"train.{name}", t[name], low=0.0, high=1.0)
    for name in ("momentum", "weight_decay", "loss_threshold"):
        if name in t:
            _real(f"train.{name}", t[name], low=0.0)
    if t.get("grad_clip_norm") is not None:
        _real("train.grad_clip_norm", t.grad_clip_norm, low=0.0, open_low=True)
    if "stable_step_fraction" in t:
        _real("train.stable_step_fraction", t.stable_step_fraction, low=0.0)
    if t.get("init_from") is not None:
        check_init_from(t.init_from)


def check_trainable(spec: str) -> None:
    """The syntax of a trainable spec (:mod:`attn_dynamics.freezing`): letters Q, K, V at most
    once each, or ``re:<regex>``. Whether it matches a parameter needs the model: later."""
    if spec.startswith("re:"):
        try:
            re.compile(spec[3:])
        except re.error as e:
            raise ConfigError(
                f"config.train.trainable={spec!r} is not a valid regular expression ({e})"
            ) from None
    elif set(spec) - set(TRAINABLE_LETTERS) or len(set(spec)) != len(spec):
        raise ConfigError(
            f"invalid config.train.trainable {spec!r}: use each of the letters Q, K, V at most "
            "once (e.g. 'QKV', 'QK', 'V'), or 're:<regex>' over parameter paths"
        )


def check_init_from(source) -> None:
    """A run's workdir or its ``checkpoints/`` folder holding at least one step directory
    (what :func:`experiments.checkpointing.latest_step` reads; whether it restores is
    checked when it is loaded)."""
    path = pathlib.Path(source)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not directory.is_dir():
        raise ConfigError(f"config.train.init_from={source!r} does not exist (or is no directory)")
    if not any(p.name.isdigit() for p in directory.iterdir()):
        raise ConfigError(
            f"config.train.init_from={source!r} holds no checkpoint (give a run's workdir "
            "or its checkpoints/ folder)"
        )
