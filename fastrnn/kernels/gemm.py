"""Matrix products out[m, g*gs + j] = bias[...] + a[m, :k_len] . B[:, g*gs + j] against weights
prepacked for them, where the columns of B are G gates of gs (a whole number of panels) units.

B (K x G*gs, from weights stored G*gs x K) is packed once by `pack_gates` into panels of PANEL
columns (simd.py) ordered unit block first, gate second: the panels of one block of units, every
gate, are contiguous. So a thread that owns a block of units streams one contiguous slice, and
one batch-1 tile covers one panel of every gate (2*G vectors in flight hide the FMA latency).
More rows use tiles of ROW_TILE x 32 (8 rows with AVX-512, 6 with AVX2) over blocks of rows,
and the rows left over one tile of all of them, over as many gates at a time as keep them in
registers, a single gate's panels two at a time (a batch of 5 once took a 4-row and a 1-row
tile, whose 2 accumulators waited on the FMA latency: LSTM H = 256, 5 rows, 2.19 -> 1.38 ms; an
RNN's batch of 2, H = 256, 233 -> 205 us with panel pairs). Output widths are whole panels (the
caller pads), so tiles never need edges.

A recurrent step calls the same product every step; `backward` walks its column tiles last to
first, and steps alternate it: the tiles a step starts with are the ones the step before read
last, still in cache when the weights are a little larger than it (LSTM H=256: 1 MiB against a
1 MiB L2, ~9 % a step). Each output still sums k in the same order.
"""
import numpy as np

from ._jit import helper, inline
from .simd import PANEL, ROW_TILE, streams_once, tile, tile_ahead

_TALL = tile(ROW_TILE, PANEL)  # 8 rows with AVX-512, 6 with AVX2 (simd._row_tile)
_T1 = tile(1, PANEL)
_T1_X2 = tile(1, 2 * PANEL)
_T1_X3 = tile(1, 3 * PANEL)
_T1_WIDE = tile(1, 4 * PANEL)
# The rows left over after the tall tiles (fewer than ROW_TILE) run as one tile of all of them
# (two tiles would each stream the panel again, with fewer accumulators), over as many gates of
# the panel as fit: four for up to QUAD_ROWS rows, GRU's three for up to TRIPLE_ROWS, two for up
# to PAIR_ROWS, else one; each the most rows such a tile keeps in every pass (_streamed_rows).
_T2 = tile(2, PANEL)
_T3 = tile(3, PANEL)
_T4 = tile(4, PANEL)
_T5 = tile(5, PANEL)
_T6 = tile(6, PANEL)
_T7 = tile(7, PANEL)
_P2 = tile(2, 2 * PANEL)
_P3 = tile(3, 2 * PANEL)
_P4 = tile(4, 2 * PANEL)
_P5 = tile(5, 2 * PANEL)
_P6 = tile(6, 2 * PANEL)
_R2 = tile(2, 3 * PANEL)
_R3 = tile(3, 3 * PANEL)
_Q2 = tile(2, 4 * PANEL)


def _streamed_rows(gates: int, most: int) -> int:
    """The most rows, up to `most`, that a tile over one panel of `gates` gates covers in every
    pass over k (simd.streams_once) at this and every smaller row count."""
    return next((r - 1 for r in range(2, most + 1) if not streams_once(r, gates * PANEL)), most)


QUAD_ROWS = _streamed_rows(4, 2)  # AVX-512: 2 (AVX2, NEON: 1)
TRIPLE_ROWS = _streamed_rows(3, 3)  # 3 (1)
PAIR_ROWS = _streamed_rows(2, 6)  # 6 (1)
_A4 = tile_ahead(4 * PANEL)
_A3 = tile_ahead(3 * PANEL)
_ROW_BLOCK = 128  # rows of a per pass over B: a block of a stays in L2 while B's panels stream


