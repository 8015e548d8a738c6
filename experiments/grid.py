"""Grids of runs as a library: typed axes, one directory per cell, and where the cells run.

    from experiments import grid

    results = grid.run_grid(config, {"model.kernel": ("softmax", "gaussian")}, "runs/g")
    results = grid.run_grid(config, axes, "runs/g", executor=grid.ProcessPool(2))
    results = grid.run_grid(config, axes, "runs/g", executor=grid.Submitit.slurm("runs/g",
                            slurm_partition="gpu", timeout_min=60, gpus_per_node=1))

A grid is the product of its axes (dotted config field -> values). Every cell is an ordinary run
directory ``root/<field>=<value>,...`` trained by ``experiments.train.train_and_evaluate``; seeds
are not an axis unless you make ``seeds`` one (each cell trains ``config.seeds`` vmapped).
``root/sweep.json`` maps directories to cells (:func:`experiments.rundirs.list_cells` reads it).
A cell whose ``summary.json`` says done or diverged and whose ``config.json`` is the cell's
config is skipped; a failed cell is reported and runs again next time.

Where cells run is an executor: :class:`InProcess` (one after another, in this process),
:class:`ProcessPool` (N at once on this machine, each worker with its own devices) and
:class:`Submitit` (SLURM jobs, or submitit's local executor with the same code path). Nothing
here imports JAX at module level: worker processes set their device environment first.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from experiments import host, rundirs
from experiments import workdir as workdirs
from experiments.grid_axes import (  # noqa: F401 -- grid.set_field and the like stay here
    AxisError,
    cast,
    cell_name,
    cells,
    field_type,
    get_field,
    literal,
    parse_axis,
    set_field,
    split_top_level,
    typed_axes,
    value_text,
)

FINISHED = ("done", "diverged")
# Fields that do not change what a run computes: a finished cell is still finished.
COSMETIC_FIELDS = ("train.progress_bar", "mesh.cpu_devices_per_core")


# --------------------------------------------------------------------------------------------
# Cells and their directories


def configure(base, cell: Mapping):
    config = copy.deepcopy(base)
    for field, value in cell.items():
        set_field(config, field, value)
    return config


def config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def is_finished(cell_dir: str | os.PathLike, config=None) -> bool:
    """``summary.json`` says done or diverged, and (given ``config``) the run is of it."""
    try:
        summary = rundirs.read_summary(cell_dir)
        if summary is None or summary.get("status") not in FINISHED:
            return False
        if config is None:
            return True
        saved = rundirs.read_config(cell_dir)
    except rundirs.RunDirError:
        return False  # damaged: training again resumes from the checkpoint and rewrites it
    changed = workdirs.differences(saved, config_json(config))
    return not [k for k in changed if k not in COSMETIC_FIELDS]


@dataclasses.dataclass(frozen=True)
class Task:
    """One cell to run: everything a worker needs (picklable)."""

    index: int
    name: str
    config: Any  # ml_collections.ConfigDict
    workdir: str


@dataclasses.dataclass(frozen=True)
class CellResult:
    name: str
    path: pathlib.Path
    overrides: dict
    status: str  # 'done' | 'diverged' | 'interrupted' | 'failed' | 'not run'
    summary: dict | None = None
    error: str | None = None  # one line, for 'failed'
    skipped: bool = False  # finished before this call


def write_index(root: pathlib.Path, axes: Mapping, grid: list[dict]) -> None:
    """``sweep.json``, replaced atomically (a kill never leaves it torn)."""
    index = {
        "axes": {field: list(values) for field, values in axes.items()},
        "cells": [{"name": cell_name(c), **c} for c in grid],
    }
    tmp = root / f".sweep.json.{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, root / rundirs.INDEX)


# --------------------------------------------------------------------------------------------
# Running one cell (in whatever process an executor chose)


def run_cell(config, workdir: str) -> dict:
    """Train one cell; returns its summary. JAX is imported here, after the environment and
    the XLA CPU flags for this worker's cores (:func:`experiments.host.configure`)."""
    host.configure(config.mesh.get("cpu_devices_per_core", 0))
    from experiments import train

    return train.train_and_evaluate(config, workdir)


def _run_cell_with_env(config, workdir: str, env: dict) -> dict:
    apply_environment(env)
    return run_cell(config, workdir)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"


class Executor(Protocol):
    """Runs tasks; yields ``(task, summary or the exception it raised)`` as they finish.

    ``progress_bar`` says whether a cell may draw a progress bar (only one runs at a time)."""

    progress_bar: bool

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict | BaseException]]: ...


