"""Read PyTorch checkpoint files without torch and without running code from them.

Formats: the ``torch.save`` zip format (``<name>/data.pkl`` + ``<name>/data/<key>`` storages), the
legacy non-zip ``torch.save`` format (``_use_new_zipfile_serialization=False``) and ``.safetensors``.
Pickles are read by a restricted unpickler whose ``find_class`` admits only the globals in
``ALLOWED_GLOBALS`` (tensor rebuilding, storage and dtype names, ``collections.OrderedDict``, plain
containers, numeric numpy scalars/arrays); every other global is refused with ``UnsafeFileError``
before anything can be called. The pickle never sees a real torch or numpy callable: each allowed
name maps to a small function here that only builds data.

Tensors come back lazily as ``TensorRef`` (``.shape``, ``.dtype``, ``.numpy()``) while the file is
open, so a large training checkpoint is only read where a tensor is used; ``load()`` and
``read_state_dict()`` materialize everything as numpy arrays. float16, bfloat16 and float8
(e4m3fn, e5m2) are widened to float32.

A hostile file fails fast with a typed error: sizes it states are checked against its real size
before anything is allocated, its tensors together may name at most a small multiple of it
(MAX_VIEW_RATIO), structures it shares through pickle memo references are walked within a bound
(MAX_SHARED_VISITS), and zip records must be stored uncompressed, as torch.save writes them.
"""

from __future__ import annotations

import collections
import io
import json
import math
import mmap
import os
import pickle
import re
import reprlib
import struct
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fastrnn.errors import FastRNNError, FormatError, UnsafeFileError, UnsupportedError

__all__ = [
    "TensorRef",
    "UnreadableTensor",
    "TorchFile",
    "open_checkpoint",
    "load",
    "read_state_dict",
    "flatten_tensors",
    "unwrap_state_dict",
    "is_tensor_like",
    "ALLOWED_GLOBALS",
    "WRAPPER_KEYS",
]

# Legacy (non-zip) torch.save header: the pickled magic number and protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_PICKLE_BYTES = 256 << 20  # data.pkl larger than this is refused
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors spec's own limit
MAX_NESTING = 100
MAX_DIMS = 64  # numpy's limit
MAX_EXPANDED_BYTES = 256 << 20  # a tensor larger than its storage (stride 0) may make this much
# The tensors of one file may name at most MAX_VIEW_RATIO * file size + MAX_EXPANDED_BYTES bytes in
# all: views of one storage and stride-0 tensors each cost their full size when read.
MAX_VIEW_RATIO = 8
# Entries flatten_tensors may walk again through containers a pickle shares (memo references):
# a pickle of a few hundred bytes can reuse one list to describe 2**40 paths.
MAX_SHARED_VISITS = 100_000
MAX_NAME_CHARS = 64 << 20  # all tensor names of one flatten_tensors call together
_INT64_MAX = 2**63 - 1

# Keys under which training code nests the state dict ({"state_dict": ...}, {"model": ...}, ...),
# tried in this order by unwrap_state_dict.
WRAPPER_KEYS = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
    "weights", "params",
)


class _Brief(reprlib.Repr):
    """repr() of file content for error messages: short, and never a whole (maybe shared) structure."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 80, 80

    def repr_int(self, x: int, level: int) -> str:  # repr() of an int over 4300 digits raises
        return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"

    def repr_bytes(self, x: Any, level: int) -> str:
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    repr_bytearray = repr_bytes
    repr__PickledOrderedDict = reprlib.Repr.repr_dict  # the default would repr() it whole


_brief = _Brief().repr


def _why(exc: BaseException) -> str:
    text = str(exc)[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------------------
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


class _DType:
    """A torch dtype named in a pickle (``torch.float16``); inert data, not callable."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a torch dtype")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageType:
    """A torch storage class named in a pickle (``torch.FloatStorage``); inert data, not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a torch storage type")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TypeMarker:
    """torch.Tensor / torch.nn.Parameter named in a pickle: accepted only as _rebuild_from_type_v2's type."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: Any) -> None:
        raise FormatError(f"pickle tried to set state on {self.name}")

    def __repr__(self) -> str:
        return self.name


