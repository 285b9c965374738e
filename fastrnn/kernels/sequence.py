"""Kernel entry points: one direction of one layer over a whole (padded) batch of sequences.

Each entry projects the inputs of all steps first (one pass over W per block of rows), then runs the
recurrence row by row. The `_parallel` variants split the projection into blocks and the batch rows
across numba's threads; the serial variants open no parallel region at all (batch 1, streaming).

Arguments (bundled to keep the signatures short):
  x (T, N, I) C-contiguous input; weights: (w_ih (G*H, I), bias (G*H), r (H, G, H_out), extra...)
  act = (codes, alpha, beta); clip (+inf for none); lengths int64 (N,); reverse bool;
  state: (h,) or (h, c), updated in place; y (T, N, H_out) output view;
  scratch: (xp (T, N, G*H), gates (N, G*H), aux (N, H)); threads: blocks for the projection
  (passed in: reading numba's thread count inside a kernel would stop it from being cached).
"""
from numba import prange

from ._jit import kernel
from .cells import gru_row, lstm_row, rnn_row
from .projection import project_parallel, project_serial


@kernel
def rnn_serial(x, weights, act, clip, lengths, reverse, state, y, scratch):
    w_ih, bias, r = weights
    xp, gates, _ = scratch
    project_serial(x.reshape(-1, x.shape[2]), w_ih, bias, xp.reshape(-1, xp.shape[2]))
    for n in range(x.shape[1]):
        rnn_row(n, xp, r, lengths, reverse, act, clip, state[0], y, gates)


@kernel(parallel=True)
def rnn_parallel(x, weights, act, clip, lengths, reverse, state, y, scratch, threads):
    w_ih, bias, r = weights
    xp, gates, _ = scratch
    project_parallel(x.reshape(-1, x.shape[2]), w_ih, bias, xp.reshape(-1, xp.shape[2]),
                     threads)
    for n in prange(x.shape[1]):
        rnn_row(n, xp, r, lengths, reverse, act, clip, state[0], y, gates)


@kernel
def gru_serial(x, weights, act, clip, linear_before_reset, lengths, reverse, state, y, scratch):
    w_ih, bias, r, rb_n = weights
    xp, gates, rh = scratch
    project_serial(x.reshape(-1, x.shape[2]), w_ih, bias, xp.reshape(-1, xp.shape[2]))
    for n in range(x.shape[1]):
        gru_row(n, xp, r, rb_n, linear_before_reset, lengths, reverse, act, clip, state[0], y,
                gates, rh)


@kernel(parallel=True)
def gru_parallel(x, weights, act, clip, linear_before_reset, lengths, reverse, state, y, scratch, threads):
    w_ih, bias, r, rb_n = weights
    xp, gates, rh = scratch
    project_parallel(x.reshape(-1, x.shape[2]), w_ih, bias, xp.reshape(-1, xp.shape[2]),
                     threads)
    for n in prange(x.shape[1]):
        gru_row(n, xp, r, rb_n, linear_before_reset, lengths, reverse, act, clip, state[0], y,
                gates, rh)


@kernel
def lstm_serial(x, weights, act, clip, input_forget, lengths, reverse, state, y, scratch):
    w_ih, bias, r, peep, w_hr = weights
    xp, gates, hraw = scratch
    project_serial(x.reshape(-1, x.shape[2]), w_ih, bias, xp.reshape(-1, xp.shape[2]))
    for n in range(x.shape[1]):
        lstm_row(n, xp, r, peep, w_hr, input_forget, lengths, reverse, act, clip, state[0],
                 state[1], y, gates, hraw)


@kernel(parallel=True)
def lstm_parallel(x, weights, act, clip, input_forget, lengths, reverse, state, y, scratch, threads):
    w_ih, bias, r, peep, w_hr = weights
    xp, gates, hraw = scratch
    project_parallel(x.reshape(-1, x.shape[2]), w_ih, bias, xp.reshape(-1, xp.shape[2]),
                     threads)
    for n in prange(x.shape[1]):
        lstm_row(n, xp, r, peep, w_hr, input_forget, lengths, reverse, act, clip, state[0],
                 state[1], y, gates, hraw)
