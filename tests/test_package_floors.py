"""The package's declarations are true: the Python floor is what its dependencies need (and
ruff targets it), the suite runs on versions the dependencies' floors admit, there is one
version, and the files a package people cite and adopt carries exist and agree with it."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
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
    return min(Version(s.version) for s in SpecifierSet(specifier) if s.operator == ">=")


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
