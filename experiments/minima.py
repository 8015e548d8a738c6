"""Where did each seed of a Q-only run end: the global optimum, a sub-optimal local minimum, or
neither? From the run's final checkpoint, in float64.

    python -m experiments.measure minima RUNDIR     # writes minima.json into every finished run

Per seed, at its final W_Q (the only trained matrix, at most d^2 = 16 numbers here): the loss,
the gradient and the full Hessian w.r.t. W_Q (``jax.hessian`` in float64, eigenvalues by
``numpy.linalg.eigvalsh``), the Newton step ``H^-1 g`` (how far the quadratic model's minimum
is) and the loss that minimum predicts, ``L - g^T H^-1 g / 2``. A seed is

* ``global``: its loss is at or below the run's baseline-relative threshold
  (``baseline_threshold x`` the best constant predictor's loss, ``summary.json``'s second
  criterion, :func:`experiments.steps.baseline_loss`);
* ``stuck`` at a sub-optimal local minimum only when all three checks hold: the gradient is near
  zero (norm <= ``grad`` and the Newton step <= ``newton x (1 + ||W_Q||)``), the Hessian is
  positive definite (smallest eigenvalue > ``eig x`` the largest magnitude), and the loss of
  that minimum is well above the global level (>= ``margin x`` the threshold);
* otherwise ``saddle`` (stationary, Hessian not positive definite), ``moving`` (gradient or
  Newton step too large: still descending or on a plateau), ``low_minimum`` (a minimum by the
  first two checks whose loss lies between the threshold and the margin: sub-optimal, but not
  well above the global level) or ``diverged``.

For the figure of the analysis it also records loss slices through the highest stuck minimum
of the run: along the line to the teacher's W_Q (a zero-loss point) and along the Hessian's
softest eigen-direction; for d = 1 the whole landscape (``scan``).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import checkpointing, rundirs

CLASSES = ("global", "stuck", "saddle", "moving", "low_minimum", "diverged")


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """What "near zero", "positive definite" and "well above" mean. The training runs in
    float32, whose gradient floor at a minimum is ~1e-7 x the loss scale (O(1) here), and GD
    with lr 0.02 for 60k steps contracts a direction of curvature lambda by exp(-1200 lambda):
    ``grad`` 1e-4 accepts minima with lambda >= ~0.01; the Newton step makes "near zero" scale
    free (a seed creeping along a plateau of decaying curvature has a small gradient but a
    Newton step of order its decay length, 1e-2 rules it out); ``eig`` 1e-6 of the largest
    eigenvalue is far above float64 round-off (~1e-13) and below any curvature GD could
    resolve; ``margin`` 10 leaves a decade between "global" and "stuck" for seeds that are
    still converging to the global optimum."""

    grad: float = 1e-4
    newton: float = 1e-2
    eig: float = 1e-6
    margin: float = 10.0


def check_point(loss: float, grad: np.ndarray, hessian: np.ndarray, params_norm: float) -> dict:
    """The checks' figures at one point: gradient norm, Hessian eigenvalues, Newton step, the
    quadratic model's minimum loss (nan where the Hessian is singular)."""
    grad, hessian = np.asarray(grad, np.float64), np.asarray(hessian, np.float64)
    eig, vecs = np.linalg.eigh(0.5 * (hessian + hessian.T))
    try:
        step = np.linalg.solve(hessian, grad)
    except np.linalg.LinAlgError:
        step = np.full_like(grad, np.nan)
    return {
        "loss": float(loss),
        "grad_norm": float(np.linalg.norm(grad)),
        "eig_min": float(eig[0]),
        "eig_max": float(eig[-1]),
        "eigenvalues": eig.tolist(),
        "softest_direction": vecs[:, 0].tolist(),
        "newton_step": float(np.linalg.norm(step)),
        "params_norm": float(params_norm),
        "model_min_loss": float(loss - 0.5 * grad @ step),
    }


def classify(point: dict, global_level: float, tol: Tolerances = Tolerances()) -> str:
    """One of :data:`CLASSES` for a point of :func:`check_point` (see the module docstring);
    ``global_level``: the loss at or below which the seed has reached the global optimum."""
    if not np.isfinite(point["loss"]):
        return "diverged"
    if point["loss"] <= global_level:
        return "global"
    scale = np.max(np.abs(point["eigenvalues"]))
    definite = point["eig_min"] > tol.eig * scale and point["eig_min"] > 0
    stationary = point["grad_norm"] <= tol.grad
    if stationary and not definite:
        return "saddle"
    close = point["newton_step"] <= tol.newton * (1.0 + point["params_norm"])
    if not (stationary and close):
        return "moving"
    minimum = min(point["loss"], point["model_min_loss"])
    return "stuck" if minimum >= tol.margin * global_level else "low_minimum"


def float64_loss(run_config: ml_collections.ConfigDict):
    """``loss(params) -> scalar``: the training objective ``1/(2n) sum_i ||T(X_i) - Y_i||^2`` of
    a theory-model run on its full batch, in float64 when called under ``jax.enable_x64``
    (explicit attention). Build it outside that context: under x64 ``jax.random`` draws other
    numbers, so the data set (its teacher) would not be the run's."""
    from attn_dynamics import data
    from experiments import train

    config = ml_collections.ConfigDict(run_config.to_dict())
    config.model.implementation = "explicit"  # the fused paths compute in float32
    ds = data.get_dataset(config.data, mesh=None)
    batch = ds.train_batch(0)
    x, y = (np.asarray(batch[k], np.float64) for k in ("inputs", "targets"))
    model = train.build_model(config, ds.info)

    def loss(params):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        err = model.apply({"params": params}, jnp.asarray(x)) - jnp.asarray(y)
        return 0.5 * jnp.mean(jnp.sum(err.reshape(err.shape[0], -1) ** 2, axis=-1))

    return loss


