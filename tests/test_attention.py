"""Multi-head attention: fused path == explicit path, user kernels by name, the Flax module."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_dynamics import attention, kernels
from attn_dynamics.attention import MultiHeadAttention

# User kernels registered once at import through the public decorators: they must work by name
# through multi_head_attention and the module, like the built-in ones.
USER_SOFTMAX = "test_attention_shifted"  # softmax form with a key bias and an option
USER_GENERAL = "test_attention_relu"  # general kernel, explicit path only


@kernels.register_softmax(USER_SOFTMAX)
def _shifted() -> kernels.SoftmaxForm:
    # softmax_j(q.k / sqrt(d) + shift * k_j[0]): a per-key bias like the Gaussian's.
    return kernels.SoftmaxForm(
        scale=lambda d, **_: 1.0 / math.sqrt(d),
        key_bias=lambda k, shift=0.5, **_: shift * jnp.swapaxes(k[..., 0], -1, -2)[..., None, :],
    )


@kernels.register(USER_GENERAL, normalized=False)
def _relu(q, k, mask=None, **_):
    return kernels.apply_mask(jax.nn.relu(kernels.dot_scores(q, k)) / q.shape[-1], mask)


def np_user_weights(name, q, k, mask=None, shift=0.5):
    """Float64 NumPy weights of the two user kernels (``[..., h, Tq, Tk]``)."""
    dots = np.einsum("...qhd,...khd->...hqk", q, k)
    full = np.ones(dots.shape, bool) if mask is None else np.broadcast_to(mask, dots.shape)
    if name == USER_GENERAL:
        return np.where(full, np.maximum(dots, 0.0) / q.shape[-1], 0.0)
    logits = dots / math.sqrt(q.shape[-1]) + shift * np.swapaxes(k[..., 0], -1, -2)[..., None, :]
    e = np.where(full, np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def np_attend(weights, v):
    return np.einsum("...hqk,...khd->...qhd", weights, v)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


def softmax_form_names():
    return [n for n in kernels.names() if kernels.lookup(n).softmax_form is not None]


def make_mask(rng, batch, t, kind):
    if kind is None:
        return None
    valid = rng.random(size=(*batch, t)) < 0.7
    valid[..., 0] = True
    valid.reshape(-1, t)[0, 1:] = False  # sample 0: a single valid token, so empty query rows
    padding = kernels.padding_mask(jnp.asarray(valid))
    causal = kernels.causal_mask(t)
    if kind == "padding":
        return padding
    if kind == "causal":
        return causal  # [1, T, T]: fewer axes than the weights, broadcast over the batch
    return padding & causal.reshape((1,) * (padding.ndim - 3) + causal.shape)


CASES = {  # batch shape, sequence length, heads, q/k head dim, v head dim, mask
    "plain": ((), 6, 2, 8, 8, None),
    "batch-dv>d-padding": ((3,), 7, 2, 4, 12, "padding"),
    "batch-dv<d-causal": ((2,), 6, 2, 8, 4, "causal"),
    "batch2-dv<d-combined": ((2, 3), 5, 3, 12, 4, "combined"),
}


@functools.partial(jax.jit, static_argnames="name")
def both_paths(q, k, v, mask, cotangent, *, name):
    """(output, grads w.r.t. q, k, v) of the fused and the explicit path, in one compilation
    (a whole jitted test is far cheaper than compiling each op eagerly for new shapes)."""

    def run(attend):
        def loss(q, k, v):
            out = attend(q, k, v, kernel=name, mask=mask)
            return jnp.sum(out.astype(jnp.float32) * cotangent), out

        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    return run(attention.fused_attention), run(attention.explicit_attention)


def fused_cases():
    """Every case for the built-in softmax-form kernels, the hardest one for other ones."""
    return [
        (name, case)
        for name in softmax_form_names()
        for case in (CASES if name in ("gaussian", "softmax") else ["batch2-dv<d-combined"])
    ]


@pytest.mark.parametrize("name, case", fused_cases())
def test_fused_equals_explicit(name, case, rng):
    batch, t, heads, d, dv, mask_kind = CASES[case]
    q = jnp.asarray(rng.normal(size=(*batch, t, heads, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*batch, t, heads, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(*batch, t, heads, dv)), jnp.float32)
    mask = make_mask(rng, batch, t, mask_kind)
    cot = jnp.asarray(rng.normal(size=(*batch, t, heads, dv)), jnp.float32)
    (fast, fast_grads), (explicit, explicit_grads) = both_paths(q, k, v, mask, cot, name=name)
    assert fast.shape == explicit.shape == (*batch, t, heads, dv)
    np.testing.assert_allclose(fast, explicit, rtol=1e-5, atol=2e-6)
    for a, b in zip(fast_grads, explicit_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if mask is not None:  # fully masked query rows give zeros on both paths
        no_key = ~np.broadcast_to(np.asarray(mask), (*batch, heads, t, t)).any(-1)
        assert no_key.any() or mask_kind == "causal"
        no_key = np.swapaxes(no_key, -1, -2)  # [..., Tq, h]
        np.testing.assert_array_equal(np.asarray(fast)[no_key], 0.0)
        np.testing.assert_array_equal(np.asarray(explicit)[no_key], 0.0)


@functools.partial(jax.jit, static_argnames="name")
def fused_value_and_grads(q, k, v, mask, *, name):
    def loss(q, k, v):
        out = attention.fused_attention(q, k, v, kernel=name, mask=mask)
        return jnp.sum(out.astype(jnp.float32)), out

    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", softmax_form_names())
def test_fused_finite_for_far_apart_and_coincident(name, dtype, rng):
    shape = (2, 6, 2, 8)
    base = rng.normal(size=shape)
    direction = rng.normal(size=8)
    far = base + 100.0 * direction / np.linalg.norm(direction)  # ||q - k||^2 ~ 1e4
    v = jnp.asarray(rng.normal(size=shape), dtype)
    mask = make_mask(rng, (2,), 6, "padding")
    for q, k in ((base, base), (base, far)):
        q, k = jnp.asarray(q, dtype), jnp.asarray(k, dtype)
        out, grads = fused_value_and_grads(q, k, v, mask, name=name)
        assert out.dtype == dtype
        assert np.all(np.isfinite(np.asarray(out, np.float32)))
        for g in grads:
            assert g.dtype == dtype
            assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_fused_matches_float64_reference(rng):
    """Both paths against an output computed in NumPy float64 (Gaussian with explicit sigma2)."""
    q, k, v = (rng.normal(size=(2, 5, 2, d)) for d in (8, 8, 6))
    sigma2 = 2.0
    sq = np.sum((q[:, :, None] - k[:, None, :]) ** 2, -1).transpose(0, 3, 1, 2)  # [B,h,Tq,Tk]
    w = np.exp(-sq / (2 * sigma2))
    expected = np_attend(w / w.sum(-1, keepdims=True), v)
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    for attend in (attention.fused_attention, attention.explicit_attention):
        got = jax.jit(functools.partial(attend, kernel="gaussian", sigma2=sigma2))(*args)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_implementation_choice_and_errors(rng, monkeypatch):
    q, k, v = (jnp.asarray(rng.normal(size=(4, 2, 4)), jnp.float32) for _ in range(3))
    with pytest.raises(ValueError, match="no softmax form"):
        attention.multi_head_attention(q, k, v, kernel="linear", implementation="fast")
    with pytest.raises(ValueError, match="'flash'.*auto"):
        attention.multi_head_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="nope.*softmax"):
        attention.multi_head_attention(q, k, v, kernel="nope")
    with pytest.raises(ValueError, match="no softmax form"):
        attention.multi_head_attention(q, k, v, kernel="linear", implementation="blockwise")
    # which path each (kernel, implementation) takes, seen through spies
    calls = []
    for path, fn in (
        ("fast", "fused_attention"),
        ("blockwise", "blockwise_attention"),
        ("explicit", "explicit_attention"),
    ):
        monkeypatch.setattr(attention, fn, lambda *a, path=path, **kw: calls.append(path))
    on_cpu = jax.default_backend() == "cpu"
    long_keys = jnp.zeros((attention.BLOCK_Q, 2, 4))
    for name in kernels.names():
        has_form = kernels.lookup(name).softmax_form is not None
        auto_long = ("blockwise" if on_cpu else "fast") if has_form else "explicit"
        auto = ("explicit" if on_cpu else "fast") if has_form else "explicit"  # 4 keys
        assert attention.default_implementation(name, 4) == auto
        calls.clear()
        attention.multi_head_attention(q, long_keys, long_keys, kernel=name)
        assert calls == [auto_long], name
        for impl, expected in (
            ("auto", auto),
            ("explicit", "explicit"),
            ("fast", "fast"),
            ("blockwise", "blockwise"),
        ):
            calls.clear()
            attention.multi_head_attention(q, k, v, kernel=name, implementation=impl)
            assert calls == [expected], (name, impl)


@pytest.mark.parametrize("name", [USER_SOFTMAX, USER_GENERAL])
def test_user_kernel_by_name_in_pure_function(name, rng):
    q, k = (rng.normal(size=(3, 5, 2, 4)) for _ in range(2))
    v = rng.normal(size=(3, 5, 2, 6))
    mask = make_mask(rng, (3,), 5, "combined")
    expected = np_attend(np_user_weights(name, q, k, np.asarray(mask), shift=0.25), v)
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    impls = ["auto", "explicit"] + (["fast", "blockwise"] if name == USER_SOFTMAX else [])
    for impl in impls:
        attend = functools.partial(
            attention.multi_head_attention, kernel=name, implementation=impl, shift=0.25
        )
        got = jax.jit(attend)(*args, mask=mask)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [USER_SOFTMAX, USER_GENERAL, "gaussian"])
def test_module_by_name(name, rng):
    """The module computes heads exactly as the pure function on its own projections."""
    batch, t, dim, heads = 2, 5, 8, 2
    x = jnp.asarray(rng.normal(size=(batch, t, dim)), jnp.float32)
    options = {"sigma2": 3.0} if name == "gaussian" else None
    module = MultiHeadAttention(
        num_heads=heads,
        qk_features=dim,
        v_features=4,
        out_features=6,
        kernel=name,
        kernel_options=options,
    )
    params = jax.jit(module.init)(jax.random.key(int(rng.integers(2**31))), x)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    assert set(p) == {"query", "key", "value", "out"}
    x64 = np.asarray(x, np.float64)

    def proj(name_, features):
        y = x64 @ p[name_]["kernel"] + p[name_]["bias"]
        return y.reshape(batch, t, heads, features // heads)

    q, k, v = proj("query", dim), proj("key", dim), proj("value", 4)
    if name == "gaussian":
        sq = np.sum((q[:, :, None] - k[:, None, :]) ** 2, -1).transpose(0, 3, 1, 2)
        w = np.exp(-sq / 6.0)
        w = w / w.sum(-1, keepdims=True)
    else:
        w = np_user_weights(name, q, k)
    heads_out = np_attend(w, v).reshape(batch, t, 4)
    expected = heads_out @ p["out"]["kernel"] + p["out"]["bias"]
    got = jax.jit(module.apply)(params, x)
    assert got.shape == (batch, t, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    weights = jax.jit(functools.partial(module.apply, method=MultiHeadAttention.attention_weights))(
        params, x
    )
    np.testing.assert_allclose(weights, w, rtol=1e-5, atol=1e-6)


def test_module_kernel_options_and_mask(rng, key):
    x = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
    valid = jnp.asarray(rng.random(size=(2, 6)) < 0.7).at[:, 0].set(True)
    mask = kernels.padding_mask(valid)
    make = lambda **kw: MultiHeadAttention(num_heads=2, qk_features=8, kernel="gaussian", **kw)
    params = jax.jit(make().init)(key, x)
    apply = lambda module: jax.jit(module.apply)(params, x, mask=mask)
    default = apply(make())
    explicit_default = apply(make(kernel_options={"sigma2": math.sqrt(4)}))
    other = apply(make(kernel_options={"sigma2": 0.3}))
    np.testing.assert_allclose(default, explicit_default, rtol=1e-6)
    assert not np.allclose(default, other, atol=1e-3)
    slow = apply(make(implementation="explicit"))
    np.testing.assert_allclose(default, slow, rtol=1e-5, atol=1e-6)


def test_module_rejects_indivisible_heads():
    module = MultiHeadAttention(num_heads=3, qk_features=8)
    with pytest.raises(ValueError, match="qk_features=8.*heads=3"):
        module.init(jax.random.key(0), jnp.ones((1, 2, 8)))
