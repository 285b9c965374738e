"""Regression fuzz of the call API: bad arguments raise typed errors, good ones compute right.

Guarantees checked, one test per family of cases:
- invalid input to any public call (layer calls, their lengths and initial states, constructors,
  load_state_dict and with_weight_dtype, streams and their state, Embedding / OneHot / Linear
  and their *_into forms, Vocabulary, Classifier / Tagger / Generator / Seq2Seq, save / load,
  set_num_threads, absurdly large sizes) raises a fastrnn.errors.FastRNNError that is also a
  ValueError or TypeError, of the class the case names where the README says which; a failed
  call leaves its object as it was (a layer's parameters, a stream's state);
- input that is valid, however unusual (NaN / inf, non-contiguous, read-only, unaligned,
  big-endian, stride-0, lists, torch tensors, other float dtypes, unsorted or zero lengths, ids
  past a row's length), computes, and gives what the plain C-contiguous call gives (bitwise),
  never touching its arguments, a NaN in one batch row reaching no other row;
- differential: random configurations (cell, 1-3 layers, bidirectional, batch_first, sizes
  1-40 and a few up to 100 for the hidden-unit split, proj_size, bias, float32 / float64, one or
  two threads, lengths with zeros, initial states, unbatched and non-contiguous input) against
  torch.nn.RNN / GRU / LSTM in float64 holding the same state dict (float32 within 1e-5 + 1e-5
  relative, float64 within 1e-10 + 1e-10 relative); ONNX's variants (activation lists with
  alpha / beta, clip, GRU linear_before_reset=0, LSTM peepholes / input_forget) against
  tests/reference.py in float64; streams against full calls; float16 weights against float32
  weights rounded to float16.
Empty input (T = 0 or N = 0) is a ShapeError, a deliberate choice: torch refuses T = 0 too, but
returns empty results for N = 0.
An exception of another kind, a wrong result, a crash or a hang (CASE_TIMEOUT) fails the family
and names each failing case. A MemoryError counts as an answer only in the "huge" family (sizes
of 2^31 and more: the caller asks for that much memory; the worker's RLIMIT_DATA turns any
allocation past MEMORY_LIMIT into one) and an OSError only for paths the OS refuses.

Not fuzzed: unknown keyword names and wrong argument counts (Python's own TypeError). On/off
flags (bias=, batch_first=, strict=, greedy=, ...) are taken by their truth value as torch takes
them; a value without one (a numpy array of several elements) is an ArgumentError.

The cases run in one worker process (this file run as a script), so that a crash or a hang
cannot take pytest down. Case i of family F is drawn from random.Random(f"{F}/{i}"): the test is
deterministic, and one case can be rerun alone:
    python tests/test_fuzz_api.py --case layer_lengths 17       (or 0 200: cases 0..199)
A larger local run multiplies the cases per family (default 1: 4,070 cases, ~15 s):
    FASTRNN_FUZZ_CASES=10 python -m pytest tests/test_fuzz_api.py
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numba
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # the worker, or a case run by hand: this checkout's fastrnn
    sys.path.insert(0, str(ROOT))

import fastrnn  # noqa: E402
from fastrnn import activations as acts  # noqa: E402
from fastrnn.errors import (ArgumentError, DTypeError, FastRNNError, ShapeError,  # noqa: E402
                            UnsupportedError)
from worker_process import WorkerProcess  # noqa: E402

SCALE = int(os.environ.get("FASTRNN_FUZZ_CASES", "1"))
# seconds one case may take in the worker before it counts as a hang: generous, because with
# an empty kernel cache the first case of a kind compiles its kernels (12-40 s each)
CASE_TIMEOUT = 300.0
MEMORY_LIMIT = 3 << 30  # RLIMIT_DATA of the worker: past it an allocation raises MemoryError
MODES = ("RNN", "GRU", "LSTM")
THREADS = (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1,)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

# what a case must do
OK = "ok"            # succeed (and pass the case's own checks)
EITHER = "either"    # succeed or raise a typed error (inputs whose validity is a matter of taste)
MEMORY = "memory"    # succeed, raise a typed error or MemoryError (sizes of 2^31 and more)
OSERR = "os"         # raise a typed error or OSError (paths the OS refuses)
ANY = (FastRNNError,)  # a tuple of classes: raise one of them


class Case:
    def __init__(self, desc, expect, fn, threads=1):
        self.desc, self.expect, self.fn, self.threads = desc, expect, fn, threads


class Wrong(Exception):
    """A check of a case's result failed (a silent wrong answer)."""


# ------------------------------------------------------------------------------------------------
# helpers: random models and arrays, checks
# ------------------------------------------------------------------------------------------------
def npr(rng):
    return np.random.default_rng(rng.randrange(1 << 32))


def small_layer(rng, mode=None, *, uni=False, dtype=None, max_size=8, layers=(1, 1, 2)):
    mode = mode or rng.choice(MODES)
    size_in, hidden = rng.randint(1, max_size), rng.randint(1, max_size)
    kw = dict(num_layers=rng.choice(layers), bias=rng.random() < 0.8,
              batch_first=rng.random() < 0.5, bidirectional=not uni and rng.random() < 0.3,
              dtype=dtype or rng.choice((np.float32, np.float32, np.float64)),
              seed=rng.randrange(1000))
    if mode == "LSTM" and hidden > 1 and rng.random() < 0.3:
        kw["proj_size"] = rng.randint(1, hidden - 1)
    if mode == "RNN" and rng.random() < 0.3:
        kw["nonlinearity"] = "relu"
    return getattr(fastrnn, mode)(size_in, hidden, **kw)


def describe(layer):
    return (f"{layer.mode}(I={layer.input_size}, H={layer.hidden_size}, L={layer.num_layers}, "
            f"bi={layer.bidirectional}, bf={layer.batch_first}, proj={layer.proj_size}, "
            f"bias={layer.bias}, {layer.dtype.name})")


def time_major(rng, layer, steps, rows):
    return npr(rng).standard_normal((steps, rows, layer.input_size)).astype(layer.dtype)


def laid_out(layer, xt, unbatched=False):
    """A time-major (T, N, I) array in the layer's input layout."""
    if unbatched:
        return xt[:, 0]
    return np.ascontiguousarray(xt.transpose(1, 0, 2)) if layer.batch_first else xt


def state_shapes(layer, rows, unbatched=False):
    stacked = layer.num_layers * layer.num_directions
    h, c = (stacked, rows, layer.hidden_out), (stacked, rows, layer.hidden_size)
    return ((h[0], h[2]), (c[0], c[2])) if unbatched else (h, c)


def random_state(rng, layer, rows, unbatched=False):
    hs, cs = state_shapes(layer, rows, unbatched)
    g = npr(rng)
    h = g.standard_normal(hs).astype(layer.dtype)
    return (h, g.standard_normal(cs).astype(layer.dtype)) if layer.mode == "LSTM" else h


def flat(result):
    """A layer call's (out, h_n) or (out, (h_n, c_n)) as a list of arrays."""
    out, state = result
    return [out, *state] if isinstance(state, tuple) else [out, state]


def same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Wrong(f"{what}: shape/dtype {got.shape} {got.dtype}, expected {want.shape} "
                    f"{want.dtype}")
    if not np.array_equal(got, want, equal_nan=True):
        raise Wrong(f"{what}: differs from the plain call by up to "
                    f"{np.nanmax(np.abs(got.astype(np.float64) - want)):.3g}")


def same_all(got, want, what):
    if len(got) != len(want):
        raise Wrong(f"{what}: {len(got)} results, expected {len(want)}")
    for k, (a, b) in enumerate(zip(got, want)):
        same(a, b, f"{what} [{k}]")


def close(got, want, dtype, what):
    """|got - want| <= tol * (1 + |want|), tol 1e-5 for float32 and 1e-10 for float64."""
    got, want = np.asarray(got), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise Wrong(f"{what}: shape {got.shape}, expected {want.shape}")
    tol = TOL[np.dtype(dtype)]
    err = np.abs(got.astype(np.float64) - want)
    if not np.all(np.isfinite(got)) or np.any(err > tol * (1 + np.abs(want))):
        raise Wrong(f"{what}: max abs error {np.nanmax(err):.3g} (tolerance {tol:g} + "
                    f"{tol:g} relative), finite {bool(np.all(np.isfinite(got)))}")


def unchanged(before, after, what):
    for a, b in zip(before, after):
        if isinstance(a, np.ndarray) and not np.array_equal(a, b, equal_nan=True):
            raise Wrong(f"{what} was modified")


def snapshot(*values):
    return [v.copy() if isinstance(v, np.ndarray) else v for v in values]


def torch_tensor(a):
    import torch
    return torch.from_numpy(np.array(a))


def variant(rng, a):
    """(name, v, values): v is `a` in another layout or type, `values` the numbers it holds (a
    cast may round them: float16)."""
    kinds = ["F", "neg", "strided", "readonly", "unaligned", "bigendian", "torch", "float16",
             "other float", "longdouble"]
    if a.size:  # an empty list has lost the shape
        kinds.append("list")
    if a.ndim and a.shape[0] > 1:
        kinds.append("stride 0")
    kind = rng.choice(kinds)
    values = a
    if kind == "F":
        v = np.asfortranarray(a)
    elif kind == "neg":
        v = np.ascontiguousarray(a[::-1])[::-1] if a.ndim else a.copy()
    elif kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else None
        if big is None:
            v = a.copy()
        else:
            big[..., ::2] = a
            v = big[..., ::2]
    elif kind == "readonly":
        v = a.copy()
        v.flags.writeable = False
    elif kind == "unaligned":
        buf = np.zeros(a.nbytes + 64, np.uint8)
        start = (-buf.ctypes.data % 64) + rng.randrange(1, a.itemsize)
        v = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        v[...] = a
    elif kind == "bigendian":
        v = a.astype(a.dtype.newbyteorder(">"))
    elif kind == "list":
        v = a.tolist()
    elif kind == "torch":
        v = torch_tensor(a)
    elif kind == "float16":
        v = a.astype(np.float16)
        values = v
    elif kind == "other float":
        v = a.astype(np.float64 if a.dtype == np.float32 else np.float32)
        values = v
    elif kind == "longdouble":
        v = a.astype(np.longdouble)
    else:
        v = np.broadcast_to(a[:1], a.shape)
        values = np.ascontiguousarray(v)
    return kind, v, np.asarray(values)


def bad_dtype(rng, a, ints=True):
    """(name, an array of a's shape whose dtype no float input takes; ints=False: no integer
    dtypes, for arguments that take integers, such as initial states and parameters)."""
    kinds = ["complex64", "complex128", "bool", "object", "str", "bytes", "datetime64[s]",
             "timedelta64[s]", "void", "structured", "torch bool", "torch complex"]
    if ints:
        kinds += ["int8", "int32", "int64", "uint8", "uint64", "torch int64"]
    kind = rng.choice(kinds)
    if kind == "object":
        return kind, a.astype(object)
    if kind == "str":
        return kind, a.astype(str)
    if kind == "bytes":
        return kind, a.astype("S8")
    if kind == "void":
        return kind, np.zeros(a.shape, "V4")
    if kind == "structured":
        return kind, np.zeros(a.shape, [("a", "f4"), ("b", "f4")])
    if kind.startswith("torch"):
        import torch
        dt = {"torch int64": torch.int64, "torch bool": torch.bool,
              "torch complex": torch.complex64}[kind]
        return kind, torch.zeros(a.shape, dtype=dt)
    if kind in ("datetime64[s]", "timedelta64[s]"):
        return kind, np.zeros(a.shape, kind)
    return kind, a.astype(kind)


GARBAGE = (None, "abc", b"abc", {"a": 1}, {1, 2}, object(), print, Ellipsis, slice(1), 1 + 2j,
           [["a", "b"]], [None], [[1.0], "x"])


def ragged(rng, a):
    """a as nested lists with one row shortened or one scalar replaced by a list (a.ndim >= 2)."""
    nested = a.tolist()
    node = nested
    for _ in range(rng.randrange(a.ndim - 1)):
        node = node[rng.randrange(len(node))]
    k = rng.randrange(len(node))
    if rng.random() < 0.5 and isinstance(node[k], list) and len(node[k]) > 1:
        node[k] = node[k][:-1]
    elif isinstance(node[k], list):
        node[k] = node[k] + [node[k][0]]
    else:
        node[k] = [node[k], node[k]]
    if len(node) == 1:  # a single row cannot be shorter than its siblings: add one
        node.append(node[0] + [node[0][0]] if isinstance(node[0], list) else [node[0]])
    return nested


def pick(rng, items):
    return items[rng.randrange(len(items))]


