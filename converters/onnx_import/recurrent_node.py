"""The plan's recurrent op: one ONNX RNN / GRU / LSTM node on fastrnn.recurrent.run_layer.

onnx-free. At import the converter turns the node's W / R / B / P into PyTorch-order weights
(``onnx_to_torch_params``, the only place gate orders are touched, through fastrnn.gates) and stores
them as plan constants; ``prepare`` builds the prepacked directions (a ``Stack``) once, when the
plan is built or loaded. Weights that are not constant at import (graph inputs) are reordered and
packed on every call instead.
"""
from __future__ import annotations

import numpy as np

from fastrnn.errors import DTypeError, ShapeError, UnsupportedError
from fastrnn.gates import NUM_GATES, onnx_peephole_to_torch, reorder_gates

OP = "RecurrentLayer"


def check_weight_shapes(mode: str, W, R, B, P, hidden_size: int | None, num_directions: int,
                        where: str) -> int:
    """Validate ONNX W / R / B / P shapes against each other; return the hidden size."""
    G = NUM_GATES[mode]
    W, R = np.asarray(W), np.asarray(R)
    if R.ndim != 3:
        raise ShapeError(f"{where}: R must be [num_directions, {G}*hidden_size, hidden_size], "
                         f"got shape {R.shape}")
    H = R.shape[2] if hidden_size is None else int(hidden_size)
    D = num_directions
    if R.shape != (D, G * H, H):
        raise ShapeError(f"{where}: R must have shape {(D, G * H, H)} (num_directions={D}, "
                         f"hidden_size={H}), got {R.shape}")
    if W.ndim != 3 or W.shape[:2] != (D, G * H):
        raise ShapeError(f"{where}: W must have shape ({D}, {G * H}, input_size), got {W.shape}")
    if B is not None and np.shape(B) != (D, 2 * G * H):
        raise ShapeError(f"{where}: B must have shape {(D, 2 * G * H)}, got {np.shape(B)}")
    if P is not None and np.shape(P) != (D, 3 * H):
        raise ShapeError(f"{where}: P must have shape {(D, 3 * H)}, got {np.shape(P)}")
    return H


def onnx_to_torch_params(mode: str, W, R, B, P, hidden_size: int) -> list[dict]:
    """Per direction: dict of PyTorch-order arrays (w_ih, w_hh, b_ih, b_hh, peephole or None)."""
    GH = NUM_GATES[mode] * hidden_size
    out = []
    for d in range(np.shape(W)[0]):
        p = {
            "w_ih": reorder_gates(W[d], mode, "onnx", "torch"),
            "w_hh": reorder_gates(R[d], mode, "onnx", "torch"),
            "b_ih": None if B is None else reorder_gates(B[d, :GH], mode, "onnx", "torch"),
            "b_hh": None if B is None else reorder_gates(B[d, GH:], mode, "onnx", "torch"),
            "peephole": None if P is None else onnx_peephole_to_torch(P[d]),
        }
        out.append(p)
    return out


def make_stack(attrs: dict, params: list[dict]):
    """The node's one layer of directions as a fastrnn.recurrent.Stack."""
    from fastrnn.recurrent import DirectionParams, Stack

    mode = attrs["mode"]
    if not len(params) == len(attrs["reverse"]) == len(attrs["activations"]):
        raise ShapeError(f"a recurrent node has {len(params)} direction(s) of weights, "
                         f"{len(attrs['reverse'])} of directions and "
                         f"{len(attrs['activations'])} of activations")
    result = []
    for d, p in enumerate(params):
        extra = {}
        if mode == "LSTM":
            extra = {"peephole": p.get("peephole"), "input_forget": bool(attrs.get("input_forget"))}
        if mode == "GRU":
            extra = {"linear_before_reset": bool(attrs.get("linear_before_reset"))}
        result.append(DirectionParams(
            mode, p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"),
            reverse=attrs["reverse"][d],
            activations=[tuple(a) for a in attrs["activations"][d]],
            clip=attrs.get("clip"), dtype=attrs["dtype"], **extra))
    return Stack([result])


def describe(stack) -> str:
    """A Stack as a constructor-like line: LSTM(64, 128), GRU(64, 128, 2 layers, bidirectional)."""
    first = stack.layers[0][0]
    layers = f", {len(stack.layers)} layers" if len(stack.layers) > 1 else ""
    both = ", bidirectional" if len(stack.layers[0]) == 2 else ""
    return f"{first.mode}({first.input_size}, {first.hidden_size}{layers}{both})"


