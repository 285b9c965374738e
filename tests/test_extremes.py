"""Numbers at the edges, against torch.nn.RNN / GRU / LSTM (ONNX's variants: against the float64
reference): sizes on either side of the 32-column weight panels and the 6-row register tiles,
short and odd sequence lengths, zero-length rows next to full ones, float16 weights, and
infinities and NaN in the input and the initial state, whose placement in the result must be
torch's (not just "some NaN"). One and two threads: the serial, row-split, unit-split and fused
kernels.

Tolerances: float32 1e-5 absolute (relative past 1), float64 1e-10.
"""
import numpy as np
import pytest

import fastrnn
try:
    from tests import reference as ref
except ImportError:  # tests/ is not a package; pytest's default import mode puts tests/ on sys.path
    import reference as ref

torch = pytest.importorskip("torch")

CELLS = ["RNN", "GRU", "LSTM"]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(request.param)
    yield request.param
    fastrnn.set_num_threads(before)


def _pair(mode, input_size, hidden, dtype, seed, **kw):
    """A torch module and the fastrnn layer holding its parameters."""
    torch.manual_seed(seed)
    module = getattr(torch.nn, mode)(input_size, hidden, **kw).to(
        torch.float32 if dtype == np.float32 else torch.float64)
    layer = getattr(fastrnn, mode)(input_size, hidden, dtype=dtype, **kw)
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    return module, layer


def _torch_call(module, x, hx=None, lengths=None):
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if hx is not None:
            hx = tuple(map(torch.from_numpy, hx)) if isinstance(hx, tuple) else \
                torch.from_numpy(hx)
        if lengths is None:
            out, h_n = module(xt, hx)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.as_tensor(lengths), batch_first=module.batch_first,
                enforce_sorted=False)
            out, h_n = module(packed, hx)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                out, batch_first=module.batch_first,
                total_length=x.shape[1 if module.batch_first else 0])
    return out.numpy(), h_n


def _parts(result):
    out, h_n = result
    states = h_n if isinstance(h_n, tuple) else (h_n,)
    return [np.asarray(out)] + [np.asarray(s) for s in states]


def assert_matches_torch(got, want, dtype, what=""):
    """Same shapes, NaN and infinities in the same places, the rest within TOL."""
    tol = TOL[np.dtype(dtype)]
    for k, (g, w) in enumerate(zip(_parts(got), _parts(want))):
        assert g.shape == w.shape, (what, k)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{what} NaN of part {k}")
        infinite = np.isinf(w)
        np.testing.assert_array_equal(g[infinite], w[infinite], err_msg=f"{what} inf of part {k}")
        finite = np.isfinite(w)
        err = np.abs(g[finite] - w[finite]) / np.maximum(1, np.abs(w[finite]))
        assert err.size == 0 or err.max() <= tol, f"{what} part {k}: {err.max():.3g}"


# (hidden, input, rows, steps): around the panels (32 columns), 6-row tiles, blocks of 8 steps
SIZES = [(1, 1, 1, 1), (2, 3, 5, 2), (7, 31, 6, 7), (15, 2, 7, 9), (17, 33, 13, 17),
         (31, 1, 1, 16), (33, 3, 9, 8), (63, 257, 2, 9), (65, 2, 33, 7), (97, 31, 1, 17),
         (127, 3, 65, 2), (129, 33, 8, 16), (257, 2, 1, 17), (257, 3, 31, 9)]


@pytest.mark.parametrize("mode", CELLS)
def test_panel_and_tile_boundaries(mode, threads):
    rng = np.random.default_rng(len(mode))
    for k, (hidden, features, rows, steps) in enumerate(SIZES):
        kw = dict(bidirectional=k % 3 == 1, num_layers=1 + (k % 4 == 2))
        if mode == "LSTM" and hidden > 1 and k % 2:
            kw["proj_size"] = 1 if k % 4 == 1 else hidden - 1
        module, layer = _pair(mode, features, hidden, np.float32, k, **kw)
        x = rng.standard_normal((steps, rows, features)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, rows) if k % 2 else None
        assert_matches_torch(layer(x, lengths=lengths), _torch_call(module, x, lengths=lengths),
                             np.float32, f"{mode} {hidden, features, rows, steps} {kw}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", CELLS)
