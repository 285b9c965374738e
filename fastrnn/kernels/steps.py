"""One step of a chunk of rows over a range of hidden units (the recurrent product, carrying part
of a later block's input projection on one-row calls, and the cell updates), the loop of steps
over a chunk of rows, and the hoisted input projection: what every kernel entry runs."""
from ._jit import helper, inline
from .activations import activate, clamp, fast_tanh, fenced, typed
from .cells import gru_cell, lstm_cell, sigmoid_rows
from .fpmode import denormals_off, restore_fp_mode
from .gemm import gemm_gates, gemv_gates_ahead
from .layout import (C_AHEAD, C_CODE, C_FAST, C_FLAT, C_GW, C_H, C_HOUT, C_HOUTP, C_HP, C_IFG,
                     C_LBR, C_MODE, C_P, C_PEEP, C_REV, GATES, GRU, LSTM, chunk_bounds,
                     copy_values, longest, scratch_views, step_time, weight_views)
from .simd import AHEAD
from .views import carve

# ----- per-row updates over a unit range [j0, j1) -----
# Loops run over slices from 0, never over range(j0, j1): numba wraps a possibly negative index
# per element, and LLVM vectorises such a loop with gathers and scatters (several times slower).

@helper
def rnn_update(g, xr, hd, j0, j1, fast, code, alpha, beta, clip):
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
def lstm_update(g, xr, cr, peep, out, gs, j0, j1, input_forget, fast, codes, fcfg, clip,
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
            ai = gv[j] + xv[j]
            af = gv[gs + j] + xv[gs + j]
            ao = gv[3 * gs + j] + xv[3 * gs + j]
            if peepholes:  # else no 0 * c terms: an infinite c would make them NaN
                ai += pv[0, j] * cp
                af += pv[1, j] * cp
            i = activate(codes[0], a0, b0, clamp(ai, clip))
            if input_forget:
                f = one - i
            else:
                f = activate(codes[0], a0, b0, clamp(af, clip))
            gg = activate(codes[1], a1, b1, clamp(gv[2 * gs + j] + xv[2 * gs + j], clip))
            cn = f * cp + i * gg
            if peepholes:
                ao += pv[2, j] * cn
            o = activate(codes[0], a0, b0, clamp(ao, clip))
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
            hds[j] = fenced(one - z) * n + z * hps[j]  # n may be infinite here


# ----- one step of a chunk of rows [lo, hi) over units [j0, j1) -----

@inline
def phase_a(s, back, ahead, late, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, r, rbias,
             peep, xp, gates, src, dst, aux, c):
    """Recurrent product for units [j0, j1) of every gate (whole panels: j1 may pass H, up to
    Hp), then the update of units [j0, min(j1, H)). LSTM with projection leaves o*tanh(c') in
    aux, GRU lbr=0 leaves r, z in gates and r*h in aux (the second phase finishes the step).
    back: walk the weights backward (gemm.py). ahead: (x2, w_ih, bias, carried), the call's
    input, its projection weights and whether its steps carry part of a later block's projection
    (ahead_slot). late: this one-step call projects its input only now, between the recurrent
    product and the update (serial, run_units; a constant False at the call sites that never
    do)."""
    mode = cfg[C_MODE]
    gcount = GATES[mode]
    if mode == GRU and cfg[C_LBR] == 0:
        gcount = 2  # the n gate's product waits for r * h (phase b)
    if not _product_ahead(s, back, ahead, lo, j0, j1, gcount, cfg, lengths, r, rbias, xp, gates,
                          src):
        pg, pg1, pj0, pj1, pgs = product_columns(cfg, gcount, j0, j1)
        gemm_gates(src, lo, hi, cfg[C_HOUT], r, pg, 0, pg1, pj0, pj1, pgs, rbias, gates, back)
    if late:
        x2, w_ih, bias, _ = ahead
        project(x2, w_ih, bias, xp, cfg, lengths, 1, 0, j0, j1, False, back)
    update_a(s, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, peep, xp, gates, src, dst, aux,
              c, False)


@inline
def product_columns(cfg, gcount, j0, j1):
    """gemm_gates' (gates, g1, j0, j1, gs) for units [j0, j1) of the first gcount gates; with the
    gates laid flat (C_FLAT, only where a call runs every unit at once) all C_GW columns as one."""
    if cfg[C_FLAT] != 0:
        return 1, 1, 0, cfg[C_GW], cfg[C_GW]
    return GATES[cfg[C_MODE]], gcount, j0, j1, cfg[C_HP]


@inline
def gate_stride(cfg):
    """Where gate k's units start in a row of gates or projected input: k * this."""
    return cfg[C_H] if cfg[C_FLAT] != 0 else cfg[C_HP]


@inline
def _product_ahead(s, back, ahead, lo, j0, j1, gcount, cfg, lengths, r, rbias, xp, gates, src):
    """phase_a's product with this step's share of a later block's input projection, if the
    step carries one (ahead_slot); False when it does not (the caller runs the plain one)."""
    x2, w_ih, bias, carried = ahead
    if not carried:
        return False
    slot, first = ahead_slot(s, lengths)
    if slot < 0:
        return False
    t = step_time(first, lengths[0], cfg[C_REV] != 0)
    down = -1 if cfg[C_REV] != 0 else 1  # reversed: the block's rows run backward in x
    gemv_gates_ahead(src, lo, cfg[C_HOUT], r, gcount, j0, j1, cfg[C_HP], rbias, gates, back, x2,
                     t * x2.shape[1], down * x2.shape[1], w_ih, bias, xp, t * xp.shape[1],
                     down * xp.shape[1], slot)
    return True


@inline
def ahead_slot(s, lengths):
    """(slot, first step of the block it projects) of step s, or slot -1: nothing to project.

    A one-row call whose steps carry its input projection (LSTM, GRU lbr=1, float32 with 32
    vector registers, weights up to recurrent._AHEAD_MAX_BYTES; serial, or run_units' blocks
    that do not start early) does not project its whole input before the first step. Its steps
    run in blocks of AHEAD; while block b runs, each of its steps (slot s % AHEAD) projects one
    vector of every panel of units for the AHEAD rows of block b + 1 inside its own recurrent
    product (gemm.gemv_gates_ahead): that product waits on the cache, the projection reuses each
    weight AHEAD times and fills the idle FMA units. project does the first block and the steps
    after the last whole block up front."""
    block = s // AHEAD
    if block + 2 > lengths[0] // AHEAD:
        return -1, 0
    return s - block * AHEAD, (block + 1) * AHEAD


@inline
def projects_ahead(cfg, lengths):
    """Whether a call's steps may carry its input projection: cfg's flag, and one row."""
    return cfg[C_AHEAD] != 0 and lengths.shape[0] == 1


@inline
def update_a(s, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, peep, xp, gates, src, dst, aux,
              c, inline_cell):
    """phase_a's update, once gates holds the recurrent product of units [j0, j1).
    inline_cell, a constant at each call site: the default cells' IR (kernels/cells.py) inlined
    into the caller instead of called. The early-start blocks of a unit split
    (units._finish_block) ran 2-6 % faster with it (H = 64 and 128 on two threads, where the
    update is on the critical path of every handover); the serial steps 1-3 % slower (LLVM lays
    their loop out worse)."""
    mode = cfg[C_MODE]
    gs = gate_stride(cfg)
    u1 = min(j1, cfg[C_H])
    rows_total = lengths.shape[0]
    reverse = cfg[C_REV] != 0
    fast = cfg[C_FAST] != 0
    lbr = cfg[C_LBR] != 0
    for n in range(lo, hi):
        length = lengths[n]
        if s >= length:
            continue
        t = step_time(s, length, reverse)
        xr = xp[t * rows_total + n]
        g = gates[n]
        if mode == LSTM:
            out = dst[n] if cfg[C_P] == 0 else aux[n]
            if inline_cell and fast and cfg[C_IFG] == 0:
                lstm_cell(g, xr, c[n], peep, out, gs, j0, u1, clip, cfg[C_PEEP] != 0)
            else:
                lstm_update(g, xr, c[n], peep, out, gs, j0, u1, cfg[C_IFG] != 0, fast, codes,
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
            rnn_update(g, xr, dst[n], j0, u1, fast, codes[0], a, b, clip)


@inline
def needs_phase_b(cfg):
    return (cfg[C_MODE] == LSTM and cfg[C_P] > 0) or (cfg[C_MODE] == GRU and cfg[C_LBR] == 0)


@helper
def phase_b(s, back, lo, hi, j0, j1, cfg, fcfg, codes, clip, lengths, r, w_hr, zeros, xp, gates,
             src, dst, aux):
    """Second half of a step: LSTM projection (units = projected outputs, [j0, j1) whole panels
    of H_out_p) or GRU lbr=0's n gate (units as in phase_a)."""
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
        t = step_time(s, length, reverse)
        _gru_update(gates[n], xp[t * rows_total + n], src[n], dst[n], gs, j0, u1, False, fast,
                    codes[1], a, b, clip)


@inline
def emit_rows(s, lo, hi, j0, j1, reverse, lengths, dst, col0, y, yd, h):
    """Copy the new h of units [j0, min(j1, H_out)) (dst's columns from col0 on) to y; at a row's
    last step also to the final state."""
    j1 = min(j1, h.shape[1])
    for n in range(lo, hi):
        length = lengths[n]
        if s >= length:
            continue
        t = step_time(s, length, reverse)
        d = dst[n, col0 + j0:col0 + j1]
        copy_values(d, y[t, n, yd, j0:j1], d.size)
        if s == length - 1:
            copy_values(d, h[n, j0:j1], d.size)


@inline
def begin_rows(lo, hi, cfg, lengths, h, c, hb):
    """Load the initial state of rows [lo, hi) into the ping-pong buffer; zero L = 0 rows."""
    for n in range(lo, hi):
        zero_if_empty(n, cfg, lengths, h, c)
        copy_values(h[n], hb[0, n], h.shape[1])


@inline
def zero_if_empty(n, cfg, lengths, h, c):
    """L = 0 rows start (and end) with a zero state, as ONNX Runtime does."""
    if lengths[n] == 0:
        for j in range(h.shape[1]):
            h[n, j] = 0
        if cfg[C_MODE] == LSTM:
            for j in range(c.shape[1]):
                c[n, j] = 0


@helper
def step_rows(lo, hi, s0, s1, flip, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros, ahead, late,
          xp, gates, hb, aux, c, y, yd, h):
    """Rows [lo, hi) over steps [s0, s1) of their sequences, all units, in lock-step (s0 = 0
    loads the initial state). Steps s with (s + flip) odd walk the weights backward. ahead and
    late as in phase_a."""
    fp_mode = denormals_off()
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], rbias)
    hout = cfg[C_HOUT]
    reverse = cfg[C_REV] != 0
    if s0 == 0:
        begin_rows(lo, hi, cfg, lengths, h, c, hb)
    two_phases = needs_phase_b(cfg)
    for s in range(s0, min(s1, longest(lengths, lo, hi))):
        src = hb[s & 1]
        dst = hb[(s + 1) & 1]
        back = (s + flip) & 1
        phase_a(s, back, ahead, late, lo, hi, 0, cfg[C_HP], cfg, fcfg, codes, clip, lengths, r,
                 rbias, peep, xp, gates, src, dst, aux, c)
        if two_phases:
            phase_b(s, back, lo, hi, 0, cfg[C_HOUTP], cfg, fcfg, codes, clip, lengths, r, w_hr,
                     zeros, xp, gates, src, dst, aux)
        emit_rows(s, lo, hi, 0, hout, reverse, lengths, dst, 0, y, yd, h)
    restore_fp_mode(fp_mode)


