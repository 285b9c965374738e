"""Kernel entry points: one direction of one layer over a whole (padded) batch of sequences.

Every cell type runs through the same entries (`run_serial`, `run_parallel`, `run_units`; a
stream's step through `run_stream`) with flat buffers, so that a call types few arguments (cheap
dispatch, one specialisation per dtype):
  x (T, N, I) C-contiguous input
  wbuf  1-D: biases, peepholes and zeros of the direction at the offsets in cfg
  wpk   1-D: its packed weight matrices (see recurrent.DirectionParams): x's dtype, or float16
        bits (uint16) for float32
  cfg   int64 [mode, H, H_out, I, P, reverse, linear_before_reset, input_forget, fast, code0..2,
               Hp, H_out_p, offsets w_ih, bias, r, rbias, peep, w_hr, zeros, ahead, peepholes]
  Hp and H_out_p are H and H_out rounded up to whole panels (gemm.py): each gate's block of
  columns in the packed weights, the biases, xp and gates is Hp wide (zero-padded), so that any
  block of hidden units is whole panels of every gate.
  fcfg  float64 [clip, alpha0..2, beta0..2]
  lengths int64 (N,)
  hs (S, N, H_out), cs (S, N, H): the states of a stack of layers; the direction's slot holds its
  initial state and receives the final one (cs is a (1, 0, H) dummy for RNN/GRU)
  y (T, N, D*H_out) the layer's output, zero-filled by the caller where lengths leave steps out,
  of which this direction writes columns [yd*H_out, (yd+1)*H_out) (one array layout for every
  call: one specialisation; the next layer's x)
  sbuf  1-D scratch: xp (T*N, G*Hp), gates (N, G*Hp), hb (2, N, H_out_p), aux (N, H),
        cb (N, Hp) (run_units' copy of c), then one slot that run_serial keeps across calls

Each step: gates = h_prev @ R^T (+ Rbh for GRU lbr=1), one blocked product over all the rows of
a chunk (on a one-row call, carrying part of a later block's input projection: _ahead_slot);
then the fused, vectorised gate/cell update per row for the rows still running. h
ping-pongs between two buffers so that a unit-split parallel step never reads a half-updated h.
Row n runs its own length L: forward t = 0..L-1, reverse t = L-1..0; its final state is copied
out at its last step; L = 0 leaves a zero state (ONNX Runtime's behaviour).
"""
import numpy as np
from numba import prange

from ._jit import helper, inline, kernel
from .atomics import atomic_add, atomic_cas, atomic_load, spin_pause
from .fpmode import denormals_off, restore_fp_mode
from .activations import activate, clamp, fast_tanh, typed
from .cells import gru_cell, lstm_cell, sigmoid_rows
from .gemm import PANEL, gemm_gates, gemv_gates, gemv_gates_ahead, padded
from .simd import AHEAD
from .views import carve

RNN, GRU, LSTM = 0, 1, 2
GATES = (1, 3, 4)
# cfg slots
C_MODE, C_H, C_HOUT, C_I, C_P, C_REV, C_LBR, C_IFG, C_FAST, C_CODE = range(10)
C_HP, C_HOUTP = 12, 13
C_OFF = 14  # offsets: w_ih, bias, r, rbias, peep, w_hr, zeros
C_AHEAD = C_OFF + 7  # one-row calls may project their input ahead (_ahead_slot)
C_PEEP = C_AHEAD + 1  # an LSTM with peepholes (without, peep holds zeros the update skips)
CFG_LEN = C_PEEP + 1


@inline
def _views(wbuf, wpk, cfg):
    """From wpk the packed weights (1-D panels, gemm.pack_gates) w_ih, r, w_hr; from wbuf bias
    and rbias (G*Hp), peep (3, H), zeros (at least G*Hp and H_out_p)."""
    gates = GATES[cfg[C_MODE]]
    hid = cfg[C_H]
    gh = gates * cfg[C_HP]
    o = C_OFF
    w_ih = wpk[cfg[o]:cfg[o] + gh * cfg[C_I]]
    bias = wbuf[cfg[o + 1]:cfg[o + 1] + gh]
    r = wpk[cfg[o + 2]:cfg[o + 2] + gh * cfg[C_HOUT]]
    rbias = wbuf[cfg[o + 3]:cfg[o + 3] + gh]
    peep = carve(wbuf, cfg[o + 4], (3, hid))
    w_hr = wpk[cfg[o + 5]:cfg[o + 5] + (cfg[C_HOUTP] * hid if cfg[C_P] > 0 else 0)]
    zeros = wbuf[cfg[o + 6]:cfg[o + 6] + max(gh, cfg[C_HOUTP])]
    return w_ih, bias, r, rbias, peep, w_hr, zeros


@inline
def _scratch(sbuf, cfg, rows_total, steps):
    gh = GATES[cfg[C_MODE]] * cfg[C_HP]
    hid = cfg[C_H]
    hout = cfg[C_HOUTP]
    m = steps * rows_total
    p = 0
    xp = carve(sbuf, p, (m, gh))
    p += _pad(m * gh)
    gates = carve(sbuf, p, (rows_total, gh))
    p += _pad(rows_total * gh)
    hb = carve(sbuf, p, (2, rows_total, hout))
    p += _pad(2 * rows_total * hout)
    aux = carve(sbuf, p, (rows_total, hid))
    p += _pad(rows_total * hid)
    cb = carve(sbuf, p, (rows_total, cfg[C_HP]))
    return xp, gates, hb, aux, cb


