"""The accelerator check, one command on whatever backend JAX finds (CPU, GPU or TPU).

    python -m benchmarks.accelerator             # the full check
    python -m benchmarks.accelerator --quick     # small sizes (CPU, a first look)

It runs, each piece guarded (a piece that cannot run says "skipped: why"; one that breaks says
"failed: why", and the others still run):

1. the device-relevant tests: tests/test_distributed.py and tests/test_layouts.py, and the
   8-device test of tests/test_runner.py (``-k eight``);
2. the main job, ``python -m experiments.run --config=configs/qk_frozen.py``: wall time;
3. the encoder's training step (configs/order_task.py) in float32 and, where the config has
   ``model.dtype``, bfloat16; on GPU through both attention paths (``implementation='fast'``:
   XLA's fused op, cuDNN flash attention for 16-bit inputs; ``'explicit'``: XLA einsums), and
   whether cuDNN is in the compiled program;
4. the FLOATER position solve (benchmarks/floater.py's ``solve_benchmark``);
5. seeds scaling: the theory step with 16 seeds vs 1 seed.

and records them in benchmarks/RESULTS.md under "accelerator: <backend> (<device kind>)",
replacing only that section.
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
import traceback
from collections.abc import Callable

import jax

from benchmarks.scaling import Stepper, encoder_config, theory_config, time_steps

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Skipped(Exception):
    """A piece that cannot run here (a missing feature or device), with the reason."""


def guarded(name: str, piece: Callable[[], list[str]]) -> list[str]:
    """The piece's table rows, or one row saying why it was skipped or failed."""
    print(f"-- {name}", flush=True)
    try:
        rows = piece()
    except Skipped as e:
        rows = [f"| {name} | skipped: {e} |"]
    except Exception as e:  # noqa: BLE001 -- one broken piece must not hide the others
        traceback.print_exc()
        rows = [f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} |"]
    for row in rows:
        print(row, flush=True)
    return rows


# ------------------------------------------------------------------------------ the pieces


TEST_SUITES = (
    ("tests: multi-host and layouts", ["tests/test_distributed.py", "tests/test_layouts.py"]),
    ("tests: 8 simulated devices", ["tests/test_runner.py", "-k", "eight"]),
)


def tests(name: str, suite: list[str]) -> list[str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *suite, "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    verdict = "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    return [f"| {name} | {verdict}: {last} ({time.perf_counter() - start:.0f} s wall) |"]


def main_job(num_steps: int | None) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if num_steps is None else [f"--config.train.num_steps={num_steps}"]
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.run", "--config=configs/qk_frozen.py",
             f"--workdir={tmp}", "--config.train.progress_bar=False", *extra],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        s = json.loads((pathlib.Path(tmp) / "summary.json").read_text())
    seed = s["seeds"][0]
    steps = s["final_step"]
    return [
        f"| main job (qk_frozen, {steps} GD steps): wall, fresh process | {wall:.1f} s |",
        f"| main job: compilation / training loop (summary.json) | {s['compile_seconds']:.2f} s "
        f"/ {s['wall_seconds'] - s['compile_seconds']:.2f} s, status {s['status']}, mesh "
        f"{s['mesh']} |",
        f"| main job: final / initial loss | {seed['relative_final_loss']:.2e} |",
    ]


def _has_dtype() -> bool:
    from experiments import defaults

    return "dtype" in defaults.base_config().model


def encoder(batch: int, length: int, embed: int, num_steps: int) -> list[str]:
    from attn_dynamics.attention import IMPLEMENTATIONS

    backend = jax.default_backend()
    dtypes = ["float32"] if not _has_dtype() else ["float32", "bfloat16"]
    paths = ["fast", "explicit"] if backend == "gpu" else ["auto"]
    paths = [p for p in paths if p in IMPLEMENTATIONS]
    rows = []
    if not _has_dtype():
        rows.append("| encoder step, bfloat16 | skipped: experiments/defaults.py has no "
                    "config.model.dtype |")  # fmt: skip
    for dtype in dtypes:
        for path in paths:
            config = encoder_config(batch, length, dtype=dtype if _has_dtype() else None,
                                    implementation=path)  # fmt: skip
            config.model.embed_dim, config.model.mlp_dim = embed, 2 * embed
            r = time_steps(config, num_steps)
            cudnn = ", cuDNN attention in the program" if r["cudnn_attention"] else ""
            rows.append(
                f"| encoder step, {dtype}, implementation={path} (batch {batch}, length "
                f"{length}, embed {embed}) | {r['step_wall_s'] * 1e3:.2f} ms wall, "
                f"{r['step_cpu_s'] * 1e3:.2f} ms CPU per step (median of {num_steps}); compile "
                f"{r['compile_s']:.1f} s; mesh {r['mesh']}{cudnn} |"
            )
    return rows


