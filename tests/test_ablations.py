"""The ablation configs end to end: ``:smoke`` grids through ``experiments.sweep`` (subprocesses,
launched together), then the analysis scripts' tables and plots.

Grids are cut to a few cells by a wrapper config (same ``get_config``, smaller ``get_sweep``);
every cell of every full grid is still validated in-process.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablations, sweep, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP_CONFIGS = [
    "ablation_kernel_subsets",
    "ablation_init_scale",
    "ablation_q_only",
    "ablation_overparam",
    "pathfinder_kernels",
    "lra_text_kernels",
    "floater_extrapolation",
]

# Reduced smoke grids: kind -> [(config, get_config edits, wrapper axes, sub-directory)]
SMOKE_SWEEPS = {
    "kernel_subsets": [
        (
            "ablation_kernel_subsets",
            {},
            {"model.kernel": ("softmax", "gaussian"), "train.trainable": ("Q",)},
            "",
        ),
    ],
    "init_scale": [
        (
            "ablation_init_scale",
            {},
            {"model.qk_init_scale": (4.0,), "model.v_init_scale": (0.25,)},
            "",
        ),
    ],
    "q_only": [
        ("ablation_q_only", {}, {"train.learning_rate": (0.1,), "seeds": ((0,),)}, ""),
        (
            "ablation_q_only",
            {"model.kernel": "gaussian_unnormalized", "model.sigma2": 64.0},
            {"train.learning_rate": (0.1,), "seeds": ((0,),)},
            "unnormalized",
        ),
    ],
    "overparam": [
        ("ablation_overparam", {}, {"model.dim": (8,), "train.trainable": ("V",)}, ""),
    ],
    "kernels": [("pathfinder_kernels", {}, {"model.kernel": ("gaussian",)}, "")],
    "extrapolation": [("floater_extrapolation", {}, {"model.position": ("learned",)}, "")],
    "text": [("lra_text_kernels", {"data.data_dir": "TFDS"}, {"model.kernel": ("softmax",)}, "")],
}

DRIVER = """
import json, sys
from attn_dynamics.data import testing
from experiments import sweep
testing.build_tiny_tfds("imdb_reviews", sys.argv[2])
failed = 0
for argv in json.loads(sys.argv[1]):
    try:
        code = sweep.main(["sweep", *argv])
    except SystemExit as e:
        code = e.code
    print("SWEEP", argv[1], code, file=sys.stderr, flush=True)
    failed += code != 0
sys.exit(failed)
"""


def _wrapper(tmp: pathlib.Path, config: str, edits: dict, axes: dict) -> pathlib.Path:
    """A config file: ``config``'s ``get_config`` with ``edits``, and a smaller grid."""
    path = tmp / f"wrap_{config}_{len(list(tmp.glob('wrap_*')))}.py"
    lines = [
        f"from configs.{config} import get_config as _get",
        "",
        "",
        "def get_config(arg=None):",
        "    c = _get(arg)",
    ]
    for field, value in edits.items():
        lines.append(f"    c.{field} = {value!r}")
    lines += ["    return c", "", "", "def get_sweep():", f"    return {axes!r}", ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module", autouse=True)
def _smoke_process(tmp_path_factory):
    """Every reduced smoke sweep, run by ``experiments.sweep.main`` in one subprocess (one
    import of jax for all of them), started when the module starts so that the tests which do
    not need it run meanwhile."""
    tmp = tmp_path_factory.mktemp("ablation_smoke")
    tfds_dir = str(tmp / "tfds")  # built by the driver, first
    argvs, roots = [], {}
    for kind, sweeps in SMOKE_SWEEPS.items():
        roots[kind] = tmp / kind
        for config, edits, axes, sub in sweeps:
            edits = {k: tfds_dir if v == "TFDS" else v for k, v in edits.items()}
            wrapper = _wrapper(tmp, config, edits, axes)
            workdir = roots[kind] / sub if sub else roots[kind]
            argvs.append([f"--config={wrapper}:smoke", f"--workdir={workdir}"])
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(argvs), tfds_dir],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield roots, process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def smoke_runs(_smoke_process):
    """Waits for the smoke sweeps: ``(roots by kind, (returncode, stderr))``."""
    roots, process = _smoke_process
    _, err = process.communicate(timeout=900)
    return roots, (process.returncode, err)