class InProcess:
    """Cells one after another in this process (SIGINT/SIGTERM stop after the current cell)."""

    progress_bar = True

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict | BaseException]]:
        for task in tasks:
            try:
                summary = run_cell(task.config, task.workdir)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 -- a failed cell is reported, the grid goes on
                yield task, e
                continue
            yield task, summary
            if summary.get("status") == "interrupted":
                return


# ---- devices per worker


CPUS_VARIABLE = "ATTN_DYNAMICS_CPUS"  # a worker's cores, e.g. "0,1"; applied as its affinity


def worker_environments(parallel: int, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` workers.

    GPU: a disjoint subset of the visible GPUs each (round robin when there are more workers
    than GPUs, which then share without preallocating). CPU: the cores split between the
    workers, each pinned to its own disjoint set (:data:`CPUS_VARIABLE`). XLA sizes its CPU
    thread pools from the affinity mask, not from ``OMP_NUM_THREADS``: unpinned, N workers
    each run a pool as wide as the machine and spin against each other (measured: 1.5x the
    CPU time per cell with two workers on two cores).
    """
    gpus = host.visible_gpus() if gpus is None else gpus
    if gpus:
        if parallel <= len(gpus):
            share = len(gpus) // parallel
            groups = [gpus[i * share : (i + 1) * share] for i in range(parallel)]
            return [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]
        return [
            {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
            for i in range(parallel)
        ]
    if parallel > 1 and host.tpu_present():
        raise ValueError(
            f"--parallel={parallel} on a TPU host: one process owns the TPU chips; use "
            "--parallel=1 (cells then run one after another on all chips)"
        )
    return [cpu_environment(cores) for cores in split_cores(parallel)]


def split_cores(parallel: int) -> list[list[int]]:
    """This process's cores in ``parallel`` disjoint, contiguous, near-equal groups (a group
    is shared round robin when there are more workers than cores)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:  # no affinity API (macOS): pools sized by count only
        return [[] for _ in range(parallel)]
    if parallel >= len(cores):
        return [[cores[i % len(cores)]] for i in range(parallel)]
    bounds = [round(i * len(cores) / parallel) for i in range(parallel + 1)]
    return [cores[bounds[i] : bounds[i + 1]] for i in range(parallel)]


def cpu_environment(cores: list[int]) -> dict[str, str]:
    """A CPU worker on ``cores`` (empty: a share of the machine, by count only)."""
    threads = max(1, len(cores) or host.cpu_count())
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    env = {
        "XLA_FLAGS": flags,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    if cores:
        env[CPUS_VARIABLE] = ",".join(map(str, cores))
    return env


def apply_environment(env: dict[str, str]) -> None:
    """Enter a worker's environment: variables, and its cores as this process's affinity.
    Must run before JAX's backend starts (it reads both once, then)."""
    os.environ.update(env)
    cores = env.get(CPUS_VARIABLE)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})


def worker_context():
    """Workers forked from a server that imported the training stack once: they skip the
    JAX/flax/orbax import, 2-3 s of one core each. Importing JAX starts no backend, so the
    fork is safe and each worker's environment and cores still apply when its backend starts.
    Spawned where there is no fork server (macOS, Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["experiments.train"])
    return context


_stopping = None  # in a pool worker: the parent's "stop" event


def _init_worker(slots, stopping) -> None:
    """Pool initializer: take a device slot, before JAX's backend starts; own process group,
    so that a Ctrl-C reaches the parent only (which stops the workers once, cleanly)."""
    global _stopping
    os.setpgrp()
    apply_environment(slots.get())
    _stopping = stopping


def _run_cell_unless_stopping(config, workdir: str) -> dict | None:
    """A cell a worker had already taken from the queue when the grid was stopped is not
    started (None): the pool hands each worker its next cell before the current one ends."""
    if _stopping is not None and _stopping.is_set():
        return None
    return run_cell(config, workdir)


class ProcessPool:
    """``parallel`` cells at once, each worker a fresh process (:func:`worker_context`) with its
    own devices.

    The environments (:func:`worker_environments` by default) are fixed per worker because
    JAX reads them once, when its backend starts."""

    progress_bar = False

    def __init__(self, parallel: int, environments: list[dict[str, str]] | None = None):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.parallel = parallel
        self.environments = environments or worker_environments(parallel)

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict | BaseException]]:
        if not tasks:
            return
        workers = min(self.parallel, len(tasks))
        context = worker_context()
        slots, stopping = context.Queue(), context.Event()
        for env in self.environments[:workers]:
            slots.put(env)
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(slots, stopping)
        )
        futures = {pool.submit(_run_cell_unless_stopping, t.config, t.workdir): t for t in tasks}
        reported = set()
        interrupted = False
        try:
            with _sigterm_as_interrupt():
                for future in concurrent.futures.as_completed(futures):
                    reported.add(future)
                    yield futures[future], _outcome(future)
        except KeyboardInterrupt:
            interrupted = True
            stopping.set()
            for future in futures:
                future.cancel()
            for process in list(pool._processes.values()):  # running cells checkpoint, stop
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
            for future in futures:
                if future not in reported and not future.cancelled():
                    outcome = _outcome(future)
                    if outcome is not None:  # None: never started
                        yield futures[future], outcome
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if interrupted:
            raise KeyboardInterrupt


def _outcome(future: concurrent.futures.Future) -> dict | BaseException:
    """The cell's summary, or what it raised (waits for it)."""
    error = future.exception()
    return error if error is not None else future.result()


class _sigterm_as_interrupt:
    """SIGTERM to the parent stops the grid like Ctrl-C does (main thread only)."""

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:
            self.previous = None

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class Submitit:
    """Cells as submitit jobs: SLURM (:meth:`slurm`) or this machine (:meth:`local`).

    ``parameters`` are submitit's (``AutoExecutor.update_parameters``: ``slurm_partition``,
    ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ...). At most
    ``max_in_flight`` jobs are queued at a time (None: all; on SLURM they go as one job array,
    throttled by ``slurm_array_parallelism``). Job logs are under ``folder``.
    """

    progress_bar = False

    def __init__(self, executor, *, max_in_flight: int | None, environments: list[dict] | None):
        self.executor = executor
        self.max_in_flight = max_in_flight
        self.environments = environments  # per in-flight slot (local only)

    @classmethod
    def slurm(cls, folder: str | os.PathLike, **parameters) -> Submitit:
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**parameters)
        return cls(executor, max_in_flight=None, environments=None)

    @classmethod
    def local(cls, folder: str | os.PathLike, parallel: int = 1, **parameters) -> Submitit:
        import submitit

        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**{"timeout_min": 24 * 60, **parameters})
        gpus = host.visible_gpus()
        return cls(
            executor,
            max_in_flight=parallel,
            environments=worker_environments(parallel, gpus=[] if not gpus else gpus),
        )

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict | BaseException]]:
        pending = list(tasks)
        running: dict = {}  # job -> (task, slot)
        free = list(range(self.max_in_flight or len(tasks)))
        try:
            with _sigterm_as_interrupt():
                if self.max_in_flight is None:  # one job array: the scheduler throttles
                    with self.executor.batch():
                        jobs = [
                            self.executor.submit(_run_cell_with_env, t.config, t.workdir, {})
                            for t in pending
                        ]
                    running = {job: (t, None) for job, t in zip(jobs, pending, strict=True)}
                    pending = []
                while pending or running:
                    while pending and free:
                        task, slot = pending.pop(0), free.pop(0)
                        env = self.environments[slot] if self.environments else {}
                        job = self.executor.submit(
                            _run_cell_with_env, task.config, task.workdir, env
                        )
                        running[job] = (task, slot)
                    done = [job for job in running if job.done()]
                    if not done:
                        time.sleep(0.5)
                        continue
                    for job in done:
                        task, slot = running.pop(job)
                        if slot is not None:
                            free.append(slot)
                        try:
                            yield task, job.result()
                        except Exception as e:  # noqa: BLE001 -- the job's error, reported
                            yield task, e
        except KeyboardInterrupt:
            for job in running:
                job.cancel(check=False)
            deadline = time.monotonic() + 60  # a cancelled job may still be writing
            while any(not job.done() for job in running) and time.monotonic() < deadline:
                time.sleep(0.2)
            raise


# --------------------------------------------------------------------------------------------
# The grid


class Progress:
    """``[done/total] cell: status (elapsed) | ETA`` lines on stderr as cells finish."""

    def __init__(self, total: int, skipped: int, stream=None):
        self.total, self.count, self.ran = total, skipped, 0
        self.stream = sys.stderr if stream is None else stream
        self.start = time.monotonic()
        self.to_run = total - skipped

    def __call__(self, result: CellResult) -> None:
        self.count += 1
        self.ran += 1
        elapsed = time.monotonic() - self.start
        left = self.to_run - self.ran
        eta = elapsed / self.ran * left
        detail = f"failed: {result.error}" if result.status == "failed" else result.status
        print(
            f"[{self.count}/{self.total}] {result.name}: {detail} | elapsed {_clock(elapsed)}, "
            f"{left} left, ETA {_clock(eta)}",
            file=self.stream,
            flush=True,
        )


def _clock(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def prepare(
    config, axes: Mapping[str, Sequence], *, with_libraries: bool = True
) -> tuple[dict[str, tuple], list[dict], list]:
    """``(typed axes, cells, cell configs)``; every cell validated before anything runs.

    Raises :class:`AxisError` for bad axes and ``ConfigError`` (a ValueError) for a cell the
    runner would refuse. ``with_libraries=False`` runs only the checks that need no JAX
    (``experiments.validation``): a parent whose cells train in other processes stays light;
    what is left is checked in the cell and reported as its failure."""
    typed = typed_axes(config, axes)
    grid = cells(typed)
    configs = [configure(config, cell) for cell in grid]
    if with_libraries:
        from experiments.train import ConfigError, validate
    else:
        from experiments.validation import ConfigError, validate

    for cell, cell_config in zip(grid, configs, strict=True):
        try:
            validate(cell_config)
        except ConfigError as e:
            raise ConfigError(f"cell {cell_name(cell)}: {e}") from None
    return typed, grid, configs


def run_grid(
    config,
    axes: Mapping[str, Sequence],
    root: str | os.PathLike,
    *,
    executor: Executor | None = None,
    progress: Callable[[CellResult], None] | None | bool = True,
) -> list[CellResult]:
    """Run every cell of ``config`` x ``axes`` not yet finished under ``root``.

    Returns one :class:`CellResult` per cell, in grid order (``status='not run'`` for cells an
    interruption left out). ``executor`` defaults to :class:`InProcess`; ``progress`` is
    called with each result as it comes (True: a line on stderr).
    """
    executor = InProcess() if executor is None else executor
    typed, grid, configs = prepare(config, axes, with_libraries=isinstance(executor, InProcess))
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_index(root, typed, grid)

    results: list[CellResult | None] = [None] * len(grid)
    tasks = []
    for i, (cell, cell_config) in enumerate(zip(grid, configs, strict=True)):
        path = root / cell_name(cell)
        if is_finished(path, cell_config):
            summary = rundirs.read_summary(path)
            results[i] = CellResult(
                cell_name(cell), path, cell, summary["status"], summary, skipped=True
            )
            continue
        # a copy without references: derived ones hold lambdas, which a worker cannot unpickle
        cell_config = cell_config.copy_and_resolve_references()
        if not executor.progress_bar:  # several cells at once: their bars would interleave
            cell_config.train.progress_bar = False
        tasks.append(Task(i, cell_name(cell), cell_config, str(path)))

    report = Progress(len(grid), len(grid) - len(tasks)) if progress is True else progress
    skipped = len(grid) - len(tasks)
    if skipped and progress:
        print(f"{skipped}/{len(grid)} cells finished before: skipped", file=sys.stderr)
    outcomes, interrupt = executor.run(tasks), False
    while True:
        try:  # a Ctrl-C that lands here is handed to the executor, to stop its cells cleanly
            task, outcome = outcomes.throw(KeyboardInterrupt()) if interrupt else next(outcomes)
        except (StopIteration, KeyboardInterrupt):
            break  # the cells left are 'not run'; what ran is in the results
        interrupt = False
        try:
            results[task.index] = _result(task, grid[task.index], outcome)
            if report:
                report(results[task.index])
        except KeyboardInterrupt:
            interrupt = True
    return [
        r if r is not None else CellResult(cell_name(cell), root / cell_name(cell), cell, "not run")
        for r, cell in zip(results, grid, strict=True)
    ]


def _result(task: Task, cell: dict, outcome: dict | BaseException) -> CellResult:
    path = pathlib.Path(task.workdir)
    if isinstance(outcome, BaseException):
        return CellResult(task.name, path, cell, "failed", error=_one_line(outcome))
    return CellResult(task.name, path, cell, outcome["status"], outcome)


def failed(results: list[CellResult]) -> list[CellResult]:
    return [r for r in results if r.status == "failed"]


def summarize(results: list[CellResult]) -> str:
    """One line: how many cells did what."""
    counts: dict[str, int] = {}
    for r in results:
        key = "skipped (finished before)" if r.skipped else r.status
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def load_sweep_axes(config_spec: str) -> dict[str, tuple]:
    """The ``get_sweep()`` axes of a config file (``path[:arg]``), or none."""
    import importlib.util

    path = config_spec.partition(":")[0]
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.get_sweep()) if hasattr(module, "get_sweep") else {}
