"""FLOATER: the ODE solve against closed forms, gradients, injections, warm start, caching."""

from __future__ import annotations

import re

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from attn_dynamics import floater, models, position
from configs import floater_order
from experiments import defaults

DIM, LAYERS = 8, 2
# Model-level tests take 2 RK4 sub-steps per position instead of the default 5: the same code
# with less to compile.
SUBSTEPS = 2


def encoder(position_options=None, **kw) -> models.EncoderClassifier:
    if kw.get("position") == "floater":
        position_options = {"rk4_substeps": SUBSTEPS, **(position_options or {})}
    kw = {
        "position_options": position_options,
        "num_classes": 3,
        "vocab_size": 11,
        "num_layers": LAYERS,
        "embed_dim": DIM,
        "mlp_dim": 16,
        "max_len": 8,
        **kw,
    }
    return models.EncoderClassifier(**kw)


def tokens(rng, batch=2, length=6):
    return jnp.asarray(rng.integers(0, 11, size=(batch, length)), jnp.int32)


# -------------------------------------------------------------------------------- the solve


@pytest.mark.parametrize(
    ("solver", "adjoint", "custom"),
    [
        ("rk4", "recursive_checkpoint", False),  # the lax.scan
        ("rk4", "backsolve", True),  # diffrax with the RK4 tableau
        ("tsit5", "recursive_checkpoint", False),
    ],
)
def test_linear_dynamics_match_matrix_exponential(solver, adjoint, custom, rng):
    """dp/dt = A p from a batched [L, 3, d] state: p(t_i) = expm(A t_i) p(0), float64."""
    length, dt = 40, 0.02
    with jax.enable_x64(True):
        a = jnp.asarray(rng.normal(size=(DIM, DIM)) / np.sqrt(DIM))
        p0 = jnp.asarray(rng.normal(size=(LAYERS, 3, DIM)))
        field = (lambda t, p, theta: p @ theta["matrix"].T) if custom else "linear"
        got = floater.solve(
            field,
            {"matrix": a},
            p0,
            length,
            dt=dt,
            solver=solver,
            adjoint=adjoint,
            rtol=1e-11,
            atol=1e-11,
        )
        assert got.shape == (length, LAYERS, 3, DIM) and got.dtype == jnp.float64
        got, a, p0 = np.asarray(got), np.asarray(a), np.asarray(p0)
    ts = np.arange(length) * dt
    want = np.stack([np.einsum("ij,lkj->lki", scipy.linalg.expm(a * t), p0) for t in ts])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_rk4_scan_equals_diffrax_with_the_rk4_tableau(rng):
    """The scan's sub-steps (time-dependent MLP field, float64) are the steps diffrax takes with
    the classic RK4 tableau on the fine grid, to rounding."""
    length, dt, substeps = 9, 0.1, 3
    with jax.enable_x64(True):
        theta = floater.get_vector_field("mlp").init(
            jax.random.key(int(rng.integers(2**31))),
            dim=DIM,
            hidden_dim=6,
            dt=dt,
            warm_start=False,
            dtype=jnp.float64,
        )
        p0 = jnp.asarray(rng.normal(size=(3, DIM)))
        got = floater.solve("mlp", theta, p0, length, dt=dt, rk4_substeps=substeps)
        fine = jnp.arange((length - 1) * substeps + 1) * (dt / substeps)
        want = diffrax.diffeqsolve(
            diffrax.ODETerm(floater.mlp_field),
            floater.RK4(),
            t0=0.0,
            t1=fine[-1],
            dt0=None,
            y0=p0,
            args=theta,
            saveat=diffrax.SaveAt(t0=True, steps=True),
            stepsize_controller=diffrax.StepTo(ts=fine),
            max_steps=len(fine) - 1,
        ).ys[::substeps]
        got, want, p0 = np.asarray(got), np.asarray(want), np.asarray(p0)
    assert np.abs(got[-1] - p0).max() > 1e-2  # the field moves the state
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_sinusoidal_field_is_a_rotation_per_pair(rng):
    """From any p(0), each pair turns at its rate: (p, q)(t) = (p0 cos wt + q0 sin wt,
    q0 cos wt - p0 sin wt); from p(0) = [0, 1, 0, 1, ...] that is the Vaswani table."""
    dim, length, dt = 64, 512, 0.01
    with jax.enable_x64(True):
        theta = {"frequency": floater.sinusoidal_frequencies(dim, dt, dtype=jnp.float64)}
        start = floater._sinusoidal_initial_value(None, (1, dim), jnp.float64)
        p0 = jnp.concatenate([start, jnp.asarray(rng.normal(size=(2, dim)))])
        # Step dt/20: the fastest pair turns 1 rad per position; at dt/5 (0.2 rad per RK4 step)
        # the accumulated phase error over 512 positions is ~7e-3.
        got = floater.solve(
            "sinusoidal", theta, p0, length, dt=dt, rk4_substeps=20, max_steps=20_000
        )
        assert got.dtype == jnp.float64
        got, w = np.asarray(got), np.asarray(theta["frequency"])
    wt = np.arange(length)[:, None, None] * dt * w
    p, q = np.asarray(p0)[None, :, 0::2], np.asarray(p0)[None, :, 1::2]
    want = np.empty((length, 3, dim))
    want[..., 0::2] = p * np.cos(wt) + q * np.sin(wt)
    want[..., 1::2] = q * np.cos(wt) - p * np.sin(wt)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    table = np.asarray(position.sinusoidal_table(length, dim))  # float32
    np.testing.assert_allclose(got[:, 0], table, rtol=0, atol=1e-4)


