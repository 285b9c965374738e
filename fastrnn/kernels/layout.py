"""The kernels' flat buffers (engine.py describes them): the cfg slots, views of a direction's
weights and scratch, of a stack's states, and the small loops every kernel shares."""
from ._jit import inline
from .gemm import padded
from .views import carve

RNN, GRU, LSTM = 0, 1, 2
GATES = (1, 3, 4)
# cfg slots
C_MODE, C_H, C_HOUT, C_I, C_P, C_REV, C_LBR, C_IFG, C_FAST, C_CODE = range(10)
C_HP, C_HOUTP = 12, 13
C_OFF = 14  # offsets: w_ih, bias, r, rbias, peep, w_hr, zeros
C_AHEAD = C_OFF + 7  # one-row calls may project their input ahead (steps.ahead_slot)
C_PEEP = C_AHEAD + 1  # an LSTM with peepholes (without, peep holds zeros the update skips)
# Columns of the gate products: G*Hp, each gate's units padded to whole panels; or, where C_FLAT
# is set, padded(G*H): the gates laid one after another, gate k's units at k*H, padded once (for
# the kernels that run every unit of a step at once; a unit split needs whole panels of every gate)
C_GW = C_PEEP + 1
C_FLAT = C_GW + 1
CFG_LEN = C_FLAT + 1


@inline
def weight_views(wbuf, wpk, cfg):
    """From wpk the packed weights (1-D panels, gemm.pack_gates) w_ih, r, w_hr; from wbuf bias
    and rbias (C_GW), peep (3, H), zeros (at least C_GW and H_out_p)."""
    hid = cfg[C_H]
    gh = cfg[C_GW]
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
def scratch_views(sbuf, cfg, rows_total, steps):
    gh = cfg[C_GW]
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
    """Elements of sbuf that scratch_views lays out (plain Python: calling the jitted _pad from
    Python cost ~2 us a call, 8 us of every forward call), for gates padded each (C_FLAT's
    need no more)."""
    gh = gates * padded(hid)
    return (_pad_py(steps * rows * gh) + _pad_py(rows * gh) + _pad_py(2 * rows * padded(hout))
            + _pad_py(rows * hid) + _pad_py(rows * padded(hid)) + 1)


def _pad_py(n):
    return (n + 15) // 16 * 16


@inline
def _pad(n):
    return (n + 15) // 16 * 16


@inline
def step_time(s, length, reverse):
    return length - 1 - s if reverse else s


@inline
def state_views(cfg, hs, cs, slot, y):
    """A direction's h (N, H_out) and c (N, H; empty for RNN/GRU) in the stacks of states, and
    the layer output y (T, N, D*H_out) as (T, N, D, H_out)."""
    hout = cfg[C_HOUT]
    return (hs[slot], cs[slot if cfg[C_MODE] == LSTM else 0],
            carve(y, 0, (y.shape[0], y.shape[1], y.shape[2] // hout, hout)))


@inline
def chunk_bounds(total, chunks, c, align):
    """Bounds of chunk c of `chunks` over range(total), aligned to `align`."""
    lo = (total * c // chunks) // align * align
    hi = total if c == chunks - 1 else (total * (c + 1) // chunks) // align * align
    return lo, hi


@inline
def copy_values(src, dst, count):
    """dst[:count] = src[:count], as a loop: kernels run without numba's runtime (no refcounted
    temporaries), which slice assignment needs."""
    for j in range(count):
        dst[j] = src[j]


@inline
def longest(lengths, lo, hi):
    m = 0
    rows = lengths[lo:hi]
    for n in range(rows.size):
        m = max(m, rows[n])
    return m
