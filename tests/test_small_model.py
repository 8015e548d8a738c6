"""The small-model ablation (``configs/ablation_small_model.py``): the shared-K,V option of the
model and the student-teacher data, the stuck-seed classification (:mod:`experiments.minima`)
against cases known in closed form and against finite differences in float64, and config ->
sweep -> measure -> analysis end to end on one shared small sweep.
"""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attn_dynamics import data, models
from attn_dynamics.data import student_teacher
from experiments import analyses, grid, measure, minima, train, validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = importlib.import_module("configs.ablation_small_model")
TOL = minima.Tolerances()


def small_config(dim: int = 2, kernel: str = "softmax", draw: int = 0, seeds=(0, 1, 2)):
    c = CONFIG.get_config("smoke")
    c.model.dim, c.model.kernel, c.data.seed, c.seeds = dim, kernel, draw, tuple(seeds)
    return c


# ---------------------------------------------------------------------------------------------
# The option: W_K, W_V shared by every seed, drawn from the data draw


def test_shared_init_shares_exactly_the_named_matrices(rng):
    x = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
    draw = int(rng.integers(1000))
    model = models.TheoryModel(dim=4, out_dim=2, shared_init="KV", shared_init_seed=draw)
    params = train.init_params(model, (0, 1, 2), (x,))["attention"]
    for name, shared in (("query", False), ("key", True), ("value", True)):
        w = np.asarray(params[name]["kernel"])
        assert (np.ptp(w, axis=0).max() == 0.0) == shared, name
    other = models.TheoryModel(dim=4, out_dim=2, shared_init="KV", shared_init_seed=draw + 1)
    assert not np.allclose(
        train.init_params(other, (0,), (x,))["attention"]["key"]["kernel"][0],
        params["key"]["kernel"][0],
    )
    # The default draws every matrix from the seed, as before the option existed: the same
    # numbers as the un-shared model, and W_K of seed 0 differs from seed 1's.
    init = lambda **option: train.init_params(
        models.TheoryModel(dim=4, out_dim=2, **option), (0, 1), (x,)
    )["attention"]
    plain, same = init(), init(shared_init="")
    for name in ("query", "key", "value"):
        np.testing.assert_array_equal(plain[name]["kernel"], same[name]["kernel"])
    assert not np.allclose(plain["key"]["kernel"][0], plain["key"]["kernel"][1])
    np.testing.assert_array_equal(params["query"]["kernel"][1], plain["query"]["kernel"][1])


@pytest.mark.parametrize("kernel", CONFIG.KERNELS)
def test_shared_teacher_is_reached_by_its_w_q_from_every_seed(kernel):
    config = small_config(dim=2, kernel=kernel, draw=3, seeds=(0, 5, 9))
    ds = data.get_dataset(config.data, mesh=None)
    model = train.build_model(config, ds.info)
    batch = ds.train_batch(0)
    params = train.init_params(model, tuple(config.seeds), (batch["inputs"],))
    loss = train.make_loss(model, "regression")
    teacher = student_teacher.teacher_query(config.data)
    for i in range(len(config.seeds)):
        p = jax.tree.map(lambda a, i=i: a[i], params)
        assert float(loss(p, batch, None)[0]) > 1e-4  # the seed's own W_Q is not the teacher's
        p["attention"]["query"]["kernel"] = teacher
        assert float(loss(p, batch, None)[0]) < 1e-12


