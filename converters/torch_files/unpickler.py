"""The restricted unpickler: only ALLOWED_GLOBALS and opaque.py's inert stand-ins, BUILD only on
this package's data classes, NEWOBJ only on those stand-ins, no other class-instantiating opcode."""

from __future__ import annotations

import codecs
import io
import mmap
import pickle
import secrets
import struct
import sys
import weakref
from typing import Any

from fastrnn.errors import FastRNNError, FormatError, UnsafeFileError, UnsupportedError

from .allowed import ALLOWED_GLOBALS
from .brief import _brief, _why, brief_name
from .limits import (MAX_ARGUMENT_BYTES, MAX_ARGUMENT_RATIO, MAX_MADE_BYTES, MAX_MADE_RATIO,
                     MAX_PICKLE_BYTES)
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

# What the opcodes make, in bytes, charged against MAX_MADE_BYTES: the worst measured (limits.py),
# rounded up. A charge is never given back, though much is freed (the stack, the memo).
_SLOT = 24  # a value pushed: its stack slot, then its pointer in the tuple or list it goes into (9
# bytes each with the lists' spare room), so that TUPLE, LIST and APPENDS need no charge an item
_LIST = 64 + _SLOT  # an empty list or dict; the list MARK starts, and its slot in the metastack
_MEMO_ENTRY = 128  # a 64-bit key and its share of the memo's table (119)
_ENTRY = 128  # a dict item: its share of a table that may have just grown (and the old one)
_ORDERED_ENTRY = 256  # an OrderedDict item: its node and the table of nodes too
_MEMBER = 160  # a set member: its share of a table that may have just quadrupled (134)
_HASHED = 160  # beside an entry, where _Keys counts its key's hash (not str, bytes or small int)
_TABLE = 512  # a dict's or set's first table, and its _Keys record
_VALUE = 80 + _SLOT  # beside a value's own size (str, bytes, int): its _firsts entry, rounding up
_OBJECT = 256  # what a call, NEWOBJ or BUILD makes beyond what _charge counts (a TensorRef: 104)
_STORAGE = 768  # a persistent id's storage view, and its storage the first time (566 measured)
_MADE = {
    **dict.fromkeys((pickle.MARK, pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.DICT), _LIST),
    **dict.fromkeys((pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.BININT1,
                     pickle.EMPTY_TUPLE, pickle.DUP, pickle.GET, pickle.BINGET, pickle.LONG_BINGET,
                     pickle.EMPTY_SET, pickle.FROZENSET), _SLOT),  # sets: _spend(216) too
    **dict.fromkeys((pickle.BININT2, pickle.BININT, pickle.BINFLOAT), 32 + _SLOT),
    pickle.TUPLE1: 48 + _SLOT, pickle.TUPLE2: 56 + _SLOT, pickle.TUPLE3: 64 + _SLOT,
    pickle.TUPLE: 40 + _SLOT,  # and 8 an item, paid by _SLOT
    **dict.fromkeys((pickle.MEMOIZE, pickle.BINPUT, pickle.LONG_BINPUT, pickle.PUT), _MEMO_ENTRY),
    **dict.fromkeys((pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.EXT1, pickle.EXT2, pickle.EXT4),
                    48 + _SLOT),  # a stand-in class; its name is find_class's
    **dict.fromkeys((pickle.REDUCE, pickle.NEWOBJ, pickle.BUILD), _OBJECT),
    pickle.READONLY_BUFFER: _OBJECT,  # a memoryview of a bytearray, 184 bytes
}
_MADE_BY_CODE = [_MADE.get(bytes([code]), 0) for code in range(256)]
# _MADE's charges are made in lumps of this many bytes, a local sum being cheaper than the count
# (10 ns an opcode, 5% of reading the cheapest; 20 checking each): the budget may be exceeded by a lump
_CHARGE_EVERY = 1 << 16


def _quoted_string(line: bytes) -> str:
    # STRING: a Python 2 str, quoted and escaped; decoded as the unpickler's encoding says
    if len(line) < 2 or line[0] != line[-1] or line[0] not in b"\"'":
        raise pickle.UnpicklingError("the STRING opcode argument must be quoted")
    return _decode(codecs.escape_decode(line[1:-1])[0])


def _text_int(line: bytes) -> int:
    return line == b"01" if line in (b"00", b"01") else int(line, 0)


def _text_long(line: bytes) -> int:
    return int(line[:-1] if line.endswith(b"L") else line, 0)


def _utf8(data: bytes) -> str:
    return str(data, "utf-8", "surrogatepass")


def _decode(data: bytes) -> str:  # as the unpickler's encoding says
    return str(data, "utf-8")


