"""Analysis of the ablation sweeps: tables and plots from their run directories.

    python -m experiments.ablations kernel_subsets RUNDIR
    python -m experiments.ablations q_only RUNDIR
    python -m experiments.ablations overparam RUNDIR
    python -m experiments.ablations kernels RUNDIR       # real tasks: accuracy / loss vs steps
    python -m experiments.ablations extrapolation RUNDIR # position encodings vs eval length

RUNDIR is the ``--workdir`` of ``python -m experiments.sweep`` (one run directory per cell,
plus ``sweep.json``). Every command writes ``ablation_<kind>.md`` and its PNGs into RUNDIR and
prints the markdown. Nothing here trains; it only reads what the runner left (``summary.json``
per-seed outcomes, ``metrics.jsonl`` logged quantities, ``config.json``).

The theory analyses (``kernel_subsets``, ``q_only``, ``overparam``) report per cell: the
fraction of seeds whose loss reached ``loss_threshold x initial loss`` (eps), the median steps
to it, the distribution of final/initial loss, and the initialisation quantities of the theory
(sigma_min of the attention-output matrix Phi, sigma_min(W_Q)/sigma_max(W_V) and the same for
W_K, read at step 0) for converged against non-converged seeds.

This module also holds the data set of the Q-only ablation (:class:`StudentTeacherRegression`,
registered as ``student_teacher_regression``): targets that the student can reach exactly with
only W_Q trained, see ``configs/ablation_q_only.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys

import numpy as np

INIT_QUANTITIES = ("sigma_min_attention_output", "sv_ratio_q_v", "sv_ratio_k_v")
SHORT = {
    "sigma_min_attention_output": "σmin(Φ)",
    "sv_ratio_q_v": "σmin(W_Q)/σmax(W_V)",
    "sv_ratio_k_v": "σmin(W_K)/σmax(W_V)",
}


# --------------------------------------------------------------------------------------------
# Reading run directories


@dataclasses.dataclass
class Cell:
    """One run directory: its sweep fields and per-seed outcomes (arrays over seeds)."""

    name: str
    path: pathlib.Path
    fields: dict
    config: dict
    summary: dict
    seeds: np.ndarray
    converged: np.ndarray  # bool
    steps: np.ndarray  # steps to eps, nan where not reached
    initial_loss: np.ndarray
    final_loss: np.ndarray
    relative_final_loss: np.ndarray
    diverged: np.ndarray  # bool
    init: dict  # quantity -> per-seed values at step 0
    final_grad_norm: np.ndarray  # at the last logged step
    loss_increases: np.ndarray  # fraction of logged intervals over which the loss went up
    group: str = ""  # the sweep it belongs to, relative to the analysed root ("" top level)

    @property
    def threshold(self) -> float:
        return float(self.summary.get("loss_threshold", float("nan")))


def _f(x) -> float:
    return float("nan") if x is None else float(x)


def config_value(config: dict, field: str):
    node = config
    for key in field.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def read_metrics(path: pathlib.Path) -> list[dict]:
    f = path / "metrics.jsonl"
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def per_seed(record: dict, name: str, num_seeds: int) -> np.ndarray:
    """A logged quantity for every seed (``name/seeds`` when there are several seeds)."""
    if f"{name}/seeds" in record:
        return np.asarray(record[f"{name}/seeds"], float)
    if name in record and num_seeds == 1:
        return np.asarray([record[name]], float)
    return np.full(num_seeds, np.nan)


def load_cell(path: pathlib.Path, name: str | None = None, fields: dict | None = None) -> Cell:
    summary = json.loads((path / "summary.json").read_text())
    config = json.loads((path / "config.json").read_text())
    seeds = summary["seeds"]
    n = len(seeds)
    steps = np.array([_f(s["steps_to_threshold"]) for s in seeds])
    records = [r for r in read_metrics(path) if not r.get("eval")]
    first = next((r for r in records if r["step"] == 0), records[0] if records else {})
    init = {q: per_seed(first, q, n) for q in INIT_QUANTITIES}
    last = records[-1] if records else {}
    losses = np.array([per_seed(r, "loss", n) for r in records]).reshape(-1, n)
    increases = (
        np.mean(np.diff(losses, axis=0) > 0, axis=0) if len(losses) > 1 else np.full(n, np.nan)
    )
    return Cell(
        name=name or path.name,
        path=path,
        fields=dict(fields or {}),
        config=config,
        summary=summary,
        seeds=np.array([s["seed"] for s in seeds]),
        converged=np.isfinite(steps),
        steps=steps,
        initial_loss=np.array([_f(s["initial_loss"]) for s in seeds]),
        final_loss=np.array([_f(s["final_loss"]) for s in seeds]),
        relative_final_loss=np.array([_f(s.get("relative_final_loss")) for s in seeds]),
        diverged=np.array([s["status"] == "diverged" for s in seeds]),
        init=init,
        final_grad_norm=per_seed(last, "grad_norm", n),
        loss_increases=increases,
    )


def load_cells(root: pathlib.Path) -> list[Cell]:
    """The cells of a sweep in grid order (``sweep.json``), else every run under ``root``.

    Sweeps nested in ``root`` (a second ``experiments.sweep`` into a subdirectory, e.g. for
    a kernel that needs its own base config) are included after the top-level cells.
    """
    root = pathlib.Path(root)
    sweeps = sorted(root.rglob("sweep.json"), key=lambda p: (len(p.parts), str(p)))
    cells = []
    for sweep_file in sweeps:
        base = sweep_file.parent
        for entry in json.loads(sweep_file.read_text())["cells"]:
            entry = dict(entry)
            name = entry.pop("name")
            if (base / name / "summary.json").exists():
                label = str((base / name).relative_to(root))
                cell = load_cell(base / name, label, entry)
                cell.group = str(base.relative_to(root)) if base != root else ""
                cells.append(cell)
    if not sweeps:
        for summary in sorted(root.rglob("summary.json")):
            cells.append(load_cell(summary.parent, str(summary.parent.relative_to(root))))
    if not cells:
        raise FileNotFoundError(f"no finished run (summary.json) under {str(root)!r}")
    return cells


def field_of(cell: Cell, field: str):
    """A sweep field's value for the cell (from the sweep, else from its config.json)."""
    if field in cell.fields:
        return cell.fields[field]
    return config_value(cell.config, field)


