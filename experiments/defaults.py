"""The full config schema with defaults; every ``configs/*.py`` starts from :func:`base_config`.

Configs are locked ConfigDicts, so a typo in an override fails loudly. Fields whose default is
"unset" are ``placeholder``s, because a ``None`` default could not be overridden from the
command line.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Independent replicas trained in one compiled program (vmapped over this axis). The seed
    # sets initialisation and dropout only; the data comes from `data.seed`.
    c.seeds = (0,)

    c.model = ml_collections.ConfigDict()
    c.model.name = "theory"  # 'theory' (one attention layer) | 'encoder' (classifier)
    c.model.kernel = "softmax"  # any name in attn_dynamics.kernels.names()
    c.model.sigma2 = config_dict.placeholder(float)  # Gaussian bandwidth; unset: sqrt(head_dim)
    c.model.implementation = "auto"  # 'auto' | 'fast' | 'blockwise' | 'explicit'
    c.model.num_heads = 1
    # Compute dtype: 'float32' | 'bfloat16' | 'float16'. Parameters, optimiser state, the
    # attention softmax / kernel, LayerNorm statistics, loss and diagnostics stay float32.
    c.model.dtype = "float32"
    # theory model
    c.model.dim = 64  # token dimension d (= data.dim)
    c.model.out_dim = 1  # output dimension per token (= data.out_dim)
    c.model.output_projection = False
    c.model.qk_init_scale = 1.0  # W_Q, W_K ~ N(0, scale^2 / d)
    c.model.v_init_scale = 1.0  # W_V ~ N(0, scale^2 / d)
    c.model.shared_init = ""  # matrices all seeds share, e.g. 'KV' ('' | 'Q' | ... | 'QKV')
    c.model.shared_init_seed = 0  # the key of the shared matrices (instead of each seed's)
    # encoder classifier
    c.model.num_classes = 2
    c.model.vocab_size = 257
    c.model.num_layers = 2
    c.model.embed_dim = 64
    c.model.mlp_dim = 128
    c.model.embedding = "tokens"  # 'tokens' | 'dense'
    c.model.pooling = "mean"  # 'mean' | 'cls'
    c.model.max_len = 1024
    c.model.dropout_rate = 0.0
    c.model.position = "sinusoidal"  # any name in attn_dynamics.position.names()
    c.model.floater = floater_config()

    c.data = synthetic_regression_config(c.model)

    c.train = ml_collections.ConfigDict()
    c.train.trainable = "QKV"  # letters of the trained attention matrices, or 're:<regex>'
    c.train.trainable_layers = config_dict.placeholder(tuple)  # letter spec on these blocks only
    # Any optax optimiser by name, with its keyword arguments (the learning rate comes from
    # `learning_rate`); aliases: 'gd' (full batch), 'sgd', 'momentum', 'adam', 'adamw'.
    c.train.optimizer = "gd"
    c.train.optimizer_kwargs = ml_collections.ConfigDict()  # e.g. {'b1': 0.95} for 'lion'
    c.train.learning_rate = 0.1
    # 'constant' | 'cosine' | 'warmup_cosine' | 'linear' | any optax schedule by name
    c.train.schedule = "constant"
    c.train.schedule_kwargs = ml_collections.ConfigDict()  # beyond peak value and length
    c.train.warmup_steps = 0
    c.train.grad_clip_norm = config_dict.placeholder(float)
    c.train.num_steps = 1000
    c.train.log_every = 10
    c.train.eval_every = 0  # 0: only at the end
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.loss_threshold = 1e-3  # "converged": loss <= threshold * initial loss
    # second criterion: loss <= baseline_threshold * the best constant predictor's loss
    c.train.baseline_threshold = 1e-3
    c.train.sharpness_every = 0  # top Hessian eigenvalue every k steps (0: off)
    # > 0: each seed's learning rate is this x 2 / its sharpness at initialisation (the top
    # Hessian eigenvalue on the first batch); learning_rate then only sets the schedule's shape
    c.train.stable_step_fraction = 0.0
    c.train.stop_at_threshold = False  # stop once every seed met both criteria
    # A seed whose loss exceeds this multiple of its initial loss is diverged, as one whose loss
    # turns NaN/Inf (None: only non-finite). 1e6 is far beyond any catapult or edge-of-stability
    # spike these studies see, and keeps a seed at 8e15 from counting as "done".
    c.train.diverge_above = 1e6
    c.train.init_from = config_dict.placeholder(str)  # checkpoint dir to warm-start params from
    c.train.progress_bar = True
    c.train.deterministic_gpu = False  # --xla_gpu_deterministic_ops=true (opt-in, logged)

    # Devices: a ('seeds', 'data') mesh; 0 = chosen from the device count, seeds and batch.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.seeds = 0
    c.mesh.data = 0
    # CPU: split each core into this many XLA devices, which the mesh then runs side by side
    # (XLA runs small ops on one thread each: experiments/host.py); 0: one CPU device
    c.mesh.cpu_devices_per_core = 0

    # Experiment trackers besides metrics.jsonl and TensorBoard (never part of a run's identity:
    # they may change when a run resumes).
    c.logging = ml_collections.ConfigDict()
    c.logging.wandb = False  # Weights & Biases, one run per workdir (extra: attn-dynamics[wandb])
    c.logging.wandb_project = "attn-dynamics"
    c.logging.wandb_entity = config_dict.placeholder(str)  # your W&B team or user; unset: default
    # Group of the W&B run; unset: the sweep root's name for a sweep cell, else none.
    c.logging.wandb_group = config_dict.placeholder(str)
    return c


def synthetic_regression_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The theory setting: n samples of N tokens in d dimensions; d and out_dim follow the model."""
    d = ml_collections.ConfigDict()
    d.name = "synthetic_regression"
    d.num_samples = 8  # n
    d.seq_len = 4  # N
    d.dim = model.get_ref("dim")
    d.out_dim = model.get_ref("out_dim")
    d.targets = "random"  # 'random' | 'teacher'
    # the model's kernel and bandwidth until set: a teacher of the trained model's own form.
    # Derived references (.identity()): setting one cuts the link and leaves the model alone,
    # where a plain get_ref would write the new value through to model.kernel.
    d.teacher_kernel = model.get_ref("kernel").identity()
    d.teacher_sigma2 = model.get_ref("sigma2").identity()
    d.input_scale = 1.0
    d.batch_size = 0  # 0: full batch (gradient descent)
    d.seed = 0
    return d