BAD_OPTIONS = {
    "teacher_kv": ({"data.teacher_kv": "bogus"}, ["bogus", "'seed'", "'shared'"]),
    "shared_init": ({"model.shared_init": "KX"}, ["'KX'", "'KV'", "'QKV'"]),
    "seed mismatch": ({"model.shared_init_seed": 7}, ["shared_init_seed", "7", "data.seed"]),
    "seed teacher, shared students": ({"data.teacher_kv": "seed"}, ["'KV'", "teacher_kv"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_one_config_error(case):
    edits, words = BAD_OPTIONS[case]
    config = CONFIG.get_config()
    for field, value in edits.items():
        grid.set_field(config, field, value)
    with pytest.raises(validation.ConfigError) as e:
        validation.validate(config)
    assert "\n" not in str(e.value)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_bad_option_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--config=configs/ablation_small_model.py",
         "--config.data.teacher_kv=bogus", f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "bogus" in lines[0] and "'shared'" in lines[0]


def test_every_cell_of_the_full_grid_validates():
    axes = CONFIG.get_sweep()
    _, cells, _ = grid.prepare(CONFIG.get_config(), axes)
    assert len(cells) == math.prod(len(v) for v in axes.values()) == 18
    assert len(CONFIG.get_config().seeds) >= 128 and len(axes["data.seed"]) >= 2


# ---------------------------------------------------------------------------------------------
# The classification, on losses whose answer is known in closed form


def quadratic_point(rng, floor: float, definite: bool, offset: float):
    """``L(w) = floor + (w - m)^T A (w - m) / 2`` at ``w = m + offset * u``: its exact loss,
    gradient and Hessian (``A`` positive definite or with one negative eigenvalue)."""
    p = int(rng.integers(2, 6))
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    eig = rng.uniform(0.5, 2.0, p)
    if not definite:
        eig[0] = -eig[0]
    a = (q * eig) @ q.T
    m = rng.standard_normal(p)
    u = rng.standard_normal(p)
    w = m + offset * u / np.linalg.norm(u)
    e = w - m
    return w, floor + 0.5 * e @ a @ e, a @ e, a, m


@pytest.mark.parametrize(
    "floor_over_level, definite, offset, expected",
    [
        (100.0, True, 1e-6, "stuck"),  # at a minimum well above the global level
        (100.0, True, 0.5, "moving"),  # above it, still on the way down
        (100.0, False, 1e-6, "saddle"),  # stationary, one descent direction
        (3.0, True, 1e-6, "low_minimum"),  # a minimum, but within the margin
        (0.5, True, 1e-9, "global"),  # at or below the global level
    ],
)
def test_quadratic_with_a_known_minimum(rng, floor_over_level, definite, offset, expected):
    level = float(rng.uniform(1e-4, 1e-2))
    w, loss, grad, hess, m = quadratic_point(rng, floor_over_level * level, definite, offset)
    point = minima.check_point(loss, grad, hess, np.linalg.norm(w))
    np.testing.assert_allclose(point["eigenvalues"], np.linalg.eigvalsh(hess), rtol=1e-12)
    if definite:  # the Newton step lands on the minimum, the model's loss is the floor
        np.testing.assert_allclose(point["newton_step"], np.linalg.norm(w - m), rtol=1e-8)
        np.testing.assert_allclose(point["model_min_loss"], floor_over_level * level, rtol=1e-9)
    assert minima.classify(point, level, TOL) == expected


def test_a_decaying_plateau_is_not_a_minimum(rng):
    """``c + exp(-w)`` far out: gradient tiny and curvature positive, but the Newton step is 1
    (the decay length), so the seed is creeping towards the asymptote, not stuck."""
    c, w = float(rng.uniform(0.1, 1.0)), float(rng.uniform(20.0, 25.0))
    point = minima.check_point(c + math.exp(-w), [-math.exp(-w)], [[math.exp(-w)]], abs(w))
    assert point["grad_norm"] < TOL.grad and point["eig_min"] > 0
    np.testing.assert_allclose(point["newton_step"], 1.0, rtol=1e-12)
    assert minima.classify(point, 1e-4 * c, TOL) == "moving"


def test_tilted_double_well_through_the_float64_derivatives(rng):
    """``f(w) = (w^2 - 1)^2 + a w``, a > 0: minima near -1 (global) and +1 (local), a maximum
    near 0, all roots of ``f'(w) = 4 w^3 - 4 w + a``; the jax.hessian path in float64 finds
    them as stuck (the right well), a saddle (the maximum) and a lower minimum."""
    a = float(rng.uniform(0.2, 0.6))
    roots = np.sort(np.roots([4.0, 0.0, -4.0, a]).real)
    well = lambda w: (w**2 - 1.0) ** 2 + a * w
    f = lambda w: well(w) - well(roots[0])  # the global minimum at zero loss
    params = {"attention": {"query": {"kernel": np.zeros((1, 1))}}}
    loss = lambda p: f(p["attention"]["query"]["kernel"][0, 0])
    with jax.enable_x64(True):
        points = []
        for r in roots:
            value, grad, hess = minima.derivatives(loss, params, jnp.asarray([r], jnp.float64))
            np.testing.assert_allclose(float(grad[0]), 0.0, atol=1e-12)
            np.testing.assert_allclose(float(hess[0, 0]), 12 * r**2 - 4, rtol=1e-10)
            points.append(minima.check_point(float(value), grad, hess, abs(r)))
    assert [minima.classify(p, 1e-9, TOL) for p in points] == ["global", "saddle", "stuck"]
    np.testing.assert_allclose(points[2]["loss"], f(roots[2]), rtol=1e-12)


def test_hessian_of_the_model_matches_finite_differences(rng):
    """The float64 loss, gradient and Hessian w.r.t. W_Q of the real model (d = 2, random W_Q)
    against central differences of the same loss, and the loss against the float32 runner's."""
    config = small_config(dim=2, kernel=str(rng.choice(CONFIG.KERNELS)), draw=int(rng.integers(9)))
    loss64 = minima.float64_loss(config)
    ds = data.get_dataset(config.data, mesh=None)
    model = train.build_model(config, ds.info)
    batch = ds.train_batch(0)
    params = jax.tree.map(lambda a: a[0], train.init_params(model, (0,), (batch["inputs"],)))
    w = rng.standard_normal(4)
    params["attention"]["query"]["kernel"] = jnp.asarray(w.reshape(2, 2), jnp.float32)
    loss32 = float(train.make_loss(model, "regression")(params, batch, None)[0])
    with jax.enable_x64(True):
        w = np.asarray(params["attention"]["query"]["kernel"], np.float64).ravel()
        value, grad, hess = jax.jit(lambda v: minima.derivatives(loss64, params, v))(w)
        of_query = jax.jit(minima.query_loss(loss64, params))
        f = lambda v: float(of_query(jnp.asarray(v)))
        h, eye = 1e-4, np.eye(4)
        fd_grad = np.array([(f(w + h * e) - f(w - h * e)) / (2 * h) for e in eye])
        second = lambda a, b: (
            (f(w + h * (a + b)) - f(w + h * (a - b)) - f(w - h * (a - b)) + f(w - h * (a + b)))
            / (4 * h * h)
        )
        fd_hess = np.array([[second(a, b) for b in eye] for a in eye])
    np.testing.assert_allclose(float(value), loss32, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), fd_grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(hess), fd_hess, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(hess), np.asarray(hess).T, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# End to end: config -> sweep -> measure -> analysis, one small sweep shared by the tests


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> pathlib.Path:
    """Two cells of 8 seeds: d = 1, softmax and the un-normalised Gaussian, 300 steps of lr
    0.5 (enough for d = 1 seeds to settle), measured and analysed."""
    root = tmp_path_factory.mktemp("small_model")
    config = CONFIG.get_config("smoke")
    config.train.num_steps, config.train.learning_rate = 300, 0.5
    config.train.log_every, config.train.checkpoint_every = 100, 300
    axes = {"model.kernel": ("softmax", "gaussian_unnormalized"), "model.dim": (1,)}
    results = grid.run_grid(config, axes, root, progress=False)
    assert not grid.failed(results), [(r.name, r.error) for r in grid.failed(results)]
    measure.measure_runs(root, "minima")
    analyses.ANALYSES["small_model"](root)
    return root


def run_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p.parent for p in root.glob("*/minima.json"))


def test_measure_classifies_every_seed_consistently(sweep):
    runs = run_dirs(sweep)
    assert len(runs) == 2
    for run in runs:
        m = json.loads((run / "minima.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        assert sum(m["counts"].values()) == len(m["seeds"]) == 8
        assert m["teacher_loss"] < 1e-12
        np.testing.assert_allclose(
            m["global_level"], summary["baseline_threshold"] * summary["baseline_loss"]
        )
        for s in m["seeds"]:  # each class is what the classification says of its own figures
            assert s["class"] == minima.classify(s, m["global_level"], TOL)
        if "slice" in m:  # the slice passes through the stuck minimum and the teacher
            sl, t = m["slice"], np.asarray(m["slice"]["t"])
            seed = next(s for s in m["seeds"] if s["seed"] == sl["seed"])
            assert seed["class"] == "stuck"
            at_start, at_teacher = (sl["loss_to_teacher"][int(np.argmin(np.abs(t - x)))]
                                    for x in (0.0, 1.0))  # fmt: skip
            np.testing.assert_allclose(at_start, seed["loss"], rtol=1e-9)
            assert at_teacher < 1e-12


def test_the_float64_loss_is_the_runs_loss(sweep):
    run = run_dirs(sweep)[0]
    m = json.loads((run / "minima.json").read_text())
    config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    _, loss, _, _ = measure.problem(config)
    from experiments import checkpointing

    trained = checkpointing.load_params(run)
    for i, s in enumerate(m["seeds"]):
        np.testing.assert_allclose(s["loss"], float(loss(measure.seed_params(trained, i))),
                                   rtol=1e-4, atol=1e-9)  # fmt: skip


def test_the_table_counts_are_the_measured_ones(sweep):
    text = (sweep / "ablation_small_model.md").read_text()
    assert (sweep / "small_model_slice.png").stat().st_size > 0
    header = next(ln for ln in text.splitlines() if ln.startswith("| kernel |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    for run in run_dirs(sweep):
        m = json.loads((run / "minima.json").read_text())
        kernel = json.loads((run / "config.json").read_text())["model"]["kernel"]
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {kernel} | 1 |"))
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|")), strict=True))
        for name, count in m["counts"].items():
            assert cells[name] == str(count), (kernel, name)
        assert cells["seeds"] == "8"
