"""The package's declarations are true: the Python floor is what its dependencies need (and
ruff targets it), the suite runs on versions the dependencies' floors admit, there is one
version, and the files a package people cite and adopt carries exist and agree with it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import attn_dynamics

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# The dependencies the Python floor is set by (jax >= 0.7 dropped Python 3.10).
FLOOR_SETTERS = ("jax", "jaxlib", "flax", "orbax-checkpoint", "diffrax", "grain")


def python_floor(specifier: str) -> Version:
    return min(Version(s.version) for s in SpecifierSet(specifier) if s.operator in (">=", "~="))


def test_requires_python_is_what_the_dependencies_need():
    floor = python_floor(PROJECT["requires-python"])
    for name in FLOOR_SETTERS:
        needed = importlib.metadata.metadata(name).get("Requires-Python")
        assert needed and floor >= python_floor(needed), (name, needed, floor)
    assert Version(".".join(map(str, sys.version_info[:2]))) >= floor


def test_ruff_targets_the_python_floor():
    floor = python_floor(PROJECT["requires-python"])
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py{floor.major}{floor.minor}"


@pytest.mark.parametrize("requirement", PROJECT["dependencies"])
def test_the_suite_runs_on_versions_the_floors_admit(requirement):
    req = Requirement(requirement)
    installed = importlib.metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), (requirement, installed)


def test_one_version_source():
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    source = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert source == "attn_dynamics.__version__"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == attn_dynamics.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    top = re.search(r"^## (\S+)", changelog, re.MULTILINE).group(1)
    assert top == attn_dynamics.__version__


def test_license_citation_and_types_ship():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert (ROOT / "attn_dynamics" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["attn_dynamics"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    arxiv = {i["value"] for ref in citation["references"] for i in ref["identifiers"]}
    assert arxiv == {"arXiv:2411.07538", "arXiv:2003.09229"}


def test_the_console_scripts_are_the_modules_mains():
    from experiments import report, run, sweep

    modules = {"run": run, "sweep": sweep, "report": report}
    for script, target in PROJECT["scripts"].items():
        module, _, function = target.partition(":")
        assert script == f"attn-dynamics-{module.rsplit('.', 1)[1]}" and function == "main"
        assert callable(getattr(modules[module.rsplit(".", 1)[1]], function))


# uv's wording when the index (or a Python to download) cannot be reached: the connection, not
# the request, failed. Anything else (no solution, a build error, a failed run) is a failure.
UNREACHABLE = re.compile(
    r"error sending request|dns error|tcp connect error|connection refused|connection reset|"
    r"network is unreachable|operation timed out|failed to lookup address|"
    r"network was disabled|HTTP status server error",
    re.IGNORECASE,
)


def uv_or_skip(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run uv; skip when it could not reach the index (before anything was installed)."""
    from uv import find_uv_bin  # the test extra's

    done = subprocess.run([find_uv_bin(), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 and UNREACHABLE.search(done.stderr):
        last = [line.strip() for line in done.stderr.splitlines() if line.strip()][-1]
        pytest.skip(f"the package index cannot be reached (uv {args[0]}: {last})")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_uv_unreachable_index_is_recognised(tmp_path):
    """The skip below matches what this uv says when the index is not there (no network)."""
    from uv import find_uv_bin

    env = {**os.environ, "UV_HTTP_RETRIES": "0"}
    refused = subprocess.run(
        [find_uv_bin(), "pip", "install", "--dry-run", "--no-cache", "--python", sys.executable,
         "--index-url", "http://127.0.0.1:9/simple", "attn-dynamics-no-such-package"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode != 0 and UNREACHABLE.search(refused.stderr), refused.stderr
    unsatisfiable = subprocess.run(
        [find_uv_bin(), "pip", "install", "--dry-run", "--python", sys.executable, "--offline",
         "numpy>=2", "numpy<2"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert unsatisfiable.returncode != 0
    assert not UNREACHABLE.search(unsatisfiable.stderr), unsatisfiable.stderr


@pytest.mark.slow
def test_the_dependency_floors_install_and_run(tmp_path):
    """The declared floors are true: a fresh venv on the Python floor, each direct dependency
    (and the test extra) at the lowest version it admits (``uv --resolution lowest-direct``),
    finishes the smoke run. uv's cache (default location) makes a rerun quick; skipped only
    when the package index cannot be reached."""
    floor = python_floor(PROJECT["requires-python"])
    venv = tmp_path / "floors"
    uv_or_skip("venv", "--quiet", "--python", f"{floor.major}.{floor.minor}", str(venv),
               timeout=300)  # fmt: skip
    python = venv / "bin" / "python"
    uv_or_skip("pip", "install", "--python", str(python), "--resolution", "lowest-direct",
               "-e", f"{ROOT}[test]", timeout=900)  # fmt: skip

    freeze = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, json, sys; "
         "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], **{n: m.version(n) "
         "for n in sys.argv[1:]}}))", *(Requirement(r).name for r in PROJECT["dependencies"])],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    installed = json.loads(freeze.stdout)
    assert installed["python"] == f"{floor.major}.{floor.minor}"
    for requirement in map(Requirement, PROJECT["dependencies"]):
        # each floor is a release that resolves with the others (else: raise it, say why)
        assert Version(installed[requirement.name]) == python_floor(str(requirement.specifier)), (
            requirement, installed
        )  # fmt: skip

    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": "", "VIRTUAL_ENV": str(venv)}
    run = subprocess.run(
        [str(python), "-m", "experiments.run", "--config=configs/qk_frozen.py:smoke",
         f"--workdir={workdir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (installed, run.stderr[-3000:])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "done", (installed, summary)
    assert summary["environment"]["jax"] == installed["jax"]  # the floors' jax ran it
