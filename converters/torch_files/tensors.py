"""Storages and lazy tensors, and the torch ``_rebuild_*`` functions a pickle calls to make them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastrnn.errors import FastRNNError, FormatError, UnsafeFileError, UnsupportedError

from .brief import _brief, _why
from .dtypes import _DTYPES, _itemsize
from .limits import _INT64_MAX, MAX_DIMS, MAX_EXPANDED_BYTES, MAX_VIEW_RATIO
from .stand_ins import _DType, _TypeMarker


class _Storage:
    """Raw bytes of one storage, read from the file on first use and cached."""

    __slots__ = ("_reader", "_data", "name", "nbytes")

    def __init__(self, reader: Any, name: str, nbytes: int) -> None:
        self._reader = reader  # callable() -> bytes-like of length >= nbytes
        self._data: Any = None
        self.name = name
        self.nbytes = nbytes

    def data(self) -> memoryview:
        if self._data is None:
            try:
                raw = self._reader()
            except FastRNNError:
                raise
            except Exception as exc:  # zip CRC errors, short reads, closed files
                raise FormatError(f"cannot read storage {_brief(self.name)}: {_why(exc)}") from exc
            if len(raw) < self.nbytes:
                raise FormatError(
                    f"storage {_brief(self.name)} is truncated: expected {self.nbytes} bytes, "
                    f"found {len(raw)}"
                )
            self._data = memoryview(raw)[: self.nbytes]
        return self._data

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a storage")


class _Budget:
    """How many bytes the tensors of one file may still name (see MAX_VIEW_RATIO)."""

    __slots__ = ("left", "file_size")

    def __init__(self, file_size: int) -> None:
        self.file_size = file_size
        self.left = MAX_VIEW_RATIO * file_size + MAX_EXPANDED_BYTES


class _StorageView:
    """A storage as a pickle's persistent id names it: bytes, element dtype, element offset."""

    __slots__ = ("storage", "dtype", "offset", "numel", "byteorder", "budget")

    def __init__(self, storage: _Storage, dtype: str, offset: int, numel: int, byteorder: str,
                 budget: _Budget):
        self.storage = storage
        self.dtype = dtype
        self.offset = offset  # in elements of dtype (legacy view metadata), usually 0
        self.numel = numel
        self.byteorder = byteorder
        self.budget = budget

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a storage")


class TensorRef:
    """A tensor in an open checkpoint: shape and dtype known, data read by ``numpy()``."""

    __slots__ = ("_storage", "_byte_offset", "_nbytes_avail", "shape", "_stride", "dtype",
                 "_byteorder", "_cache")

    def __init__(self, storage: _Storage, byte_offset: int, nbytes_avail: int, shape: tuple,
                 stride: tuple, dtype: str, byteorder: str = "<") -> None:
        self._storage = storage
        self._byte_offset = byte_offset
        self._nbytes_avail = nbytes_avail
        self.shape = tuple(shape)
        self._stride = tuple(stride)
        self.dtype = dtype  # torch-style name: "float32", "bfloat16", ...
        self._byteorder = byteorder
        self._cache: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def numpy(self) -> np.ndarray:
        """Read the data: a fresh C-contiguous array; float16/bfloat16/float8 widened to float32."""
        if self._cache is not None:
            return self._cache.copy()
        if self.dtype not in _DTYPES:
            raise UnsupportedError(f"tensor dtype {self.dtype} cannot be converted to numpy")
        code, widen = _DTYPES[self.dtype]
        dt = np.dtype(code).newbyteorder(self._byteorder) if code != "b1" else np.dtype(bool)
        item = dt.itemsize
        if any(n == 0 for n in self.shape):
            arr = np.zeros(self.shape, dtype=dt)
        else:
            # the last element this view touches must lie inside the storage
            last = sum((n - 1) * s for n, s in zip(self.shape, self._stride))
            if (last + 1) * item > self._nbytes_avail:
                raise FormatError(
                    f"tensor of shape {self.shape}, strides {self._stride} reaches past the end of "
                    f"storage {_brief(self._storage.name)} ({self._nbytes_avail} bytes from its offset)"
                )
            data = self._storage.data()
            count = last + 1
            flat = np.frombuffer(data, dtype=dt, count=count, offset=self._byte_offset)
            if self.shape:
                arr = np.lib.stride_tricks.as_strided(
                    flat, shape=self.shape, strides=tuple(s * item for s in self._stride),
                    writeable=False,
                )
                arr = np.array(arr, copy=True, order="C")
            else:  # as_strided would read shape=() as "keep the shape"
                arr = flat[:1].reshape(()).copy()
        if not dt.isnative:
            arr = arr.astype(dt.newbyteorder("="))
        if widen is not None:
            arr = widen(arr)
        arr = np.require(arr, requirements="C")
        self._cache = arr
        return arr.copy()

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a tensor")

    def __repr__(self) -> str:
        return f"TensorRef(shape={self.shape}, dtype={self.dtype})"


