"""Grid axes and cells: ``FIELD=V1,V2,...`` text to values typed by the config field they
set, the cells (their product) and each cell's directory name.

``--axis=model.sigma2=4,8`` gives floats, ``--axis=seeds=(0,1),(2,3)`` tuples; a value the
field's type cannot hold, an unknown field or a repeated cell is an :class:`AxisError` (one
line). No JAX: the command line checks its axes before anything is imported.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import itertools
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

_NAME_LIMIT = 200  # bytes; file systems allow 255 per path component


class AxisError(ValueError):
    """A bad axis: unknown field, or a value the field's type cannot hold. One line."""


# --------------------------------------------------------------------------------------------
# Axes: text -> typed values


def split_top_level(text: str) -> list[str]:
    """``'(0,1),(2,3)'`` -> ``['(0,1)', '(2,3)']``: commas inside brackets or quotes stay."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def literal(text: str) -> Any:
    """A Python literal (``4``, ``(0, 1)``, ``True``, ``None``, ``'a,b'``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_axis(text: str) -> tuple[str, tuple]:
    """``'model.sigma2=4,8'`` -> ``('model.sigma2', (4, 8))`` (values not yet cast)."""
    field, sep, values = text.partition("=")
    field = field.strip()
    if not sep or not field or not values.strip():
        raise AxisError(f"--axis={text!r} is not FIELD=V1,V2,... (e.g. --axis=model.dim=32,64)")
    return field, tuple(literal(v) for v in split_top_level(values))


def get_field(config, field: str):
    node = config
    for i, key in enumerate(field.split(".")):
        if not hasattr(node, "keys") or key not in node.keys():
            where = ".".join(["config", *field.split(".")[:i]])
            valid = sorted(node.keys()) if hasattr(node, "keys") else []
            raise AxisError(f"unknown sweep field {field!r}; valid fields of {where}: {valid}")
        node = node[key]
    return node


def set_field(config, field: str, value) -> None:
    *parents, leaf = field.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[leaf] = value


def field_type(config, field: str) -> type:
    """The declared type of a field (a placeholder's type even while it is unset)."""
    get_field(config, field)
    *parents, leaf = field.split(".")
    node = config
    for key in parents:
        node = node[key]
    return node.get_type(leaf)


def cast(config, field: str, value) -> Any:
    """``value`` as ml_collections stores it in ``field`` (4 -> 4.0 for a float field), or an
    :class:`AxisError` naming the field, the value and the type."""
    kind = field_type(config, field)
    candidates = [value]
    if isinstance(value, str) and kind is bool and value.lower() in ("true", "false"):
        candidates = [value.lower() == "true"]
    elif not isinstance(value, str) and kind is str:
        candidates.append(str(value))  # ``--axis=model.kernel=1``: a string field takes '1'
    for candidate in candidates:
        if isinstance(candidate, bool) and kind in (int, float):
            continue  # ml_collections would accept True as 1; it is a typo for a number
        probe = copy.deepcopy(config)
        try:
            set_field(probe, field, candidate)
        except (TypeError, ValueError):
            continue
        return get_field(probe, field)
    raise AxisError(
        f"axis {field}: value {value!r} is not {_article(kind.__name__)} "
        f"(the type of config.{field}){_example(kind)}"
    )


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _example(kind: type) -> str:
    examples = {tuple: "(0, 1)", bool: "True", int: "3", float: "0.5"}
    return f", e.g. {examples[kind]}" if kind in examples else ""


def typed_axes(config, axes: Mapping[str, Sequence]) -> dict[str, tuple]:
    """Every axis value cast to its field's type; values naming the same cell are an error."""
    out = {}
    for field, values in axes.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise AxisError(f"axis {field}: values must be a sequence, got {values!r}")
        if not values:
            raise AxisError(f"axis {field} has no values")
        typed = tuple(cast(config, field, v) for v in values)
        names = [value_text(v) for v in typed]
        if len(set(names)) != len(names):
            raise AxisError(f"axis {field}: values {list(values)!r} repeat a cell ({names})")
        out[field] = typed
    return out


# ---- cells: the product of the axes, and the directory name of each


def cells(axes: Mapping[str, Sequence]) -> list[dict]:
    names = list(axes)
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(axes[n] for n in names))
    ]


_SAFE = "-_.+()[]~@"


def value_text(value) -> str:
    """A value as it reads in a directory name: tuples ``(0,1)``, strings escaped (``/``, ``=``,
    ``,``, ``%``, spaces, ``:`` ... become ``%XX``), so distinct values never share a name."""
    if isinstance(value, tuple | list):
        inner = ",".join(value_text(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})"
    return urllib.parse.quote(str(value), safe=_SAFE)


def cell_name(cell: Mapping) -> str:
    """``model.kernel=softmax,train.trainable=V``: full dotted fields, escaped values."""
    name = ",".join(f"{field}={value_text(value)}" for field, value in cell.items()) or "base"
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > _NAME_LIMIT:  # keep it readable, keep it unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = name.encode()[: _NAME_LIMIT - 13].decode(errors="ignore") + "-" + digest
    return name
