"""Every module imports on its own, the library never imports the experiments, and the project's
modules import each other without cycles.

Imports run in one fresh interpreter that loads the third-party stack once and then forks a
child per project module, so each module is imported with no other project module loaded (as a
user's first ``import`` would). Cycles are found on the graph of every import statement of every
file (function-level ones included: a lazy import hides a cycle, it does not remove it).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("attn_dynamics", "experiments", "configs")
IMPORTED = ("attn_dynamics", "experiments")  # configs are imported by the config tests
# Cycles being removed by work in progress elsewhere; delete an entry once it is gone.
KNOWN_CYCLES = []

DRIVER = r"""
import importlib, json, os, sys, traceback
for lib in ("numpy", "scipy.stats", "jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint",
            "ml_collections", "absl.flags", "matplotlib.figure", "grain", "diffrax", "tqdm"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
failures = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import one project module into a clean slate
        os.close(read)
        try:
            importlib.import_module(name)
            leaked = sorted(m for m in sys.modules if m.split(".")[0] == "experiments")
            error = (f"imports {leaked[0]}" if name.startswith("attn_dynamics") and leaked
                     else "")
        except BaseException as e:  # noqa: BLE001
            error = "".join(traceback.format_exception_only(e)).strip()
        os.write(write, error.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        error = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if error or status:
        failures[name] = error or f"exit status {status}"
print(json.dumps(failures))
"""


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, pathlib.Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: pathlib.Path, modules) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from pkg import mod`` is an
    import of ``pkg.mod`` when that is a module, else of ``pkg``)."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        for target in targets:
            while target and target not in modules:  # a name in a module, or a third party
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one
    module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_in(set(component), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_in(component: set[str], graph) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")


def test_cycle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(map(tuple, cycles(graph))) == [("a", "b", "c", "a"), ("e", "e2", "e")]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_import_graph_resolves_submodules(graph):
    assert "experiments.rundirs" in graph["experiments.analyses.cells"]
    assert "attn_dynamics.data.synthetic" in graph["attn_dynamics.data.student_teacher"]
    assert "experiments.analyses" not in graph["experiments.analyses.theory"]  # its submodules


def test_no_import_cycles(graph):
    found = [c for c in cycles(graph) if set(c) not in KNOWN_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_library_does_not_import_the_experiments(graph):
    bad = {
        name: sorted(t for t in targets if t.split(".")[0] in ("experiments", "configs"))
        for name, targets in graph.items()
        if name.split(".")[0] == "attn_dynamics"
    }
    assert not {k: v for k, v in bad.items() if v}


def test_every_module_imports_on_its_own():
    names = [n for n in project_modules() if n.split(".")[0] in IMPORTED]
    assert len(names) > 20
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"JAX_PLATFORMS": "cpu", **os.environ},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
