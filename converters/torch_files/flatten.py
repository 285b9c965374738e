"""Tensors in an unpickled checkpoint by dotted name."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from itertools import dropwhile
from typing import Any

import numpy as np

from fastrnn.errors import FormatError

from .brief import _brief
from .limits import MAX_NAME_CHARS, MAX_NESTING, MAX_SHARED_VISITS
from .numpy_values import _NumpyArray
from .tensors import TensorRef, UnreadableTensor


def is_tensor_like(x: Any) -> bool:
    """A leaf the converters treat as a tensor: numpy arrays, TensorRef, torch tensors."""
    if isinstance(x, (np.ndarray, TensorRef, UnreadableTensor, _NumpyArray)):
        return True
    t = type(x)
    return t.__module__.startswith("torch") and hasattr(x, "shape") and hasattr(x, "detach")


def _is_script_object(x: Any) -> bool:
    """A torch.ScriptObject: how a quantized module's state dict holds its packed weights."""
    t = type(x)
    return t.__module__ == "torch" and t.__name__ == "ScriptObject"


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor-like leaf under nested dicts / lists, by dotted path; other leaves are dropped
    (a torch.ScriptObject, a quantized module's packed weights, becomes an UnreadableTensor).

    Two leaves with one name ({"a.b": x, "a": {"b": y}}, or keys 0 and "0") are a FormatError. A
    container that appears in several places (pickle memo references) is walked at each if it
    holds tensors, up to MAX_SHARED_VISITS entries in all.
    """
    out: dict[str, Any] = {}
    walked: set[int] = set()
    barren: set[int] = set()  # walked containers without tensors: nothing to walk again
    active: set[int] = set()  # the containers on the current path
    shared_left = MAX_SHARED_VISITS
    chars_left = MAX_NAME_CHARS

    def text(k: Any) -> str:
        if isinstance(k, str):
            return k
        return str(k) if type(k) is int and k.bit_length() <= 128 else _brief(k)

    def dotted(path: tuple) -> str:  # "a.b.c"; no dot after leading empty names
        return ".".join(dropwhile(operator.not_, (prefix.rstrip("."), *map(text, path))))

    def name_start(path: tuple) -> str:
        """The first characters of a path's dotted name, for messages: a long key the pickle
        shares (memo references) at each of 100 levels makes a name of gigabytes."""
        return dotted(tuple(text(k)[:80] for k in path[:80]))[:80]

    # The path is kept as keys, with the length of its name, and joined only at a tensor within
    # the budget: a long key over many entries, or at every level, costs nothing.
    def walk(o: Any, path: tuple, length: int) -> bool:
        """Whether o holds tensors; length: that of the dotted name of path[:-1]."""
        nonlocal shared_left, chars_left
        if _is_script_object(o):  # kept by name, so that converters can say what it is
            o = UnreadableTensor("a torch.ScriptObject (packed weights of a quantized module) "
                                 "is not a tensor")
        tensor = is_tensor_like(o)
        if not tensor and not isinstance(o, (Mapping, list, tuple)):
            return False
        if path:
            n = len(text(path[-1]))
            length = length + 1 + n if length else n
        if tensor:
            if length > chars_left:
                raise FormatError(f"checkpoint tensor names take more than {MAX_NAME_CHARS} characters")
            name = dotted(path)
            if name in out:
                raise FormatError(
                    f"checkpoint names two tensors {_brief(name)} (keys 0 and '0', or a dotted key "
                    "next to nested ones); expected unique names"
                )
            chars_left -= length
            out[name] = o
            return True
        if len(path) > MAX_NESTING:
            raise FormatError(
                f"checkpoint nests deeper than {MAX_NESTING} levels at {_brief(name_start(path))}"
            )
        if id(o) in active or id(o) in barren:  # a container inside itself, or nothing to find
            return False
        if id(o) in walked:
            shared_left -= len(o)
            if shared_left < 0:
                raise FormatError(
                    f"checkpoint reuses its containers for more than {MAX_SHARED_VISITS} entries "
                    "(pickle memo references); expected a tree of tensors"
                )
        walked.add(id(o))
        active.add(id(o))
        found = False
        for k, v in (o.items() if isinstance(o, Mapping) else enumerate(o)):
            found = walk(v, path + (k,), length) or found
        active.discard(id(o))
        if not found:
            barren.add(id(o))
        return found

    walk(obj, (), len(prefix.rstrip(".")))
    return out
