"""experiments.grid / experiments.sweep / experiments.report: typed axes, cell directories,
serial, process-pool and submitit executors giving the same results, skip / retry, reports
aggregated over data draws.

One tiny theory grid (2 kernels x 2 data draws, a few steps) is trained once in this process
(the serial reference) and once per executor; everything else reads those directories.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import qk_frozen
from experiments import grid, report, rundirs, sweep

ROOT = pathlib.Path(__file__).absolute().parents[1]
STEPS = 6
OVERRIDES = [f"--config.train.num_steps={STEPS}", "--config.train.log_every=2"]
AXES = {"model.kernel": ("softmax", "gaussian"), "data.seed": (0, 1)}
AXIS_FLAGS = ["--axis=model.kernel=softmax,gaussian", "--axis=data.seed=0,1"]
# what depends on the run, not on the computation
VOLATILE = ("wall_seconds", "compile_seconds", "environment")


def tiny_config():
    config = qk_frozen.get_config("smoke")
    config.train.num_steps = STEPS
    config.train.log_every = 2
    return config


def figures(root: pathlib.Path) -> dict:
    """Every cell's summary.json without its timings, by cell directory."""
    out = {}
    for cell in rundirs.list_cells(root):
        summary = rundirs.read_summary(cell.path)
        out[cell.name] = summary and {k: v for k, v in summary.items() if k not in VOLATILE}
    return out


def cli(*args: str, timeout: float = 300, module: str = "experiments.sweep"):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("serial")
    results = grid.run_grid(tiny_config(), AXES, root, progress=False)
    return root, results


# --------------------------------------------------------------------------------------------
# Axes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model.sigma2=4,8", ("model.sigma2", (4.0, 8.0))),
        ("seeds=(0,1),(2,3)", ("seeds", ((0, 1), (2, 3)))),
        ("seeds=(0,),(1, 2)", ("seeds", ((0,), (1, 2)))),
        ("train.stop_at_threshold=True,false", ("train.stop_at_threshold", (True, False))),
        ("model.sigma2=None,0.5", ("model.sigma2", (None, 0.5))),
        ("train.init_from=None", ("train.init_from", (None,))),
        ("model.kernel=softmax, 'gaussian'", ("model.kernel", ("softmax", "gaussian"))),
        ("train.trainable=re:a/b,'x,y'", ("train.trainable", ("re:a/b", "x,y"))),
        ("train.learning_rate=1,2e-3", ("train.learning_rate", (1.0, 0.002))),
        ("train.trainable_layers=(0,1),None", ("train.trainable_layers", ((0, 1), None))),
    ],
)
def test_axis_values_are_typed_by_their_field(text, expected):
    config = tiny_config()
    field, values = grid.parse_axis(text)
    typed = grid.typed_axes(config, {field: values})
    assert typed == {expected[0]: expected[1]}
    for value, want in zip(typed[field], expected[1], strict=True):
        assert type(value) is type(want)


@pytest.mark.parametrize(
    "text, words",
    [
        ("train.learning_rate=a,b", ["train.learning_rate", "'a'", "float"]),
        ("train.num_steps=10,2.5", ["train.num_steps", "2.5", "int"]),
        ("train.num_steps=True", ["train.num_steps", "True", "int"]),
        ("seeds=0,1", ["seeds", "0", "tuple", "(0, 1)"]),
        ("train.stop_at_threshold=yes", ["train.stop_at_threshold", "'yes'", "bool"]),
        ("model.bogus=1", ["model.bogus", "valid fields of config.model", "sigma2"]),
        ("model.kernel", ["--axis='model.kernel'", "FIELD=V1,V2"]),
        ("model.dim=32,32.0", ["model.dim"]),
        ("model.sigma2=4,4.0", ["model.sigma2", "repeat"]),
    ],
)
def test_bad_axis_is_one_line_naming_field_value_and_type(text, words):
    with pytest.raises(grid.AxisError) as e:
        field, values = grid.parse_axis(text)
        grid.typed_axes(tiny_config(), {field: values})
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_top_level_split_keeps_brackets_and_quotes_together():
    assert grid.split_top_level("(0,1),[2,(3,4)],'a,b',\"c,d\",e") == [
        "(0,1)",
        "[2,(3,4)]",
        "'a,b'",
        '"c,d"',
        "e",
    ]


