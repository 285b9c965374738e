"""fastrnn.RNN / GRU / LSTM against the float64 numpy reference (tests/reference.py).

The main grid runs cell x num_layers 1-3 x bidirectional x batch_first x bias x lengths x initial state
x dtype; the ONNX extras (activations with alpha/beta, clip, linear_before_reset, peepholes,
input_forget) and proj_size have grids of their own. Then the contract around the numbers: unbatched
input, padding, no in-place changes to inputs, non-contiguous inputs, parameters round trip, config,
and the typed errors of fastrnn.errors.

Tolerances: float64 1e-10; float32 1e-5 absolute (plus 1e-5 relative), also at T = 100. The reference
runs on exactly the values the layer sees (its parameters as stored, the input cast to its dtype), so
the only difference is the layer's arithmetic.
"""
from __future__ import annotations

import copy
import zlib

import numba
import numpy as np
import pytest

import fastrnn
from fastrnn.errors import (ArgumentError, DTypeError, FastRNNError, ShapeError,
                            UnsupportedError)
from fastrnn.kernels.layout import C_FLAT
from fastrnn.recurrent import FUSED
try:
    from tests import reference as ref
except ImportError:  # tests/ is not a package; pytest's default import mode puts tests/ on sys.path
    import reference as ref

I, H, P, T, N = 3, 4, 2, 6, 3
CELLS = ["RNN", "GRU", "LSTM"]
DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


def make_layer(mode, input_size=I, hidden_size=H, num_layers=1, *, bias=True, batch_first=False,
               bidirectional=False, dtype=np.float64, proj_size=0, peepholes=False, seed=0,
               **kw):
    """A fastrnn layer whose parameters come from ref.random_state_dict(seed)."""
    cls = getattr(fastrnn, mode)
    args = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
                bidirectional=bidirectional, dtype=dtype, **kw)
    if mode == "LSTM":
        args.update(proj_size=proj_size, peepholes=peepholes)
    layer = cls(input_size, hidden_size, **args)
    sd = ref.random_state_dict(mode, input_size, hidden_size, num_layers, bias, bidirectional,
                               proj_size, peepholes, seed=seed)
    layer.load_state_dict(sd)
    return layer


def run_reference(layer, x, hx=None, lengths=None, **kw):
    """The reference on the layer's stored parameters and the input as the layer's dtype."""
    x = np.asarray(x).astype(layer.dtype).astype(np.float64)
    cast = (lambda a: None if a is None else np.asarray(a).astype(layer.dtype).astype(np.float64))
    if hx is not None:
        hx = tuple(cast(a) for a in hx) if layer.mode == "LSTM" else cast(hx)
    extra = {"clip": layer.clip}
    if layer.mode == "RNN":
        extra["nonlinearity"] = getattr(layer, "nonlinearity", "tanh")
    if layer.mode == "GRU":
        extra["linear_before_reset"] = layer.linear_before_reset
    if layer.mode == "LSTM":
        extra["input_forget"] = layer.input_forget
    extra.update(kw)
    return ref.reference_model(layer.mode, layer.state_dict(), x, hx, lengths,
                               num_layers=layer.num_layers, bidirectional=layer.bidirectional,
                               batch_first=layer.batch_first, **extra)


def assert_close(got, expected, dtype, tol=None, what=""):
    tol = TOL[np.dtype(dtype)] if tol is None else tol
    got = np.asarray(got)
    assert got.shape == np.shape(expected), f"{what}: shape {got.shape} != {np.shape(expected)}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype} != {np.dtype(dtype)}"
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, err_msg=what)


def assert_same_result(layer, got, expected):
    """Compare (out, h_n) or (out, (h_n, c_n)) with the reference's."""
    out, h = got
    eout, eh = expected
    assert_close(out, eout, layer.dtype, what="out")
    if layer.mode == "LSTM":
        assert isinstance(h, tuple) and len(h) == 2
        assert_close(h[0], eh[0], layer.dtype, what="h_n")
        assert_close(h[1], eh[1], layer.dtype, what="c_n")
    else:
        assert_close(h, eh, layer.dtype, what="h_n")


def random_state(layer, rng, batch=N, unbatched=False):
    D = 2 if layer.bidirectional else 1
    lead = (layer.num_layers * D,) if unbatched else (layer.num_layers * D, batch)
    h0 = rng.standard_normal(lead + (layer.proj_size or layer.hidden_size,))
    if layer.mode == "LSTM":
        return h0, rng.standard_normal(lead + (layer.hidden_size,))
    return h0


def random_input(layer, rng, steps=T, batch=N, scale=1.0):
    shape = (batch, steps, layer.input_size) if layer.batch_first else \
        (steps, batch, layer.input_size)
    return (scale * rng.standard_normal(shape)).astype(layer.dtype)


# --------------------------------------------------------------------------------------------------
# the main grid
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "h0"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("mode", CELLS)
def test_grid(mode, num_layers, bidirectional, batch_first, bias, with_lengths, with_state, dtype):
    seed = _seed(mode, num_layers, bidirectional, batch_first, bias, with_lengths, with_state)
    rng = np.random.default_rng(seed)
    layer = make_layer(mode, num_layers=num_layers, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional, dtype=dtype, seed=seed)
    x = random_input(layer, rng)
    hx = random_state(layer, rng) if with_state else None
    lengths = None
    if with_lengths:
        lengths = ref.random_lengths(rng, N, T)
        lengths[0] = T - 2  # at least one short row, whatever the draw
    assert_same_result(layer, layer(x, hx, lengths=lengths), run_reference(layer, x, hx, lengths))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS + ["LSTM-proj"])
def test_long_sequence(mode, bidirectional, with_lengths, dtype):
    """T = 100, two layers: float32 stays within 1e-5 of the float64 reference."""
    steps, batch = 100, 3
    seed = _seed("long", mode, bidirectional, with_lengths)
    rng = np.random.default_rng(seed)
    layer = make_layer(mode.split("-")[0], num_layers=2, bidirectional=bidirectional, dtype=dtype,
                       proj_size=P if mode == "LSTM-proj" else 0, seed=seed)
    x = random_input(layer, rng, steps, batch)
    hx = random_state(layer, rng, batch)
    lengths = np.array([steps, 37, 81]) if with_lengths else None
    assert_same_result(layer, layer(x, hx, lengths), run_reference(layer, x, hx, lengths))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS)
