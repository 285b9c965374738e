"""ONNX tensor element types <-> numpy dtypes: the one table both the importer and the plan use.

onnx-free on purpose: the plan needs the type names (``tensor(float)``) at run time without onnx.
"""
from __future__ import annotations

import numpy as np

# ONNX TensorProto.DataType code -> (ONNX type name, numpy dtype or None when numpy has none)
ONNX_TYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float", np.dtype(np.float32)),
    2: ("uint8", np.dtype(np.uint8)),
    3: ("int8", np.dtype(np.int8)),
    4: ("uint16", np.dtype(np.uint16)),
    5: ("int16", np.dtype(np.int16)),
    6: ("int32", np.dtype(np.int32)),
    7: ("int64", np.dtype(np.int64)),
    8: ("string", None),
    9: ("bool", np.dtype(np.bool_)),
    10: ("float16", np.dtype(np.float16)),
    11: ("double", np.dtype(np.float64)),
    12: ("uint32", np.dtype(np.uint32)),
    13: ("uint64", np.dtype(np.uint64)),
    14: ("complex64", None),
    15: ("complex128", None),
    16: ("bfloat16", None),
}

# numpy dtype name -> ONNX type name, for NodeArg.type strings ("tensor(float)")
NUMPY_TO_ONNX_NAME = {str(dt): name for name, dt in ONNX_TYPES.values() if dt is not None}


def numpy_dtype(code: int) -> np.dtype | None:
    """numpy dtype of an ONNX element type code, None if numpy has no equivalent (or unknown)."""
    entry = ONNX_TYPES.get(int(code))
    return None if entry is None else entry[1]


def onnx_type_name(code: int) -> str:
    entry = ONNX_TYPES.get(int(code))
    return f"unknown({code})" if entry is None else entry[0]


def type_string(dtype_name: str | None) -> str:
    """ORT-style NodeArg.type for a numpy dtype name, e.g. 'float32' -> 'tensor(float)'."""
    if dtype_name is None:
        return "tensor(undefined)"
    return f"tensor({NUMPY_TO_ONNX_NAME.get(dtype_name, dtype_name)})"