def scratch_size(gates, hid, hout, steps, rows):
    """Elements of sbuf that _scratch lays out (plain Python: calling the jitted _pad from Python
    cost ~2 us a call, 8 us of every forward call)."""
    gh = gates * padded(hid)
    return (_pad_py(steps * rows * gh) + _pad_py(rows * gh) + _pad_py(2 * rows * padded(hout))
            + _pad_py(rows * hid) + _pad_py(rows * padded(hid)) + 1)


def _pad_py(n):
    return (n + 15) // 16 * 16


@inline
def _pad(n):
    return (n + 15) // 16 * 16


@inline
def _time(s, length, reverse):
    return length - 1 - s if reverse else s


# ----- per-row updates over a unit range [j0, j1) -----
# Loops run over slices from 0, never over range(j0, j1): numba wraps a possibly negative index
# per element, and LLVM vectorises such a loop with gathers and scatters (several times slower).

@helper
def _rnn_update(g, xr, hd, j0, j1, fast, code, alpha, beta, clip):
    gs = g[j0:j1]
    xs = xr[j0:j1]
    hs = hd[j0:j1]
    if fast:
        for j in range(hs.size):
            hs[j] = fast_tanh(clamp(gs[j] + xs[j], clip))
    else:
        for j in range(hs.size):
            hs[j] = activate(code, alpha, beta, clamp(gs[j] + xs[j], clip))


@helper
def _lstm_update(g, xr, cr, peep, out, gs, j0, j1, input_forget, fast, codes, fcfg, clip,
                 peepholes):
    """c updated in place; out[j] = o * h(c') (the new h, or the unprojected one)."""
    one = typed(1.0, g)
    if fast and not input_forget:
        lstm_cell(g, xr, cr, peep, out, gs, j0, j1, clip, peepholes)
    else:
        a0 = typed(fcfg[1], g)
        a1 = typed(fcfg[2], g)
        a2 = typed(fcfg[3], g)
        b0 = typed(fcfg[4], g)
        b1 = typed(fcfg[5], g)
        b2 = typed(fcfg[6], g)
        gv = g[j0:]
        xv = xr[j0:]
        cv = cr[j0:j1]
        pv = peep[:, j0:]
        ov = out[j0:]
        for j in range(cv.size):
            cp = cv[j]
            i = activate(codes[0], a0, b0, clamp(gv[j] + xv[j] + pv[0, j] * cp, clip))
            if input_forget:
                f = one - i
            else:
                f = activate(codes[0], a0, b0,
                             clamp(gv[gs + j] + xv[gs + j] + pv[1, j] * cp, clip))
            gg = activate(codes[1], a1, b1, clamp(gv[2 * gs + j] + xv[2 * gs + j], clip))
            cn = f * cp + i * gg
            o = activate(codes[0], a0, b0,
                         clamp(gv[3 * gs + j] + xv[3 * gs + j] + pv[2, j] * cn, clip))
            cv[j] = cn
            ov[j] = o * activate(codes[2], a2, b2, cn)


@helper
def _gru_gates_rz(g, xr, hp, rh, gs, j0, j1, lbr, fast, code, alpha, beta, clip):
    """r and z into g[0:2H] (activated); rh[j] = r * h_prev (lbr = 0)."""
    if fast:
        sigmoid_rows(g[j0:j1], xr[j0:j1], j1 - j0, clip)
        sigmoid_rows(g[gs + j0:gs + j1], xr[gs + j0:gs + j1], j1 - j0, clip)
    else:
        gv = g[j0:]
        xv = xr[j0:]
        for j in range(j1 - j0):
            gv[j] = activate(code, alpha, beta, clamp(gv[j] + xv[j], clip))
            gv[gs + j] = activate(code, alpha, beta, clamp(gv[gs + j] + xv[gs + j], clip))
    if not lbr:
        r = g[j0:j1]
        hps = hp[j0:j1]
        rhs = rh[j0:j1]
        for j in range(rhs.size):
            rhs[j] = r[j] * hps[j]


@helper
def _gru_fast(g, xr, hp, hd, gs, j0, j1, clip):
    """The whole GRU update, linear_before_reset with the default activations (cells.gru_cell)."""
    gru_cell(g, xr, hp, hd, gs, j0, j1, clip)


@helper
def _gru_update(g, xr, hp, hd, gs, j0, j1, lbr, fast, code, alpha, beta, clip):
    """g[0:2H] holds activated r, z; g[2H:3H] holds Rh h + Rbh (lbr) or Rh (r*h) (lbr = 0).
    (fast with lbr runs _gru_fast instead.)"""
    one = typed(1.0, g)
    if fast:
        z = g[gs + j0:gs + j1]
        gn = g[2 * gs + j0:2 * gs + j1]
        xn = xr[2 * gs + j0:2 * gs + j1]
        hps = hp[j0:j1]
        hds = hd[j0:j1]
        for j in range(hds.size):
            n = fast_tanh(clamp(xn[j] + gn[j], clip))
            hds[j] = (one - z[j]) * n + z[j] * hps[j]
    else:
        gv = g[j0:]
        xv = xr[j0:]
        hps = hp[j0:j1]
        hds = hd[j0:j1]
        for j in range(hds.size):
            if lbr:
                pre = xv[2 * gs + j] + gv[j] * gv[2 * gs + j]
            else:
                pre = xv[2 * gs + j] + gv[2 * gs + j]
            n = activate(code, alpha, beta, clamp(pre, clip))
            z = gv[gs + j]
            hds[j] = (one - z) * n + z * hps[j]