def query_loss(loss, params):
    """``loss`` as a function of the flat W_Q alone, the other matrices of ``params`` fixed."""
    shape = params["attention"]["query"]["kernel"].shape

    def of_query(w):
        attention = dict(params["attention"], query={"kernel": w.reshape(shape)})
        return loss({**params, "attention": attention})

    return of_query


def derivatives(loss, params, w: jax.Array):
    """``(loss, gradient, Hessian)`` w.r.t. the flat W_Q ``w``, float64."""
    f = query_loss(loss, params)
    return f(w), jax.grad(f)(w), jax.hessian(f)(w)


def line_slice(f, start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``f((1 - t) start + t end)`` for each ``t``."""
    points = (1.0 - t)[:, None] * start[None] + t[:, None] * end[None]
    return np.asarray(jax.vmap(f)(jnp.asarray(points)))


def slices(loss, params, w: np.ndarray, teacher: np.ndarray, direction: np.ndarray) -> dict:
    """Loss along the line from ``w`` (t = 0) to the teacher's W_Q (t = 1), and along the
    softest eigen-direction in units of the distance between the two (s in [-1/2, 1/2])."""
    f = query_loss(loss, params)
    t = np.linspace(-0.5, 1.5, 401)
    s = np.linspace(-0.5, 0.5, 201)
    reach = np.linalg.norm(teacher - w) * np.asarray(direction)
    return {
        "t": t.tolist(),
        "loss_to_teacher": line_slice(f, w, teacher, t).tolist(),
        "s": s.tolist(),
        "loss_softest": line_slice(f, w - 0.5 * reach, w + 0.5 * reach, s + 0.5).tolist(),
    }


def scan_1d(loss, params, w_all: np.ndarray, teacher: np.ndarray) -> dict:
    """For d = 1 (W_Q a number) the whole landscape: the loss on a grid covering the teacher's
    W_Q and every seed's final one."""
    reach = max(4.0, 1.5 * float(np.max(np.abs(w_all))), 1.5 * float(np.max(np.abs(teacher))))
    w = np.linspace(-reach, reach, 801)
    f = query_loss(loss, params)
    return {"w": w.tolist(), "loss": np.asarray(jax.vmap(f)(jnp.asarray(w[:, None]))).tolist()}


def minima(run_dir: pathlib.Path, tol: Tolerances = Tolerances()) -> dict:
    """The figures of ``minima.json`` for one finished Q-only run (see the module docstring)."""
    from attn_dynamics.data import student_teacher

    config = ml_collections.ConfigDict(rundirs.read_config(run_dir))
    if config.train.trainable != "Q":
        raise ValueError(f"{run_dir}: minima are measured for Q-only runs, not trainable="
                         f"{config.train.trainable!r}")  # fmt: skip
    summary = rundirs.read_summary(run_dir)
    global_level = float(summary["baseline_threshold"]) * float(summary["baseline_loss"])
    loss = float64_loss(config)  # data and teacher drawn as in the run: before x64 is on
    teacher = np.asarray(student_teacher.teacher_query(config.data), np.float64).ravel()
    trained = checkpointing.load_params(run_dir)
    with jax.enable_x64(True):
        stacked = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), trained)
        w_all = np.asarray(stacked["attention"]["query"]["kernel"]).reshape(len(config.seeds), -1)
        one = lambda p, w: derivatives(loss, p, w)
        values, grads, hessians = jax.jit(jax.vmap(one))(stacked, jnp.asarray(w_all))
        seeds = []
        for i, seed in enumerate(config.seeds):
            point = check_point(values[i], grads[i], hessians[i], np.linalg.norm(w_all[i]))
            if summary["seeds"][i]["status"] == "diverged":
                point["loss"] = float("nan")
            point["class"] = classify(point, global_level, tol)
            seeds.append({"seed": int(seed), "w_q": w_all[i].tolist(), **point})
        first = jax.tree.map(lambda a: a[0], stacked)
        out = {
            "tolerances": dataclasses.asdict(tol),
            "baseline_loss": float(summary["baseline_loss"]),
            "global_level": global_level,
            "teacher_w_q": teacher.tolist(),
            "teacher_loss": float(query_loss(loss, first)(jnp.asarray(teacher))),
            "counts": {c: sum(s["class"] == c for s in seeds) for c in CLASSES},
            "seeds": seeds,
        }
        if w_all.shape[1] == 1:
            out["scan"] = scan_1d(loss, first, w_all, teacher)
        stuck = [s for s in seeds if s["class"] == "stuck"]
        if stuck:  # the highest sub-optimal minimum: the clearest barrier to draw
            worst = max(stuck, key=lambda s: s["loss"])
            params = jax.tree.map(lambda a: a[config.seeds.index(worst["seed"])], stacked)
            w, direction = np.asarray(worst["w_q"]), np.asarray(worst["softest_direction"])
            out["slice"] = {"seed": worst["seed"], **slices(loss, params, w, teacher, direction)}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.minima`` points to the command that runs this module,
    ``python -m experiments.measure minima RUNDIR`` (which writes ``minima.json``)."""
    import sys

    from experiments import cli

    argv = sys.argv[1:] if argv is None else argv
    command = "python -m experiments.measure minima"
    if cli.help_requested(argv):
        print(f"usage: {command} RUNDIR [--force]\n\n{cli.one_line(__doc__.split(chr(10) * 2)[0])}"
              f"\n\nexperiments.minima is the library that command runs.")  # fmt: skip
        return 0
    arguments = " ".join(argv) or "RUNDIR"
    return cli.error(f"experiments.minima is a library; run: {command} {arguments}")


if __name__ == "__main__":
    raise SystemExit(main())
