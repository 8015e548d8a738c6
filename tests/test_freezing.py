"""Trainable subsets: frozen leaves stay bit-identical under adamw (weight decay included) and
the optimiser holds state for the trainable leaves only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_dynamics import freezing, models

LETTER_SPECS = ["QKV", "QK", "QV", "KV", "Q", "K", "V"]
MODULE = {"Q": "query", "K": "key", "V": "value"}
STEPS = 50


def theory_model(output_projection: bool, kernel: str = "softmax") -> models.TheoryModel:
    return models.TheoryModel(
        dim=8, out_dim=4, num_heads=2, kernel=kernel, output_projection=output_projection
    )


def encoder() -> models.EncoderClassifier:
    return models.EncoderClassifier(
        num_classes=3, vocab_size=11, num_layers=2, embed_dim=8, mlp_dim=16, max_len=8
    )


def leaves_by_path(tree) -> dict[str, np.ndarray]:
    return {
        freezing.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def expected_trainable(spec: str, output_projection: bool) -> set[str]:
    modules = [MODULE[c] for c in spec] + (["out"] if output_projection else [])
    return {f"params/attention/{m}/kernel" for m in modules}


def state_param_paths(opt_state) -> tuple[set[str], list[str]]:
    """(parameter paths the optimiser state holds leaves for, paths of its other leaves)."""
    held, other = set(), []
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        path = freezing.path_str(path)
        parts = path.split("/")
        if "params" in parts:
            held.add("/".join(parts[parts.index("params") :]))
        else:
            other.append(path)
            assert np.ndim(leaf) == 0, f"optimiser leaf {path} is not a parameter's state"
    return held, other


def train(model, params, spec, x, y, *, steps=STEPS, layers=None):
    """``steps`` of adamw (weight decay > 0) on the trainable subset; returns the final
    (params, opt_state, initial loss, final loss)."""
    tx = optax.adamw(learning_rate=1e-2, weight_decay=0.1)
    trainable, frozen, opt_state = freezing.init_optimizer(params, spec, tx, layers=layers)

    def loss(trainable, frozen):
        return models.regression_loss(model.apply(freezing.merge(trainable, frozen), x), y)

    @jax.jit
    def run(trainable, frozen, opt_state):
        def step(_, carry):
            trainable, opt_state = carry
            grads = jax.grad(loss)(trainable, frozen)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state

        first = loss(trainable, frozen)
        trainable, opt_state = jax.lax.fori_loop(0, steps, step, (trainable, opt_state))
        return trainable, opt_state, first, loss(trainable, frozen)

    trainable, opt_state, first, last = run(trainable, frozen, opt_state)
    return freezing.merge(trainable, frozen), opt_state, float(first), float(last)


@pytest.mark.parametrize(
    "spec, output_projection",
    [(s, False) for s in LETTER_SPECS] + [(s, True) for s in LETTER_SPECS] + [("", True)],
)
def test_frozen_bit_identical_and_optimizer_holds_trainable_only(spec, output_projection, rng, key):
    model = theory_model(output_projection)
    x = jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(4, 5, 4)), jnp.float32)
    params = model.init(key, x)
    before = leaves_by_path(params)
    expected = expected_trainable(spec, output_projection)
    assert expected <= set(before)

    tx = optax.adamw(learning_rate=1e-2, weight_decay=0.1)
    trainable, frozen, opt_state = freezing.init_optimizer(params, spec, tx)
    assert set(leaves_by_path(trainable)) == expected
    assert set(leaves_by_path(frozen)) == set(before) - expected
    held, other = state_param_paths(opt_state)
    assert held == expected and other  # adam's step count is the only non-parameter leaf

    trained, opt_state, first, last = train(model, params, spec, x, y)
    after = leaves_by_path(trained)
    assert set(after) == set(before)
    for path in before:
        if path in expected:
            assert not np.array_equal(after[path], before[path]), f"{path} did not train"
        else:
            assert after[path].dtype == before[path].dtype
            assert np.array_equal(after[path], before[path]), f"frozen {path} moved"
    assert last < first
    held, _ = state_param_paths(opt_state)
    assert held == expected
    frozen_modules = {MODULE[c] for c in "QKV" if c not in spec}
    for path, _ in jax.tree_util.tree_leaves_with_path(opt_state):
        assert not frozen_modules & set(freezing.path_str(path).split("/"))


def test_nothing_trainable_raises(rng, key):
    model = theory_model(output_projection=False)
    params = model.init(key, jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32))
    mask = freezing.trainable_mask(params, "")
    assert not any(jax.tree_util.tree_leaves(mask))
    with pytest.raises(ValueError, match="leaves no parameter"):
        freezing.init_optimizer(params, "", optax.adamw(1e-2))


def mask_paths(mask) -> set[str]:
    return {p for p, m in leaves_by_path(mask).items() if m}


@pytest.fixture
def encoder_params(rng):
    """Random parameters with the encoder's tree (masks depend on paths only; skipping init's
    random-number kernels saves seconds of compilation)."""
    shapes = jax.eval_shape(encoder().init, jax.random.key(0), jnp.ones((3, 6), jnp.int32))
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def test_regex_specs(rng, key):
    model = theory_model(output_projection=True)
    params = model.init(key, jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32))
    assert mask_paths(freezing.trainable_mask(params, ["attention/value", "attention/out"])) == {
        "params/attention/value/kernel",
        "params/attention/out/kernel",
    }
    assert mask_paths(freezing.trainable_mask(params, "re:query/kernel$")) == {
        "params/attention/query/kernel"
    }
    assert mask_paths(freezing.trainable_mask(params, "re:(query|key)/")) == {
        "params/attention/query/kernel",
        "params/attention/key/kernel",
    }


def test_regex_spec_trains_only_matches(rng, key):
    model = theory_model(output_projection=True, kernel="gaussian")
    x = jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32)
    params = model.init(key, x)
    trained, opt_state, _, _ = train(model, params, "re:attention/(query|out)/", x, y, steps=5)
    before, after = leaves_by_path(params), leaves_by_path(trained)
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    assert moved == {"params/attention/query/kernel", "params/attention/out/kernel"}
    assert state_param_paths(opt_state)[0] == moved


def test_regex_on_encoder(encoder_params):
    got = mask_paths(freezing.trainable_mask(encoder_params, "re:block_1/attention/(query|key)/"))
    assert got == {
        f"params/block_1/attention/{m}/{leaf}"
        for m in ("query", "key")
        for leaf in ("kernel", "bias")
    }


def test_layers_on_encoder(encoder_params):
    paths = set(freezing.param_paths(encoder_params))
    frozen = paths - mask_paths(freezing.trainable_mask(encoder_params, "V", layers=[0]))
    assert frozen == {
        f"params/block_0/attention/{m}/{leaf}"
        for m in ("query", "key")
        for leaf in ("kernel", "bias")
    }
    frozen = paths - mask_paths(freezing.trainable_mask(encoder_params, "QK", layers=(1,)))
    assert frozen == {
        "params/block_1/attention/value/kernel",
        "params/block_1/attention/value/bias",
    }
    # without layers= the spec applies to every block
    frozen = paths - mask_paths(freezing.trainable_mask(encoder_params, "V"))
    assert len(frozen) == 8 and all("/query/" in p or "/key/" in p for p in frozen)
    trainable, frozen_tree, opt_state = freezing.init_optimizer(
        encoder_params, "V", optax.adamw(1e-3, weight_decay=0.1), layers=[0]
    )
    assert set(leaves_by_path(frozen_tree)) == {
        f"params/block_0/attention/{m}/{leaf}"
        for m in ("query", "key")
        for leaf in ("kernel", "bias")
    }
    assert state_param_paths(opt_state)[0] == set(leaves_by_path(trainable))
    with pytest.raises(ValueError, match="layers"):
        freezing.trainable_mask(encoder_params, "V", layers=[5])
    with pytest.raises(ValueError, match="layers"):
        freezing.trainable_mask(encoder_params, "re:value", layers=[0])


def test_bad_letter_raises(encoder_params):
    with pytest.raises(ValueError, match="'QX'"):
        freezing.trainable_mask(encoder_params, "QX")
    with pytest.raises(ValueError, match="'QQ'"):
        freezing.trainable_mask(encoder_params, "QQ")


def test_spec_matching_nothing_raises(encoder_params):
    with pytest.raises(ValueError, match="nomatch_anywhere"):
        freezing.trainable_mask(encoder_params, "re:nomatch_anywhere")
    with pytest.raises(ValueError, match="zzz"):
        freezing.trainable_mask(encoder_params, ["value", "zzz"])
    with pytest.raises(ValueError, match="invalid trainable regex"):
        freezing.trainable_mask(encoder_params, "re:(")
    no_query = {"params": {"dense": {"kernel": jnp.ones((2, 2))}, "value": {"kernel": jnp.ones(2)}}}
    with pytest.raises(ValueError, match="query"):
        freezing.trainable_mask(no_query, "Q")
    with pytest.raises(ValueError, match="query"):
        freezing.init_optimizer(no_query, "QV", optax.sgd(0.1))


def test_split_merge_round_trip(encoder_params):
    mask = freezing.trainable_mask(encoder_params, "Q", layers=[1])
    trainable, frozen = freezing.split(encoder_params, mask)
    size = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
    assert size(trainable) + size(frozen) == size(encoder_params)
    merged = freezing.merge(trainable, frozen)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(encoder_params)
    for a, b in zip(
        jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(encoder_params), strict=True
    ):
        assert a is b
    with pytest.raises(ValueError, match="both halves"):
        freezing.merge(trainable, trainable)
