"""The legacy torch.save format (``_use_new_zipfile_serialization=False``): five pickles, then the
storages' bytes."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from typing import Any

from fastrnn.errors import FormatError, UnsafeFileError, UnsupportedError

from .brief import _brief
from .dtypes import _itemsize
from .limits import _INT64_MAX
from .stand_ins import _StorageType
from .tensors import _Budget, _Storage, _StorageView
from .torch_file import TorchFile, _Closer
from .unpickler import _unpickle

# Legacy (non-zip) torch.save header: the pickled magic number and protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


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
