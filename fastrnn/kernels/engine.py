"""Kernel entry points: one direction of one layer over a whole (padded) batch of sequences.

Every cell type runs through the same entries (here `run_serial`, `run_parallel` over blocks of
rows, `run_directions` and a stream's step `run_stream`; units.run_units over blocks of hidden
units; fused.run_fused for batches) with flat buffers (their slots and views: layout.py), so
that a call types few arguments (cheap dispatch, one specialisation per dtype):
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
a chunk (on a one-row call, carrying part of a later block's input projection:
steps.ahead_slot); then the fused, vectorised gate/cell update per row for the rows still
running. h ping-pongs between two buffers so that a unit-split parallel step never reads a
half-updated h.
Row n runs its own length L: forward t = 0..L-1, reverse t = L-1..0; its final state is copied
out at its last step; L = 0 leaves a zero state (ONNX Runtime's behaviour).
"""
from numba import prange

from ._jit import kernel
from .layout import (CFG_LEN, C_H, C_HOUT, C_HP, C_I, C_MODE, LSTM, chunk_bounds, scratch_views,
                     state_views, weight_views)
from .steps import project, serial, step_rows
from .views import carve


@kernel
def run_serial(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y, yd, sbuf):
    h, c, y4 = state_views(cfg, hs, cs, slot, y)
    serial(x, wbuf, wpk, cfg, fcfg, lengths, h, c, y4, yd, sbuf)


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
    serial(carve(x, 0, (1, rows, cfg[C_I])), wbuf, wpk, cfg, fcfg,
            carve(meta, S_LENGTHS, (rows,)), h, c, y, 0, sbuf)


@kernel(parallel=True)
def run_directions(x, lengths, hs, cs, slot, y, wbuf0, wpk0, cfg0, fcfg0, sbuf0, wbuf1, wpk1,
                   cfg1, fcfg1, sbuf1):
    """Both directions of a bidirectional layer at once, one thread each (they share nothing but
    x, y, of which each writes its own half, and the stacks of states, where the forward
    direction has `slot` and the reverse one the next)."""
    h0, c0, y4 = state_views(cfg0, hs, cs, slot, y)
    h1, c1, _ = state_views(cfg1, hs, cs, slot + 1, y)
    for d in prange(2):
        if d == 0:
            serial(x, wbuf0, wpk0, cfg0, fcfg0, lengths, h0, c0, y4, 0, sbuf0)
        else:
            serial(x, wbuf1, wpk1, cfg1, fcfg1, lengths, h1, c1, y4, 1, sbuf1)


@kernel(parallel=True)
def run_parallel(x, wbuf, wpk, cfg, fcfg, lengths, hs, cs, slot, y3, yd, sbuf, chunks):
    """chunks > 1 threads, each with a block of batch rows for the whole sequence (no
    synchronisation)."""
    h, c, y = state_views(cfg, hs, cs, slot, y3)
    steps, rows = x.shape[0], x.shape[1]
    w_ih, bias, r, rbias, peep, w_hr, zeros = weight_views(wbuf, wpk, cfg)
    xp, gates, hb, aux, cb = scratch_views(sbuf, cfg, rows, steps)
    x2 = carve(x, 0, (steps * rows, x.shape[2]))
    for ch in prange(chunks):
        project(x2, w_ih, bias, xp, cfg, lengths, chunks, ch, 0, cfg[C_HP], False, 0)
    for ch in prange(chunks):
        lo, hi = chunk_bounds(rows, chunks, ch, 1)
        step_rows(lo, hi, 0, steps, 0, cfg, fcfg, lengths, r, rbias, peep, w_hr, zeros,
              (x2, w_ih, bias, False), False, xp, gates, hb, aux, c, y, yd, h)
