"""LRA Text: byte-level IMDb sentiment (``imdb_bytes``, 1000 tokens), the paper's text task.

2-layer encoder (embedding 64, MLP 128, 2 heads), trained by SGD as in Song et al. (2024);
compare kernels by override:

    python -m experiments.run --config=configs/lra_text.py --config.model.kernel=gaussian
    python -m experiments.run --config=configs/lra_text.py --config.data.seq_len=4000

Needs tfds ``imdb_reviews`` prepared as ArrayRecord (one time, on a machine with internet):

    pip install tensorflow tensorflow-datasets && python -c "import tensorflow_datasets as tfds; \\
      tfds.builder('imdb_reviews', data_dir='$HOME/tensorflow_datasets')\\
      .download_and_prepare(file_format='array_record')"

``:smoke`` keeps the same data source at 32 tokens (it still needs the data; the tests build a
tiny local imdb_reviews with ``attn_dynamics.data.testing.build_tiny_tfds`` and point
``data.data_dir`` at it). The learning rate, batch size and step count are our choices (the
paper does not state them).
"""

from attn_dynamics import data
from experiments import defaults
from experiments.validation import variants


def set_encoder(c, *, num_classes, vocab_size, max_len):
    """The paper's 2-layer encoder: embedding 64, hidden (MLP) 128, 2 heads."""
    c.model.name = "encoder"
    c.model.num_layers = 2
    c.model.embed_dim = 64
    c.model.mlp_dim = 128
    c.model.num_heads = 2
    c.model.num_classes = num_classes
    c.model.vocab_size = vocab_size
    c.model.max_len = max_len
    c.model.embedding = "tokens"
    c.model.pooling = "mean"
    c.train.trainable = "QKV"  # everything
    # On CPU one XLA device per core, the batch split over them: 1.2x faster at 1024 tokens
    # than one device for all cores (benchmarks/RESULTS.md, "step (cpu)")
    c.mesh.cpu_devices_per_core = 1
    return c


def get_config(arg=None):
    smoke = "smoke" in variants(arg, ["smoke"])
    c = defaults.base_config()
    c.data = data.default_config("imdb_bytes")
    set_encoder(c, num_classes=2, vocab_size=257, max_len=c.data.get_ref("seq_len"))
    c.train.optimizer = "sgd"
    c.train.learning_rate = 0.1
    c.train.num_steps = 10_000
    c.train.log_every = 50
    c.train.eval_every = 1_000
    c.train.checkpoint_every = 1_000
    c.train.loss_threshold = 0.0  # classification: report, do not stop
    if smoke:
        defaults.smoke(c)
        c.data.seq_len = 32  # model.max_len follows (a reference)
        c.data.batch_size = 4
        c.data.eval_batch_size = 4
        c.data.eval_size = 8
    return c
