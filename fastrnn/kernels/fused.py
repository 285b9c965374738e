"""Batches: the input and recurrent products fused into one product per step ([x_t, h] against
[W, R]), over blocks of batch rows."""
from numba import prange

from ._jit import helper, kernel
from .activations import typed
from .fpmode import denormals_off, restore_fp_mode
from .gemm import gemm_gates
from .layout import (C_CODE, C_FAST, C_H, C_IFG, C_MODE, C_PEEP, C_REV, LSTM, chunk_bounds,
                     copy_values, longest, state_views, step_time, weight_views)
from .steps import emit_rows, lstm_update, rnn_update, zero_if_empty


@helper
def _fused_rows(lo, hi, x, wr, bsum, cfg, fcfg, lengths, peep, zeros, xh, gates, c, y, yd, h):
    """Rows [lo, hi) of an LSTM (no projection) or RNN: each step gates = [x_t, h] @ [W, R]^T +
    bias, one product with K = I + H instead of a hoisted K = I projection and a K = H product:
    the gates of a step are written and read once, not twice. wr is packed as one gate of
    bsum.size columns (G*H, whole panels), gate k's units at k*H. xh (2, N, I + H) ping-pongs
    [x_t, h]."""
    fp_mode = denormals_off()
    codes = cfg[C_CODE:C_CODE + 3]
    clip = typed(fcfg[0], bsum)
    mode = cfg[C_MODE]
    hid = cfg[C_H]
    feats = x.shape[2]
    reverse = cfg[C_REV] != 0
    fast = cfg[C_FAST] != 0
    for n in range(lo, hi):
        zero_if_empty(n, cfg, lengths, h, c)
        copy_values(h[n], xh[0, n, feats:], hid)
    for s in range(longest(lengths, lo, hi)):
        src = xh[s & 1]
        dst = xh[(s + 1) & 1]
        for n in range(lo, hi):
            length = lengths[n]
            if s < length:
                copy_values(x[step_time(s, length, reverse), n], src[n], feats)
        gemm_gates(src, lo, hi, src.shape[1], wr, 1, 0, 1, 0, bsum.size, bsum.size, bsum, gates,
                   s & 1)
        for n in range(lo, hi):
            length = lengths[n]
            if s >= length:
                continue
            out = dst[n, feats:]
            if mode == LSTM:
                lstm_update(gates[n], zeros, c[n], peep, out, hid, 0, hid, cfg[C_IFG] != 0,
                             fast, codes, fcfg, clip, cfg[C_PEEP] != 0)
            else:
                rnn_update(gates[n], zeros, out, 0, hid, fast, codes[0], typed(fcfg[1], clip),
                            typed(fcfg[4], clip), clip)
        emit_rows(s, lo, hi, 0, hid, reverse, lengths, dst, feats, y, yd, h)
    restore_fp_mode(fp_mode)


@kernel(parallel=True)
def run_fused(x, wr, bsum, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, xh, gates,
              chunks):
    """LSTM without projection / RNN over batch rows split into `chunks` blocks (one thread each)."""
    h, c, y = state_views(cfg, hs, cs, slot, y3)
    w_ih, bias, r, rbias, peep, w_hr, zeros = weight_views(wbuf, wpk, cfg)
    rows = x.shape[1]
    for ch in prange(chunks):
        lo, hi = chunk_bounds(rows, chunks, ch, 1)
        _fused_rows(lo, hi, x, wr, bsum, cfg, fcfg, lengths, peep, zeros, xh, gates, c, y, yd, h)


@kernel
def run_fused_serial(x, wr, bsum, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, xh, gates):
    """run_fused on the calling thread (no parallel region: safe whatever the threading layer)."""
    h, c, y = state_views(cfg, hs, cs, slot, y3)
    w_ih, bias, r, rbias, peep, w_hr, zeros = weight_views(wbuf, wpk, cfg)
    _fused_rows(0, x.shape[1], x, wr, bsum, cfg, fcfg, lengths, peep, zeros, xh, gates, c, y, yd,
                h)