def link_student_teacher(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``c.data`` (a ``student_teacher_regression`` config) made to follow the run: the fields the
    teacher rebuilds the student from are references to the model's and to ``c.seeds``; the
    teacher's kernel and bandwidth derived ones (setting them leaves the model alone)."""
    d, m = c.data, c.model
    d.dim = m.get_ref("dim")
    d.out_dim = m.get_ref("out_dim")
    d.student_seeds = c.get_ref("seeds")
    d.teacher_kernel = m.get_ref("kernel").identity()
    d.teacher_sigma2 = m.get_ref("sigma2").identity()
    d.qk_init_scale = m.get_ref("qk_init_scale")
    d.v_init_scale = m.get_ref("v_init_scale")
    return c


def floater_config() -> ml_collections.ConfigDict:
    """FLOATER (neural-ODE position encoding); used when model.position == 'floater'."""
    f = ml_collections.ConfigDict()
    f.injection = "qkv_bias"  # 'input' | 'every_layer' | 'qkv_bias'
    f.hidden_dim = 0  # hidden width of h; 0: the model dimension
    f.solver = "rk4"  # 'rk4' (fixed step dt/rk4_substeps) | 'tsit5' | 'dopri5'
    f.dt = 0.01  # t_i = i * dt (reference code 0.01; the paper text says 0.1)
    f.rk4_substeps = 5
    f.rtol = 1e-3
    f.atol = 1e-6
    f.adjoint = "recursive_checkpoint"  # 'recursive_checkpoint' | 'backsolve'
    f.max_steps = 4096
    f.warm_start = False  # zero last layer of h and zero p(0): identical to no FLOATER at step 0
    f.update_every = 1  # re-solve every k steps, cached in between
    return f


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink any experiment to seconds (tests, notebooks)."""
    c.train.num_steps = min(c.train.num_steps, 20)
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.train.progress_bar = False
    c.seeds = tuple(c.seeds[:2])
    c.mesh.cpu_devices_per_core = 0  # seconds of work: compiling for more devices costs more
    if c.model.name == "encoder":
        c.model.num_layers = min(c.model.num_layers, 2)
        c.model.embed_dim = 16
        c.model.mlp_dim = 32
        c.model.max_len = min(c.model.max_len, 64)
    return c