# The opcodes whose value's size their operand sets: (the struct format of its length, or None for
# a line of text; how the value is made of its bytes)
_VALUES = {
    pickle.SHORT_BINUNICODE: ("<B", _utf8), pickle.BINUNICODE: ("<I", _utf8),
    pickle.BINUNICODE8: ("<Q", _utf8), pickle.SHORT_BINBYTES: ("<B", bytes),
    pickle.BINBYTES: ("<I", bytes), pickle.BINBYTES8: ("<Q", bytes),
    pickle.SHORT_BINSTRING: ("<B", _decode), pickle.BINSTRING: ("<i", _decode),
    pickle.LONG1: ("<B", pickle.decode_long), pickle.LONG4: ("<i", pickle.decode_long),
    pickle.UNICODE: (None, lambda b: str(b, "raw-unicode-escape")),
    pickle.STRING: (None, _quoted_string), pickle.INT: (None, _text_int),
    pickle.LONG: (None, _text_long), pickle.FLOAT: (None, float),
}


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
    a bytearray may not claim more bytes than the input holds, and every opcode is charged what it
    makes against MAX_MADE_BYTES + MAX_MADE_RATIO * the input's size (_make).
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file: Any, size: int, where: str, persistent: Any, made: int = 0) -> None:
        super().__init__(file, encoding="utf-8")
        self.memo = _Memo()
        self._size = size  # of the whole input
        self._where = where
        self._persistent = persistent
        self._firsts: dict[type, dict] = {str: {}, bytes: {}}  # each value -> its first object
        self._bytes_left = MAX_ARGUMENT_RATIO * size + MAX_ARGUMENT_BYTES  # see _spend
        # bytes of objects made (see _make), counted up: below 2**30 Python's int arithmetic is
        # fast, 100 ns a string faster than counting down from a budget past it
        self._made = made
        self._made_budget = MAX_MADE_BYTES + MAX_MADE_RATIO * min(size, MAX_PICKLE_BYTES)
        # id -> the keys of each dict or set the opcodes fill (holding it keeps its id its own)
        self._keys: dict[int, _Keys] = {}

    def find_class(self, module: str, name: str) -> Any:
        # the full name below, which a stand-in keeps: counted as a call's arguments, since
        # STACK_GLOBAL may pass a long str again and again through memo references
        self._spend(sys.getsizeof(module) + sys.getsizeof(name))
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
        # a storage names a record or a storage of its key the first time: a copy of the key
        self._make(_STORAGE + sum(len(v) for v in pid[:6] if type(v) is str)
                   if type(pid) is tuple else _STORAGE)
        return self._persistent(pid)

    def _spend(self, nbytes: int) -> None:
        """Count bytes that the pickle's calls take or build, or that its sets take; refuse past
        MAX_ARGUMENT_RATIO times the input's size plus MAX_ARGUMENT_BYTES. They count against
        _make's budget too."""
        self._bytes_left -= nbytes
        if self._bytes_left < 0:
            raise FormatError(
                f"{self._where}: pickle makes more than "
                f"{MAX_ARGUMENT_RATIO * self._size + MAX_ARGUMENT_BYTES} bytes of call arguments, "
                "containers and sets in all (a large value passed again and again through memo "
                "references); expected tensors and plain containers"
            )
        self._make(nbytes)

    def _make(self, nbytes: int) -> None:
        """Count bytes of objects that the pickle is about to make; refuse past MAX_MADE_BYTES
        plus MAX_MADE_RATIO times the input's size (at most MAX_PICKLE_BYTES)."""
        self._made += nbytes
        if self._made > self._made_budget:
            self._over()

    def _over(self) -> None:
        raise FormatError(
            f"{self._where}: pickle makes more than {self._made_budget} bytes of Python objects "
            f"({MAX_MADE_BYTES} plus {MAX_MADE_RATIO} times its "
            f"{min(self._size, MAX_PICKLE_BYTES)} bytes: empty containers, memo entries or small "
            "values by the million); expected tensors and plain containers (some 4.5 KB a tensor)"
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
        firsts = self._firsts.get(type(made))  # torch.device, _codecs.encode, numpy scalars
        self.stack[-1] = made if firsts is None else firsts.setdefault(made, made)

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
        self._make(2 * n + _VALUE)  # and the bytes that the unframer reads into it
        data = bytearray(n)
        self.readinto(data)
        if len(data) != n:
            raise FormatError(f"{self._where}: pickle is truncated inside a bytearray")
        self.append(data)

    def _keys_of(self, container: Any) -> _Keys:
        keys = self._keys.get(id(container))
        if keys is None:  # counted once, whatever made it (EMPTY_DICT, a dict() call, ...)
            self._make(_TABLE + _HASHED * len(container))  # charged as _fill charges
            keys = self._keys[id(container)] = _Keys(container)
            self._made -= _HASHED * (len(container) - len(keys._counts or ()))
        return keys

    def _fill(self, keys: _Keys, items: list, values: Any = None, entry: int = _ENTRY) -> None:
        """keys.fill(items, values), charged entry bytes an item and, before it is known which,
        the hash count of each (_HASHED), given back for those that _Keys does not count."""
        counted = len(keys._counts or ())
        self._make((entry + _HASHED) * len(items))
        keys.fill(items, values)
        self._made -= _HASHED * (len(items) - len(keys._counts or ()) + counted)

    def _set_items(self, items: list) -> None:
        target = self.stack[-1]
        if not isinstance(target, dict):  # Python's pickler writes SETITEMS after dicts only
            raise FormatError(
                f"{self._where}: pickle sets items of a {type(target).__name__}; expected a dict"
            )
        if len(items) % 2:
            raise FormatError(f"{self._where}: pickle sets a key without a value")
        self._fill(self._keys_of(target), items[::2], items[1::2],
                   _ENTRY if type(target) is dict else _ORDERED_ENTRY)

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
        self._fill(self._keys_of(target), items, entry=_MEMBER)

    def _load_empty_set(self) -> None:
        # 216 bytes from one byte of pickle: the largest object an opcode makes of nothing
        self._spend(_EMPTY_SET_BYTES)
        self.append(set())

    def _load_frozenset(self) -> None:
        self._spend(_EMPTY_SET_BYTES)  # as EMPTY_SET
        items = self.pop_mark()
        keys = _Keys(set())
        self._fill(keys, items, entry=2 * _MEMBER)  # a set, then the frozenset copied of it
        self.append(keys.frozen())

    def _load_dict(self) -> None:
        items = self.pop_mark()
        self.append({})
        self._set_items(items)

    def _load_frame(self) -> None:
        # the unframer reads the frame: a copy of it, at most the rest of the input
        (n,) = struct.unpack("<Q", self.read(8))
        self._make(min(n, self._size))
        self._unframer.load_frame(n)

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
    dispatch[pickle.FRAME[0]] = _load_frame
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

    def _value_loader(length: str | None, make: Any) -> Any:
        """A loader for an opcode whose operand's length sets its value's size (_VALUES): charged,
        once its operand is read (a copy, at most the rest of the input), before the value is
        made, the most it may take, 5 bytes a byte of operand (that copy, and a str with one
        character past U+FFFF takes 4 bytes for each other one), then what it took.

        Equal strings (and bytes) are made one object: a dict key or set member equal to one
        already there is compared with it in full unless it is the same object, and two equal long
        strings reused through memo references made that cost their length at every few bytes of
        pickle (minutes for tens of MB)."""
        def push(self: "_RestrictedUnpickler", value: Any, n: int) -> None:
            self._made -= 5 * n - sys.getsizeof(value)
            firsts = self._firsts.get(type(value))
            self.append(value if firsts is None else firsts.setdefault(value, value))

        if length is None:
            def load_line(self: "_RestrictedUnpickler") -> None:
                data = self.readline()[:-1]
                self._make(5 * len(data) + _VALUE)
                push(self, make(data), len(data))
            return load_line
        unpack, size = struct.Struct(length).unpack, struct.calcsize(length)
        getsizeof = sys.getsizeof

        def load(self: "_RestrictedUnpickler") -> None:  # push(), inline: strings are many
            (n,) = unpack(self.read(size))
            data = self.read(n)  # at most the rest of the input
            if len(data) != n:
                raise FormatError(
                    f"{self._where}: pickle claims a value of {n} bytes, {len(data)} left in it"
                )
            made = self._made + 5 * n + _VALUE
            if made > self._made_budget:
                self._over()
            value = make(data)
            # what it took: a str of n ASCII characters or n bytes take 49 bytes or less beside
            # them (sys.getsizeof, which costs more than the rest, for the others)
            self._made = made - 5 * n + (n + 49 if type(value) is not int and len(value) == n
                                         else getsizeof(value))
            firsts = self._firsts.get(type(value))
            self.append(value if firsts is None else firsts.setdefault(value, value))
        return load

    for _op, (_length, _maker) in _VALUES.items():
        dispatch[_op[0]] = _value_loader(_length, _maker)
    del _op, _length, _maker, _value_loader

    def load(self) -> Any:
        """pickle._Unpickler.load, each opcode charged what it makes (_MADE) before it runs."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        made, spent, every = _MADE_BY_CODE, 0, _CHARGE_EVERY
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                code = key[0]
                spent += made[code]
                if spent > every:
                    self._make(spent)
                    spent = 0
                dispatch[code](self)
        except pickle._Stop as stop:
            return stop.value
        finally:
            self._made += spent


# The bytes _make counted for each input that several pickles are read from, one after the other
# (a legacy file's five): they share one budget, as their values live together.
_MADE_SO_FAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _unpickle(data: bytes | mmap.mmap, where: str, persistent: Any = None) -> Any:
    """Run the restricted unpickler; every failure that is not ours becomes FormatError."""
    shared = not isinstance(data, (bytes, bytearray, memoryview))
    f = data if shared else io.BytesIO(data)
    unpickler = _RestrictedUnpickler(f, len(data), where, persistent,
                                     _MADE_SO_FAR.get(data, 0) if shared else 0)
    clock = _CLOCK.set(_InsertClock(where))
    try:
        return unpickler.load()
    except FastRNNError:
        raise
    except RecursionError as exc:
        raise FormatError(f"{where}: pickle nests too deeply") from exc
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from bad REDUCE args, ...
        raise FormatError(f"{where}: corrupt or truncated pickle ({_why(exc)})") from exc
    finally:
        _CLOCK.reset(clock)
        if shared:
            _MADE_SO_FAR[data] = unpickler._made
