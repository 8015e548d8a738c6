"""Input-pipeline throughput vs what a training step of the same config consumes.

For every pipeline: the time of ``ds.train_batch(step)`` (one thread, no prefetch, host NumPy
arrays, distinct steps; median over steps of wall and CPU time), and the time of one training
step of the model at that config's size, measured here as ``jax.jit(jax.grad(loss))`` of
``models.EncoderClassifier`` (2 layers, embedding 64, MLP 128, 2 heads; the theory model for
synthetic regression) on the same batch on the default JAX device. ``ratio`` = step time /
batch wall time: how many times faster the data comes than the step eats it (target >= 10).

``--baseline=REV`` also times the data layer of git revision ``REV`` (its ``attn_dynamics``
and ``configs``, extracted with ``git archive``) on the same pipelines, in separate processes
interleaved with the current tree's, ``--rounds`` times, and reports both (medians over
rounds): a before/after comparison on a noisy shared machine.

imdb_bytes and image_seq read tiny local ArrayRecord copies built by
``attn_dynamics.data.testing`` (same readers and decoding as the real data; real IMDb reviews
average ~1.3 kB vs ~0.8 kB here).

``--pathfinder`` compares the two Pathfinder generators (``data.generator``) side by side
in one process: ``train_batch(step)`` of batch 32 at 16x16 contour 6 (``pathfinder_kernels:cpu``)
and at 32x32 contour 14 (the LRA task), fresh steps, the generators alternated in every round;
medians of wall and CPU (process) time, images/s and the speed-up, against the target of
10 ms per batch.

    python benchmarks/data.py                          # prints the table, records RESULTS.md
    python benchmarks/data.py --baseline=e236eb5       # before/after columns
    python benchmarks/data.py --quick                  # fewer repetitions, no recording
    python benchmarks/data.py --pathfinder             # the two Pathfinder generators
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def pipelines(tiny_dir: str):
    """(label, config module, arg, data overrides)."""
    return [
        ("synthetic_regression (qk_frozen, full batch)", "qk_frozen", None, {}),
        (
            "synthetic_regression (n=4096, d=64, minibatch 256)",
            "qk_frozen",
            None,
            {"num_samples": 4096, "batch_size": 256},
        ),
        ("order_lookback (order_task)", "order_task", None, {}),
        ("pathfinder generated 32x32, L=14", "pathfinder", None, {}),
        ("pathfinder generated 32x32, L=20", "pathfinder", None, {"contour_length": 20}),
        ("imdb_bytes (lra_text, tiny local)", "lra_text", None, {"data_dir": tiny_dir}),
        ("image_seq cifar10 (lra_image, tiny local)", "lra_image", None, {"data_dir": tiny_dir}),
    ]


def load_config(module: str, arg, overrides: dict):
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    for key, value in overrides.items():
        config.data[key] = value
    return config


def time_batches(ds, reps: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``ds.train_batch(step)`` over ``reps`` distinct steps."""
    import numpy as np

    ds.train_batch(0)  # warm caches (stamps, permutations, file handles)
    wall, cpu = [], []
    for step in range(1, reps + 1):
        t, c = time.perf_counter(), time.process_time()
        ds.train_batch(step)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def batch_times(repo: str, tiny_dir: str, reps: int) -> dict:
    """``{label: (wall, cpu)}`` with the data layer and configs of the tree at ``repo``."""
    sys.path.insert(0, repo)
    from attn_dynamics import data

    out = {}
    for label, module, arg, overrides in pipelines(tiny_dir):
        ds = data.get_dataset(load_config(module, arg, overrides).data)
        out[label] = time_batches(ds, reps)
        getattr(ds, "close", lambda: None)()
    return out