# ----- one step of a chunk of rows [lo, hi) over units [j0, j1) -----

@inline
def _phase_a(s, back, ahead, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, r, rbias, peep, xp,
             gates, src, dst, aux, c):
    """Recurrent product for units [j0, j1) of every gate (whole panels: j1 may pass H, up to
    Hp), then the update of units [j0, min(j1, H)). LSTM with projection leaves o*tanh(c') in
    aux, GRU lbr=0 leaves r, z in gates and r*h in aux (the second phase finishes the step).
    back: walk the weights backward (gemm.py). ahead: (x2, w_ih, bias, carried), the call's
    input, its projection weights and whether its steps carry part of a later block's projection
    (_ahead_slot)."""
    mode = cfg[C_MODE]
    gcount = GATES[mode]
    if mode == GRU and cfg[C_LBR] == 0:
        gcount = 2  # the n gate's product waits for r * h (phase b)
    if not _product_ahead(s, back, ahead, lo, j0, j1, gcount, cfg, lengths, r, rbias, xp, gates,
                          src):
        gemm_gates(src, lo, hi, cfg[C_HOUT], r, GATES[mode], 0, gcount, j0, j1, cfg[C_HP], rbias,
                   gates, back)
    _update_a(s, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, peep, xp, gates, src, dst, aux,
              c, False)


@inline
def _product_ahead(s, back, ahead, lo, j0, j1, gcount, cfg, lengths, r, rbias, xp, gates, src):
    """_phase_a's product with this step's share of a later block's input projection, if the
    step carries one (_ahead_slot); False when it does not (the caller runs the plain one)."""
    x2, w_ih, bias, carried = ahead
    if not carried:
        return False
    slot, first = _ahead_slot(s, lengths)
    if slot < 0:
        return False
    t = _time(first, lengths[0], cfg[C_REV] != 0)
    down = -1 if cfg[C_REV] != 0 else 1  # reversed: the block's rows run backward in x
    gemv_gates_ahead(src, lo, cfg[C_HOUT], r, gcount, j0, j1, cfg[C_HP], rbias, gates, back, x2,
                     t * x2.shape[1], down * x2.shape[1], w_ih, bias, xp, t * xp.shape[1],
                     down * xp.shape[1], slot)
    return True


@inline
def _ahead_slot(s, lengths):
    """(slot, first step of the block it projects) of step s, or slot -1: nothing to project.

    A one-row call whose steps carry its input projection (LSTM, GRU lbr=1, float32 with 32
    vector registers, weights up to recurrent._AHEAD_MAX_BYTES; serial, or run_units' blocks
    that do not start early) does not project its whole input before the first step. Its steps
    run in blocks of AHEAD; while block b runs, each of its steps (slot s % AHEAD) projects one
    vector of every panel of units for the AHEAD rows of block b + 1 inside its own recurrent
    product (gemm.gemv_gates_ahead): that product waits on the cache, the projection reuses each
    weight AHEAD times and fills the idle FMA units. _project does the first block and the steps
    after the last whole block up front."""
    block = s // AHEAD
    if block + 2 > lengths[0] // AHEAD:
        return -1, 0
    return s - block * AHEAD, (block + 1) * AHEAD


@inline
def _projects_ahead(cfg, lengths):
    """Whether a call's steps may carry its input projection: cfg's flag, and one row."""
    return cfg[C_AHEAD] != 0 and lengths.shape[0] == 1


@inline
def _update_a(s, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, peep, xp, gates, src, dst, aux,
              c, inline_cell):
    """_phase_a's update, once gates holds the recurrent product of units [j0, j1).
    inline_cell, a constant at each call site: the default cells' IR (kernels/cells.py) inlined
    into the caller instead of called. The early-start blocks of a unit split (_finish_block) ran
    2-6 % faster with it (H = 64 and 128 on two threads, where the update is on the critical
    path of every handover); the serial steps 1-3 % slower (LLVM lays their loop out worse)."""
    mode = cfg[C_MODE]
    gs = cfg[C_HP]
    u1 = min(j1, cfg[C_H])
    rows_total = lengths.shape[0]
    reverse = cfg[C_REV] != 0
    fast = cfg[C_FAST] != 0
    lbr = cfg[C_LBR] != 0
    for n in range(lo, hi):
        length = lengths[n]
        if s >= length:
            continue
        t = _time(s, length, reverse)
        xr = xp[t * rows_total + n]
        g = gates[n]
        if mode == LSTM:
            out = dst[n] if cfg[C_P] == 0 else aux[n]
            if inline_cell and fast and cfg[C_IFG] == 0:
                lstm_cell(g, xr, c[n], peep, out, gs, j0, u1, clip, cfg[C_PEEP] != 0)
            else:
                _lstm_update(g, xr, c[n], peep, out, gs, j0, u1, cfg[C_IFG] != 0, fast, codes,
                             fcfg, clip, cfg[C_PEEP] != 0)
        elif mode == GRU and lbr and fast:
            if inline_cell:
                gru_cell(g, xr, src[n], dst[n], gs, j0, u1, clip)
            else:
                _gru_fast(g, xr, src[n], dst[n], gs, j0, u1, clip)
        elif mode == GRU:
            a = typed(fcfg[1], clip)
            b = typed(fcfg[4], clip)
            _gru_gates_rz(g, xr, src[n], aux[n], gs, j0, u1, lbr, fast, codes[0], a, b, clip)
            if lbr:
                a = typed(fcfg[2], clip)
                b = typed(fcfg[5], clip)
                _gru_update(g, xr, src[n], dst[n], gs, j0, u1, lbr, fast, codes[1], a, b, clip)
        else:
            a = typed(fcfg[1], clip)
            b = typed(fcfg[4], clip)
            _rnn_update(g, xr, dst[n], j0, u1, fast, codes[0], a, b, clip)


