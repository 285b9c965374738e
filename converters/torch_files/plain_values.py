"""The plain values a pickle may build: containers, torch.Size, torch.device, latin-1 bytes."""

from __future__ import annotations

import collections
import contextvars
import struct
import time
from typing import Any

from fastrnn.errors import FormatError

from .brief import _brief
from .limits import _INT64_MAX, MAX_EQUAL_HASHES, MAX_INSERT_RATIO, MAX_INSERT_SECONDS
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


def _empty_bytes(*args):
    """builtins.bytes(): how protocol 2 pickles b"" (other bytes come as _codecs.encode)."""
    if args:
        raise FormatError(f"bytes({_brief(args)}) is not allowed: only bytes() (empty)")
    return b""


class _PickledOrderedDict(collections.OrderedDict):
    """collections.OrderedDict from a pickle; the ``_metadata`` a state_dict carries is kept as data."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__["pickled_state"] = state


# The least each item (or character) of its argument takes in the container a call builds: a
# pointer in a list; in a set or dict the least its table takes (30 bytes or more measured, up to
# 107; 85 or more in an OrderedDict). The unpickler charges this before the call, so that a call
# past its budget builds nothing, and the container's real size once it is built.
_ITEM_BYTES = {list: 8, tuple: 8, bytearray: 1, set: 32, frozenset: 32, dict: 32,
               _PickledOrderedDict: 80}


def _container(cls):
    def build(*args):
        if len(args) > 1:
            raise FormatError(f"{cls.__name__}() takes at most one argument in a pickle")
        if args and not isinstance(args[0], (list, tuple, set, frozenset, dict, str, bytes)):
            raise FormatError(f"{cls.__name__}({type(args[0]).__name__}) is not allowed")
        if not args or not issubclass(cls, (dict, set, frozenset)):
            return cls(*args)
        # a dict or set is filled one key at a time, as SETITEMS and ADDITEMS fill one
        if issubclass(cls, dict):
            keys = _Keys(cls())
            keys.fill(*_keys_and_values(args[0], cls.__name__))
            return keys.container
        keys = _Keys(set())
        keys.fill(args[0])
        return keys.container if cls is set else keys.frozen()

    build.item_bytes = _ITEM_BYTES[cls]  # type: ignore[attr-defined]
    return build


def _keys_and_values(source: Any, call: str) -> tuple[list, list]:
    """The keys and the values of a dict, or of a sequence of (key, value) pairs."""
    if isinstance(source, dict):
        return list(source), list(source.values())
    for pair in source:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise FormatError(f"{call}() of {_brief(pair)}: expected (key, value) pairs")
    return [p[0] for p in source], [p[1] for p in source]


class _InsertClock:
    """The CPU time one read spends inserting dict keys and set members, against the rest of it.

    A key whose hash a file chooses (all but str and bytes) need not collide with another to be
    slow: CPython's probe sequence is public and a table's layout follows from its keys and their
    order, so distinct small ints can be placed to make every insertion walk one long run of
    occupied slots (43,690 of them, a 260 KB pickle, took 2.4 s to read where plain keys take
    0.1 s; quadratic). No bound on keys or hashes stops that without refusing large int-keyed dicts, so
    the time is bounded instead: insertions may take MAX_INSERT_SECONDS plus MAX_INSERT_RATIO times
    the rest of the read. Thread CPU time: other threads, other processes and waits do not count.
    """

    def __init__(self, where: str) -> None:
        self._where = where
        self._start = time.thread_time()
        self._spent = 0.0

    def lap(self, since: float) -> float:
        """Count the insertions since ``since`` (a thread_time); refuse past the bound."""
        now = time.thread_time()
        self._spent += now - since
        rest = now - self._start - self._spent
        if self._spent > MAX_INSERT_SECONDS + MAX_INSERT_RATIO * rest:
            raise FormatError(
                f"{self._where}: filling dicts and sets took {self._spent:.1f} s of CPU time, "
                f"against {rest:.1f} s for the rest of the pickle (keys placed to make each "
                "insertion walk the ones before it); expected strings or numbers as keys"
            )
        return now


# the clock of the read in progress: the dict() and set() calls a pickle makes are timed by it
_CLOCK: contextvars.ContextVar[_InsertClock | None] = contextvars.ContextVar(
    "fastrnn_insert_clock", default=None)
_LAP = 256  # keys between two looks at the clock
_HASH_BYTES = struct.Struct("<q").pack


class _Keys:
    """A dict or set a pickle fills, and how many of its keys share each hash value.

    A str or bytes hash is randomised per process, but a file can make any number of other keys
    share one hash: ints n + k * (2**61 - 1), tuples of ints solved item by item, floats, ... Each
    insertion then compares the key with every colliding one already there, so such a container
    took quadratic time (15 s for a 350 KB pickle, hours for tens of MB). At most
    MAX_EQUAL_HASHES keys of one container may share a hash value (ints below 2**60, their own
    hashes, are not counted: they share one with no other such int but -1 and -2), each key is
    set once (a key set again and again walked its probe path each time), every key is checked
    by _check_key, and the time it all takes is bounded by the read's _InsertClock. The counts
    are keyed by the hash's bytes, whose own hash is randomised.
    """

    __slots__ = ("container", "_counts")

    def __init__(self, container: Any) -> None:
        self.container = container
        self._counts: dict[bytes, int] | None = None  # made at the first counted key
        for key in container:  # what it already holds: a dict() or set() call filled it
            if type(key) is not str and type(key) is not bytes and (
                    type(key) is not int or key.bit_length() > 60):
                self._count(key)

    def fill(self, keys: Any, values: Any = None) -> None:
        """container[key] = values[i] for each key (a set: container.add(key)), timed by the
        read's clock. The common keys, str and small int, take the fewest steps."""
        c = self.container
        clock = _CLOCK.get()
        since = time.thread_time() if clock is not None else 0.0
        for i, key in enumerate(keys):
            if i % _LAP == _LAP - 1 and clock is not None:
                since = clock.lap(since)
            t = type(key)
            if t is str or t is bytes:  # their hashes are randomised
                if values is None:
                    c.add(key)
                else:
                    c[key] = values[i]
                continue
            if t is not int or key.bit_length() > 60:  # below 2**60 an int is its own hash
                self._count(key)
            before = len(c)
            if values is None:
                c.add(key)
            else:
                c[key] = values[i]
            if len(c) == before:
                raise FormatError(
                    f"dict key or set member {_brief(key)} is set twice in one dict or set; "
                    "expected each key once"
                )
        if clock is not None:
            clock.lap(since)

    def _count(self, key: Any) -> None:
        _check_key(key)
        if self._counts is None:
            self._counts = {}
        h = _HASH_BYTES(hash(key))
        n = self._counts.get(h, 0)
        if n >= MAX_EQUAL_HASHES:
            raise _flood(key)
        self._counts[h] = n + 1

    def frozen(self) -> frozenset:
        """The members as a frozenset: a copy, which may probe a table of another size."""
        clock = _CLOCK.get()
        since = time.thread_time() if clock is not None else 0.0
        out = frozenset(self.container)
        if clock is not None:
            clock.lap(since)
        return out


def _flood(key: Any) -> FormatError:
    return FormatError(
        f"dict key or set member {_brief(key)}: its dict or set already holds {MAX_EQUAL_HASHES} "
        "keys with the same hash value (a hash flood: each insertion would compare it with all "
        "of them); expected distinct strings, numbers or flat tuples as keys"
    )


def _check_key(k: Any) -> None:
    """A dict key or set member must hash and compare cheaply: Python caches no tuple or int hash,
    so one large key that a pickle reuses many times (memo references) would hash for hours, and
    equal frozensets compare member by member wherever one meets the other."""
    if type(k) is not tuple and type(k) is not frozenset and type(k) is not int:
        return
    items = k if type(k) in (tuple, frozenset) else (k,)
    if len(items) > 64 or any(type(v) in (tuple, frozenset)
                              or (type(v) is int and v.bit_length() > 256) for v in items):
        raise FormatError(
            f"dict key or set member {_brief(k)}: expected a string, a number or a flat tuple or "
            "frozenset of at most 64 of them"
        )