def test_zero_field_gives_constant_positions(rng):
    p0 = jnp.asarray(rng.normal(size=(LAYERS, DIM)), jnp.float32)
    got = floater.solve("zero", {}, p0, 6, rk4_substeps=SUBSTEPS)
    np.testing.assert_array_equal(got, jnp.broadcast_to(p0, got.shape))
    # The warm-start MLP (zero last layer) is h = 0 as well.
    theta = floater.get_vector_field("mlp").init(
        jax.random.key(0), dim=DIM, hidden_dim=0, dt=0.01, warm_start=True, dtype=jnp.float32
    )
    got = floater.solve("mlp", theta, p0, 6, rk4_substeps=SUBSTEPS)
    np.testing.assert_array_equal(got, jnp.broadcast_to(p0, got.shape))


@pytest.mark.parametrize(
    ("adjoint", "field", "rtol"),
    [
        # Backpropagation through the solver: the exact gradient of the discrete solve.
        ("recursive_checkpoint", "mlp", 1e-7),
        # Backsolve integrates the adjoint ODE backwards: approximate (O(step^4) on a smooth
        # field; the ReLU field's kinks make it worse, ~1e-3 relative here).
        ("backsolve", "linear", 1e-4),
    ],
)
def test_gradients_match_finite_differences(adjoint, field, rtol, rng):
    """d/d theta and d/d p(0) of a random projection of every position (float64)."""
    length = 12
    with jax.enable_x64(True):
        theta = floater.get_vector_field(field).init(
            jax.random.key(int(rng.integers(2**31))),
            dim=DIM,
            hidden_dim=6,
            dt=0.01,
            warm_start=False,
            dtype=jnp.float64,
        )
        p0 = jnp.asarray(rng.normal(size=(LAYERS, 3, DIM)))
        weights = jnp.asarray(rng.normal(size=(length, LAYERS, 3, DIM)))

        def loss(theta, p0):
            ys = floater.solve(
                field, theta, p0, length, dt=0.1, adjoint=adjoint, rk4_substeps=SUBSTEPS
            )
            return jnp.sum(weights * jnp.tanh(ys))

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compile
        _, grads = value_and_grad(theta, p0)
        for grad in grads:  # theta and p(0) both receive gradient
            assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grad))
        directions = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), (theta, p0))
        eps = 1e-6
        plus = jax.tree.map(lambda x, v: x + eps * v, (theta, p0), directions)
        minus = jax.tree.map(lambda x, v: x - eps * v, (theta, p0), directions)
        numeric = float((value_and_grad(*plus)[0] - value_and_grad(*minus)[0]) / (2 * eps))
        analytic = sum(
            float(jnp.vdot(g, v))
            for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(directions), strict=True)
        )
    np.testing.assert_allclose(analytic, numeric, rtol=rtol)


