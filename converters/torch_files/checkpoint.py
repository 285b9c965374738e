"""open_checkpoint: which format a file is in, by its first bytes."""

from __future__ import annotations

import os
import struct

from fastrnn.errors import FormatError, UnsupportedError

from .legacy_format import _open_legacy
from .safetensors_format import _open_safetensors
from .torch_file import TorchFile
from .zip_format import _open_zip


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
