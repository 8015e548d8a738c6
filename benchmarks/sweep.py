"""Sweep throughput: a 4-cell theory grid with ``--parallel=2`` against the serial sweep.

    python benchmarks/sweep.py --repeats=3      # prints the "sweep (cpu)" section of RESULTS.md
    python benchmarks/sweep.py --steps=300      # short cells: start-up and compiles dominate

The grid is ``configs/qk_frozen.py`` (W_V trained by full-batch GD), model.kernel x
train.trainable = 2 x 2 cells, ``--steps`` steps each. Every repeat runs both programs,
``python -m experiments.sweep ...`` in a fresh process into a fresh root, in alternating order
(the machine is shared: interleaving exposes both to the same load). Reported: median wall time
of each, the ratio of the medians and the per-repeat ratios (target <= 0.75), CPU time (user +
system of the sweep and every process below it, sampled from /proc), the load average around
each run, and whether every cell's summary.json figures (all but timings and the environment)
are the same in both.
"""

from __future__ import annotations

import argparse
import os
import pathlib
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
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cpu: dict[int, float] = {}  # pid -> its latest own user + system seconds
    while process.poll() is None:
        cpu.update(tree_cpu_seconds(process.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"sweep --parallel={parallel} failed:\n{stderr.decode()[-3000:]}")
    return {"wall": wall, "cpu": sum(cpu.values()), "load": (load_before, os.getloadavg()[0])}


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """Own user + system CPU seconds of ``root`` and every process below it, from /proc.

    Sampled, not taken from ``getrusage``: workers forked by a fork server are not children of
    the sweep, so their time never reaches its rusage. Each process's own time only (not its
    reaped children's), so nothing counts twice; what a process spends in its last sampling
    interval (0.1 s) is missed, alike in both modes."""
    parents, seconds = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry)] = int(fields[1])
        seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: seconds[pid] for pid in tree if pid in seconds}


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
    parser.add_argument("--steps", type=int, default=3000, help="qk_frozen.py's own length")
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
