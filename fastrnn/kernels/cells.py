"""One batch row of one direction over its whole sequence, for each cell.

Shared conventions (the Python side prepares every array):
  xp (T, N, G*H)   input projection with the folded biases, gate-major columns (torch gate order)
  r  (H, G, H_out) recurrent weights packed per hidden unit, so unit j's gates are contiguous
  h  (N, H_out)    state, read as the initial state and left holding the final state
  y  (T, N, H_out) outputs (a strided view is fine); the caller zero-fills padding steps
  gates (N, G*H)   per-row scratch
  act = (codes, alpha, beta) of this direction's activations; clip = +inf for none
Row n runs its own length L = lengths[n]: forward t = 0..L-1, reverse t = L-1..0. L = 0 leaves a
zero state, as ONNX Runtime does.
"""
from ._jit import inline
from .activations import activate


@inline
def clamp(x, clip):
    return min(max(x, -clip), clip)


@inline
def recurrent_dot(r, j, g, h, n, acc):
    """acc + r[j, g, :] . h[n, :]"""
    for k in range(h.shape[1]):
        acc += r[j, g, k] * h[n, k]
    return acc


@inline
def zero_state_row(h, n):
    for k in range(h.shape[1]):
        h[n, k] = 0.0


@inline
def time_index(s, length, reverse):
    return length - 1 - s if reverse else s


@inline
def rnn_row(n, xp, r, lengths, reverse, act, clip, h, y, gates):
    codes, alpha, beta = act
    hid = r.shape[0]
    length = lengths[n]
    if length == 0:
        zero_state_row(h, n)
    for s in range(length):
        t = time_index(s, length, reverse)
        for j in range(hid):
            gates[n, j] = recurrent_dot(r, j, 0, h, n, xp[t, n, j])
        for j in range(hid):
            hv = activate(codes[0], alpha[0], beta[0], clamp(gates[n, j], clip))
            h[n, j] = hv
            y[t, n, j] = hv


@inline
def gru_row(n, xp, r, rb_n, linear_before_reset, lengths, reverse, act, clip, h, y, gates, rh):
    """rb_n holds the n-gate recurrent bias kept apart for linear_before_reset (else zeros,
    folded into xp by the caller). rh (N, H) is scratch for r * h."""
    codes, alpha, beta = act
    hid = r.shape[0]
    length = lengths[n]
    if length == 0:
        zero_state_row(h, n)
    for s in range(length):
        t = time_index(s, length, reverse)
        for j in range(hid):
            gates[n, j] = recurrent_dot(r, j, 0, h, n, xp[t, n, j])
            gates[n, hid + j] = recurrent_dot(r, j, 1, h, n, xp[t, n, hid + j])
            if linear_before_reset:
                gates[n, 2 * hid + j] = recurrent_dot(r, j, 2, h, n, rb_n[j])
        for j in range(hid):
            gates[n, j] = activate(codes[0], alpha[0], beta[0], clamp(gates[n, j], clip))
            gates[n, hid + j] = activate(codes[0], alpha[0], beta[0], clamp(gates[n, hid + j], clip))
        if not linear_before_reset:
            for k in range(hid):
                rh[n, k] = gates[n, k] * h[n, k]
            for j in range(hid):
                gates[n, 2 * hid + j] = recurrent_dot(r, j, 2, rh, n, xp[t, n, 2 * hid + j])
        for j in range(hid):
            if linear_before_reset:
                pre = xp[t, n, 2 * hid + j] + gates[n, j] * gates[n, 2 * hid + j]
            else:
                pre = gates[n, 2 * hid + j]
            cand = activate(codes[1], alpha[1], beta[1], clamp(pre, clip))
            z = gates[n, hid + j]
            hv = (1.0 - z) * cand + z * h[n, j]
            h[n, j] = hv
            y[t, n, j] = hv


@inline
def lstm_row(n, xp, r, peep, w_hr, input_forget, lengths, reverse, act, clip, h, c, y, gates, hraw):
    """peep (3, H) rows i, f, o (zeros when the layer has none); w_hr (P, H) projection, P = 0 for
    none; hraw (N, H) scratch for the unprojected hidden state."""
    codes, alpha, beta = act
    hid = r.shape[0]
    proj = w_hr.shape[0]
    length = lengths[n]
    if length == 0:
        zero_state_row(h, n)
        zero_state_row(c, n)
    for s in range(length):
        t = time_index(s, length, reverse)
        for j in range(hid):
            for g in range(4):
                gates[n, g * hid + j] = recurrent_dot(r, j, g, h, n, xp[t, n, g * hid + j])
        for j in range(hid):
            c_prev = c[n, j]
            i = activate(codes[0], alpha[0], beta[0], clamp(gates[n, j] + peep[0, j] * c_prev, clip))
            if input_forget:
                f = 1.0 - i
            else:
                f = activate(codes[0], alpha[0], beta[0],
                             clamp(gates[n, hid + j] + peep[1, j] * c_prev, clip))
            g = activate(codes[1], alpha[1], beta[1], clamp(gates[n, 2 * hid + j], clip))
            c_new = f * c_prev + i * g
            o = activate(codes[0], alpha[0], beta[0],
                         clamp(gates[n, 3 * hid + j] + peep[2, j] * c_new, clip))
            c[n, j] = c_new
            hv = o * activate(codes[2], alpha[2], beta[2], c_new)
            if proj == 0:
                h[n, j] = hv
                y[t, n, j] = hv
            else:
                hraw[n, j] = hv
        for p in range(proj):
            acc = 0.0
            for k in range(hid):
                acc += w_hr[p, k] * hraw[n, k]
            h[n, p] = acc
            y[t, n, p] = acc
