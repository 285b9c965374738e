"""Property-based tests (hypothesis) of state and shape invariants of fastrnn's layers.

- streaming one step at a time equals the full-sequence call for unidirectional stacks, from a zero or
  a given state, and the stream's final state equals h_n (c_n);
- values past a row's length never change any result;
- batch rows are independent: each row alone gives the numbers it gets inside the batch.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
try:
    from tests import reference as ref
except ImportError:  # tests/ is not a package; pytest's default import mode puts tests/ on sys.path
    import reference as ref

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


@st.composite
def configs(draw, bidirectional=None):
    mode = draw(st.sampled_from(["RNN", "GRU", "LSTM"]))
    hidden = draw(st.integers(1, 5))
    cfg = dict(
        mode=mode,
        input_size=draw(st.integers(1, 4)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        bidirectional=draw(st.booleans()) if bidirectional is None else bidirectional,
        dtype=draw(st.sampled_from([np.float32, np.float64])),
    )
    if mode == "LSTM":
        cfg["proj_size"] = draw(st.integers(0, hidden - 1))
        cfg["peepholes"] = draw(st.booleans())
    if mode == "GRU":
        cfg["linear_before_reset"] = draw(st.booleans())
    if mode == "RNN":
        cfg["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    return cfg


def build(cfg, seed):
    cfg = dict(cfg)
    mode = cfg.pop("mode")
    layer = getattr(fastrnn, mode)(cfg.pop("input_size"), cfg.pop("hidden_size"), **cfg)
    sd = ref.random_state_dict(mode, layer.input_size, layer.hidden_size, layer.num_layers,
                               layer.bias, layer.bidirectional, layer.proj_size,
                               getattr(layer, "peepholes", False), seed=seed)
    return layer.load_state_dict(sd) or layer


def states(layer, h, c=None):
    return (h, c) if layer.mode == "LSTM" else h


def flat_state(layer, s):
    return list(s) if layer.mode == "LSTM" else [s]


def random_hx(layer, rng, batch):
    lead = layer.num_layers * (2 if layer.bidirectional else 1)
    h = rng.standard_normal((lead, batch, layer.proj_size or layer.hidden_size))
    c = rng.standard_normal((lead, batch, layer.hidden_size))
    return states(layer, h, c)


@SETTINGS
@given(cfg=configs(bidirectional=False), steps=st.integers(1, 7), batch=st.integers(1, 3),
       seed=st.integers(0, 2**16), with_state=st.booleans())
def test_streaming_equals_full_sequence(cfg, steps, batch, seed, with_state):
    layer = build(cfg, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, batch, layer.input_size)).astype(layer.dtype)
    hx = random_hx(layer, rng, batch) if with_state else None
    out, final = layer(x, hx)
    stream = layer.stream(batch_size=batch)
    if hx is not None:
        stream.state = hx
    tol = TOL[layer.dtype]
    for t in range(steps):
        y_t = np.array(stream.step(x[t]), copy=True)
        assert y_t.shape == (batch, layer.proj_size or layer.hidden_size)
        np.testing.assert_allclose(y_t, out[t], rtol=tol, atol=tol)
    for got, want in zip(flat_state(layer, stream.state), flat_state(layer, final)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # reset goes back to the zero state
    stream.reset()
    np.testing.assert_allclose(stream.step(x[0]), layer(x[:1])[0][0], rtol=tol, atol=tol)


@SETTINGS
@given(cfg=configs(), steps=st.integers(1, 7), batch=st.integers(1, 4),
       seed=st.integers(0, 2**16), pad=st.sampled_from([0.0, 1e6, -3.5, np.nan, np.inf]),
       with_state=st.booleans(), data=st.data())
def test_padding_never_changes_results(cfg, steps, batch, seed, pad, with_state, data):
    layer = build(cfg, seed)
    rng = np.random.default_rng(seed)
    lengths = np.array(data.draw(st.lists(st.integers(0, steps), min_size=batch,
                                          max_size=batch)))
    x = rng.standard_normal((steps, batch, layer.input_size)).astype(layer.dtype)
    hx = random_hx(layer, rng, batch) if with_state else None
    clean = ref.pad_with(x, lengths, 0.0)
    dirty = ref.pad_with(x, lengths, pad)
    a_out, a_state = layer(clean, hx, lengths)
    b_out, b_state = layer(dirty, hx, lengths)
    np.testing.assert_array_equal(a_out, b_out)
    for a, b in zip(flat_state(layer, a_state), flat_state(layer, b_state)):
        np.testing.assert_array_equal(a, b)
    # outputs past each row's length are zero in every direction and layer's output
    for n, L in enumerate(lengths):
        assert np.all(b_out[L:, n] == 0)


@SETTINGS
@given(cfg=configs(), steps=st.integers(1, 6), batch=st.integers(2, 5),
       seed=st.integers(0, 2**16), with_lengths=st.booleans(), with_state=st.booleans(),
       data=st.data())
def test_batch_rows_are_independent(cfg, steps, batch, seed, with_lengths, with_state, data):
    layer = build(cfg, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, batch, layer.input_size)).astype(layer.dtype)
    hx = random_hx(layer, rng, batch) if with_state else None
    lengths = np.array(data.draw(st.lists(st.integers(0, steps), min_size=batch,
                                          max_size=batch))) if with_lengths else None
    out, state = layer(x, hx, lengths)
    tol = TOL[layer.dtype]
    for n in range(batch):
        row_hx = None
        if hx is not None:
            row_hx = states(layer, *[s[:, n:n + 1] for s in flat_state(layer, hx)])
        row_out, row_state = layer(x[:, n:n + 1], row_hx,
                                   None if lengths is None else lengths[n:n + 1])
        np.testing.assert_allclose(row_out[:, 0], out[:, n], rtol=tol, atol=tol)
        for a, b in zip(flat_state(layer, row_state), flat_state(layer, state)):
            np.testing.assert_allclose(a[:, 0], b[:, n], rtol=tol, atol=tol)


@SETTINGS
@given(cfg=configs(), steps=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_unbatched_equals_batch_of_one(cfg, steps, seed):
    layer = build(cfg, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, layer.input_size)).astype(layer.dtype)
    hx = random_hx(layer, rng, 1)
    out, state = layer(x[:, None] if not layer.batch_first else x[None], hx)
    u_out, u_state = layer(x, states(layer, *[s[:, 0] for s in flat_state(layer, hx)]))
    np.testing.assert_array_equal(u_out, out[:, 0])
    for a, b in zip(flat_state(layer, u_state), flat_state(layer, state)):
        np.testing.assert_array_equal(a, b[:, 0])


def test_stream_state_shapes_and_errors():
    layer = fastrnn.LSTM(3, 4, 2, proj_size=2, seed=0)
    stream = layer.stream(batch_size=2)
    h, c = stream.state
    assert h.shape == (2, 2, 2) and c.shape == (2, 2, 4)
    with pytest.raises(fastrnn.errors.ShapeError):
        stream.step(np.zeros((3, 3), np.float32))
    with pytest.raises(fastrnn.errors.ShapeError):
        stream.state = (np.zeros((2, 2, 4)), c)
    with pytest.raises(fastrnn.errors.DTypeError):
        stream.step(np.zeros((2, 3), np.int32))
