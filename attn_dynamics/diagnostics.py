"""Quantities the convergence theory talks about, measured rather than assumed.

* the *attention-output matrix* ``Phi = [A_1 X_1; ...; A_n X_n]`` (``[n*N, heads*d]``): with
  W_Q, W_K fixed the theory model's output is ``Phi W_V`` (per head blocks), so GD on W_V alone
  reaches zero loss iff ``Phi`` has full row rank, i.e. ``sigma_min(Phi) > 0`` (needs d >= n*N);
* singular values of W_Q, W_K against those of W_V, whose ratio at initialisation the theorems
  require to be large enough;
* per-matrix norms, for training-dynamics plots.
"""

from __future__ import annotations

from collections import defaultdict

import jax
import jax.numpy as jnp

from attn_dynamics import freezing

Array = jax.Array


def attention_output_matrix(weights: Array, x: Array) -> Array:
    """``Phi``: ``weights [n, h, N, N]``, ``x [n, N, d]`` -> ``[n*N, h*d]`` (heads side by side)."""
    per_head = jnp.einsum("nhij,njd->nihd", weights, x)
    return per_head.reshape((-1, per_head.shape[-2] * per_head.shape[-1]))


def singular_values(matrix: Array) -> Array:
    return jnp.linalg.svd(matrix.astype(jnp.float32), compute_uv=False)


def sigma_min(matrix: Array) -> Array:
    """Smallest singular value of the *rows*: 0 when ``rows > cols`` (no full row rank)."""
    rows, cols = matrix.shape[-2:]
    return jnp.where(rows > cols, 0.0, singular_values(matrix)[..., -1])


THEORY_MATRICES = ("query", "key", "value")


def theory_quantities(
    params: dict, weights: Array, x: Array, known: dict[str, Array] | None = None
) -> dict[str, Array]:
    """The theorems' quantities for one theory-model parameter set and its attention weights.

    ``known`` maps matrix names (``THEORY_MATRICES``) to singular values already computed: a
    frozen matrix never changes, so its SVD need not be redone at every logged step.
    """
    attn = params["attention"]
    known = known or {}
    sv = {n: known[n] if n in known else singular_values(attn[n]["kernel"])
          for n in THEORY_MATRICES}  # fmt: skip
    s_q, s_k, s_v = sv["query"], sv["key"], sv["value"]
    return {
        "sigma_min_attention_output": sigma_min(attention_output_matrix(weights, x)),
        "sv_ratio_q_v": s_q[-1] / s_v[0],  # sigma_min(W_Q) / sigma_max(W_V)
        "sv_ratio_k_v": s_k[-1] / s_v[0],
        "sigma_max_q": s_q[0],
        "sigma_max_k": s_k[0],
        "sigma_max_v": s_v[0],
        "sigma_min_v": s_v[-1],
    }


def matrix_of(path: str) -> str:
    """The matrix a parameter belongs to.

    ``block_0/attention/query/kernel`` -> ``block_0/attention/query``.
    """
    return path.rsplit("/", 1)[0] if "/" in path else path


def norms_by_matrix(tree) -> dict[str, Array]:
    """L2 norm of each matrix (its kernel and bias together), keyed by :func:`matrix_of`."""
    squares: dict[str, Array] = defaultdict(lambda: jnp.zeros((), jnp.float32))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = matrix_of(jax.tree_util.keystr(path, simple=True, separator="/"))
        squares[name] = squares[name] + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {name: jnp.sqrt(s) for name, s in squares.items()}


