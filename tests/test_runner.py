"""The runner end to end: workdir contract, resume, devices, seeds, freezing, bad input."""

from __future__ import annotations

import importlib
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import host, sweep, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
THEORY_CONFIGS = ["qk_frozen", "qkv_trained", "v_only", "q_only"]


def smoke_config(name: str, **overrides):
    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    for field, value in overrides.items():
        sweep.set_field(config, field.replace("__", "."), value)
    return config


def cli(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )


def records(workdir) -> list[dict]:
    return [r for r in map(json.loads, (pathlib.Path(workdir) / "metrics.jsonl").open())]


def check_contract(workdir: pathlib.Path, config) -> dict:
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (workdir / name).is_file(), name
    assert any((workdir / "checkpoints").iterdir())
    assert any((workdir / "tensorboard").iterdir())
    logged = [r for r in records(workdir) if not r.get("eval")]
    assert logged and all("step" in r and "loss" in r for r in logged)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] in ("done", "diverged")
    assert summary["max_frozen_change"] == 0.0
    assert len(summary["seeds"]) == len(config.seeds)
    assert (
        json.loads((workdir / "config.json").read_text())["model"]["kernel"] == config.model.kernel
    )
    return summary


@pytest.mark.parametrize("name", THEORY_CONFIGS)
def test_smoke_configs_fulfil_the_workdir_contract(name, tmp_path):
    config = smoke_config(name)
    summary = train.train_and_evaluate(config, tmp_path / name)
    check_contract(tmp_path / name, config)
    assert summary["final_step"] == config.train.num_steps


def test_main_job_logs_the_theory_quantities_and_only_trains_w_v(tmp_path):
    config = smoke_config("qk_frozen")
    train.train_and_evaluate(config, tmp_path)
    first = records(tmp_path)[0]
    for name in (
        "sigma_min_attention_output",
        "sv_ratio_q_v",
        "sv_ratio_k_v",
        "dist_from_init",
        "grad_norm/attention/value",
        "update_norm/attention/value",
        "param_norm/attention/query",
    ):
        assert name in first, name
    assert "grad_norm/attention/query" not in first  # frozen: no gradient is even taken


def test_frozen_parameters_are_bit_identical_in_the_checkpoint(tmp_path):
    config = smoke_config("q_only", train__optimizer="adamw")
    config.train.optimizer_kwargs.weight_decay = 0.1  # decay must not move frozen leaves
    train.train_and_evaluate(config, tmp_path)
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager((tmp_path / "checkpoints").absolute())
    saved = manager.restore(manager.latest_step())["state"]["params"]["attention"]
    ds = train.data.get_dataset(config.data)
    model = train.build_model(config, ds.info)
    init = train.init_params(model, config.seeds, (ds.train_batch(0)["inputs"],))["attention"]
    for frozen in ("key", "value"):
        np.testing.assert_array_equal(saved[frozen]["kernel"], init[frozen]["kernel"])
    assert not np.array_equal(saved["query"]["kernel"], init["query"]["kernel"])


def test_vmapped_seeds_equal_separate_runs(tmp_path):
    together = train.train_and_evaluate(
        smoke_config("qkv_trained", seeds=(0, 1, 2)), tmp_path / "together"
    )
    for i, seed in enumerate((0, 1, 2)):
        alone = train.train_and_evaluate(
            smoke_config("qkv_trained", seeds=(seed,)), tmp_path / f"seed{seed}"
        )
        np.testing.assert_allclose(
            together["seeds"][i]["final_loss"], alone["seeds"][0]["final_loss"], rtol=1e-5
        )
        curve_together = [
            r["loss/seeds"][i] for r in records(tmp_path / "together") if not r.get("eval")
        ]
        curve_alone = [r["loss"] for r in records(tmp_path / f"seed{seed}") if not r.get("eval")]
        np.testing.assert_allclose(curve_together, curve_alone, rtol=1e-5)


def test_divergence_stops_the_run_and_keeps_finite_checkpoints(tmp_path):
    config = smoke_config("qkv_trained", train__learning_rate=1e6, seeds=(0,))
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["status"] == "diverged"
    assert summary["seeds"][0]["diverged_at"] is not None
    assert summary["final_step"] <= summary["seeds"][0]["diverged_at"] + 2  # at once
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager((tmp_path / "checkpoints").absolute())
    params = manager.restore(manager.latest_step())["state"]["params"]
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "--config=configs/qk_frozen.py",
            "--config.train.num_steps=1000000",
            "--config.train.checkpoint_every=1000000",
            "--config.train.progress_bar=False",
            f"--workdir={workdir}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == [summary["final_step"]] and summary["final_step"] > 0


