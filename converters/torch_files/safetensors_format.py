"""The .safetensors format: a JSON header of names, dtypes, shapes and byte spans, then the data."""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from typing import Any

from fastrnn.errors import FastRNNError, FormatError

from .brief import _brief, _why
from .dtypes import _SAFETENSORS_DTYPES, _itemsize
from .limits import MAX_DIMS, MAX_SAFETENSORS_HEADER
from .tensors import TensorRef, UnreadableTensor, _is_int_tuple, _shape_ok, _Storage
from .torch_file import TorchFile


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
    lock = threading.Lock()  # the readers share fh and its position; threads may read at once
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
            with lock:
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
