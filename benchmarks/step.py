"""One encoder training step, this project (jitted JAX) vs a plain PyTorch eager module.

The paper's encoder: 2 pre-LN layers, embedding 64, MLP 128, 2 heads, sinusoidal positions at
the input, mean pooling, a linear head; batch 32 of byte tokens, all valid (the key padding
mask is still applied, as in training); cross-entropy; one step = forward, backward and an Adam
update. The JAX step is ``jax.jit(value_and_grad(experiments.train.make_loss(...)) + optax.adam)``
on :class:`attn_dynamics.models.EncoderClassifier` with donated state, compiled with the XLA CPU
flags ``experiments.run`` starts with (``experiments/host.py``: remat barriers kept, and with
``--host-devices N`` the batch split over N CPU devices); compilation excluded.
PyTorch is ``torch.set_num_threads(2)``, eager, ``torch.optim.Adam``: ``eager`` writes attention
as matmul, softmax, matmul (the Gaussian as its softmax form with the key-norm bias); ``sdpa``
calls ``F.scaled_dot_product_attention`` (the Gaussian's bias as a float mask).

Every program runs in its own worker process (so peak resident memory is separable), in groups
that each hold the floor worker (below) and either torch's programs or one of this project's
(an idle JAX worker alive slowed torch's eager step 1.2-1.3x here); a group's workers take
turns, ``--repeats`` rounds (so load from other processes hits all of them alike);
a turn is one untimed step, then ``BURST`` steps back to back whose mean is the turn's time.
Per step: wall and CPU time (``time.process_time``, all threads of the worker).
Memory: the worker resets its resident-set high-water mark after warm-up (Linux
``/proc/self/clear_refs``) and reads ``VmHWM`` after the timed steps: the peak RSS of the
process while stepping (parameters, optimiser state, batch and the step's temporaries); the
step's own share is that minus the RSS just before the first timed step.

The floor: the step's matmul FLOPs counted analytically (below; the backward is twice the
forward) over the machine's float32 matmul throughput, measured in the same run by a worker
that times a 2048^3 ``jnp.dot`` in turn with the others. ``floor %`` = floor time / step time.

    pip install -e ".[bench]"                       # torch: only this benchmark imports it
    python -m benchmarks.step                       # both lengths, softmax and Gaussian
    python -m benchmarks.step --lengths 256 --kernels softmax --repeats 3 --no-record
    python -m benchmarks.step --host-devices 1 2 4  # the step data-parallel over 1, 2, 4 devices
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from experiments import host

BATCH, LAYERS, EMBED, MLP, HEADS, VOCAB, CLASSES = 32, 2, 64, 128, 2, 257, 2
MATMUL_SIZE = 2048
MATMUL_GFLOP = 2 * MATMUL_SIZE**3 / 1e9  # one timed jnp.dot of the floor worker
PAUSE_S = 0.5  # between two workers' turns
BURST = 3  # timed steps per turn, after one untimed


def step_flops(batch: int, length: int) -> float:
    """Matmul FLOPs of one training step (2 per multiply-add; backward = 2x forward).

    Per layer and token: q, k, v and output projections 4 * 2 D^2, the MLP 2 * 2 D M, and the
    two attention products (scores, weights @ values) 2 * 2 T D over all heads. Embedding
    lookups, layer norms, softmax and the classifier head are negligible next to these.
    """
    per_token = 4 * 2 * EMBED**2 + 2 * 2 * EMBED * MLP + 2 * 2 * length * EMBED
    return 3.0 * LAYERS * batch * length * per_token


# --------------------------------------------------------------------------------------------
# Memory of this process (Linux)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


# --------------------------------------------------------------------------------------------
# Workers: each builds one program, then runs one step per "step" line on stdin.


def jax_program(length: int, kernel: str, implementation: str, host_devices: int = 1):
    """The jitted step; with ``host_devices > 1`` (the worker was started with that many XLA
    host devices) the batch is split over a ``data`` mesh axis, parameters replicated, as the
    runner does with ``mesh.data``: one XLA program per device, each on its own core."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from attn_dynamics import models
    from experiments import train

    model = models.EncoderClassifier(
        num_classes=CLASSES,
        vocab_size=VOCAB,
        num_layers=LAYERS,
        embed_dim=EMBED,
        mlp_dim=MLP,
        num_heads=HEADS,
        kernel=kernel,
        implementation=implementation,
        max_len=length,
    )
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, VOCAB - 1, (BATCH, length)), jnp.int32),
        "valid": jnp.ones((BATCH, length), bool),
        "labels": jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32),
    }
    mesh = Mesh(np.array(jax.devices()[:host_devices]), ("data",))
    batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"], batch["valid"])["params"]
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    tx = optax.adam(1e-3)
    loss_fn = train.make_loss(model, "classification")

    def step(params, opt_state, batch, rng):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, tx.init(params)]
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state, batch, key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
    temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20

    def run():
        state[0], state[1], loss = compiled(*state, batch, key)
        jax.block_until_ready(loss)

    xla_gflops = cost.get("flops", float("nan")) / 1e9
    return run, {"compile_s": compile_s, "xla_gflops": xla_gflops, "xla_temp_mib": temp_mib}


