"""The notebooks run top to bottom on CPU in SMOKE mode, each in a fresh kernel and a temp copy.

Every notebook under ``notebooks/`` is executed with nbclient (no papermill needed): a cell
``SMOKE = True; RUNS_DIR = <tmp>`` is inserted right after the cell tagged ``parameters`` (what
papermill does), the kernel runs with ``JAX_PLATFORMS=cpu`` in a temporary copy of the
repository (so run directories land under the temp dir, never in the checkout, and tests in
parallel never share a directory), and any cell error fails the test. The committed notebooks
must carry no outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COPIED = ("attn_dynamics", "experiments", "configs", "notebooks")
KERNEL = "attn-dynamics-test"
CELL_TIMEOUT_S = 600

pytestmark = pytest.mark.notebooks


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    for expected in (
        "01_quickstart.ipynb",
        "02_kernels_and_freezing.ipynb",
        "03_floater.ipynb",
        "04_reproduce.ipynb",
    ):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: pathlib.Path):
    """No outputs or execution counts in git, and one ``parameters`` cell with ``SMOKE``."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code_cells) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs (strip them)"
    tagged = [c for c in code_cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assert "SMOKE = False" in tagged[0].source


def _working_copy(dest: pathlib.Path) -> pathlib.Path:
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "runs")
    for name in COPIED:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def _kernel_spec(jupyter_dir: pathlib.Path) -> None:
    """A kernelspec for *this* interpreter (the installed ``python3`` one may name another)."""
    spec = jupyter_dir / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "attn-dynamics (test)",
                "language": "python",
            }
        )
    )


def _inject_parameters(nb, runs_dir: pathlib.Path) -> None:
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(f"SMOKE = True\nRUNS_DIR = {str(runs_dir)!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)


# Longest first (04, 03, ...), so that with pytest -n the slow ones do not start last.
@pytest.mark.parametrize("path", sorted(NOTEBOOKS, reverse=True), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch):
    repo = _working_copy(tmp_path / "repo")
    runs = tmp_path / "runs"
    _kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # keep the kernel's inline backend
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a laptop
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        PYTHONDONTWRITEBYTECODE="1",
        TQDM_DISABLE="1",
    )

    nb = nbformat.read(repo / "notebooks" / path.name, as_version=4)
    _inject_parameters(nb, runs)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,  # the first failing cell raises CellExecutionError
        resources={"metadata": {"path": str(repo / "notebooks")}},
    )
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s in SMOKE mode")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: drew no figure inline"
    assert runs.is_dir() and any(runs.rglob("summary.json")), "no run landed under RUNS_DIR"
    assert not (repo / "runs").exists(), "a notebook wrote into the repository"
