"""No data lost: kills at random moments, two processes on one workdir, a full disk, a corrupt
checkpoint, damaged run files. Each case checks the exit code, the one line a user reads, and
that what was already written survives."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import checkpointing, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
VOLATILE = ("wall_seconds", "compile_seconds", "environment")

# A minibatch encoder (Adam, dropout RNG, evaluations) and the main job (full-batch GD).
KILL_CASES = {
    "encoder": [
        "--config=configs/order_task.py:smoke",
        "--config.train.num_steps=40",
        "--config.train.checkpoint_every=7",
        "--config.train.log_every=3",
        "--config.train.eval_every=10",
    ],
    "main_job": [
        "--config=configs/qk_frozen.py",
        "--config.train.num_steps=400",
        "--config.train.checkpoint_every=30",
        "--config.train.log_every=10",
        "--config.seeds=(0,1)",
    ],
}
KILLS_PER_CASE = 2


def command(args, workdir) -> list[str]:
    return [sys.executable, "-m", "experiments.run", *args, f"--workdir={workdir}",
            "--config.train.progress_bar=False"]  # fmt: skip


def run_cli(args, workdir, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(args, workdir), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def summary(workdir) -> dict:
    s = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in VOLATILE}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(KILL_CASES))
def test_sigkill_at_random_moments_resumes_to_identical_rows(case, tmp_path):
    args = KILL_CASES[case]
    t0 = time.time()
    reference = run_cli(args, tmp_path / "reference")
    duration = time.time() - t0
    assert reference.returncode == 0, reference.stderr[-2000:]

    workdir, rng = tmp_path / "killed", random.Random()
    delays = [round(rng.uniform(0.2, 1.0) * duration, 2) for _ in range(KILLS_PER_CASE)]
    for delay in delays:  # each attempt resumes what the killed one before it left
        proc = subprocess.Popen(
            command(args, workdir), cwd=ROOT, env=ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = run_cli(args, workdir)
    assert resumed.returncode == 0, f"kills at {delays} s: {resumed.stderr[-2000:]}"
    assert rows(workdir) == rows(tmp_path / "reference"), f"kills at {delays} s"
    assert summary(workdir) == summary(tmp_path / "reference"), f"kills at {delays} s"


@pytest.mark.slow
def test_a_second_process_on_a_workdir_in_use_exits_2_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    args = KILL_CASES["main_job"][:1] + ["--config.train.num_steps=1000000"]
    holder = subprocess.Popen(
        command(args, workdir), cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
            time.sleep(0.1)
        second = run_cli(args, workdir)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], second.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=120)
    logged = [r["step"] for r in rows(workdir) if not r.get("eval")]
    assert logged == sorted(set(logged)), "rows written twice"


@contextlib.contextmanager
def small_filesystem(path: pathlib.Path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only); skips the test where it cannot be made."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    with small_filesystem(tmp_path / "disk", "400k") as disk:
        args = [
            KILL_CASES["main_job"][0],
            "--config.train.num_steps=100000",
            "--config.train.checkpoint_every=200",
            "--config.train.keep_checkpoints=100",
        ]
        t0 = time.time()
        result = run_cli(args, disk / "run", timeout=600)
        assert result.returncode == 1, result.stderr[-2000:]
        errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "could not write" in errors[0], result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == errors[0]  # what the user reads last
        # (orbax's own metadata thread may print an asyncio "Event loop is closed" trace first)
        assert "experiments/" not in result.stderr, "a traceback through our code"
        assert time.time() - t0 < 300
        kept = checkpointing.latest_step(disk / "run")
        assert kept is not None and kept > 0
        assert not list((disk / "run" / "checkpoints").glob("*tmp*")), "partial checkpoint left"


def test_a_failing_checkpoint_write_raises_run_failed(tmp_path, monkeypatch):
    """Where no small filesystem can be mounted: the same path by injection, in process."""
    config = importlib.import_module("configs.qk_frozen").get_config("smoke")
    config.train.checkpoint_every = 5

    def no_space(self, step, *a, **k):
        if step >= 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, step, *a, **k)

    original = checkpointing.ocp.CheckpointManager.save
    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", no_space)
    with pytest.raises(train.RunFailed, match="checkpoint of step 10.*No space left"):
        train.train_and_evaluate(config, tmp_path)
    assert checkpointing.latest_step(tmp_path) == 5


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
    """A finished smoke run (steps 0..19, checkpoints at 10 and 20), copied by each test."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    config = importlib.import_module("configs.qk_frozen").get_config("smoke")
    train.train_and_evaluate(config, workdir)
    return workdir


