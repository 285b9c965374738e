"""Matrix products out[m, o] = bias[o] + a[m, :k_len] . B[:, o] against prepacked weights.

B (K x O, from weights stored O x K) is packed once by `pack_panels` into panels of PANEL
columns (simd.py): each register tile then streams its weights contiguously. Every output width
the engine asks for is a whole number of panels (the caller pads O), so tiles never need edges.
Batch 1 (one row of a) uses 1 x 128 tiles: eight vectors in flight hide the FMA latency and
stream four panels at once; more rows use 4 x 32 tiles over blocks of rows.
"""
import numpy as np

from ._jit import helper
from .simd import PANEL, tile

_T4 = tile(4, PANEL)
_T3 = tile(3, PANEL)
_T2 = tile(2, PANEL)
_T1 = tile(1, PANEL)
_T1_WIDE = tile(1, 4 * PANEL)
_ROW_BLOCK = 128  # rows of a per pass over B: a block of a stays in L2 while B's panels stream


def padded(n: int) -> int:
    """n rounded up to whole panels."""
    return -(-n // PANEL) * PANEL


def pack_panels(w: np.ndarray) -> np.ndarray:
    """Weights w (O, K), O a multiple of PANEL, as panels: the 1-D array gemm_packed streams."""
    rows, k = w.shape
    if rows % PANEL:
        raise ValueError(f"pack_panels needs a multiple of {PANEL} rows, got {rows}")
    return np.ascontiguousarray(w.reshape(rows // PANEL, PANEL, k).transpose(0, 2, 1)).ravel()


@helper
def gemm_packed(a, m_lo, m_hi, k_len, bp, o_lo, o_hi, bias, out):
    """out[m, o] = bias[o] + sum_{k < k_len} a[m, k] * B[k, o] for m in [m_lo, m_hi) and
    o in [o_lo, o_hi) (o_lo, o_hi multiples of PANEL); bp = pack_panels(B^T)."""
    lda = a.shape[1]
    ldo = out.shape[1]
    pstride = k_len * PANEL
    if m_hi - m_lo == 1:
        m = m_lo
        o = o_lo
        while o + 4 * PANEL <= o_hi:
            _T1_WIDE(a, m * lda, lda, bp, o * k_len, pstride, k_len, bias, o, out, m * ldo + o,
                     ldo)
            o += 4 * PANEL
        while o < o_hi:
            _T1(a, m * lda, lda, bp, o * k_len, pstride, k_len, bias, o, out, m * ldo + o, ldo)
            o += PANEL
        return
    for block in range(m_lo, m_hi, _ROW_BLOCK):
        block_hi = min(block + _ROW_BLOCK, m_hi)
        for o in range(o_lo, o_hi, PANEL):
            b_off = o * k_len
            m = block
            while m + 4 <= block_hi:
                _T4(a, m * lda, lda, bp, b_off, pstride, k_len, bias, o, out, m * ldo + o, ldo)
                m += 4
            left = block_hi - m
            if left == 3:
                _T3(a, m * lda, lda, bp, b_off, pstride, k_len, bias, o, out, m * ldo + o, ldo)
            elif left == 2:
                _T2(a, m * lda, lda, bp, b_off, pstride, k_len, bias, o, out, m * ldo + o, ldo)
            elif left == 1:
                _T1(a, m * lda, lda, bp, b_off, pstride, k_len, bias, o, out, m * ldo + o, ldo)