def test_max_steps_errors_name_the_config_option():
    p0 = jnp.ones((2, DIM), jnp.float32)
    theta = {"matrix": 3.0 * jnp.eye(DIM)}
    with pytest.raises(ValueError, match=r"config\.model\.floater\.max_steps"):
        floater.solve("linear", theta, p0, 100, rk4_substeps=5, max_steps=100)
    with pytest.raises(Exception, match=r"config\.model\.floater\.max_steps"):
        jax.block_until_ready(
            jax.jit(
                lambda th: floater.solve(
                    "linear", th, p0, 100, solver="tsit5", rtol=1e-8, atol=1e-8, max_steps=3
                )
            )(theta)
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"injection": "nope"},
            "unknown config.model.floater.injection 'nope'; valid choices: "
            "['input', 'every_layer', 'qkv_bias']",
        ),
        (
            {"solver": "euler"},
            "unknown config.model.floater.solver 'euler'; valid choices: "
            "['rk4', 'tsit5', 'dopri5']",
        ),
        (
            {"adjoint": "direct"},
            "unknown config.model.floater.adjoint 'direct'; valid choices: "
            "['recursive_checkpoint', 'backsolve']",
        ),
        (
            {"vector_field": "cubic"},
            "unknown config.model.floater.vector_field 'cubic'; valid "
            "choices: ['linear', 'mlp', 'sinusoidal', 'zero']",
        ),
        ({"rk4_substeps": 0}, "config.model.floater.rk4_substeps must be an integer >= 1, got 0"),
        (
            {"update_every": 2.5},
            "config.model.floater.update_every must be an integer >= 1, got 2.5",
        ),
        ({"dt": -0.1}, "config.model.floater.dt must be a number > 0, got -0.1"),
        ({"warm_start": "yes"}, "config.model.floater.warm_start must be True or False, got 'yes'"),
        ({"step": 1}, "unknown field config.model.floater.step; valid fields: ["),
    ],
)
def test_bad_options_fail_with_one_line_naming_value_and_choices(options, message):
    with pytest.raises(ValueError) as error:
        floater.check_options(**options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    if "step" not in options:  # the factory checks every option the same way
        with pytest.raises(ValueError, match=re.escape(message)):
            position.make("floater", dim=DIM, num_layers=LAYERS, max_len=8, **options)
    if {"solver", "adjoint", "dt", "rk4_substeps"} & options.keys():  # and so does the solve
        with pytest.raises(ValueError, match=re.escape(message)):
            floater.solve("zero", {}, jnp.ones(DIM), 3, **options)
    if "vector_field" in options:  # and so does the registry
        with pytest.raises(ValueError, match=re.escape(message)):
            floater.get_vector_field(options["vector_field"])


# -------------------------------------------------------------------------------- the module


def test_factory_takes_the_config_fields_and_reference_size():
    options = dict(defaults.floater_config())
    module = position.make("floater", dim=512, num_layers=6, max_len=1024, **options)
    shapes = jax.eval_shape(lambda key: module.init(key, 4), jax.random.key(0))["params"]
    assert floater.num_params(shapes["vector_field"]) == 526_336  # the paper's ~526K at d=512
    assert shapes["initial_value"].shape == (6, 3, 512)


@pytest.mark.parametrize(
    ("injection", "present"),
    [
        ("input", ("at_input",)),
        ("every_layer", ("per_layer",)),
        ("qkv_bias", ("at_input", "qkv_bias")),
    ],
)
def test_injections_and_cached_terms(injection, present, rng, key):
    model = encoder(position="floater", position_options={"injection": injection})
    x = tokens(rng)
    variables = model.init(key, x)
    terms = floater.cached_terms(model, variables, x.shape[1])
    shapes = {
        "at_input": (6, DIM),
        "per_layer": (LAYERS, 6, DIM),
        "qkv_bias": (LAYERS, 3, 6, DIM),
    }
    for name in ("at_input", "per_layer", "qkv_bias"):
        value = getattr(terms, name)
        assert (value is not None) == (name in present), name
        if value is not None:
            assert value.shape == shapes[name]
    np.testing.assert_allclose(
        model.apply(variables, x, position_terms=terms), model.apply(variables, x), atol=1e-5
    )


@pytest.mark.parametrize(
    ("injection", "baseline"),
    [("qkv_bias", "sinusoidal"), ("input", "none"), ("every_layer", "none")],
)
def test_warm_start_equals_the_model_without_floater(injection, baseline, rng, key):
    x = tokens(rng)
    plain = encoder(position=baseline)
    pretrained = plain.init(jax.random.key(1), x)
    model = encoder(
        position="floater", position_options={"injection": injection, "warm_start": True}
    )
    fresh = model.init(key, x)
    params = floater.warm_start_params(fresh, pretrained)
    floater_params = params["params"]["position_encoding"]
    np.testing.assert_array_equal(
        floater_params["initial_value"], fresh["params"]["position_encoding"]["initial_value"]
    )
    np.testing.assert_array_equal(
        params["params"]["block_0"]["attention"]["query"]["kernel"],
        pretrained["params"]["block_0"]["attention"]["query"]["kernel"],
    )
    np.testing.assert_array_equal(model.apply(params, x), plain.apply(pretrained, x))
    # Bare parameter trees work too; a shared path with another shape is an error.
    bare = floater.warm_start_params(fresh["params"], pretrained["params"])
    np.testing.assert_array_equal(model.apply({"params": bare}, x), plain.apply(pretrained, x))
    wrong = jax.tree.map(lambda leaf: leaf, pretrained)
    wrong["params"]["head"]["kernel"] = jnp.zeros((DIM + 1, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        floater.warm_start_params(fresh, wrong)


def test_extrapolates_by_integrating_further(rng, key):
    """Trained on length 6 with max_len 8: twice the length runs, finite, same prefix; a cache
    for the longest length serves shorter batches."""
    model = encoder(position="floater", max_len=8)
    variables = model.init(key, tokens(rng, length=6))
    short = floater.cached_terms(model, variables, 6)
    long = floater.cached_terms(model, variables, 12)
    assert long.qkv_bias.shape == (LAYERS, 3, 12, DIM)
    assert bool(jnp.all(jnp.isfinite(long.qkv_bias)))
    np.testing.assert_allclose(long.qkv_bias[:, :, :6], short.qkv_bias, rtol=1e-5, atol=1e-6)
    x = tokens(rng, length=12)
    logits = model.apply(variables, x)
    assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(model.apply(variables, x, position_terms=long), logits, atol=1e-5)
    np.testing.assert_allclose(
        model.apply(variables, x[:, :6], position_terms=long),
        model.apply(variables, x[:, :6]),
        atol=1e-5,
    )


def test_train_step_does_not_retrace(rng, key):
    model = encoder(position="floater")
    x, y = tokens(rng), jnp.asarray(rng.integers(0, 3, size=(2,)), jnp.int32)
    params = model.init(key, x)
    optimizer = optax.adam(1e-2)
    traces = []

    @jax.jit
    def step(params, opt_state, x, y):
        traces.append(None)

        def loss(params):
            return models.classification_loss(model.apply(params, x), y)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, grads

    opt_state = optimizer.init(params)
    for _ in range(3):
        new, opt_state, _, grads = step(params, opt_state, x, y)
        assert not np.array_equal(
            new["params"]["position_encoding"]["initial_value"],
            params["params"]["position_encoding"]["initial_value"],
        )
        params = new
    assert len(traces) == 1
    flat = jax.tree.leaves(grads["params"]["position_encoding"])
    assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0 for g in flat)


def test_config_file_selects_the_encoding():

    c = floater_order.get_config("smoke")
    assert c.model.name == "encoder" and c.model.position == "floater"
    assert c.train.num_steps <= 20
    module = position.make(
        c.model.position,
        dim=c.model.embed_dim,
        num_layers=c.model.num_layers,
        max_len=c.model.max_len,
        **dict(c.model.floater),
    )
    assert isinstance(module, floater.Floater)
    for name in ("none", "sinusoidal", "learned"):
        c.model.position = name  # what --config.model.position=... does
        assert name in position.names()