def test_bad_axis_value_exits_2_with_one_line_before_jax_is_imported():
    # ``sys.modules['jax'] = None`` makes any import of jax fail: the error must come first.
    code = (
        "import sys; sys.modules['jax'] = None; from experiments import sweep; "
        "sys.exit(sweep.main(sys.argv))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--config=configs/qk_frozen.py:smoke", "--workdir=/nope"]
        + ["--axis=train.learning_rate=0.1,a"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "train.learning_rate" in line and "'a'" in line and "float" in line
    assert not pathlib.Path("/nope").exists()


@pytest.mark.parametrize("module", ["experiments.sweep", "experiments.report"])
def test_help_exits_0(module):
    out = cli("--help", module=module)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower() or "--parallel" in out.stdout


# --------------------------------------------------------------------------------------------
# Cell directories


def test_cell_names_keep_the_full_field_and_escape_values(tmp_path):
    a = grid.cell_name({"model.dim": 32, "train.trainable": "re:block_0/attention/query"})
    b = grid.cell_name({"data.dim": 32, "train.trainable": "re:block_0/attention/query"})
    assert a != b and a.startswith("model.dim=32,train.trainable=re")
    for name in (a, b, grid.cell_name({"model.kernel": "a,b=c%d e"})):
        assert "/" not in name and "\\" not in name and ":" not in name and " " not in name
        (tmp_path / name).mkdir()  # one directory, not nested
    assert len(list(tmp_path.iterdir())) == 3
    assert grid.cell_name({"seeds": (0, 1)}) == "seeds=(0,1)"
    assert grid.cell_name({"seeds": (3,)}) == "seeds=(3,)"
    assert grid.cell_name({}) == "base"


def test_distinct_values_never_share_a_directory(rng):
    alphabet = list("ab,=/%:() .'\"\\x1")
    values = {"".join(rng.choice(alphabet, size=rng.integers(1, 8))) for _ in range(400)}
    names = {grid.cell_name({"model.kernel": v}) for v in values}
    assert len(names) == len(values)
    long = [grid.cell_name({"model.kernel": "k" * 300 + str(i)}) for i in range(3)]
    assert len(set(long)) == 3 and all(len(n.encode()) <= 200 for n in long)


# --------------------------------------------------------------------------------------------
# Devices per worker


def test_workers_get_disjoint_gpus_or_disjoint_cores(monkeypatch):
    envs = grid.worker_environments(2, gpus=["0", "1", "2", "3", "4"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    shared = grid.worker_environments(3, gpus=["0", "1"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shared] == ["0", "1", "0"]
    assert all(e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for e in shared)
    monkeypatch.setattr(grid.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7, 9})
    envs = grid.worker_environments(4, gpus=[])
    assert [e[grid.CPUS_VARIABLE] for e in envs] == ["0,1", "2,3", "4,5,6", "7,9"]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2", "3", "2"]
    assert all("xla_cpu_multi_thread_eigen=false" not in e["XLA_FLAGS"] for e in envs)
    single = grid.worker_environments(10, gpus=[])
    assert [e[grid.CPUS_VARIABLE] for e in single][-2:] == ["9", "0"]  # round robin
    assert all("--xla_cpu_multi_thread_eigen=false" in e["XLA_FLAGS"] for e in single)
    assert all(e["OMP_NUM_THREADS"] == "1" for e in single)


def test_a_worker_runs_on_its_own_cores():
    """The pinning happens in the worker process, before JAX starts (spawned, as the pool)."""
    cores = sorted(os.sched_getaffinity(0))
    env = grid.worker_environments(len(cores), gpus=[])[-1]
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=grid.apply_environment, initargs=(env,)
    )
    with pool:
        affinity = pool.submit(os.sched_getaffinity, 0).result()
        threads = pool.submit(os.getenv, "OMP_NUM_THREADS").result()
    assert (affinity, threads) == ({cores[-1]}, "1")


def test_slurm_flags_become_the_sbatch_header(tmp_path, monkeypatch):
    """No cluster here: a stand-in ``srun`` on PATH lets submitit build the job script."""
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    argv = ["sweep", "--config=configs/qk_frozen.py:smoke", f"--workdir={tmp_path / 'g'}"]
    argv += ["--executor=slurm", "--slurm_partition=gpu", "--slurm_time=90"]
    argv += ["--slurm_gpus_per_cell=2", "--slurm_param=slurm_account=abc", "--single_cell"]
    executor = sweep.make_executor(sweep.parse(argv).flags, str(tmp_path / "g"))
    text = executor.executor._executor._make_submission_file_text("python -m x", "0")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--account=abc"):
        assert f"#SBATCH {line}\n" in text


def test_slurm_without_a_cluster_is_one_line(tmp_path):
    if shutil.which("srun"):
        pytest.skip("a SLURM cluster is here")
    out = cli(
        "--config=configs/qk_frozen.py:smoke",
        f"--workdir={tmp_path}",
        "--executor=slurm",
        "--axis=model.kernel=softmax",
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "srun" in out.stderr


# --------------------------------------------------------------------------------------------
# Running grids


def test_serial_grid_writes_every_cell_and_the_index(serial):
    root, results = serial
    names = [grid.cell_name(c) for c in grid.cells(AXES)]
    assert [r.name for r in results] == names
    assert all(r.status == "done" and not r.skipped for r in results)
    index = json.loads((root / "sweep.json").read_text())
    assert [c["name"] for c in index["cells"]] == names
    assert index["cells"][1] == {
        "name": "model.kernel=softmax,data.seed=1",
        "model.kernel": "softmax",
        "data.seed": 1,
    }
    cells = rundirs.list_cells(root)
    assert [c.overrides for c in cells] == grid.cells(AXES)
    for cell in cells:  # each cell trained its own config
        config = rundirs.read_config(cell.path)
        assert config["model"]["kernel"] == cell.overrides["model.kernel"]
        assert config["data"]["seed"] == cell.overrides["data.seed"]
    # the data draw matters: same kernel, different draws, different initial losses
    first = figures(root)
    a, b = (first[f"model.kernel=softmax,data.seed={s}"]["seeds"][0] for s in (0, 1))
    assert a["initial_loss"] != b["initial_loss"]


def test_rerun_skips_finished_cells_and_touches_nothing(serial):
    root, _ = serial
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "sweep.json"}
    results = grid.run_grid(tiny_config(), AXES, root, progress=False)
    assert all(r.skipped and r.status == "done" for r in results)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "sweep.json"}
    assert before == after
    cell = results[0].path
    assert grid.is_finished(cell, grid.configure(tiny_config(), results[0].overrides))
    other = grid.configure(tiny_config(), {**results[0].overrides, "train.learning_rate": 0.01})
    assert not grid.is_finished(cell, other)  # a finished run of another config is not it


def test_failed_cell_is_reported_and_retried_on_the_next_run(tmp_path):
    axes = {"model.kernel": ("softmax",)}
    cell = tmp_path / grid.cell_name({"model.kernel": "softmax"})
    cell.mkdir()
    (cell / "config.json").write_text(json.dumps({"seeds": [99]}))  # another run's directory
    (result,) = grid.run_grid(tiny_config(), axes, tmp_path, progress=False)
    assert result.status == "failed" and "\n" not in result.error
    assert "another config" in result.error
    assert grid.summarize([result]) == "1 failed"
    (cell / "config.json").unlink()
    (result,) = grid.run_grid(tiny_config(), axes, tmp_path, progress=False)
    assert result.status == "done" and not result.skipped


def test_process_pool_gives_the_serial_results(serial, tmp_path):
    """Two cells of the serial grid, one per worker process (a share of the cores each)."""
    root, _ = serial
    axes = {"model.kernel": ("softmax", "gaussian"), "data.seed": (1,)}
    lines = io.StringIO()
    progress = grid.Progress(2, 0, stream=lines)
    results = grid.run_grid(
        tiny_config(), axes, tmp_path, executor=grid.ProcessPool(2), progress=progress
    )
    assert [r.status for r in results] == ["done"] * 2
    reference = figures(root)
    assert figures(tmp_path) == {name: reference[name] for name in figures(tmp_path)}
    text = lines.getvalue().splitlines()
    assert len(text) == 2 and text[-1].startswith("[2/2]") and "ETA" in text[0]


def test_a_stopped_process_pool_starts_no_queued_cell(tmp_path):
    """SIGTERM while the one worker trains the first cell (the pool has already handed it the
    second): the first checkpoints and stops, the others never start, and the grid returns."""
    config = tiny_config()
    config.train.num_steps, config.train.log_every = 10**7, 100
    axes = {"data.seed": (1, 2, 3)}
    first = tmp_path / grid.cell_name({"data.seed": 1}) / "metrics.jsonl"

    def stop_once_training():
        deadline = time.monotonic() + 120
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_training, daemon=True).start()
    start = time.monotonic()
    results = grid.run_grid(config, axes, tmp_path, executor=grid.ProcessPool(1), progress=False)
    assert [r.status for r in results] == ["interrupted", "not run", "not run"]
    assert time.monotonic() - start < 120
    assert not (tmp_path / grid.cell_name({"data.seed": 2})).exists()