def torch_program(length: int, kernel: str, attention: str):
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    head_dim = EMBED // HEADS
    # softmax: 1 / sqrt(d); Gaussian: 1 / sigma2 with the default sigma2 = sqrt(d), and
    # softmax_j((q.k_j - ||k_j||^2 / 2) / sigma2) is its row-normalised kernel
    scale = 1.0 / math.sqrt(head_dim)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(EMBED, 3 * EMBED), nn.Linear(EMBED, EMBED)

        def forward(self, x, valid):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
            bias = None
            if kernel == "gaussian":
                bias = -0.5 * scale * k.square().sum(-1)[:, :, None, :]  # [B, h, 1, T]
            if attention == "sdpa":
                mask = valid[:, None, None, :]
                if bias is not None:
                    mask = bias.masked_fill(~mask, float("-inf"))
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            else:
                scores = scale * (q @ k.transpose(-1, -2))
                if bias is not None:
                    scores = scores + bias
                scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
                out = scores.softmax(-1) @ v
            return self.out(out.transpose(1, 2).reshape(b, t, EMBED))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(EMBED), nn.LayerNorm(EMBED)
            self.attention = Attention()
            self.mlp = nn.Sequential(
                nn.Linear(EMBED, MLP), nn.GELU(approximate="tanh"), nn.Linear(MLP, EMBED)
            )

        def forward(self, x, valid):
            x = x + self.attention(self.ln1(x), valid)
            return x + self.mlp(self.ln2(x))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            positions = torch.arange(length, dtype=torch.float32)[:, None]
            inv_freq = torch.exp(-math.log(10_000.0) * torch.arange(0, EMBED, 2) / EMBED)
            table = torch.zeros(length, EMBED)
            table[:, 0::2], table[:, 1::2] = (
                torch.sin(positions * inv_freq),
                torch.cos(positions * inv_freq),
            )
            self.register_buffer("positions", table)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.norm, self.head = nn.LayerNorm(EMBED), nn.Linear(EMBED, CLASSES)

        def forward(self, tokens, valid):
            x = self.embed(tokens) + self.positions
            for block in self.blocks:
                x = block(x, valid)
            w = valid[..., None].float()
            return self.head((self.norm(x) * w).sum(1) / w.sum(1).clamp(min=1.0))

    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB - 1, (BATCH, length), generator=gen)
    valid = torch.ones(BATCH, length, dtype=torch.bool)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens, valid), labels)
        loss.backward()
        opt.step()

    return run, {}


def matmul_program():
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(jax.random.key(i), (MATMUL_SIZE,) * 2) for i in range(2))
    dot = jax.jit(jnp.dot).lower(a, b).compile()
    return lambda: jax.block_until_ready(dot(a, b)), {}


