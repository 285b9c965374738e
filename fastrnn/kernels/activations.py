"""Scalar activation functions, selected by an integer code (ONNX's list)."""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import helper, inline

SIGMOID = 0
TANH = 1
RELU = 2
AFFINE = 3
LEAKY_RELU = 4
THRESHOLDED_RELU = 5
SCALED_TANH = 6
HARD_SIGMOID = 7
ELU = 8
SOFTSIGN = 9
SOFTPLUS = 10


@inline
def clamp(x, clip):
    """x limited to [-clip, clip] (clip = inf: no limit); NaN stays NaN."""
    return min(max(x, -clip), clip)


@helper
def activate(code, alpha, beta, x):
    """Apply activation `code` with parameters alpha/beta to the scalar x."""
    if code == SIGMOID:
        return 1.0 / (1.0 + np.exp(-x))
    if code == TANH:
        return np.tanh(x)
    if code == RELU:
        return max(x, 0.0)
    if code == AFFINE:
        return alpha * x + beta
    if code == LEAKY_RELU:
        return x if x >= 0.0 else alpha * x
    if code == THRESHOLDED_RELU:
        return x if x > alpha else 0.0
    if code == SCALED_TANH:
        return alpha * np.tanh(beta * x)
    if code == HARD_SIGMOID:
        return min(max(alpha * x + beta, 0.0), 1.0)
    if code == ELU:
        return x if x >= 0.0 else alpha * (np.exp(x) - 1.0)
    if code == SOFTSIGN:
        return x / (1.0 + abs(x))
    # SOFTPLUS: log(1 + e^x) as max(x, 0) + log(1 + e^-|x|), which does not overflow to inf
    # where it is ~x (e^x does from x = 89 in float32)
    return max(x, 0.0) + np.log1p(np.exp(-abs(x)))


@intrinsic
def fenced(typingctx, x):
    """x (a float) behind llvm.arithmetic.fence: fastmath may not reassociate across it. The
    kernels allow reassociation, which rewrites (1 - z) * n + z * h as n - z * n + z * h: NaN
    for an infinite n and z = 0, where IEEE arithmetic gives n."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        name = f"llvm.arithmetic.fence.{'f32' if ty == ir.FloatType() else 'f64'}"
        fn = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(ty, [ty]), name)
        return builder.call(fn, [args[0]])
    return x(x), codegen


# ----- dtype-specialised fast paths for the default activations (sigmoid / tanh) -----
# float32 uses an odd rational approximation of tanh (the Eigen/MLAS 13/6 form, max error a few
# ulp) that LLVM vectorises, exactly +-1 from T_CLAMP on (the rational itself stays 2.4e-7 short of
# 1 there: an infinite pre-activation gave a gate of 1.2e-7 instead of 0, and 1.2e-7 * inf = inf
# where torch's 0 * inf is NaN); float64 keeps libm's exact tanh / exp. Chosen at compile time from
# the argument type; every constant is typed like the argument so float32 never promotes.

T_CLAMP = np.float32(7.90531110763549805)
# numerator (times x) and denominator coefficients in x^2, highest power first
TANH_P = tuple(np.float32(a) for a in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
TANH_Q = tuple(np.float32(b) for b in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))
_A13, _A11, _A9, _A7, _A5, _A3, _A1 = TANH_P
_B6, _B4, _B2, _B0 = TANH_Q
_HALF32 = np.float32(0.5)
_ONE32 = np.float32(1.0)


def _is32(t):
    return getattr(t, "dtype", t) == types.float32


def fast_tanh(x):
    """tanh(x): rational approximation for float32, libm for float64."""
    return np.tanh(x)


def fast_sigmoid(x):
    """1 / (1 + exp(-x)): via the rational tanh for float32, libm for float64."""
    return 1.0 / (1.0 + np.exp(-x))


def typed(value, like):
    """`value` converted to the float type of `like` (a scalar or an array)."""
    return value


@overload(fast_tanh, inline="always", fastmath=True)
def _ov_fast_tanh(x):
    if x == types.float32:
        def impl(x):
            x2 = x * x
            p = x2 * _A13 + _A11
            p = x2 * p + _A9
            p = x2 * p + _A7
            p = x2 * p + _A5
            p = x2 * p + _A3
            p = x2 * p + _A1
            p = x * p
            q = x2 * _B6 + _B4
            q = x2 * q + _B2
            q = x2 * q + _B0
            saturated = _ONE32 if x > 0 else -_ONE32
            return saturated if abs(x) >= T_CLAMP else p / q  # NaN fails the test: stays NaN
        return impl
    return lambda x: np.tanh(x)


@overload(fast_sigmoid, inline="always", fastmath=True)
def _ov_fast_sigmoid(x):
    if x == types.float32:
        def impl(x):
            return _HALF32 * fast_tanh(_HALF32 * x) + _HALF32
        return impl
    return lambda x: 1.0 / (1.0 + np.exp(-x))


@overload(typed, inline="always")
def _ov_typed(value, like):
    if _is32(like):
        return lambda value, like: np.float32(value)
    return lambda value, like: np.float64(value)
