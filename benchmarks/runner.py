"""Runner speed: the main job end to end, seeds in parallel, encoder steps per second.

    python benchmarks/runner.py            # records the "runner (<platform>)" section

Figures:
- wall time of the main job (`python -m experiments.run --config=configs/qk_frozen.py`, a fresh
  process: imports, compilation, 3000 GD steps, evaluation, plots) and its compilation time;
- 16 seeds vmapped vs 1 seed of the theory model (same config, same steps, in the same process,
  ``--repeats`` interleaved rounds; target: 16 seeds in at most 1.5x the time of one);
- training steps per second of the encoder at the LRA text size (batch 32, length 1000,
  2 layers, embedding 64, MLP 128, 2 heads), softmax and Gaussian kernels, and the compilation
  time of its training step (target: at most 5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import record  # noqa: E402
from configs import lra_text, qk_frozen  # noqa: E402
from experiments import train  # noqa: E402


def main_job(tmp: pathlib.Path) -> dict:
    workdir = tmp / "main_job"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "--config=configs/qk_frozen.py",
            f"--workdir={workdir}",
            "--config.train.progress_bar=False",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    summary = json.loads((workdir / "summary.json").read_text())
    seed = summary["seeds"][0]
    return {
        "wall": wall,
        "compile": summary["compile_seconds"],
        "relative_loss": seed["relative_final_loss"],
        "steps_to_threshold": seed["steps_to_threshold"],
    }


def train_seconds(config, workdir: pathlib.Path) -> tuple[float, float, float]:
    """(training-loop wall seconds excluding compilation, compilation seconds, CPU seconds of
    the whole call) of one run."""
    cpu = time.process_time()
    summary = train.train_and_evaluate(config, workdir)
    cpu = time.process_time() - cpu
    return summary["wall_seconds"] - summary["compile_seconds"], summary["compile_seconds"], cpu


def seeds_scaling(tmp: pathlib.Path, num_seeds: int, repeats: int) -> dict[int, list]:
    """Per seed count, one (loop s, compile s, CPU s) per round; rounds interleave the counts so
    that load from other processes hits both alike."""

    def config_of(seeds: int):
        config = qk_frozen.get_config()
        config.seeds = tuple(range(seeds))
        config.train.progress_bar = False
        config.train.checkpoint_every = config.train.num_steps
        return config

    out = {1: [], num_seeds: []}
    for seeds in out:
        train_seconds(config_of(seeds), tmp / f"warm_{seeds}")  # warm caches / imports
    for i in range(repeats):
        for seeds in out:
            out[seeds].append(train_seconds(config_of(seeds), tmp / f"seeds_{seeds}_{i}"))
    return out


def encoder_run(kernel: str, steps: int, tmp: pathlib.Path) -> tuple[float, float]:
    """(steps per second, compilation seconds) of the encoder at the LRA text size."""
    config = lra_text.get_config()
    config.data = _synthetic_text_data(config)
    config.model.kernel = kernel
    config.train.num_steps = steps
    config.train.log_every = steps
    config.train.checkpoint_every = steps
    config.train.progress_bar = False
    run_seconds, compile_seconds, _ = train_seconds(config, tmp / f"encoder_{kernel}")
    return steps / run_seconds, compile_seconds


def _synthetic_text_data(config):
    """Order-task tokens at the LRA text shape: the step's cost does not depend on the data."""
    from attn_dynamics import data

    d = data.default_config("order_lookback")
    d.train_len = d.min_len = 1000
    d.eval_lengths = (1000,)
    d.batch_size = d.eval_batch_size = 32
    d.eval_size = 32
    return d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--encoder-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the seeds comparison")
    args = parser.parse_args()
    platform = jax.default_backend()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        job = main_job(tmp)
        scaling = seeds_scaling(tmp, args.seeds, args.repeats)
        encoder = {k: encoder_run(k, args.encoder_steps, tmp) for k in ("softmax", "gaussian")}
    median = lambda runs, i: float(np.median([r[i] for r in runs]))
    loop = {n: median(runs, 0) for n, runs in scaling.items()}
    cpu = {n: median(runs, 2) for n, runs in scaling.items()}
    ratio = loop[args.seeds] / loop[1]
    rounds = lambda n: ", ".join(f"{r[0]:.2f}" for r in scaling[n])
    lines = [
        f"Command: `python benchmarks/runner.py --repeats={args.repeats}`",
        "",
        "| figure | value |",
        "|---|---|",
        f"| main job wall time (fresh process, 3000 GD steps; target <= 15 s) | "
        f"{job['wall']:.1f} s ({'met' if job['wall'] <= 15 else 'NOT met'}) |",
        f"| main job compilation | {job['compile']:.2f} s |",
        f"| main job final/initial loss | {job['relative_loss']:.2e} "
        f"(1e-3 reached at step {job['steps_to_threshold']}) |",
        f"| theory model, 1 seed, training loop, median (rounds) | {loop[1]:.2f} s "
        f"({rounds(1)}); CPU of the whole run {cpu[1]:.2f} s |",
        f"| theory model, {args.seeds} seeds vmapped, training loop, median (rounds) | "
        f"{loop[args.seeds]:.2f} s ({rounds(args.seeds)}); CPU of the whole run "
        f"{cpu[args.seeds]:.2f} s |",
        f"| {args.seeds} seeds / 1 seed, ratio of medians (target <= 1.5x) | {ratio:.2f}x "
        f"({'met' if ratio <= 1.5 else 'NOT met'}) |",
    ]
    for kernel, (sps, compile_s) in encoder.items():
        lines.append(f"| encoder at LRA text size, {kernel}: steps/s | {sps:.2f} |")
        lines.append(
            f"| encoder at LRA text size, {kernel}: compilation (target <= 5 s) | "
            f"{compile_s:.1f} s ({'met' if compile_s <= 5 else 'NOT met'}) |"
        )
    lines.append("")
    lines.append(
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other jobs on a shared machine inflate wall times)."
    )
    body = "\n".join(lines)
    print(body)
    record(f"runner ({platform})", body)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
