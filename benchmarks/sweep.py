"""Sweep throughput: a 4-cell theory grid with ``--parallel=2`` against the serial sweep.

    python benchmarks/sweep.py --repeats=3      # prints the "sweep (cpu)" section of RESULTS.md

The grid is ``configs/qk_frozen.py`` (W_V trained by full-batch GD), model.kernel x
train.trainable = 2 x 2 cells, ``--steps`` steps each. Every repeat runs both programs,
``python -m experiments.sweep ...`` in a fresh process into a fresh root, in alternating order
(the machine is shared: interleaving exposes both to the same load). Reported: median wall time
of each, the ratio of the medians and the per-repeat ratios (target <= 0.75), CPU time (user +
system of the sweep and its workers), the load average around each run, and whether every
cell's summary.json figures (all but timings and the environment) are the same in both.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).absolute().parents[1]
sys.path.insert(0, str(ROOT))

AXES = ["--axis=model.kernel=softmax,gaussian", "--axis=train.trainable=V,QKV"]
VOLATILE = ("wall_seconds", "compile_seconds", "environment")


def sweep(root: pathlib.Path, parallel: int, steps: int) -> dict:
    """One sweep in a fresh process: wall and CPU seconds, load average before and after."""
    args = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--config=configs/qk_frozen.py",
        f"--workdir={root}",
        f"--config.train.num_steps={steps}",
        "--config.train.progress_bar=False",
        f"--parallel={parallel}",
        *AXES,
    ]
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"sweep --parallel={parallel} failed:\n{out.stderr[-3000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load": (load_before, os.getloadavg()[0])}


def figures(root: pathlib.Path) -> dict:
    from experiments import rundirs

    return {
        cell.name: {
            k: v for k, v in (rundirs.read_summary(cell.path) or {}).items() if k not in VOLATILE
        }
        for cell in rundirs.list_cells(root)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    a = parser.parse_args()

    runs: dict[int, list[dict]] = {1: [], 2: []}
    same = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            roots = {}
            for parallel in order:
                roots[parallel] = pathlib.Path(tmp) / f"r{r}-p{parallel}"
                result = sweep(roots[parallel], parallel, a.steps)
                runs[parallel].append(result)
                print(
                    f"repeat {r} parallel={parallel}: wall {result['wall']:.1f} s, cpu "
                    f"{result['cpu']:.1f} s, load {result['load'][0]:.1f} -> "
                    f"{result['load'][1]:.1f}",
                    flush=True,
                )
            same.append(figures(roots[1]) == figures(roots[2]) and len(figures(roots[1])) == 4)

    wall = {p: np.array([x["wall"] for x in runs[p]]) for p in runs}
    cpu = {p: np.array([x["cpu"] for x in runs[p]]) for p in runs}
    loads = [x["load"][i] for p in runs for x in runs[p] for i in (0, 1)]
    ratio = np.median(wall[2]) / np.median(wall[1])
    per_repeat = wall[2] / wall[1]
    body = "\n".join(
        [
            f"4-cell theory grid (`configs/qk_frozen.py`, {a.steps} steps, model.kernel x "
            f"train.trainable), `python -m experiments.sweep` in a fresh process per run, "
            f"{a.repeats} interleaved repeats, {os.cpu_count()} cores; "
            "`python benchmarks/sweep.py`.",
            "",
            "| | serial | `--parallel=2` |",
            "|---|---|---|",
            f"| wall time, median (s) | {np.median(wall[1]):.1f} | {np.median(wall[2]):.1f} |",
            f"| wall time, runs (s) | {', '.join(f'{x:.1f}' for x in wall[1])} | "
            f"{', '.join(f'{x:.1f}' for x in wall[2])} |",
            f"| CPU time, median (s) | {np.median(cpu[1]):.1f} | {np.median(cpu[2]):.1f} |",
            "",
            f"Parallel / serial wall time: {ratio:.2f}x (ratio of medians; per repeat "
            f"{', '.join(f'{x:.2f}' for x in per_repeat)}; target <= 0.75x). "
            f"summary.json figures identical in {sum(same)}/{len(same)} repeats. "
            f"Load average (1 min) around the runs: {min(loads):.1f} to {max(loads):.1f}.",
        ]
    )
    print()
    print(body)


if __name__ == "__main__":
    main()
