"""Tensors in an unpickled checkpoint by dotted name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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

    def dotted(path: tuple) -> str:
        name = prefix.rstrip(".")
        for k in path:
            if not isinstance(k, str):
                k = str(k) if type(k) is int and k.bit_length() <= 128 else _brief(k)
            name = f"{name}.{k}" if name else k
        return name

    # the path is kept as keys and joined only at a tensor: a long key over many entries costs nothing
    def walk(o: Any, path: tuple) -> bool:
        """Whether o holds tensors."""
        nonlocal shared_left, chars_left
        if _is_script_object(o):  # kept by name, so that converters can say what it is
            o = UnreadableTensor("a torch.ScriptObject (packed weights of a quantized module) "
                                 "is not a tensor")
        if is_tensor_like(o):
            name = dotted(path)
            if name in out:
                raise FormatError(
                    f"checkpoint names two tensors {_brief(name)} (keys 0 and '0', or a dotted key "
                    "next to nested ones); expected unique names"
                )
            chars_left -= len(name)
            if chars_left < 0:
                raise FormatError(f"checkpoint tensor names take more than {MAX_NAME_CHARS} characters")
            out[name] = o
            return True
        if len(path) > MAX_NESTING:
            raise FormatError(
                f"checkpoint nests deeper than {MAX_NESTING} levels at {_brief(dotted(path))}"
            )
        if isinstance(o, Mapping):
            items: Iterator = iter(o.items())
        elif isinstance(o, (list, tuple)):
            items = iter(enumerate(o))
        else:
            return False
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
        for k, v in items:
            found = walk(v, path + (k,)) or found
        active.discard(id(o))
        if not found:
            barren.add(id(o))
        return found

    walk(obj, ())
    return out
