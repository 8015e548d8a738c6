"""Softmax vs Gaussian kernel on Pathfinder, several seeds (finding 5).

The paper's 2-layer encoder (embedding 64, MLP 128, 2 heads) from ``pathfinder.py`` (Adam
1e-3); 3 seeds per kernel trained at once (vmapped); test accuracy (mean ± std over seeds)
and training loss vs steps (mean with a ±std band):

    python -m experiments.sweep --config=configs/pathfinder_kernels.py:cpu --workdir=runs/pf
    python -m experiments.analyses kernels runs/pf

Default: the LRA task size (32x32 = 1024 tokens, contour length 14, 20k steps of batch 64),
a GPU job. ``:cpu`` is what a 2-core CPU trains in about an hour per kernel (run the two
kernels side by side with ``--parallel=2``): 16x16 images (256 tokens), contour length 6
(the easy difficulty), 4000 steps of batch 32 drawn from the default pool of 160k generated
images (so no image is seen twice and the test accuracy is not an overfitting artefact),
1024 test images. ``:smoke`` runs in seconds.

Images come from the vectorised generator (``data.generator = 'vectorized'``, the dataset's
default), whose batches cost a fraction of the reference generator's. The runs recorded in
REPRODUCING 1.5 used the reference generator (other images of the same task): reproduce them
with ``--config.data.generator=reference`` (and ``--config.mesh.cpu_devices_per_core=0`` for
their device layout); their workdirs resume only with it.
"""

from configs import pathfinder
from experiments import defaults
from experiments.validation import variants


def get_config(arg=None):
    args = variants(arg, ["cpu", "smoke"])
    c = pathfinder.get_config()
    c.seeds = (0, 1, 2)
    c.train.progress_bar = False
    if "cpu" in args:
        c.data.resolution = 16
        c.data.contour_length = 6
        c.data.eval_size = 1024
        c.data.batch_size = 32
        c.data.eval_batch_size = 128
        c.train.num_steps = 4000
        c.train.log_every = 20
        c.train.eval_every = 250
        c.train.checkpoint_every = 500
        # 256 tokens: 2 XLA devices per core beat 1 (1.1-1.3x; benchmarks/RESULTS.md, "step (cpu)")
        c.mesh.cpu_devices_per_core = 2
    if "smoke" in args:
        defaults.smoke(c)
        c.train.checkpoint_every = 1_000
        c.data.resolution = 16
        c.data.contour_length = 4
        c.model.max_len = 256
        c.data.train_size = 16
        c.data.eval_size = 8
        c.data.batch_size = 4
        c.data.eval_batch_size = 4
    return c


def get_sweep():
    return {"model.kernel": ("softmax", "gaussian")}
