"""Input-pipeline throughput vs what a training step of the same config consumes.

For every pipeline: batches per second of ``ds.train_batch(step)`` (one thread, no prefetch,
host NumPy arrays, distinct steps), and the time of one training step of the model at that
config's size, measured here as ``jax.jit(jax.grad(loss))`` of ``models.EncoderClassifier``
(2 layers, embedding 64, MLP 128, 2 heads; the theory model for synthetic regression) on the
same batch on the default JAX device. ``ratio`` = step time / batch time: how many times
faster the data comes than the step eats it (target >= 10).

imdb_bytes and image_seq read tiny local ArrayRecord copies built by
``attn_dynamics.data.testing`` (same readers and decoding as the real data; real IMDb reviews
average ~1.3 kB vs ~0.8 kB here).

    python benchmarks/data.py            # prints the table and records it in RESULTS.md
    python benchmarks/data.py --quick    # fewer repetitions, no recording
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from attn_dynamics import data, models  # noqa: E402
from attn_dynamics.data import testing  # noqa: E402


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


def time_batches(ds, reps: int) -> float:
    ds.train_batch(0)  # warm caches (stamps, permutations, file handles)
    t = time.perf_counter()
    for step in range(1, reps + 1):
        ds.train_batch(step)
    return (time.perf_counter() - t) / reps


def make_step(config, info):
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
    batch = ds.train_batch(0)
    init, grad = make_step(config, ds.info)
    params = init(batch)
    batch = jax.device_put(batch)
    jax.block_until_ready(grad(params, batch))  # compile
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(grad(params, batch))
    return (time.perf_counter() - t) / reps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no recording")
    args = parser.parse_args(argv)
    batch_reps, step_reps = (5, 1) if args.quick else (20, 2)
    rows = []
    with tempfile.TemporaryDirectory() as tiny_dir:
        for name in ("imdb_reviews", "cifar10"):
            testing.build_tiny_tfds(name, tiny_dir, num_train=512, num_test=64)
        for label, module, arg, overrides in pipelines(tiny_dir):
            config = importlib.import_module(f"configs.{module}").get_config(arg)
            for key, value in overrides.items():
                config.data[key] = value
            ds = data.get_dataset(config.data)
            t_batch = time_batches(ds, batch_reps)
            t_step = time_step(config, ds, step_reps)
            b = ds.train_batch_size
            shape = "x".join(str(s) for s in np.shape(ds.train_batch(0)["inputs"]))
            rows.append((label, shape, b / t_batch, 1 / t_batch, t_batch, t_step, t_step / t_batch))
            print(
                f"{label:50s} [{shape}] {b / t_batch:10.0f} ex/s {1 / t_batch:9.1f} batch/s "
                f"batch {t_batch * 1e3:8.2f} ms  step {t_step * 1e3:9.2f} ms  "
                f"ratio {t_step / t_batch:7.1f}",
                flush=True,
            )
    lines = [
        "Command: `python benchmarks/data.py`. One thread, no prefetch; the step is "
        "`jax.jit(jax.grad(loss))` of the config's model on the default device "
        f"({jax.devices()[0].platform}). Ratio = step time / batch time (target >= 10). "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a "
        "shared machine inflates both times alike).",
        "",
        "| pipeline | batch | examples/s | batches/s | batch ms | train step ms | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, shape, eps, bps, tb, ts, ratio in rows:
        lines.append(
            f"| {label} | {shape} | {eps:,.0f} | {bps:,.1f} | {tb * 1e3:.2f} | {ts * 1e3:.1f} "
            f"| {ratio:,.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        from benchmarks._results import record

        record(f"data ({jax.devices()[0].platform})", table)


if __name__ == "__main__":
    main()