def _wait_for_summaries(root: pathlib.Path, count: int, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(root.glob("*/summary.json"))) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} summaries in {timeout} s: {process.communicate()}")


def test_submitit_engine_killed_midway_then_rerun_finishes_the_rest(serial, tmp_path):
    """submitit's LocalExecutor (the SLURM code path on this machine) through the command line:
    SIGTERM once a cell has finished; the rerun runs only the cells left, same results."""
    reference, _ = serial
    args = [
        "--config=configs/qk_frozen.py:smoke",
        f"--workdir={tmp_path}",
        *OVERRIDES,
        *AXIS_FLAGS,
        "--executor=local_submitit",
        "--parallel=2",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.sweep", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    try:
        _wait_for_summaries(tmp_path, 1, process, timeout=900)  # limits for a loaded machine
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "rerun the same command" in err
    finished = {  # an interrupted cell writes its summary too: it is not finished
        p.parent.name: p.stat().st_mtime_ns
        for p in tmp_path.glob("*/summary.json")
        if json.loads(p.read_text())["status"] == "done"
    }
    assert 1 <= len(finished) < 4

    again = cli(*args, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)}/4 cells finished before: skipped" in again.stderr
    assert again.stderr.count(": done |") == 4 - len(finished)
    for name, mtime in finished.items():  # not run again
        assert (tmp_path / name / "summary.json").stat().st_mtime_ns == mtime
    assert figures(tmp_path) == figures(reference)
    assert list((tmp_path / ".submitit").iterdir())  # the jobs went through submitit


