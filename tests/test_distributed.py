"""Multi-host for real: two CPU processes on 127.0.0.1 joined by JAX's distributed runtime (gloo
collectives) train one run, equal to one process with two devices; their checkpoint resumes in
one process; a killed peer ends the other; rerunning both resumes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]

CASES = {
    "main_job": ["--config=configs/qk_frozen.py", "--config.train.num_steps=40",
                 "--config.train.log_every=5", "--config.train.checkpoint_every=20"],
    "encoder": ["--config=configs/order_task.py:smoke", "--config.train.num_steps=12",
                "--config.train.log_every=2", "--config.train.checkpoint_every=6"],
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(args, workdir, *extra) -> list[str]:
    return [sys.executable, "-m", "experiments.run", *args, f"--workdir={workdir}",
            "--config.train.progress_bar=False", *extra]  # fmt: skip


def env(devices: int = 1) -> dict:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }


def two_processes(args, workdir) -> list[subprocess.Popen]:
    port = free_port()
    return [
        subprocess.Popen(
            command(
                args,
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),  # fmt: skip
            cwd=ROOT,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def wait_all(procs, timeout=400) -> list[tuple[int, str]]:
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]


def rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_equal_one_process_with_two_devices(case, tmp_path):
    args = CASES[case]
    outcomes = wait_all(two_processes(args, tmp_path / "hosts"))
    assert all(rc == 0 for rc, _ in outcomes), [err[-1500:] for _, err in outcomes]
    single = subprocess.run(
        command(args, tmp_path / "single"), cwd=ROOT, env=env(2), capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-2000:]
    # The same mesh ('seeds': 1, 'data': 2) and the same reductions: equal up to float32
    # reassociation across the two hosts' partial sums (bitwise on this machine's runs).
    a, b = rows(tmp_path / "hosts"), rows(tmp_path / "single")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose([ra[k] for k in sorted(rb)], [rb[k] for k in sorted(rb)],
                                   rtol=1e-6)  # fmt: skip
    summary = json.loads((tmp_path / "hosts" / "summary.json").read_text())
    assert summary["mesh"] == {"seeds": 1, "data": 2} and summary["status"] == "done"
    if case == "main_job":
        check_two_process_checkpoint_resumes_in_one_process(args, tmp_path, len(a))


def check_two_process_checkpoint_resumes_in_one_process(args, tmp_path, rows_before: int):
    """A checkpoint the two hosts wrote collectively, resumed by one process on one device: the
    rows already written stay, and the new ones equal the 2-device run's continuation."""
    longer = [*args, "--config.train.num_steps=60"]
    for workdir, devices in (("hosts", 1), ("single", 2)):
        out = subprocess.run(command(longer, tmp_path / workdir), cwd=ROOT, env=env(devices),
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
    a, b = rows(tmp_path / "hosts"), rows(tmp_path / "single")
    assert len(a) > rows_before and [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(
            [ra[k] for k in sorted(rb)], [rb[k] for k in sorted(rb)], rtol=2e-5
        )  # a 1-device and a 2-device sum: not bitwise
    summary = json.loads((tmp_path / "hosts" / "summary.json").read_text())
    assert summary["final_step"] == 60 and summary["mesh"] == {"seeds": 1, "data": 1}


@pytest.mark.slow
def test_a_killed_peer_ends_the_other_and_both_resume(tmp_path):
    args = [*CASES["main_job"][:1], "--config.train.checkpoint_every=50",
            "--config.train.num_steps=200000"]  # fmt: skip
    workdir = tmp_path / "run"
    procs = two_processes(args, workdir)
    deadline = time.time() + 300
    while time.time() < deadline and checkpointing.latest_step(workdir) is None:
        time.sleep(0.2)  # a committed checkpoint (a tmp dir is not one)
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.time()
    code, _ = procs[0].wait(timeout=180), None
    assert code != 0 and time.time() - t_kill < 180
    procs[1].wait()
    saved = checkpointing.latest_step(workdir)

    resume_args = [*args[:2], f"--config.train.num_steps={saved + 10}"]
    outcomes = wait_all(two_processes(resume_args, workdir))
    assert all(rc == 0 for rc, _ in outcomes), [err[-1500:] for _, err in outcomes]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == saved + 10
