"""The restricted unpickler: only ALLOWED_GLOBALS and opaque.py's inert stand-ins, BUILD only on
this package's data classes, NEWOBJ only on those stand-ins, no other class-instantiating opcode."""

from __future__ import annotations

import io
import mmap
import pickle
import secrets
import struct
import sys
from typing import Any

from fastrnn.errors import FastRNNError, FormatError, UnsafeFileError, UnsupportedError

from .allowed import ALLOWED_GLOBALS
from .brief import _brief, _why, brief_name
from .limits import MAX_ARGUMENT_BYTES, MAX_ARGUMENT_RATIO
from .numpy_values import _NumpyArray, _NumpyDType
from .opaque import OpaqueClass, OpaqueValue, PlainDictClass, opaque_global
from .plain_values import _CLOCK, _InsertClock, _Keys, _PickledOrderedDict

_STATEFUL = (_PickledOrderedDict, _NumpyDType, _NumpyArray, OpaqueValue)  # BUILD's only targets
_NEWABLE = (OpaqueClass, PlainDictClass)  # NEWOBJ's only classes
_STRINGS = (str, bytes, bytearray)
_CONTAINERS = (list, tuple, dict, set, frozenset)
# a str of one character outside latin-1, made anew each time (latin-1 ones are cached, but only
# ASCII is cheap to check)
_CHAR_BYTES = 80
_EMPTY_SET_BYTES = sys.getsizeof(set())  # 216: a set's table before its first member
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _made_of(v: Any, item_bytes: int) -> int:
    """The bytes a call may make of its argument v: see _RestrictedUnpickler._charge."""
    if isinstance(v, _STRINGS):
        if not item_bytes:
            return len(v)
        if isinstance(v, str) and not v.isascii():
            item_bytes += _CHAR_BYTES
    elif isinstance(v, _CONTAINERS):
        item_bytes = item_bytes or 8
    else:
        return 0
    return item_bytes * len(v)


class QuantizedFileError(UnsafeFileError, UnsupportedError):
    """A refused torch.ScriptObject: unsafe to unpickle as every unknown global is, and the
    packed weights of a quantized module, which fastrnn does not convert."""


def _refusal(full: str, where: str) -> UnsafeFileError:
    shown = brief_name(full)
    if full == "torch.ScriptObject":
        return QuantizedFileError(
            f"{where} holds a torch.ScriptObject (how quantized modules such as "
            "torch.ao.nn.quantized.dynamic.LSTM store their packed weights), refused unread; "
            "fastrnn converts float weights: save the float model's state_dict() (before "
            "quantize_dynamic)"
        )
    module = full.rsplit(".", 1)[0]
    if module.startswith("torch.nn.modules") or (
            module.startswith("torch.nn.") and full.split(".")[-1][:1].isupper()):
        return UnsafeFileError(
            f"{where} holds a pickled whole nn.Module ({shown}); fastrnn never unpickles classes. "
            "Save the weights instead, torch.save(model.state_dict(), path), and convert that file"
        )
    if module.startswith("__torch__"):
        return UnsafeFileError(
            f"{where} is a TorchScript archive (global {shown}); save model.state_dict() with "
            "torch.save instead"
        )
    return UnsafeFileError(
        f"{where}: refused pickle global '{shown}' (a checkpoint may only contain tensors and "
        "plain containers; loading it would run code from the file). If this file is a whole "
        "pickled model (torch.save(model, ...)), save model.state_dict() instead; if it is a "
        "training checkpoint whose other entries hold objects of your own classes "
        "(hyper_parameters: omegaconf configs, paths, Namespace and AttributeDict are read as "
        "data, others are not), save just its weights from a torch you trust the file with: "
        "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt')"
    )


