"""Forward + backward time of one attention layer, for every registered kernel and path.

The LRA size by default: batch 32, length 1024 (4096 on a GPU), model dim 64, 2 heads (head
dim 32). Each measurement is ``jax.jit(jax.grad(sum of output, argnums=(q, k, v)))``: compiled
and warmed up first, then the median of ``--repeats`` timed calls (``block_until_ready``).
Softmax-form kernels are timed on both the fused path (``jax.nn.dot_product_attention``) and
the explicit path (weights materialised); the other kernels on the explicit path only.

Targets: the Gaussian kernel within 1.25x of softmax (same path); on a GPU, the fused path
>= 3x faster than the explicit one. Results go to benchmarks/RESULTS.md, section
``attention (<platform>)``.

    python -m benchmarks.attention                      # CPU: about a minute or two
    python -m benchmarks.attention --length 512 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from attn_dynamics import attention, kernels
from benchmarks._results import record

GAUSSIAN_TARGET = 1.25  # gaussian time / softmax time, at most
FAST_TARGET = 3.0  # explicit time / fused time on GPU, at least


def time_fn(fn, args, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds of ``repeats`` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def make_step(kernel: str, implementation: str):
    def loss(q, k, v):
        out = attention.multi_head_attention(q, k, v, kernel=kernel, implementation=implementation)
        return jnp.sum(out.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main(argv: list[str] | None = None) -> dict[tuple[str, str], float]:
    backend = jax.default_backend()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096 if backend == "gpu" else 1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64, help="model dim = heads * head_dim")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--kernels", nargs="*", default=None, help="default: all registered")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)

    head_dim = args.dim // args.heads
    shape = (args.batch, args.length, args.heads, head_dim)
    dtype = jnp.dtype(args.dtype)
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, shape, dtype) for key in (kq, kk, kv))

    names = args.kernels or kernels.names()
    rows, times = [], {}
    for name in names:
        paths = ["fast", "explicit"] if kernels.lookup(name).softmax_form else ["explicit"]
        for path in paths:
            first, median = time_fn(make_step(name, path), (q, k, v), args.repeats)
            times[name, path] = median
            rows.append((name, path, median, first))
            print(f"{name:24s} {path:9s} {median * 1e3:10.1f} ms   (first call {first:.1f} s)")

    lines = [
        f"Forward + backward (grad of sum of output w.r.t. q, k, v) of one attention layer: "
        f"batch {args.batch}, length {args.length}, {args.heads} heads x head dim {head_dim}, "
        f"{args.dtype}; median of {args.repeats} after warm-up.",
        "",
        f"Command: `python -m benchmarks.attention --length {args.length} --batch {args.batch} "
        f"--repeats {args.repeats}"
        + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
        + "`",
        "",
        "| kernel | path | median ms | first call (compile) s |",
        "|---|---|---:|---:|",
        *(f"| {n} | {p} | {m * 1e3:.1f} | {f:.1f} |" for n, p, m, f in rows),
        "",
    ]
    for path in ("fast", "explicit"):
        if ("gaussian", path) in times and ("softmax", path) in times:
            ratio = times["gaussian", path] / times["softmax", path]
            met = "met" if ratio <= GAUSSIAN_TARGET else "NOT met"
            lines.append(
                f"- gaussian / softmax ({path}): {ratio:.2f}x (target <= {GAUSSIAN_TARGET}x: {met})"
            )
    if backend == "gpu":
        for name in names:
            if (name, "fast") in times:
                speedup = times[name, "explicit"] / times[name, "fast"]
                met = "met" if speedup >= FAST_TARGET else "NOT met"
                lines.append(
                    f"- {name} fast vs explicit: {speedup:.2f}x faster "
                    f"(target >= {FAST_TARGET}x: {met})"
                )
    summary = "\n".join(lines)
    print()
    print(summary)
    if not args.no_record:
        record(f"attention ({backend})", summary)
    return times


if __name__ == "__main__":
    main()
