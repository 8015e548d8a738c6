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
    """``Phi``: ``weights [n, h, N, N]`` and ``x [n, N, d]`` -> ``[n*N, h*d]`` (heads side by side)."""
    per_head = jnp.einsum("nhij,njd->nihd", weights, x)
    return per_head.reshape((-1, per_head.shape[-2] * per_head.shape[-1]))


def singular_values(matrix: Array) -> Array:
    return jnp.linalg.svd(matrix.astype(jnp.float32), compute_uv=False)


def sigma_min(matrix: Array) -> Array:
    """Smallest singular value of the *rows*: 0 when ``rows > cols`` (no full row rank)."""
    rows, cols = matrix.shape[-2:]
    return jnp.where(rows > cols, 0.0, singular_values(matrix)[..., -1])


def theory_quantities(params: dict, weights: Array, x: Array) -> dict[str, Array]:
    """The theorems' quantities for one theory-model parameter set and its attention weights."""
    attn = params["attention"]
    s_q = singular_values(attn["query"]["kernel"])
    s_k = singular_values(attn["key"]["kernel"])
    s_v = singular_values(attn["value"]["kernel"])
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
    """The matrix a parameter belongs to: ``block_0/attention/query/kernel`` -> ``block_0/attention/query``."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def norms_by_matrix(tree) -> dict[str, Array]:
    """L2 norm of each matrix (its kernel and bias together), keyed by :func:`matrix_of`."""
    squares: dict[str, Array] = defaultdict(lambda: jnp.zeros((), jnp.float32))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = matrix_of(freezing.path_str(path))
        squares[name] = squares[name] + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {name: jnp.sqrt(s) for name, s in squares.items()}


def global_norm(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