# --------------------------------------------------------------------------------------------
# Reports


def test_report_aggregates_over_data_draws(serial):
    root, _ = serial
    out = report.write_report(root)
    rows = json.loads((root / "report.json").read_text())
    assert [r["label"] for r in rows] == ["model.kernel=softmax", "model.kernel=gaussian"]
    for row in rows:
        kernel = row["label"].split("=")[1]
        summaries = [
            json.loads((root / f"model.kernel={kernel},data.seed={s}" / "summary.json").read_text())
            for s in (0, 1)
        ]
        finals = [np.median([s["final_loss"] for s in x["seeds"]]) for x in summaries]
        assert row["draws"] == 2 and row["seeds"] == 2 * len(summaries[0]["seeds"])
        assert row["final_loss"]["median"] == pytest.approx(np.median(finals))
        assert row["final_loss"]["min"] == pytest.approx(min(finals))
        assert row["final_loss"]["max"] == pytest.approx(max(finals))
        reached = [
            np.mean([s["steps_to_threshold"] is not None for s in x["seeds"]]) for x in summaries
        ]
        assert row["fraction_reached"]["median"] == pytest.approx(np.median(reached))
    table = out.read_text()
    assert "| model.kernel=gaussian | 2 |" in table and "median over draws" in table
    assert (root / "loss_curves.png").stat().st_size > 0


def test_report_on_a_torn_summary_is_one_line(serial, tmp_path):
    root, _ = serial
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    torn = copy / "model.kernel=gaussian,data.seed=1" / "summary.json"
    torn.write_text(torn.read_text()[:40])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert report.main(["report", str(copy)]) == 2
    (line,) = err.getvalue().strip().splitlines()
    assert str(torn) in line and "rerun" in line


def test_report_cli_on_a_sweep_and_on_bad_input(serial, tmp_path):
    root, _ = serial
    out = cli(str(root), module="experiments.report")
    assert out.returncode == 0, out.stderr
    assert "model.kernel=softmax" in out.stdout
    bad = cli(str(tmp_path / "missing"), module="experiments.report")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_sweep_module_keeps_the_names_notebooks_use():
    assert sweep.cells is grid.cells and sweep.cell_name is grid.cell_name
    assert sweep.set_field is grid.set_field and sweep.is_finished is grid.is_finished
