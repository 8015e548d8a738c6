"""Multi-host for real: two CPU processes on 127.0.0.1 joined by JAX's distributed runtime (gloo
collectives) train one run, equal to one process with two devices; their checkpoint resumes in
one process; a killed peer ends the other with one line and exit 3; rerunning both resumes. The
supervisor that makes the one line (``distributed.supervise``) is tested on stand-in children
without JAX: what passes, what becomes the line, signals, dying with it."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import checkpointing, distributed

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


RUNTIME_NOISE = re.compile(r"^[IWEF]\d{4} |Check failure|^\s+@ +0x|Traceback|coordination|Gloo")


@pytest.mark.slow
@pytest.mark.parametrize("victim, how", [(1, "killed"), (0, "killed"), (1, "hung")])
def test_a_lost_peer_ends_the_other_with_one_line_and_both_resume(victim, how, tmp_path):
    """Process 1 killed (process 0 hosts the coordination service), process 0 killed (the
    coordinator itself), or process 1 hung (SIGSTOP: only the heartbeat notices): the survivor
    ends within the bound with one line naming the lost peer and its own command, exit 3;
    rerunning both resumes from the last checkpoint."""
    args = [*CASES["main_job"][:1], "--config.train.checkpoint_every=50",
            "--config.train.num_steps=200000"]  # fmt: skip
    workdir = tmp_path / "run"
    procs = two_processes(args, workdir)
    deadline = time.time() + 300
    while time.time() < deadline and checkpointing.latest_step(workdir) is None:
        time.sleep(0.2)  # a committed checkpoint (a tmp dir is not one)
    if how == "killed":
        procs[victim].send_signal(signal.SIGKILL)  # the supervisor: its child dies with it
    else:
        pid = procs[victim].pid
        worker = int(pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        os.kill(worker, signal.SIGSTOP)
    t_kill = time.time()
    survivor = procs[1 - victim]
    _, err = survivor.communicate(timeout=180)
    elapsed = time.time() - t_kill
    procs[victim].kill()  # a hung worker dies with its supervisor
    procs[victim].wait()
    # Bound: the heartbeat, the supervisor's hold and a step; a killed peer is seen at once.
    assert elapsed < distributed.HEARTBEAT_SECONDS + distributed.HOLD_SECONDS + 10, elapsed
    assert survivor.returncode == distributed.LOST_PEER_EXIT, err[-3000:]
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err[-3000:]
    assert not [line for line in lines if RUNTIME_NOISE.search(line)], err[-3000:]
    me = 1 - victim
    assert lines[-1].startswith(
        f"error: process {me} of 2 lost its peer (process {victim} stopped responding); "
    ), lines[-1]
    rerun = re.search(r"\(this one's: (.*)\)$", lines[-1])[1]
    assert rerun.startswith("python -m experiments.run --config=configs/qk_frozen.py ")
    assert f"--process_id={me}" in rerun and f"--workdir={workdir}" in rerun, rerun
    if (victim, how) != (1, "killed"):
        return  # the resume below is the same for each
    saved = checkpointing.latest_step(workdir)
    resume_args = [*args[:2], f"--config.train.num_steps={saved + 10}"]
    outcomes = wait_all(two_processes(resume_args, workdir))
    assert all(rc == 0 for rc, _ in outcomes), [err[-1500:] for _, err in outcomes]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == saved + 10


# --------------------------------------------------------------------------------------------
# The supervisor on stand-in children (no JAX, fast)

# What JAX's runtime wrote when its coordination service lost process 1 (shortened).
ABORT_DUMP = """\
E1207 23:20:17.450292    8629 coordination_service.cc:1520] Shutdown barrier has failed:
INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout.
This suggests that the workers are out of sync.
E1207 23:20:17.450719    8640 coordination_service_agent.cc:289] Polled an error.
F1207 23:20:17.450835    8640 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. This most likely indicates that another task died.
*** Check failure stack trace: ***
    @     0x7f79dde40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""


