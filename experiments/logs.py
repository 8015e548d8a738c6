"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard events, plots, tracking."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import pathlib
import platform
import subprocess
import sys
import time

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


PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "diffrax", "grain")


def provenance() -> dict:
    """What made a run: this package's version, the git commit of the checkout it ran from
    (``None`` for an installed package or without git) and whether that checkout had changes,
    and the versions of the libraries the numbers depend on."""
    import attn_dynamics

    return {
        "attn_dynamics": attn_dynamics.__version__,
        **git_state(pathlib.Path(__file__).resolve().parents[1]),
        "packages": {name: _installed_version(name) for name in PROVENANCE_PACKAGES},
    }


def git_state(checkout: pathlib.Path) -> dict:
    """``{'git_commit', 'git_dirty'}`` of ``checkout`` if it is a git work tree's root, else
    ``None`` for both (never an error: a wheel has no checkout, a machine may lack git). A
    folder inside some other repository (a venv in a project) is not the checkout."""
    unknown = {"git_commit": None, "git_dirty": None}
    if not (checkout / ".git").exists():
        return unknown

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True,
                             text=True, timeout=30, check=True)  # fmt: skip
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"git_commit": commit or None, "git_dirty": bool(changes)}


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """What a result depends on besides the config: versions (:func:`provenance`), devices,
    XLA flags."""
    made_by = provenance()
    return {
        **made_by["packages"],
        "attn_dynamics": made_by["attn_dynamics"],
        "git_commit": made_by["git_commit"],
        "git_dirty": made_by["git_dirty"],
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


class MetricWriter:
    """metrics.jsonl (one object per logged step) and the trackers (:mod:`experiments.trackers`:
    TensorBoard events, W&B when asked).

    On resume, rows the restored state will regenerate are dropped: training rows of steps
    ``>= start`` and evaluation rows stamped ``> start`` (an evaluation after ``start`` steps
    was written before that checkpoint and is not redone). Torn lines are dropped too.
    """

    def __init__(self, workdir: pathlib.Path, seeds, *, start: int, config_json: dict):
        from experiments import trackers

        self.path = workdir / "metrics.jsonl"
        self.seeds = list(seeds)
        self.kept = _truncate(self.path, start)
        self.file = self.path.open("a")
        self.trackers = trackers.open_trackers(workdir, seeds, start=start,
                                               config_json=config_json)  # fmt: skip

    def has_eval(self, step: int) -> bool:
        return any(r.get("eval") and r["step"] == step for r in self.kept)

    def write(self, step: int, metrics: dict, *, alive: np.ndarray) -> None:
        record: dict = {"step": int(step)}
        means, per_seed = {}, {}
        for name, values in metrics.items():
            values = np.asarray(values, np.float64)
            live = values[alive] if alive.any() else values
            record[name] = means[name] = float(np.mean(live))
            if len(self.seeds) > 1:
                record[f"{name}/seeds"] = per_seed[name] = [float(v) for v in values]
        self._track(step, means, per_seed)
        self._append(record)

    def write_eval(self, step: int, evaluation: dict) -> None:
        record: dict = {"step": int(step), "eval": True}
        means, per_seed = {}, {}
        for split, d in evaluation.items():
            for k, v in d.items():
                name = f"eval/{split}/{k}"
                record[name] = means[name] = float(np.mean(v))
                if len(self.seeds) > 1:
                    record[f"{name}/seeds"] = per_seed[name] = [float(x) for x in v]
        self._track(step, means, per_seed)
        self._append(record)

    def _track(self, step: int, means: dict, per_seed: dict) -> None:
        for tracker in self.trackers:
            tracker.log(step, means, per_seed)

    def _append(self, record: dict) -> None:
        self.file.write(dumps(record) + "\n")
        self.file.flush()

    def sync(self) -> None:
        """Make every written row durable (before a checkpoint that counts on them)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def finish(self, summary: dict) -> None:
        """The run's summary to the trackers (hparams with the final figures, ...)."""
        for tracker in self.trackers:
            tracker.finish(summary)

    def close(self) -> None:
        self.file.close()
        for tracker in self.trackers:
            tracker.close()


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

    def finish(self, summary: dict) -> None:
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


def progress_bar(enabled: bool, start: int, total: int, stream=None):
    """tqdm's bar on a terminal; elsewhere (a pipe, a batch system's log) one line a minute,
    so a log gets no carriage-return updates."""
    from tqdm.auto import tqdm

    stream = sys.stderr if stream is None else stream
    if enabled and not _is_terminal(stream):
        return LineProgress(start, total, stream)
    return tqdm(
        total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
        disable=not enabled, file=stream,
    )  # fmt: skip


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file
        return False


class LineProgress:
    """The progress bar's interface (``update``, ``set_postfix``, ``close``) as a line of text
    every ``every_seconds``: ``train: step 1200/5000 (24%), 35.2 step/s, loss=1.2e-03``."""

    def __init__(self, start: int, total: int, stream, every_seconds: float = 60.0):
        self.n, self.total, self.stream, self.every = start, total, stream, every_seconds
        self.postfix: dict = {}
        self.t0 = self.last = time.monotonic()
        self.n0 = start

    def update(self, steps: int = 1) -> None:
        self.n += steps
        now = time.monotonic()
        if now - self.last >= self.every or self.n >= self.total:
            self.last = now
            self._print(now)

    def set_postfix(self, **postfix) -> None:
        self.postfix = postfix

    def _print(self, now: float) -> None:
        rate = (self.n - self.n0) / max(now - self.t0, 1e-9)
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        percent = 100 * self.n / max(self.total, 1)
        print(f"train: step {self.n}/{self.total} ({percent:.0f}%), {rate:.1f} step/s{extra}",
              file=self.stream, flush=True)  # fmt: skip

    def close(self) -> None:
        pass


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
