"""Vocabularies: symbols (characters or tokens) <-> integer ids, one-hot rows, padded batches.

``Vocabulary("ATCG")`` is the course's example: each character is a symbol, ids follow the order
given (A=0, T=1, C=2, G=3), and ``one_hot("AACG")`` is the (4, 4) matrix of the slide. A list of
strings makes a token vocabulary instead (``Vocabulary(["<s>", "hello", "world"])``), unless every
symbol but the special ones is one character: then it is a character vocabulary too.

Special symbols (``pad``, ``unknown``, ``bos``, ``eos``) are ordinary members of the vocabulary; one
that is not among the given symbols is put in front of them, in that order, so ``pad`` gets id 0.
An unknown symbol raises :class:`fastrnn.errors.ArgumentError` unless ``unknown`` names the symbol
to map it to. Every id that enters a model goes through :meth:`Vocabulary.check_ids`, so an
out-of-range id is rejected in Python before any kernel sees it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError
from .validation import as_array, as_flag, check_elements, read_dtype

__all__ = ["Vocabulary", "check_ids"]

SPECIALS = ("pad", "unknown", "bos", "eos")


def check_ids(ids: Any, size: int, what: str = "token ids") -> np.ndarray:
    """``ids`` as an int64 array after checking every id is an integer in [0, size).

    Raises DTypeError for non-integer arrays (floats that hold integers included: they are
    almost always a bug) and ArgumentError naming the first bad id and where it is.
    """
    arr = as_array(ids, what)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":   # np.asarray([]) is float64
            return arr.astype(np.int64)
        raise DTypeError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= size:
            bad = np.flatnonzero((arr.reshape(-1) < 0) | (arr.reshape(-1) >= size))[0]
            where = np.unravel_index(bad, arr.shape)
            raise ArgumentError(f"{what} must be in [0, {size}), got {arr.reshape(-1)[bad]} at "
                                f"index {tuple(int(i) for i in where)}")
    return arr.astype(np.int64, copy=False)


class Vocabulary:
    """An ordered set of symbols with ids 0..len-1.

    symbols: a string (each character a symbol) or an iterable of strings (tokens; characters
    when every symbol but the special ones is one character).
    pad / unknown / bos / eos: optional special symbols (added in front when not among symbols).
    unknown: when set, symbols outside the vocabulary encode to its id instead of raising.
    """

    def __init__(self, symbols: str | Iterable[str], *, pad: str | None = None,
                 unknown: str | None = None, bos: str | None = None, eos: str | None = None):
        chars = isinstance(symbols, str)
        if not chars:
            if isinstance(symbols, (bytes, bytearray)) or not isinstance(symbols, Iterable):
                raise ArgumentError(f"symbols must be a string or an iterable of strings, got "
                                    f"{type(symbols).__name__}")
        items = list(symbols)
        for s in items:
            if not isinstance(s, str) or not s:
                raise ArgumentError(f"every symbol must be a non-empty string, got {s!r}")
        specials = {"pad": pad, "unknown": unknown, "bos": bos, "eos": eos}
        front = []
        for name in SPECIALS:
            s = specials[name]
            if s is None:
                continue
            if not isinstance(s, str) or not s:
                raise ArgumentError(f"{name} must be a non-empty string or None, got {s!r}")
            if s not in items and s not in front:
                front.append(s)
        items = front + items
        seen: dict[str, int] = {}
        for i, s in enumerate(items):
            if s in seen:
                raise ArgumentError(f"symbol {s!r} appears twice (ids {seen[s]} and {i}); "
                                    f"a vocabulary's symbols must be unique")
            seen[s] = i
        if not items:
            raise ArgumentError("a vocabulary needs at least one symbol")
        self._symbols = tuple(items)
        self._index = seen
        # a character vocabulary splits text into characters and joins without separator;
        # whether the special symbols were among the given ones or added makes no difference
        special_symbols = set(specials.values())
        self.chars = chars or all(len(s) == 1 for s in items if s not in special_symbols)
        self.pad, self.unknown, self.bos, self.eos = pad, unknown, bos, eos

    # ----- lookups -----
    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def __len__(self) -> int:
        return len(self._symbols)

    def __contains__(self, symbol: object) -> bool:
        return isinstance(symbol, str) and symbol in self._index

    def __iter__(self):
        return iter(self._symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_meta() == other.to_meta()

    def __repr__(self) -> str:
        shown = "".join(self._symbols) if self.chars and len(self) <= 40 else \
            f"{len(self)} symbols"
        extras = "".join(f", {n}={getattr(self, n)!r}" for n in SPECIALS if getattr(self, n))
        return f"fastrnn.Vocabulary({shown!r}{extras})"

    def id(self, symbol: str) -> int:
        """The id of one symbol (the unknown symbol's id for others, if set; else ArgumentError)."""
        if not isinstance(symbol, str):
            raise ArgumentError(f"a symbol is a string, got {type(symbol).__name__} {symbol!r}")
        i = self._index.get(symbol)
        if i is None:
            if self.unknown is not None:
                return self._index[self.unknown]
            shown = "".join(self._symbols) if self.chars else list(self._symbols)[:20]
            raise ArgumentError(f"symbol {symbol!r} is not in the vocabulary {shown!r} and it has "
                                f"no unknown symbol (Vocabulary(..., unknown='?'))")
        return i

    __getitem__ = id

    def symbol(self, i: int) -> str:
        """The symbol of one id."""
        arr = check_ids(i, len(self), "id")
        if arr.ndim:
            raise ShapeError(f"symbol takes one id, got shape {arr.shape}; use decode for several")
        return self._symbols[int(arr)]

    def special_id(self, name: str) -> int | None:
        """The id of the special symbol ``name`` ("pad", "unknown", "bos", "eos"), or None."""
        if name not in SPECIALS:
            raise ArgumentError(f"special symbols are {SPECIALS}, got {name!r}")
        s = getattr(self, name)
        return None if s is None else self._index[s]

    @property
    def pad_id(self) -> int | None:
        return self.special_id("pad")

    @property
    def bos_id(self) -> int | None:
        return self.special_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self.special_id("eos")

    # ----- encode / decode -----
    def split(self, text: str | Sequence[str]) -> list[str]:
        """Text as a list of symbols: characters of a string for a character vocabulary,
        whitespace-separated tokens for a token vocabulary; a list is taken as already split."""
        if isinstance(text, str):
            return list(text) if self.chars else text.split()
        if isinstance(text, Iterable):
            return list(text)
        raise ArgumentError(f"text must be a string or a sequence of symbols, got "
                            f"{type(text).__name__}")

    def encode(self, text: str | Sequence[str], *, bos: bool = False,
               eos: bool = False) -> np.ndarray:
        """Symbols -> int64 ids (T,), optionally wrapped in bos / eos."""
        bos, eos = as_flag(bos, "bos"), as_flag(eos, "eos")
        ids = [self.id(s) for s in self.split(text)]
        if bos:
            ids.insert(0, self._required("bos"))
        if eos:
            ids.append(self._required("eos"))
        return np.array(ids, dtype=np.int64)

    def decode(self, ids: Any, *, join: bool = True, strip: bool = True) -> str | list[str]:
        """Ids -> text (joined with "" for characters, " " for tokens) or a list of symbols.

        strip=True drops pad / bos symbols and stops at the first eos."""
        join, strip = as_flag(join, "join"), as_flag(strip, "strip")
        arr = check_ids(ids, len(self))
        if arr.ndim != 1:
            raise ShapeError(f"decode takes a 1-D sequence of ids, got shape {arr.shape}")
        out = []
        skip = {self.special_id("pad"), self.special_id("bos")} - {None}
        stop = self.eos_id
        for i in arr.tolist():
            if strip and i == stop:
                break
            if strip and i in skip:
                continue
            out.append(self._symbols[i])
        if not join:
            return out
        return ("" if self.chars else " ").join(out)

    def one_hot(self, text: str | Sequence | np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """One-hot rows (*S, len(self)) of 0/1: of a text (S = its symbols), or of ids or
        symbols of any shape S (an array or nested lists of ints, or of strings).

        dtype: any numeric numpy dtype; None is float32, the default, as for the stages (numpy
        would read None as float64)."""
        wanted = np.dtype(np.float32) if dtype is None else read_dtype(dtype)
        if wanted is None or wanted.kind not in "biuf":
            raise DTypeError(f"one_hot's dtype must be a numeric dtype, got {dtype!r}")
        dtype = wanted
        ids = self.encode(text) if isinstance(text, str) else self._ids_of(text)
        check_elements("one_hot's output", ids.size * len(self))
        out = np.zeros(ids.shape + (len(self),), dtype=dtype)
        np.put_along_axis(out, ids[..., None], 1, axis=-1)
        return out

    def _ids_of(self, ids_or_symbols: Any) -> np.ndarray:
        """Ids or symbols (an array, or nested lists of ints or of strings) -> checked ids of
        the same shape."""
        arr = as_array(ids_or_symbols, "one_hot's ids or symbols")
        if arr.dtype.kind != "U":
            return check_ids(arr, len(self))
        # as objects, a number among strings stays a number (numpy's str array made it text)
        symbols = np.asarray(ids_or_symbols, dtype=object).reshape(-1)
        return np.array([self.id(s) for s in symbols], np.int64).reshape(arr.shape)

    def encode_batch(self, texts: Sequence[str | Sequence[str]], *, batch_first: bool = True,
                     bos: bool = False, eos: bool = False,
                     pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Several texts -> (ids (N, T) or (T, N), lengths (N,)), padded with the pad id
        (or ``pad_id``, or 0 when the vocabulary has no pad symbol: padded steps are never read)."""
        if isinstance(texts, str):
            raise ArgumentError("encode_batch takes a list of texts; use encode for one text")
        if not isinstance(texts, Iterable):
            raise ArgumentError(f"encode_batch takes a list of texts, got {type(texts).__name__}")
        batch_first = as_flag(batch_first, "batch_first")
        seqs = [self.encode(t, bos=bos, eos=eos) for t in texts]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        fill = pad_id if pad_id is not None else (self.pad_id or 0)
        if check_ids(fill, len(self), "pad_id").ndim:  # np.full would broadcast a list of ids
            raise ShapeError(f"pad_id must be one id, got {fill!r:.60}")
        ids = np.full((len(seqs), int(lengths.max(initial=0))), fill, dtype=np.int64)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = s
        return (ids if batch_first else np.ascontiguousarray(ids.T)), lengths

    def check_ids(self, ids: Any, what: str = "token ids") -> np.ndarray:
        """``ids`` as int64 after checking each is in [0, len(self))."""
        return check_ids(ids, len(self), what)

    def _required(self, name: str) -> int:
        i = self.special_id(name)
        if i is None:
            raise ArgumentError(f"this vocabulary has no {name} symbol (Vocabulary(..., {name}=...))")
        return i

    # ----- persistence -----
    def to_meta(self) -> dict:
        """JSON-able description; ``Vocabulary.from_meta`` rebuilds it."""
        return {"symbols": list(self._symbols), "chars": self.chars,
                **{n: getattr(self, n) for n in SPECIALS}}

    @classmethod
    def from_meta(cls, meta: dict) -> "Vocabulary":
        from .errors import FormatError
        try:
            symbols = meta["symbols"]
            v = cls(symbols, **{n: meta.get(n) for n in SPECIALS})
        except (KeyError, TypeError, ArgumentError) as exc:
            raise FormatError(f"bad vocabulary record: {exc}") from None
        if list(v.symbols) != list(symbols):
            raise FormatError("bad vocabulary record: special symbols are not among the symbols")
        chars = meta.get("chars", v.chars)
        if not isinstance(chars, bool):
            raise FormatError(f"bad vocabulary record: chars must be true or false, got "
                              f"{chars!r:.60}")
        v.chars = chars
        return v

    def to_record(self):
        return "vocabulary", {"vocabulary": self.to_meta()}, {}


def _load_vocabulary(meta, tensors):
    return Vocabulary.from_meta(meta["vocabulary"])


def _register() -> None:
    from . import fileformat
    fileformat.register_kind("vocabulary", _load_vocabulary)


_register()