@helper
def project(x2, w_ih, bias, xp, cfg, lengths, chunks, chunk, j0, j1, carried, backward):
    """Chunk `chunk` of `chunks` of the hoisted input projection (blocks of rows) for units
    [j0, j1) of every gate; a call whose steps carry the projection (`carried`, ahead_slot) has
    only the steps that no step carries done here: the first block and the steps after the last
    whole one (one range when there are fewer than two). backward: panels last to first (a
    one-step call's late projection, see serial)."""
    fp_mode = denormals_off()
    gates = GATES[cfg[C_MODE]]
    length = lengths[0]
    blocks = length // AHEAD
    # one call site of gemm_gates for every case: each call site is compiled (and LLVM may
    # inline it) again
    for part in range(2 if carried and blocks >= 2 else 1):
        if not carried:
            lo, hi = chunk_bounds(x2.shape[0], chunks, chunk, 4)
        else:
            s0 = blocks * AHEAD if part == 1 else 0
            s1 = length if part == 1 or blocks < 2 else AHEAD
            lo, hi = (length - s1, length - s0) if cfg[C_REV] != 0 else (s0, s1)
        if lo < hi:
            pg, pg1, pj0, pj1, pgs = product_columns(cfg, gates, j0, j1)
            gemm_gates(x2, lo, hi, x2.shape[1], w_ih, pg, 0, pg1, pj0, pj1, pgs, bias, xp,
                       backward)
    restore_fp_mode(fp_mode)