def test_zero_length_rows_next_to_full_ones(mode, dtype, threads):
    """L = 0 rows end with zero outputs and a zero state (the README's rule; torch refuses them),
    and the rows beside them are torch's, initial states included."""
    rng = np.random.default_rng(7)
    for hidden, rows, steps in [(33, 7, 9), (65, 13, 17), (256, 3, 16)]:
        module, layer = _pair(mode, 5, hidden, dtype, hidden, num_layers=2, bidirectional=True)
        x = rng.standard_normal((steps, rows, 5)).astype(dtype)
        lengths = rng.integers(0, steps + 1, rows)
        lengths[[0, rows // 2]] = 0
        lengths[-1] = steps
        h0 = rng.standard_normal((4, rows, hidden)).astype(dtype)
        hx = (h0, rng.standard_normal((4, rows, hidden)).astype(dtype)) if mode == "LSTM" else h0
        got = layer(x, hx, lengths=lengths)
        run = lengths > 0
        pick = (lambda a: a[:, run].copy())
        sub_hx = tuple(map(pick, hx)) if mode == "LSTM" else pick(hx)
        want = _torch_call(module, x[:, run].copy(), sub_hx, lengths[run])
        assert_matches_torch((got[0][:, run], tuple(map(pick, got[1])) if mode == "LSTM"
                              else pick(got[1])), want, dtype, f"{mode} H{hidden}")
        for part in _parts(got):
            assert not part[:, ~run].any()


@pytest.mark.parametrize("mode", CELLS)
def test_float16_weights_at_the_boundaries(mode, threads):
    """A float16-weight layer is torch's on the weights rounded to float16, float16 denormals
    (below 6.1e-5) included: the kernels' flush-to-zero must not flush them as they widen."""
    rng = np.random.default_rng(3)
    for k, (hidden, rows, steps) in enumerate([(17, 1, 9), (33, 7, 16), (129, 9, 8),
                                                (256, 2, 17)]):
        module, layer = _pair(mode, 31, hidden, np.float32, k, bidirectional=k % 2 == 1)
        params = layer.state_dict()
        for name in [n for n in params if n.startswith("weight_ih")]:
            params[name] = rng.choice([-3e-5, 3e-5], params[name].shape)
        layer = layer.load_state_dict(params).with_weight_dtype("float16")
        rounded = {name: torch.from_numpy(value.astype(np.float16).astype(np.float32)
                                          if name.startswith("weight") else
                                          value.astype(np.float32))
                   for name, value in params.items()}
        module.load_state_dict(rounded)
        x = (rng.standard_normal((steps, rows, 31)) * 1e3).astype(np.float32)
        assert_matches_torch(layer(x), _torch_call(module, x), np.float32, f"{mode} H{hidden}")


def _poisoned(kind, x, hx):
    """x and the initial state with an infinity or NaN put in at `kind`."""
    x = x.copy()
    hx = tuple(a.copy() for a in hx) if isinstance(hx, tuple) else hx.copy()
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
    steps, rows = x.shape[:2]
    row = rows // 2
    if kind == "x nan":
        x[steps // 2, row, 0] = np.nan
    elif kind == "x +inf":
        x[steps // 2, row, 0] = np.inf
    elif kind == "x -inf row":
        x[steps // 2, row, :] = -np.inf
    elif kind == "x 1e30":
        x *= 1e30
    elif kind == "h0 nan":
        h0[0, row, 0] = np.nan
    elif kind == "h0 inf":
        h0[0, row, 0] = np.inf
    elif kind == "h0 -inf":
        h0[-1, row, -1] = -np.inf
    elif kind == "c0 inf":
        c0[0, row, 0] = np.inf
    elif kind == "c0 nan":
        c0[-1, row, 1] = np.nan
    return x, hx


POISONS = ["x nan", "x +inf", "x -inf row", "x 1e30", "h0 nan", "h0 inf", "h0 -inf", "c0 inf",
           "c0 nan"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", CELLS)
def test_infinities_and_nan_land_where_torch_puts_them(mode, dtype, threads):
    """An infinite pre-activation closes or opens a gate exactly (sigmoid 0 or 1, tanh +-1), as
    torch's does: float32's fast tanh once stopped 2.4e-7 short of 1, so a GRU whose initial state
    held an infinity kept z = 1.2e-7 where torch has 0, and gave inf where torch gives NaN."""
    rng = np.random.default_rng(11)
    for rows, hidden, steps in [(1, 16, 8), (3, 33, 5), (9, 65, 12), (1, 256, 20)]:
        module, layer = _pair(mode, 7, hidden, dtype, rows, bidirectional=True)
        x0 = rng.standard_normal((steps, rows, 7)).astype(dtype)
        h0 = rng.standard_normal((2, rows, hidden)).astype(dtype)
        hx0 = (h0, rng.standard_normal((2, rows, hidden)).astype(dtype)) if mode == "LSTM" \
            else h0
        for kind in POISONS:
            if kind.startswith("c0") and mode != "LSTM":
                continue
            x, hx = _poisoned(kind, x0, hx0)
            assert_matches_torch(layer(x, hx), _torch_call(module, x, hx), dtype,
                                 f"{mode} N{rows} H{hidden} {kind}")


def test_fast_tanh_and_sigmoid_saturate_exactly():
    """float32's rational tanh is exactly +-1 from its clamp on (torch's float32 tanh is 1 from
    ~9 on), sigmoid exactly 0 and 1 at the infinities; NaN stays NaN."""
    import numba

    from fastrnn.kernels.activations import fast_sigmoid, fast_tanh

    @numba.njit
    def both(x, th, sg):
        for j in range(x.size):
            th[j] = fast_tanh(x[j])
            sg[j] = fast_sigmoid(x[j])

    x = np.array([np.inf, -np.inf, 40, -40, 9, -9, np.nan, 0.5], np.float32)
    th, sg = np.empty_like(x), np.empty_like(x)
    both(x, th, sg)
    np.testing.assert_array_equal(th[:6], [1, -1, 1, -1, 1, -1])
    np.testing.assert_array_equal(sg[:4], [1, 0, 1, 0])
    assert np.isnan(th[6]) and np.isnan(sg[6])
    assert abs(th[7] - np.tanh(0.5)) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(activations=["HardSigmoid", "Tanh", "Tanh"]),
                                dict(input_forget=True), dict(peepholes=True)],
                         ids=["activations", "input_forget", "peepholes"])
def test_an_infinite_cell_state_without_peepholes_stays_finite_in_h(kw, dtype, threads):
    """ONNX's LSTM variants against the float64 reference: without peepholes there is no P * c
    term, so an infinite c0 gives h = o * tanh(inf) = o, not NaN from 0 * inf (the float64
    cell and the ONNX-activation update once added zero peepholes times c)."""
    rng = np.random.default_rng(5)
    for rows, hidden in [(1, 16), (9, 33)]:
        layer = fastrnn.LSTM(4, hidden, dtype=dtype, seed=rows, **kw)
        x = rng.standard_normal((6, rows, 4)).astype(dtype)
        h0 = rng.standard_normal((1, rows, hidden)).astype(dtype)
        c0 = rng.standard_normal((1, rows, hidden)).astype(dtype)
        c0[0, rows // 2, :3] = [np.inf, -np.inf, np.nan]
        with np.errstate(invalid="ignore", over="ignore"):
            want = ref.reference_model("LSTM", layer.state_dict(), x.astype(np.float64),
                                       (h0.astype(np.float64), c0.astype(np.float64)),
                                       activations=kw.get("activations"),
                                       input_forget=kw.get("input_forget", False))
        want = (want[0], tuple(want[1]))
        assert_matches_torch(layer(x, (h0, c0)), want, dtype, f"N{rows} H{hidden} {kw}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("names", [["Relu", "Relu"], ["Sigmoid", "LeakyRelu"]])
def test_gru_unbounded_candidate_keeps_ieee_infinities(names, lbr, dtype, threads):
    """An infinite input makes an unbounded candidate n infinite; where z = 0 the new state is
    (1 - z) n + z h = n, IEEE's inf (the reference's), not the NaN of n - z n + z h that
    fastmath's reassociation made of it."""
    rng = np.random.default_rng(9)
    for rows in (1, 9):
        layer = fastrnn.GRU(3, 17, dtype=dtype, seed=rows, activations=names,
                            linear_before_reset=lbr)
        x = rng.standard_normal((5, rows, 3)).astype(dtype)
        x[2, rows - 1, 1] = np.inf
        x[3, 0, 2] = -np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            want = ref.reference_model("GRU", layer.state_dict(), x.astype(np.float64),
                                       activations=names, linear_before_reset=lbr)
        assert_matches_torch(layer(x), want, dtype, f"N{rows} {names} lbr={lbr}")
