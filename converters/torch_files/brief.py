"""File content in error messages: short, whatever the file holds."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Sequence
from typing import Any

_NAME_HEAD, _NAME_TAIL = 60, 20  # the characters of a long name that messages show


def brief_name(name: str) -> str:
    """A name from a file (a key, a tensor name) for a message: a long one as its first 60 and last
    20 characters around its length; one of up to 100 characters as it is."""
    if len(name) <= _NAME_HEAD + _NAME_TAIL + 20:  # no shorter once shortened
        return name
    return f"{name[:_NAME_HEAD]}...({len(name)} chars)...{name[-_NAME_TAIL:]}"


class _Brief(reprlib.Repr):
    """repr() of file content for error messages: short, and never a whole (maybe shared) structure."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 80, 80

    def repr_str(self, x: str, level: int) -> str:
        return repr(brief_name(x))

    def repr_int(self, x: int, level: int) -> str:  # repr() of an int over 4300 digits raises
        return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"

    def repr_bytes(self, x: Any, level: int) -> str:
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    repr_bytearray = repr_bytes
    repr__PickledOrderedDict = reprlib.Repr.repr_dict  # the default would repr() it whole


_brief = _Brief().repr


def brief_list(items: Sequence[Any], most: int = 8, show: Callable[[Any], str] = _brief) -> str:
    """Items from a file for a message, joined by commas: the first `most` of them, or fewer where
    they pass 200 characters, each as `show` writes it (names quoted and shortened), then how many
    there are in all."""
    shown: list[str] = []
    for item in items[:most]:
        shown.append(show(item))
        if sum(map(len, shown)) > 200:
            break
    text = ", ".join(shown)
    return text if len(shown) == len(items) else f"{text}, ... ({len(items)} in all)"


def _why(exc: BaseException) -> str:
    text = str(exc)[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
