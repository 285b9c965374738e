"""The fastrnn model file format (``.frnn``): write, read, validate, inspect.

A ``.frnn`` file holds one savable object (a layer, a converted ONNX plan, ...) as a *kind* string,
a JSON *meta* dict and a set of named numpy tensors. It needs nothing but numpy to read, is
memory-mapped by default, and never contains or runs pickled code.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic          b"FRNN"
    4       4     version        uint32, currently 1
    8       8     header_length  uint64, byte length of the JSON header that follows
    16      L     header         UTF-8 JSON object (see below), L = header_length
    16+L    p     padding        zero bytes up to data_start = 16 + L rounded up to a multiple of 64
    data_start    data           tensor bytes; data_nbytes bytes; the file ends exactly here

The JSON header is an object with exactly these keys::

    {"kind": "layer",                       # non-empty string; picks the loader in fastrnn.load
     "meta": {...},                         # JSON object, free-form, owned by the kind's loader
     "tensors": [                           # list, in file order; names unique
        {"name": "weight_ih_l0",            # non-empty string
         "dtype": "float32",                # float16 float32 float64 int8 int32 int64 uint8 bool
         "shape": [16, 8],                  # list of non-negative ints ([] for a 0-d array)
         "offset": 0,                       # from data_start; a multiple of 64
         "nbytes": 512},                    # = prod(shape) * itemsize
        ...],
     "data_nbytes": 512}                    # length of the data section

Tensor bytes are C-order, little-endian, bool as one byte 0/1. Each tensor starts at a multiple of
64 bytes from data_start (itself a multiple of 64 from the file start), and tensors do not overlap;
gaps between them are zero padding. Duplicate JSON keys, NaN/Infinity literals and unknown keys are
rejected. A reader refuses a version it does not know (``SUPPORTED_VERSIONS``); a change that old
readers cannot ignore bumps ``FORMAT_VERSION``.

Writes are atomic: the file is written to a temporary name in the same folder, flushed to disk,
then renamed over the target, so a crash never leaves a half-written ``.frnn`` behind.
Reads memory-map the file read-only and return zero-copy, read-only array views (``mmap=True``),
or read the data into memory as writable arrays (``mmap=False``). Every malformed file raises
:class:`fastrnn.errors.FormatError` saying what was expected and what was found.
"""
from __future__ import annotations

import importlib
import json
import math
import mmap as _mmap
import os
import secrets
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fastrnn.errors import ArgumentError, DTypeError, FastRNNError, FormatError
from fastrnn.validation import as_array, as_flag

__all__ = [
    "MAGIC", "FORMAT_VERSION", "SUPPORTED_VERSIONS", "ALIGNMENT", "DTYPES",
    "write_container", "read_container", "register_kind", "known_kinds", "save", "load", "inspect",
]

# ---- format constants: the one place that defines the on-disk layout ----
MAGIC = b"FRNN"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
ALIGNMENT = 64
FIXED_HEADER = struct.Struct("<4sIQ")  # magic, version, header_length
HEADER_KEYS = ("kind", "meta", "tensors", "data_nbytes")
TENSOR_KEYS = ("name", "dtype", "shape", "offset", "nbytes")
DTYPES = {
    "float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"), "int32": np.dtype("<i4"), "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"), "bool": np.dtype("?"),
}
# a tensor's rank, and its extent (the product of its non-zero sizes times the item size: numpy
# refuses a shape beyond it even for an empty array, whose sizes its bytes do not bound)
MAX_DIMS = 32
MAX_EXTENT = int(np.iinfo(np.intp).max)


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _dtype_name(dt: np.dtype) -> str | None:
    for name, d in DTYPES.items():
        if dt.kind == d.kind and dt.itemsize == d.itemsize:
            return name
    return None