def _ok(smoke_runs, kind) -> pathlib.Path:
    roots, (code, err) = smoke_runs
    assert code == 0, err[-4000:]
    return roots[kind]


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_every_cell_of_the_full_grids_validates(name):
    module = importlib.import_module(f"configs.{name}")
    axes = module.get_sweep()
    assert axes
    for arg in (None, "smoke"):
        for cell in sweep.cells(axes):
            config = module.get_config(arg)
            for field, value in cell.items():
                sweep.set_field(config, field, value)
            train.validate(config)
    if name == "ablation_kernel_subsets":
        assert len(module.get_config().seeds) >= 16
        assert set(axes["train.trainable"]) == {"QKV", "V", "Q", "K"}


@pytest.mark.parametrize("kernel", ["softmax", "gaussian", "gaussian_unnormalized"])
def test_student_teacher_targets_are_reached_by_the_teachers_w_q(kernel, rng):
    """The Q-only targets are exactly the student's output with the teacher's W_Q: its frozen
    W_K and W_V are the teacher's (rebuilt from the same seed and init stream as the runner)."""
    config = importlib.import_module("configs.ablation_q_only").get_config()
    seed = int(rng.integers(1000))
    config.seeds = (seed,)
    config.model.kernel = kernel
    config.model.dim = 8
    config.data.num_samples = 2
    from attn_dynamics import data

    ds = data.get_dataset(config.data)
    x, y = ds.arrays
    model = train.build_model(config, ds.info)
    params = jax.tree.map(lambda a: a[0], train.init_params(model, (seed,), (x,)))
    q_key = jax.random.fold_in(jax.random.key(seed), ablations.TEACHER_Q_STREAM)
    wq = config.data.teacher_q_scale * jax.random.normal(q_key, (8, 8)) / np.sqrt(8)
    np.testing.assert_allclose(ablations.teacher_query(config.data), wq)
    student_at_init = model.apply({"params": params}, x)
    assert float(jnp.max(jnp.abs(student_at_init - y))) > 1e-2  # not trivially solved
    params["attention"]["query"]["kernel"] = wq
    np.testing.assert_allclose(model.apply({"params": params}, x), y, atol=1e-5)


