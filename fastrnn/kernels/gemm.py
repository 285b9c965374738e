"""Register-blocked matrix products out[m, o] = bias[o] + a[m, :] . b[o, :] (both operands row-major).

Tiles of 4 rows of `a` x 4 rows of `b` keep 16 dot products in flight, so each pair of vector loads
feeds 2 FMAs (the loop over k vectorises with fastmath's reassociation); a single row of `a` (batch
1) uses 1 x 8 tiles. Used for the hoisted input projection, the per-step recurrent product and the
LSTM output projection.
"""
from ._jit import helper
from .activations import typed


@helper
def gemm_nt(a, m_lo, m_hi, b, o_lo, o_hi, bias, out):
    """gemm_nt unblocked: 4 x 4 tiles, a 1 x 8 row product for the last m_hi - m_lo mod 4 rows."""
    kk = a.shape[1]
    zero = typed(0.0, out)
    m = m_lo
    while m + 4 <= m_hi:
        o = o_lo
        while o + 4 <= o_hi:
            s00 = s01 = s02 = s03 = zero
            s10 = s11 = s12 = s13 = zero
            s20 = s21 = s22 = s23 = zero
            s30 = s31 = s32 = s33 = zero
            for k in range(kk):
                x0 = a[m, k]
                x1 = a[m + 1, k]
                x2 = a[m + 2, k]
                x3 = a[m + 3, k]
                w0 = b[o, k]
                w1 = b[o + 1, k]
                w2 = b[o + 2, k]
                w3 = b[o + 3, k]
                s00 += x0 * w0
                s01 += x0 * w1
                s02 += x0 * w2
                s03 += x0 * w3
                s10 += x1 * w0
                s11 += x1 * w1
                s12 += x1 * w2
                s13 += x1 * w3
                s20 += x2 * w0
                s21 += x2 * w1
                s22 += x2 * w2
                s23 += x2 * w3
                s30 += x3 * w0
                s31 += x3 * w1
                s32 += x3 * w2
                s33 += x3 * w3
            c0 = bias[o]
            c1 = bias[o + 1]
            c2 = bias[o + 2]
            c3 = bias[o + 3]
            out[m, o] = s00 + c0
            out[m, o + 1] = s01 + c1
            out[m, o + 2] = s02 + c2
            out[m, o + 3] = s03 + c3
            out[m + 1, o] = s10 + c0
            out[m + 1, o + 1] = s11 + c1
            out[m + 1, o + 2] = s12 + c2
            out[m + 1, o + 3] = s13 + c3
            out[m + 2, o] = s20 + c0
            out[m + 2, o + 1] = s21 + c1
            out[m + 2, o + 2] = s22 + c2
            out[m + 2, o + 3] = s23 + c3
            out[m + 3, o] = s30 + c0
            out[m + 3, o + 1] = s31 + c1
            out[m + 3, o + 2] = s32 + c2
            out[m + 3, o + 3] = s33 + c3
            o += 4
        while o < o_hi:
            s0 = s1 = s2 = s3 = zero
            for k in range(kk):
                w0 = b[o, k]
                s0 += a[m, k] * w0
                s1 += a[m + 1, k] * w0
                s2 += a[m + 2, k] * w0
                s3 += a[m + 3, k] * w0
            c0 = bias[o]
            out[m, o] = s0 + c0
            out[m + 1, o] = s1 + c0
            out[m + 2, o] = s2 + c0
            out[m + 3, o] = s3 + c0
            o += 1
        m += 4
    while m < m_hi:
        gemv_nt(a, m, b, o_lo, o_hi, bias, out)
        m += 1


@helper
def gemv_nt(x, m, b, o_lo, o_hi, bias, out):
    """out[m, o] = bias[o] + x[m] . b[o] for o_lo <= o < o_hi (1 x 8 tiles)."""
    kk = x.shape[1]
    zero = typed(0.0, out)
    o = o_lo
    while o + 8 <= o_hi:
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
        for k in range(kk):
            xk = x[m, k]
            s0 += xk * b[o, k]
            s1 += xk * b[o + 1, k]
            s2 += xk * b[o + 2, k]
            s3 += xk * b[o + 3, k]
            s4 += xk * b[o + 4, k]
            s5 += xk * b[o + 5, k]
            s6 += xk * b[o + 6, k]
            s7 += xk * b[o + 7, k]
        out[m, o] = s0 + bias[o]
        out[m, o + 1] = s1 + bias[o + 1]
        out[m, o + 2] = s2 + bias[o + 2]
        out[m, o + 3] = s3 + bias[o + 3]
        out[m, o + 4] = s4 + bias[o + 4]
        out[m, o + 5] = s5 + bias[o + 5]
        out[m, o + 6] = s6 + bias[o + 6]
        out[m, o + 7] = s7 + bias[o + 7]
        o += 8
    while o < o_hi:
        s0 = zero
        for k in range(kk):
            s0 += x[m, k] * b[o, k]
        out[m, o] = s0 + bias[o]
        o += 1