# ---------------------------------------------------------------- writing
def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def write_container(path: str | os.PathLike, kind: str, meta: Mapping[str, Any],
                    tensors: Mapping[str, Any]) -> None:
    """Write ``kind``, ``meta`` and ``tensors`` to ``path`` as a .frnn file, atomically."""
    if not isinstance(kind, str) or not kind:
        raise ArgumentError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(meta, Mapping):
        raise ArgumentError(f"meta must be a dict, got {type(meta).__name__}")
    if not isinstance(tensors, Mapping):
        raise ArgumentError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    arrays, table, end = [], [], 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"tensor names must be non-empty strings, got {name!r}")
        a = as_array(value, f"tensor {name!r}")
        dname = _dtype_name(a.dtype)
        if dname is None:
            raise DTypeError(f"tensor {name!r} has dtype {a.dtype}, which a .frnn file cannot hold; "
                             f"allowed: {', '.join(DTYPES)}")
        a = np.asarray(a, dtype=DTYPES[dname], order="C")  # little-endian, C-contiguous, keeps 0-d
        offset = _align(end)
        table.append({"name": name, "dtype": dname, "shape": list(a.shape),
                      "offset": offset, "nbytes": a.nbytes})
        arrays.append((offset, a))
        end = offset + a.nbytes
    header = {"kind": kind, "meta": dict(meta), "tensors": table, "data_nbytes": end}
    try:
        blob = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=_json_default).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise ArgumentError(f"meta must be JSON-serializable (no NaN/inf): {e}") from None
    data_start = _align(FIXED_HEADER.size + len(blob))

    path = _fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(FIXED_HEADER.pack(MAGIC, FORMAT_VERSION, len(blob)))
            f.write(blob)
            pos = FIXED_HEADER.size + len(blob)
            for offset, a in arrays:
                f.write(b"\0" * (data_start + offset - pos))
                if a.nbytes:
                    f.write(a.reshape(-1).view(np.uint8).data)
                pos = data_start + offset + a.nbytes
            f.write(b"\0" * (data_start - pos) if pos < data_start else b"")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- reading
