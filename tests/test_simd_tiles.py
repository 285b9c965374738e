"""The LLVM-IR register tiles (fastrnn/kernels/simd.py) and the panel packing they read, against
numpy: every tile shape the products use, under every register file a target may have (AVX-512,
AVX/AVX2, NEON, SSE), in both dtypes, with gate-gathering strides; the tile that carries the
projection of later steps along (tile_ahead) against tile, to the bit."""
import itertools
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from fastrnn.kernels.gemm import (PAIR_ROWS, QUAD_ROWS, TRIPLE_ROWS, gemm_gates, pack_gates,
                                  unpack_gates)
from fastrnn.kernels.simd import (AHEAD, PANEL, REGISTERS, ROW_TILE, _fits, _passes, _row_tile,
                                  streams_once, tile, tile_ahead)

SHAPES = [(1, PANEL), (1, 2 * PANEL), (1, 3 * PANEL), (1, 4 * PANEL)] + [
    (rows, PANEL) for rows in range(2, 9)] + [(rows, 2 * PANEL) for rows in range(2, 7)] + [
    (2, 3 * PANEL), (3, 3 * PANEL), (2, 4 * PANEL)]
# (registers, bytes each): AVX-512, AVX/AVX2, NEON, SSE
REGISTER_FILES = [(32, 64), (16, 32), (32, 16), (16, 16)]


PASS_GRID = list(itertools.product([1, 2, 3, 4, 6, 8], [1, 2, 4, 6, 8, 16], REGISTER_FILES))


@pytest.mark.parametrize("rows,nvec,registers", PASS_GRID)
def test_passes_cover_the_tile_once_within_the_registers(rows, nvec, registers):
    count, width = registers
    cells = []
    for block_rows, block_vecs in _passes(rows, nvec, registers):
        r, v = len(block_rows), len(block_vecs)
        # accumulators, the weight vectors rows share, a broadcast and a spare
        assert 64 // width * (r * v + (v if r > 1 else 0)) + 2 <= count or (r == 1 and v == 1)
        cells += [(i, j) for i in block_rows for j in block_vecs]
    assert sorted(cells) == [(i, j) for i in range(rows) for j in range(nvec)]


@pytest.mark.parametrize("registers,rows", [((32, 64), 8), ((16, 32), 6), ((32, 16), 6)])
def test_the_tall_tile_shares_each_weight_load_across_its_rows(registers, rows):
    """The multi-row products' tallest tile (gemm.py) runs its rows in one pass over k per
    vector of columns: AVX2's 6 rows keep 12 ymm accumulators, where 8 rows took four passes
    of 8 accumulators each, two rows sharing each weight load."""
    assert _row_tile(registers) == rows
    assert _fits(rows, 1, registers) and (rows == 8 or not _fits(rows + 1, 1, registers))
    assert all(len(block_rows) == rows for block_rows, _ in _passes(rows, 2, registers))


def _runner(mr, ncols, registers):
    fn = tile(mr, ncols, registers)

    @numba.njit(cache=False)
    def run(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo, cstride):
        fn(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo, cstride)
    return run