def test_batch_of_one_and_wide_batch(mode, bidirectional, dtype):
    """Batch 1 (serial kernels) and a wide batch (parallel kernels when threads allow)."""
    for batch in (1, 17):
        seed = _seed("batch", mode, bidirectional, batch)
        rng = np.random.default_rng(seed)
        layer = make_layer(mode, num_layers=2, bidirectional=bidirectional, dtype=dtype,
                           seed=seed)
        x = random_input(layer, rng, 5, batch)
        hx = random_state(layer, rng, batch)
        lengths = ref.random_lengths(rng, batch, 5, allow_zero=True)
        assert_same_result(layer, layer(x, hx, lengths), run_reference(layer, x, hx, lengths))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("mode", CELLS)
def test_zero_length_rows(mode, num_layers, bidirectional, dtype):
    """L = 0 gives zero outputs and a zero final state (ORT), even with an initial state."""
    seed = _seed("zero", mode, num_layers, bidirectional)
    rng = np.random.default_rng(seed)
    layer = make_layer(mode, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                       seed=seed)
    x = random_input(layer, rng, batch=4)
    hx = random_state(layer, rng, 4)
    lengths = np.array([0, T, 2, 0])
    got = layer(x, hx, lengths)
    assert_same_result(layer, got, run_reference(layer, x, hx, lengths))
    out, h = got
    np.testing.assert_array_equal(out[:, [0, 3]], 0)
    for s in (h if mode == "LSTM" else (h,)):
        np.testing.assert_array_equal(s[:, [0, 3]], 0)


# --------------------------------------------------------------------------------------------------
# options: nonlinearity, activations, clip, linear_before_reset, LSTM extras, proj_size
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_rnn_relu(num_layers, bidirectional, dtype):
    seed = _seed("relu", num_layers, bidirectional)
    rng = np.random.default_rng(seed)
    layer = make_layer("RNN", num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                       nonlinearity="relu", seed=seed)
    assert layer.nonlinearity == "relu"
    x = random_input(layer, rng)
    lengths = ref.random_lengths(rng, N, T)
    assert_same_result(layer, layer(x, None, lengths),
                       run_reference(layer, x, None, lengths, nonlinearity="relu"))


ONNX_NAMES = ["Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
              "HardSigmoid", "Elu", "Softsign", "Softplus"]
ALPHA_BETA = {"affine": ([0.7], [0.2]), "leakyrelu": ([0.3], []), "thresholdedrelu": ([0.2], []),
              "scaledtanh": ([1.3], [0.8]), "hardsigmoid": ([0.3], [0.45]), "elu": ([0.8], [])}
SLOTS = [("RNN", 0), ("GRU", 0), ("GRU", 1), ("LSTM", 0), ("LSTM", 1), ("LSTM", 2)]


def _activation_case(mode, activations, alpha, beta, bidirectional, dtype, key, **kw):
    seed = _seed(key)
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    layer = make_layer(mode, num_layers=2, bidirectional=bidirectional, dtype=dtype,
                       activations=activations, activation_alpha=alpha, activation_beta=beta,
                       seed=seed, **kw)
    expected_acts = ref.parse_activations(mode, activations, alpha, beta, D)
    assert [list(map(tuple, d)) for d in layer.activations] == \
        [[(n, pytest.approx(a), pytest.approx(b)) for n, a, b in d] for d in expected_acts]
    x = random_input(layer, rng)
    hx = random_state(layer, rng)
    lengths = ref.random_lengths(rng, N, T)
    expected = run_reference(layer, x, hx, lengths, activations=activations,
                             activation_alpha=alpha, activation_beta=beta)
    assert_same_result(layer, layer(x, hx, lengths), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode,slot", SLOTS, ids=[f"{m}-{s}" for m, s in SLOTS])
def test_softplus_of_large_values_is_the_value(mode, slot, dtype):
    """softplus(x) ~ x for large x, where log(1 + e^x) would overflow (float32 from 89, float64
    from 710): pre-activations and cell states up to 1000."""
    names = ref.default_activations(mode)
    names[slot] = "Softplus"
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    layer = make_layer(mode, input_size=1, hidden_size=1, activations=names, dtype=dtype)
    layer.load_state_dict({"weight_ih_l0": np.ones((gates, 1)), "weight_hh_l0": np.zeros((gates, 1)),
                           "bias_ih_l0": np.zeros(gates), "bias_hh_l0": np.zeros(gates)})
    x = np.array([-1000.0, -30.0, 0.5, 30.0, 88.0, 89.0, 100.0, 709.0, 711.0, 1000.0],
                 dtype)[:, None, None]
    y, _ = layer(x)
    assert np.all(np.isfinite(y))
    expected = run_reference(layer, x, None, None, activations=names)
    assert_same_result(layer, (y, _), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ONNX_NAMES)
@pytest.mark.parametrize("mode,slot", SLOTS, ids=[f"{m}-{s}" for m, s in SLOTS])
def test_activations(mode, slot, name, dtype):
    names = ref.default_activations(mode)
    names[slot] = name
    alpha, beta = ALPHA_BETA.get(name.lower(), (None, None))
    _activation_case(mode, names, alpha, beta, False, dtype, ("act", mode, slot, name))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", CELLS)
def test_activations_per_direction_and_consumption_order(mode, dtype):
    """Two sets (forward, reverse), mixed case, alpha/beta lists shorter than their users."""
    k = ref.NUM_ACTIVATIONS[mode]
    fwd = ["affine", "LEAKYRELU", "HardSigmoid"][:k]
    rev = ["ScaledTanh", "elu", "thresholdedrelu"][:k]
    n_alpha = sum(ref.ACTIVATION_ARGS[a.lower()][0] for a in fwd + rev) - 1
    alpha = [0.9, 0.25, 0.35, 1.1, 0.6][:n_alpha]
    _activation_case(mode, fwd + rev, alpha, [0.1, 0.4], True, dtype, ("order", mode))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", CELLS)
def test_activations_one_set_for_both_directions(mode, dtype):
    names = {"RNN": ["Softsign"], "GRU": ["HardSigmoid", "Softsign"],
             "LSTM": ["HardSigmoid", "Elu", "Softsign"]}[mode]
    alpha = [0.25, 0.7][:sum(ref.ACTIVATION_ARGS[a.lower()][0] for a in names)]
    _activation_case(mode, names, alpha or None, [0.45] if mode != "RNN" else None, True, dtype,
                     ("oneset", mode))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS)
