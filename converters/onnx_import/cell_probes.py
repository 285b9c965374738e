"""How the cell recognisers (loop_cells, unrolled_cells) probe the step a graph computes, and when
the cell they guessed gives the same values. onnx-free.

A step that is not a standard cell can agree with one on small inputs: relu6 (Clip(0, 6)) with
relu, an LSTM whose cell state is clipped with the plain LSTM, a step that adds a small constant.
So the probes come at several scales, up to pre-activations in the thousands, where a threshold
anywhere below shows; and a guess must give the graph's values to within the rounding of the
graph's dtype: MATCH relative, plus ROUNDING rounding errors (the dtype's epsilon) of the sums
that made each value (`magnitude`: the sum of its pre-activations' absolute terms).
"""
import numpy as np

# x ~ N(0, s) and states ~ U(-s, s) for each scale s: the small inputs a trained cell sees (twice),
# then inputs that saturate every gate and pass every threshold up to the thousands
SCALES = (1.0, 1.0, 30.0, 1000.0)
MATCH = 1e-5
ROUNDING = 16


def inputs(rng, shape, scale: float, dtype, kind: str) -> np.ndarray:
    """A probe's random step input (kind "x": normal) or state ("state": uniform), scaled."""
    if kind == "x":
        values = rng.standard_normal(shape) * scale
    else:
        values = rng.uniform(-scale, scale, shape)
    return values.astype(dtype)


def gated_state(gates: int, h, c):
    """The state a gate multiplies in the new state: an LSTM's c (c' = f c + i g), a GRU's h
    (h' = (1 - z) n + z h); none for an Elman cell."""
    return {4: c, 3: h}.get(gates)


def magnitude(terms: np.ndarray, gates: int, gated=None) -> np.ndarray:
    """Per row and unit, what a step's value may round by: the largest over the `gates` gates of
    the sum of its pre-activation's absolute terms (`terms` [N, gates * H], e.g. |x| @ |W|.T +
    |h| @ |R|.T + |b|); with a `gated` state (gated_state), times 1 + |state| (a gate's error
    times the state) plus |state|."""
    rows = terms.shape[0]
    largest = np.abs(terms).reshape(rows, gates, -1).max(axis=1)
    if gated is None:
        return largest
    state = np.abs(np.asarray(gated, np.float64))
    return largest * (1 + state) + state


def agrees(got, want, magnitude_of_want) -> bool:
    """Whether the graph's values `got` are the float64 reference `want` to within got's
    rounding (module docstring)."""
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype.kind != "f":
        return False
    eps = float(np.finfo(got.dtype).eps)
    tolerance = MATCH * (1 + np.abs(want)) + ROUNDING * eps * magnitude_of_want
    return bool(np.all(np.abs(got - want) <= tolerance))


def steps_agree(got: list, want: list, terms: np.ndarray, gates: int, gated=None) -> bool:
    """Whether each of a step's values (new h, c, ...) agrees with the reference's, all rounding
    by magnitude(terms, gates, gated)."""
    rounding = magnitude(terms, gates, gated)
    return all(agrees(g, w, rounding) for g, w in zip(got, want))
