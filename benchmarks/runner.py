"""Runner speed: the main job end to end, seeds in parallel, encoder steps per second.

    python benchmarks/runner.py            # records the "runner (<platform>)" section

Figures:
- wall time of the main job (`python -m experiments.run --config=configs/qk_frozen.py`, a fresh
  process: imports, compilation, 3000 GD steps, evaluation, plots) and its compilation time;
- 16 seeds vmapped vs 1 seed of the theory model (same config, same steps; target: 16 seeds in
  at most 3x the time of one);
- training steps per second of the encoder at the LRA text size (batch 32, length 1000,
  2 layers, embedding 64, MLP 128, 2 heads), softmax and Gaussian kernels.
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


def train_seconds(config, workdir: pathlib.Path) -> tuple[float, float]:
    """(training-loop seconds excluding compilation, compilation seconds) of one run."""
    summary = train.train_and_evaluate(config, workdir)
    return summary["wall_seconds"] - summary["compile_seconds"], summary["compile_seconds"]


def seeds_scaling(tmp: pathlib.Path, num_seeds: int) -> dict:
    out = {}
    for seeds in (1, num_seeds):
        config = qk_frozen.get_config()
        config.seeds = tuple(range(seeds))
        config.train.progress_bar = False
        config.train.checkpoint_every = config.train.num_steps
        train_seconds(config, tmp / f"warm_{seeds}")  # warm caches / imports
        out[seeds] = train_seconds(config, tmp / f"seeds_{seeds}")
    return out


def encoder_steps_per_second(kernel: str, steps: int, tmp: pathlib.Path) -> float:
    config = lra_text.get_config()
    config.data = _synthetic_text_data(config)
    config.model.kernel = kernel
    config.train.num_steps = steps
    config.train.log_every = steps
    config.train.checkpoint_every = steps
    config.train.progress_bar = False
    run_seconds, _ = train_seconds(config, tmp / f"encoder_{kernel}")
    return steps / run_seconds


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
    args = parser.parse_args()
    platform = jax.default_backend()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        job = main_job(tmp)
        scaling = seeds_scaling(tmp, args.seeds)
        encoder = {
            k: encoder_steps_per_second(k, args.encoder_steps, tmp) for k in ("softmax", "gaussian")
        }
    ratio = scaling[args.seeds][0] / scaling[1][0]
    lines = [
        "Command: `python benchmarks/runner.py`",
        "",
        "| figure | value |",
        "|---|---|",
        f"| main job wall time (fresh process, 3000 GD steps) | {job['wall']:.1f} s |",
        f"| main job compilation | {job['compile']:.2f} s |",
        f"| main job final/initial loss | {job['relative_loss']:.2e} "
        f"(1e-3 reached at step {job['steps_to_threshold']}) |",
        f"| theory model, 1 seed, training loop | {scaling[1][0]:.2f} s |",
        f"| theory model, {args.seeds} seeds vmapped, training loop | "
        f"{scaling[args.seeds][0]:.2f} s |",
        f"| {args.seeds} seeds / 1 seed (target <= 3x) | {ratio:.2f}x "
        f"({'met' if ratio <= 3 else 'NOT met'}) |",
    ]
    for kernel, sps in encoder.items():
        lines.append(f"| encoder at LRA text size, {kernel}: steps/s | {sps:.2f} |")
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
