"""File content in error messages: short, whatever the file holds."""

from __future__ import annotations

import reprlib
from typing import Any


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
