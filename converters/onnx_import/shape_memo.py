"""The part of a schedule that computes values from its inputs' shapes alone, run once per set of
input shapes and remembered.

onnx-free. Exporters write shape arithmetic around every recurrent layer (tf2onnx builds zero
states, trip counts and time limits with Shape, Slice, Cast, Concat, Expand and ConstantOfShape:
~30 of a Keras Bidirectional export's 80 nodes, ~100 us of a call). Which values follow from the
inputs' shapes alone is found on the schedule's nodes:
- a value's *shape* follows from them when it is an input, a constant, or the output of an op in
  SHAPE_PARAMETERS whose inputs' shapes follow from them and whose parameter inputs (those
  SHAPE_PARAMETERS lists: a Reshape's shape, a Slice's bounds) are known from them;
- a value is *known* from them when it is a constant, the Shape or Size of a value whose shape
  follows from them, or the output of a numpy kernel (deterministic) whose inputs are all known.
A schedule's nodes whose outputs are all known run with the rest at the first two calls with a
set of input shapes and dtypes; at the second their outputs (those of up to _ELEMENTS_KEPT
elements, read-only, as constants are) are kept, and later calls with those shapes skip the
nodes that made them.
"""
from __future__ import annotations

import numpy as np

from .kernels import BINARY, KERNELS, UNARY

_KEYS_KEPT = 32  # sets of input shapes remembered per schedule before it starts afresh
_SEEN_KEPT = 1024  # sets of input shapes met once, before it starts afresh
_ELEMENTS_KEPT = 1 << 12  # a kept value's size at most (larger ones are computed every call)
_SAME_SHAPE = ("Identity", "Cast", "CastLike", "Where", "Clip", "LeakyRelu", "HardSigmoid",
               "Sign", "Softmax", "LogSoftmax", "Elu", "Selu", "Gelu", "PRelu", "ThresholdedRelu",
               "Mod", "Max", "Min", "Sum", "Mean", "Dropout", "ReverseSequence", "CumSum",
               "Trilu")
_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
           "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
# op -> its inputs whose values (not only shapes) decide its outputs' shapes
SHAPE_PARAMETERS: dict[str, tuple] = {
    **{op: () for op in (*BINARY, *UNARY, *_SAME_SHAPE)},
    **{op: () for op in ("Transpose", "MatMul", "Gemm", "Concat", "Flatten", "Gather",
                         "GatherElements", "ArgMax", "ArgMin")},
    **{op: (1,) for op in ("Squeeze", "Unsqueeze", "Reshape", "Expand", "Split", "Tile",
                           *_REDUCE)},
    "Slice": (1, 2, 3, 4), "ConstantOfShape": (0,), "Range": (0, 1, 2),
}
_OF_SHAPES = ("Shape", "Size")
_NOT_KEPT = ("Conditional",)  # a numpy kernel whose branches are nested plans


def memo_for(segments: list, input_names: list, constants) -> "ShapeMemo | None":
    """The memo of a schedule's `segments` ((quiet, steps) in order) whose inputs are
    `input_names`, or None where no step computes a value known from the inputs' shapes
    alone."""
    shaped = set(input_names) | set(constants) | {""}
    known = set(constants) | {""}
    kept = set()  # the numbers (step[6]) of the steps whose outputs are known
    for _, steps in segments:
        for step in steps:
            node = step[2]
            if node.op in _OF_SHAPES:
                ok = all(name in shaped for name in node.inputs)
            else:
                ok = node.op in KERNELS and node.op not in _NOT_KEPT and \
                    all(name in known for name in node.inputs)
            if ok:
                known.update(node.outputs)
                shaped.update(node.outputs)
                kept.add(step[6])
                continue
            parameters = SHAPE_PARAMETERS.get(node.op)
            if parameters is not None and all(name in shaped for name in node.inputs) and \
                    all(node.inputs[i] in known for i in parameters if i < len(node.inputs)):
                shaped.update(node.outputs)
    return ShapeMemo(segments, kept) if kept else None


class ShapeMemo:
    """``run(inputs, values, run_segments)``: the segments on `values` (the schedule's slots, the
    inputs in theirs), the steps whose outputs the inputs' shapes decide only at the first two
    calls with those shapes."""

    def __init__(self, segments: list, kept: set):
        self._segments = segments
        self._kept = kept
        self._by_shapes: dict[tuple, tuple] = {}
        self._seen: set[tuple] = set()

    def run(self, inputs, values: list, run_segments) -> None:
        key = _shapes_key(inputs)
        known = None if key is None else self._by_shapes.get(key)
        if known is not None:
            segments, kept = known
            for slot, value in kept:
                values[slot] = value
            run_segments(segments, values)
            return
        run_segments(self._segments, values)
        if key is None:
            return
        if key not in self._seen:  # remembered from the second call with these shapes on:
            if len(self._seen) >= _SEEN_KEPT:  # calls of ever new lengths skip the cost of
                self._seen.clear()             # remembering (~65 us at 80 nodes)
            self._seen.add(key)
            return
        if len(self._by_shapes) >= _KEYS_KEPT:
            self._by_shapes.clear()
        self._by_shapes[key] = self._remembered(values)

    def _remembered(self, values: list) -> tuple:
        """(the segments a call with these shapes runs, the (slot, value) pairs it is given)."""
        segments, kept = [], []
        for quiet, steps in self._segments:
            rest = []
            for step in steps:
                slots = (step[5],) if type(step[5]) is int else step[5]
                outs = [values[slot] for slot in slots]
                if step[6] in self._kept and all(_keepable(v) for v in outs):
                    kept += [(slot, _read_only(v)) for slot, v in zip(slots, outs) if slot != 1]
                else:  # (slot 1 takes absent outputs)
                    rest.append(step)
            if rest:
                segments.append((quiet, rest))
        return segments, kept


def _shapes_key(inputs) -> tuple | None:
    key = []
    for value in inputs:
        if type(value) is not np.ndarray:
            return None
        key += (value.shape, value.dtype.str)
    return tuple(key)


def _keepable(value) -> bool:
    return isinstance(value, np.generic) or (type(value) is np.ndarray
                                              and value.size <= _ELEMENTS_KEPT)


def _read_only(value):
    """`value` as a read-only array, as constants are (a numpy scalar as it is)."""
    if type(value) is np.ndarray and value.flags.writeable:
        if not value.flags.owndata:
            value = value.copy()
        value.flags.writeable = False
    return value