def copy_of(run: pathlib.Path, tmp_path) -> pathlib.Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def smoke():
    return importlib.import_module("configs.qk_frozen").get_config("smoke")


def test_a_corrupt_newest_checkpoint_is_quarantined_and_rewritten(finished_run, tmp_path, caplog):
    workdir = copy_of(finished_run, tmp_path)
    newest = workdir / "checkpoints" / "20"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)  # a torn write
    (workdir / "summary.json").unlink()
    resumed = train.train_and_evaluate(smoke(), workdir)
    assert "moved to" in caplog.text and "coroutine" not in caplog.text
    assert [p.name[:2] for p in (workdir / "checkpoints.quarantine").iterdir()] == ["20"]
    assert checkpointing.latest_step(workdir) == 20
    assert rows(workdir) == rows(finished_run)
    reference = json.loads((finished_run / "summary.json").read_text())
    assert resumed["seeds"] == reference["seeds"]


def test_init_from_a_run_with_a_corrupt_newest_checkpoint_uses_the_previous_one(
    finished_run, tmp_path
):
    source = copy_of(finished_run, tmp_path)
    for f in (source / "checkpoints" / "20").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0")
    config = smoke()
    config.train.init_from = str(source)
    summary = train.train_and_evaluate(config, tmp_path / "warm")
    assert summary["status"] == "done"


def test_a_torn_config_json_is_one_clear_error_and_touches_nothing(finished_run, tmp_path):
    workdir = copy_of(finished_run, tmp_path)
    (workdir / "config.json").write_text('{"model": {"na')
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(train.ConfigError, match="config.json is damaged"):
        train.train_and_evaluate(smoke(), workdir)
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".lock"}


def test_rows_missing_before_the_checkpoint_are_an_error_naming_the_step(finished_run, tmp_path):
    workdir = copy_of(finished_run, tmp_path)
    kept = [r for r in rows(workdir) if r["step"] != 5]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (workdir / "summary.json").unlink()
    config = smoke()
    config.train.num_steps = 25
    with pytest.raises(train.ConfigError, match="lacks the rows of steps 5 "):
        train.train_and_evaluate(config, workdir)


def test_a_torn_summary_is_regenerated_and_a_finished_rerun_changes_nothing(finished_run, tmp_path):
    workdir = copy_of(finished_run, tmp_path)
    metrics_before = (workdir / "metrics.jsonl").read_bytes()
    reference = json.loads((finished_run / "summary.json").read_text())
    untouched = train.train_and_evaluate(smoke(), workdir)  # finished: returned as it is
    assert untouched == reference and (workdir / "metrics.jsonl").read_bytes() == metrics_before
    (workdir / "summary.json").write_text('{"status": "do')
    regenerated = train.train_and_evaluate(smoke(), workdir)
    assert regenerated["seeds"] == reference["seeds"]
    assert (workdir / "metrics.jsonl").read_bytes() == metrics_before


def test_sigterm_before_a_due_evaluation_still_writes_it(tmp_path):
    """A stop request is honoured after the hooks of its step: the due evaluation is written."""
    config = importlib.import_module("configs.order_task").get_config("smoke")
    config.train.num_steps, config.train.eval_every = 30, 10

    class StopAt10:
        every = 10

        def __call__(self, run):
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train.train_and_evaluate(config, tmp_path / "a", hooks=[StopAt10()])
    assert stopped["status"] == "interrupted" and stopped["final_step"] == 10
    assert any(r.get("eval") and r["step"] == 10 for r in rows(tmp_path / "a"))
    resumed = train.train_and_evaluate(config, tmp_path / "a")
    reference = train.train_and_evaluate(config, tmp_path / "b")
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert resumed["seeds"] == reference["seeds"]


def test_a_run_written_before_a_field_existed_still_resumes(tmp_path):
    """config.json of an older run lacks the fields added since; at the values that behave as
    before, the run is still this config's; any other value, or another field, is not."""
    from configs import qk_frozen
    from experiments import workdir

    now = json.loads(qk_frozen.get_config().to_json())
    old = json.loads(json.dumps(now))
    del old["data"]["teacher_sigma2"], old["train"]["stable_step_fraction"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    workdir.check_same_config(tmp_path, now)
    now["train"]["stable_step_fraction"] = 0.5
    with pytest.raises(workdir.WorkdirError, match="stable_step_fraction"):
        workdir.check_same_config(tmp_path, now)
    now["train"]["stable_step_fraction"], now["data"]["teacher_kernel"] = 0.0, "gaussian"
    with pytest.raises(workdir.WorkdirError, match="teacher_kernel"):
        workdir.check_same_config(tmp_path, now)