# ------------------------------------------------------------------------------------------------
# families: invalid (and valid but unusual) arguments
# ------------------------------------------------------------------------------------------------
def fam_layer_input(rng):
    """The input array of a layer call."""
    layer = small_layer(rng)
    steps, rows = rng.randint(1, 6), rng.randint(1, 5)
    unbatched = rng.random() < 0.25
    xt = time_major(rng, layer, steps, 1 if unbatched else rows)
    x = laid_out(layer, xt, unbatched)
    desc = f"{describe(layer)} x {x.shape}"
    kind = rng.randrange(6)
    if kind == 0:  # a valid array in another layout or type: the plain call's result, bitwise
        name, v, values = variant(rng, x)

        def check():
            want = flat(layer(np.ascontiguousarray(values, dtype=layer.dtype)))
            before = snapshot(v)
            same_all(flat(layer(v)), want, f"x as {name}")
            unchanged(before, [v], "the input")
        return Case(f"{desc} as {name}", OK, check)
    if kind == 1:  # NaN / inf are input like any other, and stay in their batch row
        bad = x.copy()
        row, step, feature = rng.randrange(rows), rng.randrange(steps), rng.randrange(x.shape[-1])
        at = (step, feature) if unbatched else (row, step, feature) if layer.batch_first \
            else (step, row, feature)
        bad[at] = rng.choice((np.nan, np.inf, -np.inf))

        def check():
            got, want = flat(layer(bad)), flat(layer(x))
            if unbatched:
                return
            axis = 0 if layer.batch_first else 1
            keep = [r for r in range(rows) if r != row]
            same(np.take(got[0], keep, axis), np.take(want[0], keep, axis), "other rows' output")
            for k, (a, b) in enumerate(zip(got[1:], want[1:])):
                same(a[:, keep], b[:, keep], f"other rows' final state {k}")
        return Case(f"{desc} with a NaN/inf in row {row}", OK, check)
    if kind == 2:  # a dtype no float input has
        name, v = bad_dtype(rng, x)
        return Case(f"{desc} as {name}", (DTypeError,), lambda: layer(v))
    if kind == 3:
        v = pick(rng, GARBAGE)
        return Case(f"{desc} replaced by {v!r:.40}", ANY, lambda: layer(v))
    if kind == 4 and x.ndim >= 2:
        v = ragged(rng, x)
        return Case(f"{desc} as ragged nested lists", (ShapeError,), lambda: layer(v))
    # a wrong shape
    size_in = layer.input_size
    shapes = [(), (size_in,), (1, 1) + x.shape, x.shape[:-1] + (size_in + 1,),
              x.shape[:-1] + (0,), (0, size_in), (0, 0, size_in)]
    if size_in > 1:
        shapes.append(x.shape[:-1] + (size_in - 1,))
    if not unbatched:  # (1, T, I) for an unbatched (T, I) is a batch of one
        shapes += [(0, x.shape[1], size_in), (x.shape[0], 0, size_in), (1,) + x.shape]
    shape = pick(rng, shapes)
    v = npr(rng).standard_normal(shape).astype(layer.dtype)
    return Case(f"{describe(layer)} x of shape {shape}", (ShapeError,), lambda: layer(v))


def small_call(rng, most, unbatched_share):
    """(layer, steps, rows, unbatched) of a layer call: 1..most steps and rows, unbatched (one
    row) in about unbatched_share of the calls."""
    layer = small_layer(rng)
    steps, rows = rng.randint(1, most), rng.randint(1, most)
    unbatched = rng.random() < unbatched_share
    return layer, steps, 1 if unbatched else rows, unbatched


def fam_layer_lengths(rng):
    """lengths= of a layer call."""
    layer, steps, rows, unbatched = small_call(rng, 6, 0.2)
    xt = time_major(rng, layer, steps, rows)
    x = laid_out(layer, xt, unbatched)
    hx = random_state(rng, layer, rows, unbatched) if rng.random() < 0.4 else None
    desc = f"{describe(layer)} x {x.shape} h0 {hx is not None}"
    g = npr(rng)
    good = g.integers(0, steps + 1, rows)
    kind = rng.randrange(3)
    if kind < 2:  # valid lengths, in some form: each row as if run alone
        forms = {"int64": lambda: good, "list": good.tolist, "tuple": lambda: tuple(good.tolist()),
                 "int8": lambda: good.astype(np.int8), "uint8": lambda: good.astype(np.uint8),
                 "int32": lambda: good.astype(np.int32), "uint64": lambda: good.astype(np.uint64),
                 "whole float64": lambda: good.astype(np.float64),
                 "whole float32": lambda: good.astype(np.float32),
                 "strided": lambda: np.repeat(good, 2)[::2], "readonly": lambda: _readonly(good),
                 "torch": lambda: torch_tensor(good), "bigendian": lambda: good.astype(">i8")}
        if unbatched:
            forms.update({"scalar": lambda: int(good[0]), "2-D": lambda: good[None],
                          "numpy scalar": lambda: good[0]})
        form = rng.choice(sorted(forms))
        lengths = forms[form]()
        states = hx if isinstance(hx, tuple) else (hx,)

        def check():
            before = snapshot(x, lengths, *states)
            got = flat(layer(x, hx, lengths=lengths))
            unchanged(before, snapshot(x, lengths, *states), "an argument")
            same_all(got, flat(layer(x, hx, lengths=good)), f"lengths as {form}")
            _rows_alone(layer, xt, hx, good, got, unbatched)
        return Case(f"{desc} lengths {good.tolist()} as {form}", OK, check)
    if rng.random() < 0.6:  # one bad value among good ones (a list: numpy picks the dtype)
        name, cls, value = pick(rng, [
            ("T + 1", ArgumentError, steps + 1), ("-1", ArgumentError, -1),
            ("2**31", ArgumentError, 2**31), ("2**63 - 1", ArgumentError, 2**63 - 1),
            ("2**64 - 1", ArgumentError, 2**64 - 1), ("-2**63", ArgumentError, -2**63),
            ("1e30", ArgumentError, 1e30), ("1.5", DTypeError, 1.5), ("NaN", DTypeError, np.nan),
            ("inf", DTypeError, np.inf), ("-inf", DTypeError, -np.inf),
            ("2**70", DTypeError, 2**70), ("-2**70", DTypeError, -2**70),
            ("None", DTypeError, None), ("'2'", DTypeError, "2"), ("2j", DTypeError, 2j),
            ("True", DTypeError, True)])
        lengths = good.tolist()
        at = rng.randrange(rows)
        lengths[at] = value
        if name == "True" and rows > 1:  # a bool among ints is an int to numpy
            lengths[at], cls = 1, OK
        if name == "True" and rows == 1:
            lengths = [True]
        if rng.random() < 0.5:
            try:
                lengths = np.array(lengths)
            except (ValueError, TypeError, OverflowError):
                pass
        if cls is OK:
            return Case(f"{desc} lengths {lengths}", OK, lambda: layer(x, hx, lengths=lengths))
        return Case(f"{desc} lengths {good.tolist()} with {name} at {at}", (cls,),
                    lambda: layer(x, hx, lengths=lengths))
    # the wrong number, rank or kind of lengths
    forms = [("bool array", DTypeError, good > 0),
             ("complex", DTypeError, good.astype(complex)),
             ("object array", DTypeError, good.astype(object)),
             ("ragged", ShapeError, [good.tolist(), [1, 1]]),
             ("a string", DTypeError, "3"), ("a dict", DTypeError, {"a": 1}),
             ("torch bool", DTypeError, "torch bool")]
    if not unbatched:
        forms += [("one too few", ShapeError, good[:-1]),
                  ("one too many", ShapeError, np.append(good, 0)),
                  ("2-D", ShapeError, good[None]), ("0-d", ShapeError, np.int64(good[0])),
                  ("empty", ShapeError, [])]
        if steps != rows:
            forms.append(("one per step (batch_first mixed up)", ShapeError,
                          np.full(steps, min(steps, 1))))
    else:
        forms += [("two for one row", ShapeError, [1, 1]), ("empty", ShapeError, [])]
    name, cls, lengths = pick(rng, forms)
    if name == "torch bool":
        lengths = torch_tensor(good > 0)
    return Case(f"{desc} lengths {name}", (cls,), lambda: layer(x, hx, lengths=lengths))


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _rows_alone(layer, xt, hx, lengths, got, unbatched):
    """Packed-sequence semantics: row b equals x[:L_b, b] run alone, zeros past L_b, and a row
    of length 0 gives zero outputs and a zero final state."""
    out = got[0][:, None] if unbatched else got[0]
    if layer.batch_first and not unbatched:
        out = out.transpose(1, 0, 2)
    states = [s[:, None] if unbatched else s for s in got[1:]]
    hxs = None
    if hx is not None:
        hxs = [h[:, None] if unbatched else h for h in (hx if isinstance(hx, tuple) else (hx,))]
    for b, length in enumerate(lengths):
        if length == 0:
            same(out[:, b], np.zeros_like(out[:, b]), f"row {b} (length 0) output")
            for k, s in enumerate(states):
                same(s[:, b], np.zeros_like(s[:, b]), f"row {b} (length 0) final state {k}")
            continue
        row_hx = None
        if hxs is not None:
            row_hx = tuple(h[:, b] for h in hxs) if layer.mode == "LSTM" else hxs[0][:, b]
        alone = flat(layer(xt[:length, b], row_hx))
        close(out[:length, b], alone[0], layer.dtype, f"row {b} output")
        same(out[length:, b], np.zeros_like(out[length:, b]), f"row {b} output past its length")
        for k, (s, a) in enumerate(zip(states, alone[1:])):
            close(s[:, b], a, layer.dtype, f"row {b} final state {k}")


def fam_layer_state(rng):
    """The initial state hx of a layer call."""
    layer, steps, rows, unbatched = small_call(rng, 5, 0.25)
    x = laid_out(layer, time_major(rng, layer, steps, rows), unbatched)
    hx = random_state(rng, layer, rows, unbatched)
    lstm = layer.mode == "LSTM"
    h, c = hx if lstm else (hx, None)
    desc = f"{describe(layer)} x {x.shape}"
    kind = rng.randrange(4)
    if kind == 0:  # valid, in another form: ints, other floats, layouts, a list (h0, c0)
        which = rng.randrange(2) if lstm else 0
        target = (h, c)[which]
        if rng.random() < 0.3:
            name, v, values = "int64", np.round(target * 3).astype(np.int64), \
                np.round(target * 3).astype(np.int64)
        else:
            name, v, values = variant(rng, target)
        new = [h, c]
        new[which] = v
        plain = [h, c]
        plain[which] = np.ascontiguousarray(values, dtype=layer.dtype)
        given = (tuple(new) if rng.random() < 0.7 else list(new)) if lstm else new[0]
        want_hx = tuple(plain) if lstm else plain[0]

        def check():
            before = snapshot(v)
            same_all(flat(layer(x, given)), flat(layer(x, want_hx)),
                     f"{'hc'[which]}0 as {name}")
            unchanged(before, [v], "the initial state")
        return Case(f"{desc} {'hc'[which]}0 as {name}", OK, check)
    if lstm and kind == 1:  # not a pair (h0, c0) of two arrays
        forms = [("h0 alone", h), ("(h0,)", (h,)), ("(h0, c0, c0)", (h, c, c)),
                 ("(h0, None)", (h, None)), ("(None, c0)", (None, c)), ("(None, None)", (None, None)),
                 ("a dict", {"h": h, "c": c}), ("a string", "hc"), ("an int", 3)]
        name, v = pick(rng, forms)
        return Case(f"{desc} hx {name}", (ArgumentError,), lambda: layer(x, v))
    which = rng.randrange(2) if lstm else 0
    target = (h, c)[which]
    if kind == 2:
        shapes = [target.shape[:-1] + (target.shape[-1] + 1,), target.shape[1:],
                  (1,) + target.shape, (target.shape[0] + 1,) + target.shape[1:], ()]
        if not unbatched:
            shapes += [target.shape[:1] + (rows + 1,) + target.shape[2:],
                       (target.shape[0], target.shape[2])]
            if rows != target.shape[0]:
                shapes.append((rows, target.shape[0], target.shape[2]))  # batch_first mixed up
        else:
            shapes.append((target.shape[0], 1, target.shape[1]))  # batched h0 with unbatched x
        if target.shape[-1] > 1:
            shapes.append(target.shape[:-1] + (target.shape[-1] - 1,))
        if lstm and layer.proj_size:  # c0's hidden size for h0 or the reverse
            shapes.append(target.shape[:-1] + (layer.hidden_size if which == 0
                                               else layer.proj_size,))
        shape = pick(rng, shapes)
        v = np.zeros(shape, layer.dtype)
        cls = (ShapeError,)
        name = f"of shape {shape}"
    elif rng.random() < 0.6:
        name, v = bad_dtype(rng, target, ints=False)
        cls = (DTypeError,)
    elif target.ndim >= 2 and rng.random() < 0.5:
        name, v, cls = "ragged", ragged(rng, target), (ShapeError,)
    else:
        v = pick(rng, GARBAGE[1:])  # not None: no initial state
        name, cls = f"{v!r:.30}", ANY
    given = [h, c]
    given[which] = v
    given = tuple(given) if lstm else given[0]
    return Case(f"{desc} {'hc'[which]}0 {name}", cls, lambda: layer(x, given))


BAD_SIZES = (0, -1, -2**63, 1.5, 2.0, True, False, "3", None, [3], np.float64(3), 3 + 0j)


