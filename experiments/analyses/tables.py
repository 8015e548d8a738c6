"""Rows of the analyses' markdown tables, the statistics in them, and the markdown itself."""

from __future__ import annotations

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


def median_or_dash(x: np.ndarray) -> str:
    return fmt(float(np.median(x))) if x.size else "–"


def outcome_row(c: Outcomes) -> dict:
    """Seeds that reached eps, how fast, and where the others ended."""
    steps = c.steps[c.converged]
    return {
        "cell": c.name,
        "seeds": len(c.seeds),
        "reached eps": f"{int(c.converged.sum())}/{len(c.seeds)}",
        "fraction": fmt(float(c.converged.mean()), 2),
        "median steps to eps": str(int(np.median(steps))) if steps.size else "–",
        "final/initial loss: median [min, max]": quantiles(c.relative_final_loss),
        "final loss median": fmt(float(np.nanmedian(c.final_loss))),
        "diverged": str(int(c.diverged.sum())),
    }


def stall_row(c: Outcomes) -> dict:
    """Is a seed that missed eps at a stationary point (small gradient, monotone loss) or
    oscillating (large gradient, loss going up and down: step size above 2 / sharpness)?"""
    no = ~c.converged
    row = {"cell": c.name, "not reached": str(int(no.sum()))}
    for label, mask in (("reached", c.converged), ("not reached", no)):
        g, up = c.final_grad_norm[mask], c.loss_increases[mask]
        row[f"final grad norm ({label})"] = fmt(float(np.nanmedian(g))) if g.size else "–"
        row[f"logged steps with loss up ({label})"] = (
            f"{100 * float(np.nanmedian(up)):.0f}%" if up.size else "–"
        )
    return row


def init_row(c: Outcomes, quantities=INIT_QUANTITIES) -> dict:
    """Step-0 theory quantities among seeds that reached eps and those that did not, and their
    rank correlation with log(final/initial loss)."""
    row = {"cell": c.name}
    log_rel = np.log10(np.maximum(c.relative_final_loss, 1e-30))
    for q in quantities:
        v = c.init[q]
        row[f"{SHORT[q]} conv."] = median_or_dash(v[c.converged])
        row[f"{SHORT[q]} not conv."] = median_or_dash(v[~c.converged])
        row[f"ρ({SHORT[q]}, final loss)"] = fmt(spearman(v, log_rel), 2)
    return row


def sharpness_row(c: Outcomes, measured: list[dict], learning_rate: float) -> dict:
    """Sharpness at the end and at the teacher's minimum against the GD stability limit
    ``2 / lr``. ``measured``: the ``sharpness.json`` of each run pooled into ``c``, in order."""
    row = {"cell": c.name, "2 / lr": fmt(2.0 / learning_rate, 3)}
    for key, what in (("final", "at the end"), ("teacher", "at the teacher's W_Q")):
        if not all(key in m for m in measured):
            continue
        lam = np.concatenate([np.asarray(m[key], float) for m in measured])
        for label, mask in (("reached", c.converged), ("not reached", ~c.converged)):
            value = median_or_dash(lam[mask])
            if mask.any() and mask.sum() <= 6:  # few seeds: list them all
                value = ", ".join(fmt(float(x)) for x in np.sort(lam[mask]))
            row[f"sharpness {what} ({label})"] = value
        above = int(np.sum(lam > 2.0 / learning_rate))
        row[f"seeds with sharpness {what} > 2 / lr"] = f"{above}/{len(lam)}"
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


def header(title: str, root: pathlib.Path, cells: list[Outcomes]) -> str:
    thr = cells[0].threshold
    text = f"# {title}\n\nRun directory: `{root}`. "
    if math.isfinite(thr) and thr > 0:
        text += f"eps: loss <= {thr:g} x the seed's initial loss. "
    return text + "\n\n"


def write(root: pathlib.Path, kind: str, text: str) -> str:
    """Writes ``root/ablation_<kind>.md``; returns the text."""
    (root / f"ablation_{kind}.md").write_text(text)
    return text