def prepare(attrs: dict, constants: dict):
    """Build the node's Stack once from the constants the converter stored (static weights)."""
    names = attrs.get("params")
    if names is None:
        return None
    # writable copies: the constants may be read-only views of a memory-mapped file
    params = [{k: (None if n is None else np.array(constants[n], copy=True)) for k, n in entry.items()}
              for entry in names]
    return make_stack(attrs, params)


_ABSENT = [None] * 4


def bind(attrs: dict, state, n_out: int):
    """``run(attrs, state, ins, n_out)`` as a call on the inputs. With static weights (a prepared
    Stack) it goes straight to the Stack for the inputs run takes as they are (a 3-D array of the
    weights' dtype, of non-empty T and N and the input size), the checks of run_layer already
    made; for anything else it answers None, for run to judge."""
    if state is None:
        return lambda ins: run(attrs, None, ins, n_out)
    from fastrnn.recurrent import canonical

    first = state.layers[0][0]
    dtype, features, layout = first.dtype, first.input_size, attrs.get("layout", 0)
    directions = len(state.layers[0])

    def call(ins):
        X, seq_lens, h0, c0 = (ins + _ABSENT)[:4]
        if type(X) is not np.ndarray or X.ndim != 3 or X.dtype != dtype:
            return None
        if layout:
            X, h0, c0 = _time_major(X, h0, c0)
        T, N, I = X.shape
        if I != features or T == 0 or N == 0:
            return None
        y, h_n, c_n = state.run(canonical(X, dtype), h0, c0, seq_lens)
        outs = _onnx_outputs(layout, y.reshape(T, N, directions, -1), h_n, c_n)
        return outs if n_out == 3 else outs[:n_out]
    return call


def _time_major(X, h0, c0):
    """[N, T, I] / [N, D, H] (layout 1) -> fastrnn's [T, N, I] / [D, N, H], C-contiguous."""
    return (np.ascontiguousarray(X.transpose(1, 0, 2)),
            None if h0 is None else np.ascontiguousarray(h0.transpose(1, 0, 2)),
            None if c0 is None else np.ascontiguousarray(c0.transpose(1, 0, 2)))


def _onnx_outputs(layout: int, y, h_n, c_n) -> list:
    """y (T, N, D, H) -> ONNX Y [T, D, N, H] (layout 0) or [N, T, D, H] (layout 1), and the
    states."""
    if layout:
        return [y.transpose(1, 0, 2, 3), h_n.transpose(1, 0, 2),
                None if c_n is None else c_n.transpose(1, 0, 2)]
    return [y.transpose(0, 2, 1, 3), h_n, c_n]


def run(attrs: dict, state, ins: list, n_out: int) -> list:
    from fastrnn.recurrent import run_layer

    X, seq_lens, h0, c0 = (ins + [None] * 8)[:4]
    layout = attrs.get("layout", 0)
    D = len(attrs["reverse"])
    if X.ndim != 3:
        raise ShapeError(f"X must be 3-D ({'[batch, seq, input]' if layout else '[seq, batch, input]'}),"
                         f" got shape {X.shape}")
    if X.dtype != np.dtype(attrs["dtype"]):
        raise DTypeError(f"X has dtype {X.dtype}, the node's weights are {attrs['dtype']}")
    if state is None:  # weights only known at run time
        W, R, B, P = (ins + [None] * 8)[4:8]
        H = check_weight_shapes(attrs["mode"], W, R, B, P, attrs.get("hidden_size"), D, "weights")
        state = make_stack(attrs, onnx_to_torch_params(attrs["mode"], W, R, B, P, H))
    if layout:
        X, h0, c0 = _time_major(X, h0, c0)
    T, N, I = X.shape
    features = state.layers[0][0].input_size
    if I != features:
        raise ShapeError(f"X has {I} input features, W expects {features}")
    if T == 0 or N == 0:
        raise UnsupportedError(f"X with shape {X.shape}: empty sequences or batches are not supported")
    y, h_n, c_n = run_layer(state, X, h0, c0, seq_lens)
    return _onnx_outputs(layout, y, h_n, c_n)[:n_out]