def fam_constructor(rng):
    """RNN / GRU / LSTM constructor arguments."""
    mode = rng.choice(MODES)
    cls = getattr(fastrnn, mode)
    args = dict(input_size=rng.randint(1, 6), hidden_size=rng.randint(2, 6),
                num_layers=rng.randint(1, 2), bidirectional=rng.random() < 0.3,
                dtype=rng.choice((np.float32, np.float64)))
    per = {"RNN": 1, "GRU": 2, "LSTM": 3}[mode]
    dirs = 2 if args["bidirectional"] else 1
    f32 = args["dtype"] == np.float32
    options = {
        "input_size": [(v, False) for v in BAD_SIZES] + [(np.int64(3), True), (np.uint8(2), True)],
        "dtype": [("bogus", False), ("int32", False), (np.int64, False), (np.float16, False),
                  ("float16", False), (complex, False), (object(), False), ("float128", False),
                  ([np.float32], False), (">f4", False), ("f4,f4", False), ("", False), (5, False),
                  ("float32", True), ("float64", True), (np.dtype("float32"), True), ("d", True),
                  ("<f4", True), (np.float64, True), (None, True)],
        "weight_dtype": [("int8", False), ("bogus", False), (object(), False), ("bfloat16", False),
                         (3, False), ("float16", f32), (np.float16, f32), ("float32", f32),
                         ("float64", not f32), (None, True)],
        "clip": [(0, False), (-1, False), (-np.inf, False), (np.nan, False), ("1", False),
                 (True, False), ([1.0], False), (1j, False), (None, True), (np.inf, True),
                 (1e-30, True), (np.float32(2), True), (3, True), (0.5, True)],
        "seed": [(-1, False), (1.5, False), ("x", False), (True, False), ([1, 2], False),
                 (np.float64(1), False), (object(), False), (None, True), (0, True),
                 (2**64, True), (np.int64(5), True), (np.random.default_rng(0), True),
                 (np.random.SeedSequence(1), True), (np.random.PCG64(2), True)],
    }
    options["hidden_size"] = options["num_layers"] = options["input_size"]
    flags = [(True, True), (False, True), (0, True), (1, True), (None, True), (np.bool_(1), True),
             (np.array([1]), True), (np.array([1, 0]), False), (np.zeros((2, 2)), False)]
    options["bias"] = options["batch_first"] = options["bidirectional"] = flags
    if mode == "LSTM":
        options["peepholes"] = options["input_forget"] = flags
    if mode == "GRU":
        options["linear_before_reset"] = flags
    if mode == "LSTM":
        h = args["hidden_size"]
        options["proj_size"] = [(-1, False), (h, False), (h + 1, False), (1.5, False),
                                (True, False), ("1", False), (None, False), (0, True), (1, True),
                                (np.int32(1), True)]
    if mode == "RNN":
        options["nonlinearity"] = [("sigmoid", False), ("Tanh", False), ("RELU", False),
                                   (None, False), (["tanh"], False), (5, False), ("relu", True),
                                   ("tanh", True)]
    names = ["Tanh", "relu", "SIGMOID", "HardSigmoid", "Softsign", "LeakyRelu"]
    good = [rng.choice(names) for _ in range(per)]
    options["activations"] = [
        (good, True), (tuple(good), True), (good * dirs, True), (good[:-1] + ["bogus"], False),
        (good[:-1] + [""], False), (good * dirs + ["tanh"], False), ("Tanh", False),
        (good[:-1] + [3], False), (good[:-1] + [None], False), ({"a": 1}, False),
        (np.array(good), True)] + ([(good[:-1], False)] if per > 1 else [])
    option = rng.choice(sorted(options) + ["activation_alpha", "activation_beta"])
    if option.startswith("activation_"):
        takes = ["LeakyRelu", "Affine", "Elu", "HardSigmoid", "ScaledTanh", "ThresholdedRelu"]
        args["activations"] = [rng.choice(takes) for _ in range(per)]
        value, valid = pick(rng, [
            ([0.5] * per, True), (np.full(per, 0.5), True), ([0.5] * (per + 2), True),
            ((0.5,) * per, True), ([np.float32(0.5)] * per, True), ([2] * per, True),
            (["x"] * per, False), ([np.nan] * per, False), ([np.inf] * per, False),
            ([None] * per, False), ([True] * per, False), ([1j] * per, False), ("0.5", False),
            (0.5, False), ({"a": 0.5}, False), ("without activations", False),
            ("ndarray without activations", False)])
        takers = acts.TAKES_ALPHA if option == "activation_alpha" else acts.TAKES_BETA
        if isinstance(value, str) and value.endswith("without activations"):
            del args["activations"]
            value = [0.5] if value.startswith("without") else np.array([0.1, 0.2])
            # an RNN's activations default to [nonlinearity], which takes no alpha or beta
            valid = EITHER if mode == "RNN" else False
        elif not valid and isinstance(value, (list, tuple)) \
                and not any(n.lower() in takers for n in args["activations"]):
            valid = EITHER  # entries no activation consumes (ONNX Runtime's rule)
    else:
        value, valid = pick(rng, options[option])
    args[option] = value
    desc = f"{mode}({args}) [{option}={value!r:.40}]"

    def build():
        layer = cls(**args)
        if valid is True:  # a usable layer: one small call
            x = np.ones((2, 1, layer.input_size), layer.dtype)
            out = layer(x.transpose(1, 0, 2) if layer.batch_first else x)[0]
            if not np.all(np.isfinite(out)):
                raise Wrong("a fresh layer gave non-finite outputs")
            shapes = {k: v.shape for k, v in layer.state_dict().items()}
            if shapes != layer.parameter_shapes():
                raise Wrong(f"state_dict shapes {shapes} != {layer.parameter_shapes()}")
    return Case(desc, EITHER if valid is EITHER else OK if valid else (ArgumentError, DTypeError),
                build)


def fam_state_dict(rng):
    """load_state_dict and with_weight_dtype."""
    layer = small_layer(rng, max_size=6)
    sd = layer.state_dict()
    names = sorted(sd)
    x = laid_out(layer, time_major(rng, layer, 3, 2))
    before_out = flat(layer(x))
    desc = describe(layer)
    kind = rng.randrange(5)
    strict = True
    if kind == 0:  # valid: other types and layouts of the same numbers, or NaN weights
        name = rng.choice(names)
        form, v, values = variant(rng, sd[name])
        if rng.random() < 0.2:
            form, v = "int", np.round(sd[name] * 4).astype(np.int32)
            values = v
        new = dict(sd, **{name: v})
        want = dict(sd, **{name: np.asarray(values).astype(layer.dtype)})
        if rng.random() < 0.2:
            form = "NaN"
            new[name] = want[name] = np.full(sd[name].shape, np.nan, layer.dtype)

        def check():
            layer.load_state_dict(new)
            got = layer.state_dict()
            for k in names:
                same(got[k], want[k], f"parameter {k} after loading {name} as {form}")
            other = fastrnn.layer_from_config(layer.config(), want)
            same_all(flat(layer(x)), flat(other(x)), "the loaded layer")
        return Case(f"{desc} {name} as {form}", OK, check)
    if kind == 1:  # strict=False: a subset or unknown names are fine
        sub = {k: sd[k] * 2 for k in names if rng.random() < 0.5}
        if rng.random() < 0.5:
            sub["unknown"] = np.zeros(3)

        def check():
            layer.load_state_dict(sub, strict=False)
            got = layer.state_dict()
            for k in names:
                same(got[k], sub.get(k, sd[k]).astype(layer.dtype), f"parameter {k}")
        return Case(f"{desc} strict=False with {sorted(sub)}", OK, check)
    if kind == 2:
        name = rng.choice(names)
        shape = sd[name].shape
        shapes = [shape[:-1], shape + (1,), (shape[0] + 1,) + shape[1:], (0,) + shape[1:],
                  (sd[name].size,) if len(shape) > 1 else (1,) + shape]
        if len(shape) == 2:
            shapes += [(shape[0], shape[1] + 1), shape[::-1] if shape[0] != shape[1] else (1, 1)]
        if shape[0] > 1:
            shapes.append((shape[0] - 1,) + shape[1:])
        bad_shape = pick(rng, [s for s in shapes if s != shape])
        state = dict(sd, **{name: np.zeros(bad_shape, layer.dtype)})
        what, cls = f"{name} of shape {bad_shape}", (ShapeError,)
    elif kind == 3:
        name = rng.choice(names)
        form = rng.randrange(4)
        if form == 0:
            tname, v = bad_dtype(rng, sd[name], ints=False)
            cls = (DTypeError,)
        elif form == 1 and sd[name].ndim >= 2:
            tname, v, cls = "ragged", ragged(rng, sd[name]), (ShapeError,)
        else:
            v = pick(rng, GARBAGE)
            tname, cls = f"{v!r:.30}", ANY
        state = dict(sd, **{name: v})
        what = f"{name} as {tname}"
    else:
        dropped = rng.choice(names)
        other = small_layer(rng).state_dict()
        forms = [("a missing parameter", (ArgumentError,),
                  {k: sd[k] for k in names if k != dropped}),
                 ("an unknown name", (ArgumentError,), dict(sd, bogus=np.zeros(3))),
                 ("an int key", (ArgumentError,), {**sd, 5: np.zeros(3)}),
                 ("a None key", (ArgumentError,), {**sd, None: np.zeros(3)}),
                 ("no parameters", (ArgumentError,), {}),
                 ("a list of pairs", (ArgumentError,), list(sd.items())),
                 ("a list", (ArgumentError,), [1, 2]), ("None", (ArgumentError,), None),
                 ("a string", (ArgumentError,), "weights"),
                 ("an array", (ArgumentError,), np.zeros(3)),
                 ("another layer's state", (ArgumentError, ShapeError), other),
                 ("weights beyond float16 on a float16 layer", (ArgumentError,), "f16"),
                 ("with_weight_dtype", (ArgumentError,), "wdt")]
        what, cls, state = pick(rng, forms)
        if what == "another layer's state" and \
                {k: v.shape for k, v in other.items()} == {k: v.shape for k, v in sd.items()}:
            cls = OK  # the same architecture: a valid state
        if isinstance(state, str) and state == "f16":
            if layer.dtype != np.float32:
                state = dict(sd, **{names[0]: np.full(sd[names[0]].shape, np.inf)})
                cls, what = OK, "inf weights (a float64 layer)"
            else:
                layer = layer.with_weight_dtype("float16")
                before_out = flat(layer(x))
                matrix = rng.choice([k for k in names if k.startswith("weight_")])
                state = dict(sd, **{matrix: np.full(sd[matrix].shape,
                                                    rng.choice((7e4, -1e6, 65520.0)))})
        elif isinstance(state, str) and state == "wdt":
            value = pick(rng, ("int8", "bogus", None, object(), 3, "float16", "float64",
                               "float32", "bfloat16", np.float16))
            valid = value is None or np.dtype(layer.dtype).name == value or (
                value in ("float16", np.float16) and layer.dtype == np.float32)

            def convert():
                other = layer.with_weight_dtype(value)
                if other.weight_dtype == layer.weight_dtype:
                    same_all(flat(other(x)), before_out, "with_weight_dtype(its own dtype)")
            return Case(f"{desc} with_weight_dtype({value!r})", OK if valid else (ArgumentError,),
                        convert)
    before = layer.state_dict()

    def load():
        try:
            layer.load_state_dict(state, strict=strict)
        finally:  # a failed load leaves the layer as it was
            if cls != OK:
                after = layer.state_dict()
                if sorted(after) != sorted(before):
                    raise Wrong("a failed load changed the layer's parameter names")
                for k in before:
                    same(after[k], before[k], f"parameter {k} after a failed load")
                same_all(flat(layer(x)), before_out, "the layer after a failed load")
    return Case(f"{desc} load_state_dict with {what}", cls, load)


def fam_stream(rng):
    """layer.stream(batch_size), step(x_t) and the state property."""
    layer = small_layer(rng, uni=rng.random() < 0.9)
    rows = rng.randint(1, 4)
    desc = describe(layer)
    kind = rng.randrange(5)
    if layer.bidirectional:
        return Case(f"{desc} stream({rows})", (UnsupportedError,), lambda: layer.stream(rows))
    if kind == 0:
        value = pick(rng, (0, -1, 1.5, True, "2", None, [1], np.float64(2), 2**31 + 1, 2**70,
                           np.int64(2), np.uint8(3), 1))
        valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
            and 1 <= value <= 2**31

        def build():
            s = layer.stream(value)
            y = s.step(np.zeros((int(value), layer.input_size), layer.dtype))
            if y.shape != (int(value), layer.hidden_out):
                raise Wrong(f"step output shape {y.shape}")
        return Case(f"{desc} stream({value!r})", OK if valid else (ArgumentError,), build)
    s = layer.stream(rows)
    g = npr(rng)
    x0 = g.standard_normal((rows, layer.input_size)).astype(layer.dtype)
    s.step(x0)  # a state that is not zero
    state = s.state
    lstm = layer.mode == "LSTM"
    if kind == 1:  # a valid step input in another layout or type
        name, v, values = variant(rng, g.standard_normal((rows, layer.input_size))
                                  .astype(layer.dtype))

        def check():
            twin = layer.stream(rows)
            twin.state = state
            want = twin.step(np.ascontiguousarray(values, dtype=layer.dtype)).copy()
            before = snapshot(v)
            same(s.step(v), want, f"step input as {name}")
            unchanged(before, [v], "the step input")
            same_all(flat((None, s.state))[1:], flat((None, twin.state))[1:], "the state")
        return Case(f"{desc} stream({rows}) step input as {name}", OK, check)
    if kind == 2:  # a bad step input: the state stays
        shape = (rows, layer.input_size)
        shapes = [(layer.input_size,), (rows + 1, layer.input_size),
                  (rows, layer.input_size + 1), (1,) + shape, (), (0, layer.input_size)]
        form = rng.randrange(4)
        if form == 0:
            bad_shape = pick(rng, shapes)
            v, cls, name = np.zeros(bad_shape, layer.dtype), (ShapeError,), f"shape {bad_shape}"
        elif form == 1:
            name, v = bad_dtype(rng, np.zeros(shape, layer.dtype))
            cls = (DTypeError,)
        elif form == 2 and rows > 1:
            v, cls, name = ragged(rng, np.zeros(shape, layer.dtype)), (ShapeError,), "ragged"
        else:
            v = pick(rng, GARBAGE)
            cls, name = ANY, f"{v!r:.30}"

        def step():
            try:
                s.step(v)
            finally:
                same_all(flat((None, s.state))[1:], flat((None, state))[1:],
                         "the state after a refused step")
        return Case(f"{desc} stream({rows}) step({name})", cls, step)
    # the state setter
    h, c = state if lstm else (state, None)
    if kind == 3:  # valid: other types and layouts, a list for LSTM
        which = rng.randrange(2) if lstm else 0
        name, v, values = variant(rng, (h, c)[which])
        new, plain = [h, c], [h, c]
        new[which] = v
        plain[which] = np.asarray(values).astype(layer.dtype)
        given = (tuple(new) if rng.random() < 0.5 else list(new)) if lstm else new[0]

        def check():
            s.state = given
            got = s.state
            same_all(list(got) if lstm else [got], plain[:2 if lstm else 1], "the state set")
        return Case(f"{desc} stream({rows}).state = {'hc'[which]} as {name}", OK, check)
    which = rng.randrange(2) if lstm else 0
    target = (h, c)[which]
    form = rng.randrange(4)
    if lstm and form == 0:
        forms = [("h alone", h), ("(h,)", (h,)), ("(h, c, c)", (h, c, c)), ("(h, None)", (h, None)),
                 ("a dict", {"h": h})]
        name, given = pick(rng, forms)
        cls = ANY
    else:
        if form <= 1:
            shapes = [target.shape[1:], (1,) + target.shape,
                      target.shape[:-1] + (target.shape[-1] + 1,),
                      (target.shape[0], rows + 1, target.shape[2])]
            bad_shape = pick(rng, shapes)
            v, cls, name = np.zeros(bad_shape), (ShapeError,), f"shape {bad_shape}"
        elif form == 2:
            name, v = bad_dtype(rng, target, ints=False)
            cls = (DTypeError,)
        else:
            v = pick(rng, GARBAGE)
            cls, name = ANY, f"{v!r:.30}"
        new = [h, c]
        new[which] = v
        given = tuple(new) if lstm else new[0]
        name = f"{'hc'[which]} {name}"

    def assign():
        try:
            s.state = given
        finally:  # all or nothing
            same_all(flat((None, s.state))[1:], flat((None, state))[1:],
                     "the state after a refused assignment")
    return Case(f"{desc} stream({rows}).state = {name}", cls, assign)