# ----------------------------------------------------------------------------------------------
# storages and lazy tensors
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# the allowed pickle globals: each maps to a function here that only builds data
# ----------------------------------------------------------------------------------------------
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


def _torch_size(dims=()):
    if not _is_int_tuple(dims):
        raise FormatError(f"torch.Size({_brief(dims)}): expected a tuple of ints")
    return tuple(dims)


def _torch_device(*args):
    if not all(type(a) is str or (type(a) is int and 0 <= a <= _INT64_MAX) for a in args):
        raise FormatError(f"torch.device{_brief(args)}: expected a type name and an index")
    return ":".join(str(a) for a in args)


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise FormatError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode("latin1")


class _PickledOrderedDict(collections.OrderedDict):
    """collections.OrderedDict from a pickle; the ``_metadata`` a state_dict carries is kept as data."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__["pickled_state"] = state


def _container(cls):
    def build(*args):
        if len(args) > 1:
            raise FormatError(f"{cls.__name__}() takes at most one argument in a pickle")
        if args and not isinstance(args[0], (list, tuple, set, frozenset, dict, str, bytes)):
            raise FormatError(f"{cls.__name__}({type(args[0]).__name__}) is not allowed")
        if args and issubclass(cls, (set, frozenset)):
            for k in args[0]:
                _check_key(k)
        if args and issubclass(cls, dict) and not isinstance(args[0], dict):
            for pair in args[0]:
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise FormatError(
                        f"{cls.__name__}() of {_brief(pair)}: expected (key, value) pairs"
                    )
                _check_key(pair[0])
        return cls(*args)

    return build


def _check_key(k: Any) -> None:
    """A dict key or set member must hash cheaply: Python caches no tuple or int hash, so one large
    key that a pickle reuses many times (memo references) would hash for hours."""
    items = k if type(k) is tuple else (k,)
    if len(items) > 64 or any(type(v) is tuple or (type(v) is int and v.bit_length() > 256)
                              for v in items):
        raise FormatError(
            f"dict key or set member {_brief(k)}: expected a string, a number or a flat tuple of "
            "at most 64 of them"
        )


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


class _NumpyArray:
    """numpy.core.multiarray._reconstruct(ndarray, ...) + BUILD: a numeric array, no object dtypes."""

    __slots__ = ("_array",)

    def __init__(self) -> None:
        self._array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise FormatError("bad numpy array state")
        _version, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _NumpyDType) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafeFileError("numpy array holding anything but plain numeric bytes")
        if not _is_int_tuple(shape):
            raise FormatError("bad numpy array shape")
        dt = dtype.numpy()
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(raw) != n * dt.itemsize:
            raise FormatError("numpy array data has the wrong size")
        arr = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C")
        self._array = np.array(arr, dtype=dt.newbyteorder("="), order="C")

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


def _numpy_reconstruct(subtype, shape, dtype_code):
    if not (isinstance(subtype, _TypeMarker) and subtype.name == "numpy.ndarray"):
        raise UnsafeFileError(f"numpy _reconstruct of {subtype!r}")
    return _NumpyArray()


def _build_allowed() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._utils._rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor,
        "torch._utils._rebuild_qtensor": _unreadable("quantized"),
        "torch._utils._rebuild_sparse_tensor": _unreadable("sparse"),
        "torch._utils._rebuild_sparse_csr_tensor": _unreadable("sparse"),
        "torch._utils._rebuild_meta_tensor_no_storage": _unreadable("meta (data-less)"),
        "torch._utils._rebuild_nested_tensor": _unreadable("nested"),
        "torch._utils._rebuild_wrapper_subclass": _unreadable("tensor-subclass"),
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.serialization._get_layout": _unreadable("non-strided layout"),
        "torch.Tensor": _TypeMarker("torch.Tensor"),
        "torch._tensor.Tensor": _TypeMarker("torch.Tensor"),
        "torch.nn.parameter.Parameter": _TypeMarker("torch.nn.Parameter"),
        "torch.nn.Parameter": _TypeMarker("torch.nn.Parameter"),
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "collections.OrderedDict": _container(_PickledOrderedDict),
        "builtins.set": _container(set),
        "builtins.frozenset": _container(frozenset),
        "builtins.list": _container(list),
        "builtins.tuple": _container(tuple),
        "builtins.dict": _container(dict),
        "builtins.bytearray": _container(bytearray),
        "_codecs.encode": _codecs_encode,
    }
    for name in list(_DTYPES) + list(_OTHER_DTYPES):
        allowed[f"torch.{name}"] = _DType(name)
    for alias, name in _DTYPE_ALIASES.items():
        allowed[f"torch.{alias}"] = _DType(name)
    for sname, dtype in _STORAGE_DTYPES.items():
        for mod in ("torch", "torch.cuda", "torch.storage"):
            allowed[f"{mod}.{sname}"] = _StorageType(sname, dtype)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{mod}._reconstruct"] = _numpy_reconstruct
        allowed[f"{mod}.scalar"] = _numpy_scalar
    allowed["numpy.ndarray"] = _TypeMarker("numpy.ndarray")
    allowed["numpy.dtype"] = _NumpyDType
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _build_allowed()
_STATEFUL = (_PickledOrderedDict, _NumpyDType, _NumpyArray)  # the only targets of BUILD
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _refusal(full: str, where: str) -> UnsafeFileError:
    full = full if len(full) <= 200 else full[:200] + "..."
    module = full.rsplit(".", 1)[0]
    if module.startswith("torch.nn.modules") or (
            module.startswith("torch.nn.") and full.split(".")[-1][:1].isupper()):
        return UnsafeFileError(
            f"{where} holds a pickled whole nn.Module ({full}); fastrnn never unpickles classes. "
            "Save the weights instead, torch.save(model.state_dict(), path), and convert that file"
        )
    if module.startswith("__torch__"):
        return UnsafeFileError(
            f"{where} is a TorchScript archive (global {full}); save model.state_dict() with "
            "torch.save instead"
        )
    return UnsafeFileError(
        f"{where}: refused pickle global '{full}' (a checkpoint may only contain tensors and plain "
        "containers; loading it would run code from the file). If this file is a whole pickled "
        "model (torch.save(model, ...)), save model.state_dict() instead"
    )


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with find_class restricted and the object-building opcodes shut.

    Only ``ALLOWED_GLOBALS`` can be named; BUILD (set state) is allowed only on the few data
    classes of this module that expect it, so a file can never set attributes on anything else
    (not even on the allowed functions); NEWOBJ / INST / OBJ, which torch.save never emits for
    tensors and containers, are refused. Dict keys and set members must hash cheaply, and a
    bytearray may not claim more bytes than the input holds.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file: Any, size: int, where: str, persistent: Any) -> None:
        super().__init__(file, encoding="utf-8")
        self._size = size  # of the whole input
        self._where = where
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        full = f"{module}.{name}"
        try:
            return ALLOWED_GLOBALS[full]
        except KeyError:
            raise _refusal(full, self._where) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise FormatError(f"{self._where}: unexpected persistent id {_brief(pid)}")
        return self._persistent(pid)

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) not in _STATEFUL:
            raise UnsafeFileError(
                f"{self._where}: pickle tries to set the state of a {type(inst).__name__}; "
                "only tensors, numpy arrays and plain containers are read"
            )
        inst.__setstate__(state)

    def _refuse_opcode(self) -> None:
        raise UnsafeFileError(
            f"{self._where}: pickle builds an object with a class-instantiating opcode; "
            "only tensors, numpy arrays and plain containers are read"
        )

    def _load_bytearray8(self) -> None:
        # the only opcode that allocates its claimed length before reading (the others read
        # what is there): bound it by the input
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise FormatError(
                f"{self._where}: pickle claims a bytearray of {n} bytes in {self._size} bytes of input"
            )
        data = bytearray(n)
        self.readinto(data)
        if len(data) != n:
            raise FormatError(f"{self._where}: pickle is truncated inside a bytearray")
        self.append(data)

    def _keys_checked(load: Any, keys: Any) -> Any:
        def checked(self: "_RestrictedUnpickler") -> None:
            for k in keys(self.stack):
                _check_key(k)
            load(self)

        return checked

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    # the opcodes that hash dict keys and set members (after MARK the stack holds just the items)
    dispatch[pickle.SETITEM[0]] = _keys_checked(pickle._Unpickler.load_setitem, lambda st: st[-2:-1])
    dispatch[pickle.SETITEMS[0]] = _keys_checked(pickle._Unpickler.load_setitems, lambda st: st[::2])
    dispatch[pickle.ADDITEMS[0]] = _keys_checked(pickle._Unpickler.load_additems, lambda st: st)
    dispatch[pickle.FROZENSET[0]] = _keys_checked(pickle._Unpickler.load_frozenset, lambda st: st)
    for _op in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ):
        dispatch[_op[0]] = _refuse_opcode
    del _op, _keys_checked


def _unpickle(data: bytes | mmap.mmap, where: str, persistent: Any = None) -> Any:
    """Run the restricted unpickler; every failure that is not ours becomes FormatError."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return _RestrictedUnpickler(f, len(data), where, persistent).load()
    except FastRNNError:
        raise
    except RecursionError as exc:
        raise FormatError(f"{where}: pickle nests too deeply") from exc
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from bad REDUCE args, ...
        raise FormatError(f"{where}: corrupt or truncated pickle ({_why(exc)})") from exc


