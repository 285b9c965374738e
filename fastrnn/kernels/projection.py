"""Input projection of every (time, row) pair: out[m] = W x[m] + bias, hoisted out of the time loop."""
from numba import prange

from ._jit import inline

_ROWS = 4  # rows of x sharing one pass over a weight row (register blocking)


@inline
def project_rows(x, w, bias, out, lo, hi):
    """out[m, :] = w @ x[m, :] + bias for lo <= m < hi; x (M, I), w (GH, I)."""
    gh = w.shape[0]
    ni = w.shape[1]
    m = lo
    while m + _ROWS <= hi:
        for o in range(gh):
            a0 = bias[o]
            a1 = bias[o]
            a2 = bias[o]
            a3 = bias[o]
            for k in range(ni):
                wk = w[o, k]
                a0 += wk * x[m, k]
                a1 += wk * x[m + 1, k]
                a2 += wk * x[m + 2, k]
                a3 += wk * x[m + 3, k]
            out[m, o] = a0
            out[m + 1, o] = a1
            out[m + 2, o] = a2
            out[m + 3, o] = a3
        m += _ROWS
    while m < hi:
        for o in range(gh):
            acc = bias[o]
            for k in range(ni):
                acc += w[o, k] * x[m, k]
            out[m, o] = acc
        m += 1


@inline
def project_serial(x, w, bias, out):
    project_rows(x, w, bias, out, 0, x.shape[0])


@inline
def project_parallel(x, w, bias, out, chunks):
    """Split the rows into `chunks` contiguous blocks run in parallel."""
    m = x.shape[0]
    step = (m + chunks - 1) // chunks
    for c in prange(chunks):
        lo = c * step
        hi = min(m, lo + step)
        if lo < hi:
            project_rows(x, w, bias, out, lo, hi)