BAD_IDS = (("too large", ArgumentError), ("negative", ArgumentError), ("float", DTypeError),
           ("bool", DTypeError), ("str", DTypeError), ("None", DTypeError), ("complex", DTypeError),
           ("uint64 max", ArgumentError), ("object", DTypeError), ("ragged", ShapeError))


def bad_ids(rng, ids, size):
    """(name, ids with one bad id or of a bad type, error class)."""
    name, cls = pick(rng, BAD_IDS)
    ids = np.array(ids, np.int64)
    if ids.size == 0:
        ids = np.zeros(1, np.int64)
    flat_ids = ids.reshape(-1)
    at = rng.randrange(flat_ids.size)
    if name == "too large":
        flat_ids[at] = rng.choice((size, size + 1, 2**31, 2**62))
        return name, ids, cls
    if name == "negative":
        flat_ids[at] = rng.choice((-1, -size, -2**63))
        return name, ids, cls
    if name == "uint64 max":
        ids = ids.astype(np.uint64)
        ids.reshape(-1)[at] = 2**64 - 1
        return name, ids, cls
    if name == "ragged":
        return name, [[0, 1], [0]], cls
    if name == "None":
        return name, None if rng.random() < 0.5 else [0, None], cls
    conv = {"float": np.float64, "bool": bool, "str": str, "complex": complex, "object": object}
    return name, ids.astype(conv[name]), cls


def fam_stages(rng):
    """Embedding, OneHot and Linear: constructors, calls, lookup_into and apply_into."""
    stage = rng.choice(("Embedding", "OneHot", "Linear"))
    dtype = rng.choice((np.float32, np.float64))
    size, width = rng.randint(1, 7), rng.randint(1, 7)
    kind = rng.randrange(5)
    if kind == 0:  # constructor arguments
        args = {"Embedding": dict(num_embeddings=size, embedding_dim=width, dtype=dtype),
                "OneHot": dict(size=size, dtype=dtype),
                "Linear": dict(in_features=size, out_features=width, dtype=dtype)}[stage]
        options = [k for k in args if k != "dtype"] + ["dtype"]
        if stage != "OneHot":
            options.append("seed")
        if stage == "Embedding":
            options.append("padding_idx")
        if stage == "Linear":
            options.append("activation")
        option = rng.choice(options)
        value, valid = pick(rng, {
            "dtype": [("int8", False), (np.float16, False), (complex, False), ("bogus", False),
                      (None, True), ("float64", True)],
            "seed": [(-1, False), (1.5, False), ("1", False), (True, False), (None, True),
                     (7, True), (np.int64(2), True)],
            "padding_idx": [(size, False), (-size - 1, False), (1.5, False), (True, False),
                            ("0", False), (0, True), (-1, True), (None, True),
                            (np.int64(0), True)],
            "activation": [("bogus", False), (["softmax"], False), (5, False),
                           ("SOFTMAX", False), (None, True), ("softmax", True), ("relu", True),
                           ("log_softmax", True)],
        }.get(option) or [(v, False) for v in BAD_SIZES] + [(np.int64(2), True)])
        args[option] = value

        def build():
            obj = getattr(fastrnn, stage)(**args)
            if valid and stage != "Linear":
                obj(np.zeros(2, np.int64))
            elif valid:
                obj(np.zeros((2, obj.in_features), obj.dtype))
        return Case(f"{stage}({args}) [{option}={value!r:.30}]", OK if valid else ANY, build)
    obj = {"Embedding": lambda: fastrnn.Embedding(size, width, dtype=dtype, seed=1),
           "OneHot": lambda: fastrnn.OneHot(size, dtype=dtype),
           "Linear": lambda: fastrnn.Linear(size, width, dtype=dtype, seed=1,
                                            activation=rng.choice(("none", "softmax", "tanh",
                                                                   "log_softmax", "sigmoid",
                                                                   "relu")))}[stage]()
    desc = f"{obj!r} {np.dtype(dtype).name}"
    g = npr(rng)
    if stage == "Linear":
        return _linear_case(rng, obj, desc, kind, g)
    out_width = obj.output_size
    if kind == 1:  # valid ids of any shape and form
        shape = pick(rng, [(), (0,), (3,), (2, 3), (2, 1, 2)])
        ids = g.integers(0, size, shape)
        form, v = pick(rng, [("int64", ids), ("uint8", ids.astype(np.uint8)),
                             ("int32", ids.astype(np.int32)), ("list", ids.tolist()),
                             ("torch", torch_tensor(ids)),
                             ("F", np.asfortranarray(ids) if ids.ndim else ids),
                             ("empty float", np.zeros(0))])
        if form == "empty float":
            ids = np.zeros(0, np.int64)

        def check():
            got = obj(v)
            want = obj.weight[ids] if stage == "Embedding" else \
                np.eye(size, dtype=obj.dtype)[ids]
            same(got, want, f"ids as {form}")
        return Case(f"{desc} ids {ids.tolist()} as {form}", OK, check)
    if kind == 2:
        name, v, cls = bad_ids(rng, g.integers(0, size, rng.randint(1, 4)), size)
        return Case(f"{desc} ids {name}", (cls,), lambda: obj(v))
    # lookup_into(ids, out)
    rows = rng.randint(0, 4)
    ids = g.integers(0, size, rows)
    out = np.zeros((rows, out_width), obj.dtype)
    if kind == 3:
        def check():
            got = obj.lookup_into(ids, out)
            same(out, obj(ids), "lookup_into's out")
            if got is not out:
                raise Wrong("lookup_into did not return out")
        return Case(f"{desc} lookup_into({ids.tolist()})", OK, check)
    forms = [("out with a row too many", np.zeros((rows + 1, out_width), obj.dtype), ShapeError),
             ("out too wide", np.zeros((rows, out_width + 1), obj.dtype), ShapeError),
             ("1-D out", np.zeros(rows * out_width, obj.dtype), ShapeError),
             ("3-D out", np.zeros((1, rows, out_width), obj.dtype), ShapeError),
             ("out of another float dtype", out.astype(np.float64 if obj.dtype == np.float32
                                                      else np.float32), DTypeError),
             ("big-endian out", out.astype(out.dtype.newbyteorder(">")), DTypeError),
             ("int out", out.astype(np.int64), DTypeError), ("a list out", out.tolist(), DTypeError),
             ("None out", None, DTypeError), ("read-only out", "ro", ArgumentError),
             ("2-D ids", "ids2", ShapeError), ("0-d ids", "ids0", ShapeError),
             ("bad ids", "bad", None)]
    if rows > 0:
        forms.append(("out with a row too few", np.zeros((rows - 1, out_width), obj.dtype),
                      ShapeError))
    name, bad_out, cls = pick(rng, forms)
    call_ids = ids
    if isinstance(bad_out, str):
        if bad_out == "ro":
            bad_out = out.copy()
            bad_out.flags.writeable = False
        elif bad_out == "ids2":
            call_ids, bad_out = ids.reshape(1, -1), out
        elif bad_out == "ids0":
            call_ids, bad_out = np.int64(0), np.zeros((1, out_width), obj.dtype)
        else:
            name, call_ids, cls = bad_ids(rng, np.zeros(max(rows, 1), np.int64), size)
            bad_out = np.zeros((max(rows, 1), out_width), obj.dtype)
            name = f"ids {name}"
    return Case(f"{desc} lookup_into with {name}", (cls,),
                lambda: obj.lookup_into(call_ids, bad_out))


def _linear_reference(lin, x, activation=None):
    w = lin.state_dict()
    y = np.asarray(x, np.float64) @ w["weight"].astype(np.float64).T
    if "bias" in w:
        y = y + w["bias"]
    act = activation or lin.activation
    if act in ("softmax", "log_softmax"):
        z = y - y.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return np.exp(logp) if act == "softmax" else logp
    return {"none": y, "sigmoid": 1 / (1 + np.exp(-y)), "tanh": np.tanh(y),
            "relu": np.maximum(y, 0)}[act]


def _linear_case(rng, lin, desc, kind, g):
    size = lin.in_features
    if kind == 1:  # valid x of any leading shape, layout and float type
        shape = pick(rng, [(size,), (3, size), (2, 3, size), (0, size)])
        x = g.standard_normal(shape).astype(lin.dtype)
        name, v, values = variant(rng, x)
        act = rng.choice((None, "none", "softmax", "relu"))

        def check():
            got = lin(v, act) if act else lin(v)
            same(got, lin(np.ascontiguousarray(values, dtype=lin.dtype), act), f"x as {name}")
            close(got, _linear_reference(lin, values.astype(lin.dtype), act), lin.dtype,
                  "against numpy")
        return Case(f"{desc} x {shape} as {name} activation={act}", OK, check)
    if kind == 2:
        x = g.standard_normal((2, size)).astype(lin.dtype)
        forms = [("x with a feature too many", np.zeros((2, size + 1)), ShapeError),
                 ("0-d x", np.float32(1), ShapeError), ("a scalar x", 1.0, ShapeError),
                 ("ragged x", ragged(rng, x), ShapeError),
                 ("activation 'bogus'", "act", ArgumentError)]
        name_, bad = bad_dtype(rng, x)
        forms.append((f"x as {name_}", bad, DTypeError))
        garbage = pick(rng, GARBAGE)
        forms.append((f"x {garbage!r:.30}", garbage, FastRNNError))
        name, v, cls = pick(rng, forms)
        if isinstance(v, str) and v == "act":
            value = pick(rng, ("bogus", 5, ["relu"], "RELU"))
            return Case(f"{desc} activation={value!r}", (cls,), lambda: lin(x, value))
        return Case(f"{desc} {name}", (cls,), lambda: lin(v))
    rows = rng.randint(0, 4)
    x = g.standard_normal((rows, size)).astype(lin.dtype)
    out = np.zeros((rows, lin.out_features), lin.dtype)
    if kind == 3:
        act = rng.choice((None, "none", "tanh", "log_softmax"))

        def check():
            got = lin.apply_into(x, out, act) if act else lin.apply_into(x, out)
            same(out, lin(x, act), "apply_into's out")
            if got is not out:
                raise Wrong("apply_into did not return out")
        return Case(f"{desc} apply_into x {x.shape} activation={act}", OK, check)
    other = np.float64 if lin.dtype == np.float32 else np.float32
    forms = [("out with a row too many", x, np.zeros((rows + 1, lin.out_features), lin.dtype),
              ShapeError),
             ("out too wide", x, np.zeros((rows, lin.out_features + 1), lin.dtype), ShapeError),
             ("x too narrow", np.zeros((rows, size + 1), lin.dtype), out, ShapeError),
             ("1-D x", x.reshape(-1), out, ShapeError),
             ("3-D out", x, out[None], ShapeError),
             ("out of another dtype", x, out.astype(other), DTypeError),
             ("x of another dtype", x.astype(other), out, DTypeError),
             ("big-endian x", x.astype(x.dtype.newbyteorder(">")), out, DTypeError),
             ("F-order out", x, np.zeros((lin.out_features, rows), lin.dtype).T, DTypeError),
             ("strided x", np.zeros((rows, 2 * size), lin.dtype)[:, ::2], out, DTypeError),
             ("a list x", x.tolist(), out, DTypeError), ("None out", x, None, DTypeError),
             ("read-only out", x, "ro", ArgumentError),
             ("activation 'bogus'", x, "act", ArgumentError)]
    if rows > 0:
        forms.append(("out with a row too few", x, np.zeros((rows - 1, lin.out_features),
                                                            lin.dtype), ShapeError))
    if size > 1:
        forms.append(("x too narrow", np.zeros((rows, size - 1), lin.dtype), out, ShapeError))
    name, bad_x, bad_out, cls = pick(rng, forms)
    if name in ("F-order out", "strided x") and (bad_x.flags.c_contiguous
                                                  and bad_out.flags.c_contiguous):
        cls = OK  # one row, or one column: C-contiguous all the same
    act = None
    if isinstance(bad_out, str):
        if bad_out == "ro":
            bad_out = out.copy()
            bad_out.flags.writeable = False
        else:
            act, bad_out = pick(rng, ("bogus", 5, ["tanh"])), out
    return Case(f"{desc} apply_into with {name}", cls if cls is OK else (cls,),
                lambda: lin.apply_into(bad_x, bad_out, act))


