"""Loss landscapes around trained weights, softmax vs Gaussian kernel (finding 5's explanation).

``python -m experiments.landscape --config=configs/landscape.py --workdir=runs/landscape``
trains the experiment in ``run`` once per kernel (through ``train.train_and_evaluate``; a
finished run is reused), loads the final parameters of seed ``seed_index`` from the checkpoint,
and evaluates the training loss on a ``grid_points x grid_points`` grid along two random
filter-normalised directions (Li et al. 2018) spanning ``[-grid_range, grid_range]`` (the same
random draw for both kernels, each normalised to its own weights), plus the top Hessian
eigenvalue (sharpness) at initialisation and after training.

Args (comma separated):

* default: Pathfinder generated at 16x16 (256 tokens), contour length 6, a pool of 4096
  training images, the paper's 2-layer encoder (embedding 64, MLP 128, 2
  heads), Adam 1e-3, 1500 steps: a version a 2-core CPU trains in minutes; LRA's 32x32 /
  length-14 task is out of reach there.
* ``theory``: the single-layer theory model of ``qkv_trained.py`` (all of Q, K, V trained).
* ``q_only``: the Q-only setting of ``ablation_q_only.py`` (seed 0, lr 0.02, realisable
  targets), kernels softmax, Gaussian and un-normalised Gaussian (sigma^2 = d = 64).
* ``smoke``: seconds (a few steps, a 5x5 grid, a few power iterations).
"""

import ml_collections

from configs import ablation_q_only, pathfinder, qkv_trained
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    args = variants(arg, ["q_only", "smoke", "theory"], exclusive=["q_only", "theory"])
    c = ml_collections.ConfigDict()
    c.kernels = ("softmax", "gaussian")
    c.sigma2 = ml_collections.ConfigDict()  # kernel name -> its Gaussian bandwidth, if not default
    if "q_only" in args:
        run = ablation_q_only.get_config()
        run.train.learning_rate = 0.02
        run.train.stop_at_threshold = False
        run.train.num_steps = 3000
        run.train.checkpoint_every = 3000
        c.loss_batches = 1
        c.chunk = 64
        c.kernels = ("softmax", "gaussian", "gaussian_unnormalized")
        c.sigma2.gaussian_unnormalized = 64.0
    elif "theory" in args:
        run = qkv_trained.get_config()
        run.train.num_steps = 1000
        run.train.checkpoint_every = 1000
        c.loss_batches = 1  # full batch
        c.chunk = 64
    else:
        run = pathfinder.get_config()
        run.data.resolution = 16
        run.data.contour_length = 6
        run.data.train_size = 4096
        run.data.eval_size = 512
        run.data.batch_size = 32
        run.data.eval_batch_size = 128
        run.train.num_steps = 1500
        run.train.log_every = 50
        run.train.eval_every = 500
        run.train.checkpoint_every = 1500
        c.loss_batches = 4  # 4 x 32 training examples for the surface and the Hessian
        c.chunk = 1  # grid points per vmapped evaluation (memory)
    run.seeds = (0,)
    run.train.progress_bar = False
    c.run = run
    c.seed_index = 0  # which seed of run.seeds the landscape is drawn around
    c.direction_seed = 0
    c.grid_points = 21
    c.grid_range = 1.0
    c.hessian_iters = 500
    c.hessian_tol = 1e-5
    if "smoke" in args:
        defaults.smoke(c.run)
        c.run.train.checkpoint_every = 1_000
        if not args & {"theory", "q_only"}:
            c.run.data.train_size = 16
            c.run.data.eval_size = 8
            c.run.data.batch_size = 4
            c.run.data.eval_batch_size = 4
            c.loss_batches = 1
        c.grid_points = 5
        c.hessian_iters = 5
    return c
