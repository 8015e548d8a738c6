"""The compiled pieces of a run: loss, train step, eval step, theory diagnostics.

All are pure functions of arrays, vmapped over the leading seed axis of the parameters; the batch
is shared by the seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_dynamics import diagnostics, freezing, models
from experiments.distributed import gather
from experiments.state import TrainState, track_outcome

PyTree = Any


def make_loss(model, task: str) -> Callable:
    """``loss(params, batch, rng, position_terms=None) -> (loss, aux)``, the training objective."""
    if task == "regression":

        def loss(params, batch, rng, position_terms=None):
            preds = model.apply({"params": params}, batch["inputs"])
            return models.regression_loss(preds, batch["targets"]), {}

    else:

        def loss(params, batch, rng, position_terms=None):
            logits = model.apply(
                {"params": params},
                batch["inputs"],
                batch["valid"],
                train=True,
                rngs={"dropout": rng},
                position_terms=position_terms,
            )
            acc = jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32))
            return models.classification_loss(logits, batch["labels"]), {"accuracy": acc}

    return loss


def baseline_loss(batch: dict, task: str) -> float:
    """The loss of the best constant predictor on ``batch``: the level a trivial fit reaches.

    Regression: the mean target of every (token, output) position; classification: the label
    frequencies (the loss is their entropy). A threshold relative to this level cannot be met by
    a near-trivial fit, unlike one relative to the initial loss.
    """
    if task == "regression":
        y = np.asarray(batch["targets"], np.float64)
        return float(0.5 * np.mean(np.sum((y - y.mean(axis=0)).reshape(len(y), -1) ** 2, -1)))
    freq = np.bincount(np.asarray(batch["labels"])) / len(batch["labels"])
    freq = freq[freq > 0]
    return float(-np.sum(freq * np.log(freq)))


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    threshold: float,
    *,
    use_cache: bool = False,
    refresh_cache: Callable | None = None,
    diverge_above: float | None = None,
):
    """``step(state, frozen, init_trainable, batch, logged, baseline) -> (state, metrics)``.

    ``logged`` (a traced bool) selects, with ``lax.cond``, whether the training-dynamics
    metrics (norms of params, grads and updates per matrix, distance from init) are computed:
    they cost real work on big models and are only wanted on logged steps. One compilation
    serves both cases. ``baseline`` is the per-seed absolute loss level of the second
    convergence criterion (NaN: off).

    With FLOATER's ``update_every > 1`` the state holds cached position terms: a step with
    ``use_cache`` treats them as constants; a re-solving step differentiates through the solve
    and ``refresh_cache(params)`` re-solves from the updated parameters.

    A seed diverges at a step whose loss or update is not finite, or (``diverge_above``) whose
    loss exceeds that multiple of its initial loss.
    """

    def one_seed(trainable, opt_state, outcome, rng, cache, frozen, init_trainable, baseline, step,
                 batch, logged):  # fmt: skip
        params_of = lambda t: freezing.merge(t, frozen)
        terms = cache if use_cache else None
        (loss, aux), grads = jax.value_and_grad(
            lambda t: loss_fn(params_of(t), batch, jax.random.fold_in(rng, step), terms),
            has_aux=True,
        )(trainable)
        updates, new_opt_state = tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        finite = jnp.isfinite(loss) & _all_finite(new_trainable)
        if diverge_above is not None:
            initial = jnp.where(jnp.isnan(outcome["initial_loss"]), loss, outcome["initial_loss"])
            finite &= loss <= diverge_above * initial
        ok = outcome["alive"] & finite
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        dynamics = lambda ops: dynamics_metrics(*ops, frozen=frozen)
        ops = (trainable, grads, updates, init_trainable)
        metrics = {
            "loss": loss,
            **aux,
            **jax.lax.cond(logged, dynamics, lambda ops: _zeros_like(dynamics, ops), ops),
        }
        outcome = track_outcome(outcome, step, loss, finite, threshold, baseline)
        new_trainable = keep(new_trainable, trainable)
        if cache is not None and refresh_cache is not None:
            cache = refresh_cache(params_of(new_trainable))
        return new_trainable, keep(new_opt_state, opt_state), outcome, cache, metrics

    seeds = jax.vmap(one_seed, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, None, None, None))

    def step(state: TrainState, frozen, init_trainable, batch, logged, baseline):
        trainable, opt_state, outcome, cache, metrics = seeds(
            state.trainable,
            state.opt_state,
            state.outcome,
            state.rng,
            state.position_cache,
            frozen,
            init_trainable,
            baseline,
            state.step,
            batch,
            logged,
        )
        new_state = state.replace(
            step=state.step + 1,
            trainable=trainable,
            opt_state=opt_state,
            outcome=outcome,
            position_cache=cache,
        )
        return new_state, metrics

    return step


def dynamics_metrics(trainable, grads, updates, init_trainable, *, frozen) -> dict:
    """Training-dynamics figures of one seed: global and per-matrix norms, distance from init."""
    prefixed = lambda prefix, d: {f"{prefix}/{k}": v for k, v in d.items()}
    return {
        "grad_norm": diagnostics.global_norm(grads),
        "update_norm": diagnostics.global_norm(updates),
        "param_norm": diagnostics.global_norm(trainable),
        "dist_from_init": diagnostics.global_norm(
            jax.tree.map(jnp.subtract, trainable, init_trainable)
        ),
        **prefixed("param_norm", diagnostics.norms_by_matrix(freezing.merge(trainable, frozen))),
        **prefixed("grad_norm", diagnostics.norms_by_matrix(grads)),
        **prefixed("update_norm", diagnostics.norms_by_matrix(updates)),
    }


def _zeros_like(fn: Callable, *args) -> PyTree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_theory_diagnostics(model) -> Callable:
    """``(trainable, frozen, batch) -> {name: [seeds]}``: sigma_min(Phi), singular-value ratios.

    The singular values of the frozen matrices are computed once, on the first call: frozen
    leaves never change during a run, and two 64 x 64 SVDs per seed were most of the cost of a
    logged step of the main job with 16 seeds.
    """

    def one_seed(params, x, known):
        weights = model.apply({"params": params}, x, method=models.TheoryModel.attention_weights)
        return diagnostics.theory_quantities(params, weights, x, known)

    def frozen_singular_values(frozen):
        attn = frozen.get("attention", {})
        return {n: diagnostics.singular_values(attn[n]["kernel"])
                for n in diagnostics.THEORY_MATRICES if "kernel" in attn.get(n, {})}  # fmt: skip

    diag = jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0)))
    of_frozen = jax.jit(jax.vmap(frozen_singular_values))
    known = []

    def theory(trainable, frozen, batch):
        if not known:  # nothing frozen (e.g. QKV trained): nothing to reuse
            known.append(of_frozen(frozen) if jax.tree_util.tree_leaves(frozen) else {})
        return diag(freezing.merge(trainable, frozen), batch["inputs"], known[0])

    return theory


def make_eval_step(model, task: str) -> Callable:
    """Weighted sums ``(loss * w, correct * w, w)`` over a batch for every seed."""

    def one_seed(params, batch, terms):
        if task == "regression":
            preds = model.apply({"params": params}, batch["inputs"])
            per_example = 0.5 * jnp.sum(
                jnp.square(preds - batch["targets"]).reshape(preds.shape[0], -1), axis=-1
            )
            correct = jnp.zeros_like(per_example)
        else:
            logits = model.apply(
                {"params": params}, batch["inputs"], batch["valid"], position_terms=terms
            ).astype(jnp.float32)
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
            correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
        w = batch.get("weight", jnp.ones_like(per_example))
        return jnp.sum(per_example * w), jnp.sum(correct * w), jnp.sum(w)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0)))


def make_evaluator(model, task: str, ds) -> Callable[[PyTree], dict]:
    """``params -> {split: {'loss': [per seed], 'accuracy': [...]}}``, compiled once per run."""
    eval_step = make_eval_step(model, task)
    terms_of = None
    if isinstance(model, models.EncoderClassifier):
        solve = lambda p, length: model.apply(
            {"params": p}, length, method=models.EncoderClassifier.position_terms
        )
        terms_of = jax.jit(jax.vmap(solve, in_axes=(0, None)), static_argnums=1)

    def evaluate(params) -> dict:
        out = {}
        for split in ds.eval_splits:
            totals, terms = None, None
            for batch in ds.eval_batches(split):
                if terms is None and terms_of is not None:
                    # Position terms once per split (one FLOATER solve, not one per batch).
                    length = batch["inputs"].shape[1] + (model.pooling == "cls")
                    terms = terms_of(params, length)
                sums = np.asarray(gather(eval_step(params, batch, terms)))
                totals = sums if totals is None else totals + sums
            if totals is None:
                continue
            loss, correct, weight = totals
            out[split] = {"loss": (loss / weight).tolist()}
            if task != "regression":
                out[split]["accuracy"] = (correct / weight).tolist()
        return out

    return evaluate