def fam_vocab(rng):
    """Vocabulary: construction, encode / decode, one_hot, encode_batch, lookups."""
    chars = rng.random() < 0.6
    symbols = "ATCGN"[:rng.randint(1, 5)] if chars else ["the", "cat", "sat", "on"][
        :rng.randint(1, 4)]
    specials = {k: v for k, v in (("pad", "_"), ("unknown", "?"), ("bos", "^"), ("eos", "$"))
                if rng.random() < 0.3}
    kind = rng.randrange(4)
    if kind == 0:
        forms = [("an empty string", ("",), {}), ("an empty list", ([],), {}),
                 ("an empty symbol", (["a", ""],), {}), ("a repeated symbol", ("aa",), {}),
                 ("None", (None,), {}), ("an int", (5,), {}), ("bytes", (b"ab",), {}),
                 ("ints", ([1, 2],), {}), ("nested lists", ([["a"]],), {}),
                 ("an int pad", ("ab",), {"pad": 0}), ("an empty pad", ("ab",), {"pad": ""}),
                 ("a list unknown", ("ab",), {"unknown": ["x"]}),
                 ("a float symbol", (["a", 1.5],), {})]
        name, args, kw = pick(rng, forms)
        return Case(f"Vocabulary({name})", (ArgumentError,),
                    lambda: fastrnn.Vocabulary(*args, **kw))
    v = fastrnn.Vocabulary(symbols, **specials)
    size = len(v)
    desc = repr(v)
    g = npr(rng)
    if kind == 1:  # valid round trips
        text_syms = [rng.choice(list(symbols)) for _ in range(rng.randint(0, 6))]
        join = "".join if chars else " ".join
        text, first = join(text_syms), join(text_syms[:1])

        def check():
            ids = v.encode(text)
            if v.decode(ids) != text or ids.dtype != np.int64:
                raise Wrong(f"decode(encode({text!r})) = {v.decode(ids)!r}")
            oh = v.one_hot(text)
            if oh.shape != (len(text_syms), size) or not np.array_equal(oh.argmax(-1), ids):
                raise Wrong("one_hot disagrees with encode")
            batch, lengths = v.encode_batch([text, first])
            if batch.shape[0] != 2 or lengths[0] != len(text_syms):
                raise Wrong(f"encode_batch shapes {batch.shape} {lengths}")
        return Case(f"{desc} round trip of {text!r}", OK, check)
    unknown_ok = "unknown" in specials
    forms = [("encode None", lambda: v.encode(None), ArgumentError),
             ("encode 5", lambda: v.encode(5), ArgumentError),
             ("encode [['A']]", lambda: v.encode([["A"]]), ArgumentError),
             ("encode [5]", lambda: v.encode([5]), ArgumentError),
             ("encode bos without one", lambda: v.encode(v.symbols[-1], bos=True),
              None if "bos" in specials else ArgumentError),
             ("v[['A']]", lambda: v[["A"]], ArgumentError),
             ("v[5]", lambda: v[5], ArgumentError),
             ("v['#']", lambda: v["#"], None if unknown_ok else ArgumentError),
             ("one_hot dtype 'bogus'", lambda: v.one_hot(v.symbols[0], dtype="bogus"), DTypeError),
             ("one_hot dtype complex", lambda: v.one_hot(v.symbols[0], dtype=complex), DTypeError),
             ("one_hot dtype str", lambda: v.one_hot(v.symbols[0], dtype=str), DTypeError),
             ("decode 2-D", lambda: v.decode(np.zeros((2, 2), np.int64)), ShapeError),
             ("decode 0-d", lambda: v.decode(np.int64(0)), ShapeError),
             ("decode a string", lambda: v.decode("abc"), DTypeError),
             ("encode_batch a string", lambda: v.encode_batch("AT"), ArgumentError),
             ("encode_batch None", lambda: v.encode_batch(None), ArgumentError),
             ("encode_batch [None]", lambda: v.encode_batch([None]), ArgumentError),
             ("encode_batch pad_id -1", lambda: v.encode_batch([v.symbols[0]], pad_id=-1),
              ArgumentError),
             ("encode_batch pad_id 1.5", lambda: v.encode_batch([v.symbols[0]], pad_id=1.5),
              DTypeError),
             ("symbol 1.0", lambda: v.symbol(1.0), DTypeError),
             ("symbol [0, 0]", lambda: v.symbol([0, 0]), ShapeError),
             ("special_id 'bogus'", lambda: v.special_id("bogus"), ArgumentError),
             ("from_meta {'symbols': 5}", lambda: fastrnn.Vocabulary.from_meta({"symbols": 5}),
              FastRNNError),
             ("from_meta a list", lambda: fastrnn.Vocabulary.from_meta(["a"]), FastRNNError)]
    name, fn, cls = pick(rng, forms)
    if rng.random() < 0.4:  # bad ids through every id entry point
        bad_name, ids, cls = bad_ids(rng, g.integers(0, size, rng.randint(1, 4)), size)
        entry = rng.choice(("decode", "one_hot", "check_ids"))
        if entry == "one_hot" and not (isinstance(ids, np.ndarray) and ids.dtype.kind in "iub"):
            entry = "decode"  # one_hot takes anything else for symbols
        name, fn = f"{entry}(ids {bad_name})", (lambda: getattr(v, entry)(ids))
    elif rng.random() < 0.2:
        value, cls = pick(rng, [(size, ArgumentError), (-1, ArgumentError), (2**64, DTypeError),
                                (1.5, DTypeError), (True, DTypeError), ("a", DTypeError),
                                (None, DTypeError), (np.uint64(2**64 - 1), ArgumentError)])
        name, fn = f"symbol({value!r})", (lambda: v.symbol(value))
    return Case(f"{desc} {name}", OK if cls is None else (cls,), fn)


# shipped models, loaded once per worker
_SHIPPED = {}


def shipped(name):
    if name not in _SHIPPED:
        from fastrnn.demo import model_path
        _SHIPPED[name] = fastrnn.load(model_path(name))
    return _SHIPPED[name]


def small_sequential(rng, tagger):
    chars = "ATCG"[:rng.randint(2, 4)]
    vocab = fastrnn.Vocabulary(chars)
    inp = rng.choice(("vocab", "onehot", "embedding", "none"))
    size = len(chars)
    feat = {"vocab": size, "onehot": size, "embedding": rng.randint(1, 5),
            "none": rng.randint(1, 4)}[inp]
    stages = {"vocab": [vocab], "onehot": [fastrnn.OneHot(size)],
              "embedding": [fastrnn.Embedding(size, feat, seed=rng.randrange(99))],
              "none": []}[inp]
    bf = rng.random() < 0.5
    dtypes = (np.float32, np.float32, np.float64)  # chains of mixed dtypes run too
    rnn = getattr(fastrnn, rng.choice(MODES))(feat, rng.randint(1, 6), num_layers=rng.randint(1, 2),
                                              bidirectional=rng.random() < 0.4, batch_first=bf,
                                              seed=rng.randrange(99), dtype=rng.choice(dtypes))
    stages.append(rnn)
    width = rnn.num_directions * rnn.hidden_out
    if rng.random() < 0.3:
        second = fastrnn.GRU(width, rng.randint(1, 5), batch_first=bf, seed=1)
        stages.append(second)
        width = second.hidden_out
    stages.append(fastrnn.Linear(width, rng.randint(1, 4), seed=2, dtype=rng.choice(dtypes),
                                 activation=rng.choice(("none", "softmax", "log_softmax",
                                                        "sigmoid"))))
    vocab_kw = {"vocab": vocab} if inp in ("onehot", "embedding") else {}
    if tagger:
        model = fastrnn.Tagger(*stages, **vocab_kw)
    else:
        model = fastrnn.Classifier(*stages, pool=rng.choice(("last", "mean", "max")), **vocab_kw)
    return model, (None if inp == "none" else vocab), inp, feat


def fam_sequential(rng):
    """Classifier and Tagger calls: text, ids, features, lengths."""
    tagger = rng.random() < 0.4
    model, vocab, inp, feat = small_sequential(rng, tagger)
    bf = model.batch_first
    g = npr(rng)
    rows, steps = rng.randint(1, 4), rng.randint(1, 6)
    desc = f"{model!r}"
    kind = rng.randrange(4)
    if inp == "none":
        x = g.standard_normal((rows, steps, feat) if bf else (steps, rows, feat)).astype(np.float32)
        if kind == 0:
            lengths = g.integers(0, steps + 1, rows)

            def check():
                got = model(x, lengths=lengths)
                layer_rows = [model(x[b, :n] if bf else x[:n, b]) if n else None
                              for b, n in enumerate(lengths)]
                _check_rows(model, got, layer_rows, lengths, tagger, bf)
            return Case(f"{desc} features {x.shape} lengths {lengths.tolist()}", OK, check)
        forms = [("ids (no input stage)", np.zeros((rows, steps), np.int64), DTypeError),
                 ("features too wide", np.zeros(x.shape[:-1] + (feat + 1,), np.float32),
                  ShapeError),
                 ("1-D features", x.reshape(-1), ShapeError),
                 ("text", "AT", ArgumentError)]
        name, v, cls = pick(rng, forms)
        return Case(f"{desc} {name}", (cls,), lambda: model(v))
    size = len(vocab)
    ids = g.integers(0, size, (rows, steps) if bf else (steps, rows))
    lengths = g.integers(0, steps + 1, rows)
    if kind == 0:  # valid: text batches, ids with lengths, junk past the lengths, one-hot floats
        texts = ["".join(vocab.symbols[i] for i in (ids[b] if bf else ids[:, b])[:n])
                 for b, n in enumerate(lengths)]
        junk = ids.copy()
        for b, n in enumerate(lengths):
            (junk[b, n:] if bf else junk[n:, b])[...] = rng.choice((-1, size, 2**40))

        def check():
            got = model(ids, lengths=lengths)
            if any(texts):  # a batch of texts, one of them at least one symbol long, padded to
                from_text = model(texts)  # the longest: a tagger's steps past it are zeros
                if tagger:
                    longest = max(len(t) for t in texts)
                    got_part = got[:, :longest] if bf else got[:longest]
                    close(from_text, got_part, np.float32, "texts against ids with lengths")
                else:
                    close(from_text, got, np.float32, "texts against ids with lengths")
            same(model(junk, lengths=lengths), got, "ids past the lengths")
            form, v = pick(rng, [("F", np.asfortranarray(ids)), ("readonly", _readonly(ids)),
                                 ("reversed", np.ascontiguousarray(ids[::-1])[::-1]),
                                 ("int32", ids.astype(np.int32)), ("uint8", ids.astype(np.uint8)),
                                 ("list", ids.tolist()), ("torch", torch_tensor(ids)),
                                 ("strided", np.repeat(ids, 2, axis=-1)[..., ::2])])
            same(model(v, lengths=lengths), got, f"ids as {form}")
            if inp in ("vocab", "onehot"):
                hot = np.eye(size, dtype=np.float32)[ids]
                same(model(hot, lengths=lengths), got, "one-hot features against ids")
            layer_rows = [model(ids[b, :n] if bf else ids[:n, b]) if n else None
                          for b, n in enumerate(lengths)]
            _check_rows(model, got, layer_rows, lengths, tagger, bf)
            if tagger:
                pred = model.predict(ids, lengths=lengths)
                pad = (np.arange(steps)[None, :] >= lengths[:, None])
                pad = pad if bf else pad.T
                if not np.all(pred[pad] == -1) or np.any(pred[~pad] < 0):
                    raise Wrong("predict: -1 exactly at the padded steps")
        return Case(f"{desc} ids {ids.shape} lengths {lengths.tolist()}", OK, check)
    if kind == 1:
        name, v, cls = bad_ids(rng, ids, size)
        if name == "float" and inp in ("onehot", "vocab") and v.shape[-1] == size:
            return Case(f"{desc} float ids {v.shape} (one-hot features of an unbatched "
                        f"sequence)", OK, lambda: model(v))
        return Case(f"{desc} ids {name}", (cls,), lambda: model(v))
    if kind == 2:
        forms = [("lengths one too few", lengths[:-1], ShapeError),
                 ("a length past T", np.append(lengths[:-1], steps + 1), ArgumentError),
                 ("a negative length", np.append(lengths[:-1], -1), ArgumentError),
                 ("non-whole lengths", lengths + 0.5, DTypeError),
                 ("bool lengths", lengths > 0, DTypeError),
                 ("string lengths", [str(n) for n in lengths], DTypeError)]
        name, bad, cls = pick(rng, forms)
        return Case(f"{desc} ids {ids.shape} {name}", (cls,), lambda: model(ids, lengths=bad))
    forms = [("text with lengths", (["AT"], [1]), ArgumentError),
             ("an unknown symbol", ("AZ",), ArgumentError),
             ("lower case", (vocab.symbols[0].lower(),), ArgumentError),
             ("a text mixed with an int", ([vocab.symbols[0], 5],), DTypeError),
             ("empty text", ("",), ShapeError), ("a batch of one empty text", ([""],), ShapeError),
             ("an empty list", ([],), ShapeError),
             ("an empty id batch", (np.zeros((0, 3), np.int64),), ShapeError),
             ("3-D ids", (np.zeros((1, 2, 3), np.int64),), ShapeError),
             ("0-d ids", (np.int64(0),), ShapeError),
             ("ragged id lists", ([[0, 1], [0]],), ShapeError),
             ("a dict", ({"a": 1},), DTypeError), ("None", (None,), DTypeError)]
    name, args, cls = pick(rng, forms)
    if name == "text with lengths":
        return Case(f"{desc} {name}", (cls,), lambda: model(args[0], lengths=args[1]))
    return Case(f"{desc} {name}", (cls,), lambda: model(*args))


