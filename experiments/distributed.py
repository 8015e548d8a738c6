"""Many hosts on JAX's own distributed runtime (``jax.distributed.initialize``).

* Explicit: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every host.
* Automatic: ``--distributed`` where JAX detects the cluster itself (SLURM, TPU pods, Open MPI,
  ...); on a Cloud TPU pod slice every worker runs the same command.

Every process runs the same program: the mesh spans all devices of all processes, each process
reads only its share of each batch, orbax saves and restores collectively, and only process 0
writes ``metrics.jsonl``, ``summary.json``, plots and TensorBoard events. On CPU the
collectives go through gloo.

A lost peer. Each process of a multi-process run is a small supervisor (:func:`supervise`, no
JAX) around a child that does the work. A process that dies is noticed by the others at their
next collective (gloo: connection reset), or by the coordination service's heartbeat
(:data:`HEARTBEAT_SECONDS`) when it hangs or its host vanishes. JAX's runtime then ends the
survivor from a C++ thread (``LOG(FATAL)``: a stack dump and SIGABRT, no Python hook); the child
itself leaves at once when the error reaches Python. The supervisor turns either into one line,
``error: process 0 of 2 lost its peer (process 1 stopped responding); ...`` with the command
that resumes, and exit status :data:`LOST_PEER_EXIT`. Bound: a killed peer ends the others
within seconds (their next collective); a hung one within the heartbeat, plus a step and
:data:`HOLD_SECONDS`. Signals to the supervisor reach the child once; the child dies with it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

HEARTBEAT_SECONDS = 30  # a peer silent this long is lost (the runtime's default is 100)
LOST_PEER_EXIT = 3  # the exit status of a process whose peer was lost
SUPERVISED_ENV = "ATTN_DYNAMICS_SUPERVISED"  # set in the child: it does the work
LOST_PEER_MARKER = "attn-dynamics: lost peer: "  # the child's last line to its supervisor
HOLD_SECONDS = 1.0  # runtime log lines wait this long for a fatal line that makes them moot
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# glog lines of JAX's C++ runtime: "E1207 23:20:17.450292    8629 coordination_service.cc:1520] "
_RUNTIME_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]]+:\d+\] ")
_FATAL_LINE = re.compile(rb"^F\d{4} \d\d:\d\d:\d\d|^\*\*\* Check failure stack trace")
# What a lost peer looks like: in the runtime's fatal dump, or in an exception reaching Python.
_PEER_LOST = re.compile(
    r"heartbeat|distributed service detected fatal|coordination.?service|Socket closed"
    r"|Connection reset by peer|Connection closed by peer|Gloo \S+ failed",
    re.IGNORECASE,
)
# experiments.hooks.StopOnSignal's line: the child caught that signal itself.
_SIGNAL_TAKEN = re.compile(rb"signal (\d+): saving a checkpoint")


@dataclasses.dataclass(frozen=True)
class Cluster:
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # let JAX detect SLURM / TPU / Open MPI
    heartbeat_timeout_seconds: int = HEARTBEAT_SECONDS

    @property
    def wanted(self) -> bool:
        return self.auto or self.coordinator_address is not None

    @property
    def supervised(self) -> bool:
        """True in the child of :func:`supervise` (the process that runs JAX)."""
        return self.wanted and os.environ.get(SUPERVISED_ENV) == "1"


def check(cluster: Cluster) -> str | None:
    """One line saying what is wrong with the flags, or None (no JAX needed)."""
    explicit = (cluster.coordinator_address, cluster.num_processes, cluster.process_id)
    if any(x is not None for x in explicit) and any(x is None for x in explicit):
        return (
            "--coordinator_address, --num_processes and --process_id go together (got "
            f"{cluster.coordinator_address!r}, {cluster.num_processes!r}, {cluster.process_id!r})"
        )
    if cluster.num_processes is not None and not 0 <= cluster.process_id < cluster.num_processes:
        return f"--process_id={cluster.process_id} must be in [0, {cluster.num_processes})"
    return None


def initialize(cluster: Cluster) -> None:
    """Join the cluster before any other JAX call (a no-op for a single process)."""
    if not cluster.wanted:
        return
    import jax

    # gloo: CPU collectives across processes (the default CPU client has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=cluster.coordinator_address,
        num_processes=cluster.num_processes,
        process_id=cluster.process_id,
        heartbeat_timeout_seconds=cluster.heartbeat_timeout_seconds,
    )


def gather(tree):
    """Host copies of (possibly cross-process) arrays: every process gets the whole value."""
    import jax

    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# --------------------------------------------------------------------------------------------
# A lost peer: one line and exit LOST_PEER_EXIT, in the child (an exception) and in the
# supervisor (the runtime's fatal dump)


def lost_peer(error: BaseException) -> str | None:
    """The line of ``error`` (or of an exception it was raised from or during) that says a peer
    was lost, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _PEER_LOST.search(text := " ".join(str(error).split())):
            return text
        error = error.__cause__ or error.__context__
    return None


