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
    logging.getLogger().setLevel(logging.INFO)
    handler = logging.FileHandler(workdir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)


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
    status: str,
    final_step: int,
    loss_threshold: float,
    evaluation: dict,
    **extra,
) -> dict:
    """summary.json: run-level figures and one record per seed from the tracked outcome."""
    per_seed = []
    for i, seed in enumerate(seeds):
        initial, last = _float(outcome["initial_loss"][i]), _float(outcome["last_loss"][i])
        hit, diverged = int(outcome["threshold_step"][i]), int(outcome["diverged_at"][i])
        per_seed.append(
            {
                "seed": seed,
                "status": status if outcome["alive"][i] else "diverged",
                "initial_loss": initial,
                "final_loss": last,
                "min_loss": _float(outcome["min_loss"][i]),
                "relative_final_loss": _ratio(last, initial),
                "steps_to_threshold": hit if hit >= 0 else None,
                "diverged_at": diverged if diverged >= 0 else None,
                **{
                    f"eval/{split}/{k}": v[i]
                    for split, d in evaluation.items()
                    for k, v in d.items()
                },
            }
        )
    finals = [s["final_loss"] for s in per_seed if s["final_loss"] is not None]
    return {
        "status": status,
        "final_step": final_step,
        "loss_threshold": loss_threshold,
        "final_loss": float(np.mean(finals)) if finals else None,
        "fraction_converged": float(
            np.mean([s["steps_to_threshold"] is not None for s in per_seed])
        ),
        "evaluation": evaluation,
        **extra,
        "seeds": per_seed,
    }


def _float(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


class MetricWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard events (no TensorFlow)."""

    def __init__(self, workdir: pathlib.Path, seeds, *, truncate_after: int):
        self.path = workdir / "metrics.jsonl"
        self.seeds = list(seeds)
        _truncate(self.path, truncate_after)
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)

    def write(self, step: int, metrics: dict, *, alive: np.ndarray) -> None:
        record: dict = {"step": int(step)}
        for name, values in metrics.items():
            if name == "finite":
                continue
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
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def _truncate(path: pathlib.Path, keep_before: int) -> None:
    """Drop records of steps >= keep_before (a resumed run regenerates them) and torn lines.

    Evaluation records are stamped with the number of steps done (the final one with the
    final step), so they follow the same rule."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if record.get("step", 0) < keep_before:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, start: int, total: int):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def plot_curves(workdir: pathlib.Path) -> None:
    """``curves.png``: loss per seed (log scale) and the training-dynamics norms."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    records = [r for r in read_metrics(workdir) if not r.get("eval")]
    if not records:
        return
    steps = np.array([r["step"] for r in records])
    panels = [("loss", True), ("grad_norm", True), ("dist_from_init", False)]
    if "sigma_min_attention_output" in records[0]:
        panels.append(("sigma_min_attention_output", False))
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels))
    for ax, (name, log) in zip(np.atleast_1d(axes), panels, strict=True):
        per_seed = [r.get(f"{name}/seeds") for r in records]
        if per_seed[0] is not None:
            ax.plot(steps, np.array(per_seed), lw=0.7, alpha=0.5)
        ax.plot(steps, [r[name] for r in records], color="black", lw=1.6, label="mean")
        ax.set_title(name)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(pathlib.Path(workdir) / "curves.png", dpi=110)
