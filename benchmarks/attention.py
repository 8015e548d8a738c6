"""Forward + backward time of one attention layer, for every registered kernel and path.

The LRA size by default: batch 32, length 1024 (4096 on a GPU), model dim 64, 2 heads (head
dim 32). Each measurement is ``jax.jit(jax.grad(sum of output, argnums=(q, k, v)))``: compiled
and warmed up first, then the median of ``--repeats`` timed calls (``block_until_ready``).
Softmax-form kernels are timed on the fused path (``jax.nn.dot_product_attention``), the
blockwise online-softmax path and the explicit path (weights materialised); the other kernels
on the explicit path only.

Targets: the Gaussian kernel within 1.25x of softmax (same path); on a GPU, the fused path
>= 3x faster than the explicit one. Results go to benchmarks/RESULTS.md, section
``attention (<platform>)``.

    python -m benchmarks.attention                      # CPU: about a minute or two
    python -m benchmarks.attention --length 512 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from attn_dynamics import attention, kernels
from benchmarks._results import record

GAUSSIAN_TARGET = 1.25  # gaussian time / softmax time, at most
FAST_TARGET = 3.0  # explicit time / fused time on GPU, at least


def compile_all(fns: dict, args) -> tuple[dict, dict, dict]:
    """Ahead-of-time compile every function: (compiled, compile seconds, GB accessed)."""
    compiled, seconds, gigabytes = {}, {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        compiled[name] = fn.lower(*args).compile()
        seconds[name] = time.perf_counter() - start
        cost = compiled[name].cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        gigabytes[name] = (cost or {}).get("bytes accessed", float("nan")) / 1e9
    return compiled, seconds, gigabytes


def time_all(fns: dict, args, repeats: int) -> tuple[dict, dict]:
    """Warm up every function, then time them in ``repeats`` interleaved rounds (so that load
    from other processes hits all of them alike). Returns per-name (median, minimum) seconds."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return median, {name: min(ts) for name, ts in times.items()}


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
    fns = {
        (name, path): make_step(name, path)
        for name in names
        for path in (
            ["fast", "blockwise", "explicit"] if kernels.lookup(name).softmax_form else ["explicit"]
        )
    }
    compiled, compile_s, gigabytes = compile_all(fns, (q, k, v))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times, best = time_all(compiled, (q, k, v), args.repeats)
    rows = [(*key, times[key], best[key], gigabytes[key], compile_s[key]) for key in fns]
    for name, path, median, minimum, gb, _ in rows:
        print(
            f"{name:24s} {path:9s} median {median * 1e3:9.1f} ms  min {minimum * 1e3:9.1f} ms"
            f"  {gb:6.2f} GB accessed"
        )

    lines = [
        f"Forward + backward (grad of sum of output w.r.t. q, k, v) of one attention layer: "
        f"batch {args.batch}, length {args.length}, {args.heads} heads x head dim {head_dim}, "
        f"{args.dtype}; median and minimum of {args.repeats} interleaved rounds after warm-up; "
        f"'GB' is XLA's cost analysis of bytes accessed (independent of machine load). "
        f"Load average at start: {load:.1f} on {os.cpu_count()} CPUs.",
        "",
        f"Command: `python -m benchmarks.attention --length {args.length} --batch {args.batch} "
        f"--repeats {args.repeats}"
        + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
        + "`",
        "",
        "| kernel | path | median ms | min ms | GB accessed | compile s |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {n} | {p} | {m * 1e3:.1f} | {b * 1e3:.1f} | {gb:.2f} | {c:.1f} |"
            for n, p, m, b, gb, c in rows
        ),
        "",
    ]
    for path in ("fast", "blockwise", "explicit"):
        if ("gaussian", path) in times and ("softmax", path) in times:
            ratio = times["gaussian", path] / times["softmax", path]
            best_ratio = best["gaussian", path] / best["softmax", path]
            met = "met" if ratio <= GAUSSIAN_TARGET else "NOT met"
            lines.append(
                f"- gaussian / softmax ({path}): {ratio:.2f}x median, {best_ratio:.2f}x min "
                f"(target <= {GAUSSIAN_TARGET}x: {met})"
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