def batch_times_in(repo: pathlib.Path, tiny_dir: str, reps: int) -> dict:
    """:func:`batch_times` in a fresh process (so trees never share imported modules)."""
    cmd = [sys.executable, __file__, "--batch-times", str(repo), "--tiny", tiny_dir]
    cmd += ["--reps", str(reps)]
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"timing {repo} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_step(config, info):
    import jax

    from attn_dynamics import models

    m = config.model
    if info["task"] == "regression":
        model = models.TheoryModel(dim=info["dim"], out_dim=info["out_dim"], kernel=m.kernel)

        def loss(params, batch):
            return models.regression_loss(model.apply(params, batch["inputs"]), batch["targets"])

        def init(batch):
            return model.init(jax.random.key(0), batch["inputs"][:1])

    else:
        model = models.EncoderClassifier(
            num_classes=info["num_classes"],
            vocab_size=info["vocab_size"],
            num_layers=m.num_layers,
            embed_dim=m.embed_dim,
            mlp_dim=m.mlp_dim,
            num_heads=m.num_heads,
            kernel=m.kernel,
            max_len=max(m.max_len, info["seq_len"]),
        )

        def loss(params, batch):
            logits = model.apply(params, batch["inputs"], batch["valid"])
            return models.classification_loss(logits, batch["labels"])

        def init(batch):
            return model.init(jax.random.key(0), batch["inputs"][:1], batch["valid"][:1])

    return init, jax.jit(jax.grad(loss))


def time_step(config, ds, reps: int) -> float:
    import jax

    batch = ds.train_batch(0)
    init, grad = make_step(config, ds.info)
    params = init(batch)
    batch = jax.device_put(batch)
    jax.block_until_ready(grad(params, batch))  # compile
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(grad(params, batch))
    return (time.perf_counter() - t) / reps


