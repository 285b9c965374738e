"""The nodes of an ONNX plan that compute from its inputs' shapes alone (exporters' shape
arithmetic: Shape, Gather, Concat, ConstantOfShape ...) run once per set of input shapes and are
remembered (converters/onnx_import/shape_memo.py): results as ONNX Runtime's for shapes met
again, new shapes, and values whose shapes follow from the inputs' values (never remembered).
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402

H = 5


def _model(nodes, inputs, outputs, consts):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        [numpy_helper.from_array(v, n) for n, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)  # fills in the outputs' types


def _zero_state_model():
    """tf2onnx's zero state: zeros [N, H] from X [T, N, I]'s shape, added to X's last step's
    projection; the batch size and X's shape are outputs too."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero_axis"], ["n1"]),
             helper.make_node("Concat", ["n1", "h"], ["state_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["state_shape"], ["zeros"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Cast", ["n"], ["n_float"], to=TensorProto.FLOAT),
             helper.make_node("Gather", ["x", "last"], ["x_last"], axis=0),
             helper.make_node("MatMul", ["x_last", "w"], ["projected"]),
             helper.make_node("Add", ["projected", "zeros"], ["y0"]),
             helper.make_node("Mul", ["y0", "n_float"], ["y"])]
    consts = {"one": np.array(1, np.int64), "zero_axis": np.array([0], np.int64),
              "h": np.array([H], np.int64), "last": np.array(-1, np.int64),
              "w": np.random.default_rng(0).standard_normal((3, H)).astype(np.float32)}
    return _model(nodes, [("x", TensorProto.FLOAT)], ["y", "shape", "zeros"], consts)


def test_shape_arithmetic_runs_once_per_set_of_shapes():
    """The Shape ... ConstantOfShape chain is remembered per input shape from its second call
    on: calls with shapes met before, new ones and the first again all give ORT's results; the
    X-reading nodes always run."""
    model = _zero_state_model()
    plan, sess = converters.from_onnx(model), ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(1)
    for T, N in [(4, 2), (4, 2), (7, 3), (4, 2), (1, 1), (7, 3)]:
        feeds = {"x": rng.standard_normal((T, N, 3)).astype(np.float32)}
        for got, want in zip(plan.run(None, feeds), sess.run(None, feeds)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-6)
    memo = plan._schedule(tuple(plan._output_names)).memo
    kept_ops = sorted(step[2].op for _, steps in memo._segments for step in steps
                      if step[6] in memo._kept)
    assert kept_ops == ["Cast", "Concat", "ConstantOfShape", "Gather", "Shape", "Unsqueeze"]
    # remembered at the second call with a shape: (1, 1) came once
    assert sorted(memo._by_shapes) == [((4, 2, 3), "<f4"), ((7, 3, 3), "<f4")]
    segments, given = memo._by_shapes[((4, 2, 3), "<f4")]
    assert sorted(step[2].op for _, steps in segments for step in steps) == \
        ["Add", "Gather", "MatMul", "Mul"]
    assert all(not value.flags.writeable for _, value in given)


def test_remembered_outputs_reach_the_caller_as_arrays_of_its_own():
    """An output computed from the shapes alone (X's shape, the zero state) comes back
    writeable, and writing into it changes nothing the plan remembers."""
    plan = converters.from_onnx(_zero_state_model())
    feeds = {"x": np.ones((4, 2, 3), np.float32)}
    for _ in range(3):
        y, shape, zeros = plan.run(None, feeds)
        assert shape.flags.writeable and zeros.flags.writeable
        np.testing.assert_array_equal(shape, [4, 2, 3])
        np.testing.assert_array_equal(zeros, np.full((2, H), 0.5, np.float32))
        shape[:] = 0
        zeros[:] = -1


def test_shapes_that_follow_from_values_are_never_remembered():
    """A count read from an input's value (ConstantOfShape of it, Range up to it, Reshape to
    it) and the shape of NonZero's output change with the values at one input shape: as ORT,
    every call."""
    nodes = [helper.make_node("ConstantOfShape", ["count"], ["ones"],
                              value=numpy_helper.from_array(np.array([1], np.int64))),
             helper.make_node("Shape", ["ones"], ["ones_shape"]),
             helper.make_node("Squeeze", ["count", "axis0"], ["count_scalar"]),
             helper.make_node("Range", ["start", "count_scalar", "step"], ["steps"]),
             helper.make_node("NonZero", ["x"], ["where"]),
             helper.make_node("Shape", ["where"], ["where_shape"]),
             helper.make_node("Concat", ["count", "minus_one"], ["new_shape"], axis=0),
             helper.make_node("Reshape", ["x", "new_shape"], ["reshaped"]),
             helper.make_node("Shape", ["reshaped"], ["reshaped_shape"])]
    consts = {"start": np.array(0, np.int64), "step": np.array(1, np.int64),
              "axis0": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)}
    model = _model(nodes, [("count", TensorProto.INT64), ("x", TensorProto.FLOAT)],
                   ["ones_shape", "steps", "where_shape", "reshaped_shape"], consts)
    plan, sess = converters.from_onnx(model), ort.InferenceSession(model.SerializeToString())
    x = np.array([0, 1, 0, 2, 3, 0, 4, 0], np.float32)
    for count, zeros_at in ((2, [0]), (4, [0, 1, 2]), (1, []), (2, [0])):
        feeds = {"count": np.array([count], np.int64), "x": np.where(
            np.isin(np.arange(8), zeros_at), 0, x + 1).astype(np.float32)}
        for got, want in zip(plan.run(None, feeds), sess.run(None, feeds)):
            np.testing.assert_array_equal(got, want)


DATA = pathlib.Path(__file__).parent / "data"
EXPORTS = sorted(p.relative_to(DATA).as_posix() for p in DATA.glob("keras*/*.onnx"))


@pytest.mark.parametrize("name", EXPORTS)
def test_tf2onnx_exports_give_the_same_results_with_their_shape_arithmetic_remembered(name):
    """Every tf2onnx fixture (tests/data/keras*) at two input shapes in turn: the calls that take
    the remembered values give, bit for bit, what the first call with those shapes gave."""
    model = onnx.load(str(DATA / name))
    plan = converters.from_onnx(model)
    first = {}
    for k, (N, T) in enumerate([(2, 5), (3, 7)] * 3):
        rng = np.random.default_rng(N)
        feeds = {}
        for vi in model.graph.input:
            dims = [d.dim_value or (N, T)[min(axis, 1)]
                    for axis, d in enumerate(vi.type.tensor_type.shape.dim)]
            dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = (rng.integers(0, 12, size=dims) if dtype.kind == "i"
                              else rng.standard_normal(dims)).astype(dtype)
        got = plan.run(None, feeds)
        for g, w in zip(got, first.setdefault((N, T), got)):
            np.testing.assert_array_equal(g, w)
    memo = plan._schedule(tuple(plan._output_names)).memo
    assert memo is None or len(memo._by_shapes) == 2
