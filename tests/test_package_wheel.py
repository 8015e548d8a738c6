"""The wheel is the package a researcher installs: it holds the configs, ``py.typed``, the
LICENSE and the console scripts, and installed (no checkout, no editable install) it runs the
main job from any folder, by script and by ``python -m``.

Built from a copy of the sources without build isolation (no network: the setuptools of the
test environment, the ``test`` extra's), installed with ``--no-deps`` into a fresh venv that
sees this environment's dependencies (``--system-site-packages``). About 40 s.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import attn_dynamics

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "attn_dynamics", "experiments", "configs")
SCRIPTS = ("attn-dynamics-run", "attn-dynamics-sweep", "attn-dynamics-report")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        kwargs = (
            {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        )
        copy(ROOT / name, src / name, **kwargs)
    out = src / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("attn_dynamics-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_configs_types_license_and_scripts(wheel):
    version = attn_dynamics.__version__
    assert wheel.name.startswith(f"attn_dynamics-{version}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert shipped <= names and "configs/qk_frozen.py" in shipped
    assert "attn_dynamics/py.typed" in names and "experiments/cli.py" in names
    info = f"attn_dynamics-{version}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    text = lambda name: zipfile.ZipFile(wheel).read(f"{info}/{name}").decode()
    metadata = text("METADATA")
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert "Provides-Extra: wandb" in metadata
    entry_points = text("entry_points.txt")
    for script in SCRIPTS:
        command = script.removeprefix("attn-dynamics-")
        assert f"{script} = experiments.{command}:main" in entry_points


@pytest.mark.slow
def test_the_installed_wheel_runs_the_main_job_from_any_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)  # fmt: skip
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    away = tmp_path / "elsewhere"  # no configs/ here, no checkout above
    away.mkdir()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    where = subprocess.run(
        [str(python), "-c", "import configs, experiments; print(experiments.__file__)"],
        cwd=away, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel's, not the checkout's

    by_script = subprocess.Popen([str(bin_dir / "attn-dynamics-run"), "--config=qk_frozen:smoke"],
                                 cwd=away, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    by_module = subprocess.run(
        [str(python), "-m", "experiments.run", "--config=configs/qk_frozen.py:smoke",
         "--workdir=by_module"],
        cwd=away, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    script_err = by_script.communicate(timeout=300)[1]
    assert by_module.returncode == 0, by_module.stderr[-2000:]
    assert by_script.returncode == 0, script_err[-2000:]
    # Without --workdir the run says where it wrote and how to resume it.
    announced = next(line for line in script_err.splitlines() if line.startswith("workdir: "))
    workdir = announced.split()[1]
    assert f"resume: attn-dynamics-run --config=qk_frozen:smoke --workdir={workdir}" in announced
    for run_dir in (away / workdir, away / "by_module"):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "done"
        env_ = summary["environment"]
        assert env_["attn_dynamics"] == attn_dynamics.__version__
        assert env_["git_commit"] is None and env_["git_dirty"] is None  # no checkout
        provenance = json.loads((run_dir / "config.json").read_text())["provenance"]
        assert provenance["packages"]["orbax-checkpoint"] and provenance["git_commit"] is None
    for script in SCRIPTS[1:]:
        out = subprocess.run([str(bin_dir / script), "--help"], cwd=away, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0 and out.stdout.startswith(f"usage: {script} ")