def test_clip(mode, bidirectional, dtype):
    """Large weights and inputs so that clip=0.4 is active on many gate pre-activations."""
    seed = _seed("clip", mode, bidirectional)
    rng = np.random.default_rng(seed)
    cls = getattr(fastrnn, mode)
    layer = cls(I, H, 2, bidirectional=bidirectional, dtype=dtype, clip=0.4)
    assert layer.clip == pytest.approx(0.4)
    layer.load_state_dict(ref.random_state_dict(mode, I, H, 2, True, bidirectional, seed=seed,
                                                scale=1.5))
    x = random_input(layer, rng, scale=2.0)
    hx = random_state(layer, rng)
    lengths = ref.random_lengths(rng, N, T)
    assert_same_result(layer, layer(x, hx, lengths), run_reference(layer, x, hx, lengths))
    # and clip really changes the result here
    unclipped = run_reference(layer, x, hx, lengths, clip=None)
    assert not np.allclose(unclipped[0], layer(x, hx, lengths)[0], atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("lbr", [False, True], ids=["lbr0", "lbr1"])
def test_gru_linear_before_reset(lbr, bidirectional, with_lengths, dtype):
    seed = _seed("lbr", lbr, bidirectional, with_lengths)
    rng = np.random.default_rng(seed)
    layer = make_layer("GRU", num_layers=2, bidirectional=bidirectional, dtype=dtype,
                       linear_before_reset=lbr, seed=seed)
    assert layer.linear_before_reset is lbr
    x = random_input(layer, rng)
    hx = random_state(layer, rng)
    lengths = ref.random_lengths(rng, N, T) if with_lengths else None
    assert_same_result(layer, layer(x, hx, lengths), run_reference(layer, x, hx, lengths))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("proj", [0, P], ids=["noproj", "proj"])
@pytest.mark.parametrize("input_forget", [False, True], ids=["if0", "if1"])
@pytest.mark.parametrize("peepholes", [False, True], ids=["nopeep", "peep"])
def test_lstm_options(peepholes, input_forget, proj, bidirectional, dtype):
    seed = _seed("lstm", peepholes, input_forget, proj, bidirectional)
    rng = np.random.default_rng(seed)
    layer = make_layer("LSTM", num_layers=2, bidirectional=bidirectional, dtype=dtype,
                       proj_size=proj, peepholes=peepholes, input_forget=input_forget, seed=seed)
    assert (layer.peepholes, layer.input_forget, layer.proj_size) == (peepholes, input_forget, proj)
    x = random_input(layer, rng)
    hx = random_state(layer, rng)
    lengths = ref.random_lengths(rng, N, T, allow_zero=True)
    assert_same_result(layer, layer(x, hx, lengths), run_reference(layer, x, hx, lengths))


FUSED_VARIANTS = {
    "lstm": ("LSTM", {}), "peepholes": ("LSTM", dict(peepholes=True)),
    "input-forget": ("LSTM", dict(input_forget=True, peepholes=True)),
    "activations-clip": ("LSTM", dict(activations=["HardSigmoid", "Softsign", "Elu"],
                                      activation_alpha=[0.3, 0.8], activation_beta=[0.45],
                                      clip=2.0)),
    "rnn": ("RNN", {}),
}


@pytest.mark.parametrize("batch,threads", [(11, 1), (19, 2)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(FUSED_VARIANTS))
@pytest.mark.parametrize("hidden", [20, 100])
def test_fused_batches_of_odd_hidden_sizes(hidden, variant, dtype, batch, threads):
    """Batches of 8+ rows a thread run one product per step over [x_t, h] (LSTM without
    projection, RNN), its gates one after another, padded to whole panels only at the end
    (H = 20: LSTM's 80 columns in 3 panels, gate boundaries inside them; H = 100: 400 in 13):
    every LSTM option against the reference, uneven lengths, a given state."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two numba threads")
    mode, kw = FUSED_VARIANTS[variant]
    seed = _seed("fused", hidden, variant, batch)
    rng = np.random.default_rng(seed)
    layer = make_layer(mode, hidden_size=hidden, dtype=dtype, seed=seed, **kw)
    x = random_input(layer, rng, 30, batch)
    hx = random_state(layer, rng, batch)
    lengths = ref.random_lengths(rng, batch, 30, allow_zero=True)
    assert layer._stack.layers[0][0].route(30, batch, threads)[0] == FUSED
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        got = layer(x, hx, lengths)
    finally:
        fastrnn.set_num_threads(before)
    extra = {k: kw[k] for k in ("activations", "activation_alpha", "activation_beta") if k in kw}
    assert_same_result(layer, got, run_reference(layer, x, hx, lengths, **extra))


FLAT_VARIANTS = {
    "lstm": ("LSTM", {}), "peepholes-clip": ("LSTM", dict(peepholes=True, clip=2.0)),
    "input-forget": ("LSTM", dict(input_forget=True)),
    "activations": ("LSTM", dict(activations=["HardSigmoid", "Softsign", "Elu"],
                                 activation_alpha=[0.3, 0.8], activation_beta=[0.45])),
    "gru": ("GRU", {}), "gru-activations": ("GRU", dict(activations=["HardSigmoid", "Softsign"],
                                                        activation_alpha=[0.3],
                                                        activation_beta=[0.45])),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(FLAT_VARIANTS))
@pytest.mark.parametrize("hidden", [20, 100])
def test_gates_laid_flat_for_hidden_sizes_of_part_panels(hidden, variant, dtype, threads):
    """Where every unit of a step runs at once (one thread, both directions at once on two, a
    stream), an LSTM or GRU (linear_before_reset) whose H is not whole panels lays its gates one
    after another, padded to whole panels once (layout.C_FLAT; H = 100: LSTM 416 columns, not
    4 x 128): one row, both directions, two layers, a given state, a short length, and a
    stream of two rows, against the reference (float16 weights: tests/test_weight_dtype.py,
    H = 70)."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two numba threads")
    mode, kw = FLAT_VARIANTS[variant]
    seed = _seed("flat", hidden, variant)
    rng = np.random.default_rng(seed)
    layer = make_layer(mode, hidden_size=hidden, num_layers=2, bidirectional=True, dtype=dtype,
                       seed=seed, **kw)
    assert all(d._whole_steps()[2][C_FLAT] == 1 for pair in layer._stack.layers for d in pair)
    x = random_input(layer, rng, 40, 1)
    hx = random_state(layer, rng, 1)
    lengths = np.array([29])
    extra = {k: kw[k] for k in ("activations", "activation_alpha", "activation_beta") if k in kw}
    single = make_layer(mode, hidden_size=hidden, dtype=dtype, seed=seed, **kw)
    xs = random_input(single, rng, 12, 2)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        got = layer(x, hx, lengths)
        stream = single.stream(2)
        steps = np.stack([np.array(stream.step(xs[t]), copy=True) for t in range(12)])
    finally:
        fastrnn.set_num_threads(before)
    assert_same_result(layer, got, run_reference(layer, x, hx, lengths, **extra))
    assert_close(steps, run_reference(single, xs, **extra)[0], dtype, what="stream")


@pytest.mark.parametrize("make", [
    lambda: fastrnn.LSTM(8, 128), lambda: fastrnn.LSTM(8, 100, proj_size=40),
    lambda: fastrnn.GRU(8, 100, linear_before_reset=False), lambda: fastrnn.RNN(8, 100),
    lambda: fastrnn.LSTM(8, 300)])
def test_gates_stay_per_gate_where_flat_gains_nothing(make):
    """Whole panels (H = 128), the two-product steps (an LSTM projection, GRU
    linear_before_reset=0's n gate after r * h), an RNN's one gate, or little to gain (LSTM
    H = 300: 1216 columns against 1280): every gate keeps its own panels."""
    assert make()._stack.layers[0][0]._whole_steps()[2][C_FLAT] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_lstm_proj_size(num_layers, bidirectional, batch_first, dtype):
    seed = _seed("proj", num_layers, bidirectional, batch_first)
    rng = np.random.default_rng(seed)
    layer = make_layer("LSTM", num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first, dtype=dtype, proj_size=P, seed=seed)
    x = random_input(layer, rng)
    hx = random_state(layer, rng)
    lengths = ref.random_lengths(rng, N, T)
    out, (h_n, c_n) = layer(x, hx, lengths)
    D = 2 if bidirectional else 1
    assert out.shape[-1] == D * P and h_n.shape == (num_layers * D, N, P)
    assert c_n.shape == (num_layers * D, N, H)
    assert_same_result(layer, (out, (h_n, c_n)), run_reference(layer, x, hx, lengths))


# --------------------------------------------------------------------------------------------------
# input forms: unbatched, padding, no in-place changes, non-contiguous
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "h0"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS + ["LSTM-proj"])
def test_unbatched(mode, bidirectional, with_state, dtype):
    seed = _seed("unbatched", mode, bidirectional, with_state)
    rng = np.random.default_rng(seed)
    cell = mode.split("-")[0]
    for batch_first in (False, True):  # batch_first does not apply to unbatched input
        layer = make_layer(cell, num_layers=2, bidirectional=bidirectional, dtype=dtype,
                           batch_first=batch_first, proj_size=P if mode == "LSTM-proj" else 0,
                           seed=seed)
        x = rng.standard_normal((T, I)).astype(dtype)
        hx = random_state(layer, rng, unbatched=True) if with_state else None
        got = layer(x, hx)
        D = 2 if bidirectional else 1
        assert got[0].shape == (T, D * (layer.proj_size or H))
        assert_same_result(layer, got, run_reference(layer, x, hx))