def release_freed_memory() -> None:
    """From now on malloc returns large blocks to the OS on free (glibc ``mallopt``), and the
    free memory it holds now is released: RSS then tracks live buffers, so a peak RSS over a
    step is the step's own memory, not what earlier steps left cached in the heap."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)
    libc.malloc_trim(0)


def worker(spec: dict) -> None:
    if spec["program"] == "jax":
        run, info = jax_program(
            spec["length"], spec["kernel"], spec["implementation"], spec["host_devices"]
        )
    elif spec["program"] == "torch":
        run, info = torch_program(spec["length"], spec["kernel"], spec["attention"])
    else:
        run, info = matmul_program()
    for _ in range(2):  # warm-up: first-call allocations, thread pools
        run()
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        # A turn is a burst of steps, timed after its first: training runs steps back to back,
        # and a step that starts from idle pays for waking every thread pool (up to 1.7x)
        run()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(BURST):
            run()
        wall, cpu = (time.perf_counter() - wall) / BURST, (time.process_time() - cpu) / BURST
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)
    # Memory, after the timed steps (the malloc settings below would slow steps down)
    release_freed_memory()
    run()
    release_freed_memory()
    resident = _status_kib("VmRSS")
    reset_peak_rss()
    run()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": peak / 1024, "step_mib": (peak - resident) / 1024}), flush=True)


# --------------------------------------------------------------------------------------------
# Driver


class Worker:
    def __init__(self, spec: dict):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_root(), _pythonpath()])))
        if spec["program"] != "torch":  # the XLA CPU flags experiments.run starts with
            devices = spec.get("host_devices", 1)
            env["XLA_FLAGS"] = host.cpu_xla_flags(env.get("XLA_FLAGS", ""), devices)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.step", "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=_root(),
        )
        self.spec, self.info, self.walls, self.cpus = spec, None, [], []

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.spec} died (exit {self.proc.wait()})")
        return json.loads(line)

    def ready(self) -> None:
        self.info = self._reply()

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self.walls.append(reply["wall"])
        self.cpus.append(reply["cpu"])

    def finish(self) -> None:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        self.info.update(self._reply())
        self.proc.wait()


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


def run_round_robin(specs: list[dict], repeats: int) -> list[Worker]:
    """Start the workers one at a time (compilation alone), then step them in turn, with a pause
    before each step: OpenMP's and XLA's worker threads spin for a while after their work, and
    without the pause the previous worker's spinning would take the cores from the next one."""
    workers = []
    for spec in specs:
        workers.append(Worker(spec))
        workers[-1].ready()
    for _ in range(repeats):
        for w in workers:
            time.sleep(PAUSE_S)
            w.step()
    for w in workers:
        w.finish()
    return workers


def time_group(group: list[dict], repeats: int) -> tuple[dict, list[Worker]]:
    """Step ``group`` in turn with the floor worker; the matmul rate measured alongside, in
    GFLOP per wall second and per CPU second times the cores (what all cores would do if this
    process had them to itself): the floor on each clock."""
    matmul, *programs = run_round_robin([{"program": "matmul"}, *group], repeats)
    rate = {
        "wall": MATMUL_GFLOP / statistics.median(matmul.walls),
        "cpu": MATMUL_GFLOP / statistics.median(matmul.cpus) * os.cpu_count(),
    }
    return rate, programs


def step_row(w: Worker, length: int, kernel: str, rate: dict, reference: tuple) -> dict:
    """One program's row (medians; speed-up against ``reference``, torch's (wall, cpu)),
    printed as it is made."""
    floor = {c: step_flops(BATCH, length) / 1e9 / rate[c] for c in rate}
    wall, cpu = statistics.median(w.walls), statistics.median(w.cpus)
    row = {
        "length": length,
        "kernel": kernel,
        "program": label(w.spec),
        "wall": wall,
        "cpu": cpu,
        "vs_wall": reference[0] / wall,
        "vs_cpu": reference[1] / cpu,
        "floor_wall": floor["wall"] / wall,
        "floor_cpu": floor["cpu"] * os.cpu_count() / cpu,
        **w.info,
    }
    print(
        f"L={length} {kernel:8s} {row['program']:26s} wall {wall:.3f} s cpu "
        f"{cpu:.3f} s  speed-up vs torch {row['vs_wall']:.2f} (cpu "
        f"{row['vs_cpu']:.2f})  floor {100 * row['floor_wall']:.0f}% (cpu "
        f"{100 * row['floor_cpu']:.0f}%)  peak {w.info['peak_mib']:.0f} MiB "
        f"(step {w.info['step_mib']:.0f})",
        flush=True,
    )
    return row


