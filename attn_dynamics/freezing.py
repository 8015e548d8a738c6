"""Trainable subsets: spec -> boolean mask over params -> (trainable, frozen) split.

A *spec* is either

* a string of matrix letters, ``"QKV"``, ``"QK"``, ``"V"``, ``"Q"``, ``""``: which attention
  matrices are trained; the other attention matrices (``query``/``key``/``value`` submodules,
  bias included) are frozen, every other parameter (output projection, MLP, embeddings, head)
  stays trainable. ``layers=(0, 2)`` applies the spec to those blocks only;
* a string ``"re:<regex>"`` or a list of regular expressions over ``/``-joined parameter paths
  (``block_0/attention/query/kernel``): exactly the leaves some expression matches (``re.search``)
  are trainable.

Freezing is optimiser configuration, not model code: training differentiates the loss with
respect to ``trainable`` only and the optimiser is built on ``trainable`` only, so optimiser
state exists for trainable leaves alone and frozen leaves are never touched (weight decay
included); see :func:`split`, :func:`merge` and :func:`init_optimizer`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

PyTree = Any
Spec = str | Sequence[str]

MATRIX_MODULES = {"Q": "query", "K": "key", "V": "value"}
_LAYER = re.compile(r"(?:^|/)(?:block|layers?)_(\d+)(?:/|$)")


def path_str(path: tuple) -> str:
    """``(DictKey('block_0'), DictKey('attention'), ...)`` -> ``'block_0/attention/...'``."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_paths(params: PyTree) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def trainable_mask(params: PyTree, spec: Spec, layers: Sequence[int] | None = None) -> PyTree:
    """A tree of bools like ``params``: True where the leaf is trained under ``spec``."""
    paths = param_paths(params)
    if isinstance(spec, str) and not spec.startswith("re:"):
        decide = _letters_rule(spec, paths, layers)
    else:
        if layers is not None:
            raise ValueError("layers= applies to letter specs only; put layers into the regexes")
        decide = _regex_rule([spec[3:]] if isinstance(spec, str) else list(spec), paths)
    return jax.tree_util.tree_map_with_path(lambda p, _: decide(path_str(p)), params)


def _module_of(path: str) -> str | None:
    """The Q/K/V letter whose projection owns ``path``, if any."""
    parts = path.split("/")
    for letter, module in MATRIX_MODULES.items():
        if module in parts[:-1]:
            return letter
    return None


def _layer_of(path: str) -> int | None:
    match = _LAYER.search(path)
    return int(match.group(1)) if match else None


def _letters_rule(spec: str, paths: list[str], layers: Sequence[int] | None):
    bad = sorted(set(spec) - set(MATRIX_MODULES))
    if bad or len(set(spec)) != len(spec):
        raise ValueError(
            f"invalid trainable spec {spec!r}: use each of the letters Q, K, V at most once "
            f"(e.g. 'QKV', 'QK', 'V', '' for none), or 're:<regex>' over parameter paths"
        )
    owned = {p: _module_of(p) for p in paths}
    present = {letter for letter in owned.values() if letter}
    missing = sorted(set(spec) - present)
    if missing:
        raise ValueError(
            f"trainable spec {spec!r} names {missing} but the model has no "
            f"{[MATRIX_MODULES[m] for m in missing]} parameters; it has {sorted(present)}"
        )
    if layers is not None:
        found = {_layer_of(p) for p in paths} - {None}
        if not set(layers) <= found:
            raise ValueError(
                f"trainable layers {sorted(layers)} not in the model; it has layers {sorted(found)}"
            )

    def decide(path: str) -> bool:
        letter = owned[path]
        if letter is None or (layers is not None and _layer_of(path) not in layers):
            return True
        return letter in spec

    return decide


def _regex_rule(patterns: list[str], paths: list[str]):
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"invalid trainable regex {pattern!r}: {e}") from None
        if not any(regex.search(p) for p in paths):
            raise ValueError(
                f"trainable regex {pattern!r} matches no parameter; paths are e.g. {paths[:6]}"
            )
        compiled.append(regex)
    return lambda path: any(r.search(path) for r in compiled)


def split(params: PyTree, mask: PyTree) -> tuple[dict, dict]:
    """``(trainable, frozen)``: two nested dicts holding the leaves of each kind, pruned of
    empty branches so that every consumer (grad, optax, orbax) sees only real leaves."""

    def go(tree, m, want):
        if isinstance(tree, Mapping):
            out = {}
            for key, sub in tree.items():
                kept = go(sub, m[key], want)
                if kept is not None:
                    out[key] = kept
            return out or None
        return tree if bool(m) == want else None

    return go(params, mask, True) or {}, go(params, mask, False) or {}


def merge(a: Mapping, b: Mapping) -> dict:
    """Inverse of :func:`split`: the union of two disjoint nested dicts."""
    out = dict(a)
    for key, sub in b.items():
        if key in out:
            if not (isinstance(out[key], Mapping) and isinstance(sub, Mapping)):
                raise ValueError(f"parameter {key!r} is in both halves of the split")
            out[key] = merge(out[key], sub)
        else:
            out[key] = sub
    return out


def init_optimizer(
    params: PyTree,
    spec: Spec,
    tx: optax.GradientTransformation,
    layers: Sequence[int] | None = None,
) -> tuple[dict, dict, optax.OptState]:
    """``(trainable, frozen, opt_state)``, the optimiser state holding trainable leaves only.

    Train with ``grads = jax.grad(lambda t: loss(merge(t, frozen)))(trainable)`` and
    ``tx.update(grads, opt_state, trainable)``: frozen leaves are never an input to the
    optimiser, so no transformation (weight decay included) can move them. Changing the frozen
    set means building a new optimiser state (the masks are static).
    """
    mask = trainable_mask(params, spec, layers)
    trainable, frozen = split(params, mask)
    if not jax.tree_util.tree_leaves(trainable):
        raise ValueError(f"trainable spec {spec!r} leaves no parameter to train")
    return trainable, frozen, tx.init(trainable)