def global_norm(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


# --------------------------------------------------------------------------------------------
# Loss landscape (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets") and sharpness


def filter_normalized_direction(key: Array, params, mask=None, *, ignore_1d: bool = True):
    """A random direction like ``params``, each filter rescaled to its parameter's filter norm.

    A *filter* is a slice along the last axis of a leaf with two or more dimensions (an output
    unit of a ``Dense`` kernel ``[in, out]``, a feature column of an embedding): the direction's
    slice gets the Gaussian draw scaled to ``||theta_filter|| / ||d_filter||``. One-dimensional
    leaves (biases, LayerNorm scales) get zero when ``ignore_1d`` (Li et al.'s choice), else the
    whole leaf is normalised to the leaf's norm. Leaves where ``mask`` (a tree of bools) is False
    get zero: a frozen matrix is not a direction of the trained loss.

    The draw depends only on ``key`` and the tree structure and shapes, so two models with the
    same parameter layout (e.g. softmax and Gaussian kernels) get the same random directions,
    each normalised to its own weights.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    masks = [True] * len(leaves) if mask is None else jax.tree_util.tree_leaves(mask)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, p, m in zip(keys, leaves, masks, strict=True):
        p = jnp.asarray(p)
        d = jax.random.normal(k, p.shape, p.dtype)
        if not m or (p.ndim < 2 and ignore_1d):
            out.append(jnp.zeros_like(p))
            continue
        axes = tuple(range(p.ndim - 1)) if p.ndim >= 2 else None
        p_norm = jnp.sqrt(jnp.sum(jnp.square(p), axis=axes, keepdims=p.ndim >= 2))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=p.ndim >= 2))
        out.append(d * p_norm / jnp.maximum(d_norm, jnp.finfo(p.dtype).tiny))
    return jax.tree_util.tree_unflatten(treedef, out)


def loss_surface(loss_fn, params, d1, d2, alphas, betas, *, chunk: int = 64) -> Array:
    """``L(theta + a d1 + b d2)`` on the grid ``alphas x betas``: ``[len(alphas), len(betas)]``.

    ``loss_fn(params) -> scalar``. Grid points are evaluated ``chunk`` at a time (vmapped), so
    memory stays bounded for large grids and models.
    """
    alphas, betas = jnp.asarray(alphas), jnp.asarray(betas)
    a, b = jnp.meshgrid(alphas, betas, indexing="ij")
    coords = jnp.stack([a.ravel(), b.ravel()], axis=-1)

    def at(ab):
        moved = jax.tree.map(lambda p, u, v: p + ab[0] * u + ab[1] * v, params, d1, d2)
        return loss_fn(moved)

    batched = jax.jit(jax.vmap(at))
    values = [batched(coords[i : i + chunk]) for i in range(0, coords.shape[0], chunk)]
    return jnp.concatenate(values).reshape(a.shape)


def hvp(loss_fn, params, vector):
    """Hessian-vector product ``H(theta) v`` (forward-over-reverse: ``jvp`` of ``grad``)."""
    return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def top_hessian_eigenvalue(
    loss_fn,
    params,
    key: Array,
    *,
    num_iters: int = 100,
    tol: float = 1e-6,
    largest: str = "magnitude",
):
    """Sharpness: the top Hessian eigenvalue, by power iteration on Hessian-vector products.

    ``largest='magnitude'``: the eigenvalue of largest magnitude (signed);
    ``largest='algebraic'``: the largest eigenvalue (if the one of largest magnitude is
    negative, a second power iteration on ``H - lambda_1 I``, whose spectrum is >= 0, finds it).

    Returns ``(eigenvalue, eigenvector, iterations)``; the eigenvector is a pytree like
    ``params`` with unit norm. Each power iteration stops when the Rayleigh quotient changes by
    less than ``tol * |eigenvalue|`` between iterations, or after ``num_iters``. Near a minimum
    the Hessian is (nearly) positive semi-definite and both choices agree: the "sharpness" that
    bounds stable GD step sizes (lr < 2 / sharpness). The Hessian is never formed: memory is
    that of one gradient.
    """
    from jax.flatten_util import ravel_pytree

    if largest not in ("magnitude", "algebraic"):
        raise ValueError(f"largest must be 'magnitude' or 'algebraic', got {largest!r}")
    flat, unravel = ravel_pytree(params)
    flat_loss = lambda x: loss_fn(unravel(x))
    hvp_flat = lambda v: jax.jvp(jax.grad(flat_loss), (flat,), (v,))[1]
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    lam, v, iters = _power_iteration(hvp_flat, v0, num_iters, tol)
    if largest == "algebraic":
        shift = jnp.minimum(lam, 0.0)  # no shift when the dominant eigenvalue is positive
        mu, v2, more = _power_iteration(lambda u: hvp_flat(u) - shift * u, v0, num_iters, tol)
        lam = jnp.where(shift < 0, mu + shift, lam)
        v = jnp.where(shift < 0, v2, v)
        iters = iters + jnp.where(shift < 0, more, 0)
    return lam, unravel(v), iters


def sharpness(loss_fn, params, mask, key: Array, **power_iteration) -> tuple[Array, Array]:
    """Top Hessian eigenvalue of ``loss_fn`` w.r.t. the leaves where ``mask`` is True only.

    Frozen parameters are held at their values: they are not directions the optimiser moves
    in, so they do not count towards the step-size limit ``lr < 2 / sharpness``. Keyword
    arguments go to :func:`top_hessian_eigenvalue` (``largest='algebraic'`` unless given).
    Returns ``(eigenvalue, iterations)``.
    """
    trainable, frozen = freezing.split(params, mask)
    power_iteration = {"largest": "algebraic", **power_iteration}
    lam, _, iters = top_hessian_eigenvalue(
        lambda t: loss_fn(freezing.merge(t, frozen)), trainable, key, **power_iteration
    )
    return lam, iters


def _power_iteration(matvec, v0: Array, num_iters: int, tol: float):
    def cond(state):
        i, _, lam, prev = state
        return (i < num_iters) & (jnp.abs(lam - prev) > tol * jnp.abs(lam))

    def body(state):
        i, v, lam, _ = state
        hv = matvec(v)
        new_lam = jnp.vdot(v, hv)
        norm = jnp.linalg.norm(hv)
        v = jnp.where(norm > 0, hv / jnp.where(norm > 0, norm, 1.0), v)
        return i + 1, v, new_lam, lam

    inf = jnp.asarray(jnp.inf, v0.dtype)
    i, v, _, _ = jax.jit(lambda s: jax.lax.while_loop(cond, body, s))(
        (jnp.asarray(0), v0, jnp.asarray(0.0, v0.dtype), inf)
    )
    return jnp.vdot(v, matvec(v)), v, i  # the Rayleigh quotient of the final vector


def dense_hessian(loss_fn, params) -> Array:
    """The full Hessian over the flattened parameters (tiny models and tests only)."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda x: loss_fn(unravel(x)))(flat)
