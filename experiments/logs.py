"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard events, plots, tracking."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import platform
import sys

import jax
import numpy as np


def setup_logging(workdir: pathlib.Path) -> None:
    """Everything to ``log.txt``; orbax's own thread-level messages (logged through absl) stay
    out of the console, where the run's one-line outcome is what a user reads."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = _QuietFileHandler(workdir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    for console in root.handlers:
        if isinstance(console, logging.StreamHandler) and console.stream in (
            sys.stderr,
            sys.stdout,
        ):
            console.addFilter(_not_absl)


def _not_absl(record: logging.LogRecord) -> bool:
    return record.name != "absl"


class _QuietFileHandler(logging.FileHandler):
    """A log line that cannot be written (a full disk) is dropped, not a traceback on stderr:
    the failure itself is reported once, by the checkpoint or the metrics writer."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def environment() -> dict:
    """What a result depends on besides the config: versions, devices, XLA flags."""
    import flax
    import optax

    return {
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def summarize(
    outcome: dict,
    seeds,
    *,
    interrupted: bool,
    final_step: int,
    loss_threshold: float,
    baseline_loss: float | None,
    baseline_threshold: float,
    evaluation: dict,
    learning_rates=None,
    **extra,
) -> dict:
    """summary.json: run-level figures and one record per seed from that seed's own outcome.

    A seed is ``diverged`` (at ``diverged_at``), ``interrupted`` or ``done``; the run is
    ``diverged`` only when every seed diverged, and says how many did otherwise. Two
    convergence criteria are reported per seed: ``steps_to_threshold`` (loss <=
    ``loss_threshold x`` its initial loss) and ``steps_to_baseline`` (loss <=
    ``baseline_threshold x`` the loss of the best constant predictor, which a near-trivial fit
    cannot meet). ``learning_rates``: each seed's own, where they differ
    (``train.stable_step_fraction``).
    """
    alive = np.asarray(outcome["alive"])
    per_seed = []
    for i, seed in enumerate(seeds):
        initial, last = _float(outcome["initial_loss"][i]), _float(outcome["last_loss"][i])
        status = "diverged" if not alive[i] else ("interrupted" if interrupted else "done")
        per_seed.append(
            {
                "seed": seed,
                "status": status,
                "initial_loss": initial,
                "final_loss": last,
                "min_loss": _float(outcome["min_loss"][i]),
                "relative_final_loss": _ratio(last, initial),
                "baseline_relative_final_loss": _ratio(last, baseline_loss),
                "steps_to_threshold": _step(outcome["threshold_step"][i]),
                "steps_to_baseline": _step(outcome["baseline_step"][i]),
                "diverged_at": _step(outcome["diverged_at"][i]),
                **({} if learning_rates is None else {"learning_rate": learning_rates[i]}),
                **{
                    f"eval/{split}/{k}": _float(v[i])
                    for split, d in evaluation.items()
                    for k, v in d.items()
                },
            }
        )
    finals = [s["final_loss"] for s in per_seed if s["status"] != "diverged"]
    fraction = lambda key: float(np.mean([s[key] is not None for s in per_seed]))
    run_status = "interrupted" if interrupted else "done"
    if not alive.any():
        run_status = "diverged"
    return {
        "status": run_status,
        "num_seeds": len(per_seed),
        "num_diverged": int((~alive).sum()),
        "final_step": final_step,
        "loss_threshold": loss_threshold,
        "baseline_loss": baseline_loss,
        "baseline_threshold": baseline_threshold,
        "final_loss": float(np.mean(finals)) if finals else None,
        "fraction_converged": fraction("steps_to_threshold"),
        "fraction_converged_baseline": fraction("steps_to_baseline"),
        "evaluation": _finite_tree(evaluation),
        **extra,
        "seeds": per_seed,
    }


def _step(x) -> int | None:
    return int(x) if int(x) >= 0 else None


def _float(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _finite_tree(tree):
    """Non-finite floats as ``None``: summary.json stays valid JSON."""
    if isinstance(tree, dict):
        return {k: _finite_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_finite_tree(v) for v in tree]
    return _float(tree) if isinstance(tree, float | np.floating) else tree


def dumps(record: dict) -> str:
    """One JSON line; non-finite numbers become ``null`` and are named under ``nonfinite``."""
    bad = sorted(k for k, v in record.items() if _is_nonfinite(v))
    if bad:
        record = {**_finite_tree(record), "nonfinite": bad}
    return json.dumps(record, allow_nan=False)


def _is_nonfinite(v) -> bool:
    if isinstance(v, list):
        return any(_is_nonfinite(x) for x in v)
    return isinstance(v, float) and not np.isfinite(v)


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


class MetricWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard events (no TensorFlow).

    On resume, rows the restored state will regenerate are dropped: training rows of steps
    ``>= start`` and evaluation rows stamped ``> start`` (an evaluation after ``start`` steps
    was written before that checkpoint and is not redone). Torn lines are dropped too.
    """

    def __init__(self, workdir: pathlib.Path, seeds, *, start: int):
        self.path = workdir / "metrics.jsonl"
        self.seeds = list(seeds)
        self.kept = _truncate(self.path, start)
        self.file = self.path.open("a")
        self.tb = summary_writer_class()(str(workdir / "tensorboard"), flush_secs=30)

    def has_eval(self, step: int) -> bool:
        return any(r.get("eval") and r["step"] == step for r in self.kept)

    def write(self, step: int, metrics: dict, *, alive: np.ndarray) -> None:
        record: dict = {"step": int(step)}
        for name, values in metrics.items():
            values = np.asarray(values, np.float64)
            live = values[alive] if alive.any() else values
            record[name] = float(np.mean(live))
            if len(self.seeds) > 1:
                record[f"{name}/seeds"] = [float(v) for v in values]
            self.tb.add_scalar(name, record[name], step)
        if len(self.seeds) > 1:
            for seed, v in zip(self.seeds, record["loss/seeds"], strict=True):
                self.tb.add_scalar(f"loss_by_seed/{seed}", v, step)
        self._append(record)

    def write_eval(self, step: int, evaluation: dict) -> None:
        record: dict = {"step": int(step), "eval": True}
        for split, d in evaluation.items():
            for k, v in d.items():
                record[f"eval/{split}/{k}"] = float(np.mean(v))
                if len(self.seeds) > 1:
                    record[f"eval/{split}/{k}/seeds"] = [float(x) for x in v]
                self.tb.add_scalar(f"eval/{split}/{k}", record[f"eval/{split}/{k}"], step)
        self._append(record)

    def _append(self, record: dict) -> None:
        self.file.write(dumps(record) + "\n")
        self.file.flush()

    def sync(self) -> None:
        """Make every written row durable (before a checkpoint that counts on them)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
        self.tb.close()


class NullWriter:
    """What a process other than 0 writes: nothing (process 0 writes the run's files)."""

    kept: list = []

    def has_eval(self, step: int) -> bool:
        return True

    def write(self, *a, **k) -> None:
        pass

    write_eval = write

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def missing_rows(kept: list[dict], expected_steps) -> list[int]:
    """Logged steps that a resumed run expects before its start and the file lacks."""
    have = {r["step"] for r in kept if not r.get("eval")}
    return sorted(set(expected_steps) - have)


def _truncate(path: pathlib.Path, start: int) -> list[dict]:
    if not path.exists():
        return []
    kept, lines = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        step = record.get("step", 0)
        if step < start or (record.get("eval") and step == start):
            kept.append(record)
            lines.append(line)
    path.write_text("".join(f"{line}\n" for line in lines))
    return kept


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
        disable=not enabled,
    )  # fmt: skip


def plot_curves(workdir: pathlib.Path, learning_rate: float | list[float] | None = None) -> None:
    """``curves.png``: loss per seed (log scale), the training-dynamics norms, and where logged
    sigma_min(Phi) and the sharpness against ``2 / learning_rate`` (the edge of stability;
    one line per seed when each has its own rate)."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    records = [r for r in read_metrics(workdir) if not r.get("eval")]
    if not records:
        return
    panels = [("loss", True), ("grad_norm", True), ("dist_from_init", False)]
    panels += [
        (name, name == "sharpness")
        for name in ("sigma_min_attention_output", "sharpness")
        if any(name in r for r in records)
    ]
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels))
    for ax, (name, log) in zip(np.atleast_1d(axes), panels, strict=True):
        rows = [r for r in records if r.get(name) is not None]
        steps = [r["step"] for r in rows]
        if rows and f"{name}/seeds" in rows[0]:
            per_seed = np.array([[np.nan if v is None else v for v in r[f"{name}/seeds"]]
                                 for r in rows])  # fmt: skip
            ax.plot(steps, per_seed, lw=0.7, alpha=0.5)
        ax.plot(steps, [r[name] for r in rows], color="black", lw=1.6, label="mean")
        if name == "sharpness" and learning_rate:
            for i, rate in enumerate(np.atleast_1d(learning_rate)):
                label = "2 / lr" if np.ndim(learning_rate) == 0 else "2 / lr (per seed)"
                ax.axhline(2 / rate, color="red", ls="--", lw=0.8, label=None if i else label)
            ax.legend(fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(pathlib.Path(workdir) / "curves.png", dpi=110)
