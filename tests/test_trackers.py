"""What a run gives the trackers: TensorBoard hparams and per-seed scalars, and a Weights &
Biases run per workdir in offline mode (no network), resumed as one run, grouped by sweep."""

from __future__ import annotations

import json
import pathlib

import pytest

from configs import qk_frozen
from experiments import trackers, train


def smoke(**train_fields):
    config = qk_frozen.get_config("smoke")
    config.seeds = (0, 1)
    for name, value in train_fields.items():
        config.train[name] = value
    return config


def events(logdir: pathlib.Path) -> dict[str, list]:
    """``{tag: [(step, value), ...]}`` of the scalars and the plugin data of ``logdir``'s
    events files (tensorboardX writes the TensorFlow event protocol)."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):  # records: length (8), crc (4), payload, crc (4)
            length = int.from_bytes(data[at : at + 8], "little")
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 16 + length
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                found.setdefault(value.tag, []).append((event.step, plugin or value.simple_value))
    return found


def test_tensorboard_has_each_seed_and_the_config_as_hparams(tmp_path):
    summary = train.train_and_evaluate(smoke(), tmp_path)
    mean = events(tmp_path / "tensorboard")
    assert [step for step, _ in mean["loss"]] == [0, 5, 10, 15, 19]
    assert mean["_hparams_/experiment"] and mean["_hparams_/session_start_info"]
    assert mean["summary/final_loss"][0][1] == pytest.approx(summary["final_loss"])
    for index, seed in enumerate((0, 1)):
        own = events(tmp_path / "tensorboard" / f"seed={seed}")
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
        losses = [r["loss/seeds"][index] for r in rows if not r.get("eval")]
        assert [v for _, v in own["loss"]] == pytest.approx(losses)
        assert "grad_norm" in own and any(tag.startswith("eval/") for tag in own)


def test_hparams_are_scalars_without_tracker_settings():
    config = json.loads(smoke().to_json_best_effort())
    flat = trackers.hparams({**config, "provenance": {"git_commit": "abc"}})
    assert flat["model.kernel"] == "softmax" and flat["seeds"] == "[0, 1]"
    assert not any(k.startswith(("logging.", "provenance.")) for k in flat)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())


def test_wandb_offline_one_run_per_workdir_resumed_and_grouped_by_sweep(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    root = tmp_path / "grid"
    root.mkdir()
    (root / "sweep.json").write_text('{"axes": {}, "cells": []}\n')
    workdir = root / "model.kernel=softmax"
    config = smoke(num_steps=10)
    config.logging.wandb = True
    train.train_and_evaluate(config, workdir)
    config.train.num_steps = 20  # resumed: the same W&B run
    train.train_and_evaluate(config, workdir)

    runs = sorted((workdir / "wandb").glob("offline-run-*"))
    run_id = trackers.wandb_run_id(workdir)
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # one id, resumed
    for run_dir in runs:  # the records `wandb sync` would upload: config, group, figures
        records = (run_dir / f"run-{run_id}.wandb").read_bytes()
        for word in (b"model.kernel", b"softmax", b"grid", b"loss/seed=1", b"summary/final_loss"):
            assert word in records, word
    assert trackers.sweep_root(workdir) == root.resolve()
    assert trackers.wandb_run_id(workdir) != trackers.wandb_run_id(root / "other")
    assert wandb.run is None  # every run finished: nothing left open in the process