class UnreadableTensor:
    """A tensor fastrnn cannot read (quantized, sparse, meta, unknown dtype): fails when used."""

    __slots__ = ("reason", "shape", "dtype")

    def __init__(self, reason: str, shape: tuple = (), dtype: str = "unknown") -> None:
        self.reason = reason
        self.shape = tuple(shape)
        self.dtype = dtype

    def numpy(self) -> np.ndarray:
        raise UnsupportedError(f"cannot read this tensor: {self.reason}")

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a tensor")

    def __repr__(self) -> str:
        return f"UnreadableTensor({self.reason})"


def _make_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                 dtype: str | None = None) -> TensorRef | UnreadableTensor:
    if not isinstance(storage, _StorageView):
        raise FormatError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    if not _is_int_tuple(size) or not _is_int_tuple(stride) or len(size) != len(stride):
        raise FormatError(f"bad tensor geometry: size={_brief(size)}, stride={_brief(stride)}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise FormatError(f"bad storage offset {_brief(storage_offset)}")
    if any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise FormatError(f"negative size or stride: size={_brief(size)}, stride={_brief(stride)}")
    dtype = dtype or storage.dtype
    item = _itemsize(dtype)
    if not _shape_ok(size, item) or max((*stride, storage_offset)) * item > _INT64_MAX:
        raise FormatError(
            f"tensor geometry out of range: size={_brief(size)}, stride={_brief(stride)}, offset="
            f"{_brief(storage_offset)} (expected at most {MAX_DIMS} dimensions, sizes and byte "
            "strides within int64)"
        )
    if dtype not in _DTYPES:
        return UnreadableTensor(f"dtype {dtype} is not supported", size, dtype)
    byte_offset = storage.offset * _itemsize(storage.dtype) + storage_offset * item
    total = storage.storage.nbytes
    nbytes = item * math.prod(size)
    if nbytes > max(total, MAX_EXPANDED_BYTES):
        # only stride-0 (expanded) tensors can be larger than their storage; cap what they make
        raise FormatError(f"tensor of shape {tuple(size)} needs {nbytes} bytes from a storage of {total}")
    budget = storage.budget
    budget.left -= nbytes
    if budget.left < 0:
        raise FormatError(
            f"the tensors of this {budget.file_size}-byte file need more than "
            f"{MAX_VIEW_RATIO * budget.file_size + MAX_EXPANDED_BYTES} bytes in all (views of "
            "shared storages or stride-0 tensors repeated)"
        )
    return TensorRef(storage.storage, byte_offset, max(0, total - byte_offset), tuple(size),
                     tuple(stride), dtype, storage.byteorder)


def _is_int_tuple(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and all(type(v) is int for v in x)


def _shape_ok(shape: Any, itemsize: int) -> bool:
    """A shape numpy can make: at most MAX_DIMS sizes >= 0, the bytes of the nonzero ones in int64."""
    return (_is_int_tuple(shape) and len(shape) <= MAX_DIMS
            and all(0 <= n <= _INT64_MAX for n in shape)
            and math.prod(n for n in shape if n) * itemsize <= _INT64_MAX)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise FormatError(f"_rebuild_tensor_v3 got dtype {_brief(dtype)}")
    return _make_tensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, (TensorRef, UnreadableTensor)):
        raise FormatError(f"Parameter rebuilt from {type(data).__name__}, expected a tensor")
    return data


def _rebuild_device_tensor_from_cpu_tensor(data, dtype=None, device=None, requires_grad=False):
    return _rebuild_parameter(data)


_REBUILD_FUNCS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
                  _rebuild_device_tensor_from_cpu_tensor)


def _rebuild_from_type_v2(func, new_type, args, state=None):
    if func not in _REBUILD_FUNCS and not getattr(func, "_fastrnn_placeholder", False):
        raise UnsafeFileError(f"_rebuild_from_type_v2 asked to call {_brief(func)}")
    if not isinstance(new_type, _TypeMarker):
        raise UnsafeFileError(f"_rebuild_from_type_v2 asked for type {_brief(new_type)}")
    if not isinstance(args, tuple):
        raise FormatError("_rebuild_from_type_v2 args are not a tuple")
    return func(*args)


def _unreadable(kind: str):
    def build(*args, **kwargs):
        return UnreadableTensor(f"{kind} tensors are not supported")

    build._fastrnn_placeholder = True  # type: ignore[attr-defined]
    return build
