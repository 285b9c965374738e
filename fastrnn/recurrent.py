"""One recurrent layer (one or two directions) on the kernels: weight prepacking and the call.

`DirectionParams` takes one direction's weights in PyTorch's layout and gate order and packs them
once into the layout the kernels stream; `run_layer` runs a layer of directions over a batch.
Layers (fastrnn.layers), streams and the ONNX converter all run through here.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import activations as acts
from . import threads
from .errors import ArgumentError, DTypeError, ShapeError
from .gates import NUM_GATES
from .kernels import sequence as k

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in SUPPORTED_DTYPES:
        raise DTypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _matrix(name, value, shape, dtype):
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


class DirectionParams:
    """One direction of one layer, prepacked for the kernels."""

    def __init__(self, mode, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None, peephole=None,
                 reverse=False, activations=None, clip=None, linear_before_reset=True,
                 input_forget=False, dtype=np.float32):
        if mode not in NUM_GATES:
            raise ArgumentError(f"mode must be one of {sorted(NUM_GATES)}, got {mode!r}")
        dtype = check_dtype(dtype)
        gates = NUM_GATES[mode]
        w_hh = np.asarray(w_hh)
        w_ih = np.asarray(w_ih)
        if w_hh.ndim != 2 or w_hh.shape[0] % gates or w_hh.shape[0] == 0:
            raise ShapeError(f"{mode} weight_hh must be ({gates}*H, H_out), got {w_hh.shape}")
        hidden = w_hh.shape[0] // gates
        if w_ih.ndim != 2:
            raise ShapeError(f"weight_ih must be 2-D ({gates * hidden}, I), got {w_ih.shape}")
        self.mode = mode
        self.dtype = dtype
        self.hidden_size = hidden
        self.input_size = w_ih.shape[1]
        self.proj_size = 0 if w_hr is None else np.asarray(w_hr).shape[0]
        if mode != "LSTM" and (w_hr is not None or peephole is not None or input_forget):
            raise ArgumentError(f"{mode} has no projection, peepholes or input_forget")
        self.hidden_out = self.proj_size or hidden
        self.reverse = bool(reverse)
        self.linear_before_reset = bool(linear_before_reset)
        self.input_forget = bool(input_forget)
        if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
            raise ArgumentError(f"clip must be None or a positive number, got {clip!r}")
        self.clip = math.inf if clip is None else float(clip)
        self.activations = acts.normalize_direction(mode, activations)

        gh = gates * hidden
        w_ih = _matrix("weight_ih", w_ih, (gh, self.input_size), dtype)
        w_hh = _matrix("weight_hh", w_hh, (gh, self.hidden_out), dtype)
        b_ih = np.zeros(gh, dtype) if b_ih is None else _matrix("bias_ih", b_ih, (gh,), dtype)
        b_hh = np.zeros(gh, dtype) if b_hh is None else _matrix("bias_hh", b_hh, (gh,), dtype)
        bias = b_ih + b_hh
        recurrent = np.ascontiguousarray(w_hh.reshape(gates, hidden, self.hidden_out).transpose(1, 0, 2))
        act = acts.kernel_arrays(self.activations)
        if mode == "RNN":
            self.weights = (w_ih, bias, recurrent)
        elif mode == "GRU":
            rb_n = np.zeros(hidden, dtype)
            if self.linear_before_reset:  # Rbh stays inside r * (Rh h + Rbh)
                rb_n = b_hh[2 * hidden:].copy()
                bias[2 * hidden:] = b_ih[2 * hidden:]
            self.weights = (w_ih, bias, recurrent, rb_n)
        else:
            peep = np.zeros((3, hidden), dtype)
            if peephole is not None:
                peep = _matrix("peephole", peephole, (3 * hidden,), dtype).reshape(3, hidden)
            proj = np.zeros((0, hidden), dtype)
            if w_hr is not None:
                proj = _matrix("weight_hr", w_hr, (self.proj_size, hidden), dtype)
            self.weights = (w_ih, bias, recurrent, peep, proj)
        self.act = act

    def scratch(self, steps: int, rows: int):
        """Buffers one call of this direction needs: (xp, gates, aux)."""
        gh = NUM_GATES[self.mode] * self.hidden_size
        return (np.empty((steps, rows, gh), self.dtype), np.empty((rows, gh), self.dtype),
                np.empty((rows, self.hidden_size), self.dtype))

    def run(self, x, lengths, state, y, scratch, threads_: int = 1) -> None:
        """Run over x (T, N, I) C-contiguous; state (h,) or (h, c) updated in place; y (T, N, H_out).

        threads_ > 1 takes the parallel kernel with that many projection blocks.
        """
        if self.mode == "LSTM":
            args = (x, self.weights, self.act, self.clip, self.input_forget, lengths, self.reverse,
                    state, y, scratch)
            serial, parallel = k.lstm_serial, k.lstm_parallel
        elif self.mode == "GRU":
            args = (x, self.weights, self.act, self.clip, self.linear_before_reset, lengths,
                    self.reverse, state, y, scratch)
            serial, parallel = k.gru_serial, k.gru_parallel
        else:
            args = (x, self.weights, self.act, self.clip, lengths, self.reverse, state, y, scratch)
            serial, parallel = k.rnn_serial, k.rnn_parallel
        if threads_ > 1:
            parallel(*args, threads_)
        else:
            serial(*args)


def check_lengths(lengths, rows: int, steps: int) -> np.ndarray:
    """Validate per-row valid lengths (0 <= L <= T) and return them as int64."""
    if lengths is None:
        return np.full(rows, steps, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size:
            raise DTypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (rows,):
        raise ShapeError(f"lengths must have shape ({rows},) (one per batch row), got {arr.shape}")
    arr = arr.astype(np.int64)
    if rows and (arr.min() < 0 or arr.max() > steps):
        raise ArgumentError(f"lengths must lie in 0..{steps} (the sequence length), "
                            f"got min {arr.min()} max {arr.max()}")
    return arr


@dataclass
class LayerResult:
    y: np.ndarray          # (T, N, D, H_out)
    h_n: np.ndarray        # (D, N, H_out)
    c_n: np.ndarray | None  # (D, N, H) for LSTM


def run_layer(directions, x, h0=None, c0=None, lengths=None):
    """Run one layer of 1 or 2 directions. Returns (y (T,N,D,H_out), h_n (D,N,H_out), c_n or None)."""
    if not directions:
        raise ArgumentError("run_layer needs at least one direction")
    first = directions[0]
    dtype = first.dtype
    x = np.asarray(x)
    if x.ndim != 3:
        raise ShapeError(f"x must be (T, N, I), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise DTypeError(f"x must be a floating array, got dtype {x.dtype}")
    steps, rows, features = x.shape
    if features != first.input_size:
        raise ShapeError(f"x has {features} features, the layer expects {first.input_size}")
    if steps == 0 or rows == 0:
        raise ShapeError(f"x must have at least one step and one row, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=dtype)
    lengths = check_lengths(lengths, rows, steps)
    count = len(directions)
    hidden_out = first.hidden_out
    h_n = _initial_state("initial h", h0, (count, rows, hidden_out), dtype)
    c_n = None
    states = [(h_n[d],) for d in range(count)]
    if first.mode == "LSTM":
        c_n = _initial_state("initial c", c0, (count, rows, first.hidden_size), dtype)
        states = [(h_n[d], c_n[d]) for d in range(count)]
    y = np.zeros((steps, rows, count, hidden_out), dtype)
    workers = threads.workers_for(rows)
    scratch = first.scratch(steps, rows)
    for d, params in enumerate(directions):
        params.run(x, lengths, states[d], y[:, :, d, :], scratch, workers)
    return y, h_n, c_n


def _initial_state(name, value, shape, dtype):
    if value is None:
        return np.zeros(shape, dtype)
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.array(arr, dtype=dtype, copy=True)