@pytest.mark.parametrize("pad", ["junk", "huge", "nan"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS + ["LSTM-proj"])
def test_padding_values_never_matter(mode, bidirectional, dtype, pad):
    seed = _seed("pad", mode, bidirectional)
    rng = np.random.default_rng(seed)
    layer = make_layer(mode.split("-")[0], num_layers=2, bidirectional=bidirectional,
                       dtype=dtype, proj_size=P if mode == "LSTM-proj" else 0, seed=seed)
    x = random_input(layer, rng, batch=4)
    hx = random_state(layer, rng, 4)
    lengths = np.array([T, 2, 0, 5])
    zero = ref.pad_with(x, lengths, 0.0)
    if pad == "junk":
        padded = np.where(ref.pad_with(np.zeros_like(x), lengths, 1.0) > 0,
                          rng.standard_normal(x.shape) * 10, x).astype(dtype)
    else:
        padded = ref.pad_with(x, lengths, {"huge": 1e30, "nan": np.nan}[pad])
    a = layer(zero, hx, lengths)
    b = layer(padded, hx, lengths)
    np.testing.assert_array_equal(a[0], b[0])
    for sa, sb in zip(*(s if mode.startswith("LSTM") else (s,) for s in (a[1], b[1]))):
        np.testing.assert_array_equal(sa, sb)
    assert_same_result(layer, b, run_reference(layer, zero, hx, lengths))


@pytest.mark.parametrize("mode", CELLS)
def test_inputs_not_modified(mode):
    rng = np.random.default_rng(1)
    layer = make_layer(mode, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    x = random_input(layer, rng)
    hx = random_state(layer, rng)
    lengths = np.array([T, 3, 1])
    copies = [x.copy(), lengths.copy()] + [a.copy() for a in (hx if mode == "LSTM" else (hx,))]
    sd = layer.state_dict()
    layer(x, hx, lengths)
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(lengths, copies[1])
    for a, b in zip(hx if mode == "LSTM" else (hx,), copies[2:]):
        np.testing.assert_array_equal(a, b)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_outputs_do_not_alias_between_calls():
    layer = make_layer("GRU", dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((T, N, I))
    out1, h1 = layer(x)
    keep = out1.copy(), h1.copy()
    layer(2 * x)
    np.testing.assert_array_equal(out1, keep[0])
    np.testing.assert_array_equal(h1, keep[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", CELLS)
def test_non_contiguous_inputs(mode, dtype):
    rng = np.random.default_rng(2)
    layer = make_layer(mode, num_layers=2, bidirectional=True, dtype=dtype, seed=2)
    x = random_input(layer, rng)
    hx = random_state(layer, rng)
    lengths = np.array([T, 3, 1])
    expected = layer(x, hx, lengths)

    big = np.zeros((2 * T, N, 2 * I), dtype)
    big[::2, :, ::2] = x
    variants = [big[::2, :, ::2], np.asfortranarray(x), x.transpose(1, 0, 2).copy().transpose(1, 0, 2)]
    hstates = hx if mode == "LSTM" else (hx,)
    strided = tuple(np.repeat(a, 2, axis=-1)[..., ::2] for a in hstates)
    strided_hx = strided if mode == "LSTM" else strided[0]
    strided_lengths = np.repeat(lengths, 2)[::2]
    assert not strided_lengths.flags.c_contiguous
    for xv in variants:
        got = layer(xv, strided_hx, strided_lengths)
        np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=0)
        for a, b in zip(*(s if mode == "LSTM" else (s,) for s in (got[1], expected[1]))):
            np.testing.assert_allclose(a, b, rtol=0, atol=0)


def test_other_float_input_dtype_is_cast():
    """A float64 input to a float32 layer (and vice versa) runs in the layer's dtype."""
    rng = np.random.default_rng(5)
    for dtype, other in ((np.float32, np.float64), (np.float64, np.float32)):
        layer = make_layer("LSTM", dtype=dtype)
        x = rng.standard_normal((T, N, I)).astype(other)
        out, (h, c) = layer(x)
        assert out.dtype == h.dtype == c.dtype == np.dtype(dtype)
        assert_same_result(layer, (out, (h, c)), run_reference(layer, x))


def test_lengths_accepts_lists_and_int32():
    layer = make_layer("GRU", dtype=np.float64, bidirectional=True)
    x = np.random.default_rng(3).standard_normal((T, N, I))
    a = layer(x, None, np.array([T, 2, 4], dtype=np.int64))
    for lengths in ([T, 2, 4], np.array([T, 2, 4], dtype=np.int32), (T, 2, 4)):
        b = layer(x, None, lengths)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------------------
# parameters, config, attributes
# --------------------------------------------------------------------------------------------------
CONFIGS = [
    ("RNN", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(nonlinearity="relu", bias=False)),
    ("GRU", dict(num_layers=3, linear_before_reset=False)),
    ("GRU", dict(bidirectional=True, clip=2.0, activations=["HardSigmoid", "Tanh"],
                 activation_alpha=[0.3], activation_beta=[0.4])),
    ("LSTM", dict(num_layers=2, proj_size=2, bidirectional=True)),
    ("LSTM", dict(peepholes=True, input_forget=True, bias=False, batch_first=True)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode,kw", CONFIGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CONFIGS)])
def test_state_dict_round_trip(mode, kw, dtype):
    cls = getattr(fastrnn, mode)
    a = cls(I, H, dtype=dtype, seed=1, **kw)
    b = cls(I, H, dtype=dtype, seed=2, **kw)
    sd = a.state_dict()
    expected_shapes = ref.state_dict_shapes(
        mode, I, H, kw.get("num_layers", 1), kw.get("bias", True), kw.get("bidirectional", False),
        kw.get("proj_size", 0), kw.get("peepholes", False))
    assert {k: v.shape for k, v in sd.items()} == expected_shapes
    assert all(v.dtype == np.dtype(dtype) for v in sd.values())
    assert all(np.all(v != 0) for v in sd.values()), "parameters should be initialised"
    x = np.random.default_rng(0).standard_normal((N, T, I) if kw.get("batch_first") else (T, N, I))
    x = x.astype(dtype)
    assert not np.allclose(a(x)[0], b(x)[0])
    b.load_state_dict(sd)
    ra, rb = a(x), b(x)
    np.testing.assert_array_equal(ra[0], rb[0])
    # state_dict hands out copies
    for v in sd.values():
        v[...] = 0
    np.testing.assert_array_equal(a(x)[0], ra[0])
    # the reference agrees on what the state dict means
    assert_same_result(a, ra, run_reference(a, x, activations=kw.get("activations"),
                                            activation_alpha=kw.get("activation_alpha"),
                                            activation_beta=kw.get("activation_beta")))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_load_state_dict_casts_to_layer_dtype(dtype):
    other = np.float64 if dtype == np.float32 else np.float32
    layer = fastrnn.LSTM(I, H, 2, dtype=dtype)
    sd = ref.random_state_dict("LSTM", I, H, 2, seed=4, dtype=other)
    layer.load_state_dict(sd)
    for k, v in layer.state_dict().items():
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(v, sd[k].astype(dtype))


def test_load_state_dict_errors():
    layer = fastrnn.LSTM(I, H, 2, bidirectional=True, dtype=np.float64)
    good = layer.state_dict()
    missing = dict(good)
    del missing["weight_hh_l1_reverse"]
    with pytest.raises(ArgumentError):
        layer.load_state_dict(missing)
    with pytest.raises(ArgumentError):
        layer.load_state_dict({**good, "weight_hr_l0": np.zeros((2, H))})
    bad = dict(good)
    bad["weight_ih_l1"] = np.zeros((4 * H, I))  # layer 1 takes 2*H inputs
    with pytest.raises(ShapeError):
        layer.load_state_dict(bad)
    bad = dict(good)
    bad["bias_hh_l0"] = np.zeros((4 * H, 1))
    with pytest.raises(ShapeError):
        layer.load_state_dict(bad)
    # failed loads leave the layer as it was
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, good[k])
    with pytest.raises(ArgumentError, match="unexpected parameters"):
        layer.load_state_dict({**good, 0: good["bias_ih_l0"], "step": 1})  # keys of mixed types
    # strict=False: a partial update keeps the rest, unknown keys of any type ignored
    new = np.full((4 * H,), 0.5)
    layer.load_state_dict({"bias_ih_l0": new, 0: new, ("a",): new}, strict=False)
    sd = layer.state_dict()
    np.testing.assert_array_equal(sd["bias_ih_l0"], new)
    np.testing.assert_array_equal(sd["weight_ih_l0"], good["weight_ih_l0"])


def test_seed_is_deterministic():
    a = fastrnn.GRU(I, H, 2, seed=7).state_dict()
    b = fastrnn.GRU(I, H, 2, seed=7).state_dict()
    c = fastrnn.GRU(I, H, 2, seed=8).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    bound = 1 / np.sqrt(H)
    assert all(np.all(np.abs(v) <= bound + 1e-7) for v in a.values())


@pytest.mark.parametrize("mode,kw", CONFIGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CONFIGS)])
def test_config_round_trip(mode, kw):
    layer = getattr(fastrnn, mode)(I, H, dtype=np.float64, seed=3, **kw)
    cfg = layer.config()
    assert cfg["mode"] == mode
    import json
    cfg = json.loads(json.dumps(cfg))
    again = fastrnn.layer_from_config(cfg)
    assert type(again) is type(layer)
    assert again.config() == layer.config()
    again.load_state_dict(layer.state_dict())
    x = np.random.default_rng(0).standard_normal((N, T, I) if kw.get("batch_first") else (T, N, I))
    np.testing.assert_array_equal(again(x)[0], layer(x)[0])


def test_attributes():
    lstm = fastrnn.LSTM(I, H, 2, bias=False, batch_first=True, bidirectional=True, proj_size=P,
                        dtype=np.float64, peepholes=True, input_forget=True, clip=3.0)
    assert (lstm.mode, lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
            lstm.batch_first, lstm.bidirectional, lstm.proj_size, lstm.dtype, lstm.peepholes,
            lstm.input_forget, lstm.clip) == \
        ("LSTM", I, H, 2, False, True, True, P, np.dtype(np.float64), True, True, 3.0)
    assert [list(d) for d in lstm.activations] == [[("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0),
                                                    ("tanh", 0.0, 0.0)]] * 2
    rnn = fastrnn.RNN(I, H, nonlinearity="relu")
    assert rnn.mode == "RNN" and rnn.nonlinearity == "relu" and rnn.dtype == np.dtype(np.float32)
    assert rnn.clip is None and rnn.proj_size == 0
    gru = fastrnn.GRU(I, H)
    assert gru.mode == "GRU" and gru.linear_before_reset is True
    assert [list(d) for d in gru.activations] == [[("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0)]]


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def layers():
    return {m: make_layer(m, num_layers=2, bidirectional=True, dtype=np.float32) for m in CELLS}


@pytest.mark.parametrize("mode", CELLS)
def test_input_shape_errors(layers, mode):
    layer = layers[mode]
    for bad in (np.zeros(I, np.float32), np.zeros((1, T, N, I), np.float32),
                np.zeros((T, N, I + 1), np.float32), np.zeros((T, I - 1), np.float32),
                np.zeros((), np.float32), np.zeros((0, N, I), np.float32),
                np.zeros((T, 0, I), np.float32), np.zeros((0, I), np.float32)):
        with pytest.raises(ShapeError):
            layer(bad)


def _flat(result):
    """A layer call's arrays: output, then h_n (and c_n)."""
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("mode", CELLS)
def test_repeated_calls_keep_their_results(layers, mode):
    """Calls share per-shape memos (full lengths, scratch sizes) and workspaces: results of one
    call stay intact after later calls of the same and other shapes, and calls repeat exactly."""
    layer = layers[mode]
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(shape).astype(np.float32)
          for shape in ((T, N, I), (T + 3, N, I), (T, N + 2, I), (T, N, I))]
    first = [layer(x) for x in xs]
    kept = [copy.deepcopy(r) for r in first]
    again = [layer(x) for x in xs]
    for a, b, c in zip(first, kept, again):
        for got, want, rerun in zip(_flat(a), _flat(b), _flat(c)):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(rerun, want)


@pytest.mark.parametrize("bad_dtype", [np.int64, np.int32, np.complex128, np.bool_, object])
@pytest.mark.parametrize("mode", CELLS)
def test_input_dtype_errors(layers, mode, bad_dtype):
    layer = layers[mode]
    x = np.ones((T, N, I)).astype(bad_dtype)
    with pytest.raises(DTypeError):
        layer(x)


@pytest.mark.parametrize("mode", CELLS)
def test_state_errors(layers, mode):
    layer = layers[mode]
    x = np.zeros((T, N, I), np.float32)
    D, L = 2, 2
    good_h = np.zeros((L * D, N, H), np.float32)
    good_c = np.zeros((L * D, N, H), np.float32)
    bad_shapes = [(L * D, N + 1, H), (L * D - 1, N, H), (L * D, N, H + 1), (N, L * D, H),
                  (L * D, H)]
    for shape in bad_shapes:
        bad = np.zeros(shape, np.float32)
        with pytest.raises(ShapeError):
            layer(x, (bad, good_c) if mode == "LSTM" else bad)
        if mode == "LSTM":
            with pytest.raises(ShapeError):
                layer(x, (good_h, bad))
    with pytest.raises(DTypeError):
        h = good_h.astype(np.complex64)
        layer(x, (h, good_c) if mode == "LSTM" else h)
    if mode == "LSTM":
        with pytest.raises(ArgumentError):
            layer(x, good_h)  # LSTM needs (h0, c0)
    # unbatched input takes unbatched state
    with pytest.raises(ShapeError):
        layer(x[:, 0], (good_h, good_c) if mode == "LSTM" else good_h)


@pytest.mark.parametrize("mode", CELLS)
def test_lengths_errors(layers, mode):
    layer = layers[mode]
    x = np.zeros((T, N, I), np.float32)
    for bad in ([T + 1, 1, 1], [-1, 2, 2]):
        with pytest.raises(ArgumentError):
            layer(x, None, np.array(bad))
    for bad in ([T, T], [T] * (N + 1), np.full((N, 1), T)):
        with pytest.raises(ShapeError):
            layer(x, None, np.array(bad))
    with pytest.raises(DTypeError):
        layer(x, None, np.array([2.5, 1.0, 3.0]))


@pytest.mark.parametrize("mode", CELLS)
def test_lengths_past_int64_are_reported_as_given(layers, mode):
    """Lengths are range-checked in their own dtype: a cast to int64 first would wrap them."""
    x = np.zeros((T, N, I), np.float32)
    with pytest.raises(ArgumentError, match=r"1e\+30"):
        layers[mode](x, None, [1e30, 1.0, 1.0])
    with pytest.raises(ArgumentError, match="18446744073709551615"):
        layers[mode](x, None, np.array([2**64 - 1, 1, 1], np.uint64))
    with pytest.raises(DTypeError):
        layers[mode](x, None, [np.nan, 1.0, 1.0])
    with pytest.raises(DTypeError):
        layers[mode](x, None, np.array([True, True, False]))


def test_lstm_state_needs_both_arrays():
    """torch refuses (h0, None) too: a missing c0 is not silently zero."""
    layer = fastrnn.LSTM(I, H, seed=0)
    x = np.zeros((T, N, I), np.float32)
    h = np.zeros((1, N, H), np.float32)
    for hx in ((h, None), (None, h), (h,), (h, h, h)):
        with pytest.raises(ArgumentError, match="h0, c0"):
            layer(x, hx)


@pytest.mark.parametrize("bad", [1.5, -1, "x", True, [1, 2]])
def test_seeds_are_checked(bad):
    for make in (lambda: fastrnn.GRU(I, H, seed=bad), lambda: fastrnn.LSTM(I, H, seed=bad),
                 lambda: fastrnn.Embedding(4, 3, seed=bad), lambda: fastrnn.Linear(4, 3, seed=bad)):
        with pytest.raises(ArgumentError, match="seed"):
            make()
    with pytest.raises(ArgumentError, match="rng"):
        fastrnn.heads.sample_token([1.0, 2.0], rng=bad)


@pytest.mark.parametrize("logits", ["ab", [1j, 2j], [True, False], [[1.0], [2.0, 3.0]]])
def test_sample_token_takes_real_logits(logits):
    with pytest.raises((DTypeError, ShapeError)):
        fastrnn.heads.sample_token(logits)


def test_seeds_take_ints_and_numpy_generators():
    a = fastrnn.GRU(I, H, seed=np.int64(3)).state_dict()
    b = fastrnn.GRU(I, H, seed=np.random.default_rng(3)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert fastrnn.heads.sample_token([0.0, 50.0], rng=np.random.default_rng(0)) == 1


@pytest.mark.parametrize("kw", [dict(activations=["LeakyRelu"] * 3, activation_alpha=["x"]),
                                dict(activations=["LeakyRelu"] * 3, activation_alpha=[np.nan]),
                                dict(activations=["LeakyRelu"] * 3, activation_alpha=0.1),
                                dict(activations=["Affine"] * 3, activation_beta=[True]),
                                dict(activations="Tanh"),
                                dict(activations=5)])
def test_activation_lists_are_checked(kw):
    with pytest.raises(ArgumentError):
        fastrnn.GRU(I, H, **kw)


@pytest.mark.parametrize("kw", [
    dict(activation_alpha=np.array([0.1, 0.2])),   # an array without activations (its truth
    dict(activation_beta=np.array([0.1, 0.2])),    # value was numpy's ValueError)
    dict(activations=["LeakyRelu"] * 3, activation_alpha=[10**400]),   # past float's range
    dict(activations=["Affine"] * 3, activation_beta=[-10**400]),
    dict(clip=10**400)])
def test_numbers_beyond_float_and_arrays_are_typed_errors(kw):
    with pytest.raises(ArgumentError):
        fastrnn.LSTM(I, H, **kw)


def test_activation_parameters_take_arrays_and_numpy_numbers():
    a = fastrnn.GRU(I, H, activations=["HardSigmoid", "Tanh"], activation_alpha=np.array([0.3]),
                    clip=np.int64(2), seed=0)
    b = fastrnn.GRU(I, H, activations=["HardSigmoid", "Tanh"], activation_alpha=[0.3], clip=2.0,
                    seed=0)
    x = np.ones((T, N, I), np.float32)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize("args,kw", [
    ((I, 2**62), {}), ((2**62, H), {}), ((I, 2**64), {}), ((I, 10**30), {}),
    ((I, H), dict(num_layers=2**62)), ((I, H), dict(num_layers=(1 << 16) + 1)),
    ((I, 2**63), dict(proj_size=2**62))])
def test_sizes_that_could_never_be_allocated_are_refused_at_once(args, kw):
    """Sizes whose parameters exceed 2^40 elements, or more than 2^16 layers, are refused before
    anything is allocated (numpy's errors past 2^63 bytes are untyped; 2^62 layers looped for
    ever); smaller sizes that memory cannot hold raise MemoryError as they are allocated."""
    with pytest.raises(ArgumentError, match="at most|2\\^40"):
        fastrnn.LSTM(*args, **kw)


def test_torch_tensors_with_grad_and_bfloat16_are_read():
    """Tensors that numpy cannot take directly: read detached; bfloat16 widened to float32."""
    torch = pytest.importorskip("torch")
    layer = fastrnn.LSTM(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, N, I)).astype(np.float32)
    expected = layer(x)[0]
    np.testing.assert_array_equal(layer(torch.tensor(x, requires_grad=True))[0], expected)
    wide = torch.tensor(x).to(torch.bfloat16)
    np.testing.assert_array_equal(layer(wide)[0], layer(wide.float().numpy())[0])
    state = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    np.testing.assert_array_equal(fastrnn.LSTM(I, H).load_state_dict(state)(x)[0], expected)
    with pytest.raises(DTypeError):
        layer(object())


def test_dtype_none_is_float32_as_in_torch():
    """numpy reads dtype None as float64; torch's None is its default, float32."""
    for make in (lambda: fastrnn.GRU(I, H, dtype=None), lambda: fastrnn.Linear(H, 2, dtype=None),
                 lambda: fastrnn.Embedding(5, I, dtype=None)):
        assert make().dtype == np.float32


def test_torch_meta_tensors_are_a_dtype_error():
    """A meta tensor (deferred initialisation) has no data to read: a typed error, not torch's
    NotImplementedError."""
    torch = pytest.importorskip("torch")
    layer = fastrnn.LSTM(I, H, seed=0)
    meta = torch.nn.LSTM(I, H, device="meta").state_dict()
    with pytest.raises(DTypeError, match="numpy cannot read"):
        layer.load_state_dict(meta)
    with pytest.raises(DTypeError, match="numpy cannot read"):
        layer(torch.empty((T, N, I), device="meta"))
    with pytest.raises(DTypeError, match="numpy cannot read"):
        layer(np.zeros((T, N, I), np.float32), lengths=torch.empty(N, device="meta"))


def test_an_infinite_clip_is_no_clip_and_saves(tmp_path):
    """clip=inf means no clip (ONNX's default): the layer stores None, so its JSON config saves."""
    x = np.random.default_rng(0).standard_normal((T, N, I)).astype(np.float32)
    unclipped = fastrnn.LSTM(I, H, seed=0)
    layer = fastrnn.LSTM(I, H, seed=0, clip=np.inf)
    assert layer.clip is None and layer.config()["clip"] is None
    fastrnn.save(layer, tmp_path / "l.frnn")
    back = fastrnn.load(tmp_path / "l.frnn")
    for got, want in zip(_outputs(back(x)), _outputs(unclipped(x))):
        np.testing.assert_array_equal(got, want)


def _outputs(result):
    y, state = result
    return [y, *state] if isinstance(state, tuple) else [y, state]


CTOR_ERRORS = [
    ("RNN", (0, H), {}, ArgumentError),
    ("RNN", (I, 0), {}, ArgumentError),
    ("GRU", (I, -3), {}, ArgumentError),
    ("GRU", (I, 4.0), {}, ArgumentError),
    ("LSTM", (I, H, 0), {}, ArgumentError),
    ("RNN", (I, H), dict(nonlinearity="sigmoid"), ArgumentError),
    ("RNN", (I, H), dict(nonlinearity=np.array(["tanh", "relu"])), ArgumentError),
    ("GRU", (I, H), dict(dtype="(2,3"), DTypeError),  # numpy parses it as Python: SyntaxError
    ("GRU", (I, H), dict(dtype="(-1,)f4"), DTypeError),  # numpy's ValueError
    ("LSTM", (I, H), dict(weight_dtype="f4,,f4"), ArgumentError),
    ("LSTM", (I, H), dict(proj_size=H), ArgumentError),
    ("LSTM", (I, H), dict(proj_size=H + 1), ArgumentError),
    ("LSTM", (I, H), dict(proj_size=-1), ArgumentError),
    ("GRU", (I, H), dict(dtype=np.int32), DTypeError),
    ("GRU", (I, H), dict(dtype=np.float16), DTypeError),
    ("LSTM", (I, H), dict(dtype=np.complex128), DTypeError),
    ("RNN", (I, H), dict(clip=0.0), ArgumentError),
    ("RNN", (I, H), dict(clip=-1.0), ArgumentError),
    ("GRU", (I, H), dict(activations=["Sigmoid", "Gelu"]), ArgumentError),
    ("GRU", (I, H), dict(activations=["Sigmoid"]), ArgumentError),
    ("LSTM", (I, H), dict(activations=["Sigmoid", "Tanh"]), ArgumentError),
    ("LSTM", (I, H), dict(bidirectional=True, activations=["Sigmoid", "Tanh", "Tanh"] * 3),
     ArgumentError),
]


@pytest.mark.parametrize("mode,args,kw,error", CTOR_ERRORS,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(CTOR_ERRORS)])
def test_constructor_errors(mode, args, kw, error):
    with pytest.raises(error):
        getattr(fastrnn, mode)(*args, **kw)


def test_errors_are_value_or_type_errors():
    with pytest.raises(ValueError):
        fastrnn.GRU(I, 0)
    with pytest.raises(TypeError):
        fastrnn.GRU(I, H)(np.zeros((T, N, I), np.int64))
    with pytest.raises(FastRNNError):
        fastrnn.GRU(I, H)(np.zeros((T, N, I + 1), np.float32))


@pytest.mark.parametrize("mode", CELLS)
def test_bidirectional_cannot_stream(layers, mode):
    with pytest.raises(UnsupportedError):
        layers[mode].stream(batch_size=1)


def test_linear_apply_into_refuses_out_overlapping_x():
    """The kernel writes a row of out before it reads that row of x: an out sharing x's memory
    (the same array, or a view into it) is refused instead of silently summing garbage."""
    lin = fastrnn.Linear(4, 4, seed=0)
    buf = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    want = lin(buf)
    with pytest.raises(ArgumentError, match="share memory"):
        lin.apply_into(buf, buf)
    rows = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    with pytest.raises(ArgumentError, match="share memory"):
        lin.apply_into(rows[:3], rows[1:])
    out = np.empty_like(buf)
    np.testing.assert_array_equal(lin.apply_into(buf, out), want)


@pytest.mark.parametrize("make", [lambda: fastrnn.LSTM(I, H, 2, bidirectional=True, seed=0),
                                  lambda: fastrnn.GRU(I, H, seed=0),
                                  lambda: fastrnn.RNN(I, H, seed=0, clip=2.0)])
def test_layers_pickle_after_calls(make):
    """A called layer holds compiled functions, which cannot be pickled: pickling leaves them out
    and the copy finds them again (multiprocessing sends layers by pickle)."""
    import pickle
    layer = make()
    x = np.random.default_rng(0).standard_normal((T, N, I)).astype(np.float32)
    want = _outputs(layer(x))
    back = pickle.loads(pickle.dumps(layer))
    for got, expected in zip(_outputs(back(x)), want):
        np.testing.assert_array_equal(got, expected)
    assert _outputs(layer(x))[0].shape == want[0].shape  # the original still runs
