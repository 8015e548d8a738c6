"""``student_teacher_regression``: targets a student reaches exactly by training W_Q alone.

The teacher *is* the student of the run's (single) seed at initialisation: the same W_K and W_V
(rebuilt from the seed with the runner's init stream), the same kernel, with W_Q replaced by an
independent draw of scale ``teacher_q_scale``. So ``Y = A(X W_Q*, X W_K) X W_V`` is a zero-loss
point of the Q-only problem, and "reaching the global optimum" means reaching zero loss. Inputs
``X`` are drawn as in ``synthetic_regression``; batching, eval split and validation are that
dataset's.

The fields ``dim``, ``out_dim``, ``student_seeds``, ``teacher_kernel``, ``teacher_sigma2`` and the
init scales must equal the run's (``configs/ablation_q_only.py`` makes them references to the
model's fields and to ``config.seeds``).

``teacher_kv = 'shared'`` instead makes many seeds share one teacher: W_K, W_V are the model's
*shared* matrices (``model.shared_init = 'KV'``, ``model.shared_init_seed = data.seed``), so every
seed of the run has the same frozen W_K, W_V and draws only its own W_Q; the teacher's W_Q comes
from ``data.seed`` too. One data draw is then one teacher, and any number of seeds train on it in
one program (``configs/ablation_small_model.py``).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
from ml_collections import config_dict

from attn_dynamics import streams
from attn_dynamics.data import synthetic

STUDENT_INIT_STREAM = streams.INIT  # the runner's: the student starts where a run starts
TEACHER_Q_STREAM = 13  # the teacher's W_Q: a stream no student parameter is drawn from
TEACHER_KV = ("seed", "shared")  # W_K, W_V: the one seed's own, or the model's shared draw


def default_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "student_teacher_regression"
    d.num_samples = 4  # n
    d.seq_len = 4  # N
    d.dim = 64  # d
    d.out_dim = 4
    d.input_scale = 1.0
    d.seed = 0  # inputs X
    d.student_seeds = (0,)  # the run's config.seeds: the teacher copies that student's W_K, W_V
    d.teacher_q_scale = 3.0  # teacher W_Q ~ N(0, scale^2 / d), drawn independently of the student
    d.teacher_kernel = "softmax"
    d.teacher_sigma2 = config_dict.placeholder(float)  # teacher's Gaussian bandwidth (model.sigma2)
    d.qk_init_scale = 1.0  # the student's init scales (so its W_K, W_V can be rebuilt)
    d.v_init_scale = 1.0
    d.teacher_kv = "seed"  # 'seed': copy the run's one seed; 'shared': model.shared_init's W_K, W_V
    d.batch_size = 0
    return d


def shared(config) -> bool:
    """W_K, W_V shared by every seed (drawn from ``data.seed``), not one seed's own."""
    kv = config.get("teacher_kv", "seed")  # configs written before the field existed: 'seed'
    if kv not in TEACHER_KV:
        raise ValueError(f"unknown teacher_kv {kv!r}; valid: {list(TEACHER_KV)}")
    return kv == "shared"


def student_seed(config) -> int:
    seeds = tuple(config.student_seeds)
    if len(seeds) != 1:
        raise ValueError(
            "student_teacher_regression: targets are built from one student's W_K, W_V, so the "
            f"run must train exactly one seed (config.seeds), got {seeds!r}; sweep over seeds"
        )
    return int(seeds[0])


def teacher_query(config):
    """The teacher's W_Q ``[d, d]``: a zero-loss point for the student trained on this data."""
    import jax

    seed = int(config.seed) if shared(config) else student_seed(config)
    key = jax.random.fold_in(jax.random.key(seed), TEACHER_Q_STREAM)
    dim = int(config.dim)
    return float(config.teacher_q_scale) * jax.random.normal(key, (dim, dim)) / math.sqrt(dim)


