"""Run a grid of configs into one directory tree: ``python -m experiments.sweep``.

    python -m experiments.sweep --config=configs/qk_frozen.py --workdir=runs/grid \\
        --axis=model.kernel=softmax,gaussian --axis=train.trainable=QKV,V,Q
    python -m experiments.sweep ... --parallel=4                  # 4 cells at once, here
    python -m experiments.sweep ... --executor=slurm --slurm_partition=gpu --slurm_time=120

The grid is the product of the config file's ``get_sweep()`` axes (if it defines one) and the
``--axis`` flags (which replace an axis of the same name). Values are Python literals cast to
the field's type (``--axis=model.sigma2=4,8``, ``--axis=seeds=(0,1),(2,3)``,
``--axis=train.stop_at_threshold=True,False``); anything else is a string. Every cell is a run
directory ``WORKDIR/<field>=<value>,...`` listed in ``WORKDIR/sweep.json``; rerunning skips
finished cells and retries failed ones. ``python -m experiments.report WORKDIR`` tabulates them.
The work is :func:`experiments.grid.run_grid`.

Exit status: 0 every cell finished (done or diverged), 1 some cell failed, 2 bad input,
130 interrupted.
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import grid, run

# The names notebooks and tests use (kept here; the implementation is experiments.grid).
cells, cell_name, set_field, get_field = grid.cells, grid.cell_name, grid.set_field, grid.get_field
is_finished, load_sweep_axes = grid.is_finished, grid.load_sweep_axes

_AXES = flags.DEFINE_multi_string(
    "axis", [], "FIELD=V1,V2,...: a grid axis over a config field (dotted path); repeatable."
)
_PARALLEL = flags.DEFINE_integer(
    "parallel",
    1,
    "Cells at once: worker processes on this machine (local), or in-flight jobs "
    "(local_submitit). Each worker gets its own GPUs, or its share of the CPU cores.",
)
_EXECUTOR = flags.DEFINE_enum(
    "executor",
    "local",
    ["local", "slurm", "local_submitit"],
    "Where cells run: this machine (serial, or --parallel worker processes), SLURM jobs "
    "through submitit, or submitit's local executor (the SLURM code path, on this machine).",
)
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "SLURM partition.")
_SLURM_TIME = flags.DEFINE_integer("slurm_time", 60, "Time limit per cell, minutes.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_cell", 1, "GPUs per cell (SLURM).")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus_per_cell", 4, "CPU cores per cell (SLURM).")
_SLURM_MEM = flags.DEFINE_integer("slurm_mem_gb", None, "Memory per cell, GB (SLURM).")
_SLURM_ARRAY = flags.DEFINE_integer(
    "slurm_array_parallelism", None, "At most this many cells running at once (SLURM)."
)
_SLURM_PARAMS = flags.DEFINE_multi_string(
    "slurm_param",
    [],
    "KEY=VALUE: any other submitit AutoExecutor parameter, e.g. slurm_account=abc, "
    "slurm_qos=high, slurm_constraint=a100 (VALUE a Python literal or a string).",
)

HELP_FLAGS = ("--help", "-h", "--helpfull", "-help")


def print_help() -> None:
    print(__doc__)
    names = ["config", "workdir", "axis", "parallel", "executor"]
    names += [n for n in flags.FLAGS if n.startswith("slurm_")]
    for name in names:
        print(f"  --{name}: {flags.FLAGS[name].help}")


def make_executor(root: str):
    """The executor the flags ask for (submitit is imported only when used)."""
    if _PARALLEL.value < 1:
        run.fail(f"--parallel must be >= 1, got {_PARALLEL.value}")
    kind = _EXECUTOR.value
    try:
        if kind == "local":
            return grid.InProcess() if _PARALLEL.value == 1 else grid.ProcessPool(_PARALLEL.value)
        if kind == "local_submitit":
            folder = f"{root}/.submitit"
            return grid.Submitit.local(folder, _PARALLEL.value, timeout_min=_SLURM_TIME.value)
    except ValueError as e:  # e.g. --parallel > 1 on a TPU host
        run.fail(str(e))
    folder = f"{root}/.submitit"
    parameters = {
        "timeout_min": _SLURM_TIME.value,
        "gpus_per_node": _SLURM_GPUS.value,
        "cpus_per_task": _SLURM_CPUS.value,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    optional = {
        "slurm_partition": _SLURM_PARTITION.value,
        "mem_gb": _SLURM_MEM.value,
        "slurm_array_parallelism": _SLURM_ARRAY.value,
    }
    parameters.update({k: v for k, v in optional.items() if v is not None})
    for text in _SLURM_PARAMS.value:
        key, sep, value = text.partition("=")
        if not sep or not key:
            run.fail(f"--slurm_param={text!r} is not KEY=VALUE (e.g. slurm_account=abc)")
        parameters[key.strip()] = grid.literal(value.strip())
    try:
        return grid.Submitit.slurm(folder, **parameters)
    except (NameError, TypeError, ValueError, RuntimeError) as e:  # unknown parameter, no srun
        run.fail(f"--executor=slurm: {' '.join(str(e).split())}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if any(a in HELP_FLAGS for a in argv[1:]):
        print_help()
        return 0
    base, workdir = run.parse(argv)
    try:  # axis values are typed and checked before JAX is imported
        axes = grid.load_sweep_axes(flags.FLAGS["config"].config_filename)
        axes.update(grid.parse_axis(a) for a in _AXES.value)
        axes = grid.typed_axes(base, axes)
    except ValueError as e:
        run.fail(str(e))
    executor = make_executor(workdir)

    try:  # JAX is imported only where cells train (here too when they run in this process)
        results = grid.run_grid(base, axes, workdir, executor=executor)
    except ValueError as e:  # a cell the runner refuses (ConfigError)
        run.fail(str(e))
    print(f"sweep {workdir}: {grid.summarize(results)}", file=sys.stderr)
    for r in grid.failed(results):
        print(f"  failed {r.name}: {r.error}", file=sys.stderr)
    if any(r.status in ("interrupted", "not run") for r in results):
        print("interrupted: rerun the same command to finish the remaining cells", file=sys.stderr)
        return 130
    if grid.failed(results):
        print("rerun the same command to retry the failed cells", file=sys.stderr)
        return 1
    print(f"report: python -m experiments.report {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
