"""Torch dtype names: their numpy storage types, widening to float32, sizes, and the names
storage classes and safetensors use for them."""

from __future__ import annotations

from typing import Any

import numpy as np


def _f8_e4m3fn_table() -> np.ndarray:
    b = np.arange(256)
    sign = np.where(b >> 7, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    val = np.where(exp == 0, man / 8.0 * 2.0**-6, (1.0 + man / 8.0) * 2.0 ** (exp - 7.0))
    val = sign * val
    val[(exp == 0xF) & (man == 0x7)] = np.nan
    return val.astype(np.float32)


def _widen_bf16(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def _widen_e4m3fn(a: np.ndarray) -> np.ndarray:
    return _f8_e4m3fn_table()[a]


def _widen_e5m2(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint16) << 8).view(np.float16).astype(np.float32)


def _widen_f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


# name -> (numpy storage dtype without byte order, widening function or None)
_DTYPES: dict[str, tuple[str, Any]] = {
    "float64": ("f8", None),
    "float32": ("f4", None),
    "float16": ("f2", _widen_f16),
    "bfloat16": ("u2", _widen_bf16),
    "float8_e4m3fn": ("u1", _widen_e4m3fn),
    "float8_e5m2": ("u1", _widen_e5m2),
    "int64": ("i8", None),
    "int32": ("i4", None),
    "int16": ("i2", None),
    "int8": ("i1", None),
    "uint8": ("u1", None),
    "uint16": ("u2", None),
    "uint32": ("u4", None),
    "uint64": ("u8", None),
    "bool": ("b1", None),
    "complex64": ("c8", None),
    "complex128": ("c16", None),
}
# dtypes a file may name that fastrnn cannot turn into numpy (tensors of these become UnreadableTensor)
_OTHER_DTYPES = (
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "complex32", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8",
    "bits2x4", "bits4x2", "int1", "int2", "int3", "int4", "int5", "int6", "int7", "uint1",
    "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
)
_DTYPE_ALIASES = {
    "double": "float64", "float": "float32", "half": "float16", "long": "int64", "int": "int32",
    "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32",
}
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "BOOL": "bool", "C64": "complex64",
}


def _itemsize(dtype: str) -> int:
    if dtype in _DTYPES:
        return np.dtype(_DTYPES[dtype][0]).itemsize
    return {"qint32": 4, "complex32": 4}.get(dtype, 1)