def _check_rows(model, got, layer_rows, lengths, tagger, bf):
    """Each row of a batch equals the row run alone (zeros at padded tagger steps; a row of
    length 0 pools to zeros before the heads)."""
    for b, n in enumerate(lengths):
        row = (got[b] if bf else got[:, b]) if tagger else got[b]
        if tagger:
            if layer_rows[b] is not None:
                close(row[:n], layer_rows[b], np.float32, f"row {b}")
            same(row[n:], np.zeros_like(row[n:]), f"row {b} past its length")
        elif layer_rows[b] is not None:
            close(row, layer_rows[b], np.float32, f"row {b}")
        else:
            from fastrnn.tasks.stages import apply_heads
            zero = np.zeros((1, model.rnns[-1].num_directions * model.rnns[-1].hidden_out),
                            np.float32)
            close(row, apply_heads(model.heads, zero)[0], np.float32, f"row {b} (length 0)")


def small_generator(rng):
    chars = "abcde"[:rng.randint(2, 5)]
    specials = {}
    if rng.random() < 0.5:
        specials["bos"] = "^"
    if rng.random() < 0.5:
        specials["eos"] = "$"
    vocab = fastrnn.Vocabulary(chars, **specials)
    size = len(vocab)
    inp = fastrnn.Embedding(size, rng.randint(1, 5), seed=3) if rng.random() < 0.6 else \
        fastrnn.OneHot(size)
    feat = inp.output_size
    layers = []
    for _ in range(rng.randint(1, 2)):
        layer = getattr(fastrnn, rng.choice(MODES))(feat, rng.randint(1, 6),
                                                    num_layers=rng.randint(1, 2),
                                                    batch_first=rng.random() < 0.5,
                                                    seed=rng.randrange(99))
        layers.append(layer)
        feat = layer.hidden_out
    head = fastrnn.Linear(feat, size, seed=4, activation=rng.choice(("none", "softmax",
                                                                     "log_softmax")))
    with_vocab = rng.random() < 0.8
    return fastrnn.Generator(inp, *layers, head, vocab=vocab if with_vocab else None), \
        vocab if with_vocab else None, size


def fam_generator(rng):
    """Generator.generate / generate_ids / stream / stream_ids arguments."""
    gen, vocab, size = small_generator(rng)
    prompt = [rng.randrange(len("abcde"[:size])) for _ in range(rng.randint(1, 3))]
    prompt = [min(p, size - 1) for p in prompt]
    desc = repr(gen)
    kind = rng.randrange(4)
    if kind == 0:  # valid: greedy equals recomputing the whole sequence; sampling reproducible
        steps = rng.randint(0, 6)
        kw = pick(rng, [dict(greedy=True), dict(temperature=0), dict(top_k=1, seed=3),
                        dict(top_p=1e-9, seed=2)])

        def check():
            got = gen.generate_ids(prompt, steps, stop=False, **kw).tolist()
            seq = list(prompt)
            for _ in range(steps):
                feats = gen.input(np.array(seq))
                for layer in gen.rnns:
                    feats = layer(feats)[0]  # unbatched (T, F)
                logits = gen.heads[0](feats[-1], "none")
                seq.append(int(np.argmax(logits)))
            if got != seq[len(prompt):]:
                raise Wrong(f"greedy ids {got}, a full recompute gives {seq[len(prompt):]}")
            sampled = dict(temperature=0.7, top_k=rng.randint(0, size), seed=5)
            a = gen.generate_ids(prompt, steps, stop=False, **sampled)
            b = gen.generate_ids(prompt, steps, stop=False, **sampled)
            if a.tolist() != b.tolist() or np.any((a < 0) | (a >= size)):
                raise Wrong(f"seeded sampling {a.tolist()} then {b.tolist()}")
        return Case(f"{desc} prompt {prompt} steps {steps} {kw}", OK, check)
    if kind == 1:
        option, value, valid = pick(rng, [
            ("steps", -1, False), ("steps", 1.5, False), ("steps", True, False),
            ("steps", "3", False), ("steps", None, False), ("steps", np.float64(2), False),
            ("steps", np.int64(2), True),
            ("temperature", -1, False), ("temperature", np.nan, False),
            ("temperature", np.inf, False), ("temperature", "1", False),
            ("temperature", None, False), ("temperature", True, False),
            ("temperature", 1j, False), ("temperature", 1e-30, True), ("temperature", 1e30, True),
            ("temperature", np.float32(0.5), True),
            ("top_k", -1, False), ("top_k", 1.5, False), ("top_k", True, False),
            ("top_k", "2", False), ("top_k", 0, True), ("top_k", 10**6, True),
            ("top_k", np.int64(2), True),
            ("top_p", 0, False), ("top_p", -0.5, False), ("top_p", 1.5, False),
            ("top_p", np.nan, False), ("top_p", "0.5", False), ("top_p", True, False),
            ("top_p", 1, True), ("top_p", np.float64(0.3), True),
            ("seed", -1, False), ("seed", 1.5, False), ("seed", "1", False),
            ("seed", True, False), ("seed", np.int64(3), True), ("seed", 2**70, True),
            ("stop", "bogus", False), ("stop", "ab", False), ("stop", size, False),
            ("stop", -1, False), ("stop", 1.5, False), ("stop", [1], False),
            ("stop", True, False), ("stop", b"a", False), ("stop", None, True),
            ("stop", False, True), ("stop", 0, True), ("stop", np.int64(0), True),
            ("stop", "a", vocab is not None)])
        kw = {"steps": 3, option: value} if option != "steps" else {"steps": value}
        api = rng.choice(("generate_ids", "stream_ids") + (("generate", "stream") if vocab
                                                          else ()))

        def call():
            out = getattr(gen, api)(prompt, **kw)
            if api.startswith("stream"):
                list(out)  # a lazy stream raises when iterated
        return Case(f"{desc} {api}({prompt}, {option}={value!r})",
                    OK if valid else (ArgumentError, DTypeError, ShapeError), call)
    if kind == 2:
        name, bad, cls = bad_ids(rng, prompt, size)
        if bad is None:  # no prompt: start from bos
            cls = OK if vocab is not None and vocab.bos is not None else (ArgumentError,)
            return Case(f"{desc} prompt None", cls, lambda: gen.generate_ids(bad, 3))
        return Case(f"{desc} prompt ids {name}", (cls,), lambda: gen.generate_ids(bad, 3))
    forms = [("an unknown symbol", "z#", ArgumentError), ("2-D ids", [[0, 1]], ShapeError),
             ("a dict", {"a": 1}, DTypeError), ("an int", 5, ShapeError),
             ("an object", object(), DTypeError), ("bytes", b"ab", DTypeError)]
    if vocab is None or vocab.bos is None:
        forms += [("empty (no bos)", "", ArgumentError), ("an empty list", [], ArgumentError),
                  ("None (no bos)", None, ArgumentError)]
    name, bad, cls = pick(rng, forms)
    if vocab is None and isinstance(bad, str):
        cls = ArgumentError
    if name == "an int":
        cls = ShapeError if 5 < size else ArgumentError
    api = "generate" if vocab is not None else "generate_ids"
    return Case(f"{desc} {api}(prompt {name})", (cls,), lambda: getattr(gen, api)(bad, 3))


def small_seq2seq(rng):
    src = fastrnn.Vocabulary("0123456789/"[:rng.randint(3, 11)])
    tgt = fastrnn.Vocabulary("xyz-", bos="^", eos="$")
    bidir = rng.random() < 0.5
    bridge = rng.choice(("concat", "sum"))
    layers = rng.randint(1, 2)
    enc_mode, dec_mode = rng.choice(MODES), rng.choice(MODES)
    hidden = rng.randint(1, 6)
    enc = getattr(fastrnn, enc_mode)(len(src), hidden, num_layers=layers, bidirectional=bidir,
                                     batch_first=rng.random() < 0.5, seed=rng.randrange(99))
    dec_hidden = hidden * (2 if bidir and bridge == "concat" else 1)
    emb = fastrnn.Embedding(len(tgt), rng.randint(1, 4), seed=5)
    dec = getattr(fastrnn, dec_mode)(emb.output_size, dec_hidden, num_layers=layers,
                                     seed=rng.randrange(99))
    head = fastrnn.Linear(dec_hidden, len(tgt), seed=6)
    return fastrnn.Seq2Seq(source=src, encoder=enc, target=emb, decoder=dec, head=head,
                           target_vocab=tgt, bridge=bridge), src


def fam_seq2seq(rng):
    """Seq2Seq.translate / beam_search / greedy_ids arguments."""
    if rng.random() < 0.25:
        model, src = shipped("date_format"), None
        text = rng.choice(("5 March 2021", "Dec 24 1999", "07.11.1962", "2049/01/31"))
    else:
        model, src = small_seq2seq(rng)
        text = "".join(rng.choice(src.symbols) for _ in range(rng.randint(1, 5)))
    vocab = model.source_vocab
    ids = vocab.encode(text)
    bf = model.encoder.batch_first
    desc = f"{model.encoder!r} -> {model.decoder!r}"
    kind = rng.randrange(4)
    max_len = rng.randint(1, 8)
    if kind == 0:  # valid: beam 1 is greedy; a batch decodes as its rows alone
        beam = rng.randint(1, 4)
        second = vocab.encode(text[:rng.randint(0, len(text))])
        rows = [ids, second]
        lengths = np.array([len(ids), len(second)])
        batch = np.zeros((2, len(ids)), np.int64)
        batch[0] = ids
        batch[1, :len(second)] = second
        batch_in = batch if bf else batch.T

        def check():
            one = model.translate(text, max_len=max_len, beam=beam)
            alone = [model.translate(vocab.decode(r), max_len=max_len, beam=beam) for r in rows]
            both = model.translate(batch_in, max_len=max_len, beam=beam, lengths=lengths)
            if both != alone or one != alone[0]:
                raise Wrong(f"batch {both}, rows alone {alone}, text {one!r}")
            if beam == 1:
                greedy = model.greedy_ids(ids, max_len=max_len)
                if len(greedy[0]) != max_len or not 0 <= greedy[1] <= max_len:
                    raise Wrong(f"greedy_ids shapes {greedy}")
            hyps = model.beam_search(ids, beam=beam, max_len=max_len, n_best=beam)
            scores = [s for _, s in hyps]
            if len(hyps) > beam or scores != sorted(scores, reverse=True) \
                    or any(not 0 <= t < model.target.size for h, _ in hyps for t in h):
                raise Wrong(f"beam_search gave {hyps}")
        return Case(f"{desc} translate({text!r}) beam {beam} max_len {max_len}", OK, check)
    if kind == 1:
        option, value = pick(rng, [
            ("beam", 0), ("beam", -1), ("beam", 1.5), ("beam", "2"), ("beam", None),
            ("beam", True), ("beam", 1.0), ("beam", np.array([1, 1])), ("beam", [2]),
            ("max_len", 0), ("max_len", -1), ("max_len", 1.5), ("max_len", None),
            ("max_len", True), ("max_len", "3"), ("length_penalty", "x"),
            ("length_penalty", np.nan), ("length_penalty", np.inf), ("length_penalty", None),
            ("length_penalty", True), ("length_penalty", 1j), ("beam", np.int64(2)),
            ("max_len", np.int32(3)), ("length_penalty", -1.0), ("length_penalty", 2)])
        valid = (option, value) in (("length_penalty", -1.0), ("length_penalty", 2)) \
            or isinstance(value, np.integer)
        beam = rng.choice((1, 3)) if option != "beam" else value
        kw = {"max_len": max_len, "beam": beam, option: value}
        return Case(f"{desc} translate({text!r}, {option}={value!r}, beam={beam!r})",
                    OK if valid else (ArgumentError,), lambda: model.translate(text, **kw))
    if kind == 2:
        forms = [("n_best 0", dict(n_best=0), ArgumentError),
                 ("n_best > beam", dict(beam=2, n_best=3), ArgumentError),
                 ("n_best 1.0", dict(n_best=1.0), ArgumentError),
                 ("n_best True", dict(n_best=True), ArgumentError),
                 ("a batch of 2", dict(src=np.stack([ids, ids]) if bf else
                                       np.stack([ids, ids]).T), ShapeError),
                 ("float ids", dict(src=ids.astype(float)), DTypeError),
                 ("lengths past T", dict(src=ids, lengths=[len(ids) + 1]), ArgumentError),
                 ("two lengths", dict(src=ids, lengths=[1, 1]), ShapeError),
                 ("text with lengths", dict(src=text, lengths=[1]), ArgumentError)]
        name, kw, cls = pick(rng, forms)
        kw = dict(kw)
        source = kw.pop("src", ids)
        api = rng.choice(("beam_search", "translate")) if "n_best" not in kw else "beam_search"
        if api == "translate":
            kw.setdefault("beam", 2)
            if name == "a batch of 2":
                return Case(f"{desc} translate({name}) (valid)", OK,
                            lambda: model.translate(source, **kw))
        return Case(f"{desc} {api}({name})", (cls,), lambda: getattr(model, api)(source, **kw))
    name, bad, cls = bad_ids(rng, ids, len(vocab))
    api = rng.choice(("translate", "greedy_ids", "beam_search"))
    forms = [("an unknown symbol", text + "#", ArgumentError), ("a 3-D id array",
                                                               np.zeros((1, 1, 2), np.int64),
                                                               ShapeError),
             ("a text and an int", [text, 5], (DTypeError, ShapeError)),
             ("an empty list", [], ShapeError),
             ("an empty id batch", np.zeros((0, 3) if bf else (3, 0), np.int64), ShapeError),
             (f"ids {name}", bad, cls)]
    name, bad, cls = pick(rng, forms)
    if bad is None:  # a 0-d object array: a dtype or a rank error, whichever comes first
        cls = (DTypeError, ShapeError)
    beam = rng.choice((1, 2))
    kw = {"beam": beam} if api == "translate" else {}
    return Case(f"{desc} {api}({name}, {kw})", cls if isinstance(cls, tuple) else (cls,),
                lambda: getattr(model, api)(bad, **kw))


