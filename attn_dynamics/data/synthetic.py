"""``synthetic_regression``: the theory's setting, ``n`` samples of ``N`` tokens in ``d`` dims.

``X ~ N(0, input_scale^2)`` iid, shape ``[n, N, d]``. Targets are iid ``N(0, 1)``
(``targets='random'``) or the output of a random one-layer attention teacher with kernel
``teacher_kernel`` and bandwidth ``teacher_sigma2`` (``targets='teacher'``; in the runner's
configs both follow the model's kernel unless set, so the targets are realisable by the model
being trained): the theory model ``T(X) = A(X W_Q, X W_K) X W_V``
with LeCun-normal weights, built here from :class:`attn_dynamics.attention.MultiHeadAttention`
under the parameter path of :class:`attn_dynamics.models.TheoryModel`, so it draws the same
weights as that model would from the same key. No files.

``batch_size = 0`` is full batch (gradient descent): every step returns the whole data set.
Otherwise minibatches walk a fresh permutation of the ``n`` samples every epoch. The only eval
split is ``'train'`` (the theory is about the training loss).
"""

from __future__ import annotations

import functools
from typing import Any

import ml_collections
import numpy as np

from attn_dynamics.data import base

TARGETS = ("random", "teacher")
X_STREAM, Y_STREAM, TEACHER_STREAM = 10, 11, 12


def default_config() -> ml_collections.ConfigDict:
    """The fields of ``experiments.defaults.synthetic_regression_config`` (there ``dim``,
    ``out_dim``, ``teacher_kernel`` and ``teacher_sigma2`` are references to the model's)."""
    d = ml_collections.ConfigDict()
    d.name = "synthetic_regression"
    d.num_samples = 8  # n
    d.seq_len = 4  # N
    d.dim = 64  # d
    d.out_dim = 1
    d.targets = "random"  # 'random' | 'teacher'
    d.teacher_kernel = "softmax"
    d.teacher_sigma2 = ml_collections.config_dict.placeholder(float)  # None: the kernel's default
    d.input_scale = 1.0
    d.batch_size = 0  # 0: full batch (gradient descent)
    d.seed = 0
    return d


def make_data(config) -> tuple[np.ndarray, np.ndarray]:
    """``(X [n, N, d], Y [n, N, out_dim])`` as float32 NumPy arrays."""
    n, seq, dim, out = (int(config[k]) for k in ("num_samples", "seq_len", "dim", "out_dim"))
    seed = int(config.seed)
    x = np.random.default_rng([seed, X_STREAM]).standard_normal((n, seq, dim))
    x = (float(config.input_scale) * x).astype(np.float32)
    if config.targets == "random":
        y = np.random.default_rng([seed, Y_STREAM]).standard_normal((n, seq, out))
        return x, y.astype(np.float32)
    return x, teacher_targets(x, out, config.teacher_kernel, seed, teacher_options(config))


def teacher_options(config) -> dict[str, float]:
    """The teacher kernel's options: its bandwidth when set (older configs lack the field)."""
    sigma2 = config.get("teacher_sigma2")
    return {} if sigma2 is None else {"sigma2": float(sigma2)}


def teacher_targets(
    x: np.ndarray, out_dim: int, kernel: str, seed: int, kernel_options=None
) -> np.ndarray:
    """``T(X)`` float32 of a random teacher :func:`theory_teacher` drawn from ``seed``."""
    import jax

    teacher = theory_teacher(
        dim=x.shape[-1], out_dim=out_dim, kernel=kernel, kernel_options=kernel_options
    )
    draw = lambda key, x: teacher.apply(teacher.init(key, x[:1]), x)  # jitted: eager init is slow
    key = jax.random.fold_in(jax.random.key(seed), TEACHER_STREAM)
    return np.asarray(jax.jit(draw)(key, x), np.float32)


def theory_teacher(
    dim: int,
    out_dim: int,
    kernel: str = "softmax",
    kernel_options=None,
    qk_init_scale: float = 1.0,
    v_init_scale: float = 1.0,
):
    """A flax module ``T(X) = A(X W_Q, X W_K) X W_V``: one head, no biases, weights
    ``N(0, scale^2 / d)``, parameters at ``attention/{query,key,value}/kernel`` as in
    :class:`attn_dynamics.models.TheoryModel` (same key, same weights)."""
    return _teacher_class()(dim, out_dim, kernel, kernel_options, qk_init_scale, v_init_scale)


@functools.cache
def _teacher_class():
    import flax.linen as nn

    from attn_dynamics.attention import MultiHeadAttention

    def scaled_normal(scale: float):
        return nn.initializers.variance_scaling(scale**2, "fan_in", "normal")

    class TheoryTeacher(nn.Module):
        dim: int
        out_dim: int
        kernel: str = "softmax"
        kernel_options: Any = None
        qk_init_scale: float = 1.0
        v_init_scale: float = 1.0

        def setup(self):
            self.attention = MultiHeadAttention(
                num_heads=1,
                qk_features=self.dim,
                v_features=self.out_dim,
                kernel=self.kernel,
                kernel_options=self.kernel_options,
                use_bias=False,
                qk_init=scaled_normal(self.qk_init_scale),
                v_init=scaled_normal(self.v_init_scale),
            )

        def __call__(self, x):
            return self.attention(x)

    return TheoryTeacher


class SyntheticRegression(base.Dataset):
    name = "synthetic_regression"
    eval_splits = ("train",)

    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        optional = {"teacher_sigma2"}  # run directories written before it existed resume
        base.check_fields(config, [f for f in default_config() if f not in optional], self.name)
        if config.targets not in TARGETS:
            raise ValueError(f"unknown targets {config.targets!r}; valid: {list(TARGETS)}")
        if config.targets == "teacher":
            from attn_dynamics import kernels

            kernels.lookup(config.teacher_kernel)  # ValueError listing the valid kernels
        for field in ("num_samples", "seq_len", "dim", "out_dim"):
            if int(config[field]) <= 0:
                raise ValueError(f"{self.name}: {field} must be positive, got {config[field]}")
        n = int(config.num_samples)
        bs = int(config.batch_size)
        if bs < 0 or bs > n:
            raise ValueError(f"{self.name}: batch_size must be in [0, num_samples={n}], got {bs}")
        self.full_batch = bs == 0
        self.train_batch_size = self.eval_batch_size = n if self.full_batch else bs
        self.train_size = n
        devices = base.data_axis_size(mesh)
        if self.full_batch and n % devices:
            raise ValueError(
                f"{self.name}: the full batch of num_samples={n} is not divisible by the "
                f"{devices} devices on mesh axis 'data'; use a multiple of {devices}"
            )
        self._check_batch_sizes()
        self.info = {
            "task": "regression",
            "dim": int(config.dim),
            "out_dim": int(config.out_dim),
            "seq_len": int(config.seq_len),
            "num_samples": n,
            "train_size": n,
            "full_batch": self.full_batch,
        }
        self._data: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:  # built on first use: get_dataset stays cheap
            self._data = make_data(self.config)
        return self._data

    def _examples(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
        x, y = self.arrays
        return {"inputs": x[indices], "targets": y[indices]}

    def _eval_size(self, split: str) -> int:
        return self.train_size
