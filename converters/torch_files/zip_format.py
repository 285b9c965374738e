"""The torch.save zip format: ``<name>/data.pkl`` and ``<name>/data/<key>`` storage records."""

from __future__ import annotations

import os
import zipfile
from typing import Any

from fastrnn.errors import FastRNNError, FormatError, UnsupportedError

from .brief import _brief, _why
from .dtypes import _itemsize
from .limits import MAX_PICKLE_BYTES
from .stand_ins import _StorageType
from .tensors import _Budget, _Storage, _StorageView
from .torch_file import TorchFile, _Closer
from .unpickler import _unpickle


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

    records: dict[str, tuple[str, zipfile.ZipInfo]] = {}  # storage key -> its record
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
        # looked up once per key: a record name is a new string, hashed and compared in full
        if key not in records:
            rec = f"{prefix}data/{key}"
            if rec not in infos:
                raise FormatError(f"{path}: storage record {_brief(rec)} is missing")
            records[key] = rec, infos[rec]
        rec, record = records[key]
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
