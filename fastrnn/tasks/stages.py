"""A task model's chain of stages: checking it, preparing its input, running it."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ArgumentError, DTypeError, ShapeError
from ..heads import Embedding, Linear, OneHot
from ..layers import RecurrentLayer
from ..recurrent import check_lengths
from ..validation import as_array
from ..vocab import Vocabulary, check_ids


def split_stages(stages: Sequence[Any], what: str, *, need_input: bool = False):
    """(input stage or None, vocabulary or None, [recurrent layers], [Linear heads])."""
    stages = list(stages)
    if len(stages) == 1 and isinstance(stages[0], (list, tuple)):
        stages = list(stages[0])
    inp, vocab = None, None
    if stages and isinstance(stages[0], (Embedding, OneHot, Vocabulary)):
        inp = stages.pop(0)
        if isinstance(inp, Vocabulary):
            vocab, inp = inp, OneHot(len(inp))
    rnns = []
    while stages and isinstance(stages[0], RecurrentLayer):
        rnns.append(stages.pop(0))
    heads = []
    while stages and isinstance(stages[0], Linear):
        heads.append(stages.pop(0))
    if stages:
        raise ArgumentError(
            f"{what} takes stages in the order [Embedding | OneHot | Vocabulary], one or more "
            f"recurrent layers, then Linear heads; {type(stages[0]).__name__} is out of place")
    if not rnns:
        raise ArgumentError(f"{what} needs at least one recurrent layer (fastrnn.RNN/GRU/LSTM)")
    if need_input and inp is None:
        raise ArgumentError(f"{what} needs an input stage (Embedding, OneHot or Vocabulary) to "
                            f"feed its own tokens back")
    size = inp.output_size if inp is not None else rnns[0].input_size
    for i, r in enumerate(rnns):
        if r.input_size != size:
            src = "the input stage" if i == 0 else f"recurrent layer {i - 1}"
            raise ShapeError(f"{what}: recurrent layer {i} has input_size {r.input_size}, but "
                             f"{src} gives {size} features")
        size = r.num_directions * r.hidden_out
    for i, h in enumerate(heads):
        if h.in_features != size:
            raise ShapeError(f"{what}: head {i} has in_features {h.in_features}, but the stage "
                             f"before it gives {size} features")
        size = h.out_features
    return inp, vocab, rnns, heads


def check_vocab(vocab: Any, name: str) -> Vocabulary | None:
    """``vocab`` itself when it is None or a fastrnn.Vocabulary; else an ArgumentError (a string
    or a list of symbols is what a Vocabulary is built from, not one)."""
    if vocab is not None and not isinstance(vocab, Vocabulary):
        raise ArgumentError(f"{name} must be a fastrnn.Vocabulary or None, got "
                            f"{type(vocab).__name__} {vocab!r:.40}; build one with "
                            f"fastrnn.Vocabulary(symbols)")
    return vocab


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """``value`` when it is one of the names ``choices``, else an ArgumentError (before the
    membership test, which a numpy array would answer with an untyped ValueError)."""
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"{name} must be one of {choices}, got {value!r:.60}")
    return value


def check_info(info: Any) -> dict:
    """A model's notes (saved with it as JSON) as a dict; None: none."""
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise ArgumentError(f"info must be a dict of notes or None, got {type(info).__name__} "
                            f"{info!r:.40}")
    return dict(info)


def check_labels(labels: Any, outputs: int) -> list[str] | None:
    """Class names, one per output, as strings; None: none. A string is refused: its characters
    would be taken as the names."""
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise ArgumentError(f"labels must be a list of class names (one per output) or None, "
                            f"got {type(labels).__name__} {labels!r:.40}")
    names = [str(s) for s in labels]
    if len(names) != outputs:
        raise ShapeError(f"{len(names)} labels for {outputs} outputs")
    return names


def check_row_lengths(lengths: Any, rows: int, steps: int) -> np.ndarray:
    """The layers' check (recurrent.check_lengths), any shape of N entries taken as (N,)."""
    return check_lengths(as_array(lengths, "lengths").reshape(-1), rows, steps)


def empty_batch(what: str, shape: tuple | None = None, batch_first: bool = True) -> ShapeError:
    """The error for a batch of no sequences: an empty list, or ids of this shape with no row."""
    if shape is None:
        return ShapeError(f"{what} got an empty batch: give at least one text or sequence")
    return ShapeError(f"{what} got an empty batch: token ids of shape {shape} "
                      f"({'N, T' if batch_first else 'T, N'}) hold no sequence")


