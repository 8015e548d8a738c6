"""Scaling over devices: the training step of a 16-seed theory run and of the encoder on 1, 2, 4
and 8 simulated CPU devices (``--xla_force_host_platform_device_count``).

    python -m benchmarks.scaling                    # records the "scaling" section
    python -m benchmarks.scaling --repeats 1 --theory-steps 50 --encoder-steps 5 --no-record

Each device count runs in its own process (the flag must be set before JAX starts), rounds
interleave the device counts, and the table gives medians over rounds. Per process: the mesh
``experiments.train.prepare`` chose, the median wall and CPU time of the compiled step after
compilation, and bytes per device: the parameters (trained and frozen) and optimiser state held
by device 0 (``addressable_shards``) and XLA's temporary buffers for one step
(``memory_analysis()``). Simulated devices share the same CPU cores, so these figures show the
partitioning works (the state per device shrinks with the seed axis, the step still runs);
they are not accelerator speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE_COUNTS = (1, 2, 4, 8)
RESULT_PREFIX = "scaling-result: "


# ------------------------------------------------------------------------------ one process


def theory_config(num_seeds: int = 16):
    """The theory setting with every matrix trained (configs/qkv_trained.py), ``num_seeds``."""
    from configs import qkv_trained

    c = qkv_trained.get_config()
    c.seeds = tuple(range(num_seeds))
    c.train.progress_bar = False
    return c


def encoder_config(batch: int = 32, length: int = 32, dtype: str | None = None,
                   implementation: str | None = None):  # fmt: skip
    """The order task's encoder at a small size (configs/order_task.py:smoke), one seed."""
    from configs import order_task

    c = order_task.get_config("smoke")
    c.data.batch_size = c.data.eval_batch_size = batch
    c.data.min_len, c.data.train_len = max(2, length // 2), length
    c.data.eval_lengths = (length,)
    c.model.max_len = length
    c.seeds = (0,)
    if dtype is not None:
        c.model.dtype = dtype
    if implementation is not None:
        c.model.implementation = implementation
    return c


def _bytes_on(tree, device) -> int:
    """Bytes of ``tree``'s arrays that live on ``device``."""
    import jax

    return sum(
        shard.data.nbytes
        for leaf in jax.tree_util.tree_leaves(tree)
        for shard in getattr(leaf, "addressable_shards", ())
        if shard.device == device
    )


class Stepper:
    """A run's compiled training step (through the library: ``prepare``, ``initial_state``,
    ``make_train_step``), advanced one timed step per call."""

    def __init__(self, config):
        import jax
        import numpy as np

        from experiments import steps, train

        self.config, self.setup = config, train.prepare(config)
        self.state, self.frozen, self.trainable0 = train.initial_state(self.setup)
        loss_fn = steps.make_loss(self.setup.model, self.setup.ds.info["task"])
        step = steps.make_train_step(loss_fn, self.setup.tx, config.train.loss_threshold)
        self.baseline = np.full((len(config.seeds),), np.nan, np.float32)  # criterion off
        args = (self.state, self.frozen, self.trainable0, self.setup.first_batch,
                np.asarray(False), self.baseline)  # fmt: skip
        t0 = time.perf_counter()
        self.compiled = jax.jit(step, donate_argnums=0).lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        self.done = 0

    def step(self) -> tuple[float, float]:
        """One step (the batch fetched untimed); its (wall, process CPU) seconds."""
        import jax
        import numpy as np

        ds = self.setup.ds
        batch = self.setup.first_batch if self.done == 0 else ds.train_batch(self.done)
        w0, c0 = time.perf_counter(), time.process_time()
        self.state, _ = self.compiled(
            self.state, self.frozen, self.trainable0, batch, np.asarray(False), self.baseline
        )
        jax.block_until_ready(self.state)
        self.done += 1
        return time.perf_counter() - w0, time.process_time() - c0

    def figures(self, samples: list[tuple[float, float]]) -> dict:
        import jax
        import numpy as np

        from experiments import train

        memory = self.compiled.memory_analysis()
        hlo = (self.compiled.as_text() or "").lower()
        device = self.setup.mesh.devices.flat[0]
        state = (self.state.trainable, self.state.opt_state, self.frozen)
        return {
            "mesh": dict(self.setup.mesh.shape),
            "devices": jax.device_count(),
            "compile_s": self.compile_s,
            "step_wall_s": statistics.median(w for w, _ in samples),
            "step_cpu_s": statistics.median(c for _, c in samples),
            "state_bytes_per_device": _bytes_on(state, device),
            "temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
            "cudnn_attention": "cudnn" in hlo and "fmha" in hlo,
            "final_loss": float(np.mean(train.gather(self.state.outcome["last_loss"]))),
        }

    def close(self) -> None:
        if hasattr(self.setup.ds, "close"):
            self.setup.ds.close()


def time_steps(config, num_steps: int) -> dict:
    """Compile the run's step and time ``num_steps`` calls after a first, dropped one (it pays
    one-off costs): medians of wall and process CPU seconds per step, bytes per device."""
    stepper = Stepper(config)
    try:
        stepper.step()
        return stepper.figures([stepper.step() for _ in range(num_steps)])
    finally:
        stepper.close()


def worker(theory_steps: int, encoder_steps: int) -> None:
    out = {
        "theory": time_steps(theory_config(), theory_steps),
        "encoder": time_steps(encoder_config(), encoder_steps),
    }
    print(RESULT_PREFIX + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ the driver


def run_on(devices: int, theory_steps: int, encoder_steps: int) -> dict:
    """One worker process on ``devices`` simulated CPU devices; its figures."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip(),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--worker",
         f"--theory-steps={theory_steps}", f"--encoder-steps={encoder_steps}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{devices} devices: worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def render(results: dict, args, load_start, load_end) -> str:
    rows = []
    for model, label in (
        ("theory", "theory, 16 seeds (qkv_trained, n=4, N=4, d=64, full batch)"),
        ("encoder", "encoder, 1 seed (order_task:smoke, batch 32, length 32)"),
    ):
        base = None
        for n in DEVICE_COUNTS:
            runs = [r[model] for r in results[n]]
            mesh = runs[0]["mesh"]
            wall, cpu = _median(runs, "step_wall_s"), _median(runs, "step_cpu_s")
            base = base or wall
            temp = runs[0]["temp_bytes_per_device"]
            rows.append(
                f"| {label} | {n} | {mesh['seeds']} x {mesh['data']} | {wall * 1e3:.2f} | "
                f"{cpu * 1e3:.2f} | {base / wall:.2f}x | {_median(runs, 'compile_s'):.1f} | "
                f"{runs[0]['state_bytes_per_device']:,} | "
                f"{'n/a' if temp is None else f'{temp:,}'} |"
            )
    return "\n".join(
        [
            "Training step on 1, 2, 4 and 8 *simulated* CPU devices "
            "(`--xla_force_host_platform_device_count`, one process per count, all sharing the "
            "same CPU cores): **CPU figures show the partitioning works; they are not "
            "accelerator speeds** (8 simulated devices have no more compute than 1).",
            "",
            f"Medians over {args.repeats} interleaved rounds; per round the median of "
            f"{args.theory_steps} (theory) / {args.encoder_steps} (encoder) steps after "
            "compilation. Step CPU = process CPU time per step (all threads). State bytes = "
            "parameters (trained + frozen) and optimiser state held by one device "
            "(`addressable_shards` of device 0); temp bytes = XLA's temporary buffers of the "
            "compiled step per device (`memory_analysis()`).",
            "",
            "| run | devices | mesh seeds x data | step ms (wall) | step ms (CPU) | "
            "1-device wall / wall | compile s | state bytes / device | temp bytes / device |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Command: `python -m benchmarks.scaling --repeats {args.repeats} --theory-steps "
            f"{args.theory_steps} --encoder-steps {args.encoder_steps}`; load average "
            f"{load_start:.1f} at the start, {load_end:.1f} at the end, on {os.cpu_count()} "
            "cores (a shared machine: wall times scatter, CPU times less).",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--theory-steps", type=int, default=200)
    parser.add_argument("--encoder-steps", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("repeats", "theory_steps", "encoder_steps"):
        if getattr(args, name) < 1:
            parser.exit(2, f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1\n")
    if args.worker:
        worker(args.theory_steps, args.encoder_steps)
        return {}
    load_start = os.getloadavg()[0]
    results: dict[int, list[dict]] = {n: [] for n in DEVICE_COUNTS}
    for r in range(args.repeats):
        for n in DEVICE_COUNTS:
            results[n].append(run_on(n, args.theory_steps, args.encoder_steps))
            print(f"round {r + 1}, {n} device(s): {json.dumps(results[n][-1])}", flush=True)
    body = render(results, args, load_start, os.getloadavg()[0])
    print(body)
    if not args.no_record:
        from benchmarks._results import record

        record("scaling", body)
    return results


if __name__ == "__main__":
    main()