def padded(n: int) -> int:
    """n rounded up to whole panels."""
    return -(-n // PANEL) * PANEL


def pack_gates(w: np.ndarray, gates: int) -> np.ndarray:
    """Weights w (G*gs, K), gs a multiple of PANEL, as the 1-D panels gemm_gates streams."""
    rows, k = w.shape
    if rows % (gates * PANEL):
        raise ValueError(f"pack_gates needs {gates} gates of whole {PANEL}-row panels, got {rows}")
    blocks = rows // gates // PANEL
    panels = w.reshape(gates, blocks, PANEL, k).transpose(1, 0, 3, 2)
    return np.ascontiguousarray(panels).ravel()


def unpack_gates(packed: np.ndarray, gates: int, k: int) -> np.ndarray:
    """pack_gates' inverse: the (G*gs, K) weights back from their panels."""
    blocks = packed.size // (gates * PANEL * k)
    panels = packed.reshape(blocks, gates, k, PANEL).transpose(1, 0, 3, 2)
    return panels.reshape(gates * blocks * PANEL, k)


@inline
def _nth(q, count, backward):
    """The q-th of `count` tiles in walking order."""
    return count - 1 - q if backward else q


@helper
def gemm_gates(a, m_lo, m_hi, k_len, bp, gates, g0, g1, j0, j1, gs, bias, out, backward):
    """out[m, g*gs + j] = bias[g*gs + j] + sum_{k < k_len} a[m, k] * B[k, g*gs + j] for m in
    [m_lo, m_hi), gates g in [g0, g1) of `gates`, units j in [j0, j1) (multiples of PANEL);
    bp = pack_gates(B^T, gates). backward: panels of units last to first."""
    if m_hi - m_lo == 1:
        gemv_gates(a, m_lo, 0, k_len, k_len, bp, gates, g0, g1, j0, j1, gs, bias, out, backward)
    else:
        _gemm_rows(a, m_lo, m_hi, k_len, bp, gates, g0, g1, j0, j1, gs, bias, out, backward)


@helper
def _gemm_rows(a, m_lo, m_hi, k_len, bp, gates, g0, g1, j0, j1, gs, bias, out, backward):
    """gemm_gates over two or more rows (a helper of its own, so that a one-row step's call
    stays small)."""
    lda = a.shape[1]
    ldo = out.shape[1]
    ps = k_len * PANEL
    panels = (j1 - j0) // PANEL
    one_gate = g1 - g0 == 1
    for block in range(m_lo, m_hi, _ROW_BLOCK):
        block_hi = min(block + _ROW_BLOCK, m_hi)
        tail = block_hi - (block_hi - block) % ROW_TILE
        left = block_hi - tail
        for q in range(panels):
            j = j0 + _nth(q, panels, backward) * PANEL
            for g in range(g0, g1):
                b_off = (j // PANEL * gates + g) * ps
                col = g * gs + j
                for m in range(block, tail, ROW_TILE):
                    _TALL(a, m * lda, lda, bp, b_off, ps, k_len, bias, col, out, m * ldo + col,
                          ldo, PANEL)
            if left == 0 or (one_gate and q % 2 == 1 and left <= PAIR_ROWS):
                continue  # (one gate: its rows ran in the pair tile of the panel before)
            a_off = tail * lda
            b_off = (j // PANEL * gates + g0) * ps
            col = g0 * gs + j
            if g1 - g0 == 4 and left <= QUAD_ROWS:
                _quad_tile(left, a, a_off, lda, bp, b_off, ps, k_len, bias, col, out,
                           tail * ldo + col, ldo, gs)
                continue
            if g1 - g0 == 3 and left <= TRIPLE_ROWS:
                _triple_tile(left, a, a_off, lda, bp, b_off, ps, k_len, bias, col, out,
                             tail * ldo + col, ldo, gs)
                continue
            g = g0
            if left <= PAIR_ROWS:
                # pairs of the panel's gates; one gate: the panel and the next in walking order,
                # gates * ps further in bp and PANEL columns further in out
                last, b_step, c_step = g1, ps, gs
                if one_gate and q + 1 < panels:
                    j = min(j, j0 + _nth(q + 1, panels, backward) * PANEL)
                    last, b_step, c_step = g0 + 2, gates * ps, PANEL
                while g + 2 <= last:
                    col = g * gs + j
                    _pair_tile(left, a, a_off, lda, bp, (j // PANEL * gates + g) * ps, b_step,
                               k_len, bias, col, out, tail * ldo + col, ldo, c_step)
                    g += 2
            for g in range(g, g1):
                col = g * gs + j
                _gate_tile(left, a, a_off, lda, bp, (j // PANEL * gates + g) * ps, ps, k_len,
                           bias, col, out, tail * ldo + col, ldo)


@inline
def _quad_tile(rows, a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs):
    """rows (1 to QUAD_ROWS) rows by one panel of four consecutive gates (ps apart in bp, gs
    columns apart in out and bias; so are the gates of the tiles below)."""
    if rows == 1:
        _T1_WIDE(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    else:
        _Q2(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)


@inline
def _triple_tile(rows, a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs):
    """rows (1 to TRIPLE_ROWS) rows by one panel of three consecutive gates."""
    if rows == 1:
        _T1_X3(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    elif rows == 2:
        _R2(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    else:
        _R3(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)


@inline
def _gate_tile(rows, a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo):
    """rows (1 to 7) rows by one panel of one gate."""
    if rows == 1:
        _T1(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)
    elif rows == 2:
        _T2(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)
    elif rows == 3:
        _T3(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)
    elif rows == 4:
        _T4(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)
    elif rows == 5:
        _T5(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)
    elif rows == 6:
        _T6(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)
    else:
        _T7(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, PANEL)


@inline
def _pair_tile(rows, a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs):
    """rows (1 to PAIR_ROWS) rows by one panel of two consecutive gates, or by two consecutive
    panels of one gate (then ps is the gates' panels' stride in bp, gs = PANEL)."""
    if rows == 1:
        _T1_X2(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    elif rows == 2:
        _P2(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    elif rows == 3:
        _P3(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    elif rows == 4:
        _P4(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    elif rows == 5:
        _P5(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)
    else:
        _P6(a, a_off, lda, bp, b_off, ps, k_len, bias, col, out, o_off, ldo, gs)


@helper
def gemv_gates(a, m, k0, k1, k_len, bp, gates, g0, g1, j0, j1, gs, bias, out, backward):
    """gemm_gates for the one row m, over the part k in [k0, k1) of the k_len rows of B:
    out[m, g*gs + j] = bias[g*gs + j] + sum_{k0 <= k < k1} a[m, k] * B[k, g*gs + j]. bias may be
    out[m] itself, so that parts over successive ranges of k add up to the whole product."""
    lda = a.shape[1]
    ldo = out.shape[1]
    ps = k_len * PANEL
    a_off = m * lda + k0
    o_row = m * ldo
    part = k1 - k0
    panels = (j1 - j0) // PANEL
    if g1 - g0 == 1:  # one gate: up to 4 consecutive unit panels per tile, gates * ps apart
        col = g0 * gs
        wide = panels // 4
        rest = panels % 4  # the last 1-3 panels: one tile too
        tiles = wide + (1 if rest else 0)
        for q in range(tiles):
            t = _nth(q, tiles, backward)
            j = j0 + t * 4 * PANEL
            b_off = (j // PANEL * gates + g0) * ps + k0 * PANEL
            if t < wide:
                _T1_WIDE(a, a_off, lda, bp, b_off, gates * ps, part, bias, col + j, out,
                         o_row + col + j, ldo, PANEL)
            elif rest == 3:
                _T1_X3(a, a_off, lda, bp, b_off, gates * ps, part, bias, col + j, out,
                       o_row + col + j, ldo, PANEL)
            elif rest == 2:
                _T1_X2(a, a_off, lda, bp, b_off, gates * ps, part, bias, col + j, out,
                       o_row + col + j, ldo, PANEL)
            else:
                _T1(a, a_off, lda, bp, b_off, ps, part, bias, col + j, out, o_row + col + j,
                    ldo, PANEL)
        return
    for q in range(panels):  # one panel of each gate: contiguous in bp
        j = j0 + _nth(q, panels, backward) * PANEL
        b_off = (j // PANEL * gates + g0) * ps + k0 * PANEL
        col = g0 * gs + j
        if g1 - g0 == 4:
            _T1_WIDE(a, a_off, lda, bp, b_off, ps, part, bias, col, out, o_row + col, ldo, gs)
        elif g1 - g0 == 3:
            _T1_X3(a, a_off, lda, bp, b_off, ps, part, bias, col, out, o_row + col, ldo, gs)
        else:
            _T1_X2(a, a_off, lda, bp, b_off, ps, part, bias, col, out, o_row + col, ldo, gs)


@helper
def gemv_gates_ahead(a, m, k_len, bp, gates, j0, j1, gs, bias, out, backward, x, x_off, ldx, w,
                     xbias, xp, xp_off, ldxp, slot):
    """gemv_gates over all 3 or 4 gates that also carries a share of a later block of steps'
    input projection (simd.tile_ahead): for each panel of units in [j0, j1), its vector `slot`
    (slot // vectors-per-panel picks the gate; a slot past the last gate adds nothing) of
        xp[xp_off + r*ldxp + col] = xbias[col] + sum_k x[x_off + r*ldx + k] * W[k, col]
    for the AHEAD rows r, with w = pack_gates(W^T, gates) over K = x's width. Over AHEAD steps,
    slots 0..AHEAD-1 project every column of those rows once (float32: gates * 2 <= AHEAD)."""
    lanes = 64 // a.itemsize
    per_panel = PANEL // lanes
    g = slot // per_panel
    if g >= gates:
        gemv_gates(a, m, 0, k_len, k_len, bp, gates, 0, gates, j0, j1, gs, bias, out, backward)
        return
    lane = slot % per_panel * lanes
    kx = x.shape[1]
    ps = k_len * PANEL
    a_off = m * a.shape[1]
    o_row = m * out.shape[1]
    panels = (j1 - j0) // PANEL
    for q in range(panels):
        j = j0 + _nth(q, panels, backward) * PANEL
        b_off = j // PANEL * gates * ps
        w_off = (j // PANEL * gates + g) * kx * PANEL + lane
        col = g * gs + j + lane
        if gates == 4:
            _A4(a, a_off, bp, b_off, ps, k_len, bias, j, out, o_row + j, gs, x, x_off, ldx, w,
                w_off, kx, xbias, col, xp, xp_off + col, ldxp)
        else:
            _A3(a, a_off, bp, b_off, ps, k_len, bias, j, out, o_row + j, gs, x, x_off, ldx, w,
                w_off, kx, xbias, col, xp, xp_off + col, ldxp)
