"""The theory model and the encoder classifier; parameter stacks from ``jax.vmap(init)``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_dynamics import kernels, models

BUILTIN = ("gaussian", "gaussian_unnormalized", "linear", "softmax")
N_SAMPLES, N_TOKENS, DIM, OUT_DIM, HEADS = 4, 5, 8, 4, 2


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


def theory_model(kernel="softmax", output_projection=False, **kw) -> models.TheoryModel:
    return models.TheoryModel(
        dim=DIM,
        out_dim=OUT_DIM,
        num_heads=HEADS,
        kernel=kernel,
        output_projection=output_projection,
        **kw,
    )


def encoder(**kw) -> models.EncoderClassifier:
    """Same sizes as tests/test_freezing.py, so compiled ops are shared within a process."""
    kw = {
        "num_classes": 3,
        "vocab_size": 11,
        "num_layers": 2,
        "embed_dim": 8,
        "mlp_dim": 16,
        "max_len": 8,
        **kw,
    }
    return models.EncoderClassifier(**kw)


def inputs(rng):
    return jnp.asarray(rng.normal(size=(N_SAMPLES, N_TOKENS, DIM)), jnp.float32)


# --------------------------------------------------------------------------------------------
# Theory model


@pytest.mark.parametrize("output_projection", [False, True])
def test_theory_model_shapes_and_paths(output_projection, rng, key):
    x = inputs(rng)
    for kernel in BUILTIN:
        model = theory_model(kernel, output_projection)
        params = model.init(key, x)
        p = params["params"]["attention"]
        assert set(p) == {"query", "key", "value"} | ({"out"} if output_projection else set())
        assert all(set(m) == {"kernel"} for m in p.values())  # no biases in the theory model
        out = model.apply(params, x)
        assert out.shape == (N_SAMPLES, N_TOKENS, OUT_DIM) and out.dtype == jnp.float32
        assert np.all(np.isfinite(out))
        weights = model.apply(params, x, method=models.TheoryModel.attention_weights)
        assert weights.shape == (N_SAMPLES, HEADS, N_TOKENS, N_TOKENS)


def test_theory_model_matches_numpy(rng, key):
    """T(X) = softmax(X W_Q (X W_K)^T / sqrt(d_head)) X W_V, per head, in float64 NumPy."""
    model = theory_model("softmax")
    x = inputs(rng)
    params = model.init(key, x)
    p = {m: np.asarray(v["kernel"], np.float64) for m, v in params["params"]["attention"].items()}
    x64 = np.asarray(x, np.float64)
    heads = lambda a: a.reshape(*a.shape[:-1], HEADS, -1).swapaxes(-2, -3)  # [n, h, N, dh]
    q, k, v = heads(x64 @ p["query"]), heads(x64 @ p["key"]), heads(x64 @ p["value"])
    logits = q @ k.swapaxes(-1, -2) / math.sqrt(DIM // HEADS)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    expected = (w @ v).swapaxes(-2, -3).reshape(N_SAMPLES, N_TOKENS, OUT_DIM)
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def with_value(params, w_v):
    attention = dict(params["params"]["attention"])
    attention["value"] = {"kernel": w_v}
    return {"params": {**params["params"], "attention": attention}}


@pytest.mark.parametrize("kernel", BUILTIN)
def test_theory_output_linear_in_w_v(kernel, rng, key):
    model = theory_model(kernel, kernel_options={"sigma2": 2.0} if "gaussian" in kernel else None)
    x = inputs(rng)
    params = model.init(key, x)
    v1 = params["params"]["attention"]["value"]["kernel"]
    v2 = jnp.asarray(rng.normal(size=v1.shape), jnp.float32)
    a, b = rng.normal(size=2)
    f = lambda w_v: np.asarray(model.apply(with_value(params, w_v), x), np.float64)
    combined = f(a * v1 + b * v2)
    np.testing.assert_allclose(combined, a * f(v1) + b * f(v2), rtol=1e-5, atol=1e-5)
    # ... but not in W_Q (the test can tell): doubling W_Q changes every kernel's output
    # in a way that is not a doubling.
    q = params["params"]["attention"]["query"]["kernel"]
    attention = {**params["params"]["attention"], "query": {"kernel": 2 * q}}
    doubled = model.apply({"params": {"attention": attention}}, x)
    assert not np.allclose(doubled, 2 * f(v1), rtol=1e-3) or kernel == "linear"


def test_theory_init_scales(rng, key):
    x = inputs(rng)
    small = theory_model(qk_init_scale=0.1, v_init_scale=3.0).init(key, x)["params"]["attention"]
    base = theory_model().init(key, x)["params"]["attention"]
    for m, ratio in (("query", 0.1), ("key", 0.1), ("value", 3.0)):
        np.testing.assert_allclose(small[m]["kernel"], ratio * base[m]["kernel"], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Independent seeds through jax.vmap(init)


def test_vmap_init_stacks_independent_seeds(rng, key):
    model = theory_model("gaussian", output_projection=True)
    x = inputs(rng)
    seeds = 4
    keys = jax.random.split(key, seeds)
    stacked = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(keys, x)
    singles = [model.init(keys[i], x) for i in range(seeds)]
    leaves = jax.tree_util.tree_leaves(stacked)
    assert len(leaves) == 4
    for i, single in enumerate(singles):
        assert jax.tree_util.tree_structure(single) == jax.tree_util.tree_structure(stacked)
        for stack, leaf in zip(leaves, jax.tree_util.tree_leaves(single), strict=True):
            assert stack.shape == (seeds, *leaf.shape)
            np.testing.assert_allclose(stack[i], leaf, rtol=1e-6, atol=0)
    for stack in leaves:  # every seed differs from every other
        for i in range(seeds):
            for j in range(i):
                assert not np.allclose(stack[i], stack[j])
    # the stack runs as a batch of models
    outs = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(stacked, x)
    for i, single in enumerate(singles):
        np.testing.assert_allclose(outs[i], model.apply(single, x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Encoder classifier


def tokens_and_valid(rng, batch=3, length=6, pooling="mean"):
    """Tokens and validity flags; with CLS pooling one token fewer, so that the blocks see the
    same [3, 6, 8] shapes either way (eager ops compile once per shape)."""
    length -= pooling == "cls"
    tokens = jnp.asarray(rng.integers(1, 11, size=(batch, length)), jnp.int32)
    valid = np.ones((batch, length), bool)
    valid[0, 4:] = False
    valid[1, 2:] = False
    valid[2, 3] = False  # padding in the middle: masking must not assume it comes last
    return tokens, jnp.asarray(valid)


@pytest.mark.parametrize("position", ["none", "sinusoidal", "learned"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_pooling_and_position(pooling, position, rng, key):
    model = encoder(pooling=pooling, position=position)
    tokens, valid = tokens_and_valid(rng, pooling=pooling)
    params = model.init(key, tokens, valid)
    p = params["params"]
    assert ("cls" in p) == (pooling == "cls")
    assert ("position_encoding" in p) == (position == "learned")
    if position == "learned":  # max_len + 1 rows with a CLS token
        assert p["position_encoding"]["embedding"].shape == (8 + (pooling == "cls"), 8)
    logits = model.apply(params, tokens, valid)
    assert logits.shape == (3, 3) and np.all(np.isfinite(logits))
    # the position encoding matters (except 'none'): permuting tokens changes the logits
    permuted = model.apply(params, tokens[:, ::-1], jnp.ones_like(valid))
    unpermuted = model.apply(params, tokens, jnp.ones_like(valid))
    if position != "none":
        assert not np.allclose(permuted, unpermuted, atol=1e-6)
    elif pooling == "mean":  # no position information and symmetric pooling: invariant
        np.testing.assert_allclose(permuted, unpermuted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kernel, pooling",
    [(k, "mean") for k in BUILTIN] + [("softmax", "cls"), ("gaussian", "cls")],
)
def test_padding_tokens_do_not_change_logits(kernel, pooling, rng, key):
    model = encoder(kernel=kernel, pooling=pooling)
    tokens, valid = tokens_and_valid(rng, pooling=pooling)
    params = model.init(key, tokens, valid)
    logits = model.apply(params, tokens, valid)
    other = jnp.where(valid, tokens, jnp.asarray(rng.integers(1, 11, size=tokens.shape)))
    other = other.at[~np.asarray(valid)].set((tokens[~np.asarray(valid)] % 10) + 1)  # all differ
    assert np.all(np.asarray(other != tokens) == ~np.asarray(valid))
    np.testing.assert_allclose(model.apply(params, other, valid), logits, rtol=1e-6, atol=1e-6)
    # a valid token does change them (the check can fail)
    changed = tokens.at[0, 0].set(tokens[0, 0] % 10 + 1)
    assert not np.allclose(model.apply(params, changed, valid)[0], logits[0], atol=1e-6)


def test_encoder_implementations_agree(rng, key):
    tokens, valid = tokens_and_valid(rng)
    slow = encoder(kernel="gaussian", implementation="explicit")
    params = slow.init(key, tokens, valid)
    expected = slow.apply(params, tokens, valid)
    for implementation in ("fast", "blockwise"):
        got = encoder(kernel="gaussian", implementation=implementation).apply(params, tokens, valid)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_learned_position_longer_than_max_len_raises(rng, key):
    tokens, valid = tokens_and_valid(rng)  # length 6
    with pytest.raises(ValueError, match="max_len=5"):
        encoder(position="learned", max_len=5).init(key, tokens, valid)
    model = encoder(position="learned", max_len=6)
    params = model.init(key, tokens, valid)  # max_len itself is fine
    assert model.apply(params, tokens, valid).shape == (3, 3)
    with pytest.raises(ValueError, match="max_len=6"):
        model.apply(params, jnp.ones((3, 7), jnp.int32))
    # sinusoidal extrapolates past max_len
    sinusoidal = encoder(position="sinusoidal", max_len=4)
    assert sinusoidal.apply(sinusoidal.init(key, tokens, valid), tokens, valid).shape == (3, 3)


def test_encoder_dense_embedding(rng, key):
    model = encoder(embedding="dense")
    x = jnp.asarray(rng.normal(size=(3, 6, 5)), jnp.float32)
    assert model.apply(model.init(key, x), x).shape == (3, 3)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"pooling": "max"}, "pooling 'max'"),
        ({"embedding": "onehot"}, "embedding 'onehot'"),
        ({"position": "rotary"}, "rotary.*sinusoidal"),
        ({"kernel": "no_such_kernel"}, "no_such_kernel.*softmax"),
    ],
)
def test_encoder_bad_options_raise(kw, match, key):
    with pytest.raises(ValueError, match=match):
        encoder(**kw).init(key, jnp.ones((3, 6), jnp.int32))


def test_kernel_registry_is_what_models_use():
    assert set(BUILTIN) <= set(kernels.names())


def test_encoder_gradient_matches_finite_differences_with_dropout(rng, key):
    """The LayerNorms and the MLP are recomputed in the backward pass (``nn.remat``): their
    gradients, dropout included (the recomputation must draw the same mask), equal fourth-order
    central finite differences of the loss along a random direction, in float64."""
    with jax.enable_x64(True):
        tokens, valid = tokens_and_valid(rng)
        labels = jnp.asarray(rng.integers(0, 3, size=3))
        model = encoder(dropout_rate=0.3, dtype=jnp.float64, num_layers=1)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(key, tokens, valid))
        dropout = jax.random.fold_in(key, 1)

        def loss(p, rng=dropout):  # in float64 (models.classification_loss is float32)
            logits = model.apply(p, tokens, valid, train=True, rngs={"dropout": rng})
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))

        leaves, treedef = jax.tree.flatten(params)
        direction = jax.tree.unflatten(
            treedef, [jnp.asarray(rng.normal(size=x.shape)) for x in leaves]
        )
        along = jax.jit(lambda t: loss(jax.tree.map(lambda p, d: p + t * d, params, direction)))
        # fourth-order central difference: over 60 draws its relative error was at most
        # 3e-10 (the two-point difference at eps=1e-5 reached 1.3e-6, past this rtol)
        eps = 1e-4
        numeric = (8 * (along(eps) - along(-eps)) - (along(2 * eps) - along(-2 * eps))) / (12 * eps)
        grads = jax.jit(jax.grad(loss))(params)
        pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        analytic = sum(jnp.vdot(g, d) for g, d in pairs)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7)
        # dropout is on: another mask gives another loss (the check above can fail)
        assert not np.isclose(loss(params, key), loss(params))