class _Memo(dict):
    """The unpickler's memo, keyed by a secret permutation of each index, drawn per reader.

    A file chooses the indices. Keyed by ints, which hash to themselves, indices chosen to fill the
    probe path of one index (distinct hashes, no collision) made each fetch of it walk them all:
    20,000 fetches behind 100,000 entries took 9 s (6 bytes a fetch: minutes for a few MB). Keys
    the file cannot predict leave it nothing to choose; keyed by the indices' bytes, the defence
    held only while str and bytes hashes are randomised, which PYTHONHASHSEED turns off.
    """

    __slots__ = ("_mul", "_add")

    def __init__(self) -> None:
        super().__init__()
        self._mul = secrets.randbits(64) | 1  # odd: i -> i * mul mod 2**64 is a bijection
        self._add = secrets.randbits(64)

    def _key(self, i: int) -> int:
        z = (i * self._mul + self._add) & 0xFFFF_FFFF_FFFF_FFFF
        return z ^ (z >> 32)  # every bit of i reaches the low bits the table indexes with

    def __setitem__(self, i: int, value: Any) -> None:
        dict.__setitem__(self, self._key(i), value)

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < 1 << 32:  # no entry has such an index (PUT refuses them)
            raise KeyError(i)
        return dict.__getitem__(self, self._key(i))


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with find_class restricted and the object-building opcodes shut.

    Only ``ALLOWED_GLOBALS`` and opaque.py's stand-ins (omegaconf configs, paths, Namespace,
    AttributeDict: the objects training checkpoints keep beside their weights, as inert data)
    can be named; BUILD (set state) is allowed only on the few data classes of this package that
    expect it, so a file can never set attributes on anything else (not even on the allowed
    functions); NEWOBJ builds only those stand-ins' values; NEWOBJ_EX / INST / OBJ, which
    torch.save never emits, are refused. Dict keys and set members must hash cheaply, at most
    MAX_EQUAL_HASHES keys of one dict or set may share a hash value, each is set once, filling
    them is timed (_InsertClock), the memo is keyed by a secret permutation of its indices
    (below 2**32), equal strings (and bytes) are one object, the arguments of all calls, the
    containers they build and the sets the opcodes make are bounded together by the input's size,
    and a bytearray may not claim more bytes than the input holds.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file: Any, size: int, where: str, persistent: Any) -> None:
        super().__init__(file, encoding="utf-8")
        self.memo = _Memo()
        self._size = size  # of the whole input
        self._where = where
        self._persistent = persistent
        self._firsts: dict[type, dict] = {str: {}, bytes: {}}  # each value -> its first object
        self._bytes_left = MAX_ARGUMENT_RATIO * size + MAX_ARGUMENT_BYTES  # see _spend
        # id -> the keys of each dict or set the opcodes fill (holding it keeps its id its own)
        self._keys: dict[int, _Keys] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        full = f"{module}.{name}"
        try:
            return ALLOWED_GLOBALS[full]
        except KeyError:
            pass
        stand_in = opaque_global(full)
        if stand_in is None:
            raise _refusal(full, self._where)
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise FormatError(f"{self._where}: unexpected persistent id {_brief(pid)}")
        return self._persistent(pid)

    def _spend(self, nbytes: int) -> None:
        """Count bytes that the pickle's calls take or build, or that its sets take; refuse past
        MAX_ARGUMENT_RATIO times the input's size plus MAX_ARGUMENT_BYTES."""
        self._bytes_left -= nbytes
        if self._bytes_left < 0:
            raise FormatError(
                f"{self._where}: pickle makes more than "
                f"{MAX_ARGUMENT_RATIO * self._size + MAX_ARGUMENT_BYTES} bytes of call arguments, "
                "containers and sets in all (a large value passed again and again through memo "
                "references); expected tensors and plain containers"
            )

    def _charge(self, values: tuple, item_bytes: int = 0) -> None:
        """Count a call's arguments: the tuple's items, 8 bytes each, then what the call may make
        of each: a copy of a string, 8 bytes an item of a container. A call that builds a
        container of its argument's items (builtins.list, set, dict; plain_values._ITEM_BYTES)
        makes at least item_bytes for each item or character instead (_charge_container counts
        the rest once it is built), and a str object for each character outside ASCII: list(s) of
        a str of a million characters makes 8 MB, 84 MB if they are Greek.
        """
        self._spend(8 * len(values))  # then there are few enough values to walk
        self._spend(sum(_made_of(v, item_bytes) for v in values))

    def _charge_container(self, made: Any, args: tuple, item_bytes: int) -> None:
        """Count the rest of what a container-building call made: _charge counted the least it
        takes, item_bytes an item, but a dict's or set's table may take over three times that, and
        set() of no argument 216 bytes. Its charge is then the bytes it takes."""
        self._spend(sys.getsizeof(made) - item_bytes * sum(map(len, args)))

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:  # as Python's C unpickler requires
            raise FormatError(
                f"{self._where}: pickle calls a function with {type(args).__name__} arguments"
            )
        call = self.stack[-1]
        item_bytes = getattr(call, "item_bytes", 0)
        self._charge(args, item_bytes)
        made = call(*args)
        if item_bytes:
            self._charge_container(made, args, item_bytes)
        self.stack[-1] = made

    def _load_newobj(self) -> None:
        """NEWOBJ on a stand-in of opaque.py only: its value is data (no class is imported)."""
        args = self.stack.pop()
        cls = self.stack.pop()
        if type(cls) not in _NEWABLE or type(args) is not tuple:
            self._refuse_opcode()
        self._charge(args)
        self.append(cls.new(args))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) not in _STATEFUL:
            raise UnsafeFileError(
                f"{self._where}: pickle tries to set the state of a {type(inst).__name__}; "
                "only tensors, numpy arrays and plain containers are read"
            )
        self._charge(state if type(state) is tuple else (state,))
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

    def _first_of_equals(load: Any) -> Any:
        # A dict key or set member equal to one already there is compared with it in full unless it
        # is the same object; two equal long strings reused through memo references made that
        # comparison cost their length at every few bytes of pickle (minutes for tens of MB).
        def first(self: "_RestrictedUnpickler") -> None:
            load(self)
            value = self.stack[-1]
            firsts = self._firsts.get(type(value))
            if firsts is not None:
                self.stack[-1] = firsts.setdefault(value, value)

        return first

    def _keys_of(self, container: Any) -> _Keys:
        keys = self._keys.get(id(container))
        if keys is None:  # counted once, whatever made it (EMPTY_DICT, a dict() call, ...)
            keys = self._keys[id(container)] = _Keys(container)
        return keys

    def _set_items(self, items: list) -> None:
        target = self.stack[-1]
        if not isinstance(target, dict):  # Python's pickler writes SETITEMS after dicts only
            raise FormatError(
                f"{self._where}: pickle sets items of a {type(target).__name__}; expected a dict"
            )
        if len(items) % 2:
            raise FormatError(f"{self._where}: pickle sets a key without a value")
        self._keys_of(target).fill(items[::2], items[1::2])

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    def _load_setitems(self) -> None:
        self._set_items(self.pop_mark())

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise FormatError(
                f"{self._where}: pickle adds members to a {type(target).__name__}; expected a set"
            )
        self._keys_of(target).fill(items)

    def _load_empty_set(self) -> None:
        # 216 bytes from one byte of pickle: the largest object an opcode makes of nothing
        self._spend(_EMPTY_SET_BYTES)
        self.append(set())

    def _load_frozenset(self) -> None:
        self._spend(_EMPTY_SET_BYTES)  # as EMPTY_SET; its members cost their own bytes of pickle
        keys = _Keys(set())
        keys.fill(self.pop_mark())
        self.append(keys.frozen())

    def _load_dict(self) -> None:
        items = self.pop_mark()
        self.append({})
        self._set_items(items)

    def _load_put(self) -> None:
        # PUT's index is text, any int (i + k * (2**61 - 1) share a hash); Python's pickler
        # numbers memo entries from 0, and LONG_BINPUT's reach is 2**32
        i = int(self.readline()[:-1])
        if not 0 <= i <= 0xFFFFFFFF:
            raise FormatError(
                f"{self._where}: pickle memo index {_brief(i)}, expected 0 to 2**32 - 1"
            )
        self.memo[i] = self.stack[-1]

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.EMPTY_SET[0]] = _load_empty_set
    # the opcodes that hash dict keys and set members, or (PUT) pickle-chosen memo indices
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.PUT[0]] = _load_put
    for _op in (pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ):
        dispatch[_op[0]] = _refuse_opcode
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    # the opcodes that make strings or bytes (REDUCE: torch.device, _codecs.encode, numpy scalars)
    for _op in (pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING, pickle.UNICODE,
                pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.BINUNICODE8, pickle.BINBYTES,
                pickle.SHORT_BINBYTES, pickle.BINBYTES8, pickle.REDUCE):
        dispatch[_op[0]] = _first_of_equals(dispatch[_op[0]])
    del _op, _first_of_equals


def _unpickle(data: bytes | mmap.mmap, where: str, persistent: Any = None) -> Any:
    """Run the restricted unpickler; every failure that is not ours becomes FormatError."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    clock = _CLOCK.set(_InsertClock(where))
    try:
        return _RestrictedUnpickler(f, len(data), where, persistent).load()
    except FastRNNError:
        raise
    except RecursionError as exc:
        raise FormatError(f"{where}: pickle nests too deeply") from exc
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from bad REDUCE args, ...
        raise FormatError(f"{where}: corrupt or truncated pickle ({_why(exc)})") from exc
    finally:
        _CLOCK.reset(clock)
