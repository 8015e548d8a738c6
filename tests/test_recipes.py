"""Each recipe of docs/design.md ("How to add ..."), done as the document says, end to end."""

from __future__ import annotations

import importlib
import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_dynamics import kernels, position
from experiments import hooks, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def theory_smoke(**train_fields):
    config = importlib.import_module("configs.qk_frozen").get_config("smoke")
    config.train.num_steps = 6
    for name, value in train_fields.items():
        config.train[name] = value
    return config


def rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


# -- a kernel ---------------------------------------------------------------------------------


@kernels.register_softmax("recipe_hot")
def _hot():
    return kernels.SoftmaxForm(scale=lambda d, **_: 2.0 / d**0.5, key_bias=lambda k, **_: None)


def test_recipe_kernel(tmp_path):
    rng = np.random.default_rng()
    q, k = rng.normal(size=(2, 5, 1, 8)), rng.normal(size=(2, 7, 1, 8))
    logits = 2.0 / np.sqrt(8) * np.einsum("bqhd,bkhd->bhqk", q, k)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    got = kernels.get("recipe_hot")(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    config = theory_smoke()
    config.model.kernel = "recipe_hot"
    summary = train.train_and_evaluate(config, tmp_path)
    assert (
        summary["status"] == "done" and summary["final_loss"] < summary["seeds"][0]["initial_loss"]
    )


# -- a position encoding ----------------------------------------------------------------------


class HalfSinusoidal(position.nn.Module):
    """The sinusoidal table at half amplitude, added at the input."""

    dim: int

    def __call__(self, length: int) -> position.PositionTerms:
        return position.PositionTerms(at_input=0.5 * position.sinusoidal_table(length, self.dim))


@position.register("recipe_half_sinusoidal")
def _half_sinusoidal(*, dim: int, num_layers: int, max_len: int) -> position.nn.Module:
    return HalfSinusoidal(dim)


def test_recipe_position_encoding(tmp_path):
    terms = position.make("recipe_half_sinusoidal", dim=16, num_layers=2, max_len=32).apply({}, 32)
    np.testing.assert_allclose(terms.at_input, 0.5 * position.sinusoidal_table(32, 16))

    config = importlib.import_module("configs.order_task").get_config("smoke")
    config.train.num_steps = 4
    config.model.position = "recipe_half_sinusoidal"
    assert train.train_and_evaluate(config, tmp_path)["status"] == "done"


# -- an optimiser -----------------------------------------------------------------------------


def test_recipe_optimizer_by_name(tmp_path):
    config = theory_smoke(optimizer="lion", learning_rate=1e-3)
    config.train.optimizer_kwargs.b1 = 0.95
    ours = train.build_optimizer(config.train)
    reference = optax.lion(1e-3, b1=0.95)
    params = {"w": jnp.asarray(np.random.default_rng().normal(size=(4, 3)), jnp.float32)}
    grads = jax.tree.map(lambda x: x * 0.3 - 0.1, params)
    a, _ = ours.update(grads, ours.init(params), params)
    b, _ = reference.update(grads, reference.init(params), params)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert train.train_and_evaluate(config, tmp_path)["status"] == "done"


def test_an_unknown_optimizer_exits_2_with_the_valid_names(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--config=configs/qk_frozen.py:smoke",
         "--config.train.optimizer=lionn", f"--workdir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "'lionn'" in line and "'lion'" in line and "'adamw'" in line


# -- a metric and a hook ----------------------------------------------------------------------


def test_recipe_metric_and_hook(tmp_path):
    def l1(trainable, frozen, batch):
        per_seed = lambda t: sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(t))
        return {"param_l1": jax.vmap(per_seed)(trainable)}

    seen = []

    class RecordStep:
        every = 2

        def __call__(self, run):
            seen.append(run.done)

    config = theory_smoke()
    train.train_and_evaluate(
        config, tmp_path, metrics=[hooks.Metric("param_l1", 3, l1)], hooks=[RecordStep()]
    )
    logged = {r["step"]: r for r in rows(tmp_path) if not r.get("eval")}
    assert [s for s, r in logged.items() if "param_l1" in r] == [0, 3, 5]  # every 3, and last
    assert seen == [2, 4, 6]
    # At step 0 the metric sees the initial parameters: W_V (the trained leaves) as initialised.
    ds = train.data.get_dataset(config.data)
    model = train.build_model(config, ds.info)
    init = train.init_params(model, config.seeds, train.example_inputs(model, ds.train_batch(0)))
    expected = float(np.abs(np.asarray(init["attention"]["value"]["kernel"])).sum())
    np.testing.assert_allclose(logged[0]["param_l1"], expected, rtol=1e-6)


# -- an experiment ----------------------------------------------------------------------------


def test_recipe_experiment_config_file(tmp_path):
    config_file = tmp_path / "my_experiment.py"
    config_file.write_text(
        textwrap.dedent(
            '''
            """Q only, Gaussian kernel, Adam."""
            from experiments import defaults
            from experiments.validation import variants


            def get_config(arg=None):
                smoke = "smoke" in variants(arg, ["smoke"])
                c = defaults.base_config()
                c.model.kernel = "gaussian"
                c.model.dim = c.data.dim = 16
                c.train.trainable = "Q"
                c.train.optimizer = "adam"
                c.train.learning_rate = 1e-2
                c.train.num_steps = 200
                if smoke:
                    defaults.smoke(c)
                return c
            '''
        )
    )
    command = [sys.executable, "-m", "experiments.run", f"--config={config_file}:smoke",
               f"--workdir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["final_step"] == 20
    bad = subprocess.run(
        [*command[:3], f"--config={config_file}:nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "valid variants: smoke" in bad.stderr
