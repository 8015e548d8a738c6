"""Rows of the analyses' markdown tables, the statistics in them, and the markdown itself."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from scipy import stats

from experiments.analyses.cells import INIT_QUANTITIES, Outcomes

SHORT = {
    "sigma_min_attention_output": "σmin(Φ)",
    "sv_ratio_q_v": "σmin(W_Q)/σmax(W_V)",
    "sv_ratio_k_v": "σmin(W_K)/σmax(W_V)",
}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the pairs where both are finite (ties get average ranks);
    nan with fewer than 3 pairs or a constant side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def quantiles(x: np.ndarray) -> str:
    """``median [min, max]`` of the finite values."""
    x = x[np.isfinite(x)]
    if not x.size:
        return "–"
    q = np.quantile(x, [0.0, 0.5, 1.0])
    return f"{q[1]:.1e} [{q[0]:.0e}, {q[2]:.0e}]"


def spread(x: np.ndarray) -> str:
    """``4.3 [2.1, 7.4]`` (median [min, max], 2 significant digits), or the one value when
    they all agree."""
    x = x[np.isfinite(x)]
    if not x.size:
        return "–"
    lo, mid, hi = np.quantile(x, [0.0, 0.5, 1.0])
    if np.isclose(lo, hi, rtol=1e-6, atol=0.0):
        return fmt(float(mid))
    return f"{mid:.2g} [{lo:.2g}, {hi:.2g}]"


def median_or_dash(x: np.ndarray) -> str:
    return fmt(float(np.median(x))) if x.size else "–"


CRITERIA = {  # label in the tables -> (Outcomes field: reached, Outcomes field: steps)
    "eps": ("converged", "steps"),
    "baseline": ("converged_baseline", "steps_baseline"),
}


def by_draw(c: Outcomes) -> list[np.ndarray]:
    """One boolean mask over the cell's seeds per data draw, in first-seen order."""
    return [c.draw == d for d in c.draws]


def per_draw_counts(flags: np.ndarray, c: Outcomes) -> str:
    """``16, 12, 3``: how many seeds of each draw have the flag."""
    return ", ".join(str(int(flags[m].sum())) for m in by_draw(c))


def median_steps(steps: np.ndarray, reached: np.ndarray, c: Outcomes) -> str:
    """Median steps over the seeds that reached the criterion, pooled over draws; with several
    draws followed by [min, max] of the per-draw medians (draws where none reached left out)."""
    pooled = steps[reached]
    if not pooled.size:
        return "–"
    text = str(int(np.median(pooled)))
    per = [np.median(steps[m & reached]) for m in by_draw(c) if (m & reached).any()]
    if len(c.draws) > 1:
        text += f" [{int(min(per))}, {int(max(per))}]"
    return text


def criterion_columns(c: Outcomes, label: str) -> dict:
    """Seeds that reached the criterion (pooled, and per draw with several) and how fast."""
    reached, steps = (getattr(c, f) for f in CRITERIA[label])
    row = {f"reached {label}": f"{int(reached.sum())}/{len(c.seeds)}"}
    if len(c.draws) > 1:
        row[f"{label} per draw"] = per_draw_counts(reached, c)
    row[f"median steps to {label}"] = median_steps(steps, reached, c)
    return row


def outcome_row(c: Outcomes) -> dict:
    """Seeds that reached each criterion, how fast, and where the others ended; pooled over the
    cell's data draws, per draw where there are several."""
    multi = len(c.draws) > 1
    row = {"cell": c.name, **({"draws": str(len(c.draws))} if multi else {})}
    row["seeds"] = len(c.seeds)
    row.update(criterion_columns(c, "eps"))
    row.update(criterion_columns(c, "baseline"))
    if c.baseline_unknown.any():  # stopped at eps before the baseline level could be met
        row["baseline unknown"] = str(int(c.baseline_unknown.sum()))
    live = ~c.diverged  # a diverged seed's last finite loss says nothing about convergence
    row["final/initial loss: median [min, max]"] = quantiles(c.relative_final_loss[live])
    row["final/baseline loss: median [min, max]"] = quantiles(c.baseline_relative_final_loss[live])
    row["final loss median"] = fmt(float(np.nanmedian(c.final_loss[live])) if live.any() else None)
    row["diverged"] = str(int(c.diverged.sum()))
    if multi:
        row["diverged per draw"] = per_draw_counts(c.diverged, c)
    return row


