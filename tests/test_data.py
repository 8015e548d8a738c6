"""Input pipelines: layouts, determinism, exact resumption, padding, sharding, offline errors.

Real datasets are read from tiny local ArrayRecord copies built by
``attn_dynamics.data.testing`` (the real tfds builders with a replaced example generator), so
nothing here downloads anything or needs TensorFlow.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest

from attn_dynamics import data
from attn_dynamics.data import base, order, synthetic, testing
from experiments import defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tfds")
    for name in testing.TINY:
        testing.build_tiny_tfds(name, root, num_train=48, num_test=20)
    testing.write_lra_pathfinder_files(root / "lra", num_images=40)
    return str(root)


def make_config(kind: str, tiny_dir: str | None = None):
    """Small configs of every pipeline (tfds ones on the tiny local data)."""
    if kind == "regression_full":
        c = data.default_config("synthetic_regression")
        c.dim, c.num_samples = 16, 8
    elif kind == "regression_mini":
        c = data.default_config("synthetic_regression")
        c.dim, c.num_samples, c.batch_size, c.targets = 16, 12, 4, "teacher"
    elif kind == "imdb":
        c = data.default_config("imdb_bytes")
        c.data_dir, c.seq_len, c.batch_size, c.eval_batch_size = tiny_dir, 96, 8, 8
    elif kind in ("mnist", "cifar10"):
        c = data.default_config("image_seq")
        c.dataset, c.data_dir, c.batch_size, c.eval_batch_size = kind, tiny_dir, 8, 8
    elif kind == "pathfinder":
        c = data.default_config("pathfinder")
        c.batch_size, c.eval_batch_size, c.eval_size, c.train_size = 8, 8, 12, 40
    elif kind == "pathfinder_lra":
        c = data.default_config("pathfinder")
        c.source, c.data_dir, c.manual_dir, c.download = "lra", tiny_dir, tiny_dir + "/lra", True
        c.batch_size, c.eval_batch_size = 8, 8
    elif kind in ("order_lookback", "order_precedence"):
        c = data.default_config(kind)
        c.train_len, c.min_len, c.eval_lengths = 24, 6, (24, 36)
        c.batch_size, c.eval_batch_size, c.eval_size, c.train_size = 8, 8, 20, 40
    else:
        raise ValueError(kind)
    return c


CLASSIFICATION = ["imdb", "mnist", "cifar10", "pathfinder", "pathfinder_lra"] + list(order.TASKS)
ALL = ["regression_full", "regression_mini"] + CLASSIFICATION


def take(it, n):
    return list(itertools.islice(it, n))


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# ---- registry and configs -------------------------------------------------------------------


def test_registry_names_and_unknown():
    assert set(data.names()) >= {
        "synthetic_regression",
        "imdb_bytes",
        "image_seq",
        "pathfinder",
        "order_lookback",
        "order_precedence",
    }
    for name in data.names():
        assert data.default_config(name).name == name
    with pytest.raises(ValueError, match="valid: .*imdb_bytes"):
        data.default_config("imdb")
    c = data.default_config("imdb_bytes")
    c.name = "nope"
    with pytest.raises(ValueError, match="unknown dataset 'nope'; valid:"):
        data.get_dataset(c)


class Squares(data.Dataset):
    """The dataset recipe of docs/design.md: inputs ``x`` uniform in [0, 1), targets ``x^2``,
    ``train_size`` examples, drawn from ``(seed, position)``."""

    name = "recipe_squares"
    eval_splits = ("test",)

    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        self.train_size = int(config.train_size)
        self.train_batch_size = self.eval_batch_size = int(config.batch_size)
        self._check_batch_sizes()
        self.info = {"task": "regression", "dim": 3, "out_dim": 3, "seq_len": 2}

    def _examples(self, split, positions):
        stream = base.TRAIN_STREAM if split == "train" else base.EVAL_STREAM
        x = np.stack(
            [np.random.default_rng([self.seed, stream, int(i)]).random((2, 3)) for i in positions]
        ).astype(np.float32)
        return {"inputs": x, "targets": x**2}

    def _eval_size(self, split):
        return 10


def test_recipe_dataset(monkeypatch):
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))  # registered for this test only

    def default_config():
        c = ml_collections.ConfigDict()
        c.name, c.train_size, c.batch_size, c.seed = "recipe_squares", 12, 4, 0
        return c

    data.register("recipe_squares", default_config, Squares)
    ds = data.get_dataset(data.default_config("recipe_squares"))
    first = take(ds.train_iter(0), 7)  # crosses two epoch ends
    for step in (0, 3, 6):
        batch = ds.train_batch(step)
        assert_batches_equal(batch, first[step])
        np.testing.assert_array_equal(batch["targets"], batch["inputs"] ** 2)
    seen = np.concatenate([ds.train_indices(s) for s in range(3)])
    assert sorted(seen) == list(range(12))  # an epoch visits every example once
    weights = np.concatenate([b["weight"] for b in ds.eval_batches("test")])
    np.testing.assert_array_equal(weights, [1.0] * 10 + [0.0] * 2)


def test_synthetic_fields_match_the_schema():
    schema = defaults.synthetic_regression_config(defaults.base_config().model)
    assert set(data.default_config("synthetic_regression")) == set(schema)
    ds = data.get_dataset(defaults.base_config().data)  # the base config's data works as it is
    assert ds.info["task"] == "regression" and ds.info["dim"] == 64


def test_placeholders_are_overridable():
    for name, field in [("imdb_bytes", "data_dir"), ("image_seq", "resolution")]:
        c = data.default_config(name)
        assert c[field] is None
        c[field] = "/x" if field == "data_dir" else 8  # placeholder(type) accepts the type
    c = data.default_config("pathfinder")
    c.manual_dir = "/somewhere"
    with pytest.raises(TypeError):
        c.resolution = "big"


# ---- layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_layouts(kind, tiny_dir):
    ds = data.get_dataset(make_config(kind, tiny_dir))
    info = ds.info
    batch = ds.train_batch(0)
    if info["task"] == "regression":
        n = info["num_samples"] if ds.full_batch else ds.config.batch_size
        assert set(batch) == {"inputs", "targets"}
        assert batch["inputs"].shape == (n, info["seq_len"], info["dim"])
        assert batch["targets"].shape == (n, info["seq_len"], info["out_dim"])
        assert batch["inputs"].dtype == batch["targets"].dtype == np.float32
        assert ds.eval_splits == ("train",)
    else:
        bs = ds.config.batch_size
        assert set(batch) == {"inputs", "valid", "labels"}
        assert batch["inputs"].shape == batch["valid"].shape == (bs, info["seq_len"])
        assert batch["inputs"].dtype == np.int32 and batch["valid"].dtype == bool
        assert batch["labels"].shape == (bs,) and batch["labels"].dtype == np.int32
        assert 0 <= batch["inputs"].min() and batch["inputs"].max() < info["vocab_size"]
        assert 0 <= batch["labels"].min() and batch["labels"].max() < info["num_classes"]
        # padding: token 0 exactly where invalid; valid is a prefix
        assert not batch["inputs"][~batch["valid"]].any()
        lengths = batch["valid"].sum(1)
        np.testing.assert_array_equal(batch["valid"], np.arange(info["seq_len"]) < lengths[:, None])
        assert info["train_size"] > 0 and info["max_len"] >= info["seq_len"]
    for split in ds.eval_splits:
        batches = list(ds.eval_batches(split))
        size = ds._eval_size(split)
        assert len(batches) == -(-size // ds.eval_batch_size)
        weights = np.concatenate([b["weight"] for b in batches])
        assert weights.dtype == np.float32 and weights.sum() == size
        assert (weights[:size] == 1).all() and (weights[size:] == 0).all()
        for b in batches:
            assert b["inputs"].shape[0] == ds.eval_batch_size == b["weight"].shape[0]
    with pytest.raises(ValueError, match="unknown eval split"):
        next(ds.eval_batches("nope"))


def test_imdb_bytes_encoding(tiny_dir):
    ds = data.get_dataset(make_config("imdb", tiny_dir))
    records = ds._records("train", np.arange(8))
    batch = ds._examples("train", np.arange(8))
    for row, rec in zip(range(8), records, strict=True):
        raw = rec["text"][: ds.seq_len]
        n = len(raw)
        np.testing.assert_array_equal(batch["inputs"][row, :n], np.frombuffer(raw, np.uint8) + 1)
        assert batch["valid"][row].sum() == n
    assert ds.info["vocab_size"] == 257
    assert any(len(r["text"]) > ds.seq_len for r in ds._records("train", np.arange(48)))
    assert any(len(r["text"]) < ds.seq_len for r in ds._records("train", np.arange(48)))


def test_cifar_grayscale_and_resize(tiny_dir):
    c = make_config("cifar10", tiny_dir)
    ds = data.get_dataset(c)
    rec = ds._records("train", [5])[0]
    gray = np.rint(rec["image"].astype(np.float32) @ np.array([0.2989, 0.587, 0.114], np.float32))
    np.testing.assert_array_equal(ds._examples("train", [5])["inputs"][0], gray.reshape(-1))
    c.resolution, c.token_offset = 8, 1
    small = data.get_dataset(c)
    assert small.info["seq_len"] == 64 and small.info["vocab_size"] == 257
    assert small.train_batch(0)["inputs"].min() >= 1


# ---- determinism and resumption -------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_deterministic_and_exact_resume(kind, tiny_dir):
    c = make_config(kind, tiny_dir)
    a, b = data.get_dataset(c), data.get_dataset(c)
    steps = 9  # tiny train sets: crosses epoch boundaries
    first = take(a.train_iter(0), steps)
    for k in (0, 4, 7):
        resumed = take(b.train_iter(k), steps - k)
        for x, y in zip(first[k:], resumed, strict=True):
            assert_batches_equal(x, y)
    for k in (0, 5, 8):
        assert_batches_equal(first[k], b.train_batch(k))
    c.seed = 1
    other = data.get_dataset(c)
    assert not all(
        np.array_equal(first[k]["inputs"], other.train_batch(k)["inputs"]) for k in range(3)
    )


def test_epochs_visit_every_example_once():
    c = make_config("regression_mini")
    ds = data.get_dataset(c)
    n, bs = c.num_samples, c.batch_size
    for epoch in range(3):
        seen = np.concatenate([ds.train_indices(epoch * n // bs + s) for s in range(n // bs)])
        assert sorted(seen) == list(range(n))
    x, _ = ds.arrays
    batch = ds.train_batch(1)
    np.testing.assert_array_equal(batch["inputs"], x[ds.train_indices(1)])


@pytest.mark.parametrize("size,rows", [(10, 4), (12, 4), (7, 7), (5, 8)])
def test_train_order_is_a_walk_over_epoch_permutations(size, rows):
    """Batches run across epoch ends; each epoch is its own seeded permutation."""
    seed, epochs = 5, 12
    stream = np.concatenate(
        [
            np.random.default_rng([seed, base.SHUFFLE_STREAM, e]).permutation(size)
            for e in range(epochs)
        ]
    )
    shuffled = base.TrainOrder(size, rows, seed)
    in_order = base.TrainOrder(size, rows, seed, shuffle=False)
    endless = base.TrainOrder(0, rows, seed)
    for k in range(epochs * size // rows):
        np.testing.assert_array_equal(shuffled(k), stream[k * rows : (k + 1) * rows])
        np.testing.assert_array_equal(in_order(k), np.arange(k * rows, (k + 1) * rows) % size)
        np.testing.assert_array_equal(endless(k), np.arange(k * rows, (k + 1) * rows))


def test_full_batch_regression():
    c = make_config("regression_full")
    ds = data.get_dataset(c)
    b0, b5 = ds.train_batch(0), ds.train_batch(5)
    assert_batches_equal(b0, b5)
    x, y = b0["inputs"], b0["targets"]
    assert abs(x.std() - 1.0) < 0.1 and abs(y.std() - 1.0) < 0.5
    c.input_scale = 3.0
    assert abs(data.get_dataset(c).train_batch(0)["inputs"].std() - 3.0) < 0.3
    (ev,) = list(ds.eval_batches("train"))
    np.testing.assert_array_equal(ev["inputs"], x)


def test_teacher_targets():
    import jax

    from attn_dynamics import models

    c = make_config("regression_mini")
    ds = data.get_dataset(c)
    x, y = ds.arrays
    teacher = models.TheoryModel(dim=c.dim, out_dim=c.out_dim, kernel=c.teacher_kernel)
    key = jax.random.fold_in(jax.random.key(c.seed), 12)
    params = teacher.init(key, x[:1])
    np.testing.assert_allclose(y, teacher.apply(params, x), rtol=1e-5, atol=1e-6)
    # the data layer's teacher draws the theory model's weights (any kernel options, scales)
    kw = dict(kernel="gaussian", kernel_options={"sigma2": 3.0}, qk_init_scale=2.0)
    ours = synthetic.theory_teacher(c.dim, c.out_dim, v_init_scale=0.5, **kw).init(key, x[:1])
    theirs = models.TheoryModel(dim=c.dim, out_dim=c.out_dim, v_init_scale=0.5, **kw)
    theirs = theirs.init(key, x[:1])
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    c.teacher_kernel = "nope"
    with pytest.raises(ValueError, match="nope"):
        data.get_dataset(c)


def test_the_runners_teacher_follows_the_model_kernel_unless_set():
    """qk_frozen's targets come from a teacher of the trained model's own form: kernel and
    bandwidth follow ``model`` (a Gaussian student gets a Gaussian teacher) until set."""
    import jax

    from attn_dynamics import models
    from configs import qk_frozen

    def targets_of(config):
        return data.get_dataset(config.data).arrays

    def teacher(x, **kw):
        model = models.TheoryModel(64, 4, **kw)
        key = jax.random.fold_in(jax.random.key(0), synthetic.TEACHER_STREAM)
        return model.apply(model.init(key, x[:1]), x)

    c = qk_frozen.get_config()
    c.model.kernel, c.model.sigma2 = "gaussian", 3.0
    x, y = targets_of(c)
    gaussian = teacher(x, kernel="gaussian", kernel_options={"sigma2": 3.0})
    np.testing.assert_allclose(y, gaussian, rtol=1e-5, atol=1e-6)
    c.data.teacher_kernel = "softmax"  # set: the model keeps its kernel
    assert c.model.kernel == "gaussian" and c.data.teacher_kernel == "softmax"
    np.testing.assert_allclose(targets_of(c)[1], teacher(x, kernel="softmax"), rtol=1e-5, atol=1e-6)
    c = qk_frozen.get_config()  # the model's default bandwidth: the teacher's too
    c.model.kernel = "gaussian"
    np.testing.assert_allclose(
        targets_of(c)[1], teacher(x, kernel="gaussian"), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(gaussian, teacher(x, kernel="gaussian"))


def test_iterators_close_and_reraise():
    with data.get_dataset(make_config("order_lookback")) as ds:
        it = ds.train_iter(3)
        assert_batches_equal(next(it), ds.train_batch(3))
        it.close()  # stops grain's prefetch threads; must not hang
        open_iter = ds.train_iter(0)
        next(open_iter)
        assert len(ds._iterators) == 1
    assert not ds._iterators  # the with block closed the iterator left open
    bad = data.get_dataset(make_config("order_lookback"))

    def boom(split, positions):
        raise RuntimeError(f"boom at {split}")

    bad._examples = boom
    with pytest.raises(RuntimeError, match="boom at train"):
        next(bad.train_iter(2))
    with pytest.raises(RuntimeError, match="boom at len_24"):
        next(bad.eval_batches("len_24"))


@pytest.mark.parametrize("kind", ["regression_mini", "imdb", "order_lookback"])
def test_process_shares_make_up_the_batch(kind, tiny_dir):
    """Each of 4 processes reads only its rows; together they are the global batch."""
    ds = data.get_dataset(make_config(kind, tiny_dir))
    whole = ds.train_batches((0, 1))
    shares = [ds.train_batches((p, 4)) for p in range(4)]
    for step in (0, 3, 7):
        joined = {k: np.concatenate([s[step][k] for s in shares]) for k in whole[step]}
        assert_batches_equal(joined, whole[step])
        assert_batches_equal(whole[step], ds.train_batch(step))
    split = ds.eval_splits[0]
    whole = list(ds.eval_batches(split))
    shares = [list(ds.eval_dataset(split, (p, 4))) for p in range(4)]
    assert [len(s) for s in shares] == [len(whole)] * 4
    for b, batch in enumerate(whole):
        joined = {k: np.concatenate([s[b][k] for s in shares]) for k in batch}
        assert_batches_equal(joined, batch)


def _imports(path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_data_imports_neither_models_nor_experiments_and_has_no_cycle():
    folder = pathlib.Path(data.__file__).parent
    modules = {f"attn_dynamics.data.{p.stem}": p for p in folder.glob("*.py")}
    modules["attn_dynamics.data"] = modules.pop("attn_dynamics.data.__init__")
    graph = {}
    for name, path in modules.items():
        imports = _imports(path)
        bad = sorted(m for m in imports if m.startswith(("attn_dynamics.models", "experiments")))
        assert not bad, (name, bad)
        graph[name] = {m for m in imports if m in modules and m != name}
    # the package __init__ imports every dataset; no dataset module imports another in a loop
    graph.pop("attn_dynamics.data")
    done: set[str] = set()

    def visit(node, path):
        assert node not in path, f"import cycle: {' -> '.join([*path, node])}"
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])
        done.add(node)

    for node in graph:
        visit(node, [])


# ---- order tasks ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", order.TASKS)
def test_order_tasks_need_positions(task):
    c = make_config(task)
    c.eval_size = 512
    ds = data.get_dataset(c)
    rng = np.random.default_rng(0)
    for split in ds.eval_splits:
        n = int(split.removeprefix("len_"))
        batch = ds._examples(split, np.arange(512))
        assert batch["inputs"].shape == (512, n) and batch["valid"].all()
        labels = order.labels_of(task, batch["inputs"], c.num_tokens, c.get("lookback", 1))
        np.testing.assert_array_equal(labels, batch["labels"])
        # Same multiset of tokens, different order: a position-blind model sees identical
        # inputs, yet the label changes for a large fraction of examples.
        permuted = np.stack([row[rng.permutation(n)] for row in batch["inputs"]])
        changed = np.mean(
            order.labels_of(task, permuted, c.num_tokens, c.get("lookback", 1)) != labels
        )
        assert changed > (0.3 if task == "order_precedence" else 0.6), changed
    train = ds._examples("train", np.arange(512))
    lengths = train["valid"].sum(1)
    assert lengths.min() >= c.min_len and lengths.max() <= c.train_len
    assert len(np.unique(lengths)) > c.train_len - c.min_len - 3  # lengths vary over the range
    counts = np.bincount(train["labels"], minlength=ds.info["num_classes"])
    assert (counts > 0).all() and counts.max() < 0.65 * counts.sum()


def test_order_bad_config():
    c = make_config("order_lookback")
    c.min_len = 2  # shorter than lookback + 1
    with pytest.raises(ValueError, match="min_len"):
        data.get_dataset(c)


# ---- offline behaviour ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imdb_bytes", "image_seq", "pathfinder"])
def test_offline_error_is_one_line(name, tmp_path):
    c = data.default_config(name)
    c.data_dir = str(tmp_path / "empty")
    if name == "pathfinder":
        c.source = "lra"
    t = time.time()
    with pytest.raises(data.DatasetNotPrepared) as err:
        data.get_dataset(c)
    assert time.time() - t < 10  # no network wait
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "\n" not in msg and name in msg and str(tmp_path / "empty") in msg
    assert "download_and_prepare" in msg or "lra_pathfinder" in msg


def test_reading_never_imports_tensorflow(tiny_dir):
    for kind in ("imdb", "cifar10", "pathfinder_lra"):
        ds = data.get_dataset(make_config(kind, tiny_dir))
        ds.train_batch(0)
        next(ds.eval_batches(ds.eval_splits[0]))
    assert "tensorflow" not in sys.modules


def test_batch_size_must_split_over_devices():
    import jax
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    ds = data.get_dataset(make_config("order_lookback"), mesh=mesh)
    assert ds.train_batch(0)["inputs"].sharding.mesh == mesh
    with pytest.raises(ValueError, match="'data'"):
        data.get_dataset(
            make_config("order_lookback"), mesh=Mesh(np.array(jax.devices()[:1]), ("x",))
        )


# ---- sharding over 8 simulated devices ------------------------------------------------------

SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, {tests!r})
    from attn_dynamics import data
    from test_data import make_config
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    out = {{}}
    for kind in ["regression_full", "imdb", "pathfinder", "order_lookback"]:
        c = make_config(kind, {tiny!r})
        plain, sharded = data.get_dataset(c), data.get_dataset(c, mesh=mesh)
        for got, want in [(sharded.train_batch(3), plain.train_batch(3)),
                          (next(sharded.train_iter(2)), plain.train_batch(2)),
                          (next(sharded.eval_batches(sharded.eval_splits[0])),
                           next(plain.eval_batches(plain.eval_splits[0])))]:
            assert got.keys() == want.keys()
            for k, x in got.items():
                assert isinstance(x, jax.Array), k
                assert x.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), x.ndim), k
                assert len(x.addressable_shards) == 8
                assert {{s.data.shape[0] for s in x.addressable_shards}} == {{x.shape[0] // 8}}
                np.testing.assert_array_equal(np.asarray(x), np.asarray(want[k]))
        if kind == "regression_full":
            c.num_samples = 12  # full batch: the whole data set must split over devices
        else:
            c.batch_size = 12
        try:
            data.get_dataset(c, mesh=mesh)
            out[kind] = "no error"
        except ValueError as e:
            out[kind] = str(e)
    b = data.shard_batch({{"x": np.arange(16).reshape(8, 2)}}, mesh)
    out["shard_batch"] = b["x"].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2)
    print("RESULT" + json.dumps(out))
    """
)


