"""Whole-file reads: ``load`` (everything, tensors as numpy) and ``read_state_dict`` (the state dict,
unwrapped and flattened)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastrnn.errors import FormatError
from fastrnn.validation import as_flag

from .checkpoint import open_checkpoint
from .flatten import flatten_tensors, is_tensor_like
from .numpy_values import _NumpyArray
from .tensors import TensorRef

# Keys under which training code nests the state dict ({"state_dict": ...}, {"model": ...}, ...),
# tried in this order by unwrap_state_dict.
WRAPPER_KEYS = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
    "weights", "params",
)


def unwrap_state_dict(obj: Any) -> Any:
    """Descend through checkpoint wrappers ({"state_dict": ...}, {"model": ...}) to the state dict.

    A Mapping that holds tensors directly is a state dict; otherwise the first key of
    WRAPPER_KEYS holding a Mapping is followed (Lightning checkpoints keep theirs under
    "state_dict").
    """
    for _ in range(8):
        if not isinstance(obj, Mapping):
            return obj
        if any(is_tensor_like(v) for v in obj.values()):
            return obj
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            return obj
    return obj


def _materialize(obj: Any, memo: dict[int, Any]) -> Any:
    """Tensors as numpy arrays; what the pickle shares stays shared (once in memory, as torch.load)."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, (TensorRef, _NumpyArray)):
        out: Any = obj.numpy()
    elif isinstance(obj, Mapping):
        out = {k: _materialize(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [_materialize(v, memo) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(_materialize(v, memo) for v in obj)
    else:
        return obj
    memo[id(obj)] = out
    return out


def load(path: str | os.PathLike) -> Any:
    """Like ``torch.load(path, weights_only=True)`` but torch-free: tensors become numpy arrays.

    Tensors fastrnn cannot read (quantized, sparse, unknown dtypes) stay UnreadableTensor. What
    the file shares (one tensor or dict in two places) stays shared, as torch.load keeps it.
    """
    with open_checkpoint(path) as f:
        try:
            return _materialize(f.obj, {})
        except RecursionError as exc:
            raise FormatError(f"{path}: checkpoint nests too deeply") from exc


def read_state_dict(path: str | os.PathLike, *, unwrap: bool = True) -> dict[str, np.ndarray]:
    """The state dict in a checkpoint file, flattened to ``name -> np.ndarray``.

    With ``unwrap`` (default) checkpoint wrappers ({"state_dict": ...}, {"model": ...},
    Lightning) are descended first; names keep any "module." prefix. A tensor the file stores
    under several names (one object, not two views of a storage) is one array under each.
    """
    unwrap = as_flag(unwrap, "unwrap")
    with open_checkpoint(path) as f:
        obj = unwrap_state_dict(f.obj) if unwrap else f.obj
        flat = flatten_tensors(obj)
        if not flat:
            raise FormatError(f"{path} holds no tensors")
        arrays: dict[int, np.ndarray] = {}
        for v in flat.values():
            if id(v) not in arrays:
                arrays[id(v)] = v.numpy()
        return {k: arrays[id(v)] for k, v in flat.items()}