def merge_seeds(cells: list[Cell], drop: tuple[str, ...]) -> list[Cell]:
    """Pool cells that differ only in the fields ``drop`` (e.g. one run per seed) into one."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        key = (c.group, *((k, str(v)) for k, v in c.fields.items() if k not in drop))
        groups.setdefault(key, []).append(c)
    merged = []
    for (group, *key), members in groups.items():

        def cat(attr, members=members):
            return np.concatenate([getattr(m, attr) for m in members])

        first = members[0]
        merged.append(
            Cell(
                name=(f"{group}/" if group else "")
                + (",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in key) or "all"),
                path=first.path.parent,
                fields={k: first.fields[k] for k, _ in key},
                config=first.config,
                summary=dict(first.summary, status=_worst([m.summary["status"] for m in members])),
                seeds=cat("seeds"),
                converged=cat("converged"),
                steps=cat("steps"),
                initial_loss=cat("initial_loss"),
                final_loss=cat("final_loss"),
                relative_final_loss=cat("relative_final_loss"),
                diverged=cat("diverged"),
                init={q: np.concatenate([m.init[q] for m in members]) for q in INIT_QUANTITIES},
                final_grad_norm=cat("final_grad_norm"),
                loss_increases=cat("loss_increases"),
                group=group,
            )
        )
    return merged


def _worst(statuses: list[str]) -> str:
    for s in ("failed", "interrupted", "diverged"):
        if s in statuses:
            return s
    return statuses[0] if statuses else "n/a"


# --------------------------------------------------------------------------------------------
# Statistics


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of the finite pairs (nan with fewer than 3)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def quantiles(x: np.ndarray) -> str:
    x = x[np.isfinite(x)]
    if not x.size:
        return "–"
    q = np.quantile(x, [0.0, 0.5, 1.0])
    return f"{q[1]:.1e} [{q[0]:.0e}, {q[2]:.0e}]"


def outcome_row(c: Cell) -> dict:
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


def stall_row(c: Cell) -> dict:
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


def init_row(c: Cell, quantities=INIT_QUANTITIES) -> dict:
    row = {"cell": c.name}
    log_rel = np.log10(np.maximum(c.relative_final_loss, 1e-30))
    for q in quantities:
        v = c.init[q]
        yes, no = v[c.converged], v[~c.converged]
        row[f"{SHORT[q]} conv."] = fmt(float(np.median(yes))) if yes.size else "–"
        row[f"{SHORT[q]} not conv."] = fmt(float(np.median(no))) if no.size else "–"
        row[f"ρ({SHORT[q]}, final loss)"] = fmt(spearman(v, log_rel), 2)
    return row


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    for r in rows[1:]:
        columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "–")) for k in columns) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def _groups(cells: list[Cell], field: str | None) -> list[tuple[str, list[Cell]]]:
    if field is None:
        return [("", cells)]
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(str(field_of(c, field)), []).append(c)
    return list(out.items())


def plot_init_scatter(
    cells: list[Cell],
    path: pathlib.Path,
    *,
    panel_field: str | None,
    color_field: str | None,
    quantities=INIT_QUANTITIES[:2],
) -> None:
    """Init quantity (x) vs final/initial loss (y, log), filled = reached eps, hollow = not."""
    plt = _plt()
    panels = _groups(cells, panel_field)
    fig, axes = plt.subplots(
        len(quantities),
        len(panels),
        squeeze=False,
        figsize=(2.8 * len(panels) + 0.6, 2.4 * len(quantities) + 0.4),
    )
    colors = {}
    for col, (panel, members) in enumerate(panels):
        for row, q in enumerate(quantities):
            ax = axes[row, col]
            for c in members:
                key = str(field_of(c, color_field)) if color_field else c.name
                color = colors.setdefault(key, COLORS[len(colors) % len(COLORS)])
                x, y = c.init[q], np.maximum(c.relative_final_loss, 1e-16)
                ax.scatter(
                    x[c.converged], y[c.converged], s=16, color=color, label=f"{key} (reached)"
                )
                ax.scatter(
                    x[~c.converged],
                    y[~c.converged],
                    s=16,
                    facecolors="none",
                    edgecolors=color,
                    label=f"{key} (not)",
                )
            thr = members[0].threshold
            if math.isfinite(thr) and thr > 0:
                ax.axhline(thr, color="gray", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.set_xlabel(f"{SHORT[q]} at init", fontsize=8)
            if col == 0:
                ax.set_ylabel("final / initial loss", fontsize=8)
            if row == 0 and panel:
                ax.set_title(f"{panel_field.rsplit('.', 1)[-1]}={panel}", fontsize=9)
            ax.tick_params(labelsize=7)
    seen: dict = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(
        list(seen.values()),
        list(seen),
        fontsize=7,
        loc="lower center",
        ncol=min(len(seen), 6),
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def short_label(c: Cell) -> str:
    """The cell's field values, one per line (``softmax\\nQKV``), else its name."""
    return "\n".join(str(v) for v in c.fields.values()) if c.fields else c.name


