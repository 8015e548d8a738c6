"""Experiment trackers a run writes besides ``metrics.jsonl``: TensorBoard, always, and Weights &
Biases when ``config.logging.wandb`` is on.

Each gets, per logged step, the mean over live seeds of every figure and each seed's own value,
and at the end the run's summary. Only process 0 of a run writes them (as every file).

* TensorBoard (``tensorboardX``, no TensorFlow): ``tensorboard/`` holds the means,
  ``tensorboard/seed=<s>/`` each seed's figures under the same tags (TensorBoard draws the
  seeds of a tag in one chart), and at the end the config as hparams beside the final figures
  (the HPARAMS tab compares runs). A resumed run purges the events after its checkpoint, which
  it writes again. View: ``pip install tensorboard; tensorboard --logdir runs/``.
* Weights & Biases: one run per workdir, its id derived from the workdir's path, so a resumed
  run continues the same W&B run; a sweep cell is grouped under its sweep root's name.
  ``WANDB_MODE=offline`` writes it under ``<workdir>/wandb/`` without a network
  (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import rundirs

SUMMARY_FIGURES = (
    "final_loss",
    "fraction_converged",
    "fraction_converged_baseline",
    "num_diverged",
)


def summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch: tensorboardX imports torch at
    module level only to recognise torch tensors (2.4 s of every run and sweep worker where
    torch is installed); it is given floats here."""
    if sys.modules.get("torch") is not None:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def hparams(config_json: Mapping) -> dict[str, Any]:
    """The config as flat ``{dotted field: scalar}`` (what TensorBoard's hparams take): lists
    as strings, unset fields left out; no tracker settings."""
    out = {}
    for key, value in rundirs.flatten(dict(config_json)).items():
        if key.startswith(("logging.", "provenance.")) or value is None or value == {}:
            continue
        out[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


def final_figures(summary: Mapping) -> dict[str, float]:
    """The summary's run-level figures that are numbers (``summary/<name>``)."""
    return {
        f"summary/{k}": float(summary[k])
        for k in SUMMARY_FIGURES
        if isinstance(summary.get(k), int | float)
    }


class TensorBoard:
    """``tensorboard/`` (means), ``tensorboard/seed=<s>/`` (per seed), hparams at the end."""

    def __init__(self, logdir: pathlib.Path, seeds: Sequence[int], *, start: int, config_json):
        writer = summary_writer_class()
        purge = start or None  # events after the checkpoint are written again: drop the old
        self.logdir = logdir
        self.mean = writer(str(logdir), flush_secs=30, purge_step=purge)
        self.seeds = {
            seed: writer(str(logdir / f"seed={seed}"), flush_secs=30, purge_step=purge)
            for seed in (seeds if len(seeds) > 1 else ())
        }
        self.config = hparams(config_json)

    def log(self, step: int, means: Mapping[str, float], per_seed: Mapping[str, Sequence]):
        for name, value in means.items():
            self.mean.add_scalar(name, value, step)
        for name, values in per_seed.items():
            for writer, value in zip(self.seeds.values(), values, strict=True):
                writer.add_scalar(name, value, step)

    def finish(self, summary: Mapping) -> None:
        from tensorboardX.summary import hparams as hparams_summary

        figures = final_figures(summary)
        for part in hparams_summary(self.config, figures):
            self.mean.file_writer.add_summary(part)
        for name, value in figures.items():
            self.mean.add_scalar(name, value, summary.get("final_step", 0))

    def close(self) -> None:
        for writer in (self.mean, *self.seeds.values()):
            writer.close()


def wandb_run_id(workdir: pathlib.Path) -> str:
    """The W&B id of the run in ``workdir``: the same on every resume (from its path)."""
    return hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:24]


def sweep_root(workdir: pathlib.Path) -> pathlib.Path | None:
    """The nearest folder above ``workdir`` holding a ``sweep.json``: the sweep it is a cell of."""
    for parent in workdir.resolve().parents:
        if (parent / rundirs.INDEX).is_file():
            return parent
    return None


class WandB:
    """One W&B run per workdir (resumed with it), grouped by sweep; figures as in TensorBoard,
    each seed's under ``<name>/seed=<s>``, and the summary at the end."""

    def __init__(self, workdir: pathlib.Path, seeds: Sequence[int], *, config_json, settings):
        import wandb

        root = sweep_root(workdir)
        group = settings.get("wandb_group") or (root.name if root else None)
        self.seeds = list(seeds)
        self.run = wandb.init(
            project=settings.get("wandb_project") or "attn-dynamics",
            entity=settings.get("wandb_entity"),
            group=group,
            name=str(workdir.relative_to(root)) if root else workdir.name,
            id=wandb_run_id(workdir),
            resume="allow",
            dir=str(workdir),
            config=hparams(config_json),
            reinit="create_new",  # a notebook or a serial sweep: several runs in one process
            settings=wandb.Settings(quiet=True),
        )
        logging.info("wandb run %s (%s)", self.run.id, self.run.url or "offline")

    def log(self, step: int, means: Mapping[str, float], per_seed: Mapping[str, Sequence]):
        row = dict(means)
        for name, values in per_seed.items():
            row.update({f"{name}/seed={s}": v for s, v in zip(self.seeds, values, strict=True)})
        # A resumed run regenerates the rows after its checkpoint; W&B keeps the first of a
        # step (they are identical), so those are dropped on its side, not here.
        self.run.log(row, step=step)

    def finish(self, summary: Mapping) -> None:
        self.run.summary.update({"status": summary.get("status"), **final_figures(summary)})

    def close(self) -> None:
        self.run.finish()


def open_trackers(workdir: pathlib.Path, seeds, *, start: int, config_json) -> list:
    """The trackers of a run: TensorBoard, and W&B when ``logging.wandb`` is on."""
    trackers: list = [
        TensorBoard(workdir / "tensorboard", seeds, start=start, config_json=config_json)
    ]
    settings = config_json.get("logging", {})
    if settings.get("wandb"):
        trackers.append(WandB(workdir, seeds, config_json=config_json, settings=settings))
    return trackers