def share_range(x: np.ndarray) -> str:
    """``12% [0%, 31%]``: median [min, max] of shares, '–' when empty."""
    x = x[np.isfinite(x)]
    if not x.size:
        return "–"
    lo, mid, hi = (100 * float(v) for v in np.quantile(x, [0.0, 0.5, 1.0]))
    return f"{mid:.0f}% [{lo:.0f}%, {hi:.0f}%]"


def stall_row(c: Outcomes) -> dict:
    """Is a seed that missed a criterion at a stationary point (small gradient, monotone loss)
    or oscillating (large gradient, loss going up and down: step size above 2 / sharpness)?
    Live seeds only (a diverged seed is neither)."""
    live = ~c.diverged
    missed_baseline = live & ~c.converged_baseline & ~c.baseline_unknown
    row = {"cell": c.name, "not reached eps": str(int((live & ~c.converged).sum()))}
    row["not reached baseline"] = str(int(missed_baseline.sum()))
    groups = (
        ("reached eps", live & c.converged),
        ("not reached eps", live & ~c.converged),
        ("not reached baseline", missed_baseline),
    )
    for label, mask in groups:
        g = c.final_grad_norm[mask]
        row[f"final grad norm ({label}): median [min, max]"] = quantiles(g) if g.size else "–"
        row[f"logged intervals with loss up ({label}): median [min, max]"] = share_range(
            c.loss_increases[mask]
        )
    return row


def draw_rows(cells: list[Outcomes], field: str = "model.kernel") -> list[dict]:
    """Per value of ``field`` and data draw: the baseline loss (the best constant predictor's,
    a property of the draw's targets) and the initial loss over all seeds of those cells."""
    from experiments.analyses.cells import field_of

    groups: dict[tuple[str, str], list[tuple[Outcomes, np.ndarray]]] = {}
    for c in cells:
        value = str(field_of(c, field))
        value = f"{c.group}/{value}" if c.group else value  # a nested sweep's own settings
        for draw, mask in zip(c.draws, by_draw(c), strict=True):
            groups.setdefault((value, draw), []).append((c, mask))
    rows = []
    for (value, draw), members in groups.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            baseline = np.concatenate(
                [c.final_loss[m] / c.baseline_relative_final_loss[m] for c, m in members]
            )
        initial = np.concatenate([c.initial_loss[m] for c, m in members])
        rows.append(
            {
                field.rsplit(".", 1)[-1]: value,
                "draw": draw,
                "baseline loss": spread(baseline),
                "initial loss": spread(initial),
                "initial/baseline loss": spread(initial / np.nanmedian(baseline)),
            }
        )
    return rows


def init_row(c: Outcomes, quantities=INIT_QUANTITIES) -> dict:
    """Step-0 theory quantities among seeds that reached eps and those that did not (for
    σmin(Φ) also split by the baseline criterion), and their rank correlation with
    log(final/initial loss), over the seeds of all the cell's draws."""
    row = {"cell": c.name}
    log_rel = np.log10(np.maximum(c.relative_final_loss, 1e-30))
    for q in quantities:
        v = c.init[q]
        row[f"{SHORT[q]} conv."] = median_or_dash(v[c.converged])
        row[f"{SHORT[q]} not conv."] = median_or_dash(v[~c.converged])
        if q == "sigma_min_attention_output":
            known = ~c.baseline_unknown
            row[f"{SHORT[q]} baseline"] = median_or_dash(v[c.converged_baseline])
            row[f"{SHORT[q]} not baseline"] = median_or_dash(v[known & ~c.converged_baseline])
        row[f"ρ({SHORT[q]}, final loss)"] = fmt(spearman(v, log_rel), 2)
    return row


def sharpness_row(c: Outcomes, measured: list[dict], learning_rate: float) -> dict:
    """Sharpness at the end and at the teacher's minimum against the GD stability limit
    ``2 / lr``, median [min, max] among the seeds that reached eps and those that did not, and
    how many of each are above the limit. ``measured``: the ``sharpness.json`` of each run
    pooled into ``c``, in order."""
    row = {"cell": c.name, "2 / lr": fmt(2.0 / learning_rate, 3)}
    for key, what in (("final", "at the end"), ("teacher", "at the teacher's W_Q")):
        if not all(key in m for m in measured):
            continue
        lam = np.concatenate([np.asarray(m[key], float) for m in measured])
        limit = 2.0 / learning_rate
        for label, mask in (("reached", c.converged), ("not reached", ~c.converged)):
            value = spread(lam[mask])
            if mask.any() and mask.sum() <= 6:  # few seeds: list them all
                value = ", ".join(fmt(float(x)) for x in np.sort(lam[mask]))
            row[f"sharpness {what} ({label})"] = value
            row[f"{label} with sharpness {what} > 2 / lr"] = (
                f"{int(np.sum(lam[mask] > limit))}/{int(mask.sum())}"
            )
    return row