def label(spec: dict) -> str:
    if spec["program"] == "jax":
        devices = spec["host_devices"]
        on = f", {devices} host devices" if devices > 1 else ""
        return f"attn-dynamics ({spec['implementation']}{on})"
    return f"torch eager ({spec['attention']})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--kernels", nargs="+", default=["softmax", "gaussian"])
    parser.add_argument(
        "--implementations",
        nargs="+",
        default=["explicit", "auto"],
        help="this project's attention paths to time ('explicit' was the CPU default before)",
    )
    parser.add_argument("--torch", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    parser.add_argument(
        "--host-devices",
        type=int,
        nargs="+",
        default=[1],
        help="time each implementation data-parallel over each of these numbers of XLA host "
        "devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, the batch split over them)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument("--section", default="step (cpu)", help="RESULTS.md section to write")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    for kernel in args.kernels:
        if kernel not in ("softmax", "gaussian"):
            parser.error(f"unknown kernel {kernel!r}; valid: ['gaussian', 'softmax']")
    for devices in args.host_devices:
        if devices < 1 or BATCH % devices:
            parser.error(f"--host-devices {devices}: must divide the batch of {BATCH}")
    if not args.torch:
        parser.error("--torch needs at least one of ['eager', 'sdpa'] (the reference)")

    load_start = os.getloadavg()[0]
    rows, throughput = [], {"wall": [], "cpu": []}
    for length in args.lengths:
        for kernel in args.kernels:
            # Groups, each with the floor worker: torch's programs, then each of ours alone.
            # Torch's eager step frees and re-faults its large tensors every step, and with an
            # idle JAX worker alive (even a stopped one) that took 1.2-1.3x longer here: so
            # torch never shares the machine with our workers, nor ours with each other.
            torch_specs = [
                {"program": "torch", "length": length, "kernel": kernel, "attention": a}
                for a in args.torch
            ]
            groups = [torch_specs] + [
                [
                    {
                        "program": "jax",
                        "length": length,
                        "kernel": kernel,
                        "implementation": i,
                        "host_devices": devices,
                    }
                ]
                for devices in sorted(set(args.host_devices))
                for i in args.implementations
            ]
            reference = None
            for group in groups:
                rate, programs = time_group(group, args.repeats)
                for clock in rate:
                    throughput[clock].append(rate[clock])
                if reference is None:  # the torch group: its first program is the reference
                    reference = (
                        statistics.median(programs[0].walls),
                        statistics.median(programs[0].cpus),
                    )
                for w in programs:
                    rows.append(step_row(w, length, kernel, rate, reference))
    summary = render(args, rows, throughput, load_start, os.getloadavg()[0])
    print()
    print(summary)
    if not args.no_record:
        from benchmarks._results import record

        record(args.section, summary)


def _version(package: str) -> str:
    """A package's installed version, without importing it (the driver never imports torch)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def render(args, rows, throughput, load_start, load_end) -> str:
    command = " ".join(
        [
            "python -m benchmarks.step",
            "--lengths",
            *map(str, args.lengths),
            "--kernels",
            *args.kernels,
            "--implementations",
            *args.implementations,
            "--torch",
            *args.torch,
            *(["--host-devices", *map(str, args.host_devices)] if args.host_devices != [1] else []),
            "--repeats",
            str(args.repeats),
            *(["--section", f"'{args.section}'"] if args.section != "step (cpu)" else []),
        ]
    )
    mm_wall, mm_cpu = (statistics.median(throughput[c]) for c in ("wall", "cpu"))
    lines = [
        f"Command: `{command}`",
        "",
        f"Batch {BATCH}, {LAYERS} layers, embed {EMBED}, MLP {MLP}, {HEADS} heads, float32; one "
        f"training step (forward, backward, Adam). Groups of workers, each with the floor "
        f"worker: the torch programs, then each attn-dynamics program alone (an idle JAX worker "
        f"slowed torch's eager step); medians of {args.repeats} interleaved rounds per group, "
        f"each program in its own process, a turn = 1 untimed + {BURST} timed steps back to "
        f"back. Speed-up = the first torch row's time / this row's (same length and kernel), "
        f"on the wall clock and on CPU time. Floor = analytic "
        f"matmul GFLOP / the {MATMUL_SIZE}^3 float32 `jnp.dot` throughput measured in the same "
        f"rounds: {mm_wall:.0f} GFLOP/s on the wall clock, {mm_cpu:.0f} GFLOP/s per CPU-second "
        f"x {os.cpu_count()} cores (medians over the configurations); floor % = floor time / "
        f"step time on the same clock. Peak = the worker's peak RSS over one step with freed "
        f"memory returned to the OS; step = peak minus RSS just before the step; XLA temp = "
        f"the compiled step's temporary buffers (`memory_analysis`). Load average "
        f"{load_start:.1f} at start, {load_end:.1f} at end, on {os.cpu_count()} CPUs; "
        f"torch {_version('torch')}, jax {_version('jax')}.",
        "",
        "| length | kernel | program | wall s | CPU s | speed-up wall | speed-up CPU | GFLOP | "
        "floor % wall | floor % CPU | peak MiB | step MiB | XLA temp MiB | compile s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        jax_only = lambda key, fmt, r=r: format(r[key], fmt) if key in r else ""
        lines.append(
            f"| {r['length']} | {r['kernel']} | {r['program']} | {r['wall']:.3f} | "
            f"{r['cpu']:.3f} | {r['vs_wall']:.2f} | {r['vs_cpu']:.2f} | "
            f"{step_flops(BATCH, r['length']) / 1e9:.1f} | {100 * r['floor_wall']:.0f} | "
            f"{100 * r['floor_cpu']:.0f} | {r['peak_mib']:.0f} | {r['step_mib']:.0f} | "
            f"{jax_only('xla_temp_mib', '.0f')} | {jax_only('compile_s', '.1f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