def extract(rev: str, into: pathlib.Path) -> pathlib.Path:
    """The files of ``rev`` (``git archive``) under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def median_over_rounds(rounds: list[dict]) -> dict:
    import numpy as np

    return {k: tuple(np.median([r[k] for r in rounds], axis=0)) for k in rounds[0]}


PATHFINDER_TARGET_MS = 10.0  # per batch of 32 (issue 26)


def pathfinder_configs():
    """(label, data config) of the two sizes the generators are compared at, batch 32."""
    from configs import pathfinder, pathfinder_kernels

    small = pathfinder_kernels.get_config("cpu").data
    lra = pathfinder.get_config().data
    lra.batch_size = 32
    return [("16x16, contour 6 (pathfinder_kernels:cpu)", small), ("32x32, contour 14", lra)]


def time_generators(rounds: int, reps: int) -> dict:
    """``{(label, generator): (wall, cpu)}``: medians over ``rounds`` x ``reps`` fresh steps
    (no step timed twice), the generators alternated within every round."""
    import numpy as np

    from attn_dynamics import data

    out = {}
    for label, config in pathfinder_configs():
        datasets = {}
        for generator in ("reference", "vectorized"):
            config.generator = generator
            datasets[generator] = data.get_dataset(config)
            datasets[generator].train_batch(0)  # stamps, geometry
        times = {g: ([], []) for g in datasets}
        for r in range(rounds):
            for generator, ds in datasets.items():
                for step in range(1 + r * reps, 1 + (r + 1) * reps):
                    t, c = time.perf_counter(), time.process_time()
                    ds.train_batch(step)
                    times[generator][0].append(time.perf_counter() - t)
                    times[generator][1].append(time.process_time() - c)
        for generator, (wall, cpu) in times.items():
            out[label, generator] = (float(np.median(wall)), float(np.median(cpu)))
    return out


def pathfinder_main(args) -> None:
    rounds, reps = (1, 3) if args.quick else (args.rounds, args.reps)
    load = [os.getloadavg()[0]]
    times = time_generators(rounds, reps)
    load.append(os.getloadavg()[0])
    flag = f" --rounds={rounds} --reps={reps}" if (rounds, reps) != (3, 20) else ""
    lines = [
        f"Command: `python benchmarks/data.py --pathfinder{flag}`. `ds.train_batch(step)` "
        "(batch 32, one thread, no prefetch, fresh steps), both generators in one process, "
        f"alternated in each of {rounds} rounds of {reps} steps; medians over the "
        f"{rounds * reps} steps of each. Load average {min(load):.1f} to {max(load):.1f} on "
        f"{os.cpu_count()} cores (a loaded machine: wall times are inflated, CPU times less).",
        "",
        "| task | generator | ms per batch (wall / CPU) | images/s (CPU) | speed-up (CPU) "
        f"| target <= {PATHFINDER_TARGET_MS:.0f} ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    for label, _ in pathfinder_configs():
        ref_cpu = times[label, "reference"][1]
        for generator in ("reference", "vectorized"):
            wall, cpu = times[label, generator]
            met = "met" if cpu * 1e3 <= PATHFINDER_TARGET_MS else "not reached"
            lines.append(
                f"| {label} | {generator} | {wall * 1e3:.1f} / {cpu * 1e3:.1f} "
                f"| {32 / cpu:,.0f} | {ref_cpu / cpu:.1f}x | "
                f"{met if generator == 'vectorized' else ''} |"
            )
    table = "\n".join(lines)
    print(table)
    if not (args.quick or args.no_record):
        from benchmarks._results import record

        record("data: pathfinder generators (cpu)", table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no recording")
    parser.add_argument("--baseline", help="git revision whose data layer to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (baseline)")
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument("--batch-times", metavar="REPO", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=20, help="steps per round (--pathfinder)")
    parser.add_argument("--pathfinder", action="store_true", help="the Pathfinder generators")
    args = parser.parse_args(argv)
    if args.batch_times:  # the child process of batch_times_in
        print(json.dumps(batch_times(args.batch_times, args.tiny, args.reps)))
        return
    if args.pathfinder:
        sys.path.insert(0, str(REPO))
        pathfinder_main(args)
        return
    batch_reps, step_reps = (5, 1) if args.quick else (args.reps, 2)
    rounds = 1 if args.quick else args.rounds
    sys.path.insert(0, str(REPO))
    import jax

    from attn_dynamics import data
    from attn_dynamics.data import testing

    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = os.path.join(tmp, "tfds")
        for name in ("imdb_reviews", "cifar10"):
            testing.build_tiny_tfds(name, tiny_dir, num_train=512, num_test=64)
        trees = {"current": REPO}
        if args.baseline:
            trees = {"baseline": extract(args.baseline, pathlib.Path(tmp)), **trees}
        times: dict[str, list[dict]] = {name: [] for name in trees}
        load = [os.getloadavg()[0]]
        for _ in range(rounds):
            for name, tree in trees.items():
                times[name].append(batch_times_in(tree, tiny_dir, batch_reps))
                load.append(os.getloadavg()[0])
        batch = {name: median_over_rounds(t) for name, t in times.items()}
        rows = []
        for label, module, arg, overrides in pipelines(tiny_dir):
            config = load_config(module, arg, overrides)
            ds = data.get_dataset(config.data)
            t_step = time_step(config, ds, step_reps)
            shape = "x".join(str(s) for s in ds.train_batch(0)["inputs"].shape)
            rows.append((label, shape, {n: batch[n][label] for n in trees}, t_step))
            print(f"{label:50s} [{shape}] step {t_step * 1e3:9.1f} ms", flush=True)
    names = list(trees)
    flag = f" --baseline={args.baseline}" if args.baseline else ""
    before = f" (baseline {args.baseline} vs current)" if args.baseline else ""
    lines = [
        f"Command: `python benchmarks/data.py{flag}`. `train_batch(step)` in one thread, no "
        f"prefetch{before}: median over "
        f"{batch_reps} steps of wall / CPU ms per batch, median over {rounds} interleaved "
        "rounds. The step is `jax.jit(jax.grad(loss))` of the config's model on the default "
        f"device ({jax.devices()[0].platform}). Ratio = step time / current batch wall time "
        f"(target >= 10). Load average during the batch timings: {min(load):.1f} to "
        f"{max(load):.1f} on {os.cpu_count()} cores (a shared machine inflates wall times; "
        "CPU times are steadier).",
        "",
        "| pipeline | batch | "
        + " | ".join(f"{n} batch ms (wall / CPU)" for n in names)
        + " | current examples/s | train step ms | ratio |",
        "|---|---|" + "---:|" * (len(names) + 3),
    ]
    for label, shape, per_tree, t_step in rows:
        wall = per_tree["current"][0]
        cells = " | ".join(f"{w * 1e3:.3f} / {c * 1e3:.3f}" for w, c in per_tree.values())
        examples = int(shape.split("x")[0]) / wall
        lines.append(
            f"| {label} | {shape} | {cells} | {examples:,.0f} | {t_step * 1e3:.1f} "
            f"| {t_step / wall:,.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not (args.quick or args.no_record):
        from benchmarks._results import record

        record(f"data ({jax.devices()[0].platform})", table)


if __name__ == "__main__":
    main()