def plot_final_loss(cells: list[Cell], path: pathlib.Path) -> None:
    """Final/initial loss of every seed per cell (strip plot), eps dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(cells) + 1.5), 3.6))
    rng = np.random.default_rng(0)
    for i, c in enumerate(cells):
        y = np.maximum(c.relative_final_loss, 1e-16)
        x = i + 0.12 * rng.standard_normal(len(y))
        ax.scatter(x[c.converged], y[c.converged], s=12, color="tab:blue")
        ax.scatter(x[~c.converged], y[~c.converged], s=12, facecolors="none", edgecolors="tab:red")
        ax.hlines(np.nanmedian(y), i - 0.3, i + 0.3, color="black", lw=1.5)
    thr = cells[0].threshold
    if math.isfinite(thr) and thr > 0:
        ax.axhline(thr, color="gray", lw=0.8, ls="--", label=f"eps = {thr:g} x initial")
        ax.legend(fontsize=7, loc="best")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([short_label(c) for c in cells], fontsize=7)
    ax.set_ylabel("final / initial loss (per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def loss_matrix(path: pathlib.Path, name: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """``(steps [T], values [T, seeds])`` of a logged quantity."""
    records = [r for r in read_metrics(path) if not r.get("eval") and name in r]
    steps = np.array([r["step"] for r in records])
    values = np.array([r.get(f"{name}/seeds", [r[name]]) for r in records], float)
    return steps, values


def plot_curves(
    cells: list[Cell], path: pathlib.Path, *, relative: bool = True, title: str = ""
) -> None:
    """Median (relative) training loss per cell with the band between min and max seed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, c in enumerate(cells):
        steps, losses = loss_matrix(c.path)
        if not len(steps):
            continue
        if relative:
            losses = losses / losses[:1]
        losses = np.where(np.isfinite(losses), losses, np.nan)
        lo, mid, hi = np.nanpercentile(losses, [0, 50, 100], axis=1)
        color = COLORS[i % len(COLORS)]
        ax.plot(steps, mid, color=color, lw=1.4, label=c.name)
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(("final/initial " if relative else "") + "training loss (median, min-max)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The analyses


def _write(root: pathlib.Path, kind: str, text: str) -> str:
    (root / f"ablation_{kind}.md").write_text(text)
    return text


def _header(title: str, root: pathlib.Path, cells: list[Cell]) -> str:
    thr = cells[0].threshold
    text = f"# {title}\n\nRun directory: `{root}`. "
    if math.isfinite(thr) and thr > 0:
        text += f"eps: loss <= {thr:g} x the seed's initial loss. "
    return text + "\n\n"


def kernel_subsets(root: pathlib.Path) -> str:
    """Kernel x trainable subset: outcome table, init quantities vs convergence, plots."""
    cells = load_cells(root)
    plot_init_scatter(
        cells,
        root / "init_vs_convergence.png",
        panel_field="train.trainable",
        color_field="model.kernel",
    )
    plot_final_loss(cells, root / "final_loss_distribution.png")
    from experiments import report

    report.write_report(root)  # report.md and loss_curves.png, the runner's standard view
    text = _header("Ablation: kernel x trainable subset", root, cells)
    text += "## Outcome per cell\n\n" + markdown([outcome_row(c) for c in cells])
    text += (
        "\n## Initialisation vs convergence\n\nMedians of the step-0 quantities among "
        "seeds that reached eps (conv.) and those that did not; ρ is the Spearman rank "
        "correlation over seeds of the quantity with log(final/initial loss) (negative: "
        "larger values, lower final loss).\n\n"
    )
    text += markdown([init_row(c) for c in cells])
    text += (
        "\n![init vs convergence](init_vs_convergence.png)\n"
        "![final loss](final_loss_distribution.png)\n![loss curves](loss_curves.png)\n"
    )
    return _write(root, "kernel_subsets", text)


def q_only(root: pathlib.Path) -> str:
    """Q-only, student-teacher targets: one run per seed, pooled per kernel (and other axes)."""
    cells = merge_seeds(load_cells(root), drop=("seeds",))
    plot_init_scatter(
        cells,
        root / "init_vs_convergence.png",
        panel_field=None,
        color_field=None,
        quantities=("sigma_min_attention_output", "sv_ratio_q_v"),
    )
    plot_final_loss(cells, root / "final_loss_distribution.png")
    plot_curves_pooled(root, cells, root / "loss_curves.png")
    text = _header("Ablation: only W_Q trained, realisable targets", root, cells)
    text += "## Outcome per kernel (seeds pooled)\n\n" + markdown([outcome_row(c) for c in cells])
    text += (
        "\n## Stalled or oscillating?\n\nMedians over seeds of the gradient norm at the last "
        "logged step and of the share of logged intervals over which the loss increased (a "
        "seed at a sub-optimal stationary point has a small gradient and a monotone loss).\n\n"
    )
    text += markdown([stall_row(c) for c in cells])
    text += (
        "\n## Sharpness vs the step size\n\nTop Hessian eigenvalue of the loss w.r.t. W_Q "
        "(power iteration on Hessian-vector products) at the final parameters and at the "
        "teacher's W_Q (a zero-loss minimum); GD with step lr cannot settle in a minimum whose "
        "sharpness exceeds 2 / lr. Medians, or every value when there are at most 6.\n\n"
    )
    runs = load_cells(root)
    text += markdown([sharpness_row(c, runs) for c in cells])
    text += "\n## Initialisation vs convergence\n\n" + markdown([init_row(c) for c in cells])
    text += (
        "\n![init vs convergence](init_vs_convergence.png)\n"
        "![final loss](final_loss_distribution.png)\n![loss curves](loss_curves.png)\n"
    )
    return _write(root, "q_only", text)


def teacher_query(data_config):
    """The teacher's W_Q of ``student_teacher_regression`` data (a zero-loss point for the
    student trained on it)."""
    import jax

    seed = int(tuple(data_config.student_seeds)[0])
    dim = int(data_config.dim)
    key = jax.random.fold_in(jax.random.key(seed), TEACHER_Q_STREAM)
    scale = float(data_config.teacher_q_scale)
    return scale * jax.random.normal(key, (dim, dim)) / math.sqrt(dim)


SHARPNESS_ITERS = 300  # power iterations per sharpness estimate


def run_sharpness(run_dir: pathlib.Path, *, num_iters: int | None = None) -> dict:
    """Top Hessian eigenvalue of the training loss w.r.t. the *trained* parameters, per seed:
    at the end of the run (``final``) and, for Q-only student-teacher runs, at the teacher's
    W_Q (``teacher``, a global minimum). Power iteration; cached in ``run_dir/sharpness.json``."""
    cache = run_dir / "sharpness.json"
    if cache.exists():
        return json.loads(cache.read_text())
    import jax
    import ml_collections

    from attn_dynamics import diagnostics, freezing
    from experiments import landscape

    num_iters = SHARPNESS_ITERS if num_iters is None else num_iters
    config = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    teacher = config.data.name == "student_teacher_regression"
    if teacher:
        register_student_teacher()
    _, loss, init, mask = landscape.problem(config)

    def sharpness(params, i):
        trainable, frozen = freezing.split(params, mask)
        lam, _, _ = diagnostics.top_hessian_eigenvalue(
            lambda t: loss(freezing.merge(t, frozen)),
            trainable,
            jax.random.key(i),
            num_iters=num_iters,
            tol=1e-5,
            largest="algebraic",
        )
        return float(lam)

    out: dict = {"final": []}
    for i in range(len(config.seeds)):
        out["final"].append(sharpness(landscape.load_params(run_dir, i)[0], i))
    if teacher:
        params = jax.tree.map(lambda a: a[0], init)
        params["attention"]["query"]["kernel"] = teacher_query(config.data)
        out["teacher"] = [sharpness(params, 0)]
        out["teacher_loss"] = [float(loss(params))]
    cache.write_text(json.dumps(out) + "\n")
    return out


def _members(pooled: Cell, runs: list[Cell]) -> list[Cell]:
    """The one-seed runs a pooled cell was made of."""
    return [
        r
        for r in runs
        if r.group == pooled.group
        and all(str(r.fields.get(k)) == str(v) for k, v in pooled.fields.items())
    ]


def sharpness_row(c: Cell, runs: list[Cell]) -> dict:
    """Sharpness at the end and at the teacher's minimum vs the GD stability limit 2 / lr."""
    members = _members(c, runs)
    values = [run_sharpness(r.path) for r in members]
    conv = np.concatenate([r.converged for r in members])
    lr = float(config_value(c.config, "train.learning_rate"))
    row = {"cell": c.name, "2 / lr": fmt(2.0 / lr, 3)}
    for key, what in (("final", "at the end"), ("teacher", "at the teacher's W_Q")):
        if not all(key in v for v in values):
            continue
        lam = np.concatenate([np.asarray(v[key], float) for v in values])
        for label, mask in (("reached", conv), ("not reached", ~conv)):
            value = fmt(float(np.median(lam[mask]))) if mask.any() else "–"
            if mask.any() and mask.sum() <= 6:  # few seeds: list them all
                value = ", ".join(fmt(float(x)) for x in np.sort(lam[mask]))
            row[f"sharpness {what} ({label})"] = value
        row[f"seeds with sharpness {what} > 2 / lr"] = f"{int(np.sum(lam > 2.0 / lr))}/{len(lam)}"
    return row


def plot_curves_pooled(root: pathlib.Path, pooled: list[Cell], path: pathlib.Path) -> None:
    """Like :func:`plot_curves` for cells pooled from one-seed runs (loss relative to step 0)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    runs = load_cells(root)
    for i, c in enumerate(pooled):
        members = _members(c, runs)
        curves = [loss_matrix(r.path) for r in members]
        curves = [(s, v) for s, v in curves if len(s)]
        if not curves:
            continue
        # Runs stop once they reach eps (stop_at_threshold): hold each at its last value.
        steps = max((s for s, _ in curves), key=len)
        losses = np.full((len(steps), sum(v.shape[1] for _, v in curves)), np.nan)
        col = 0
        for _, v in curves:
            rel = v / v[:1]
            losses[: len(rel), col : col + rel.shape[1]] = rel
            losses[len(rel) :, col : col + rel.shape[1]] = rel[-1]
            col += rel.shape[1]
        lo, mid, hi = np.nanpercentile(losses, [0, 50, 100], axis=1)
        color = COLORS[i % len(COLORS)]
        ax.plot(steps + 1, mid, color=color, lw=1.4, label=c.name)
        ax.fill_between(steps + 1, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xscale("log")
    thr = pooled[0].threshold
    if math.isfinite(thr) and thr > 0:
        ax.axhline(thr, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("step + 1 (runs that reached eps are held at their stopping value)")
    ax.set_ylabel("loss / initial loss (median, min-max over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overparam(root: pathlib.Path) -> str:
    """d relative to n*N: fraction converged and sigma_min(Phi) per d, per subset/kernel."""
    cells = load_cells(root)
    plt = _plt()
    series: dict[str, list[tuple[float, Cell]]] = {}
    for c in cells:
        d = float(field_of(c, "model.dim"))
        n_n = float(field_of(c, "data.num_samples")) * float(field_of(c, "data.seq_len"))
        label = (
            ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in c.fields.items() if k != "model.dim")
            or "all"
        )
        series.setdefault(label, []).append((d / n_n, c))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    rows = []
    for i, (label, points) in enumerate(series.items()):
        points.sort(key=lambda p: p[0])
        ratio = np.array([p[0] for p in points])
        frac = np.array([p[1].converged.mean() for p in points])
        rel = np.array([np.nanmedian(p[1].relative_final_loss) for p in points])
        smin = np.array([np.nanmedian(p[1].init["sigma_min_attention_output"]) for p in points])
        color = COLORS[i % len(COLORS)]
        axes[0].plot(ratio, frac, "o-", color=color, label=label)
        axes[1].plot(ratio, rel, "o-", color=color, label=label)
        axes[2].plot(ratio, smin, "o-", color=color, label=label)
        for r, p in zip(ratio, points, strict=True):
            row = outcome_row(p[1])
            row["cell"] = p[1].name
            row = {"cell": row.pop("cell"), "d/(nN)": fmt(float(r), 3), **row}
            row["median σmin(Φ) at init"] = fmt(
                float(np.nanmedian(p[1].init["sigma_min_attention_output"]))
            )
            rows.append(row)
    axes[0].set_ylabel("fraction of seeds reaching eps")
    axes[1].set_ylabel("median final/initial loss")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("median σmin(Φ) at init")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d / (n N)")
        ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "overparam.png", dpi=90)
    plt.close(fig)
    text = _header("Ablation: over-parameterisation d / (nN)", root, cells)
    text += markdown(rows) + "\n![over-parameterisation](overparam.png)\n"
    return _write(root, "overparam", text)


def _eval_records(path: pathlib.Path) -> list[dict]:
    return [r for r in read_metrics(path) if r.get("eval")]


def kernels(root: pathlib.Path) -> str:
    """Real tasks: test accuracy per cell (mean ± std over seeds), loss/accuracy vs steps."""
    cells = load_cells(root)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = []
    for i, c in enumerate(cells):
        color = COLORS[i % len(COLORS)]
        steps, losses = loss_matrix(c.path)
        if len(steps):
            mean, std = np.nanmean(losses, 1), np.nanstd(losses, 1)
            axes[0].plot(steps, mean, color=color, lw=1.3, label=c.name)
            axes[0].fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, lw=0)
        evals = _eval_records(c.path)
        split = _test_split(evals)
        if split:
            key = f"eval/{split}/accuracy"
            pts = [
                (r["step"], np.asarray(r.get(f"{key}/seeds", [r[key]]), float))
                for r in evals
                if key in r
            ]
            es = np.array([p[0] for p in pts])
            acc = np.array([p[1] for p in pts])
            mean, std = acc.mean(1), acc.std(1)
            axes[1].errorbar(
                es, mean, yerr=std, color=color, marker="o", ms=3, capsize=2, label=c.name
            )
        loss = f"{np.nanmean(c.final_loss):.3f} ± {np.nanstd(c.final_loss):.3f}"
        row = {"cell": c.name, "seeds": len(c.seeds), "final train loss (mean ± std)": loss}
        for sp, figures in c.summary.get("evaluation", {}).items():
            if "accuracy" in figures:
                acc = np.asarray(figures["accuracy"], float)
                row[f"{sp} accuracy"] = f"{acc.mean():.3f} ± {acc.std():.3f}"
        row["wall s"] = fmt(float(c.summary.get("wall_seconds", float("nan"))), 3)
        rows.append(row)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (mean ± std over seeds)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("test accuracy (mean ± std over seeds)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "kernels.png", dpi=90)
    plt.close(fig)
    text = f"# Softmax vs Gaussian on a real task\n\nRun directory: `{root}`.\n\n"
    text += markdown(rows) + "\n![loss and accuracy](kernels.png)\n"
    return _write(root, "kernels", text)


def _test_split(evals: list[dict]) -> str | None:
    names = {k.split("/")[1] for r in evals for k in r if k.endswith("/accuracy")}
    for preferred in ("test", "validation", "val", "train"):
        if preferred in names:
            return preferred
    return sorted(names)[0] if names else None


def extrapolation(root: pathlib.Path) -> str:
    """Position encodings: accuracy at every eval length (mean ± std over seeds), plot."""
    cells = load_cells(root)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    rows = []
    for i, c in enumerate(cells):
        evaluation = c.summary.get("evaluation", {})
        splits = sorted(
            (s for s in evaluation if s.startswith("len_")), key=lambda s: int(s.split("_")[1])
        )
        lengths = np.array([int(s.split("_")[1]) for s in splits])
        acc = [np.asarray(evaluation[s]["accuracy"], float) for s in splits]
        row = {"cell": c.name, "seeds": len(c.seeds)}
        trained = _train_len(c)
        for length, a in zip(lengths, acc, strict=True):
            tag = f"L={length}" + ("" if trained is None else f" ({length / trained:g}x)")
            row[tag] = f"{a.mean():.3f} ± {a.std():.3f}"
        rows.append(row)
        if acc:
            mean = np.array([a.mean() for a in acc])
            std = np.array([a.std() for a in acc])
            color = COLORS[i % len(COLORS)]
            ax.errorbar(
                lengths, mean, yerr=std, color=color, marker="o", ms=4, capsize=3, label=c.name
            )
    ax.set_xlabel("evaluation sequence length")
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "extrapolation.png", dpi=90)
    plt.close(fig)
    text = f"# Length extrapolation per position encoding\n\nRun directory: `{root}`.\n\n"
    text += markdown(rows) + "\n![extrapolation](extrapolation.png)\n"
    return _write(root, "extrapolation", text)


def _train_len(c: Cell) -> int | None:
    v = config_value(c.config, "data.train_len")
    return int(v) if v else None


ANALYSES = {
    "kernel_subsets": kernel_subsets,
    "q_only": q_only,
    "overparam": overparam,
    "kernels": kernels,
    "extrapolation": extrapolation,
}


# --------------------------------------------------------------------------------------------
# The Q-only data set: targets the student can reach with only W_Q trained


def student_teacher_default_config():
    """Fields of ``student_teacher_regression`` (see :class:`StudentTeacherRegression`)."""
    import ml_collections
    from ml_collections import config_dict

    d = ml_collections.ConfigDict()
    d.name = "student_teacher_regression"
    d.num_samples = 4  # n
    d.seq_len = 4  # N
    d.dim = 64  # d
    d.out_dim = 4
    d.input_scale = 1.0
    d.seed = 0  # inputs X
    d.student_seeds = (0,)  # the run's config.seeds: the teacher copies that student's W_K, W_V
    d.teacher_q_scale = 3.0  # teacher W_Q ~ N(0, scale^2 / d), drawn independently of the student
    d.teacher_kernel = "softmax"
    d.teacher_sigma2 = config_dict.placeholder(float)  # teacher's Gaussian bandwidth (model.sigma2)
    d.qk_init_scale = 1.0  # the student's init scales (so its W_K, W_V can be rebuilt)
    d.v_init_scale = 1.0
    d.batch_size = 0
    return d


TEACHER_Q_STREAM = 13


def student_teacher_data(config):
    """``(X, Y)``: Y = T*(X) where T* is the student of seed ``student_seeds[0]`` at
    initialisation with W_Q replaced by an independent draw (so Y is reachable by training W_Q
    alone, exactly, in the teacher's kernel)."""
    import jax

    from attn_dynamics import models
    from attn_dynamics.data import synthetic
    from experiments import train

    seeds = tuple(config.student_seeds)
    if len(seeds) != 1:
        raise ValueError(
            "student_teacher_regression: targets are built from one student's W_K, W_V, so the "
            f"run must train exactly one seed (config.seeds), got {seeds!r}; sweep over seeds"
        )
    n, seq, dim, out = (int(config[k]) for k in ("num_samples", "seq_len", "dim", "out_dim"))
    x = np.random.default_rng([int(config.seed), synthetic.X_STREAM]).standard_normal((n, seq, dim))
    x = (float(config.input_scale) * x).astype(np.float32)
    options = {"sigma2": float(config.teacher_sigma2)} if config.teacher_sigma2 else {}
    teacher = models.TheoryModel(
        dim=dim,
        out_dim=out,
        kernel=config.teacher_kernel,
        kernel_options=options,
        qk_init_scale=float(config.qk_init_scale),
        v_init_scale=float(config.v_init_scale),
    )
    key = jax.random.fold_in(jax.random.key(seeds[0]), train.INIT_STREAM)
    params = teacher.init(key, x[:1])["params"]  # == the student's init (same shapes, same key)
    params = {"attention": dict(params["attention"], query={"kernel": teacher_query(config)})}
    y = np.asarray(jax.jit(teacher.apply)({"params": params}, x), np.float32)
    return x, y


def _student_teacher_class():
    from attn_dynamics.data import base, synthetic

    class StudentTeacherRegression(synthetic.SyntheticRegression):
        """Synthetic regression whose teacher shares the (single) student's W_K and W_V."""

        name = "student_teacher_regression"

        def __init__(self, config, mesh=None):
            base.Dataset.__init__(self, config, mesh)
            base.check_fields(config, list(student_teacher_default_config()), self.name)
            self.full_batch = int(config.batch_size) == 0
            n = int(config.num_samples)
            self.train_batch_size = self.eval_batch_size = (
                n if self.full_batch else int(config.batch_size)
            )
            self.train_size = n
            self._check_batch_sizes()
            self.info = {
                "task": "regression",
                "dim": int(config.dim),
                "out_dim": int(config.out_dim),
                "seq_len": int(config.seq_len),
                "num_samples": n,
                "train_size": n,
                "full_batch": self.full_batch,
            }
            self._data = None  # built on first use, like the parent's

        @property
        def arrays(self):
            if self._data is None:
                self._data = student_teacher_data(self.config)
            return self._data

    return StudentTeacherRegression


def register_student_teacher() -> None:
    """Register ``student_teacher_regression`` with :mod:`attn_dynamics.data` (idempotent)."""
    from attn_dynamics import data

    if "student_teacher_regression" not in data.names():
        data.register(
            "student_teacher_regression",
            student_teacher_default_config,
            lambda config, mesh=None: _student_teacher_class()(config, mesh),
        )


# --------------------------------------------------------------------------------------------
# Cached generated data: a procedurally generated example is drawn once per (split, index)


_EXAMPLE_CACHES: dict[str, dict] = {}  # per data config (JSON): shared by the cells of a sweep


class _MemoizedExamples:
    """Wraps a dataset's ``_examples(split, indices)``: each example is produced once per
    process and data config (every cell of a sweep with the same data reuses them)."""

    def __init__(self, fn, key: str = ""):
        self.fn = fn
        self.cache: dict = _EXAMPLE_CACHES.setdefault(key, {}) if key else {}

    def __call__(self, split, indices):
        indices = [int(i) for i in np.asarray(indices)]
        missing = [i for i in dict.fromkeys(indices) if (split, i) not in self.cache]
        if missing:
            rows = self.fn(split, np.asarray(missing, np.int64))
            for j, i in enumerate(missing):
                self.cache[(split, i)] = {k: v[j] for k, v in rows.items()}
        first = self.cache[(split, indices[0])]
        return {k: np.stack([self.cache[(split, i)][k] for i in indices]) for k in first}


def register_cached(base_name: str) -> str:
    """Register ``<base_name>_cached``: the same data set with every example kept in memory
    after it is first generated (for generated data sets with a finite ``train_size``, e.g.
    ``pathfinder``, whose on-the-fly drawing otherwise dominates a CPU run). Same fields, same
    examples; returns the new name."""
    import ml_collections

    from attn_dynamics import data

    name = f"{base_name}_cached"
    if name in data.names():
        return name

    def default_config():
        c = data.default_config(base_name)
        c.name = name
        return c

    def factory(config, mesh=None):
        inner = ml_collections.ConfigDict(config.to_dict())
        inner.name = base_name
        ds = data.get_dataset(inner, mesh=mesh)
        ds._examples = _MemoizedExamples(ds._examples, inner.to_json(sort_keys=True))
        return ds

    data.register(name, default_config, factory)
    return name


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if len(argv) != 3 or argv[1] not in ANALYSES:
        print(
            f"usage: python -m experiments.ablations {{{','.join(ANALYSES)}}} RUNDIR",
            file=sys.stderr,
        )
        return 2
    root = pathlib.Path(argv[2])
    if not root.is_dir():
        print(f"error: {str(root)!r} is not a directory", file=sys.stderr)
        return 2
    try:
        text = ANALYSES[argv[1]](root)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
