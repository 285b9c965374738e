"""ONNX activation lists: names, default parameters and ONNX Runtime's alpha/beta consumption rule."""
import math
from typing import Sequence

import numpy as np

from .errors import ArgumentError
from .validation import as_float
from .kernels import activations as codes

CODES = {
    "sigmoid": codes.SIGMOID,
    "tanh": codes.TANH,
    "relu": codes.RELU,
    "affine": codes.AFFINE,
    "leakyrelu": codes.LEAKY_RELU,
    "thresholdedrelu": codes.THRESHOLDED_RELU,
    "scaledtanh": codes.SCALED_TANH,
    "hardsigmoid": codes.HARD_SIGMOID,
    "elu": codes.ELU,
    "softsign": codes.SOFTSIGN,
    "softplus": codes.SOFTPLUS,
}
TAKES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
TAKES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
# What ONNX Runtime uses when the alpha/beta list runs out (0 otherwise).
DEFAULT_ALPHA = {"leakyrelu": 0.01, "hardsigmoid": 0.2, "elu": 1.0}
DEFAULT_BETA = {"hardsigmoid": 0.5}

DEFAULTS = {"RNN": ("tanh",), "GRU": ("sigmoid", "tanh"), "LSTM": ("sigmoid", "tanh", "tanh")}
PER_DIRECTION = {mode: len(names) for mode, names in DEFAULTS.items()}

Activation = tuple  # (name, alpha, beta)


def canonical_name(name) -> str:
    if not isinstance(name, str):
        raise ArgumentError(f"activation names must be strings, got {name!r}")
    key = name.lower()
    if key not in CODES:
        raise ArgumentError(f"unknown activation {name!r}; expected one of {sorted(CODES)}")
    return key


def _number(value, what: str) -> float:
    number = as_float(value)
    if number is None or not math.isfinite(number):
        raise ArgumentError(f"{what} must be finite numbers, got {value!r}")
    return number


def _sequence(value, what: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ArgumentError(f"{what} must be a list, got {type(value).__name__} {value!r}")
    return list(value)


def parse(mode: str, names: Sequence[str] | None, alpha: Sequence[float] | None,
          beta: Sequence[float] | None, num_directions: int) -> tuple[tuple[Activation, ...], ...]:
    """Normalise an ONNX-style activation list into per-direction tuples of (name, alpha, beta).

    `names` holds one set per direction (forward first) or one set shared by every direction.
    alpha and beta are consumed in order only by the activations that take them (ORT's rule).
    """
    per = PER_DIRECTION[mode]
    alphas = [] if alpha is None else _sequence(alpha, "activation_alpha")
    betas = [] if beta is None else _sequence(beta, "activation_beta")
    if names is None:
        if alphas or betas:
            raise ArgumentError("activation_alpha/activation_beta given without activations")
        names = DEFAULTS[mode]
    names = [canonical_name(n) for n in _sequence(names, "activations")]
    if len(names) == per and num_directions > 1:
        return parse(mode, names, alphas, betas, 1) * num_directions
    if len(names) != per * num_directions:
        raise ArgumentError(
            f"{mode} with {num_directions} direction(s) expects {per} or {per * num_directions} "
            f"activations, got {len(names)}: {names}"
        )
    parsed = []
    for name in names:
        a = alphas.pop(0) if name in TAKES_ALPHA and alphas else DEFAULT_ALPHA.get(name, 0.0)
        b = betas.pop(0) if name in TAKES_BETA and betas else DEFAULT_BETA.get(name, 0.0)
        parsed.append((name, _number(a, "activation_alpha"), _number(b, "activation_beta")))
    return tuple(tuple(parsed[d * per:(d + 1) * per]) for d in range(num_directions))


def normalize_direction(mode: str, activations) -> tuple[Activation, ...]:
    """One direction's activations from names or (name, alpha, beta) tuples."""
    if activations is None:
        return parse(mode, None, None, None, 1)[0]
    activations = _sequence(activations, "activations")
    if all(isinstance(a, str) for a in activations):
        return parse(mode, activations, None, None, 1)[0]
    if not all(isinstance(a, (tuple, list)) and len(a) == 3 for a in activations):
        raise ArgumentError(f"activations must be names or (name, alpha, beta) tuples, got "
                            f"{activations!r}")
    result = tuple((canonical_name(n), _number(a, "activation alpha"),
                    _number(b, "activation beta")) for n, a, b in activations)
    if len(result) != PER_DIRECTION[mode]:
        raise ArgumentError(f"{mode} expects {PER_DIRECTION[mode]} activations per direction, "
                            f"got {len(result)}")
    return result


def kernel_arrays(direction: tuple[Activation, ...]):
    """(codes int64, alpha float64, beta float64) arrays for the kernels."""
    return (np.array([CODES[n] for n, _, _ in direction], dtype=np.int64),
            np.array([a for _, a, _ in direction], dtype=np.float64),
            np.array([b for _, _, b in direction], dtype=np.float64))
