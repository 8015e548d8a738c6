"""Run a grid of configs into one directory tree: ``attn-dynamics-sweep`` (= ``python -m
experiments.sweep``).

    attn-dynamics-sweep --config=qk_frozen --workdir=runs/grid \\
        --axis=model.kernel=softmax,gaussian --axis=train.trainable=QKV,V,Q
    attn-dynamics-sweep ... --parallel=4                  # 4 cells at once, here
    attn-dynamics-sweep ... --executor=slurm --slurm_partition=gpu --slurm_time=120

The grid is the product of the config file's ``get_sweep()`` axes (if it defines one) and the
``--axis`` flags (which replace an axis of the same name); with neither, the sweep refuses
unless ``--single_cell`` asks for the base config as its one cell. Values are Python literals
cast to the field's type (``--axis=model.sigma2=4,8``, ``--axis=seeds=(0,1),(2,3)``,
``--axis=train.stop_at_threshold=True,False``); anything else is a string. Every cell is a run
directory ``WORKDIR/<field>=<value>,...`` listed in ``WORKDIR/sweep.json``; rerunning skips
finished cells and retries failed ones. ``attn-dynamics-report WORKDIR`` tabulates them. The
work is :func:`experiments.grid.run_grid`.

Exit status: 0 every cell finished (done or diverged), 1 some cell failed, 2 bad input,
130 interrupted.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from experiments import cli, grid, run

# The names notebooks and tests use (kept here; the implementation is experiments.grid).
cells, cell_name, set_field, get_field = grid.cells, grid.cell_name, grid.set_field, grid.get_field
is_finished, load_sweep_axes = grid.is_finished, grid.load_sweep_axes

MULTI_HOST_FLAGS = ("coordinator_address", "num_processes", "process_id", "distributed")


@dataclasses.dataclass(frozen=True)
class SweepFlags:
    axis: flags.FlagHolder
    single_cell: flags.FlagHolder
    parallel: flags.FlagHolder
    executor: flags.FlagHolder
    slurm_partition: flags.FlagHolder
    slurm_time: flags.FlagHolder
    slurm_gpus_per_cell: flags.FlagHolder
    slurm_cpus_per_cell: flags.FlagHolder
    slurm_mem_gb: flags.FlagHolder
    slurm_array_parallelism: flags.FlagHolder
    slurm_param: flags.FlagHolder


def define_flags(fv: flags.FlagValues) -> SweepFlags:
    """The sweep's own flags (the run's are defined by :func:`experiments.run.parse`)."""
    return SweepFlags(
        axis=flags.DEFINE_multi_string(
            "axis",
            [],
            "FIELD=V1,V2,...: a grid axis over a config field (dotted path).",
            flag_values=fv,
        ),
        single_cell=flags.DEFINE_boolean(
            "single_cell",
            False,
            "With no --axis and no get_sweep() in the config: run the base config as the one "
            "cell of the sweep (else that is refused: a sweep with nothing to vary is usually a "
            "forgotten --axis).",
            flag_values=fv,
        ),
        parallel=flags.DEFINE_integer(
            "parallel",
            1,
            "Cells at once: worker processes on this machine (local), or in-flight jobs "
            "(local_submitit). Each worker gets its own GPUs, or its share of the CPU cores.",
            flag_values=fv,
        ),
        executor=flags.DEFINE_enum(
            "executor",
            "local",
            ["local", "slurm", "local_submitit"],
            "Where cells run: this machine (serial, or --parallel worker processes), SLURM jobs "
            "through submitit, or submitit's local executor (the SLURM code path, here).",
            flag_values=fv,
        ),
        slurm_partition=flags.DEFINE_string(
            "slurm_partition", None, "SLURM partition.", flag_values=fv
        ),
        slurm_time=flags.DEFINE_integer(
            "slurm_time", 60, "Time limit per cell, minutes.", flag_values=fv
        ),
        slurm_gpus_per_cell=flags.DEFINE_integer(
            "slurm_gpus_per_cell", 1, "GPUs per cell (SLURM).", flag_values=fv
        ),
        slurm_cpus_per_cell=flags.DEFINE_integer(
            "slurm_cpus_per_cell", 4, "CPU cores per cell (SLURM).", flag_values=fv
        ),
        slurm_mem_gb=flags.DEFINE_integer(
            "slurm_mem_gb", None, "Memory per cell, GB (SLURM).", flag_values=fv
        ),
        slurm_array_parallelism=flags.DEFINE_integer(
            "slurm_array_parallelism",
            None,
            "At most this many cells running at once (SLURM).",
            flag_values=fv,
        ),
        slurm_param=flags.DEFINE_multi_string(
            "slurm_param",
            [],
            "KEY=VALUE: any other submitit AutoExecutor parameter, e.g. slurm_account=abc, "
            "slurm_qos=high, slurm_constraint=a100 (VALUE a Python literal or a string).",
            flag_values=fv,
        ),
    )


def usage(argv: list[str] | None = None, *, full: bool = False) -> str:
    prog = cli.program(argv, "sweep")
    fv = flags.FlagValues()
    run.define_flags(fv, [prog])
    define_flags(fv)
    return cli.help_text(
        f"usage: {prog} --config=FILE[:VARIANT] --workdir=DIR --axis=FIELD=V1,V2 [--axis=...] "
        "[--config.FIELD=VALUE ...] [--parallel=N | --executor=slurm ...]",
        "Train every cell of a grid over config fields, each a resumable run directory under "
        "--workdir (listed in its sweep.json); seeds are vmapped inside a cell. Rerunning the "
        "same command skips finished cells and retries failed ones.",
        [*run.config_rows(), *cli.flag_rows(fv, skip=("config", *MULTI_HOST_FLAGS))],
        epilog=f"then: {cli.program(argv, 'report')} WORKDIR (tables and curves)\n\n"
        "exit status: 0 every cell finished (done or diverged); 1 some cell failed; 2 bad\n"
        "input (one line on stderr); 130 interrupted.",
        full=full,
    )


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parsed, validated sweep command line."""

    run: run.Invocation
    flags: SweepFlags
    axes: dict