@pytest.mark.parametrize("mr,ncols", SHAPES)
@pytest.mark.parametrize("registers", REGISTER_FILES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_matches_numpy_with_gate_strides(mr, ncols, registers, dtype):
    rng = np.random.default_rng(mr * 100 + ncols + sum(registers))
    gates, k_len, rows_a = ncols // PANEL, 37, mr + 3
    gs = 3 * PANEL  # each gate has 3 panels of units; the tile takes panel 1 of every gate
    weights = rng.standard_normal((gates * gs, k_len)).astype(dtype)  # (G*gs, K), gate-major
    packed = pack_gates(weights, gates)
    a = rng.standard_normal((rows_a, k_len + 5)).astype(dtype)  # lda > k_len
    bias = rng.standard_normal(gates * gs).astype(dtype)
    out = np.full((rows_a, gates * gs), np.nan, dtype)
    unit = PANEL  # panel 1 of the units
    ps = k_len * PANEL
    b_off = (unit // PANEL * gates) * ps
    _runner(mr, ncols, registers)(a, 1 * a.shape[1], a.shape[1], packed, b_off, ps, k_len, bias,
                                  unit, out, 1 * out.shape[1] + unit, out.shape[1], gs)
    want = a[1:1 + mr, :k_len].astype(np.float64) @ weights.astype(np.float64).T + bias
    cols = [g * gs + unit + j for g in range(gates) for j in range(PANEL)]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[1:1 + mr, cols], want[:, cols], rtol=tol, atol=tol)
    written = np.zeros(out.shape, bool)
    written[1:1 + mr, cols] = True
    assert np.isnan(out[~written]).all()  # nothing outside the tile was touched


def test_pack_gates_refuses_partial_panels():
    with pytest.raises(ValueError, match="whole"):
        pack_gates(np.zeros((2 * PANEL + 1, 3), np.float32), 1)


@pytest.mark.parametrize("gates", [1, 3, 4])
def test_unpack_gates_inverts_pack_gates(gates):
    w = np.random.default_rng(gates).standard_normal((gates * 2 * PANEL, 7)).astype(np.float32)
    np.testing.assert_array_equal(unpack_gates(pack_gates(w, gates), gates, 7), w)


@pytest.mark.parametrize("mr,ncols", SHAPES)
@pytest.mark.parametrize("registers", REGISTER_FILES)
def test_tile_widens_float16_weights(mr, ncols, registers):
    """float32 tiles over float16 weights (as uint16 bits) equal float32 tiles over the same
    weights rounded to float16."""
    rng = np.random.default_rng(mr + ncols + sum(registers))
    gates, k_len = ncols // PANEL, 29
    weights = rng.standard_normal((gates * PANEL, k_len)).astype(np.float16)
    a = rng.standard_normal((mr, k_len)).astype(np.float32)
    bias = rng.standard_normal(gates * PANEL).astype(np.float32)
    run = _runner(mr, ncols, registers)
    outs = []
    for packed in (pack_gates(weights, gates).view(np.uint16),
                   pack_gates(weights.astype(np.float32), gates)):
        out = np.zeros((mr, gates * PANEL), np.float32)
        run(a, 0, k_len, packed, 0, k_len * PANEL, k_len, bias, 0, out, 0, out.shape[1], PANEL)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("registers,quads,triples,pairs", [((32, 64), 2, 3, 6),
                                                           ((16, 32), 1, 1, 1),
                                                           ((32, 16), 1, 1, 1)])
def test_leftover_rows_share_each_weight_load_over_the_gates_they_stream_once(
        registers, quads, triples, pairs):
    """gemm's QUAD_ROWS / TRIPLE_ROWS / PAIR_ROWS: the leftover rows of a multi-row product
    share each weight load over four, three or two gates up to the most rows such a tile runs
    in every pass (AVX-512: 2, 3, 6); beyond, or where even two rows would split (AVX2, NEON),
    fewer gates at a time."""
    for gates, most in ((4, quads), (3, triples), (2, pairs)):
        assert all(streams_once(rows, gates * PANEL, registers) for rows in range(1, most + 1))
        assert most == {4: 2, 3: 3, 2: 6}[gates] or not streams_once(most + 1, gates * PANEL,
                                                                      registers)
    if registers == REGISTERS:
        assert (QUAD_ROWS, TRIPLE_ROWS, PAIR_ROWS) == (quads, triples, pairs)


@pytest.mark.parametrize("gates,g0,g1", [(4, 0, 4), (3, 0, 3), (3, 0, 2), (3, 2, 3), (1, 0, 1)])
@pytest.mark.parametrize("weights", ["float32", "float64", "float16"])
@pytest.mark.parametrize("panels", [(1, 3), (0, 1), (1, 4), (0, 7)])
def test_products_of_any_row_count_equal_one_row_products(gates, g0, g1, weights, panels):
    """gemm_gates over m rows (tall tiles, then the rest in one tile over four, three or two
    gates or one, a single gate's panels two at a time; row blocks of 128) gives each row, to
    the bit, what a one-row call gives it (the same sum over k in the same order), and numpy's
    product to rounding, walking forward or backward, over blocks of units that are not the
    whole row (one gate's one-row tiles take up to 4 panels: 1-3 left over, and 4 + 3)."""
    rng = np.random.default_rng(gates * 10 + g0 + len(weights) + panels[1])
    dtype = np.float64 if weights == "float64" else np.float32
    k_len, gs = 23, 8 * PANEL
    w = rng.standard_normal((gates * gs, k_len)).astype(np.float16 if weights == "float16"
                                                         else dtype)
    packed = pack_gates(w, gates)
    if weights == "float16":
        packed = packed.view(np.uint16)
    bias = rng.standard_normal(gates * gs).astype(dtype)
    j0, j1 = panels[0] * PANEL, panels[1] * PANEL
    cols = [g * gs + j for g in range(g0, g1) for j in range(j0, j1)]
    for rows in list(range(2, 3 * ROW_TILE + 2)) + [131]:
        a = rng.standard_normal((rows + 1, k_len)).astype(dtype)
        for backward in (False, True):
            out = np.full((rows + 1, gates * gs), np.nan, dtype)
            gemm_gates(a, 1, rows + 1, k_len, packed, gates, g0, g1, j0, j1, gs, bias, out,
                       backward)
            one = np.full_like(out, np.nan)
            for m in range(1, rows + 1):
                gemm_gates(a, m, m + 1, k_len, packed, gates, g0, g1, j0, j1, gs, bias, one,
                           backward)
            np.testing.assert_array_equal(out, one)
        want = a[1:].astype(np.float64) @ w.astype(np.float64).T + bias
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(out[1:, cols], want[:, cols], rtol=tol, atol=tol)
        assert np.isnan(np.delete(out, cols, axis=1)).all() and np.isnan(out[0]).all()


def _ahead_runner(ncols):
    fn = tile_ahead(ncols)

    @numba.njit(cache=False)
    def run(a, a_off, b, b_off, pstride, k_len, bias, bias_off, out, out_off, cstride, x, x_off,
            ldx, w, w_off, kx, xbias, xbias_off, xp, xp_off, ldxp):
        fn(a, a_off, b, b_off, pstride, k_len, bias, bias_off, out, out_off, cstride, x, x_off,
           ldx, w, w_off, kx, xbias, xbias_off, xp, xp_off, ldxp)
    return run


@pytest.mark.parametrize("ncols", [PANEL, 3 * PANEL, 4 * PANEL])
@pytest.mark.parametrize("k_len,kx", [(37, 37), (20, 45), (45, 20), (0, 9), (9, 0)])
@pytest.mark.parametrize("weights", ["float32", "float64", "float16"])
@pytest.mark.parametrize("reverse", [False, True])
def test_tile_ahead_equals_two_tiles(ncols, k_len, kx, weights, reverse):
    """Both products of tile_ahead equal to the bit what tile computes for each on its own:
    the recurrent one (gate strides, as tile(1, ncols)) and the AHEAD rows of x (rows walked
    backward too, as a reversed sequence does) times one vector of a panel."""
    dtype = np.float64 if weights == "float64" else np.float32
    rng = np.random.default_rng(ncols + 7 * k_len + kx + reverse)
    gates, gs = ncols // PANEL, 3 * PANEL
    lanes = 64 // np.dtype(dtype).itemsize
    r_w = rng.standard_normal((gates * gs, k_len)).astype(dtype)
    x_w = rng.standard_normal((gates * gs, kx)).astype(dtype)
    if weights == "float16":
        r_w, x_w = r_w.astype(np.float16), x_w.astype(np.float16)

    def packed(w):
        p = pack_gates(w, gates)
        return p.view(np.uint16) if weights == "float16" else p

    def plain(w):
        return pack_gates(w.astype(dtype), gates)

    h = rng.standard_normal((1, k_len + 3)).astype(dtype)
    x = rng.standard_normal((AHEAD + 4, kx + 2)).astype(dtype)
    bias = rng.standard_normal(gates * gs).astype(dtype)
    xbias = rng.standard_normal(gates * gs).astype(dtype)
    unit, gate, lane = PANEL, gates - 1, PANEL - lanes  # the tile's panel 1; x: its last vector
    ps, psx = k_len * PANEL, kx * PANEL
    out = np.full((1, gates * gs), np.nan, dtype)
    xp = np.full((AHEAD + 4, gates * gs), np.nan, dtype)
    ldx, ldxp = x.shape[1], xp.shape[1]
    first = AHEAD + 1 if reverse else 2  # rows 2..9, or 9 down to 2
    step = -1 if reverse else 1
    x_col = gate * gs + unit + lane
    _ahead_runner(ncols)(h, 1, packed(r_w), unit // PANEL * gates * ps, ps, k_len, bias, unit,
                         out, unit, gs, x, first * ldx + 1, step * ldx, packed(x_w),
                         (unit // PANEL * gates + gate) * psx + lane, kx, xbias, x_col, xp,
                         first * ldxp + x_col, step * ldxp)

    want_out = np.full_like(out, np.nan)
    avx512 = (32, 64)
    _runner(1, ncols, avx512)(h, 1, h.shape[1], plain(r_w), unit // PANEL * gates * ps, ps, k_len,
                              bias, unit, want_out, unit, out.shape[1], gs)
    np.testing.assert_array_equal(out, want_out)
    rows = np.arange(2, AHEAD + 2)
    want_xp = np.full((AHEAD, gates * gs), np.nan, dtype)
    _runner(AHEAD, ncols, avx512)(x[rows], 1, ldx, plain(x_w), unit // PANEL * gates * psx, psx,
                                  kx, xbias, unit, want_xp, unit, want_xp.shape[1], gs)
    got = xp[rows]
    cols = slice(x_col, x_col + lanes)
    np.testing.assert_array_equal(got[:, cols], want_xp[:, cols])
    untouched = np.ones(xp.shape, bool)
    untouched[rows, cols] = False
    assert np.isnan(xp[untouched]).all()
    reference = x[rows, 1:1 + kx].astype(np.float64) @ x_w.astype(np.float64).T + xbias
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[:, cols], reference[:, cols], rtol=tol, atol=tol)


@pytest.mark.parametrize("env, want", [
    ({"NUMBA_CPU_NAME": "generic"}, (16, 16)),  # a portable cache: SSE2's 16 xmm, not the host's
    ({"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma"}, (16, 32)),
])
def test_tiles_are_sized_for_the_target_numba_compiles_for(env, want):
    code = "from fastrnn.kernels import simd; print(simd.REGISTERS)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == str(want)
