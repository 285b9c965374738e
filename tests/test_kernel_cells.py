"""kernels.cells: the LSTM and GRU cell updates (LLVM IR for float32, numba loops for float64)
against the float64 formulas, over unit ranges with whole vectors, scalar tails and offsets."""
import numba
import numpy as np
import pytest

from fastrnn.kernels.cells import gru_cell, lstm_cell


@numba.njit
def _lstm(g, xr, c, peep, out, gs, j0, j1, clip, peepholes):
    lstm_cell(g, xr, c, peep, out, gs, j0, j1, clip, peepholes)


@numba.njit
def _gru(g, xr, hp, hd, gs, j0, j1, clip):
    gru_cell(g, xr, hp, hd, gs, j0, j1, clip)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _lstm_want(g, xr, c, peep, gs, j0, j1, clip, peepholes):
    a = [(g[k * gs + j0:k * gs + j1] + xr[k * gs + j0:k * gs + j1]).astype(np.float64)
         for k in range(4)]
    p = peep[:, j0:j1].astype(np.float64) if peepholes else np.zeros((3, j1 - j0))
    cp = c[j0:j1].astype(np.float64)
    i = _sigmoid(np.clip(a[0] + p[0] * cp, -clip, clip))
    f = _sigmoid(np.clip(a[1] + p[1] * cp, -clip, clip))
    cn = f * cp + i * np.tanh(np.clip(a[2], -clip, clip))
    o = _sigmoid(np.clip(a[3] + p[2] * cn, -clip, clip))
    return cn, o * np.tanh(cn)


CASES = [(0, 64), (0, 37), (32, 64), (5, 21), (16, 17), (3, 3), (0, 96)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("j0,j1", CASES)
@pytest.mark.parametrize("clip", [np.inf, 1.5])
@pytest.mark.parametrize("peepholes", [False, True])
def test_lstm_cell_matches_the_formula(dtype, j0, j1, clip, peepholes):
    rng = np.random.default_rng(j0 * 100 + j1)
    hidden, gs = 96, 112  # a gate stride past H, as the padded gate blocks have
    g = rng.normal(0, 2, 4 * gs).astype(dtype)
    xr = rng.normal(0, 2, 4 * gs).astype(dtype)
    c = rng.normal(0, 1, hidden).astype(dtype)
    peep = rng.normal(0, 1, (3, hidden)).astype(dtype)
    out = np.full(hidden, 7, dtype)
    want_c, want_h = _lstm_want(g, xr, c, peep, gs, j0, j1, clip, peepholes)
    c_before = c.copy()
    _lstm(g, xr, c, peep if peepholes else np.zeros_like(peep), out, gs, j0, j1,
          dtype(clip), peepholes)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c[j0:j1], want_c, atol=tol, rtol=0)
    np.testing.assert_allclose(out[j0:j1], want_h, atol=tol, rtol=0)
    outside = np.r_[0:j0, j1:hidden]
    np.testing.assert_array_equal(c[outside], c_before[outside])  # nothing past the range
    assert (out[outside] == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("j0,j1", CASES)
@pytest.mark.parametrize("clip", [np.inf, 1.5])
def test_gru_cell_matches_the_formula(dtype, j0, j1, clip):
    rng = np.random.default_rng(j0 * 100 + j1 + 1)
    hidden, gs = 96, 112
    g = rng.normal(0, 2, 3 * gs).astype(dtype)
    xr = rng.normal(0, 2, 3 * gs).astype(dtype)
    hp = rng.normal(0, 1, hidden).astype(dtype)
    hd = np.full(hidden, 7, dtype)
    a = [g[k * gs + j0:k * gs + j1].astype(np.float64) for k in range(3)]
    x = [xr[k * gs + j0:k * gs + j1].astype(np.float64) for k in range(3)]
    r = _sigmoid(np.clip(a[0] + x[0], -clip, clip))
    z = _sigmoid(np.clip(a[1] + x[1], -clip, clip))
    n = np.tanh(np.clip(x[2] + r * a[2], -clip, clip))
    want = (1 - z) * n + z * hp[j0:j1]
    _gru(g, xr, hp, hd, gs, j0, j1, dtype(clip))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(hd[j0:j1], want, atol=tol, rtol=0)
    assert (hd[np.r_[0:j0, j1:hidden]] == 7).all()


def test_cells_keep_nan_and_saturate_infinities():
    gs = 32
    g = np.zeros(4 * gs, np.float32)
    g[0] = np.nan      # i of unit 0: NaN reaches c' and h
    g[2 * gs + 1] = np.inf   # the candidate of unit 1 saturates at tanh's clamp
    xr = np.zeros(4 * gs, np.float32)
    c = np.zeros(gs, np.float32)
    out = np.zeros(gs, np.float32)
    _lstm(g, xr, c, np.zeros((3, gs), np.float32), out, gs, 0, gs, np.float32(np.inf), False)
    assert np.isnan(c[0]) and np.isnan(out[0])
    assert np.isfinite(c[1:]).all() and abs(c[1] - 0.5) < 1e-6  # f c + i * tanh(inf) = 0.5


def test_cell_ir_refuses_non_float32_arrays():
    with pytest.raises(numba.core.errors.TypingError):
        _gru(np.zeros(96, np.float32), np.zeros(96, np.float32), np.zeros(32, np.float64),
             np.zeros(32, np.float32), 32, 0, 32, np.float32(np.inf))
