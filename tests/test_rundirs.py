"""experiments.rundirs: reading run directories, damaged files as one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from experiments import rundirs


def _run(path, *, rows=(), summary=None, config=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"seeds": [0]}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


ROWS = [
    {"step": 0, "loss": 2.5},
    {"step": 5, "loss": 1.25},
    {"step": 5, "eval": True, "eval/test/accuracy": 0.5},
]


def test_reads_config_metrics_evals_and_summary(tmp_path):
    run = _run(tmp_path / "r", rows=ROWS, summary={"status": "done"}, config={"seeds": [3, 4]})
    assert rundirs.read_config(run) == {"seeds": [3, 4]}
    assert rundirs.read_metrics(run) == ROWS[:2]
    assert rundirs.read_evals(run) == ROWS[2:]
    assert rundirs.read_summary(run) == {"status": "done"}


def test_unfinished_run_has_no_summary(tmp_path):
    assert rundirs.read_summary(_run(tmp_path / "r", rows=ROWS)) is None


def test_non_finite_numbers_of_older_runs_are_read(tmp_path):
    run = _run(tmp_path / "r")
    (run / "metrics.jsonl").write_text('{"step": 0, "loss": NaN, "g": Infinity}\n')
    (run / "summary.json").write_text('{"status": "diverged", "final_loss": -Infinity}')
    (row,) = rundirs.read_metrics(run)
    assert math.isnan(row["loss"]) and row["g"] == math.inf
    assert rundirs.read_summary(run)["final_loss"] == -math.inf


def test_torn_last_metrics_row_is_skipped_with_a_warning(tmp_path):
    run = _run(tmp_path / "r", rows=ROWS[:2])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "lo')
    with pytest.warns(UserWarning, match="torn last line 3"):
        assert rundirs.read_metrics(run) == ROWS[:2]


def test_damaged_row_inside_metrics_is_an_error(tmp_path):
    run = _run(tmp_path / "r")
    (run / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(rundirs.RunDirError, match=r"metrics.jsonl: line 2 is not JSON") as e:
        rundirs.read_metrics(run)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_torn_json_file_names_the_file_and_the_recovery(tmp_path, name):
    run = _run(tmp_path / "r", summary={"status": "done"})
    (run / name).write_text('{"status": "do')
    read = rundirs.read_config if name == "config.json" else rundirs.read_summary
    with pytest.raises(rundirs.RunDirError) as e:
        read(run)
    message = str(e.value)
    assert str(run / name) in message and "rerun" in message and "\n" not in message
    assert isinstance(e.value, ValueError)


def test_missing_config_is_not_a_run_directory(tmp_path):
    with pytest.raises(rundirs.RunDirError, match="not a run directory"):
        rundirs.read_config(tmp_path)


def test_list_cells_from_the_index_in_grid_order_with_nested_sweeps(tmp_path):
    root = tmp_path / "grid"
    b = _run(root / "model.kernel=softmax")
    a = _run(root / "model.kernel=gaussian")
    _run(root / "stale-run")  # not in the index: a leftover of another grid
    nested = _run(root / "sub" / "seeds=(0, 1)")
    index = {"axes": {}, "cells": [{"name": b.name, "model.kernel": "softmax"}]}
    index["cells"].append({"name": a.name, "model.kernel": "gaussian"})
    (root / "sweep.json").write_text(json.dumps(index))
    (root / "sub" / "sweep.json").write_text(
        json.dumps({"axes": {}, "cells": [{"name": nested.name, "seeds": [0, 1]}]})
    )
    cells = rundirs.list_cells(root)
    assert [c.name for c in cells] == [b.name, a.name, f"sub/{nested.name}"]
    assert [c.path for c in cells] == [b, a, nested]
    assert cells[0].overrides == {"model.kernel": "softmax"}
    assert cells[2].overrides == {"seeds": [0, 1]}


def test_list_cells_without_an_index_finds_every_run(tmp_path):
    runs = [_run(tmp_path / "x" / "b"), _run(tmp_path / "a")]
    (tmp_path / "a" / "checkpoints").mkdir()
    cells = rundirs.list_cells(tmp_path)
    assert [c.name for c in cells] == ["a", "x/b"]
    assert [c.path for c in cells] == runs[::-1]
    assert all(c.overrides == {} for c in cells)
    assert rundirs.list_cells(runs[1])[0].path == runs[1]  # a run directory itself


def test_torn_index_is_one_line(tmp_path):
    (tmp_path / "sweep.json").write_text('{"cells": [')
    with pytest.raises(rundirs.RunDirError, match="sweep.json: not valid JSON"):
        rundirs.list_cells(tmp_path)