def markdown(rows: list[dict]) -> str:
    """A markdown table with the union of the rows' keys as columns (first-seen order)."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    for r in rows[1:]:
        columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "–")) for k in columns) + " |")
    return "\n".join(lines) + "\n"


def teacher_of(c: Outcomes) -> str:
    """Where the cell's targets come from, in words (from its config.json)."""
    data = c.config.get("data", {})
    name, kernel = data.get("name", "?"), data.get("teacher_kernel")
    if name == "student_teacher_regression":
        return (
            f"the student's own W_K, W_V and kernel ({kernel}) with an independent W_Q of scale "
            f"{data.get('teacher_q_scale')}"
        )
    if data.get("targets") == "teacher":
        return f"a random one-layer {kernel} teacher (its own W_Q, W_K, W_V)"
    return f"{name}, targets {data.get('targets', '?')}"


def draws_text(cells: list[Outcomes]) -> str:
    """How many data draws the cells rest on, and what the per-draw columns mean."""
    draws = sorted({d for c in cells for d in c.draws})
    if len(draws) <= 1:
        return f"One data draw (data.seed = {draws[0] if draws else '?'}). "
    return (
        f"Data draws: data.seed in {{{', '.join(draws)}}}; counts pool the seeds of every draw, "
        "'per draw' lists them draw by draw, and median steps are pooled over draws with "
        "[min, max] of the per-draw medians. "
    )


def header(title: str, root: pathlib.Path, cells: list[Outcomes]) -> str:
    thr, base = cells[0].threshold, cells[0].baseline_threshold
    text = f"# {title}\n\nRun directory: `{root}`. "
    if math.isfinite(thr) and thr > 0:
        text += f"eps: loss <= {thr:g} x the seed's initial loss. "
    if math.isfinite(base) and base > 0:
        text += (
            f"baseline: loss <= {base:g} x the best constant predictor's loss on the training "
            "targets (of the cell's draw). "
        )
    text += draws_text(cells)
    teachers = list(dict.fromkeys(teacher_of(c) for c in cells))
    text += f"Targets: {teachers[0]}. " if len(teachers) == 1 else ""
    return text + "\n\n"


def runtime(runs: list[Outcomes]) -> str:
    """How long the runs took, from their summaries (each run's own wall clock from start to
    end of training: compilation, steps, evaluation and checkpoints; not interpreter start)."""
    wall = [float(r.summary.get("wall_seconds") or 0.0) for r in runs]
    compile_ = [float(r.summary.get("compile_seconds") or 0.0) for r in runs]
    envs = {
        ", ".join(f"{k} {env.get(k)}" for k in ("backend", "jax", "flax", "optax", "python"))
        for env in (r.summary.get("environment", {}) for r in runs)
    }
    return (
        f"Runs: {len(runs)}, {sum(wall) / 60:.1f} min wall in total (summary.json "
        f"wall_seconds; {sum(compile_) / 60:.1f} min of it compiling), median "
        f"{float(np.median(wall)):.0f} s per run; on {'; '.join(sorted(envs))}.\n\n"
    )


def teacher_rows(cells: list[Outcomes]) -> str:
    """Per cell where its targets come from, when the cells differ (else the header says it)."""
    if len({teacher_of(c) for c in cells}) <= 1:
        return ""
    rows = [{"cell": c.name, "targets": teacher_of(c)} for c in cells]
    return "\n## Targets per cell\n\n" + markdown(rows)


def jsonable(x):
    """Non-finite floats as None (JSON has no nan), NumPy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write(root: pathlib.Path, kind: str, text: str, figures: dict | None = None) -> str:
    """Writes ``root/ablation_<kind>.md`` and, with ``figures`` (the numbers the verdicts cite:
    paired comparisons, per-seed values), ``root/ablation_<kind>.json``; returns the text."""
    (root / f"ablation_{kind}.md").write_text(text)
    if figures is not None:
        (root / f"ablation_{kind}.json").write_text(
            json.dumps(jsonable(figures), indent=1, sort_keys=True, allow_nan=False) + "\n"
        )
    return text