def leave_lost_peer(detail: str) -> None:
    """End the child at once with the marker line: no traceback, and no wait at the runtime's
    shutdown barrier (the peer will never reach it; the runtime would abort after the
    heartbeat). Committed checkpoints are complete on disk; a checkpoint being written is a
    temporary directory that a resume ignores."""
    sys.stdout.flush()
    print(f"{LOST_PEER_MARKER}{detail[:2000]}", file=sys.stderr, flush=True)
    os._exit(LOST_PEER_EXIT)


def leave_failed() -> None:
    """End the child after an unexpected exception (its traceback printed) without waiting at
    the shutdown barrier: the peers see this process gone and end with the lost-peer line."""
    import traceback

    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def lost_peer_line(cluster: Cluster, runtime_text: str, rerun: str) -> str:
    """``error: process I of N lost its peer (process J stopped responding); ...``."""
    me, n = cluster.process_id, cluster.num_processes
    who = f"process {me} of {n}" if n is not None else "this process"
    peer = None
    if n == 2:
        peer = 1 - me
    elif m := re.search(r"Task (\d+) heartbeat timeout|stopped sending heartbeats\):\s*(\d+)",
                        runtime_text):  # fmt: skip
        peer = m[1] or m[2]
    elif me != 0 and re.search(r"leader task|RPC to coordination service", runtime_text):
        peer = 0
    lost = f"its peer (process {peer} stopped responding)" if peer is not None else "a peer"
    return (
        f"error: {who} lost {lost}; the checkpoints are intact, rerun every process's command "
        f"to resume (this one's: {rerun})"
    )


def _die_with_parent() -> None:  # pragma: no cover -- runs in the forked child
    """Linux: the child gets SIGKILL when the supervisor dies, so killing the process one
    started kills the run (a peer is lost, not left running unsupervised)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl
        os._exit(137)


def supervise(
    command: Sequence[str],
    *,
    lost_peer: Callable[[str], str],
    env: dict | None = None,
    hold: float = HOLD_SECONDS,
    stderr=None,
) -> int:
    """Run ``command`` (the same run, with :data:`SUPERVISED_ENV` set) and return its exit
    status; ``lost_peer(runtime_text)`` is the line printed instead of the runtime's fatal dump
    (or the child's marker) when a peer was lost, and the status is then
    :data:`LOST_PEER_EXIT`.

    stdout is the child's own; stderr passes through line by line, except lines of JAX's C++
    runtime, held ``hold`` seconds in case a fatal line follows (then the held lines, the dump
    and whatever follows it are dropped). A fatal dump that does not say a peer was lost is
    printed as it came, with the child's status (128 + signal, as a shell reports it).

    The child stays in this process group, so what signals the group (Ctrl-C, a batch system)
    reaches it directly. A signal of :data:`FORWARDED_SIGNALS` sent to this process alone is
    passed on after ``hold`` seconds unless the child reported taking it in the meantime
    (``signal N: saving a checkpoint``): it is not delivered twice, which would skip the
    final checkpoint."""
    out = stderr if stderr is not None else sys.stderr.buffer
    child = subprocess.Popen(
        list(command),
        env={**(os.environ if env is None else env), SUPERVISED_ENV: "1"},
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    lines: queue.Queue = queue.Queue()
    taken: dict[int, float] = {}  # signal -> when the child said it took it

    def read() -> None:
        for line in iter(child.stderr.readline, b""):
            if m := _SIGNAL_TAKEN.search(line):
                taken[int(m[1])] = time.monotonic()
            lines.put(line)
        lines.put(None)

    def forward_unless_taken(signum: int, received: float) -> None:
        if taken.get(signum, -float("inf")) < received - hold and child.returncode is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    def on_signal(signum, frame) -> None:
        timer = threading.Timer(hold, forward_unless_taken, (signum, time.monotonic()))
        timer.daemon = True
        timer.start()

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED_SIGNALS}
    threading.Thread(target=read, daemon=True).start()

    def write(chunk: list[bytes]) -> None:
        try:
            out.write(b"".join(chunk))
            out.flush()
        except (OSError, ValueError):
            pass

    held: list[bytes] = []
    deadline = None
    dropped: list[bytes] | None = None  # from the fatal line (or the marker) on
    try:
        while True:
            try:
                line = lines.get(timeout=None if deadline is None else
                                 max(0.0, deadline - time.monotonic()))  # fmt: skip
            except queue.Empty:
                write(held)
                held, deadline = [], None
                continue
            if line is None:
                break
            if dropped is not None:
                if sum(map(len, dropped)) < 1 << 20:
                    dropped.append(line)
            elif line.startswith(LOST_PEER_MARKER.encode()) or _FATAL_LINE.match(line):
                dropped, held, deadline = [*held, line], [], None
            elif held:
                held.append(line)  # a continuation of a runtime message, or a line beside it
            elif _RUNTIME_LINE.match(line):
                held, deadline = [line], time.monotonic() + hold
            else:
                write([line])
        write(held)
        code = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if dropped is not None:
        text = b"".join(dropped).decode(errors="replace")
        if dropped[0].startswith(LOST_PEER_MARKER.encode()) or _PEER_LOST.search(text):
            write([f"{lost_peer(text)}\n".encode()])
            return LOST_PEER_EXIT
        write(dropped)
    return code if code >= 0 else 128 - code