# ----------------------------------------------------------------------------------------------
# file formats
# ----------------------------------------------------------------------------------------------
class TorchFile:
    """An open checkpoint: ``obj`` is the unpickled top-level object, tensors as TensorRef."""

    def __init__(self, path: str, kind: str, obj: Any, handle: Any = None) -> None:
        self.path = path
        self.kind = kind  # "torch-zip" | "torch-legacy" | "safetensors"
        self.obj = obj
        self._handle = handle
        self.metadata: dict[str, str] = {}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "TorchFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def tensors(self) -> dict[str, Any]:
        """Every tensor in the file, by dotted path (``state_dict.rnn.weight_ih_l0``)."""
        return flatten_tensors(self.obj)


def open_checkpoint(path: str | os.PathLike) -> TorchFile:
    """Open a torch.save (zip or legacy) or safetensors file; close it (or use ``with``) when done."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block, a directory fail
        raise FormatError(f"{path} is not a regular file")
    fh = open(path, "rb")
    try:
        head = fh.read(512)
        if len(head) == 0:
            raise FormatError(f"{path} is empty")
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _open_zip(path, fh)
        size = os.fstat(fh.fileno()).st_size
        if len(head) >= 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size:
            return _open_safetensors(path, fh)
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return _open_legacy(path, fh)
        if len(head) >= 9 and head[8:9] == b"{":
            return _open_safetensors(path, fh)  # reports the truncation
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise UnsupportedError(
                f"{path} is in PyTorch's pre-0.4 tar checkpoint format, which fastrnn does not "
                "read; load it with torch and save model.state_dict() again"
            )
        raise FormatError(
            f"{path} is not a PyTorch checkpoint: expected a torch.save zip archive, a legacy "
            f"torch.save pickle or a .safetensors file; the file starts with {head[:8]!r}"
        )
    except BaseException:
        fh.close()
        raise


def _open_zip(path: str, fh: Any) -> TorchFile:
    fh.seek(0)
    try:
        zf = zipfile.ZipFile(fh)
        infolist = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError) as exc:  # the last: a zip version or method zipfile lacks
        raise FormatError(f"{path}: truncated or corrupt zip archive ({_why(exc)})") from exc
    size = os.fstat(fh.fileno()).st_size
    infos: dict[str, zipfile.ZipInfo] = {}
    for i in infolist:
        if i.filename in infos:
            raise FormatError(f"{path}: zip archive holds two records named {_brief(i.filename)}")
        # reads are then bounded by the file's real size
        if i.header_offset + i.compress_size > size or (
                i.compress_type == zipfile.ZIP_STORED and i.compress_size != i.file_size):
            raise FormatError(
                f"{path}: corrupt zip directory: record {_brief(i.filename)} claims {i.file_size} "
                f"bytes ({i.compress_size} stored at offset {i.header_offset}) in a {size}-byte file"
            )
        infos[i.filename] = i
    pkls = [n for n in infos if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkls:
        if any(n.endswith("/data.pkl") for n in infos):
            pkls = [n for n in infos if n.endswith("/data.pkl")][:1]
        else:
            raise FormatError(f"{path}: zip archive without a data.pkl record; not a torch.save file")
    if len(pkls) > 1:
        raise FormatError(f"{path}: zip archive holds several data.pkl records: {_brief(sorted(pkls))}")
    prefix = pkls[0][: -len("data.pkl")]
    if f"{prefix}constants.pkl" in infos or any(n.startswith(f"{prefix}code/") for n in infos):
        raise UnsupportedError(
            f"{path} is a TorchScript archive (torch.jit.save); fastrnn reads torch.save files. "
            "Save model.state_dict() with torch.save and convert that"
        )
    byteorder = "<"
    if f"{prefix}byteorder" in infos:
        try:
            bo = _read_record(path, zf, infos[f"{prefix}byteorder"]).decode("ascii", "replace").strip()
        except FastRNNError:
            raise
        except Exception as exc:
            raise FormatError(f"{path}: unreadable byteorder record ({_why(exc)})") from exc
        if bo not in ("little", "big"):
            raise FormatError(f"{path}: byteorder record says {_brief(bo)}, expected 'little' or 'big'")
        byteorder = "<" if bo == "little" else ">"
    info = infos[pkls[0]]
    if info.file_size > MAX_PICKLE_BYTES:
        raise FormatError(f"{path}: data.pkl is {info.file_size} bytes, over the {MAX_PICKLE_BYTES} limit")
    try:
        pkl = _read_record(path, zf, info)
    except FastRNNError:
        raise
    except Exception as exc:
        raise FormatError(f"{path}: cannot read data.pkl ({_why(exc)})") from exc

    storages: dict[str, _Storage] = {}
    budget = _Budget(size)

    def persistent(pid: Any) -> _StorageView:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise FormatError(f"{path}: unexpected persistent id {_brief(pid)}")
        _, stype, key, _location, numel = pid
        if (not isinstance(stype, _StorageType) or not isinstance(key, str)
                or type(numel) is not int or numel < 0):
            raise FormatError(f"{path}: bad storage reference {_brief(pid)}")
        item = _itemsize(stype.dtype)
        rec = f"{prefix}data/{key}"
        if rec not in infos:
            raise FormatError(f"{path}: storage record {_brief(rec)} is missing")
        record = infos[rec]
        # torch writes numel = record size // element size: a longer record is another dtype's
        if record.file_size // item != numel:
            raise FormatError(
                f"{path}: storage record {_brief(rec)} holds {record.file_size} bytes, expected "
                f"{numel * item} ({numel} {stype.dtype} elements)"
            )
        if record.compress_type != zipfile.ZIP_STORED:
            raise _compressed(path, record)
        if key not in storages:
            storages[key] = _Storage(lambda: _read_record(path, zf, record), rec, numel * item)
        return _StorageView(storages[key], stype.dtype, 0, numel, byteorder, budget)

    obj = _unpickle(pkl, path, persistent)
    return TorchFile(path, "torch-zip", obj, _Closer(zf, fh))


def _compressed(path: str, info: zipfile.ZipInfo) -> UnsupportedError:
    return UnsupportedError(
        f"{path}: zip record {_brief(info.filename)} is compressed; torch.save stores every record "
        "uncompressed, and fastrnn reads only those. Re-save the checkpoint with torch.save"
    )


def _read_record(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A stored record's bytes: its size was checked against the archive's when it was opened."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise _compressed(path, info)
    with zf.open(info) as f:
        data = f.read(info.file_size)
        f.read(1)  # reaching the end of the record makes zipfile check its CRC
    return data


class _Closer:
    """Closes a ZipFile and the file under it."""

    def __init__(self, *handles: Any) -> None:
        self._handles = handles

    def close(self) -> None:
        for h in self._handles:
            try:
                h.close()
            except Exception:
                pass


def _open_legacy(path: str, fh: Any) -> TorchFile:
    # a memory map, not the file: a corrupt length field then reads short instead of allocating
    try:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot map the file ({exc})") from exc
    try:
        return _read_legacy(path, mm, fh)
    except BaseException:
        mm.close()
        raise


def _read_legacy(path: str, fh: Any, file: Any) -> TorchFile:
    where = f"{path} (legacy torch.save format)"
    magic = _unpickle(fh, where)
    if magic != LEGACY_MAGIC:
        raise FormatError(
            f"{path} is a pickle but not a torch.save checkpoint (no torch magic number); "
            "fastrnn reads only torch.save, legacy torch.save and safetensors files"
        )
    proto = _unpickle(fh, where)
    if proto != LEGACY_PROTOCOL:
        raise UnsupportedError(f"{where}: protocol version {_brief(proto)}, expected {LEGACY_PROTOCOL}")
    sys_info = _unpickle(fh, where)
    little = True
    if isinstance(sys_info, Mapping):
        little = bool(sys_info.get("little_endian", True))
    byteorder = "<" if little else ">"

    roots: dict[str, tuple[str, int, _Storage]] = {}  # key -> (dtype, numel, storage)
    budget = _Budget(len(fh))

    def no_data() -> bytes:
        raise FormatError(f"{where}: storage has no data")

    def persistent(pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise FormatError(f"{where}: unexpected persistent id {_brief(pid)}")
        tag = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if tag == "module":
            raise UnsafeFileError(
                f"{path} holds a pickled whole nn.Module; fastrnn never unpickles classes. Save "
                "the weights instead, torch.save(model.state_dict(), path), and convert that file"
            )
        if tag != "storage" or len(pid) != 6:
            raise FormatError(f"{where}: unexpected persistent id {_brief(pid)}")
        _, stype, key, _location, numel, view = pid
        if (not isinstance(stype, _StorageType) or not isinstance(key, str)
                or type(numel) is not int or numel < 0):
            raise FormatError(f"{where}: bad storage reference {_brief(pid)}")
        if key not in roots:
            nbytes = numel * _itemsize(stype.dtype)
            roots[key] = (stype.dtype, numel, _Storage(no_data, f"legacy storage {key}", nbytes))
        dtype, _, st = roots[key]
        offset = 0
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int
                    and 0 <= view[1] <= _INT64_MAX):
                raise FormatError(
                    f"{where}: bad storage view {_brief(view)}, expected (key, offset >= 0, size)"
                )
            offset = view[1]
        return _StorageView(st, dtype, offset, numel, byteorder, budget)

    obj = _unpickle(fh, where, persistent)
    keys = _unpickle(fh, where)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FormatError(f"{where}: bad storage key list")
    if len(set(keys)) != len(keys):
        raise FormatError(f"{where}: the storage key list names a storage twice")
    size_fmt = byteorder + "q"
    end = len(fh)
    for key in keys:
        if key not in roots:
            raise FormatError(f"{where}: storage {_brief(key)} listed but never referenced")
        hdr = fh.read(8)
        if len(hdr) != 8:
            raise FormatError(f"{where}: truncated before storage {_brief(key)}")
        (count,) = struct.unpack(size_fmt, hdr)
        dtype, numel, st = roots[key]
        nbytes = count * _itemsize(dtype)
        start = fh.tell()
        if count < 0 or start + nbytes > end:
            raise FormatError(f"{where}: truncated inside storage {_brief(key)}")
        if count != numel:
            raise FormatError(f"{where}: storage {_brief(key)} holds {count} elements, expected {numel}")

        def reader(start: int = start, nbytes: int = nbytes) -> bytes:
            return fh[start:start + nbytes]

        st._reader = reader
        fh.seek(start + nbytes)
    missing = sorted(set(roots) - set(keys))
    if missing:
        raise FormatError(f"{where}: storages {_brief(missing)} have no data")
    return TorchFile(path, "torch-legacy", obj, _Closer(fh, file))


def _open_safetensors(path: str, fh: Any) -> TorchFile:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > MAX_SAFETENSORS_HEADER:
        raise FormatError(f"{path}: safetensors header length {n} is over the {MAX_SAFETENSORS_HEADER} limit")
    if 8 + n > size:
        raise FormatError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")

    def unique(pairs: list) -> dict:  # json.loads would keep the last of duplicate names
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise FormatError(f"{path}: safetensors header names {_brief(k)} twice")
            seen.add(k)
        return dict(pairs)

    try:
        header = json.loads(fh.read(n).decode("utf-8"), object_pairs_hook=unique)
    except FastRNNError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: safetensors header is not valid JSON ({_why(exc)})") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    base = 8 + n
    data_len = size - base
    out: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if isinstance(entry, dict):
                metadata = {str(k): str(v) for k, v in entry.items()}
            continue
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: safetensors entry {_brief(name)} is not an object")
        code, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        dtype = _SAFETENSORS_DTYPES.get(code) if isinstance(code, str) else None
        item = _itemsize(dtype) if dtype else 1
        if not _shape_ok(shape, item):
            raise FormatError(
                f"{path}: safetensors entry {_brief(name)} has bad shape {_brief(shape)} (expected "
                f"at most {MAX_DIMS} sizes >= 0 whose product fits int64)"
            )
        if not (_is_int_tuple(offs) and len(offs) == 2 and 0 <= offs[0] <= offs[1]):
            raise FormatError(
                f"{path}: safetensors entry {_brief(name)} has bad data_offsets {_brief(offs)}"
            )
        if offs[1] > data_len:
            raise FormatError(
                f"{path}: truncated safetensors file: {_brief(name)} ends at byte {offs[1]} of a "
                f"{data_len}-byte data section"
            )
        if offs[1] > offs[0]:
            spans.append((offs[0], offs[1], name))
        if dtype is None:
            out[name] = UnreadableTensor(f"safetensors dtype {_brief(code)} is not supported",
                                         tuple(shape), str(code)[:80])
            continue
        nbytes = math.prod(shape) * item
        if offs[1] - offs[0] != nbytes:
            raise FormatError(
                f"{path}: safetensors entry {_brief(name)} ({code} {list(shape)}) needs {nbytes} "
                f"bytes, data_offsets span {offs[1] - offs[0]}"
            )

        def reader(start=base + offs[0], nbytes=nbytes):
            fh.seek(start)
            return fh.read(nbytes)

        st = _Storage(reader, name, nbytes)
        stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        out[name] = TensorRef(st, 0, nbytes, tuple(shape), stride, dtype, "<")
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise FormatError(f"{path}: safetensors entries {_brief(a)} and {_brief(b)} share bytes")
    tf = TorchFile(path, "safetensors", out, fh)
    tf.metadata = metadata
    return tf


# ----------------------------------------------------------------------------------------------
# structure helpers
# ----------------------------------------------------------------------------------------------
def is_tensor_like(x: Any) -> bool:
    """A leaf the converters treat as a tensor: numpy arrays, TensorRef, torch tensors."""
    if isinstance(x, (np.ndarray, TensorRef, UnreadableTensor, _NumpyArray)):
        return True
    t = type(x)
    return t.__module__.startswith("torch") and hasattr(x, "shape") and hasattr(x, "detach")


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor-like leaf under nested dicts / lists, by dotted path; other leaves are dropped.

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
