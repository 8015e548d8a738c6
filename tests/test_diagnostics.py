"""Theory quantities, loss-landscape directions and surfaces, Hessian sharpness (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_dynamics import diagnostics, models


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def tiny_problem(rng, *, kernel="softmax", n=2, N=3, d=4, out=2, dtype=np.float64):
    # explicit path: the fused op computes in float32 whatever the inputs
    model = models.TheoryModel(dim=d, out_dim=out, kernel=kernel, implementation="explicit")
    x = jnp.asarray(rng.standard_normal((n, N, d)), dtype)
    y = jnp.asarray(rng.standard_normal((n, N, out)), dtype)
    params = model.init(jax.random.key(int(rng.integers(2**31))), x)["params"]
    params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), dtype), params)

    @jax.jit
    def loss(p):
        preds = model.apply({"params": p}, x)
        return 0.5 * jnp.mean(jnp.sum(jnp.square(preds - y).reshape(n, -1), axis=-1))

    return model, x, params, loss


@pytest.mark.parametrize("kernel", ["softmax", "gaussian", "gaussian_unnormalized"])
def test_power_iteration_matches_the_dense_hessian(kernel, rng, x64):
    _, _, params, loss = tiny_problem(rng, kernel=kernel)
    dense = np.asarray(diagnostics.dense_hessian(loss, params))
    assert dense.dtype == np.float64
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)
    eigs = np.linalg.eigvalsh(dense)
    by_magnitude = eigs[np.argsort(-np.abs(eigs))]
    top, second = by_magnitude[0], by_magnitude[1]
    key = jax.random.key(int(rng.integers(2**31)))
    lam, vec, iters = diagnostics.top_hessian_eigenvalue(
        loss, params, key, num_iters=5000, tol=1e-13
    )
    flat = jax.flatten_util.ravel_pytree(vec)[0]
    np.testing.assert_allclose(float(jnp.linalg.norm(flat)), 1.0, rtol=1e-10)
    # Power iteration converges like (|second| / |top|)^(2k): on a random draw the two can be
    # nearly equal, and then only the Rayleigh-quotient bound |second| <= |lam| <= |top| holds.
    if abs(second) / abs(top) < 0.99:
        np.testing.assert_allclose(float(lam), top, rtol=1e-6)
        np.testing.assert_allclose(
            dense @ np.asarray(flat), top * np.asarray(flat), atol=1e-4 * abs(top)
        )
        assert int(iters) < 5000
    else:
        assert abs(second) * (1 - 1e-9) <= abs(float(lam)) <= abs(top) * (1 + 1e-9)


def test_hvp_matches_dense_hessian_times_vector(rng, x64):
    _, _, params, loss = tiny_problem(rng, kernel="gaussian")
    v = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)
    hv = jax.flatten_util.ravel_pytree(diagnostics.hvp(loss, params, v))[0]
    dense = diagnostics.dense_hessian(loss, params)
    np.testing.assert_allclose(hv, dense @ jax.flatten_util.ravel_pytree(v)[0], rtol=1e-10)


def test_filter_normalized_direction(rng):
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(3), jnp.float32),
        },
        "frozen": {"kernel": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)},
    }
    mask = {"dense": {"kernel": True, "bias": True}, "frozen": {"kernel": False}}
    key = jax.random.key(int(rng.integers(2**31)))
    d = diagnostics.filter_normalized_direction(key, params, mask)
    # every filter (output unit = column) has its parameter's norm; 1-D leaves and masked are 0
    np.testing.assert_allclose(
        jnp.linalg.norm(d["dense"]["kernel"], axis=0),
        jnp.linalg.norm(params["dense"]["kernel"], axis=0),
        rtol=1e-5,
    )
    assert not np.any(d["dense"]["bias"]) and not np.any(d["frozen"]["kernel"])
    # the direction is random, not the parameters themselves
    assert not np.allclose(d["dense"]["kernel"], params["dense"]["kernel"])
    # the same key and layout give the same draw, normalised to each model's own weights
    other = jax.tree.map(lambda p: 2.0 * p, params)
    d2 = diagnostics.filter_normalized_direction(key, other, mask)
    np.testing.assert_allclose(d2["dense"]["kernel"], 2.0 * d["dense"]["kernel"], rtol=1e-5)
    d3 = diagnostics.filter_normalized_direction(key, params, mask, ignore_1d=False)
    np.testing.assert_allclose(
        jnp.linalg.norm(d3["dense"]["bias"]), jnp.linalg.norm(params["dense"]["bias"]), rtol=1e-5
    )


def test_loss_surface_is_the_loss_on_the_grid(rng, x64):
    _, _, params, loss = tiny_problem(rng)
    keys = jax.random.split(jax.random.key(int(rng.integers(2**31))))
    d1 = diagnostics.filter_normalized_direction(keys[0], params)
    d2 = diagnostics.filter_normalized_direction(keys[1], params)
    alphas = np.linspace(-1.0, 1.0, 5)
    betas = np.linspace(-0.5, 0.5, 3)
    surface = np.asarray(diagnostics.loss_surface(loss, params, d1, d2, alphas, betas, chunk=4))
    assert surface.shape == (5, 3)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            moved = jax.tree.map(lambda p, u, v, a=a, b=b: p + a * u + b * v, params, d1, d2)
            np.testing.assert_allclose(surface[i, j], loss(moved), rtol=1e-12)
    np.testing.assert_allclose(surface[2, 1], loss(params), rtol=1e-12)


def test_theory_quantities_full_row_rank_and_ratios(rng, x64):
    model, x, params, _ = tiny_problem(rng, n=2, N=2, d=6)
    weights = model.apply({"params": params}, x, method=models.TheoryModel.attention_weights)
    q = diagnostics.theory_quantities(params, weights, x)
    # the SVDs run in float32 (as in training): compare with float32-level absolute tolerance
    phi = np.einsum("nhij,njd->nihd", np.asarray(weights), np.asarray(x)).reshape(4, -1)
    s_phi = np.linalg.svd(phi, compute_uv=False)
    np.testing.assert_allclose(q["sigma_min_attention_output"], s_phi[-1], atol=1e-5 * s_phi[0])
    s_q = np.linalg.svd(np.asarray(params["attention"]["query"]["kernel"]), compute_uv=False)
    s_v = np.linalg.svd(np.asarray(params["attention"]["value"]["kernel"]), compute_uv=False)
    np.testing.assert_allclose(q["sv_ratio_q_v"], s_q[-1] / s_v[0], atol=1e-5 * s_q[0] / s_v[0])
    # more rows than columns: no full row rank, sigma_min is reported as 0
    assert float(diagnostics.sigma_min(jnp.asarray(rng.standard_normal((5, 3))))) == 0.0


def test_largest_algebraic_eigenvalue_when_a_negative_one_dominates(rng, x64):
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eigs = np.array([-5.0, 3.0, 1.0, -1.0, 0.5, 2.0]) * rng.uniform(0.5, 2.0)
    a = jnp.asarray(q @ np.diag(eigs) @ q.T)
    params = {"w": jnp.asarray(rng.standard_normal(6))}
    loss = lambda p: 0.5 * p["w"] @ a @ p["w"]
    key = jax.random.key(int(rng.integers(2**31)))
    kw = dict(num_iters=20000, tol=1e-14)
    lam, _, _ = diagnostics.top_hessian_eigenvalue(loss, params, key, **kw)
    np.testing.assert_allclose(float(lam), eigs.min(), rtol=1e-6)  # largest magnitude
    lam, vec, _ = diagnostics.top_hessian_eigenvalue(loss, params, key, largest="algebraic", **kw)
    np.testing.assert_allclose(float(lam), eigs.max(), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(a @ vec["w"]), float(lam) * np.asarray(vec["w"]), atol=1e-5
    )
    with pytest.raises(ValueError, match="largest"):
        diagnostics.top_hessian_eigenvalue(loss, params, key, largest="smallest")


def test_sharpness_is_the_top_eigenvalue_of_the_trained_block(rng, x64):
    """Frozen leaves are held fixed: the Hessian is the trained rows and columns only."""
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = q @ np.diag(rng.uniform(0.5, 4.0, 5)) @ q.T
    a[3:, 3:] += 10.0 * np.eye(2)  # the frozen directions are the sharpest of the full Hessian
    params = {
        "trained": jnp.asarray(rng.standard_normal(3)),
        "frozen": jnp.asarray(rng.standard_normal(2)),
    }
    mask = {"trained": True, "frozen": False}

    def loss(p):
        w = jnp.concatenate([p["trained"], p["frozen"]])
        return 0.5 * w @ a @ w

    key = jax.random.key(int(rng.integers(2**31)))
    lam, iters = diagnostics.sharpness(loss, params, mask, key, num_iters=20000, tol=1e-14)
    block = np.linalg.eigvalsh(a[:3, :3])
    assert float(lam) < np.linalg.eigvalsh(a)[-1] - 5.0
    if block[-2] / block[-1] < 0.99:  # power iteration separates the top two
        np.testing.assert_allclose(float(lam), block[-1], rtol=1e-6)
    else:
        assert block[-2] * (1 - 1e-9) <= float(lam) <= block[-1] * (1 + 1e-9)
    assert 0 < int(iters) <= 20000


@pytest.mark.parametrize("trainable_spec", ["V", "QKV"])  # QKV: nothing frozen, nothing reused
def test_runner_diagnostics_reuse_frozen_singular_values_exactly(trainable_spec, rng):
    """The runner computes the singular values of frozen matrices once: every logged step still
    gets the figures of the parameters it is given, equal to computing all of them afresh."""
    from attn_dynamics import freezing
    from experiments import steps

    model = models.TheoryModel(dim=6, out_dim=3)
    x = jnp.asarray(rng.standard_normal((2, 3, 6)), jnp.float32)
    keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), 2)
    params = jax.vmap(lambda k: model.init(k, x)["params"])(keys)  # two seeds
    mask = freezing.trainable_mask(params, trainable_spec)
    trainable, frozen = freezing.split(params, mask)
    theory = steps.make_theory_diagnostics(model)

    def afresh(p):
        per_seed = []
        for s in range(2):
            one = jax.tree.map(lambda a, s=s: a[s], p)
            w = model.apply({"params": one}, x, method=models.TheoryModel.attention_weights)
            per_seed.append(diagnostics.theory_quantities(one, w, x))
        return {k: np.stack([d[k] for d in per_seed]) for k in per_seed[0]}

    for scale in (1.0, 3.0):  # the second call reuses the frozen SVDs; W_V has moved
        moved = jax.tree.map(lambda v, scale=scale: v * scale, trainable)
        got = theory(moved, frozen, {"inputs": x})
        want = afresh(freezing.merge(moved, frozen))
        for name, value in want.items():
            # float32 SVDs, vmapped and jitted vs one by one: float32-level absolute agreement
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(got["sigma_max_v"], afresh(params)["sigma_max_v"])