def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"JSON header has the key {k!r} twice")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise FormatError(f"JSON header contains {name}, which is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one past the float range (1e999) would be inf, and is refused."""
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"JSON header contains the number {text[:40]}, beyond the float range")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_keys(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise FormatError(f"{where} must be a JSON object, found {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    extra = [k for k in obj if k not in keys]
    if missing:
        raise FormatError(f"{where} is missing the key(s) {missing}; expected keys {list(keys)}")
    if extra:
        raise FormatError(f"{where} has unknown key(s) {extra}; expected keys {list(keys)}")


def _read_header(f, path: str) -> tuple[int, dict, int, int]:
    """Validate everything but the tensor bytes; return (version, header, data_start, file_size)."""
    size = os.fstat(f.fileno()).st_size
    raw = f.read(FIXED_HEADER.size)
    if len(raw) < FIXED_HEADER.size:
        if raw[:4] != MAGIC[:len(raw)]:
            raise FormatError(f"{path!r} is not a .frnn file: it starts with {raw[:4]!r}, "
                              f"expected magic {MAGIC!r}")
        raise FormatError(f"{path!r} is too short to be a .frnn file: {size} bytes, "
                          f"the fixed header alone is {FIXED_HEADER.size}")
    magic, version, hlen = FIXED_HEADER.unpack(raw)
    if magic != MAGIC:
        hint = " (a zip archive, e.g. a PyTorch .pt file: use converters.from_torch)" \
            if magic == b"PK\x03\x04" else ""
        raise FormatError(f"{path!r} is not a .frnn file: it starts with {magic!r}{hint}, "
                          f"expected magic {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{path!r} has .frnn format version {version}; this fastrnn reads "
                          f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}")
    if hlen > size - FIXED_HEADER.size:
        raise FormatError(f"{path!r}: header length {hlen} runs past the end of the file "
                          f"({size} bytes; truncated or corrupt)")
    blob = f.read(hlen)
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                            parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError,
        # and integers of more digits than Python converts
        raise FormatError(f"{path!r}: the header is not valid UTF-8 JSON: {e}") from None
    _check_keys(header, HEADER_KEYS, "the JSON header")
    kind, meta, table, data_nbytes = (header[k] for k in HEADER_KEYS)
    if not isinstance(kind, str) or not kind:
        raise FormatError(f"{path!r}: 'kind' must be a non-empty string, found {kind!r}")
    if not isinstance(meta, dict):
        raise FormatError(f"{path!r}: 'meta' must be a JSON object, found {type(meta).__name__}")
    if not isinstance(table, list):
        raise FormatError(f"{path!r}: 'tensors' must be a JSON list, found {type(table).__name__}")
    if not _is_int(data_nbytes) or data_nbytes < 0:
        raise FormatError(f"{path!r}: 'data_nbytes' must be a non-negative integer, "
                          f"found {data_nbytes!r}")
    data_start = _align(FIXED_HEADER.size + hlen)
    if size != data_start + data_nbytes:
        what = "truncated" if size < data_start + data_nbytes else "has trailing bytes"
        raise FormatError(f"{path!r} is {what}: the header says the file is "
                          f"{data_start + data_nbytes} bytes, it is {size}")
    seen = set()
    for i, t in enumerate(table):
        _check_keys(t, TENSOR_KEYS, f"tensor entry {i}")
        name, dname, shape, offset, nbytes = (t[k] for k in TENSOR_KEYS)
        if not isinstance(name, str) or not name:
            raise FormatError(f"{path!r}: tensor entry {i} has name {name!r}, "
                              f"expected a non-empty string")
        if name in seen:
            raise FormatError(f"{path!r}: the tensor name {name!r} appears twice")
        seen.add(name)
        if not isinstance(dname, str) or dname not in DTYPES:
            raise FormatError(f"{path!r}: tensor {name!r} has unknown dtype {dname!r}; "
                              f"allowed: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS \
                or not all(_is_int(d) and d >= 0 for d in shape):
            raise FormatError(f"{path!r}: tensor {name!r} has shape {shape!r:.100}, expected a list "
                              f"of at most {MAX_DIMS} non-negative integers")
        if math.prod(d for d in shape if d) * DTYPES[dname].itemsize > MAX_EXTENT:
            raise FormatError(f"{path!r}: tensor {name!r} has shape {shape!r:.100}, beyond what an "
                              f"array can have (its non-zero sizes times the item size must be "
                              f"at most {MAX_EXTENT})")
        if not _is_int(offset) or offset < 0 or offset % ALIGNMENT:
            raise FormatError(f"{path!r}: tensor {name!r} has offset {offset!r}, expected a "
                              f"non-negative multiple of {ALIGNMENT}")
        expected = math.prod(shape) * DTYPES[dname].itemsize
        if not _is_int(nbytes) or nbytes != expected:
            raise FormatError(f"{path!r}: tensor {name!r} has nbytes {nbytes!r}, but "
                              f"{dname} of shape {tuple(shape)} needs {expected}")
        if offset + nbytes > data_nbytes:
            raise FormatError(f"{path!r}: tensor {name!r} occupies bytes [{offset}, "
                              f"{offset + nbytes}) of a data section of {data_nbytes} bytes")
    spans = sorted((t["offset"], t["offset"] + t["nbytes"], t["name"]) for t in table if t["nbytes"])
    for (_, end0, n0), (start1, _, n1) in zip(spans, spans[1:]):
        if start1 < end0:
            raise FormatError(f"{path!r}: tensors {n0!r} and {n1!r} overlap in the data section")
    return version, header, data_start, size


def _fspath(path) -> str:
    """path as a str (bytes decoded as the OS does); ArgumentError for what is not a path
    (os.fspath's TypeError). A path the OS cannot open raises OSError, as open() does."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise ArgumentError(f"a path must be a str, bytes or os.PathLike, got "
                            f"{type(path).__name__} {path!r:.80}") from None
    return os.fsdecode(path)


def _open(path: str | os.PathLike):
    path = _fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise FormatError(f"{path!r} is not a file")
    return open(path, "rb")  # a missing path raises FileNotFoundError, as open() does


def read_container(path: str | os.PathLike, mmap: bool = True
                   ) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Read a .frnn file; return (kind, meta, tensors). mmap=True: zero-copy read-only views."""
    mmap = as_flag(mmap, "mmap")
    with _open(path) as f:
        _, header, data_start, size = _read_header(f, os.fspath(path))
        if mmap and size:
            buf = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            base = np.frombuffer(buf, dtype=np.uint8)[data_start:]
        else:
            raw = np.empty(header["data_nbytes"] + ALIGNMENT, dtype=np.uint8)
            skip = -raw.ctypes.data % ALIGNMENT  # 64-byte aligned, like the mapped file
            base = raw[skip:skip + header["data_nbytes"]]
            f.seek(data_start)
            if f.readinto(base) != base.size:
                raise FormatError(f"{os.fspath(path)!r} changed size while being read")
    tensors = {}
    for t in header["tensors"]:
        dt = DTYPES[t["dtype"]]
        a = base[t["offset"]:t["offset"] + t["nbytes"]].view(dt).reshape(t["shape"])
        tensors[t["name"]] = a if dt.isnative else a.astype(dt.newbyteorder("="))
    return header["kind"], header["meta"], tensors


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a .frnn file without reading its tensor data (for ``fastrnn inspect``)."""
    with _open(path) as f:
        version, header, data_start, size = _read_header(f, os.fspath(path))
    tensors = [{"name": t["name"], "dtype": t["dtype"], "shape": tuple(t["shape"]),
                "nbytes": t["nbytes"]} for t in header["tensors"]]
    return {"path": os.fspath(path), "format_version": version, "file_size": size,
            "kind": header["kind"], "meta": header["meta"], "tensors": tensors,
            "parameter_count": sum(math.prod(t["shape"]) for t in tensors),
            "data_nbytes": header["data_nbytes"]}


# ---------------------------------------------------------------- object registry
_LOADERS: dict[str, Callable[[dict, dict], Any]] = {}
# Kinds whose loader lives in a module fastrnn does not import up front.
_PROVIDERS = {"onnx_plan": "converters.onnx_import"}


def register_kind(kind: str, loader: Callable[[dict, dict[str, np.ndarray]], Any]) -> None:
    """Make ``load`` rebuild files of ``kind`` with ``loader(meta, tensors)`` (last one wins)."""
    if not isinstance(kind, str) or not kind:
        raise ArgumentError(f"kind must be a non-empty string, got {kind!r}")
    if not callable(loader):
        raise ArgumentError(f"loader for kind {kind!r} must be callable, got {loader!r}")
    _LOADERS[kind] = loader


def known_kinds() -> list[str]:
    """The kinds ``load`` can rebuild right now."""
    return sorted(_LOADERS)


def save(obj: Any, path: str | os.PathLike) -> None:
    """Save a savable fastrnn object (one with ``to_record()``) to ``path``."""
    to_record = getattr(obj, "to_record", None)
    if isinstance(obj, type) or not callable(to_record):
        raise ArgumentError(f"cannot save an object of type {type(obj).__name__}: it has no "
                            f"to_record() method (savable: fastrnn layers and converted models)")
    record = to_record()
    if not (isinstance(record, tuple) and len(record) == 3):
        raise ArgumentError(f"{type(obj).__name__}.to_record() must return (kind, meta, tensors), "
                            f"got {type(record).__name__}")
    write_container(path, *record)


def load(path: str | os.PathLike, mmap: bool = True) -> Any:
    """Load the object saved in a .frnn file, dispatching on its kind."""
    kind, meta, tensors = read_container(path, mmap=mmap)
    if kind not in _LOADERS and kind in _PROVIDERS:
        importlib.import_module(_PROVIDERS[kind])  # registers its loader; imports no onnx/torch
    loader = _LOADERS.get(kind)
    if loader is None:
        raise FormatError(f"{os.fspath(path)!r} holds an object of kind {kind!r}, which no loader "
                          f"is registered for; known kinds: {known_kinds()} (import the module that "
                          f"registers it, e.g. converters for 'onnx_plan')")
    try:
        return loader(meta, tensors)
    except FastRNNError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        # a meta that is valid JSON but not the record its kind writes (a key missing, a list
        # where a dict belongs, ...)
        raise FormatError(f"{os.fspath(path)!r}: malformed {kind!r} record "
                          f"({type(exc).__name__}: {exc})") from exc