def parse(argv: list[str]) -> Sweep:
    """The sweep's command line, validated and its axes typed before JAX is imported; or exit
    2 with one line."""
    fv = flags.FlagValues()
    sweep_flags = define_flags(fv)
    invocation = run.parse(argv, fv)
    if run.cluster(invocation.flags).wanted:
        cli.fail("a sweep runs each cell in a process of its own; the multi-host flags are "
                 "for attn-dynamics-run")  # fmt: skip
    try:
        axes = grid.load_sweep_axes(fv["config"].config_filename)
        axes.update(grid.parse_axis(a) for a in sweep_flags.axis.value)
        axes = grid.typed_axes(invocation.config, axes)
    except ValueError as e:
        cli.fail(e)
    if not axes and not sweep_flags.single_cell.value:
        cli.fail(
            "nothing to sweep: give --axis=FIELD=V1,V2 (repeatable), or --single_cell to run "
            "the base config as the sweep's one cell (a single run: attn-dynamics-run)"
        )
    if sweep_flags.parallel.value < 1:
        cli.fail(f"--parallel must be >= 1, got {sweep_flags.parallel.value}")
    return Sweep(invocation, sweep_flags, axes)


def make_executor(f: SweepFlags, root: str):
    """The executor the flags ask for (submitit is imported only when used)."""
    kind = f.executor.value
    try:
        if kind == "local":
            return grid.InProcess() if f.parallel.value == 1 else grid.ProcessPool(f.parallel.value)
        if kind == "local_submitit":
            folder = f"{root}/.submitit"
            return grid.Submitit.local(folder, f.parallel.value, timeout_min=f.slurm_time.value)
    except ValueError as e:  # e.g. --parallel > 1 on a TPU host
        cli.fail(str(e))
    folder = f"{root}/.submitit"
    parameters = {
        "timeout_min": f.slurm_time.value,
        "gpus_per_node": f.slurm_gpus_per_cell.value,
        "cpus_per_task": f.slurm_cpus_per_cell.value,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    optional = {
        "slurm_partition": f.slurm_partition.value,
        "mem_gb": f.slurm_mem_gb.value,
        "slurm_array_parallelism": f.slurm_array_parallelism.value,
    }
    parameters.update({k: v for k, v in optional.items() if v is not None})
    for text in f.slurm_param.value:
        key, sep, value = text.partition("=")
        if not sep or not key:
            cli.fail(f"--slurm_param={text!r} is not KEY=VALUE (e.g. slurm_account=abc)")
        parameters[key.strip()] = grid.literal(value.strip())
    try:
        return grid.Submitit.slurm(folder, **parameters)
    except (NameError, TypeError, ValueError, RuntimeError) as e:  # unknown parameter, no srun
        cli.fail(f"--executor=slurm: {' '.join(str(e).split())}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if kind := cli.help_requested(argv[1:]):
        print(usage(argv, full=kind == "full"), end="")
        return 0
    sweep = parse(argv)
    workdir = sweep.run.workdir
    if not sweep.run.workdir_given:
        resume = run.resume_command(sweep.run, "sweep")
        print(f"workdir: {workdir} (resume: {resume})", file=sys.stderr)
    executor = make_executor(sweep.flags, workdir)

    try:  # JAX is imported only where cells train (here too when they run in this process)
        results = grid.run_grid(sweep.run.config, sweep.axes, workdir, executor=executor)
    except ValueError as e:  # a cell the runner refuses (ConfigError)
        cli.fail(e)
    print(f"sweep {workdir}: {grid.summarize(results)}", file=sys.stderr)
    for r in grid.failed(results):
        print(f"  failed {r.name}: {r.error}", file=sys.stderr)
    if any(r.status in ("interrupted", "not run") for r in results):
        print("interrupted: rerun the same command to finish the remaining cells", file=sys.stderr)
        return 130
    if grid.failed(results):
        print("rerun the same command to retry the failed cells", file=sys.stderr)
        return 1
    print(f"report: {cli.program(argv, 'report')} {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