@inline
def _needs_phase_b(cfg):
    return (cfg[C_MODE] == LSTM and cfg[C_P] > 0) or (cfg[C_MODE] == GRU and cfg[C_LBR] == 0)


@helper
def _phase_b(s, back, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, r, w_hr, zeros, xp, gates,
             src, dst, aux):
    """Second half of a step: LSTM projection (units = projected outputs, [j0, j1) whole panels
    of H_out_p) or GRU lbr=0's n gate (units as in _phase_a)."""
    hid = cfg[C_H]
    gs = cfg[C_HP]
    rows_total = lengths.shape[0]
    if cfg[C_MODE] == LSTM:
        gemm_gates(aux, lo, hi, hid, w_hr, 1, 0, 1, j0, j1, cfg[C_HOUTP], zeros, dst, back)
        return
    gemm_gates(aux, lo, hi, hid, r, 3, 2, 3, j0, j1, gs, zeros, gates, back)
    u1 = min(j1, hid)
    reverse = cfg[C_REV] != 0
    fast = cfg[C_FAST] != 0
    a = typed(fcfg[2], clip)
    b = typed(fcfg[5], clip)
    for n in range(lo, hi):
        length = lengths[n]
        if s >= length:
            continue
        t = _time(s, length, reverse)
        _gru_update(gates[n], xp[t * rows_total + n], src[n], dst[n], gs, j0, u1, False, fast,
                    codes[1], a, b, clip)


@inline
def _emit(s, lo, hi, j0, j1, reverse, lengths, dst, col0, y, yd, h):
    """Copy the new h of units [j0, min(j1, H_out)) (dst's columns from col0 on) to y; at a row's
    last step also to the final state."""
    j1 = min(j1, h.shape[1])
    for n in range(lo, hi):
        length = lengths[n]
        if s >= length:
            continue
        t = _time(s, length, reverse)
        d = dst[n, col0 + j0:col0 + j1]
        _copy(d, y[t, n, yd, j0:j1], d.size)
        if s == length - 1:
            _copy(d, h[n, j0:j1], d.size)


@inline
def _begin(lo, hi, cfg, lengths, h, c, hb):
    """Load the initial state of rows [lo, hi) into the ping-pong buffer; zero L = 0 rows."""
    for n in range(lo, hi):
        _zero_if_empty(n, cfg, lengths, h, c)
        _copy(h[n], hb[0, n], h.shape[1])


@inline
def _zero_if_empty(n, cfg, lengths, h, c):
    """L = 0 rows start (and end) with a zero state, as ONNX Runtime does."""
    if lengths[n] == 0:
        for j in range(h.shape[1]):
            h[n, j] = 0
        if cfg[C_MODE] == LSTM:
            for j in range(c.shape[1]):
                c[n, j] = 0


@inline
def _copy(src, dst, count):
    """dst[:count] = src[:count], as a loop: kernels run without numba's runtime (no refcounted
    temporaries), which slice assignment needs."""
    for j in range(count):
        dst[j] = src[j]


@inline
def _max_len(lengths, lo, hi):
    m = 0
    rows = lengths[lo:hi]
    for n in range(rows.size):
        m = max(m, rows[n])
    return m


@helper
def _rows(lo, hi, s0, s1, flip, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros, ahead, xp,
          gates, hb, aux, c, y, yd, h):
    """Rows [lo, hi) over steps [s0, s1) of their sequences, all units, in lock-step (s0 = 0
    loads the initial state). Steps s with (s + flip) odd walk the weights backward."""
    fp_mode = denormals_off()
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], rbias)
    hout = cfg[C_HOUT]
    reverse = cfg[C_REV] != 0
    if s0 == 0:
        _begin(lo, hi, cfg, lengths, h, c, hb)
    phase_b = _needs_phase_b(cfg)
    for s in range(s0, min(s1, _max_len(lengths, lo, hi))):
        src = hb[s & 1]
        dst = hb[(s + 1) & 1]
        back = (s + flip) & 1
        _phase_a(s, back, ahead, lo, hi, 0, cfg[C_HP], cfg, fcfg, codes, clip, lengths, r, rbias,
                 peep, xp, gates, src, dst, aux, c)
        if phase_b:
            _phase_b(s, back, lo, hi, 0, cfg[C_HOUTP], cfg, fcfg, codes, clip, lengths, r, w_hr,
                     zeros, xp, gates, src, dst, aux)
        _emit(s, lo, hi, 0, hout, reverse, lengths, dst, 0, y, yd, h)
    restore_fp_mode(fp_mode)