def floater_solve(repeats: int, dim: int, layers: int, length: int) -> list[str]:
    try:
        from benchmarks.floater import solve_benchmark
    except ImportError as e:
        raise Skipped(f"benchmarks.floater is not importable ({e})") from None
    _, figures = solve_benchmark(repeats, dim=dim, layers=layers, length=length)
    rows = []
    for name, parts in figures["times"].items():
        both = parts["forward+backward"]
        rows.append(
            f"| FLOATER solve, {name} (d={dim}, {layers} layers, {length} positions), "
            f"forward+backward | {both['median'] * 1e3:.1f} ms wall median, "
            f"{both['cpu'] * 1e3:.1f} ms CPU |"
        )
    if "rk4 vs tsit5" in figures.get("errors", {}):
        rows.append(f"| FLOATER: RK4 vs Tsit5 relative error | "
                    f"{figures['errors']['rk4 vs tsit5']:.2e} |")  # fmt: skip
    return rows


def seeds_scaling(num_steps: int) -> list[str]:
    """1 and 16 seeds of the theory step, their steps interleaved (load hits both alike)."""
    steppers = {n: Stepper(theory_config(n)) for n in (1, 16)}
    try:
        samples = {n: [] for n in steppers}
        for s in steppers.values():
            s.step()  # one-off costs
        for _ in range(num_steps):
            for n, s in steppers.items():
                samples[n].append(s.step())
        one, many = (steppers[n].figures(samples[n]) for n in (1, 16))
    finally:
        for s in steppers.values():
            s.close()
    ms = lambda r, k: f"{r[k] * 1e3:.3f}"
    return [
        f"| theory step (qkv_trained), 1 seed / 16 seeds, interleaved | "
        f"{ms(one, 'step_wall_s')} / {ms(many, 'step_wall_s')} ms wall, {ms(one, 'step_cpu_s')} "
        f"/ {ms(many, 'step_cpu_s')} ms CPU per step (median of {num_steps}); meshes "
        f"{one['mesh']} / {many['mesh']} |",
        f"| 16 seeds / 1 seed, time per step | {many['step_wall_s'] / one['step_wall_s']:.2f}x "
        f"wall, {many['step_cpu_s'] / one['step_cpu_s']:.2f}x CPU |",
    ]


# ------------------------------------------------------------------------------ driver


def section_name() -> str:
    return f"accelerator: {jax.default_backend()} ({jax.devices()[0].device_kind})"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a short main job")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest suites")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    q = args.quick
    rows = []
    for name, suite in TEST_SUITES:
        if args.no_tests:
            rows.append(f"| {name} | skipped: --no-tests |")
        else:
            rows += guarded(name, lambda n=name, s=suite: tests(n, s))
    rows += guarded("main job", lambda: main_job(300 if q else None))
    rows += guarded("encoder step", lambda: encoder(32, 32 if q else 1024, 16 if q else 64,
                                                    10 if q else 20))  # fmt: skip
    rows += guarded("FLOATER solve", lambda: floater_solve(3 if q else 5, *(
        (32, 2, 31) if q else (512, 6, 255))))  # fmt: skip
    rows += guarded("seeds scaling", lambda: seeds_scaling(50 if q else 200))
    command = " ".join(["python -m benchmarks.accelerator", *(sys.argv[1:] if argv is None
                                                               else argv)])  # fmt: skip
    body = "\n".join(
        [
            f"Backend {jax.default_backend()}, {jax.device_count()} device(s) "
            f"({jax.devices()[0].device_kind}), {jax.process_count()} process(es).",
            "",
            "| check | result |",
            "|---|---|",
            *rows,
            "",
            f"Command: `{command}`; load average {load_start:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores.",
        ]
    )
    print(body)
    if not args.no_record:
        from benchmarks._results import record

        record(section_name(), body)
    return body


if __name__ == "__main__":
    main()