def make_data(config) -> tuple[np.ndarray, np.ndarray]:
    """``(X [n, N, d], Y [n, N, out_dim])`` float32: Y is the seed's student at initialisation
    (or, with ``teacher_kv='shared'``, the model with the shared W_K, W_V) with W_Q replaced by
    :func:`teacher_query`."""
    import jax

    n, seq, dim, out = (int(config[k]) for k in ("num_samples", "seq_len", "dim", "out_dim"))
    rng = np.random.default_rng([int(config.seed), synthetic.X_STREAM])
    x = (float(config.input_scale) * rng.standard_normal((n, seq, dim))).astype(np.float32)
    options = synthetic.teacher_options(config)
    if shared(config):
        return x, shared_teacher_targets(config, x, options)
    seed = student_seed(config)
    teacher = synthetic.theory_teacher(  # the theory model's parameters, paths and init
        dim=dim,
        out_dim=out,
        kernel=config.teacher_kernel,
        kernel_options=options,
        qk_init_scale=float(config.qk_init_scale),
        v_init_scale=float(config.v_init_scale),
    )
    key = jax.random.fold_in(jax.random.key(seed), STUDENT_INIT_STREAM)
    params = jax.jit(teacher.init)(key, x[:1])["params"]  # the student's init: same key
    attention = dict(params["attention"], query={"kernel": teacher_query(config)})
    y = jax.jit(teacher.apply)({"params": {**params, "attention": attention}}, x)
    return x, np.asarray(y, np.float32)


def shared_teacher_targets(config, x: np.ndarray, options: dict) -> np.ndarray:
    """Targets of the theory model whose W_K, W_V are the shared draws of ``data.seed`` (drawn
    as :func:`attn_dynamics.models.shared_initializer` draws them for every student), with the
    teacher's W_Q."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    dim, out = x.shape[-1], int(config.out_dim)
    teacher = synthetic.theory_teacher(
        dim=dim, out_dim=out, kernel=config.teacher_kernel, kernel_options=options
    )

    def draw(scale: float, matrix: str, shape: tuple) -> jax.Array:
        init = nn.initializers.variance_scaling(scale**2, "fan_in", "normal")
        key = streams.shared_key(int(config.seed), matrix)
        # jitted, as the students' init is: an eager draw can differ in the last bit
        return jax.jit(lambda k: init(k, shape, jnp.float32))(key)

    attention = {
        "query": {"kernel": teacher_query(config)},
        "key": {"kernel": draw(float(config.qk_init_scale), "K", (dim, dim))},
        "value": {"kernel": draw(float(config.v_init_scale), "V", (dim, out))},
    }
    y = jax.jit(teacher.apply)({"params": {"attention": attention}}, x)
    return np.asarray(y, np.float32)


def _synthetic_view(config) -> ml_collections.ConfigDict:
    """The ``synthetic_regression`` fields that batching and validation read."""
    view = synthetic.default_config()
    for field in ("num_samples", "seq_len", "dim", "out_dim", "input_scale", "seed", "batch_size"):
        view[field] = config[field]
    view.teacher_kernel = config.teacher_kernel
    view.teacher_sigma2 = config.teacher_sigma2
    return view


class StudentTeacherRegression(synthetic.SyntheticRegression):
    """``synthetic_regression``'s inputs and batching with :func:`make_data`'s targets."""

    name = "student_teacher_regression"

    def __init__(self, config, mesh=None):
        optional = {"teacher_kv"}  # run directories written before it existed resume
        missing = [f for f in default_config() if f not in config and f not in optional]
        if missing:
            raise ValueError(f"config.data for {self.name!r} lacks the fields {missing}")
        if not shared(config):
            student_seed(config)  # one seed, else the ValueError saying so, before any work
        super().__init__(_synthetic_view(config), mesh)
        self.student_config = config

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:  # built on first use: get_dataset stays cheap
            self._data = make_data(self.student_config)
        return self._data