def test_sharding_over_8_devices(tiny_dir):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    script = SHARDING_SCRIPT.format(tests=os.path.join(REPO, "tests"), tiny=tiny_dir)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for kind in ["regression_full", "imdb", "pathfinder", "order_lookback"]:
        assert "not divisible by the 8 devices" in out[kind], out[kind]
    assert out["shard_batch"] is True


# ---- the config files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lra_text", "lra_image", "pathfinder", "order_task"])
@pytest.mark.parametrize("arg", ["", ":smoke"])
def test_config_files_load_and_override(name, arg, tiny_dir):
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={REPO}/configs/{name}.py{arg}", "--config.data.seed=3"]
    if name in ("lra_text", "lra_image"):
        argv.append(f"--config.data.data_dir={tiny_dir}")  # a placeholder field: overridable
    if name == "pathfinder":
        argv.append("--config.data.manual_dir=/nowhere")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    fv(argv)
    c = fv.config
    assert c.model.name == "encoder" and c.data.seed == 3
    if name == "pathfinder" and not arg:
        c.data.batch_size, c.data.eval_size = 4, 4  # keep the check cheap
    ds = data.get_dataset(c.data)
    info = ds.info
    assert c.model.num_classes == info["num_classes"]
    assert c.model.vocab_size >= info["vocab_size"]
    assert c.model.max_len >= info["max_len"]
    if arg:
        assert info["max_len"] <= 256 and c.train.num_steps <= 20


def test_order_task_config_args():
    from configs import order_task

    assert order_task.get_config("precedence").data.name == "order_precedence"
    assert order_task.get_config("precedence,smoke").data.train_len == 16
    with pytest.raises(ValueError, match="unknown config variant 'typo'"):
        order_task.get_config("typo")
