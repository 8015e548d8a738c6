"""FLOATER: cost of the position solve and its training-step overhead over sinusoidal.

1. The solve alone at the reference size (d = 512, 6 layers, q/k/v-bias form: a [6, 3, 512]
   state, 255 positions), forward and forward + backward (``jax.value_and_grad`` of a random
   projection of every position), float32: fixed-step classic RK4 at ``dt / 5`` (dt = 0.01)
   two ways, the library's ``lax.scan`` with a ``jax.checkpoint`` per position and diffrax's
   generic explicit-RK stage loop with the same RK4 as a Butcher tableau (``floater.RK4``,
   ``SaveAt(t0=True, steps=True)``, ``RecursiveCheckpointAdjoint`` with a checkpoint per step),
   and adaptive Tsit5 at rtol 1e-3 (atol 1e-6); the difference between the two RK4s, the
   relative error between RK4 and Tsit5, and of each against a tight Tsit5 solve (rtol 1e-7).
2. A full jitted training step (``value_and_grad`` + optax Adam update) of
   ``models.EncoderClassifier`` at the LRA text size (batch 32, length 1000, 2 layers, embed
   64, MLP 128, 2 heads), sinusoidal vs FLOATER (q/k/v bias, RK4 dt/5; and Tsit5), re-solving
   at every step (no ``update_every`` caching); a fourth row passes positions solved once
   (the q/k/v-bias injection alone, i.e. a step between re-solves with ``update_every > 1``).
   At length 1000 the RK4 solve takes 999 * 5 = 4995 RK4 steps, so ``max_steps`` is raised
   above the default 4096. Target: the FLOATER step within 15% of the sinusoidal one on CPU.

Every measurement compiles and warms up first; then the variants of a part are timed
interleaved (round robin, ``--repeats`` rounds), so load from other processes hits them alike.
Wall seconds (minimum and median) and process CPU seconds (median, summed over threads) are
reported: on a shared machine the CPU time is the steadier figure. Results go to
benchmarks/RESULTS.md, section ``floater (<platform>)``.

    python -m benchmarks.floater                 # CPU: several minutes
    python -m benchmarks.floater --repeats 2 --skip-solve --no-record
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import diffrax
import jax
import jax.numpy as jnp
import optax

from attn_dynamics import floater, models, position
from benchmarks._results import record

TARGET = 0.15  # FLOATER step overhead over sinusoidal, at most (CPU)
CACHED = "floater, positions cached (no solve)"


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one blocking call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
    return {
        "min": min(walls),
        "median": statistics.median(walls),
        "cpu": statistics.median(cpus),
    }


def compiled(fn, *args) -> tuple[object, float]:
    """``fn`` compiled for ``args`` and run once (warm-up), with its compile seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    jax.block_until_ready(fn(*args))
    return fn, compile_s


def round_robin(calls: dict[str, tuple], repeats: int) -> dict[str, dict[str, float]]:
    """``{name: (fn, args)}`` timed ``repeats`` times each, interleaved."""
    samples = {name: [] for name in calls}
    for _ in range(repeats):  # background load hits every variant alike
        for name, (fn, args) in calls.items():
            samples[name].append(timed(fn, *args))
    return {name: summary(s) for name, s in samples.items()}


# ------------------------------------------------------------------------------ the solve


def rk4_stage_loop(theta, p0, length: int, *, dt: float = 0.01, substeps: int = 5):
    """RK4 through diffrax's generic explicit-RK stage loop: ``floater.RK4`` (a Butcher tableau)
    stepping ``dt / substeps`` with every ``substeps``-th step on a position, saved with
    ``SaveAt(t0=True, steps=True)`` (no interpolation), a checkpoint per step."""
    rows = p0.reshape(-1, p0.shape[-1])
    steps = (length - 1) * substeps
    grid = jnp.arange(steps + 1, dtype=rows.dtype) * (dt / substeps)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(floater.mlp_field),
        floater.RK4(),
        t0=grid[0],
        t1=grid[-1],
        dt0=None,
        y0=rows,
        args=theta,
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=diffrax.StepTo(ts=grid),
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=steps),
        max_steps=steps,
    )
    return sol.ys[::substeps].reshape(length, *p0.shape)