def test_cached_dataset_serves_the_same_examples():
    from attn_dynamics import data

    name = ablations.register_cached("pathfinder")
    fields = dict(
        resolution=16, contour_length=4, batch_size=4, train_size=8, eval_size=4, eval_batch_size=4
    )
    plain, cached = data.default_config("pathfinder"), data.default_config(name)
    plain.update(fields)
    cached.update(fields)
    a, b = data.get_dataset(plain), data.get_dataset(cached)
    for step in (0, 1, 2, 0):
        x, y = a.train_batch(step), b.train_batch(step)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    x, y = next(a.eval_batches("test")), next(b.eval_batches("test"))
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_landscape_smoke(tmp_path):
    from experiments import landscape

    config = importlib.import_module("configs.landscape").get_config("smoke,theory")
    text = landscape.run(config, tmp_path)
    for name in (
        "landscape.npz",
        "landscape.json",
        "landscape.md",
        "landscape_contour.png",
        "landscape_surface.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "landscape.json").read_text())
    assert [r["kernel"] for r in results] == ["softmax", "gaussian"]
    grids = np.load(tmp_path / "landscape.npz")
    assert grids["surface_softmax"].shape == (5, 5)
    for r in results:  # the centre of the grid is the trained point itself
        assert r["loss_at_center"] == pytest.approx(float(grids[f"surface_{r['kernel']}"][2, 2]))
        assert np.isfinite(r["sharpness_trained"]) and r["sharpness_trained"] > 0
    assert "sharpness" in text


def test_kernel_subsets_smoke_and_analysis(smoke_runs):
    root = _ok(smoke_runs, "kernel_subsets")
    text = ablations.kernel_subsets(root)
    for name in (
        "ablation_kernel_subsets.md",
        "init_vs_convergence.png",
        "final_loss_distribution.png",
        "report.md",
        "loss_curves.png",
    ):
        assert (root / name).stat().st_size > 0, name
    cells = ablations.load_cells(root)
    assert [c.name for c in cells] == ["kernel=softmax,trainable=Q", "kernel=gaussian,trainable=Q"]
    for c in cells:
        assert len(c.seeds) == 2
        for q in ablations.INIT_QUANTITIES:  # the step-0 theory quantities, per seed
            assert np.all(np.isfinite(c.init[q])) and np.all(c.init[q] >= 0)
        assert np.all(np.isfinite(c.relative_final_loss))
    assert "kernel=gaussian,trainable=Q" in text and "σmin(Φ) conv." in text
    assert "kernel=softmax,trainable=Q" in (root / "report.md").read_text()


def test_init_scale_smoke_and_analysis(smoke_runs):
    root = _ok(smoke_runs, "init_scale")
    ablations.kernel_subsets(root)
    (cell,) = ablations.load_cells(root)
    assert cell.config["model"]["qk_init_scale"] == 4.0
    assert cell.config["model"]["v_init_scale"] == 0.25
    assert cell.config["train"]["trainable"] == "QKV"


def test_q_only_smoke_and_analysis(smoke_runs, monkeypatch):
    root = _ok(smoke_runs, "q_only")
    monkeypatch.setattr(ablations, "SHARPNESS_ITERS", 5)
    text = ablations.q_only(root)
    for name in (
        "ablation_q_only.md",
        "init_vs_convergence.png",
        "final_loss_distribution.png",
        "loss_curves.png",
    ):
        assert (root / name).stat().st_size > 0, name
    pooled = ablations.merge_seeds(ablations.load_cells(root), drop=("seeds",))
    # the nested sweep has the same sweep fields, but is pooled apart (another base config)
    assert [(c.name, len(c.seeds)) for c in pooled] == [
        ("learning_rate=0.1", 1),
        ("unnormalized/learning_rate=0.1", 1),
    ]
    kernels = [c.config["model"]["kernel"] for c in ablations.load_cells(root)]
    assert kernels == ["softmax", "gaussian_unnormalized"]
    assert "Stalled or oscillating" in text and "sharpness at the teacher's W_Q" in text


def test_overparam_smoke_and_analysis(smoke_runs):
    root = _ok(smoke_runs, "overparam")
    text = ablations.overparam(root)
    assert (root / "overparam.png").stat().st_size > 0
    assert "d/(nN)" in text and "| 0.5 |" in text
    lrs = [c.config["train"]["learning_rate"] for c in ablations.load_cells(root)]
    np.testing.assert_allclose(lrs, [3.2 / 16])  # lr = 3.2 / (d + 8) follows d


def test_pathfinder_kernels_smoke_and_analysis(smoke_runs):
    root = _ok(smoke_runs, "kernels")
    text = ablations.kernels(root)
    assert (root / "kernels.png").stat().st_size > 0
    assert "test accuracy" in text and "kernel=gaussian" in text


def test_lra_text_kernels_smoke_and_analysis(smoke_runs):
    root = _ok(smoke_runs, "text")
    text = ablations.kernels(root)
    assert "kernel=softmax" in text and (root / "kernels.png").stat().st_size > 0


def test_floater_extrapolation_smoke_and_analysis(smoke_runs):
    root = _ok(smoke_runs, "extrapolation")
    text = ablations.extrapolation(root)
    assert (root / "extrapolation.png").stat().st_size > 0
    for column in ("L=8 (1x)", "L=12 (1.5x)", "L=16 (2x)"):
        assert column in text