def prepare_input(inp, vocab, batch_first: bool, x: Any, lengths: Any, what: str):
    """Input -> (features (T, N, F) time-major, lengths (N,) or None, batched)."""
    if isinstance(x, (list, tuple)) and len(x) == 0:
        raise empty_batch(what)
    is_text = isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0
                                     and all(isinstance(s, str) for s in x))
    if is_text:
        if vocab is None:
            raise ArgumentError(f"{what} has no vocabulary to encode text with; pass token ids "
                                f"(or build it with vocab=...)")
        if lengths is not None:
            raise ArgumentError("lengths= goes with id arrays; texts carry their own lengths")
        if isinstance(x, str):
            ids, batched = vocab.encode(x)[:, None], False
        else:
            ids, lengths = vocab.encode_batch(x, batch_first=False)
            batched = True
    else:
        arr = as_array(x, f"{what}'s input")
        if arr.dtype.kind == "f":
            if inp is not None and not (isinstance(inp, OneHot) and arr.ndim in (2, 3)
                                        and arr.shape[-1] == inp.size):
                raise DTypeError(f"{what} takes token ids (integers) for its "
                                 f"{type(inp).__name__} input, got dtype {arr.dtype}")
            if arr.ndim not in (2, 3):
                raise ShapeError(f"feature input must be (T, F) or 3-D, got shape {arr.shape}")
            batched = arr.ndim == 3
            feats = arr[:, None] if not batched else (arr.transpose(1, 0, 2) if batch_first
                                                      else arr)
            if lengths is not None:
                lengths = check_row_lengths(lengths, feats.shape[1], feats.shape[0])
            return feats, lengths, batched
        if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
            raise DTypeError(f"{what} takes token ids as integers, got dtype {arr.dtype}")
        if inp is None:
            raise DTypeError(f"{what} has no input stage, so it takes float features, not ids")
        if arr.ndim not in (1, 2):
            raise ShapeError(f"token ids must be (T,) or 2-D ({'N, T' if batch_first else 'T, N'})"
                             f", got shape {arr.shape}")
        batched = arr.ndim == 2
        ids = arr[:, None] if not batched else (arr.T if batch_first else arr)
        if ids.shape[1] == 0:
            raise empty_batch(what, arr.shape, batch_first)
    steps, rows = ids.shape
    if lengths is not None:
        lengths = check_row_lengths(lengths, rows, steps)
        pad = np.arange(steps)[:, None] >= lengths[None, :]
        if pad.any():
            ids = np.where(pad, 0, ids)    # padded steps are never read: any id is allowed there
    if is_text or (batched and not batch_first):
        ids = check_ids(ids, inp.size, f"{what} input ids")
    elif batched:  # checked as the caller laid them out, so that an error names their index
        ids = check_ids(ids.T, inp.size, f"{what} input ids").T
    else:
        ids = check_ids(ids[:, 0], inp.size, f"{what} input ids")[:, None]
    return inp(ids), lengths, batched


def run_rnns(rnns, feats: np.ndarray, lengths, state0=None):
    """Time-major features through the chain -> (outputs (T, N, F), final state of the last)."""
    state = None
    for i, r in enumerate(rnns):
        x = feats.transpose(1, 0, 2) if r.batch_first else feats
        out, state = r(x, state0 if i == 0 else None, lengths=lengths)
        feats = out.transpose(1, 0, 2) if r.batch_first else out
    return feats, state


def final_hidden(rnn, state) -> np.ndarray:
    """The last layer's final hidden state, directions concatenated: (N, D * H_out)."""
    h = state[0] if rnn.mode == "LSTM" else state
    d = rnn.num_directions
    top = h[-d:]
    return np.concatenate(list(top), axis=-1) if d > 1 else top[0]


def apply_heads(heads, x: np.ndarray, final_activation: str | None = None) -> np.ndarray:
    for i, h in enumerate(heads):
        x = h(x, final_activation if i == len(heads) - 1 else None)
    return x


class HeadChain:
    """Preallocated buffers for running a (non-empty) head chain on (rows, F) without
    allocating."""

    def __init__(self, heads, rows: int, final_activation: str | None):
        self.heads = heads
        self.bufs = [np.zeros((rows, h.out_features), h.dtype) for h in heads]
        self.final = final_activation
        self.inp = np.zeros((rows, heads[0].in_features), heads[0].dtype)
        self._ready = None  # the latest input found usable as it is (a loop's reused buffer)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # a step loop passes the same buffer every time: its dtype and layout are checked once
        # (the checks cost a third of a small head's call)
        if x is not self._ready:
            if x.dtype != self.heads[0].dtype or not x.flags.c_contiguous:
                np.copyto(self.inp, x)
                x = self.inp
            else:
                self._ready = x
        heads, bufs = self.heads, self.bufs
        last = len(heads) - 1
        for i in range(last):
            heads[i]._apply_into(x, bufs[i])
            x = bufs[i]
        return heads[last]._apply_into(x, bufs[last], self.final)