def supervised(child: str, **popen) -> subprocess.Popen:
    """A supervisor (as run.py starts it) of ``python -c child``; its lost-peer line is
    ``error: lost <the runtime's text, first word>``."""
    script = (
        "import sys; from experiments import distributed\n"
        f"sys.exit(distributed.supervise([sys.executable, '-c', {child!r}], "
        "lost_peer=lambda text: 'error: lost ' + text.split()[0]))"
    )
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)  # fmt: skip


def test_the_supervisor_passes_output_and_status_through():
    child = (
        "import sys, os\n"
        "print('to stdout', flush=True)\n"
        "sys.stderr.write('INFO:root:a line\\n')\n"
        "sys.stderr.write('W1207 23:20:17.450292 8629 some_file.cc:12] a runtime warning\\n')\n"
        "sys.stderr.write('  its second line\\n')\n"
        "sys.stderr.write('error: the run failed\\n'); sys.exit(5)"
    )
    out, err = supervised(child).communicate(timeout=60)
    assert out == "to stdout\n"
    assert err == (
        "INFO:root:a line\nW1207 23:20:17.450292 8629 some_file.cc:12] a runtime warning\n"
        "  its second line\nerror: the run failed\n"
    )


@pytest.mark.parametrize("how", ["abort", "marker"])
def test_the_supervisor_turns_a_lost_peer_into_one_line(how):
    if how == "abort":  # the runtime's C++ abort
        tail = f"sys.stderr.write({ABORT_DUMP!r}); sys.stderr.flush(); os.abort()"
    else:  # the child saw the lost peer in Python and left with the marker
        tail = (
            f"print({distributed.LOST_PEER_MARKER + 'Gloo failed'!r}, file=sys.stderr); os._exit(3)"
        )
    child = f"import sys, os\nsys.stderr.write('INFO:root:training\\n'); sys.stderr.flush()\n{tail}"
    proc = supervised(child)
    _, err = proc.communicate(timeout=60)
    first = "E1207" if how == "abort" else distributed.LOST_PEER_MARKER.split()[0]
    assert err == f"INFO:root:training\nerror: lost {first}\n"
    assert proc.returncode == distributed.LOST_PEER_EXIT


def test_an_unrelated_runtime_abort_is_shown_as_it_came():
    dump = "F1207 23:20:17.450835 8640 foo.cc:80] Check failed: x > 0\n*** Check failure ***\n"
    proc = supervised(f"import sys, os\nsys.stderr.write({dump!r}); sys.stderr.flush(); os.abort()")
    _, err = proc.communicate(timeout=60)
    assert err == dump and proc.returncode == 128 + signal.SIGABRT


# A child that takes SIGTERM as experiments.hooks.StopOnSignal does (its line), counts them.
COUNTING_CHILD = """\
import logging, os, signal, sys, time
logging.basicConfig()
got = []
def take(signum, frame):
    got.append(signum)
    logging.warning("signal %d: saving a checkpoint and stopping", signum)
signal.signal(signal.SIGTERM, take)
print(os.getpid(), flush=True)
end = time.time() + 30
while not got and time.time() < end:
    time.sleep(0.05)
time.sleep(2.5)  # a duplicate would arrive meanwhile
print(len(got), flush=True)
"""


@pytest.mark.parametrize("to", ["supervisor", "group"])
def test_a_signal_reaches_the_child_once(to):
    """SIGTERM to the supervisor alone is passed on; to the whole group (a batch system) it
    reaches the child directly and is not passed on again (a second one would skip the final
    checkpoint)."""
    proc = supervised(COUNTING_CHILD, start_new_session=True)
    proc.stdout.readline()  # the child's handler is installed
    if to == "supervisor":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out == "1\n", err
    assert proc.returncode == 0


def test_the_child_dies_with_its_supervisor():
    proc = supervised("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)")
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and pathlib.Path(f"/proc/{child}").exists():
        status = pathlib.Path(f"/proc/{child}/status").read_text()
        if "State:\tZ" in status:
            break  # dead, awaiting its reaper
        time.sleep(0.05)
    else:
        assert not pathlib.Path(f"/proc/{child}").exists(), "the child outlived its supervisor"