def solve_benchmark(repeats: int, dim=512, layers=6, length=255) -> tuple[str, dict]:
    variants = {
        "rk4 dt/5, lax.scan (library)": lambda theta, p0: floater.solve(
            "mlp", theta, p0, length, solver="rk4", rk4_substeps=5
        ),
        "rk4 dt/5, diffrax stage loop": lambda theta, p0: rk4_stage_loop(theta, p0, length),
        "tsit5 rtol 1e-3": lambda theta, p0: floater.solve(
            "mlp", theta, p0, length, solver="tsit5", rtol=1e-3, atol=1e-6
        ),
    }
    module = position.make("floater", dim=dim, num_layers=layers, max_len=length)
    params = module.init(jax.random.key(0), 2)["params"]
    args = (params["vector_field"], params["initial_value"])
    cotangent = jax.random.normal(jax.random.key(1), (length, layers, 3, dim))
    calls, compile_s, solutions = {}, {}, {}
    for name, forward in variants.items():

        def loss(theta, p0, forward=forward):
            return jnp.sum(forward(theta, p0) * cotangent)

        for part, fn in (("fwd", forward), ("fwd+bwd", jax.value_and_grad(loss, (0, 1)))):
            calls[name, part], compile_s[name, part] = compiled(jax.jit(fn), *args)
            print(f"solve {name} {part}: compiled in {compile_s[name, part]:.1f}s", flush=True)
        solutions[name] = calls[name, "fwd"](*args)
    calls = {key: (fn, args) for key, fn in calls.items()}
    stats = round_robin(calls, repeats)
    rows, figures = [], {}
    for name in variants:
        fwd, both = stats[name, "fwd"], stats[name, "fwd+bwd"]
        figures[name] = {"forward": fwd, "forward+backward": both}
        rows.append(
            f"| {name} | {fwd['median']:.3f} | {fwd['cpu']:.3f} | {both['min']:.3f} | "
            f"{both['median']:.3f} | {both['cpu']:.3f} | {compile_s[name, 'fwd+bwd']:.0f} |"
        )
        print(f"solve {name}: forward {fwd}, forward+backward {both}", flush=True)
    tight = floater.solve("mlp", *args, length, solver="tsit5", rtol=1e-7, atol=1e-9)

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    scan, stage_loop, tsit5 = solutions.values()
    errors = {
        "max abs scan - stage loop": float(jnp.max(jnp.abs(scan - stage_loop))),
        "rk4 vs tsit5": rel(tsit5, scan),
        "rk4 vs tight": rel(scan, tight),
        "tsit5 vs tight": rel(tsit5, tight),
        "max abs rk4 - tsit5": float(jnp.max(jnp.abs(scan - tsit5))),
        "max abs position": float(jnp.max(jnp.abs(scan))),
    }
    print(f"solve errors: {errors}", flush=True)
    body = "\n".join(
        [
            f"Position solve alone: d = {dim}, {layers} layers, q/k/v-bias form (state "
            f"[{layers}, 3, {dim}]), {length} positions, dt = 0.01, h with "
            f"{floater.num_params(args[0]):,} parameters; float32. Seconds per call, "
            f"{repeats} round-robin repeats; compile seconds of forward + backward.",
            "",
            "| solver | fwd median | fwd cpu | fwd+bwd min | fwd+bwd median | fwd+bwd cpu | "
            "compile |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"The two RK4s agree to {errors['max abs scan - stage loop']:.1e} (max abs, float32 "
            f"rounding). Relative error (Frobenius) between the RK4 and Tsit5 solutions: "
            f"{errors['rk4 vs tsit5']:.2e} (max abs {errors['max abs rk4 - tsit5']:.2e}; "
            f"positions reach {errors['max abs position']:.2f}). Against Tsit5 at rtol 1e-7: "
            f"RK4 {errors['rk4 vs tight']:.2e}, Tsit5 rtol 1e-3 {errors['tsit5 vs tight']:.2e}.",
        ]
    )
    return body, {"times": figures, "errors": errors}


# ------------------------------------------------------------------------------ train step


def step_benchmark(repeats: int, batch=32, length=1000) -> tuple[str, dict]:
    floater_base = dict(injection="qkv_bias", max_steps=8192)
    rk4 = dict(floater_base, solver="rk4", rk4_substeps=5)
    variants = {
        "sinusoidal": ("sinusoidal", None),
        "floater rk4 dt/5": ("floater", rk4),
        "floater tsit5 rtol 1e-3": ("floater", dict(floater_base, solver="tsit5")),
        # The q/k/v-bias injection alone: positions solved once and passed in (what a step
        # between re-solves costs with update_every > 1).
        CACHED: ("floater", rk4),
    }
    x = jax.random.randint(jax.random.key(1), (batch, length), 1, 257)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 2)
    optimizer = optax.adam(1e-3)
    calls = {}
    for name, (pos, options) in variants.items():
        model = models.EncoderClassifier(
            num_classes=2,
            vocab_size=257,
            num_layers=2,
            embed_dim=64,
            mlp_dim=128,
            num_heads=2,
            position=pos,
            position_options=options,
            max_len=length,
        )
        params = jax.jit(model.init)(jax.random.key(0), x[:, :8])
        opt_state = optimizer.init(params)

        terms = floater.cached_terms(model, params, length) if name == CACHED else None

        def train_step(params, opt_state, x, y, model=model, terms=terms):
            def loss(params):
                logits = model.apply(params, x, position_terms=terms)
                return models.classification_loss(logits, y)

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        args = (params, opt_state, x, y)
        step, compile_s = compiled(jax.jit(train_step), *args)
        calls[name] = (step, args)
        print(f"step {name}: compiled in {compile_s:.1f}s", flush=True)
    # The solve alone at this size (forward + backward): what the overhead is made of, for the
    # library's RK4, the same RK4 through diffrax's stage loop, and Tsit5.
    floater_params = position.make("floater", dim=64, num_layers=2, max_len=length).init(
        jax.random.key(0), 2
    )["params"]
    solve_args = (floater_params["vector_field"], floater_params["initial_value"])
    solves = {
        "rk4 dt/5, lax.scan (library)": lambda *a: floater.solve(
            "mlp", *a, length, solver="rk4", rk4_substeps=5, max_steps=8192
        ),
        "rk4 dt/5, diffrax stage loop": lambda *a: rk4_stage_loop(*a, length),
        "tsit5 rtol 1e-3": lambda *a: floater.solve(
            "mlp", *a, length, solver="tsit5", max_steps=8192
        ),
    }
    for name, forward in solves.items():

        def loss(theta, p0, forward=forward):
            return jnp.sum(jnp.sin(forward(theta, p0)))

        fn, compile_s = compiled(jax.jit(jax.value_and_grad(loss, (0, 1))), *solve_args)
        calls["solve: " + name] = (fn, solve_args)
        print(f"solve at step size, {name}: compiled in {compile_s:.1f}s", flush=True)
    stats = round_robin(calls, repeats)
    base = stats["sinusoidal"]
    rows, solve_rows = [], []
    for name, s in stats.items():
        over_median, over_cpu = s["median"] / base["median"] - 1, s["cpu"] / base["cpu"] - 1
        print(f"{name}: {s}", flush=True)
        if name.startswith("solve: "):
            solve_rows.append(
                f"| {name[len('solve: ') :]} | {s['median']:.3f} | {s['cpu']:.3f} | "
                f"{100 * s['median'] / base['median']:.1f}% | {100 * s['cpu'] / base['cpu']:.1f}% |"
            )
            continue
        s.update(overhead_median=over_median, overhead_cpu=over_cpu)
        rows.append(
            f"| {name} | {s['min']:.3f} | {s['median']:.3f} | {s['cpu']:.3f} | "
            f"{100 * over_median:+.1f}% | {100 * over_cpu:+.1f}% |"
        )
    rk4_step = stats["floater rk4 dt/5"]
    verdict = max(rk4_step["overhead_median"], rk4_step["overhead_cpu"])
    body = "\n".join(
        [
            f"Full training step (jit of value_and_grad + Adam update), EncoderClassifier (the "
            f"LRA text size is batch 32, length 1000): batch {batch}, length {length}, 2 layers, "
            f"embed 64, MLP 128, 2 "
            f"heads; FLOATER in the q/k/v-bias form, re-solved every step (no update_every), "
            f"max_steps 8192 ({length - 1} x 5 = {(length - 1) * 5} RK4 steps). {repeats} "
            "round-robin repeats; seconds per step; overhead vs sinusoidal.",
            "",
            "| encoding | min | median | cpu | overhead (median) | overhead (cpu) |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "The solve alone at this size (forward + backward, timed in the same rounds), as a "
            "share of the sinusoidal step:",
            "",
            "| solve | median | cpu | share (median) | share (cpu) |",
            "|---|---:|---:|---:|---:|",
            *solve_rows,
            "",
            f"Target: RK4 step overhead <= {100 * TARGET:.0f}% on CPU: "
            f"{'met' if verdict <= TARGET else 'NOT met'} (worse of median wall and CPU time: "
            f"{100 * verdict:+.1f}%).",
        ]
    )
    return body, stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=1000, help="train-step sequence length")
    parser.add_argument("--solve-length", type=int, default=255, help="positions, part 1")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--skip-solve", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    parts, results = [], {}
    if not args.skip_solve:
        body, results["solve"] = solve_benchmark(args.repeats, length=args.solve_length)
        parts.append(body)
    if not args.skip_step:
        body, results["step"] = step_benchmark(args.repeats, batch=args.batch, length=args.length)
        parts.append(body)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = " ".join(["python -m benchmarks.floater", *(sys.argv[1:] if argv is None else argv)])
    parts.append(
        f"Command: `{command}`; load average at the end: {load:.1f} on {os.cpu_count()} cores."
    )
    text = "\n\n".join(parts)
    print(text)
    if not args.no_record:
        record(f"floater ({jax.default_backend()})", text)
    return results


if __name__ == "__main__":
    main()