@inline
def serial(x, wbuf, wpk, cfg, fcfg, lengths, h, c, y, yd, sbuf):
    steps, rows = x.shape[0], x.shape[1]
    w_ih, bias, r, rbias, peep, w_hr, zeros = weight_views(wbuf, wpk, cfg)
    xp, gates, hb, aux, cb = scratch_views(sbuf, cfg, rows, steps)
    x2 = carve(x, 0, (steps * rows, x.shape[2]))
    carried = projects_ahead(cfg, lengths)
    # The walking order alternates across calls too: a stream's one-step calls with the same
    # scratch then alternate as a sequence's steps do. The scratch's last slot keeps the parity.
    flip = 1 if sbuf[sbuf.size - 1] != 0 else 0
    # A one-step call reads both weight matrices: every other one walks them in the reverse
    # order (the recurrent product backward, then the projection backward), so that it starts
    # on what the call before read last, still in L2 where both do not fit.
    late = steps == 1 and flip == 1
    if not late:
        project(x2, w_ih, bias, xp, cfg, lengths, 1, 0, 0, cfg[C_HP], carried, 0)
    step_rows(0, rows, 0, steps, flip, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
          (x2, w_ih, bias, carried), late, xp, gates, hb, aux, c, y, yd, h)
    sbuf[sbuf.size - 1] = (flip + longest(lengths, 0, rows)) & 1
