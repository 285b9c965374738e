"""Numeric numpy dtypes, scalars and arrays from a pickle; object and structured dtypes are refused."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from fastrnn.errors import FormatError, UnsafeFileError

from .brief import _brief
from .stand_ins import _TypeMarker
from .tensors import _is_int_tuple, _shape_ok

_NUMPY_KINDS = re.compile(r"^[<>|=]?(b1|bool|[iu][1248]|f[248]|c(8|16)|u1|i1|S\d+|U\d+)$")


class _NumpyDType:
    """numpy.dtype(name, align, copy) from a pickle, numeric kinds only; BUILD sets byte order."""

    __slots__ = ("code", "order")

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or not _NUMPY_KINDS.match(code):
            raise UnsafeFileError(f"numpy dtype {_brief(code)} is not a plain numeric dtype")
        self.code = code
        self.order = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]
            if len(state) > 3 and state[3] is not None:  # fields / subarray dtypes
                raise UnsafeFileError("structured numpy dtypes are not allowed")

    def numpy(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


def _numpy_scalar(dtype: Any, data: Any = None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise UnsafeFileError("numpy scalar holding anything but plain numeric bytes")
    dt = dtype.numpy()
    if len(data) != dt.itemsize:
        raise FormatError("numpy scalar of the wrong size")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


def _checked_array(raw: Any, dtype: Any, shape: Any, order: str,
                   axis_order: Any = None) -> np.ndarray:
    """The array of ``shape`` whose elements ``raw`` holds in ``order`` ("C" or "F"), then with
    its axes in ``axis_order``; a native, C-contiguous copy."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(raw, (bytes, bytearray)):
        raise UnsafeFileError("numpy array holding anything but plain numeric bytes")
    dt = dtype.numpy()
    if not _shape_ok(shape, dt.itemsize):
        raise FormatError(f"bad numpy array shape {_brief(shape)}")
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise FormatError("numpy array data has the wrong size")
    arr = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order=order)
    if axis_order is not None:
        arr = arr.transpose(axis_order)
    return np.array(arr, dtype=dt.newbyteorder("="), order="C")


class _NumpyArray:
    """numpy.core.multiarray._reconstruct(ndarray, ...) + BUILD, or numpy.core.numeric._frombuffer
    (protocol 5): a numeric array, no object dtypes."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray | None = None) -> None:
        self._array = array

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise FormatError("bad numpy array state")
        _version, shape, dtype, fortran, raw = state
        self._array = _checked_array(raw, dtype, shape, "F" if fortran else "C")

    @property
    def shape(self) -> tuple:
        return self._require().shape

    @property
    def dtype(self) -> str:
        return str(self._require().dtype)

    def _require(self) -> np.ndarray:
        if self._array is None:
            raise FormatError("numpy array in the pickle has no data")
        return self._array

    def numpy(self) -> np.ndarray:
        arr = self._require()
        return arr.astype(np.float32) if arr.dtype == np.float16 else arr.copy()


def _numpy_frombuffer(buf, dtype, shape, order, axis_order=None):
    """How numpy pickles a contiguous array at protocol 5, its data in band: order "C" or "F", or
    "K" with the axis order that makes a transposed array of C-order ``shape``."""
    if order in ("C", "F") and axis_order is None:
        return _NumpyArray(_checked_array(buf, dtype, shape, order))
    if order == "K" and _is_int_tuple(shape) and _is_int_tuple(axis_order) \
            and sorted(axis_order) == list(range(len(shape))):
        return _NumpyArray(_checked_array(buf, dtype, shape, "C", axis_order))
    raise FormatError(f"numpy array of order {_brief(order)}, axis order {_brief(axis_order)} "
                      f"and shape {_brief(shape)}: expected order 'C' or 'F', or 'K' with a "
                      "permutation of the axes")


def _numpy_reconstruct(subtype, shape, dtype_code):
    if not (isinstance(subtype, _TypeMarker) and subtype.name == "numpy.ndarray"):
        raise UnsafeFileError(f"numpy _reconstruct of {subtype!r}")
    return _NumpyArray()
