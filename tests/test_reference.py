"""Checks of the numpy reference (tests/reference.py) itself against PyTorch and ONNX Runtime.

PyTorch (float64, 1e-10) covers what it has: tanh/relu RNN, GRU (linear_before_reset=1), LSTM with
proj_size, stacks of 1-3 layers, bidirectional, batch_first, bias=False, initial states, packed
sequences and unbatched input. ONNX Runtime (single-node models, float32, ~1e-5 since ORT has no
float64 GRU/LSTM) covers the rest: every activation with alpha/beta and ORT's consumption rule, clip,
GRU linear_before_reset=0, peepholes, input_forget, sequence_lens with L=0 and the reverse direction.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

try:
    from tests import reference as ref
except ImportError:  # tests/ is not a package; pytest's default import mode puts tests/ on sys.path
    import reference as ref
GATES = ref.GATES


# --------------------------------------------------------------------------------------------------
# unit checks that need neither torch nor ORT
# --------------------------------------------------------------------------------------------------
def test_parse_activations_defaults():
    assert ref.parse_activations("RNN") == [[("tanh", 0.0, 0.0)]]
    assert ref.parse_activations("RNN", nonlinearity="relu", num_directions=2) == \
        [[("relu", 0.0, 0.0)]] * 2
    assert ref.parse_activations("GRU") == [[("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0)]]
    assert ref.parse_activations("LSTM")[0][2] == ("tanh", 0.0, 0.0)


def test_parse_activations_consumption_rule():
    # alpha/beta consumed in order, only by activations taking that parameter; ORT defaults after
    got = ref.parse_activations("LSTM", ["Sigmoid", "Affine", "LeakyRelu", "HardSigmoid", "Tanh",
                                         "ScaledTanh"], [2.0, 0.3], [5.0], num_directions=2)
    assert got == [[("sigmoid", 0.0, 0.0), ("affine", 2.0, 5.0), ("leakyrelu", 0.3, 0.0)],
                   [("hardsigmoid", 0.2, 0.5), ("tanh", 0.0, 0.0), ("scaledtanh", 0.0, 0.0)]]
    assert ref.parse_activations("RNN", ["elu"]) == [[("elu", 1.0, 0.0)]]
    assert ref.parse_activations("RNN", ["ThresholdedRelu"]) == [[("thresholdedrelu", 0.0, 0.0)]]
    # one set for a bidirectional layer: both directions use it
    assert ref.parse_activations("GRU", ["HardSigmoid", "Affine"], [0.1, 0.2], [0.3, 0.4], 2) == \
        [[("hardsigmoid", 0.1, 0.3), ("affine", 0.2, 0.4)]] * 2
    with pytest.raises(ValueError):
        ref.parse_activations("GRU", ["tanh"])
    with pytest.raises(ValueError):
        ref.parse_activations("RNN", ["gelu"])


@pytest.mark.parametrize("name", ref.ACTIVATION_NAMES)
def test_activation_formulas(name):
    x = np.array([-30.0, -2.0, -0.5, 0.0, 0.3, 0.7, 2.0, 30.0])
    a, b = 0.6, 0.4
    expected = {
        "relu": [max(v, 0.0) for v in x],
        "tanh": [np.tanh(v) for v in x],
        "sigmoid": [1.0 / (1.0 + np.exp(-v)) for v in x],
        "affine": [a * v + b for v in x],
        "leakyrelu": [v if v >= 0 else a * v for v in x],
        "thresholdedrelu": [v if v > a else 0.0 for v in x],
        "scaledtanh": [a * np.tanh(b * v) for v in x],
        "hardsigmoid": [min(max(a * v + b, 0.0), 1.0) for v in x],
        "elu": [v if v >= 0 else a * (np.exp(v) - 1.0) for v in x],
        "softsign": [v / (1.0 + abs(v)) for v in x],
        "softplus": [np.log(1.0 + np.exp(v)) for v in x],
    }[name]
    np.testing.assert_allclose(ref.activation(name.upper(), x, a, b), expected, rtol=1e-14,
                               atol=1e-15)


def test_random_state_dict_never_zero_and_seeded():
    a = ref.random_state_dict("LSTM", 3, 5, 2, bidirectional=True, proj_size=2, peepholes=True,
                              seed=4)
    b = ref.random_state_dict("LSTM", 3, 5, 2, bidirectional=True, proj_size=2, peepholes=True,
                              seed=4)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert np.all(a[k] != 0) and np.all(np.abs(a[k]) <= 1 / np.sqrt(5))
    assert a["weight_ih_l1_reverse"].shape == (20, 4)
    assert a["weight_hh_l0"].shape == (20, 2)
    assert a["weight_hr_l1"].shape == (2, 5)
    assert a["weight_ph_l0_reverse"].shape == (15,)


def test_lengths_semantics_by_hand():
    """L=0 -> zeros (not h0); final state at the last processed step; reverse starts at L-1."""
    sd = ref.random_state_dict("GRU", 2, 3, seed=1)
    p = ref.direction_params(sd, 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2))
    h0 = rng.standard_normal((3, 3))
    lengths = np.array([4, 2, 0])
    for reverse in (False, True):
        y, h_n, c_n = ref.run_direction("GRU", p, x, h0, lengths=lengths, reverse=reverse)
        assert c_n is None
        np.testing.assert_array_equal(y[2:, 1], 0)
        np.testing.assert_array_equal(y[:, 2], 0)
        np.testing.assert_array_equal(h_n[2], 0)
        # row 1 alone with T=2 gives the same numbers
        y1, h1, _ = ref.run_direction("GRU", p, x[:2, 1:2], h0[1:2], reverse=reverse)
        np.testing.assert_array_equal(y[:2, 1:2], y1)
        np.testing.assert_array_equal(h_n[1:2], h1)
        np.testing.assert_array_equal(h_n[1], y[1 if not reverse else 0, 1])


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------
TORCH_CELLS = ["RNN_tanh", "RNN_relu", "GRU", "LSTM", "LSTM_proj"]
VARIANTS = ["plain", "batch_first+h0", "nobias+h0"]


def _torch_module(torch, cell, I, H, num_layers, bias, batch_first, bidirectional):
    mode = cell.split("_")[0]
    kw = dict(input_size=I, hidden_size=H, num_layers=num_layers, bias=bias,
              batch_first=batch_first, bidirectional=bidirectional, dtype=torch.float64)
    if mode == "RNN":
        return torch.nn.RNN(nonlinearity=cell.split("_")[1], **kw)
    if mode == "GRU":
        return torch.nn.GRU(**kw)
    return torch.nn.LSTM(proj_size=2 if cell == "LSTM_proj" else 0, **kw)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("packed", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_reference_matches_torch(cell, num_layers, bidirectional, packed, variant):
    torch = pytest.importorskip("torch", reason="PyTorch checks the reference's torch semantics")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    mode = cell.split("_")[0]
    batch_first = variant == "batch_first+h0"
    bias = variant != "nobias+h0"
    with_h0 = variant != "plain"
    T, N, I, H = 5, 3, 3, 4
    P = 2 if cell == "LSTM_proj" else 0
    H_out = P or H
    D = 2 if bidirectional else 1
    seed = zlib.crc32(repr((cell, num_layers, bidirectional, packed, variant)).encode())
    rng = np.random.default_rng(seed)

    sd = ref.random_state_dict(mode, I, H, num_layers, bias, bidirectional, P, seed=seed)
    m = _torch_module(torch, cell, I, H, num_layers, bias, batch_first, bidirectional)
    assert set(m.state_dict()) == set(sd)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})

    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I))
    h0 = rng.standard_normal((num_layers * D, N, H_out)) if with_h0 else None
    c0 = rng.standard_normal((num_layers * D, N, H)) if with_h0 else None
    lengths = ref.random_lengths(rng, N, T) if packed else None
    if lengths is not None:
        lengths[0] = max(1, T - 2)  # make sure some row is short even when the draw is all-full

    if mode == "LSTM":
        hx = (h0, c0) if with_h0 else None
        thx = None if hx is None else (torch.from_numpy(h0), torch.from_numpy(c0))
    else:
        hx = h0
        thx = None if h0 is None else torch.from_numpy(h0)
    tx = torch.from_numpy(x)
    with torch.no_grad():
        if lengths is not None:
            packed_x = pack_padded_sequence(tx, torch.from_numpy(lengths), batch_first=batch_first,
                                            enforce_sorted=False)
            tout, th = m(packed_x, thx)
            tout, _ = pad_packed_sequence(tout, batch_first=batch_first, total_length=T)
        else:
            tout, th = m(tx, thx)

    out, h = ref.reference_model(mode, sd, x, hx, lengths, num_layers=num_layers,
                                 bidirectional=bidirectional, batch_first=batch_first,
                                 nonlinearity=cell.split("_")[1] if mode == "RNN" else "tanh")
    assert out.shape == tuple(tout.shape)
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-10, atol=1e-10)
    if mode == "LSTM":
        np.testing.assert_allclose(h[0], th[0].numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(h[1], th[1].numpy(), rtol=1e-10, atol=1e-10)
    else:
        np.testing.assert_allclose(h, th.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_reference_matches_torch_unbatched(cell):
    torch = pytest.importorskip("torch", reason="PyTorch checks the reference's torch semantics")
    mode = cell.split("_")[0]
    T, I, H, L = 6, 3, 4, 2
    P = 2 if cell == "LSTM_proj" else 0
    sd = ref.random_state_dict(mode, I, H, L, True, True, P, seed=11)
    m = _torch_module(torch, cell, I, H, L, True, False, True)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, I))
    h0 = rng.standard_normal((2 * L, P or H))
    c0 = rng.standard_normal((2 * L, H))
    hx = (h0, c0) if mode == "LSTM" else h0
    thx = tuple(torch.from_numpy(a) for a in hx) if mode == "LSTM" else torch.from_numpy(h0)
    with torch.no_grad():
        tout, th = m(torch.from_numpy(x), thx)
    out, h = ref.reference_model(mode, sd, x, hx,
                                 nonlinearity=cell.split("_")[1] if mode == "RNN" else "tanh")
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-10, atol=1e-10)
    if mode == "LSTM":
        for a, b in zip(h, th):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-10)
    else:
        np.testing.assert_allclose(h, th.numpy(), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# ONNX Runtime (single-node models)
# --------------------------------------------------------------------------------------------------
# PyTorch gate blocks -> ONNX gate blocks: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
_TO_ONNX_BLOCKS = {"RNN": [0], "GRU": [1, 0, 2], "LSTM": [0, 3, 1, 2]}
_PEEP_TO_ONNX = [0, 2, 1]  # i,f,o -> i,o,f


def _to_onnx_rows(a, mode, H):
    blocks = [a[g * H:(g + 1) * H] for g in range(GATES[mode])]
    return np.concatenate([blocks[g] for g in _TO_ONNX_BLOCKS[mode]], axis=0)


def _ort_run(mode, params, x, *, direction="forward", activations=None, alpha=None, beta=None,
             clip=None, lbr=None, input_forget=None, lengths=None, h0=None, c0=None):
    """Build a one-node ONNX model from torch-order params (list per direction) and run it in ORT."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime checks the ONNX semantics")
    pytest.importorskip("onnx", reason="building the ONNX models needs onnx")
    from onnx import TensorProto, helper

    H = params[0]["w_hh"].shape[0] // GATES[mode]
    f32 = np.float32
    W = np.stack([_to_onnx_rows(p["w_ih"], mode, H) for p in params]).astype(f32)
    R = np.stack([_to_onnx_rows(p["w_hh"], mode, H) for p in params]).astype(f32)
    feeds = {"X": x.astype(f32), "W": W, "R": R}
    if params[0].get("b_ih") is not None:
        feeds["B"] = np.stack([np.concatenate([_to_onnx_rows(p["b_ih"], mode, H),
                                               _to_onnx_rows(p["b_hh"], mode, H)])
                               for p in params]).astype(f32)
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, dtype=np.int32)
    if h0 is not None:
        feeds["initial_h"] = np.asarray(h0, dtype=f32)
    if c0 is not None:
        feeds["initial_c"] = np.asarray(c0, dtype=f32)
    if params[0].get("peephole") is not None:
        feeds["P"] = np.stack([np.concatenate([p["peephole"][g * H:(g + 1) * H]
                                               for g in _PEEP_TO_ONNX]) for p in params]).astype(f32)
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    if mode == "LSTM":
        order += ["initial_c", "P"]
    names = [n if n in feeds else "" for n in order]
    while names[-1] == "":
        names.pop()
    inputs = []
    for n in feeds:
        tp = TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT
        inputs.append(helper.make_tensor_value_info(n, tp, list(feeds[n].shape)))
    outputs = ["Y", "Y_h"] + (["Y_c"] if mode == "LSTM" else [])
    attrs = dict(hidden_size=H, direction=direction)
    if activations is not None:
        attrs["activations"] = activations
    if alpha:
        attrs["activation_alpha"] = [float(a) for a in alpha]
    if beta:
        attrs["activation_beta"] = [float(b) for b in beta]
    if clip is not None:
        attrs["clip"] = clip
    if lbr is not None:
        attrs["linear_before_reset"] = lbr
    if input_forget is not None:
        attrs["input_forget"] = input_forget
    node = helper.make_node(mode, names, outputs, **attrs)
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check_against_ort(mode, *, direction="forward", activations=None, alpha=None, beta=None,
                       clip=None, lbr=1, input_forget=0, peepholes=False, lengths=None,
                       with_state=True, bias=True, T=5, N=3, I=3, H=4, scale=None, seed=0,
                       x_scale=1.0, tol=1e-5):
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    sd = ref.random_state_dict(mode, I, H, 1, bias, D == 2, 0, peepholes and mode == "LSTM",
                               seed=seed, scale=scale, dtype=np.float32)
    params = [ref.direction_params(sd, 0, d) for d in range(D)]
    x = (x_scale * rng.standard_normal((T, N, I))).astype(np.float32)
    h0 = rng.standard_normal((D, N, H)).astype(np.float32) if with_state else None
    c0 = rng.standard_normal((D, N, H)).astype(np.float32) if with_state and mode == "LSTM" \
        else None

    got = _ort_run(mode, params, x, direction=direction, activations=activations, alpha=alpha,
                   beta=beta, clip=clip, lbr=lbr if mode == "GRU" else None,
                   input_forget=input_forget if mode == "LSTM" else None, lengths=lengths,
                   h0=h0, c0=c0)

    acts = ref.parse_activations(mode, activations, alpha, beta, D)
    if direction == "reverse":
        # run_layer's second slot is the reverse direction: run it alone through run_direction
        y, h_n, c_n = ref.run_direction(mode, params[0], x, None if h0 is None else h0[0],
                                        None if c0 is None else c0[0], lengths, reverse=True,
                                        acts=acts[0], clip=clip, linear_before_reset=bool(lbr),
                                        input_forget=bool(input_forget))
        y, h_n = y[:, :, None], h_n[None]
        c_n = None if c_n is None else c_n[None]
    else:
        y, h_n, c_n = ref.reference_layer(mode, params, x, h0, c0, lengths, acts=acts, clip=clip,
                                          linear_before_reset=bool(lbr),
                                          input_forget=bool(input_forget))
    # ORT Y is [T, D, N, H]
    np.testing.assert_allclose(y.transpose(0, 2, 1, 3), got[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(h_n, got[1], rtol=tol, atol=tol)
    if mode == "LSTM":
        np.testing.assert_allclose(c_n, got[2], rtol=tol, atol=tol)


ONNX_NAMES = {n.lower(): n for n in ["Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu",
                                       "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu",
                                       "Softsign", "Softplus"]}
# (mode, slot): which activation of the per-direction set is replaced
_SLOTS = [("RNN", 0), ("GRU", 0), ("GRU", 1), ("LSTM", 0), ("LSTM", 1), ("LSTM", 2)]
_ALPHA_BETA = {  # parameters that keep each activation in an interesting range
    "affine": ([0.7], [0.2]), "leakyrelu": ([0.3], []), "thresholdedrelu": ([0.2], []),
    "scaledtanh": ([1.3], [0.8]), "hardsigmoid": ([0.3], [0.45]), "elu": ([0.8], []),
}


@pytest.mark.parametrize("name", ref.ACTIVATION_NAMES)
@pytest.mark.parametrize("mode,slot", _SLOTS, ids=[f"{m}-{s}" for m, s in _SLOTS])
def test_reference_matches_ort_activations(mode, slot, name):
    names = ref.default_activations(mode)
    names[slot] = ONNX_NAMES[name]
    alpha, beta = _ALPHA_BETA.get(name, (None, None))
    _check_against_ort(mode, activations=names, alpha=alpha, beta=beta, seed=slot)


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_reference_matches_ort_activation_defaults_and_order(mode):
    """Bidirectional, different sets per direction, alpha/beta lists shorter than the users."""
    k = ref.NUM_ACTIVATIONS[mode]
    fwd = ["Affine", "LeakyRelu", "HardSigmoid"][:k]
    rev = ["ScaledTanh", "Elu", "ThresholdedRelu"][:k]
    n_alpha = sum(ref.ACTIVATION_ARGS[a.lower()][0] for a in fwd + rev) - 1
    alpha = [0.9, 0.25, 0.35, 1.1, 0.6][:n_alpha]
    beta = [0.1, 0.4]
    _check_against_ort(mode, direction="bidirectional", activations=fwd + rev, alpha=alpha,
                       beta=beta, seed=7)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_reference_matches_ort_clip(mode, direction):
    # large weights and inputs so that the clip is active on many gates
    _check_against_ort(mode, direction=direction, clip=0.4, scale=1.5, x_scale=2.0, seed=3)


@pytest.mark.parametrize("lengths", [None, [5, 2, 0]], ids=["full", "lengths"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
def test_reference_matches_ort_gru_linear_before_reset(lbr, direction, lengths):
    _check_against_ort("GRU", direction=direction, lbr=lbr, lengths=lengths, seed=5)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("input_forget", [0, 1])
@pytest.mark.parametrize("peepholes", [False, True], ids=["nopeep", "peep"])
def test_reference_matches_ort_lstm_peepholes_input_forget(peepholes, input_forget, direction):
    _check_against_ort("LSTM", direction=direction, peepholes=peepholes,
                       input_forget=input_forget, lengths=[5, 3, 1], scale=1.0, seed=9)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_reference_matches_ort_sequence_lens(mode, direction, with_state):
    # includes L = 0 (zero outputs and zero final state, not the initial state) and a full row
    _check_against_ort(mode, direction=direction, lengths=[0, 6, 3, 1], with_state=with_state,
                       T=6, N=4, seed=13)


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_reference_matches_ort_no_bias_long(mode):
    _check_against_ort(mode, direction="bidirectional", bias=False, T=30, N=2, seed=17,
                       lengths=[30, 17], peepholes=True)


def test_ort_everything_together():
    """clip + custom activations + peepholes + input_forget + lengths, bidirectional LSTM."""
    _check_against_ort("LSTM", direction="bidirectional", clip=0.8, peepholes=True, input_forget=1,
                       activations=["HardSigmoid", "Softsign", "Elu", "Sigmoid", "Tanh",
                                    "Softplus"], alpha=[0.25, 0.5], beta=[0.45],
                       lengths=[4, 0, 2], T=4, scale=1.2, seed=21)