def fam_threads(rng):
    """set_num_threads."""
    value = pick(rng, (0, -1, numba.config.NUMBA_NUM_THREADS + 1, 10**6, 2**63, 1.0, True, "2",
                       None, [1], 1, numba.config.NUMBA_NUM_THREADS, np.int64(1)))
    valid = isinstance(value, int) and not isinstance(value, bool) \
        and 1 <= value <= numba.config.NUMBA_NUM_THREADS
    expect = OK if valid else EITHER if isinstance(value, np.integer) else (ArgumentError,)

    def call():
        try:
            fastrnn.set_num_threads(value)
            if fastrnn.get_num_threads() != int(value):
                raise Wrong(f"get_num_threads() = {fastrnn.get_num_threads()}")
        finally:
            numba.set_num_threads(1)
    return Case(f"set_num_threads({value!r})", expect, call)


_SCRATCH = []


def scratch_dir():
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="fastrnn-fuzz-api-")))
    return _SCRATCH[0]


def fam_files(rng):
    """fastrnn.save / load: objects, paths, round trips."""
    folder = scratch_dir()
    kind = rng.randrange(3)
    if kind == 0:  # round trips
        which = rng.choice(("layer", "classifier", "generator", "seq2seq", "vocabulary"))
        if which == "layer":
            obj = small_layer(rng)
            if obj.dtype == np.float32 and rng.random() < 0.3:
                obj = obj.with_weight_dtype("float16")
        elif which == "classifier":
            obj = small_sequential(rng, rng.random() < 0.5)[0]
        elif which == "generator":
            obj = small_generator(rng)[0]
        elif which == "seq2seq":
            obj = small_seq2seq(rng)[0]
        else:
            obj = fastrnn.Vocabulary("ATCG", eos="$")
        path = folder / f"{which}.frnn"
        mmap = rng.random() < 0.5

        def check():
            fastrnn.save(obj, path)
            back = fastrnn.load(path, mmap=mmap)
            if type(back) is not type(obj):
                raise Wrong(f"loaded a {type(back).__name__}")
            if which == "layer":
                x = np.ones((2, 1, obj.input_size), obj.dtype)
                x = x.transpose(1, 0, 2) if obj.batch_first else x
                same_all(flat(back(x)), flat(obj(x)), "the reloaded layer")
            elif which == "vocabulary":
                if back != obj:
                    raise Wrong("the reloaded vocabulary differs")
            elif which == "generator":
                ids = np.zeros(1, np.int64)
                if back.generate_ids(ids, 4, greedy=True).tolist() != \
                        obj.generate_ids(ids, 4, greedy=True).tolist():
                    raise Wrong("the reloaded generator differs")
            elif which == "seq2seq":
                if back.translate("0", max_len=4) != obj.translate("0", max_len=4):
                    raise Wrong("the reloaded seq2seq differs")
            else:
                ids = np.zeros((2, 3), np.int64)
                if obj.input is None:
                    ids = np.ones((2, 3, obj.rnns[0].input_size), np.float32)
                same(back(ids), obj(ids), "the reloaded model")
        return Case(f"save / load a {which} (mmap={mmap})", OK, check)
    if kind == 1:  # objects that cannot be saved
        obj = pick(rng, (None, 5, "x", np.zeros(3), object(), fastrnn.OneHot(3),
                         fastrnn.Linear(2, 3), fastrnn.Embedding(3, 2), fastrnn.GRU(2, 3).stream(1),
                         fastrnn.GRU, fastrnn.Vocabulary, fastrnn.Classifier))
        return Case(f"save({obj!r:.40})", (ArgumentError,),
                    lambda: fastrnn.save(obj, folder / "o.frnn"))
    path = pick(rng, (None, 5, 3.5, object(), [str(folder)], {"p": 1}, b"", "",
                      str(folder), folder / "no" / "such" / "x.frnn",
                      str(folder / "missing.frnn").encode()))
    api = rng.choice(("save", "load"))
    fn = (lambda: fastrnn.save(fastrnn.GRU(2, 3), path)) if api == "save" else \
        (lambda: fastrnn.load(path))
    is_path = isinstance(path, (str, bytes, os.PathLike))
    return Case(f"{api}({path!r:.60})", OSERR if is_path else (ArgumentError,), fn)


HUGE = (2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, 10**400)


def fam_huge(rng):
    """Sizes and numbers of 2^31 and more: a typed error or MemoryError, at once."""
    value = pick(rng, HUGE)
    mode = rng.choice(MODES)
    cls = getattr(fastrnn, mode)
    target = rng.choice(("layer size", "num_layers", "proj_size", "stage size", "one-hot call",
                         "stream", "max_len", "beam", "top_k", "temperature", "clip",
                         "activation_alpha", "length_penalty", "lengths", "padding_idx",
                         "threads", "n_best"))
    if target == "layer size":
        name = rng.choice(("input_size", "hidden_size"))
        fn = (lambda: cls(**dict(dict(input_size=3, hidden_size=3), **{name: value})))
        target = name
    elif target == "num_layers":
        fn = (lambda: cls(3, 3, num_layers=value))
    elif target == "proj_size":
        fn = (lambda: fastrnn.LSTM(3, value + 1, proj_size=value))
    elif target == "stage size":
        stage = rng.choice(("Embedding", "Linear", "OneHot"))
        first = rng.random() < 0.5
        args = (value, 3) if first else (3, value)
        fn = (lambda: getattr(fastrnn, stage)(*(args[:1] if stage == "OneHot" else args)))
        target = f"{stage}{args}"
    elif target == "one-hot call":
        fn = (lambda: fastrnn.OneHot(value)(np.zeros(rng.choice((1, 2**21)), np.int64)))
    elif target == "stream":
        fn = (lambda: cls(2, 3).stream(value))
    elif target in ("max_len", "beam", "length_penalty"):
        model = small_seq2seq(rng)[0]
        beam = 1 if target == "max_len" and rng.random() < 0.5 else 2
        kw = {"max_len": 3, "beam": beam, target: value}
        fn = (lambda: model.translate("0", **kw))
        target = f"{target} (beam {kw['beam']})"
    elif target == "n_best":
        fn = (lambda: small_seq2seq(rng)[0].beam_search(np.zeros(2, np.int64), n_best=value))
    elif target in ("top_k", "temperature"):
        gen = small_generator(rng)[0]
        fn = (lambda: gen.generate_ids([0], 3, **{target: value}))
    elif target == "clip":
        fn = (lambda: cls(2, 3, clip=value))
    elif target == "activation_alpha":
        fn = (lambda: cls(2, 3, activations=["LeakyRelu", "Elu", "Affine"][:{"RNN": 1, "GRU": 2,
                                                                             "LSTM": 3}[mode]],
                          activation_alpha=[value] * 3))
    elif target == "lengths":
        fn = (lambda: cls(2, 3)(np.zeros((2, 1, 2), np.float32), lengths=[value]))
    elif target == "padding_idx":
        fn = (lambda: fastrnn.Embedding(4, 2, padding_idx=value))
    else:
        fn = (lambda: fastrnn.set_num_threads(value))
    return Case(f"{mode} {target} = {value if value < 10**20 else '10**' + str(len(str(value)) - 1)}",
                MEMORY, fn)


# ------------------------------------------------------------------------------------------------
# families: valid input against torch (and streams against full calls)
# ------------------------------------------------------------------------------------------------
def torch_layer_config(rng):
    mode = rng.choice(MODES)
    big = rng.random() < 0.12  # hidden sizes for the unit split and two directions at once
    hidden = rng.randint(33, 100) if big else rng.randint(1, 40)
    kw = dict(num_layers=rng.choice((1, 1, 2, 3)), bias=rng.random() < 0.8,
              batch_first=rng.random() < 0.5, bidirectional=rng.random() < 0.4,
              dtype=np.float64 if rng.random() < 0.3 else np.float32, seed=rng.randrange(10**6))
    if mode == "LSTM" and hidden > 1 and rng.random() < 0.3:
        kw["proj_size"] = rng.randint(1, hidden - 1)
    if mode == "RNN" and rng.random() < 0.3:
        kw["nonlinearity"] = "relu"
    layer = getattr(fastrnn, mode)(rng.randint(1, 40), hidden, **kw)
    rows = pick(rng, (1, 1, 1, 2, 3, 5, 8, 9, 13, 17))
    steps = rng.randint(8, 48) if big else rng.randint(1, 12)
    return layer, rows, steps, rng.choice(THREADS)


def torch_module(layer):
    import torch
    kw = dict(num_layers=layer.num_layers, bias=layer.bias, bidirectional=layer.bidirectional)
    if layer.mode == "RNN":
        kw["nonlinearity"] = layer.nonlinearity
    if layer.proj_size:
        kw["proj_size"] = layer.proj_size
    module = getattr(torch.nn, layer.mode)(layer.input_size, layer.hidden_size, **kw).double()
    module.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                            for k, v in layer.state_dict().items()})
    return module


def torch_run(layer, xt, hx, lengths):
    """torch's (out (T, N, D*H_out), [h_n, c_n]) in float64 for time-major x; rows of length 0
    give zero outputs and zero final states (fastrnn's rule, as ONNX Runtime's)."""
    import torch
    module = torch_module(layer)
    steps, rows = xt.shape[:2]
    states = [] if hx is None else [np.asarray(h, np.float64) for h in
                                    (hx if isinstance(hx, tuple) else (hx,))]
    out = np.zeros((steps, rows, layer.num_directions * layer.hidden_out))
    finals = [np.zeros((layer.num_layers * layer.num_directions, rows, n))
              for n in ((layer.hidden_out, layer.hidden_size) if layer.mode == "LSTM"
                        else (layer.hidden_out,))]
    keep = np.arange(rows) if lengths is None else np.flatnonzero(lengths > 0)
    if keep.size == 0:
        return out, finals
    x = torch.from_numpy(np.asarray(xt, np.float64)[:, keep])
    state = None
    if states:
        parts = [torch.from_numpy(np.ascontiguousarray(s[:, keep])) for s in states]
        state = tuple(parts) if layer.mode == "LSTM" else parts[0]
    with torch.no_grad():
        if lengths is None:
            y, st = module(x, state)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, torch.as_tensor(lengths[keep]), enforce_sorted=False)
            y, st = module(packed, state)
            y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=steps)[0]
    out[:, keep] = y.numpy()
    for final, s in zip(finals, st if isinstance(st, tuple) else (st,)):
        final[:, keep] = s.numpy()
    return out, finals


def fam_torch_layers(rng):
    """A random configuration against torch in float64 holding the same weights."""
    layer, rows, steps, threads = torch_layer_config(rng)
    unbatched = rows == 1 and rng.random() < 0.3
    g = npr(rng)
    xt = g.standard_normal((steps, rows, layer.input_size)).astype(layer.dtype)
    lengths = None
    if rng.random() < 0.5:
        lengths = g.integers(0 if rng.random() < 0.5 else 1, steps + 1, rows)
        if rng.random() < 0.5:
            lengths[g.integers(rows)] = steps
    hx = random_state(rng, layer, rows) if rng.random() < 0.5 else None
    layout = rng.choice(("C", "C", "F", "strided", "reversed", "readonly"))
    x = laid_out(layer, xt, unbatched)
    x = {"C": lambda a: a, "F": np.asfortranarray,
         "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
         "reversed": lambda a: np.ascontiguousarray(a[::-1])[::-1],
         "readonly": lambda a: np.require(a, requirements="C").copy()}[layout](x)
    if layout == "readonly":
        x.flags.writeable = False
    given = hx
    if unbatched and hx is not None:
        given = tuple(h[:, 0] for h in hx) if layer.mode == "LSTM" else hx[:, 0]
    desc = (f"{describe(layer)} N={rows} T={steps} unbatched={unbatched} lengths="
            f"{None if lengths is None else lengths.tolist()} h0={hx is not None} "
            f"layout={layout} threads={threads}")

    def check():
        before = snapshot(x)
        got = flat(layer(x, given, lengths=lengths))
        unchanged(before, [x], "the input")
        want_out, want_states = torch_run(layer, xt, hx, lengths)
        out = got[0][:, None] if unbatched else got[0]
        if layer.batch_first and not unbatched:
            out = out.transpose(1, 0, 2)
        if got[0].dtype != layer.dtype:
            raise Wrong(f"output dtype {got[0].dtype}")
        close(out, want_out, layer.dtype, "output")
        for k, (s, w) in enumerate(zip(got[1:], want_states)):
            close(s[:, None] if unbatched else s, w, layer.dtype, f"final state {k}")
    return Case(desc, OK, check, threads)


