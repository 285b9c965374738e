"""Plain-numpy float64 reference implementation of fastrnn's recurrent layers.

Written from /work/shared/SEMANTICS.md and nothing else: it shares no code with fastrnn's kernels, it
is slow on purpose (one batch row and one time step at a time) and every formula is spelled out the
way the semantics document states it. Every fast path in fastrnn is tested against it, and
tests/test_reference.py checks it against PyTorch and ONNX Runtime.

Conventions (PyTorch's, like fastrnn's canonical layout):
- gate order of stacked weight blocks: LSTM i, f, g, o; GRU r, z, n; RNN one block;
- peephole vector (3H,) in order i, f, o;
- one direction's parameters are a dict with keys ``w_ih`` (GH, I), ``w_hh`` (GH, H_out),
  ``b_ih`` (GH,) or None, ``b_hh`` (GH,) or None, ``w_hr`` (P, H) or None, ``peephole`` (3H,) or None;
- activations are normalized to tuples ``(name, alpha, beta)`` with a lower-case ONNX name.

Public helpers:
- :func:`activation` / :func:`parse_activations` (ONNX activations and ORT's alpha/beta rule);
- :func:`rnn_cell`, :func:`gru_cell`, :func:`lstm_cell` (one step, one row);
- :func:`run_direction` (one direction over time with a per-row length);
- :func:`reference_layer` (one layer, D directions, torch-order weights; like ``run_layer``);
- :func:`reference_model` (a whole torch-style stacked / bidirectional model from a state dict);
- :func:`random_state_dict`, :func:`random_lengths`, :func:`direction_params`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
NUM_ACTIVATIONS = {"RNN": 1, "GRU": 2, "LSTM": 3}

# name -> (takes alpha, takes beta); ONNX Runtime's table (rnn_helpers.cc)
ACTIVATION_ARGS = {
    "relu": (False, False),
    "tanh": (False, False),
    "sigmoid": (False, False),
    "affine": (True, True),
    "leakyrelu": (True, False),
    "thresholdedrelu": (True, False),
    "scaledtanh": (True, True),
    "hardsigmoid": (True, True),
    "elu": (True, False),
    "softsign": (False, False),
    "softplus": (False, False),
}
# defaults ORT uses when the alpha / beta list has run out (everything else: 0)
ACTIVATION_DEFAULTS = {
    "leakyrelu": (0.01, 0.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, 0.0),
}
ACTIVATION_NAMES = tuple(ACTIVATION_ARGS)


def _mode(mode: str) -> str:
    m = str(mode).upper()
    if m not in GATES:
        raise ValueError(f"mode must be one of RNN, GRU, LSTM, got {mode!r}")
    return m


# --------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------
def activation(name: str, x, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """Apply the ONNX activation `name` (case-insensitive) element-wise, in float64."""
    x = np.asarray(x, dtype=np.float64)
    n = str(name).lower()
    with np.errstate(over="ignore", invalid="ignore"):
        if n == "relu":
            return np.maximum(x, 0.0)
        if n == "tanh":
            return np.tanh(x)
        if n == "sigmoid":
            # 1 / (1 + e^-x), written so that it never overflows
            e = np.exp(-np.abs(x))
            return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        if n == "affine":
            return alpha * x + beta
        if n == "leakyrelu":
            return np.where(x >= 0, x, alpha * x)
        if n == "thresholdedrelu":
            return np.where(x > alpha, x, 0.0)
        if n == "scaledtanh":
            return alpha * np.tanh(beta * x)
        if n == "hardsigmoid":
            return np.clip(alpha * x + beta, 0.0, 1.0)
        if n == "elu":
            return np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))
        if n == "softsign":
            return x / (1.0 + np.abs(x))
        if n == "softplus":
            return np.logaddexp(0.0, x)  # log(1 + e^x)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATION_NAMES}")


def default_activations(mode: str, nonlinearity: str = "tanh") -> list[str]:
    """The activation names of one direction when none are given."""
    mode = _mode(mode)
    if mode == "RNN":
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        return [nonlinearity]
    if mode == "GRU":
        return ["sigmoid", "tanh"]
    return ["sigmoid", "tanh", "tanh"]


def parse_activations(mode: str, activations: Sequence[str] | None = None,
                      alpha: Sequence[float] | None = None, beta: Sequence[float] | None = None,
                      num_directions: int = 1, nonlinearity: str = "tanh"):
    """ONNX-style activation lists -> ``[[(name, alpha, beta), ...] per direction]``.

    `activations` holds one set of names (used by every direction) or `num_directions` sets, forward
    first. The alpha and beta lists are consumed in order, each only by the activations that take
    that parameter (ORT's rule); when a list has run out, ORT's default is used (LeakyRelu 0.01,
    HardSigmoid 0.2 / 0.5, Elu 1, everything else 0).
    """
    mode = _mode(mode)
    k = NUM_ACTIVATIONS[mode]
    if activations is None:
        names = default_activations(mode, nonlinearity)
    else:
        names = [str(a).lower() for a in activations]
    if len(names) not in (k, k * num_directions):
        raise ValueError(f"{mode} takes {k} activations per direction "
                         f"({k} or {k * num_directions} in all), got {len(names)}")
    alphas = list(alpha or [])
    betas = list(beta or [])
    parsed = []
    for n in names:
        if n not in ACTIVATION_ARGS:
            raise ValueError(f"unknown activation {n!r}; expected one of {ACTIVATION_NAMES}")
        a, b = ACTIVATION_DEFAULTS.get(n, (0.0, 0.0))
        takes_a, takes_b = ACTIVATION_ARGS[n]
        if takes_a and alphas:
            a = float(alphas.pop(0))
        if takes_b and betas:
            b = float(betas.pop(0))
        parsed.append((n, float(a), float(b)))
    sets = [parsed[d * k:(d + 1) * k] for d in range(len(parsed) // k)]
    if len(sets) == 1:
        sets = sets * num_directions
    return sets


def _act(spec, x):
    name, a, b = spec
    return activation(name, x, a, b)


def _clip(v, clip):
    if clip is None:
        return v
    return np.clip(v, -clip, clip)


# --------------------------------------------------------------------------------------------------
# cells: one row, one step; x (I,), h (H_out,), c (H,) -> new h, new c
# --------------------------------------------------------------------------------------------------
def _bias(b, rows):
    return np.zeros(rows) if b is None else np.asarray(b, dtype=np.float64)


def rnn_cell(x, h, p, acts=(("tanh", 0.0, 0.0),), clip=None):
    """Elman RNN: h' = f(W x + R h + Wb + Rb)."""
    w_ih, w_hh = p["w_ih"], p["w_hh"]
    rows = w_hh.shape[0]
    a = w_ih @ x + w_hh @ h + _bias(p.get("b_ih"), rows) + _bias(p.get("b_hh"), rows)
    return _act(acts[0], _clip(a, clip))


def gru_cell(x, h, p, acts=(("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0)), clip=None,
             linear_before_reset=True):
    """GRU in PyTorch gate order r, z, n; linear_before_reset 1 (PyTorch) or 0 (ONNX default)."""
    w_ih, w_hh = p["w_ih"], p["w_hh"]
    H = w_hh.shape[0] // 3
    b_ih = _bias(p.get("b_ih"), 3 * H)
    b_hh = _bias(p.get("b_hh"), 3 * H)
    Wr, Wz, Wn = w_ih[:H], w_ih[H:2 * H], w_ih[2 * H:]
    Rr, Rz, Rn = w_hh[:H], w_hh[H:2 * H], w_hh[2 * H:]
    Wbr, Wbz, Wbn = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
    Rbr, Rbz, Rbn = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    f, g = acts[0], acts[1]
    z = _act(f, _clip(Wz @ x + Rz @ h + Wbz + Rbz, clip))
    r = _act(f, _clip(Wr @ x + Rr @ h + Wbr + Rbr, clip))
    if linear_before_reset:
        n = _act(g, _clip(Wn @ x + Wbn + r * (Rn @ h + Rbn), clip))
    else:
        n = _act(g, _clip(Wn @ x + Rn @ (r * h) + Rbn + Wbn, clip))
    return (1.0 - z) * n + z * h


def lstm_cell(x, h, c, p, acts=(("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0), ("tanh", 0.0, 0.0)),
              clip=None, input_forget=False):
    """LSTM in PyTorch gate order i, f, g, o; peepholes (i, f, o), output peephole on c'; proj."""
    w_ih, w_hh = p["w_ih"], p["w_hh"]
    H = w_hh.shape[0] // 4
    b = _bias(p.get("b_ih"), 4 * H) + _bias(p.get("b_hh"), 4 * H)
    a = w_ih @ x + w_hh @ h + b
    ai, af, ag, ao = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
    P = p.get("peephole")
    if P is not None:  # without peepholes no P * c terms (0 * an infinite c would be NaN)
        P = np.asarray(P, dtype=np.float64)
        ai, af = ai + P[:H] * c, af + P[H:2 * H] * c
    f_act, g_act, h_act = acts[0], acts[1], acts[2]
    i = _act(f_act, _clip(ai, clip))
    if input_forget:
        f = 1.0 - i
    else:
        f = _act(f_act, _clip(af, clip))
    g = _act(g_act, _clip(ag, clip))
    c_new = f * c + i * g
    if P is not None:
        ao = ao + P[2 * H:] * c_new
    o = _act(f_act, _clip(ao, clip))
    h_new = o * _act(h_act, c_new)
    w_hr = p.get("w_hr")
    if w_hr is not None:
        h_new = w_hr @ h_new
    return h_new, c_new


# --------------------------------------------------------------------------------------------------
# one direction, one layer
# --------------------------------------------------------------------------------------------------
def _sizes(mode, p):
    """(H, H_out) of one direction's parameters."""
    G = GATES[mode]
    H = p["w_hh"].shape[0] // G
    H_out = p["w_hr"].shape[0] if p.get("w_hr") is not None else H
    return H, H_out


def _as64(p):
    return {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in p.items()}


def run_direction(mode, p, x, h0=None, c0=None, lengths=None, *, reverse=False, acts=None,
                  clip=None, linear_before_reset=True, input_forget=False):
    """Run one direction over x (T, N, I).

    Returns y (T, N, H_out) (zero for t >= L), h_n (N, H_out), c_n (N, H) (None unless LSTM).
    Row b runs t = 0 .. L-1 (forward) or L-1 .. 0 (reverse) from the initial state; its final state is
    the state after the last processed step; L = 0 gives zero outputs and a zero final state.
    """
    mode = _mode(mode)
    p = _as64(p)
    x = np.asarray(x, dtype=np.float64)
    T, N, _ = x.shape
    H, H_out = _sizes(mode, p)
    if acts is None:
        acts = parse_activations(mode)[0]
    h0 = np.zeros((N, H_out)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c0 = np.zeros((N, H)) if c0 is None else np.asarray(c0, dtype=np.float64)
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    y = np.zeros((T, N, H_out))
    h_n = np.zeros((N, H_out))
    c_n = np.zeros((N, H))
    for b in range(N):
        L = int(lengths[b])
        if not 0 <= L <= T:
            raise ValueError(f"length {L} of row {b} is outside [0, {T}]")
        h = h0[b].copy()
        c = c0[b].copy()
        steps = range(L - 1, -1, -1) if reverse else range(L)
        for t in steps:
            if mode == "RNN":
                h = rnn_cell(x[t, b], h, p, acts, clip)
            elif mode == "GRU":
                h = gru_cell(x[t, b], h, p, acts, clip, linear_before_reset)
            else:
                h, c = lstm_cell(x[t, b], h, c, p, acts, clip, input_forget)
            y[t, b] = h
        if L > 0:
            h_n[b] = h
            c_n[b] = c
    return y, h_n, (c_n if mode == "LSTM" else None)


def reference_layer(mode, params: Sequence[Mapping], x, h0=None, c0=None, lengths=None, *,
                    acts=None, clip=None, linear_before_reset=True, input_forget=False):
    """One layer with D = len(params) directions (forward, then reverse); like fastrnn's run_layer.

    params: one dict per direction (see module docstring). x (T, N, I); h0 (D, N, H_out);
    c0 (D, N, H); acts: per-direction lists of (name, alpha, beta) (see parse_activations) or None.
    Returns y (T, N, D, H_out), h_n (D, N, H_out), c_n (D, N, H) or None unless LSTM.
    """
    mode = _mode(mode)
    D = len(params)
    if D not in (1, 2):
        raise ValueError(f"a layer has 1 or 2 directions, got {D}")
    if acts is None:
        acts = parse_activations(mode, num_directions=D)
    x = np.asarray(x, dtype=np.float64)
    T, N, _ = x.shape
    ys, hs, cs = [], [], []
    for d in range(D):
        y, h, c = run_direction(
            mode, params[d], x,
            None if h0 is None else np.asarray(h0)[d],
            None if c0 is None else np.asarray(c0)[d],
            lengths, reverse=(d == 1), acts=acts[d], clip=clip,
            linear_before_reset=linear_before_reset, input_forget=input_forget)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    y = np.stack(ys, axis=2)
    h_n = np.stack(hs, axis=0)
    c_n = np.stack(cs, axis=0) if mode == "LSTM" else None
    return y, h_n, c_n


# --------------------------------------------------------------------------------------------------
# whole torch-style model
# --------------------------------------------------------------------------------------------------
def _np(v):
    if v is None:
        return None
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def direction_params(state_dict: Mapping, layer: int, direction: int = 0) -> dict:
    """One direction's parameter dict from a PyTorch-named state dict."""
    s = f"_l{layer}" + ("_reverse" if direction else "")
    return {
        "w_ih": _np(state_dict[f"weight_ih{s}"]),
        "w_hh": _np(state_dict[f"weight_hh{s}"]),
        "b_ih": _np(state_dict.get(f"bias_ih{s}")),
        "b_hh": _np(state_dict.get(f"bias_hh{s}")),
        "w_hr": _np(state_dict.get(f"weight_hr{s}")),
        "peephole": _np(state_dict.get(f"weight_ph{s}")),
    }


def _count_layers(state_dict):
    k = 0
    while f"weight_ih_l{k}" in state_dict:
        k += 1
    return k


def reference_model(mode, state_dict: Mapping, x, hx=None, lengths=None, *, num_layers=None,
                    bidirectional=None, batch_first=False, nonlinearity="tanh", activations=None,
                    activation_alpha=None, activation_beta=None, clip=None,
                    linear_before_reset=True, input_forget=False):
    """A torch-style nn.RNN / nn.GRU / nn.LSTM (plus fastrnn's ONNX extras) in float64.

    x: (T, N, I), (N, T, I) if batch_first, or unbatched (T, I). hx: h0 (L*D, N, H_out), or for LSTM
    (h0, c0) with c0 (L*D, N, H) (unbatched: without the N axis); either may be None.
    Returns (out, h_n) or for LSTM (out, (h_n, c_n)) with torch's shapes; h_n is never batch-first.
    num_layers and bidirectional default to what the state dict holds.
    """
    mode = _mode(mode)
    if num_layers is None:
        num_layers = _count_layers(state_dict)
    if bidirectional is None:
        bidirectional = "weight_ih_l0_reverse" in state_dict
    D = 2 if bidirectional else 1
    acts = parse_activations(mode, activations, activation_alpha, activation_beta, D, nonlinearity)

    x = np.asarray(x, dtype=np.float64)
    if mode == "LSTM":
        h0, c0 = (None, None) if hx is None else hx
    else:
        h0, c0 = hx, None
    h0, c0 = _np(h0), _np(c0)
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :]
        h0 = None if h0 is None else h0[:, None, :]
        c0 = None if c0 is None else c0[:, None, :]
        if lengths is not None:
            lengths = np.asarray(lengths).reshape(1)
    elif batch_first:
        x = x.transpose(1, 0, 2)

    T, N, _ = x.shape
    inp = x
    hs, cs = [], []
    for k in range(num_layers):
        params = [direction_params(state_dict, k, d) for d in range(D)]
        y, h_n, c_n = reference_layer(
            mode, params, inp,
            None if h0 is None else h0[k * D:(k + 1) * D],
            None if c0 is None else c0[k * D:(k + 1) * D],
            lengths, acts=acts, clip=clip, linear_before_reset=linear_before_reset,
            input_forget=input_forget)
        inp = y.reshape(T, N, -1)  # [forward | reverse] on the feature axis
        hs.append(h_n)
        if c_n is not None:
            cs.append(c_n)
    out = inp
    h_n = np.concatenate(hs, axis=0)  # index layer * D + direction
    c_n = np.concatenate(cs, axis=0) if mode == "LSTM" else None
    if unbatched:
        out, h_n = out[:, 0], h_n[:, 0]
        c_n = None if c_n is None else c_n[:, 0]
    elif batch_first:
        out = out.transpose(1, 0, 2)
    if mode == "LSTM":
        return out, (h_n, c_n)
    return out, h_n


# --------------------------------------------------------------------------------------------------
# random configurations
# --------------------------------------------------------------------------------------------------
def _uniform_nonzero(rng, shape, k):
    """Uniform magnitude in [k/100, k) with a random sign: uniform-like in ±k, never (near) zero."""
    magnitude = rng.uniform(k / 100, k, size=shape)
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return magnitude * sign


def state_dict_shapes(mode, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                      proj_size=0, peepholes=False) -> dict:
    """name -> shape of a PyTorch-named state dict (plus weight_ph_l{k} for LSTM peepholes)."""
    mode = _mode(mode)
    G = GATES[mode]
    H = hidden_size
    H_out = proj_size if proj_size else H
    D = 2 if bidirectional else 1
    shapes = {}
    for k in range(num_layers):
        I_k = input_size if k == 0 else D * H_out
        for d in range(D):
            s = f"_l{k}" + ("_reverse" if d else "")
            shapes[f"weight_ih{s}"] = (G * H, I_k)
            shapes[f"weight_hh{s}"] = (G * H, H_out)
            if bias:
                shapes[f"bias_ih{s}"] = (G * H,)
                shapes[f"bias_hh{s}"] = (G * H,)
            if proj_size:
                shapes[f"weight_hr{s}"] = (proj_size, H)
            if peepholes:
                shapes[f"weight_ph{s}"] = (3 * H,)
    return shapes


def random_state_dict(mode, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                      proj_size=0, peepholes=False, seed=0, scale=None, dtype=np.float64) -> dict:
    """Random PyTorch-named state dict, uniform in ±scale (default 1/sqrt(H)), seeded, never zero."""
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(hidden_size) if scale is None else float(scale)
    shapes = state_dict_shapes(mode, input_size, hidden_size, num_layers, bias, bidirectional,
                               proj_size, peepholes)
    return {name: _uniform_nonzero(rng, shape, k).astype(dtype) for name, shape in shapes.items()}


def random_lengths(rng, batch, T, *, allow_zero=False, full_row=True) -> np.ndarray:
    """Random per-row lengths in [1, T] ([0, T] with allow_zero), with one full-length row."""
    lo = 0 if allow_zero else 1
    lengths = rng.integers(lo, T + 1, size=batch)
    if full_row and batch:
        lengths[rng.integers(batch)] = T
    return lengths.astype(np.int64)


def pad_with(x, lengths, value, batch_first=False):
    """Copy of x (T, N, ...) (or (N, T, ...) if batch_first) with every step t >= L set to value."""
    x = np.array(x, copy=True)
    for b, L in enumerate(np.asarray(lengths)):
        if batch_first:
            x[b, int(L):] = value
        else:
            x[int(L):, b] = value
    return x