def test_cpu_devices_per_core_splits_the_host_and_matches_one_device(tmp_path):
    """``config.mesh.cpu_devices_per_core=4``: experiments.run asks XLA for 4 CPU devices per
    core before JAX starts, the mesh spreads seeds and batch over them, and the losses are
    those of one device."""
    args = [
        "--config=configs/qkv_trained.py:smoke",
        "--config.data.num_samples=8",
        "--config.seeds=(0,1)",
    ]
    one = cli(*args, f"--workdir={tmp_path / 'one'}")
    split = cli(*args, "--config.mesh.cpu_devices_per_core=4", f"--workdir={tmp_path / 'split'}")
    assert one.returncode == 0 and split.returncode == 0, (one.stderr + split.stderr)[-3000:]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s_split = json.loads((tmp_path / "split" / "summary.json").read_text())
    devices = 4 * host.cpu_count()
    assert len(s1["environment"]["devices"]) == 1
    assert len(s_split["environment"]["devices"]) == devices
    assert s_split["mesh"] == {"seeds": 2, "data": math.gcd(devices // 2, 8)}
    for a, b in zip(records(tmp_path / "one"), records(tmp_path / "split"), strict=True):
        if not a.get("eval"):
            np.testing.assert_allclose(a["loss/seeds"], b["loss/seeds"], rtol=1e-5)
    np.testing.assert_allclose(s1["final_loss"], s_split["final_loss"], rtol=1e-5)


def test_cpu_flags_keep_remat_barriers_and_add_devices_unless_the_user_set_them():
    count, keep = host.COUNT_FLAG, f"{host.DISABLED_PASSES_FLAG}={host.BARRIER_EXPANDER}"
    assert host.cpu_xla_flags("--xla_dump_to=/x", 6) == f"--xla_dump_to=/x {keep} {count}=6"
    assert host.cpu_xla_flags("") == keep  # one device: XLA's default, no count
    assert host.cpu_xla_flags(f"{count}=5", 6) == f"{count}=5 {keep}"  # the user's count wins
    passes = f"{host.DISABLED_PASSES_FLAG}=algsimp"
    assert host.cpu_xla_flags(passes) == f"{passes},{host.BARRIER_EXPANDER}"  # extended
    assert host.cpu_xla_flags(keep) == keep  # idempotent


RECOMPUTED_DOTS = """
import jax, jax.numpy as jnp
def layer(x, w):
    with jax.named_scope("recomputed"):
        return jnp.tanh(x @ w)
loss = lambda x, w: jnp.sum(jnp.tanh(jax.checkpoint(layer)(x, w) @ w.T) ** 2)
args = jnp.ones((512, 16)), jnp.ones((16, 32))
hlo = jax.jit(jax.grad(loss, argnums=1)).lower(*args).compile().as_text()
print(hlo.count("rematted_computation/recomputed/dot_general"))
"""


def test_cpu_flags_keep_the_remat_recomputation():
    """Under the flags experiments.run starts CPU processes with, the compiled backward holds
    the checkpointed matmul's recomputation (without them, jax 0.10.2's XLA:CPU merges it back
    into the forward pass and this count is 0)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": host.cpu_xla_flags("")}
    out = subprocess.run(
        [sys.executable, "-c", RECOMPUTED_DOTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert int(out.stdout.split()[-1]) >= 1, out.stdout


BAD_INPUTS = {
    "unknown override key": (["--config.model.kernl=gaussian"], ["kernl", "kernel"]),
    "wrong type": (["--config.train.learning_rate=fast"], ["learning_rate", "fast"]),
    "unknown kernel": (["--config.model.kernel=cosine"], ["cosine", "gaussian", "softmax"]),
    "bad trainable letter": (["--config.train.trainable=QX"], ["QX", "Q, K, V"]),
    "trainable matches nothing": (["--config.train.trainable=re:^nothing$"], ["^nothing$"]),
    "unknown optimizer": (["--config.train.optimizer=lbfgs"], ["lbfgs", "adamw"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_damages_nothing(case, tmp_path, existing_run):
    extra, must_mention = BAD_INPUTS[case]
    before = snapshot(existing_run)
    result = cli("--config=configs/qk_frozen.py:smoke", *extra, f"--workdir={existing_run}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in must_mention:
        assert word in error_lines[0], (word, error_lines[0])
    assert snapshot(existing_run) == before


def test_missing_config_file_and_unwritable_workdir(tmp_path):
    result = cli("--config=configs/no_such_config.py")
    assert result.returncode == 2 and "no_such_config.py" in result.stderr
    assert "configs/qk_frozen.py" in result.stderr  # the valid choices
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        result = cli("--config=configs/qk_frozen.py:smoke", f"--workdir={locked / 'run'}")
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2 and "not writable" in result.stderr


def test_unwritable_workdir_is_reported_before_compiling(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = cli("--config=configs/qk_frozen.py:smoke", f"--workdir={blocker / 'run'}")
    assert result.returncode == 2, result.stderr
    assert "not writable" in result.stderr and str(blocker) in result.stderr


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("existing")
    train.train_and_evaluate(smoke_config("qk_frozen"), workdir)
    return workdir


def snapshot(workdir: pathlib.Path) -> dict:
    return {
        str(p.relative_to(workdir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


def test_floater_warm_start_from_a_non_floater_checkpoint_and_update_every(tmp_path):
    base = smoke_config("order_task", train__num_steps=6, train__log_every=3)
    train.train_and_evaluate(base, tmp_path / "sinusoidal")
    # The paper's recipe: a FLOATER model (q/k/v-bias form, warm start) fine-tuned from it
    # computes exactly what the sinusoidal model computed, before its first update.
    tuned = smoke_config(
        "order_task",
        train__num_steps=6,
        train__log_every=3,
        model__position="floater",
        model__floater__warm_start=True,
        model__floater__update_every=3,
        train__init_from=str(tmp_path / "sinusoidal"),
        train__learning_rate=1e-30,
    )
    summary = train.train_and_evaluate(tuned, tmp_path / "floater")
    before = json.loads((tmp_path / "sinusoidal" / "summary.json").read_text())["evaluation"]
    assert summary["evaluation"] == before
    with pytest.raises(train.ConfigError, match="does not exist|holds no checkpoint"):
        train.train_and_evaluate(
            smoke_config("order_task", train__init_from=str(tmp_path / "nothing")),
            tmp_path / "bad",
        )