def fam_torch_streams(rng):
    """A stream stepped through a sequence equals the full call (state, reset, its own output
    fed back, new weights mid-stream)."""
    mode = rng.choice(MODES)
    hidden = rng.randint(1, 40)
    kw = dict(num_layers=rng.choice((1, 2, 3)), bias=rng.random() < 0.8,
              dtype=np.float64 if rng.random() < 0.3 else np.float32, seed=rng.randrange(10**6))
    if mode == "LSTM" and hidden > 1 and rng.random() < 0.3:
        kw["proj_size"] = rng.randint(1, hidden - 1)
    hout = kw.get("proj_size") or hidden
    size_in = hout if rng.random() < 0.3 else rng.randint(1, 40)
    layer = getattr(fastrnn, mode)(size_in, hidden, **kw)
    rows, steps = pick(rng, (1, 1, 2, 3, 9)), rng.randint(1, 10)
    threads = rng.choice(THREADS)
    g = npr(rng)
    xt = g.standard_normal((steps, rows, size_in)).astype(layer.dtype)
    hx = random_state(rng, layer, rows) if rng.random() < 0.5 else None
    desc = f"{describe(layer)} N={rows} T={steps} h0={hx is not None} threads={threads}"

    def check():
        full = flat(layer(xt, hx))
        s = layer.stream(rows)
        if hx is not None:
            s.state = hx
        for t in range(steps):
            name, v, values = variant(rng, xt[t])
            step_in = np.ascontiguousarray(values, dtype=layer.dtype)
            want = full[0][t] if np.array_equal(step_in, xt[t]) else None
            y = s.step(v).copy()
            if want is not None:
                close(y, want, layer.dtype, f"step {t} (input as {name})")
            else:  # the cast changed the input: a full call from the state before
                break
        else:
            state = s.state
            for k, (a, b) in enumerate(zip(list(state) if layer.mode == "LSTM" else [state],
                                           full[1:])):
                close(a, b, layer.dtype, f"stream state {k}")
        s.reset()
        plain = flat(layer(xt[:1]))
        close(s.step(xt[0]), plain[0][0], layer.dtype, "the first step after reset")
        if size_in == hout:  # the step's own output (a view of its buffer) as the next input
            twin = layer.stream(rows)
            twin.state = s.state
            y = s.step(s.step(xt[0]))
            same(y, twin.step(twin.step(xt[0]).copy()), "its own output fed back")
        before = s.state
        new = {k: v * 0.5 for k, v in layer.state_dict().items()}
        layer.load_state_dict(new)
        got = s.step(xt[0]).copy()
        want = flat(layer(xt[:1], before))[0][0]
        close(got, want, layer.dtype, "a step after load_state_dict")
    return Case(desc, OK, check, threads)


def fam_float16_weights(rng):
    """with_weight_dtype('float16') equals float32 weights rounded to float16 (the kernels widen
    each weight exactly), calls and streams."""
    mode = rng.choice(MODES)
    hidden = rng.randint(1, 40) if rng.random() < 0.8 else rng.randint(64, 100)
    kw = dict(num_layers=rng.choice((1, 2)), bidirectional=rng.random() < 0.3,
              seed=rng.randrange(10**6))
    if mode == "LSTM" and hidden > 1 and rng.random() < 0.3:
        kw["proj_size"] = rng.randint(1, hidden - 1)
    layer = getattr(fastrnn, mode)(rng.randint(1, 24), hidden, **kw)
    rows = pick(rng, (1, 1, 2, 9, 17))
    steps = rng.randint(1, 30)
    threads = rng.choice(THREADS)
    stream = not layer.bidirectional and rng.random() < 0.4
    g = npr(rng)
    x = g.standard_normal((steps, rows, layer.input_size)).astype(np.float32)
    lengths = g.integers(0, steps + 1, rows) if rng.random() < 0.4 and not stream else None
    desc = f"{describe(layer)} N={rows} T={steps} lengths={lengths is not None} stream={stream} " \
           f"threads={threads}"

    def check():
        half = layer.with_weight_dtype("float16")
        rounded = {k: v.astype(np.float16).astype(np.float32) if k.startswith("weight_") else v
                   for k, v in layer.state_dict().items()}
        ref = fastrnn.layer_from_config(layer.config(), rounded)
        if stream:
            a, b = half.stream(rows), ref.stream(rows)
            for t in range(steps):
                ya, yb = a.step(x[t]), b.step(x[t])
                if np.max(np.abs(ya - yb), initial=0) > 2e-6:
                    raise Wrong(f"stream step {t} differs by {np.max(np.abs(ya - yb)):.3g}")
            return
        for k, (p, q) in enumerate(zip(flat(half(x, lengths=lengths)),
                                       flat(ref(x, lengths=lengths)))):
            if np.max(np.abs(p - q), initial=0) > 2e-6:
                raise Wrong(f"result {k} differs by {np.max(np.abs(p - q)):.3g}")
    return Case(desc, OK, check, threads)


GATE_ACTIVATIONS = ("Sigmoid", "HardSigmoid", "Tanh", "Softsign", "ScaledTanh")
ANY_ACTIVATIONS = GATE_ACTIVATIONS + ("Relu", "LeakyRelu", "Elu", "Affine", "ThresholdedRelu",
                                      "Softplus")


def fam_reference(rng):
    """ONNX's variants (activation lists with alpha / beta, clip, GRU linear_before_reset=0,
    LSTM peepholes and input_forget) against tests/reference.py in float64."""
    import reference as ref

    mode = rng.choice(MODES)
    big = rng.random() < 0.1
    hidden = rng.randint(33, 100) if big else rng.randint(1, 24)
    kw = dict(num_layers=rng.choice((1, 1, 2)), bidirectional=rng.random() < 0.4,
              dtype=np.float64 if rng.random() < 0.3 else np.float32, seed=rng.randrange(10**6),
              bias=rng.random() < 0.8)
    rkw = {}
    if rng.random() < 0.5:  # the cell's own activation list (first: the gates' activation)
        per = {"RNN": 1, "GRU": 2, "LSTM": 3}[mode]
        names = [rng.choice(GATE_ACTIVATIONS if k == 0 and mode != "RNN" else ANY_ACTIVATIONS)
                 for k in range(per)]
        if kw["bidirectional"] and rng.random() < 0.5:
            names += [rng.choice(GATE_ACTIVATIONS if k == 0 and mode != "RNN"
                                 else ANY_ACTIVATIONS) for k in range(per)]
        rkw["activations"] = names
        if rng.random() < 0.7:
            rkw["activation_alpha"] = [round(rng.uniform(0.05, 1.5), 3) for _ in names]
        if rng.random() < 0.7:
            rkw["activation_beta"] = [round(rng.uniform(-0.5, 0.5), 3) for _ in names]
    elif mode == "RNN" and rng.random() < 0.5:
        rkw["nonlinearity"] = "relu"
    if rng.random() < 0.4:
        rkw["clip"] = round(rng.uniform(0.1, 3.0), 3)
    if mode == "GRU" and rng.random() < 0.5:
        rkw["linear_before_reset"] = False
    if mode == "LSTM":
        kw["peepholes"] = rng.random() < 0.5
        if rng.random() < 0.3:
            rkw["input_forget"] = True
        if hidden > 1 and rng.random() < 0.3:
            kw["proj_size"] = rng.randint(1, hidden - 1)
    layer = getattr(fastrnn, mode)(rng.randint(1, 24), hidden, **kw, **rkw)
    rows = pick(rng, (1, 1, 2, 3, 8, 9, 17))
    steps = rng.randint(8, 40) if big else rng.randint(1, 10)
    threads = rng.choice(THREADS)
    g = npr(rng)
    x = g.standard_normal((steps, rows, layer.input_size)).astype(layer.dtype)
    lengths = g.integers(0, steps + 1, rows) if rng.random() < 0.5 else None
    hx = random_state(rng, layer, rows) if rng.random() < 0.5 else None
    desc = f"{describe(layer)} {rkw} peepholes={kw.get('peepholes')} N={rows} T={steps} " \
           f"lengths={lengths is not None} h0={hx is not None} threads={threads}"

    def check():
        got = flat(layer(x, hx, lengths=lengths))
        out, state = ref.reference_model(mode, layer.state_dict(), x, hx, lengths, **rkw)
        want = flat((out, state))
        for k, (a, b) in enumerate(zip(got, want)):
            close(a, b, layer.dtype, f"result {k}")
    return Case(desc, OK, check, threads)


# family -> (cases at FASTRNN_FUZZ_CASES=1, maker)
FAMILIES = {
    "layer_input": (400, fam_layer_input),
    "layer_lengths": (300, fam_layer_lengths),
    "layer_state": (300, fam_layer_state),
    "constructor": (300, fam_constructor),
    "state_dict": (250, fam_state_dict),
    "stream": (300, fam_stream),
    "stages": (400, fam_stages),
    "vocab": (200, fam_vocab),
    "sequential": (250, fam_sequential),
    "generator": (250, fam_generator),
    "seq2seq": (200, fam_seq2seq),
    "threads": (30, fam_threads),
    "files": (60, fam_files),
    "huge": (120, fam_huge),
    "torch_layers": (400, fam_torch_layers),
    "torch_streams": (120, fam_torch_streams),
    "reference": (150, fam_reference),
    "float16_weights": (40, fam_float16_weights),
}


# ------------------------------------------------------------------------------------------------
# the worker: draws and runs the cases of a family, one JSON line per case
# ------------------------------------------------------------------------------------------------
def make_case(family, i):
    return FAMILIES[family][1](random.Random(f"{family}/{i}"))


def _where(exc):
    frames = traceback.extract_tb(exc.__traceback__)[-3:][::-1]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)


def run_case(case):
    """None, or what is wrong with the case's outcome."""
    numba.set_num_threads(case.threads)
    try:
        case.fn()
    except Wrong as e:
        return f"wrong result: {e}"
    except FastRNNError as e:
        name = type(e).__name__
        if not isinstance(e, (ValueError, TypeError)):
            return f"{name} is neither a ValueError nor a TypeError: {e}"
        if case.expect == OK:
            return f"refused valid input: {name}: {str(e)[:200]}"
        if isinstance(case.expect, tuple) and not isinstance(e, case.expect):
            wanted = " or ".join(c.__name__ for c in case.expect)
            return f"raised {name} ({str(e)[:200]}), expected {wanted}"
        return None
    except MemoryError as e:
        if case.expect == MEMORY:
            return None
        return f"MemoryError: {str(e)[:200]} at {_where(e)}"
    except OSError as e:
        if case.expect == OSERR:
            return None
        return f"{type(e).__name__}: {str(e)[:200]} at {_where(e)}"
    except Exception as e:  # noqa: BLE001 - what the fuzz test exists to find
        return f"untyped {type(e).__name__}: {str(e)[:200]} at {_where(e)}"
    finally:
        numba.set_num_threads(1)
    if isinstance(case.expect, tuple):
        return "accepted invalid input"
    return None


def _setup():
    """The worker's process: torch on one thread, warnings off, memory limited."""
    import faulthandler
    import resource

    import torch  # before the memory limit

    torch.set_num_threads(1)
    faulthandler.enable()  # a crash prints the Python stack to stderr
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, hard))


def _worker():
    _setup()
    answers = os.fdopen(os.dup(1), "w")  # the parent reads these; anything printed goes to stderr
    os.dup2(2, 1)
    print(json.dumps({"ready": fastrnn.__file__}), file=answers, flush=True)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            for i in range(req["start"], req["stop"]):
                try:
                    case = make_case(req["family"], i)
                except Exception as e:  # noqa: BLE001 - a bug of the generator: report it
                    print(json.dumps({"i": i, "desc": "?"}), file=answers, flush=True)
                    print(json.dumps({"i": i, "problem": f"drawing the case failed: "
                                      f"{type(e).__name__}: {e} at {_where(e)}"}),
                          file=answers, flush=True)
                    continue
                print(json.dumps({"i": i, "desc": case.desc}), file=answers, flush=True)
                print(json.dumps({"i": i, "problem": run_case(case)}), file=answers, flush=True)
            print(json.dumps({"end": True}), file=answers, flush=True)
    finally:
        for folder in _SCRATCH:
            shutil.rmtree(folder, ignore_errors=True)


def _tests_this_checkout(line):
    """The worker's ready line names the fastrnn it imported: this checkout's."""
    where = Path(json.loads(line)["ready"])
    return where.resolve().parent == ROOT / "fastrnn"


class Worker(WorkerProcess):
    """A family's cases in one request; a crash or a hang is reported with its case, and the
    worker restarted for the cases after it."""

    def __init__(self, log_path):
        super().__init__(__file__, log_path, ready=_tests_this_checkout)

    def run(self, family, count):
        """[failure message] for cases 0..count-1 of the family."""
        failures, start = [], 0
        while start < count:
            self.send({"family": family, "start": start, "stop": count})
            current = (start, "(not started)")
            while True:
                line = self.readline(CASE_TIMEOUT)
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("end"):
                    return failures
                if "desc" in msg:
                    current = (msg["i"], msg["desc"])
                elif msg["problem"]:
                    failures.append(f"{family} #{msg['i']} ({current[1]}): {msg['problem']}")
            how = self.restart(line, CASE_TIMEOUT)
            failures.append(f"{family} #{current[0]} ({current[1]}): {how}")
            start = current[0] + 1
        return failures


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker") / "stderr.log")
    yield w
    w.close()


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(worker, family):
    count = FAMILIES[family][0] * SCALE
    failures = worker.run(family, count)
    assert not failures, (f"{len(failures)} of {count} cases failed:\n" + "\n".join(failures[:15]))


def test_cases_are_deterministic():
    """A case's description depends only on its family and number."""
    for family in ("layer_input", "constructor", "torch_layers"):
        assert make_case(family, 3).desc == make_case(family, 3).desc


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker()
elif __name__ == "__main__" and sys.argv[1:2] == ["--case"]:
    # python tests/test_fuzz_api.py --case FAMILY I [J]: cases I..J-1 in this process
    _setup()
    first = int(sys.argv[3])
    last = int(sys.argv[4]) if len(sys.argv) > 4 else first + 1
    for i in range(first, last):
        one = make_case(sys.argv[2], i)
        problem = run_case(one)
        if problem or last - first == 1:
            print(f"#{i} {one.desc}: {problem or 'ok'}", flush=True)
