"""Checkpoints move between layouts: a checkpoint saved with 8 seeds sharded over 8 (simulated)
devices resumes on 1 device, and one saved on 1 device resumes on 8; both runs then log the
rows of an uninterrupted 1-device run.

The rows agree to float32 rounding, not bit for bit, and not because of the checkpoint (it is
restored untouched): XLA:CPU compiles the vmapped step for the seeds each device holds (8 on one
device, 1 on each of 8), and its dot kernels round differently for those shapes (~1e-7 relative
at step 0), which the 20 training steps amplify. No reduction crosses devices (mesh
``seeds=8, data=1``).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = tuple(range(8))
SAVED_AT, TOTAL = 10, 20  # the :smoke variant checkpoints every 10 steps
ARGS = (
    "--config=configs/qkv_trained.py:smoke",
    "--config.seeds=(" + ",".join(map(str, SEEDS)) + ")",
    f"--config.train.num_steps={TOTAL}",
    "--config.train.log_every=3",  # step SAVED_AT - 1 is due: a resumed file has no extra row
)
# Observed on this machine: <= 7e-6 relative (gradient norms at step 19), <= 8e-7 absolute.
# atol covers the near-zero diagnostics (sigma_min of a near-singular Phi, singular-value
# ratios down to 1e-4), whose error is set by the larger singular values around them.
RTOL, ATOL = 2e-5, 1e-5


def start(workdir: pathlib.Path, devices: int) -> subprocess.Popen:
    """``experiments.run`` on ``devices`` simulated CPU devices (the flag must precede JAX)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *ARGS, f"--workdir={workdir}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(*procs: subprocess.Popen) -> None:
    """Wait for runs started together (two at a time: the step is small, startup dominates)."""
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errors]


def interrupted_copy(workdir: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    """``workdir`` as a run that stopped right after its step-SAVED_AT checkpoint."""
    shutil.copytree(workdir, to)
    shutil.rmtree(to / "checkpoints" / str(TOTAL))
    (to / "summary.json").unlink()
    assert (to / "checkpoints" / str(SAVED_AT)).is_dir()
    return to


def summary(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def rows(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").open()]


def assert_rows_close(got: list[dict], want: list[dict]) -> None:
    assert [(r["step"], "eval" in r) for r in got] == [(r["step"], "eval" in r) for r in want]
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Uninterrupted runs on 1 and 8 devices, then each resumed from its step-SAVED_AT
    checkpoint on the other layout."""
    tmp = tmp_path_factory.mktemp("layouts")
    out = {"one": tmp / "one", "eight": tmp / "eight"}
    finish(start(out["one"], 1), start(out["eight"], 8))
    out["8->1"] = interrupted_copy(out["eight"], tmp / "saved_on_8")
    out["1->8"] = interrupted_copy(out["one"], tmp / "saved_on_1")
    finish(start(out["8->1"], 1), start(out["1->8"], 8))
    return out


@pytest.mark.slow
def test_the_seed_axis_is_sharded_on_eight_devices(runs):
    assert summary(runs["one"])["mesh"] == {"seeds": 1, "data": 1}
    assert summary(runs["eight"])["mesh"] == {"seeds": 8, "data": 1}


@pytest.mark.slow
@pytest.mark.parametrize("case, devices", [("8->1", 1), ("1->8", 8)])
def test_a_checkpoint_resumes_on_another_layout(runs, case, devices):
    resumed = summary(runs[case])
    assert resumed["mesh"] == {"seeds": devices, "data": 1}
    assert resumed["status"] == "done" and resumed["final_step"] == TOTAL
    assert_rows_close(rows(runs[case]), rows(runs["one"]))
    np.testing.assert_allclose(
        resumed["final_loss"], summary(runs["one"])["final_loss"], rtol=RTOL, atol=ATOL
    )