@helper
def _project(x2, w_ih, bias, xp, cfg, lengths, chunks, chunk, j0, j1, carried):
    """Chunk `chunk` of `chunks` of the hoisted input projection (blocks of rows) for units
    [j0, j1) of every gate; a call whose steps carry the projection (`carried`, _ahead_slot) has
    only the steps that no step carries done here: the first block and the steps after the last
    whole one (one range when there are fewer than two)."""
    fp_mode = denormals_off()
    gates = GATES[cfg[C_MODE]]
    length = lengths[0]
    blocks = length // AHEAD
    # one call site of gemm_gates for every case: each call site is compiled (and LLVM may
    # inline it) again
    for part in range(2 if carried and blocks >= 2 else 1):
        if not carried:
            lo, hi = _split(x2.shape[0], chunks, chunk, 4)
        else:
            s0 = blocks * AHEAD if part == 1 else 0
            s1 = length if part == 1 or blocks < 2 else AHEAD
            lo, hi = (length - s1, length - s0) if cfg[C_REV] != 0 else (s0, s1)
        if lo < hi:
            gemm_gates(x2, lo, hi, x2.shape[1], w_ih, gates, 0, gates, j0, j1, cfg[C_HP], bias,
                       xp, 0)
    restore_fp_mode(fp_mode)


@inline
def _serial(x, wbuf, wpk, cfg, fcfg, lengths, h, c, y, yd, sbuf):
    steps, rows = x.shape[0], x.shape[1]
    w_ih, bias, r, rbias, peep, w_hr, zeros = _views(wbuf, wpk, cfg)
    xp, gates, hb, aux, cb = _scratch(sbuf, cfg, rows, steps)
    x2 = carve(x, 0, (steps * rows, x.shape[2]))
    carried = _projects_ahead(cfg, lengths)
    _project(x2, w_ih, bias, xp, cfg, lengths, 1, 0, 0, cfg[C_HP], carried)
    # The walking order alternates across calls too: a stream's one-step calls with the same
    # scratch then alternate as a sequence's steps do. The scratch's last slot keeps the parity.
    flip = 1 if sbuf[sbuf.size - 1] != 0 else 0
    _rows(0, rows, 0, steps, flip, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
          (x2, w_ih, bias, carried), xp, gates, hb, aux, c, y, yd, h)
    sbuf[sbuf.size - 1] = (flip + _max_len(lengths, 0, rows)) & 1


