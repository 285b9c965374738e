"""One plan called again and again with inputs of other shapes and ranks: what a plan works out
once (constant axes, and per rank or shape what they give) must never serve a call it does not fit.
Each call against ONNX Runtime; a call that fails leaves the plan usable."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
from fastrnn.errors import FastRNNError  # noqa: E402
from test_onnx_ops import single_node_model  # noqa: E402

rng = np.random.default_rng(0)
I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.int64): TensorProto.INT64}


def F(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# (id, op, opset, constant inputs by position, attrs, outputs, feeds: one tuple of data inputs a call)
CASES = [
    ("squeeze_neg_axis", "Squeeze", 13, {1: I64(-2)}, {}, 1,
     [(F(3, 1, 2),), (F(4, 5, 1, 7),), (F(2, 1, 1),), (F(3, 1, 2),)]),
    ("transpose_default", "Transpose", 13, {}, {}, 1,
     [(F(2, 3),), (F(2, 3, 4),), (F(5, 1),), (F(2, 3, 4, 5),)]),
    ("transpose_perm", "Transpose", 13, {}, {"perm": [1, 0, 2]}, 1,
     [(F(2, 3, 4),), (F(5, 1, 2),), (F(2, 3, 4),)]),
    ("concat_last", "Concat", 13, {}, {"axis": -1}, 1,
     [(F(2, 3), F(2, 1)), (F(2, 2, 3), F(2, 2, 5)), (F(4, 0), F(4, 2)), (F(2, 3), F(2, 1))]),
    ("slice_const", "Slice", 13, {1: I64(1, -3), 2: I64(100, -1), 3: I64(0, 1)}, {}, 1,
     [(F(5, 6),), (F(7, 9),), (F(2, 4, 3),), (F(1, 5),), (F(5, 6),)]),
    ("split_const", "Split", 13, {1: I64(1, 2)}, {"axis": 1}, 2,
     [(F(4, 3),), (F(2, 3, 5),), (F(4, 3),)]),
    ("split_equal", "Split", 18, {}, {"axis": 0, "num_outputs": 2}, 2,
     [(F(4, 3),), (F(5, 2),), (F(7, 1, 2),)]),
    ("gather_axis1", "Gather", 13, {1: I64(-1, 0)}, {"axis": 1}, 1,
     [(F(5, 3),), (F(2, 4, 3),), (F(1, 2),), (F(5, 3),)]),
    ("matmul", "MatMul", 13, {}, {}, 1,
     [(F(2, 3), F(3, 4)), (F(5, 2, 3), F(3, 4)), (F(3), F(3, 2)), (F(2, 3), F(3, 4))]),
    ("add_broadcast", "Add", 14, {}, {}, 1,
     [(F(3, 1), F(1, 4)), (F(2, 3, 4), F(4)), (F(4), F(2, 3, 4)), (F(3, 1), F(1, 4))]),
    ("mul_scalar_const", "Mul", 14, {1: np.array(2.5, np.float32)}, {}, 1,
     [(F(3),), (F(2, 2, 2),), (F(),), (F(3),)]),
    ("sigmoid", "Sigmoid", 13, {}, {}, 1, [(F(3),), (F(2, 4),), (F(1, 1, 5),)]),
    ("tanh_f64", "Tanh", 13, {}, {}, 1,
     [(F(3, dtype=np.float64),), (F(2, 4, dtype=np.float64),)]),
    ("cast_f64", "Cast", 13, {}, {"to": TensorProto.DOUBLE}, 1, [(F(3),), (F(2, 4),), (F(),)]),
]


def _model(op, opset, consts, attrs, n_out, first_feed):
    """The node with its data inputs rank-free graph inputs and its constant inputs initializers."""
    count = len(first_feed) + len(consts)
    data = iter(range(len(first_feed)))
    names, inputs, inits = [], [], []
    for position in range(count):
        name = f"in{position}"
        names.append(name)
        if position in consts:
            inits.append(numpy_helper.from_array(consts[position], name))
        else:
            inputs.append(helper.make_tensor_value_info(name, ELEM[first_feed[next(data)].dtype],
                                                        None))
    return single_node_model(op, opset, names, inputs, inits, attrs, n_out)


@pytest.mark.parametrize("case_id, op, opset, consts, attrs, n_out, feeds", CASES,
                         ids=[c[0] for c in CASES])
def test_one_plan_over_other_shapes_and_ranks(case_id, op, opset, consts, attrs, n_out, feeds):
    model = _model(op, opset, consts, attrs, n_out, feeds[0])
    names = [f"in{p}" for p in range(len(feeds[0]) + len(consts)) if p not in consts]
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    plan = converters.from_onnx(model)
    for round_ in range(2):  # the second round meets every shape again
        for feed in feeds:
            feed = dict(zip(names, feed))
            got, want = plan.run(None, feed), reference.run(None, feed)
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == w.dtype, (case_id, round_)
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=case_id)


def test_a_failed_call_leaves_the_plan_usable():
    model = _model("Squeeze", 13, {1: I64(1)}, {}, 1, (F(3, 1),))
    plan = converters.from_onnx(model)
    good = F(3, 1)
    want = plan.run(None, {"in0": good})[0]
    with pytest.raises(FastRNNError, match="Squeeze axis 1 has size 2"):
        plan.run(None, {"in0": F(3, 2)})
    with pytest.raises(FastRNNError):
        plan.run(None, {"in0": F(3)})  # axis 1 out of range for rank 1
    np.testing.assert_array_equal(plan.run(None, {"in0": good})[0], want)
