"""The one place that calls numba.njit: every kernel shares these options.

fastmath drops only the flags that are safe for recurrent inference: reassociation (so dot products
vectorise), contraction (FMA), no signed zeros and reciprocal approximations. It keeps NaN/Inf
semantics, because `clip` uses +inf for "no clip" and overflowing exp must still saturate sigmoid.
error_model="numpy" removes the division-by-zero branch that blocks vectorisation.
"""
import numba

FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})
_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy", _nrt=False)


def kernel(fn=None, *, parallel=False):
    """Compile a kernel entry point (optionally with prange loops)."""
    if fn is None:
        return lambda f: numba.njit(f, parallel=parallel, **_OPTIONS)
    return numba.njit(fn, parallel=parallel, **_OPTIONS)


def inline(fn):
    """Compile a helper that is always inlined into the kernels that call it."""
    return numba.njit(fn, inline="always", **_OPTIONS)


def helper(fn):
    """Compile a helper called from kernels (compiled once, inlined by LLVM where it pays)."""
    return numba.njit(fn, **_OPTIONS)
