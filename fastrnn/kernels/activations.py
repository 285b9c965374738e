"""Scalar activation functions, selected by an integer code (ONNX's list)."""
import numpy as np

from ._jit import inline

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
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@inline
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
    # SOFTPLUS
    return np.log1p(np.exp(x))
