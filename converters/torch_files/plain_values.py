"""The plain values a pickle may build: containers, torch.Size, torch.device, latin-1 bytes."""

from __future__ import annotations

import collections
from typing import Any

from fastrnn.errors import FormatError

from .brief import _brief
from .limits import _INT64_MAX
from .tensors import _is_int_tuple


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
    """A dict key or set member must hash and compare cheaply: Python caches no tuple or int hash,
    so one large key that a pickle reuses many times (memo references) would hash for hours, and
    equal frozensets compare member by member wherever one meets the other."""
    items = k if type(k) in (tuple, frozenset) else (k,)
    if len(items) > 64 or any(type(v) in (tuple, frozenset)
                              or (type(v) is int and v.bit_length() > 256) for v in items):
        raise FormatError(
            f"dict key or set member {_brief(k)}: expected a string, a number or a flat tuple or "
            "frozenset of at most 64 of them"
        )