@inline
def _state_views(cfg, hs, cs, slot, y):
    """A direction's h (N, H_out) and c (N, H; empty for RNN/GRU) in the stacks of states, and
    the layer output y (T, N, D*H_out) as (T, N, D, H_out)."""
    hout = cfg[C_HOUT]
    return (hs[slot], cs[slot if cfg[C_MODE] == LSTM else 0],
            carve(y, 0, (y.shape[0], y.shape[1], y.shape[2] // hout, hout)))


@kernel
def run_serial(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y, yd, sbuf):
    h, c, y4 = _state_views(cfg, hs, cs, slot, y)
    _serial(x, wbuf, wpk, cfg, fcfg, lengths, h, c, y4, yd, sbuf)


# run_stream's meta array: the direction's cfg, then these slots: batch rows and the offsets in the
# stream's buffer of h, c, y and the scratch (and its size), then one length (1) per row
S_ROWS, S_H, S_C, S_Y, S_SCRATCH, S_SIZE, S_LENGTHS = range(CFG_LEN, CFG_LEN + 7)


@kernel
def run_stream(x, buf, meta, wbuf, wpk, fcfg):
    """run_serial over one step of a stream: x (N, I) C-contiguous, the step's input (read
    before the step writes anything); h (N, H_out), c (N, H; LSTM, else empty), y (1, N, 1,
    H_out) and the scratch all lie in the stream's one buffer, at the offsets in meta: six arrays
    to pass instead of eleven, each unboxed on every call of a step of a few microseconds."""
    cfg = carve(meta, 0, (CFG_LEN,))
    rows = meta[S_ROWS]
    h = carve(buf, meta[S_H], (rows, cfg[C_HOUT]))
    c = carve(buf, meta[S_C], (rows if cfg[C_MODE] == LSTM else 0, cfg[C_H]))
    y = carve(buf, meta[S_Y], (1, rows, 1, cfg[C_HOUT]))
    sbuf = carve(buf, meta[S_SCRATCH], (meta[S_SIZE],))
    _serial(carve(x, 0, (1, rows, cfg[C_I])), wbuf, wpk, cfg, fcfg,
            carve(meta, S_LENGTHS, (rows,)), h, c, y, 0, sbuf)


@kernel(parallel=True)
def run_directions(x, lengths, hs, cs, slot, y, wbuf0, wpk0, cfg0, fcfg0, sbuf0, wbuf1, wpk1,
                   cfg1, fcfg1, sbuf1):
    """Both directions of a bidirectional layer at once, one thread each (they share nothing but
    x, y, of which each writes its own half, and the stacks of states, where the forward
    direction has `slot` and the reverse one the next)."""
    h0, c0, y4 = _state_views(cfg0, hs, cs, slot, y)
    h1, c1, _ = _state_views(cfg1, hs, cs, slot + 1, y)
    for d in prange(2):
        if d == 0:
            _serial(x, wbuf0, wpk0, cfg0, fcfg0, lengths, h0, c0, y4, 0, sbuf0)
        else:
            _serial(x, wbuf1, wpk1, cfg1, fcfg1, lengths, h1, c1, y4, 1, sbuf1)


@inline
def _split(total, chunks, c, align):
    """Bounds of chunk c of `chunks` over range(total), aligned to `align`."""
    lo = (total * c // chunks) // align * align
    hi = total if c == chunks - 1 else (total * (c + 1) // chunks) // align * align
    return lo, hi


@kernel(parallel=True)
def run_parallel(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, sbuf, chunks):
    """chunks > 1 threads, each with a block of batch rows for the whole sequence (no
    synchronisation)."""
    h, c, y = _state_views(cfg, hs, cs, slot, y3)
    steps, rows = x.shape[0], x.shape[1]
    w_ih, bias, r, rbias, peep, w_hr, zeros = _views(wbuf, wpk, cfg)
    xp, gates, hb, aux, cb = _scratch(sbuf, cfg, rows, steps)
    x2 = carve(x, 0, (steps * rows, x.shape[2]))
    for ch in prange(chunks):
        _project(x2, w_ih, bias, xp, cfg, lengths, chunks, ch, 0, cfg[C_HP], False)
    for ch in prange(chunks):
        lo, hi = _split(rows, chunks, ch, 1)
        _rows(lo, hi, 0, steps, 0, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
              (x2, w_ih, bias, False), xp, gates, hb, aux, c, y, yd, h)


# run_units' sync array: one 64-byte line per block, then one line whose slot 0 counts the blocks
# projected. A block's line holds how many of its stages have been claimed (slot 0) and finished
# (DONE), and whether its input projection has been claimed (PROJECTED). Each thread polls the
# others' lines, each written by one thread in the common case: one transfer per line and step.
SYNC_LINE = 8
PROJECTED, DONE = 1, 2
# A waiting thread looks for unclaimed blocks to take over every this many spin-wait hints.
STEAL_SPINS = 16
# Blocks start their product before the wait (run_units) up to this many bytes of recurrent
# weights a block. Beyond it a step is long enough that the wait is a small part of it, and the
# split product costs more: its three passes over k, and a weight slice larger than L2 then
# misses the lines the step before left in cache in the other walking order (H = 256 on two
# threads: 2-4 % faster without, H = 512: ~6 %; H = 64: 10-15 % faster with).
EARLY_START_MAX_BYTES = 256 * 1024


def sync_array(chunks):
    """A zeroed sync array for run_units with `chunks` blocks."""
    return np.zeros((chunks + 1) * SYNC_LINE, np.int64)


@kernel(parallel=True)
def run_units(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, sbuf, sync, chunks):
    """chunks > 1 threads in one parallel region for the whole sequence: each step's hidden units
    are split into `chunks` blocks (whole panels), thread k works block k, so its slice of R stays
    in its core's cache. A step is one stage (two when a second phase follows: LSTM projection,
    GRU lbr=0). sync (sync_array) hands out the blocks: for each stage a thread claims its own
    block, waits until every block of the previous stage is done, then works its block.
    Claiming (not fixed ownership) is what makes the wait safe: while it waits, a thread takes
    over any block of the awaited stage that nobody has claimed, so a thread that never arrives
    (the region ran on fewer threads, or it was descheduled) has its blocks done by the others
    and no wait can hang.

    With one row and one stage per step and small blocks (_starts_early), a block's product starts
    before the wait: the part over the block's own units of h (which its thread has just
    computed) runs while the other blocks finish, and the wait then only has to cover the rest.
    Every block's product sums k in that order, whichever thread works it, so results do not
    depend on the scheduling."""
    h, c, y = _state_views(cfg, hs, cs, slot, y3)
    steps, rows = x.shape[0], x.shape[1]
    w_ih, bias, r, rbias, peep, w_hr, zeros = _views(wbuf, wpk, cfg)
    xp, gates, hb, aux, cb = _scratch(sbuf, cfg, rows, steps)
    x2 = carve(x, 0, (steps * rows, x.shape[2]))
    _begin(0, rows, cfg, lengths, h, c, hb)
    # the cell state in rows whose blocks start on cache lines: a block boundary inside a line of
    # the caller's c made both threads write that line every step (~0.2 us a step at H64)
    lstm = cfg[C_MODE] == LSTM
    if lstm:
        for n in range(rows):
            _copy(c[n], cb[n], c.shape[1])
    stages = 2 if _needs_phase_b(cfg) else 1
    total = _max_len(lengths, 0, rows) * stages
    early = _starts_early(stages, rows, chunks, cfg, r)
    # blocks that start early run their product in parts, none of which carries the projection
    carried = _projects_ahead(cfg, lengths) and not early
    ahead = (x2, w_ih, bias, carried)
    for chunk in prange(chunks):
        ch = np.int64(chunk)  # prange's index is unsigned: one signature for the helpers below
        # the input projection first (what the steps do not carry), by blocks of units (one
        # parallel region for the whole call: a second costs a region start and much compile time)
        _project_units(ch, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried)
        fp_mode = denormals_off()
        mine = True  # this thread worked its block of the previous stage
        for stage in range(total):
            claimed = atomic_cas(sync, ch * SYNC_LINE, stage, stage + 1)
            started = claimed and mine and early
            if started:
                _own_part(ch, stage, chunks, cfg, r, rbias, gates, hb)
            # checked here first: a helper call passes each array as 7-9 scalars on the stack
            # (moving this check into an inline _wait_stage for both call sites measured 3-7 %
            # slower at H64: LLVM lays the step loop out worse)
            if stage > 0 and not _stage_done(stage - 1, chunks, sync):
                _wait_stage(stage - 1, stages, chunks, sync, cfg, fcfg, lengths, r, rbias, peep,
                            w_hr, zeros, ahead, xp, gates, hb, aux, cb, y, yd, h)
            if started:
                _finish_block(ch, stage, chunks, cfg, fcfg, lengths, r, peep, xp, gates, hb, aux,
                              cb, y, yd, h)
            elif claimed:
                _unit_block(ch, stage, stages, chunks, cfg, fcfg, lengths, r, rbias, peep, w_hr,
                            zeros, ahead, xp, gates, hb, aux, cb, y, yd, h)
            if claimed:
                atomic_add(sync, ch * SYNC_LINE + DONE, 1)
            mine = claimed
        _wait_stage(total - 1, stages, chunks, sync, cfg, fcfg, lengths, r, rbias, peep, w_hr,
                    zeros, ahead, xp, gates, hb, aux, cb, y, yd, h)
        restore_fp_mode(fp_mode)
    if lstm:
        for n in range(rows):
            _copy(cb[n], c[n], c.shape[1])


@inline
def _starts_early(stages, rows, chunks, cfg, r):
    """Whether run_units starts each block's product before the wait (see EARLY_START_MAX_BYTES):
    one row, one stage a step, blocks of few weights."""
    block_bytes = r.size // chunks * r.itemsize
    return stages == 1 and rows == 1 and block_bytes <= EARLY_START_MAX_BYTES


@helper
def _project_units(block, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried):
    """The input projection by the unit split's blocks (every row, the block's units of every
    gate; only the rows no step carries when `carried`, see _project): the thread's own block
    first, so that the columns of xp its steps read are in its own cache, then any block nobody
    has claimed; returns once every block is done (a block is only waited for once a running
    thread has claimed it: no wait can hang)."""
    done = chunks * SYNC_LINE
    _project_block(block, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried)
    for other in range(chunks):
        _project_block(other, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried)
    while atomic_load(sync, done) < chunks:
        spin_pause()


@helper
def _project_block(block, x2, w_ih, bias, xp, cfg, lengths, chunks, sync, carried):
    """Project block `block` of the unit split (_project) if no thread has claimed it yet."""
    claim = block * SYNC_LINE + PROJECTED
    if atomic_load(sync, claim) == 0 and atomic_cas(sync, claim, 0, 1):
        j0, j1 = _split(cfg[C_HP], chunks, block, PANEL)
        _project(x2, w_ih, bias, xp, cfg, lengths, 1, 0, j0, j1, carried)
        atomic_add(sync, chunks * SYNC_LINE, 1)


@helper
def _wait_stage(stage, stages, chunks, sync, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
                ahead, xp, gates, hb, aux, c, y, yd, h):
    """Return once every block of `stage` (< 0: none) is done, working any block of it that
    nobody has claimed."""
    if stage < 0:
        return
    spins = 0
    while not _stage_done(stage, chunks, sync):
        spin_pause()
        spins += 1
        if spins == STEAL_SPINS:
            spins = 0
            for block in range(chunks):
                slot = block * SYNC_LINE
                if atomic_load(sync, slot) == stage and atomic_cas(sync, slot, stage, stage + 1):
                    _unit_block(block, stage, stages, chunks, cfg, fcfg, lengths, r, rbias,
                                peep, w_hr, zeros, ahead, xp, gates, hb, aux, c, y, yd, h)
                    atomic_add(sync, slot + DONE, 1)


@inline
def _stage_done(stage, chunks, sync):
    """Whether every block has finished stage `stage` (blocks finish their stages in order)."""
    for block in range(chunks):
        if atomic_load(sync, block * SYNC_LINE + DONE) <= stage:
            return False
    return True


@inline
def _own_range(block, chunks, cfg):
    """Units [j0, j1) of a block and the part [k0, k1) of h that they produce."""
    j0, j1 = _split(cfg[C_HP], chunks, block, PANEL)
    k_len = cfg[C_HOUT]
    return j0, j1, min(j0, k_len), min(j1, k_len)


@helper
def _own_part(block, stage, chunks, cfg, r, rbias, gates, hb):
    """The first part of a one-row, one-stage block's product: k over the block's own units."""
    j0, j1, k0, k1 = _own_range(block, chunks, cfg)
    mode = cfg[C_MODE]
    gemv_gates(hb[stage & 1], 0, k0, k1, cfg[C_HOUT], r, GATES[mode], 0, GATES[mode], j0, j1,
               cfg[C_HP], rbias, gates, stage & 1)


@inline
def _finish_block(block, stage, chunks, cfg, fcfg, lengths, r, peep, xp, gates, hb, aux, c, y,
                  yd, h):
    """The rest of a one-row, one-stage block after _own_part: k before and after the block's
    own units, then the update and the output."""
    j0, j1, k0, k1 = _own_range(block, chunks, cfg)
    mode = cfg[C_MODE]
    k_len = cfg[C_HOUT]
    src = hb[stage & 1]
    dst = hb[(stage + 1) & 1]
    acc = gates[0]
    if k0 > 0:
        gemv_gates(src, 0, 0, k0, k_len, r, GATES[mode], 0, GATES[mode], j0, j1, cfg[C_HP], acc,
                   gates, stage & 1)
    if k1 < k_len:
        gemv_gates(src, 0, k1, k_len, k_len, r, GATES[mode], 0, GATES[mode], j0, j1, cfg[C_HP],
                   acc, gates, stage & 1)
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], acc)
    _update_a(stage, 0, 1, j0, j1, cfg, fcfg, codes, clip, lengths, peep, xp, gates, src, dst, aux,
              c, True)
    _emit(stage, 0, 1, j0, j1, cfg[C_REV] != 0, lengths, dst, 0, y, yd, h)


@helper
def _unit_block(block, stage, stages, chunks, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
                ahead, xp, gates, hb, aux, c, y, yd, h):
    """Block `block` of stage `stage`, all of it (its thread, or one that took it over); ahead
    as in _phase_a."""
    rows = lengths.shape[0]
    if _starts_early(stages, rows, chunks, cfg, r):  # the same order of k as run_units
        _own_part(block, stage, chunks, cfg, r, rbias, gates, hb)
        _finish_block(block, stage, chunks, cfg, fcfg, lengths, r, peep, xp, gates, hb, aux, c, y,
                      yd, h)
        return
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], rbias)
    s = stage // stages
    src = hb[s & 1]
    dst = hb[(s + 1) & 1]
    if stage % stages == 0:
        j0, j1 = _split(cfg[C_HP], chunks, block, PANEL)
        _phase_a(s, s & 1, ahead, 0, rows, j0, j1, cfg, fcfg, codes, clip, lengths, r, rbias,
                 peep, xp, gates, src, dst, aux, c)
        if stages == 1:
            _emit(s, 0, rows, j0, j1, cfg[C_REV] != 0, lengths, dst, 0, y, yd, h)
    else:
        j0, j1 = _split(cfg[C_HOUTP], chunks, block, PANEL)
        _phase_b(s, s & 1, 0, rows, j0, j1, cfg, fcfg, codes, clip, lengths, r, w_hr, zeros, xp,
                 gates, src, dst, aux)
        _emit(s, 0, rows, j0, j1, cfg[C_REV] != 0, lengths, dst, 0, y, yd, h)


# ----- batches: input and recurrent products fused into one product per step -----

@helper
def _fused_rows(lo, hi, x, wr, bsum, cfg, fcfg, lengths, peep, zeros, xh, gates, c, y, yd, h):
    """Rows [lo, hi) of an LSTM (no projection) or RNN: each step gates = [x_t, h] @ [W, R]^T +
    bias, one product with K = I + H (wr packed, G*Hp columns) instead of a hoisted K = I
    projection and a K = H product: the gates of a step are written and read once, not twice.
    xh (2, N, I + H) ping-pongs [x_t, h]."""
    fp_mode = denormals_off()
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], bsum)
    mode = cfg[C_MODE]
    hid = cfg[C_H]
    feats = x.shape[2]
    reverse = cfg[C_REV] != 0
    fast = cfg[C_FAST] != 0
    for n in range(lo, hi):
        _zero_if_empty(n, cfg, lengths, h, c)
        _copy(h[n], xh[0, n, feats:], hid)
    for s in range(_max_len(lengths, lo, hi)):
        src = xh[s & 1]
        dst = xh[(s + 1) & 1]
        for n in range(lo, hi):
            length = lengths[n]
            if s < length:
                _copy(x[_time(s, length, reverse), n], src[n], feats)
        gemm_gates(src, lo, hi, src.shape[1], wr, GATES[mode], 0, GATES[mode], 0, cfg[C_HP],
                   cfg[C_HP], bsum, gates, s & 1)
        for n in range(lo, hi):
            length = lengths[n]
            if s >= length:
                continue
            out = dst[n, feats:]
            if mode == LSTM:
                _lstm_update(gates[n], zeros, c[n], peep, out, cfg[C_HP], 0, hid, cfg[C_IFG] != 0,
                             fast, codes, fcfg, clip, cfg[C_PEEP] != 0)
            else:
                _rnn_update(gates[n], zeros, out, 0, hid, fast, codes[0], typed(fcfg[1], clip),
                            typed(fcfg[4], clip), clip)
        _emit(s, lo, hi, 0, hid, reverse, lengths, dst, feats, y, yd, h)
    restore_fp_mode(fp_mode)


@kernel(parallel=True)
def run_fused(x, wr, bsum, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, xh, gates,
              chunks):
    """LSTM without projection / RNN over batch rows split into `chunks` blocks (one thread each)."""
    h, c, y = _state_views(cfg, hs, cs, slot, y3)
    w_ih, bias, r, rbias, peep, w_hr, zeros = _views(wbuf, wpk, cfg)
    rows = x.shape[1]
    for ch in prange(chunks):
        lo, hi = _split(rows, chunks, ch, 1)
        _fused_rows(lo, hi, x, wr, bsum, cfg, fcfg, lengths, peep, zeros, xh, gates, c, y, yd, h)


@kernel
def run_fused_serial(x, wr, bsum, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, xh, gates):
    """run_fused on the calling thread (no parallel region: safe whatever the threading layer)."""
    h, c, y = _state_views(cfg, hs, cs, slot, y3)
    w_ih, bias, r, rbias, peep, w_hr, zeros = _views(wbuf, wpk, cfg)
    _fused_rows(0, x.shape[1], x, wr, bsum, cfg, fcfg, lengths, peep, zeros, xh, gates, c, y, yd,
                h)
