"""The surrounding (non-recurrent) ops of the ONNX import, one node at a time, against ONNX Runtime.

Each case is one node at one opset, with its data inputs fed at run time (so the numpy kernels run,
not constant folding) and, separately, with every input an initializer (so constant folding at
import computes the same thing). Opset-dependent semantics get a case per version (Softmax's 2-D
coercion before 13, attributes that became inputs, ...).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
from converters.onnx_import.registry import supported_ops  # noqa: E402

rng = np.random.default_rng(0)
F = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
TOL = dict(rtol=1e-5, atol=1e-6)
F64_TOL = dict(rtol=1e-12, atol=1e-300)
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int64): TensorProto.INT64,
        np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}
NAN, INF = np.nan, np.inf
A32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
A16 = lambda *v: np.array(v, dtype=np.float16)  # noqa: E731
I32 = lambda *v: np.array(v, dtype=np.int32)  # noqa: E731
INT32_MAX, INT32_MIN, INT64_MAX = 2**31 - 1, -2**31, 2**63 - 1
# NaN placed first, in the middle and last along rows of 3 (ORT scans those one element at a time)
NAN_ROWS = A32(1, NAN, 3, NAN, 0, 0, 0, 5, NAN, NAN, NAN, NAN, -INF, NAN, INF, 2, 2, NAN).reshape(6, 3)

# (id, op, opset, inputs (name -> array, None = absent ''), attrs, number of outputs)
CASES = [
    ("softmax11_axis1_3d", "Softmax", 11, [F(2, 3, 4)], {"axis": 1}, 1),
    ("softmax11_default", "Softmax", 11, [F(2, 3, 4)], {}, 1),
    ("softmax13_axis1_3d", "Softmax", 13, [F(2, 3, 4)], {"axis": 1}, 1),
    ("softmax13_default", "Softmax", 13, [F(2, 3, 4)], {}, 1),
    ("logsoftmax9_axis2", "LogSoftmax", 9, [F(2, 3, 4)], {"axis": 2}, 1),
    ("logsoftmax11_axis0", "LogSoftmax", 11, [F(2, 3, 4)], {"axis": 0}, 1),
    ("logsoftmax13", "LogSoftmax", 13, [F(2, 3, 4)], {"axis": -2}, 1),
    ("transpose_default", "Transpose", 13, [F(2, 3, 4)], {}, 1),
    ("transpose_perm", "Transpose", 13, [F(2, 3, 4, 5)], {"perm": [0, 2, 1, 3]}, 1),
    ("reshape_zero_minus1", "Reshape", 13, [F(2, 3, 4), I64(0, -1)], {}, 1),
    ("reshape14_allowzero", "Reshape", 14, [F(2, 3, 4), I64(4, 6)], {"allowzero": 1}, 1),
    ("reshape5", "Reshape", 9, [F(2, 3, 4), I64(-1, 4)], {}, 1),
    ("squeeze11_attr", "Squeeze", 11, [F(1, 3, 1, 2)], {"axes": [0, -2]}, 1),
    ("squeeze11_all", "Squeeze", 11, [F(1, 3, 1, 2)], {}, 1),
    ("squeeze13_input", "Squeeze", 13, [F(1, 3, 1, 2), I64(2)], {}, 1),
    ("squeeze13_empty_axes", "Squeeze", 13, [F(1, 3, 1, 2), np.zeros(0, np.int64)], {}, 1),
    ("unsqueeze9_attr", "Unsqueeze", 9, [F(3, 2)], {"axes": [0, 3]}, 1),
    ("unsqueeze13_neg", "Unsqueeze", 13, [F(3, 2), I64(-1, 0)], {}, 1),
    ("concat", "Concat", 13, [F(2, 3), F(2, 1), F(2, 0)], {"axis": -1}, 1),
    ("slice9_attrs", "Slice", 9, [F(5, 6)], {"starts": [1, -4], "ends": [100, -1], "axes": [0, 1]}, 1),
    ("slice13_negstep", "Slice", 13, [F(5, 6), I64(-1, 4), I64(-100, 0), I64(0, 1), I64(-2, -1)], {}, 1),
    ("slice13_clamp", "Slice", 13, [F(5, 6), I64(2), I64(2**62), I64(-1), I64(2)], {}, 1),
    ("slice13_minint", "Slice", 13, [F(5, 6), I64(3), I64(-(2**63)), I64(0), I64(-1)], {}, 1),
    ("slice13_negstep_int64max_end", "Slice", 13, [F(5, 6), I64(-1), I64(2**63 - 1), I64(1), I64(-1)],
     {}, 1),
    ("slice13_negstep_int32max_end", "Slice", 13,
     [F(5, 6)] + [np.array([v], np.int32) for v in (4, 2**31 - 1, 0, -2)], {}, 1),
    ("split11_attr", "Split", 11, [F(6, 4)], {"axis": 0, "split": [1, 2, 3]}, 3),
    ("split11_equal", "Split", 11, [F(6, 4)], {"axis": 1}, 2),
    ("split13_input", "Split", 13, [F(6, 4), I64(4, 2)], {}, 2),
    ("split18_num_outputs", "Split", 18, [F(7, 4)], {"num_outputs": 3}, 3),
    ("gather_neg", "Gather", 13, [F(5, 3), I64(-1, 0, 2)], {"axis": 0}, 1),
    ("gather_scalar_axis1", "Gather", 13, [F(5, 3), np.array(1, np.int64)], {"axis": 1}, 1),
    ("gather_int32_2d", "Gather", 11, [F(5, 3), np.array([[0, 4], [3, 3]], np.int32)], {}, 1),
    ("gather_elements", "GatherElements", 13, [F(3, 4), np.array([[0, -1], [2, 1], [1, 1]], np.int64)],
     {"axis": 1}, 1),
    ("scatter_elements", "ScatterElements", 13, [F(4, 3), I64(3, 0, 2, 1).reshape(4, 1), F(4, 1)],
     {"axis": 0}, 1),
    ("scatter_elements_add", "ScatterElements", 18, [F(4, 3), np.array([[1, 1, 0]], np.int64), F(1, 3)],
     {"axis": 0, "reduction": "add"}, 1),
    ("scatter9", "Scatter", 9, [F(4, 3), np.array([[1, 0, 2]], np.int64), F(1, 3)], {"axis": 1}, 1),
    ("shape", "Shape", 13, [F(2, 3, 4)], {}, 1),
    ("shape15_start_end", "Shape", 15, [F(2, 3, 4, 5)], {"start": 1, "end": -1}, 1),
    ("size", "Size", 13, [F(2, 3, 4)], {}, 1),
    ("expand", "Expand", 13, [F(3, 1), I64(2, 1, 4)], {}, 1),
    ("expand_same_shape", "Expand", 13, [F(3, 4), I64(1, 4)], {}, 1),
    ("expand_large", "Expand", 13, [F(3, 1), I64(2, 3, 1000)], {}, 1),
    ("expand_int_scalar", "Expand", 8, [np.array(7, np.int64), I64(5)], {}, 1),
    ("tile", "Tile", 13, [F(2, 3), I64(2, 1)], {}, 1),
    ("constant_of_shape", "ConstantOfShape", 13, [I64(2, 3)],
     {"value": numpy_helper.from_array(np.array([1.5], np.float32))}, 1),
    ("constant_of_shape_default", "ConstantOfShape", 9, [I64(4)], {}, 1),
    ("constant_of_shape_int32_empty", "ConstantOfShape", 9, [I64(2, 0)],
     {"value": numpy_helper.from_array(np.array([3], np.int32))}, 1),
    ("constant_of_shape_scalar", "ConstantOfShape", 9, [np.zeros(0, np.int64)],
     {"value": numpy_helper.from_array(np.array([2.5], np.float64))}, 1),
    ("cast_int", "Cast", 13, [F(3, 4) * 10], {"to": TensorProto.INT64}, 1),
    ("cast_int32_float", "Cast", 9, [np.array([1, -2, 3], np.int32)], {"to": TensorProto.FLOAT}, 1),
    ("cast_bool", "Cast", 19, [np.array([0.0, 2.0, -1.0], np.float32)], {"to": TensorProto.BOOL}, 1),
    ("cast_like", "CastLike", 15, [np.array([1, 2], np.int64), F(1)], {}, 1),
    ("matmul_batched", "MatMul", 13, [F(2, 3, 4), F(4, 5)], {}, 1),
    ("matmul_vec", "MatMul", 9, [F(4), F(2, 4, 3)], {}, 1),
    ("gemm_transB_alpha_beta", "Gemm", 13, [F(3, 4), F(5, 4), F(5)],
     {"transB": 1, "alpha": 0.5, "beta": 2.0}, 1),
    ("gemm_transA_noC", "Gemm", 11, [F(4, 3), F(4, 5)], {"transA": 1}, 1),
    ("gemm9_C", "Gemm", 9, [F(3, 4), F(4, 5), F(3, 5)], {}, 1),
    ("add_broadcast", "Add", 14, [F(2, 3, 4), F(4)], {}, 1),
    ("sub", "Sub", 13, [F(2, 3), F(3)], {}, 1),
    ("mul", "Mul", 7, [F(2, 3), F(2, 1)], {}, 1),
    ("div_float", "Div", 13, [F(2, 3), np.abs(F(2, 3)) + 1], {}, 1),
    ("div_int", "Div", 13, [I64(7, -7, 7, -7, 0), I64(2, 2, -2, -2, 3)], {}, 1),
    ("pow", "Pow", 15, [np.abs(F(2, 3)) + 0.1, F(3)], {}, 1),
    ("pow_int_exp", "Pow", 12, [F(2, 3), I64(2)], {}, 1),
    ("mod_int", "Mod", 13, [I64(7, -7, 7, -7), I64(3, 3, -3, -3)], {}, 1),
    ("mod_fmod", "Mod", 13, [F(2, 3) * 5, F(3) + 3], {"fmod": 1}, 1),
    ("neg", "Neg", 13, [F(2, 3)], {}, 1),
    ("sqrt", "Sqrt", 13, [np.abs(F(2, 3))], {}, 1),
    ("exp", "Exp", 13, [F(2, 3)], {}, 1),
    ("log", "Log", 13, [np.abs(F(2, 3)) + 0.1], {}, 1),
    ("abs", "Abs", 13, [F(2, 3)], {}, 1),
    ("reciprocal", "Reciprocal", 13, [np.abs(F(2, 3)) + 0.5], {}, 1),
    ("floor", "Floor", 13, [F(2, 3) * 3], {}, 1),
    ("ceil", "Ceil", 13, [F(2, 3) * 3], {}, 1),
    ("sign", "Sign", 13, [F(2, 3)], {}, 1),
    ("erf", "Erf", 13, [F(2, 3)], {}, 1),
    ("relu", "Relu", 14, [F(2, 3)], {}, 1),
    ("tanh", "Tanh", 13, [F(2, 3)], {}, 1),
    ("sigmoid", "Sigmoid", 13, [F(2, 3) * 10], {}, 1),
    ("leaky_relu", "LeakyRelu", 16, [F(2, 3)], {"alpha": 0.2}, 1),
    ("leaky_relu_default", "LeakyRelu", 6, [F(2, 3)], {}, 1),
    ("hard_sigmoid", "HardSigmoid", 6, [F(2, 3) * 4], {"alpha": 0.3, "beta": 0.4}, 1),
    ("elu", "Elu", 6, [F(2, 3)], {"alpha": 0.7}, 1),
    ("selu", "Selu", 6, [F(2, 3)], {}, 1),
    ("softplus", "Softplus", 1, [F(2, 3) * 5], {}, 1),
    ("softsign", "Softsign", 1, [F(2, 3)], {}, 1),
    ("thresholded_relu", "ThresholdedRelu", 10, [F(2, 3)], {"alpha": 0.5}, 1),
    ("gelu", "Gelu", 20, [F(2, 3)], {}, 1),
    ("gelu_tanh", "Gelu", 20, [F(2, 3)], {"approximate": "tanh"}, 1),
    ("sin_cos", "Sin", 7, [F(2, 3)], {}, 1),
    ("identity", "Identity", 16, [F(2, 3)], {}, 1),
    ("dropout12_inference", "Dropout", 13, [F(2, 3)], {}, 2),
    ("dropout10_ratio", "Dropout", 10, [F(2, 3)], {"ratio": 0.3}, 1),
    ("dropout7_mask", "Dropout", 7, [F(2, 3)], {}, 2),
    ("dropout9_mask_double", "Dropout", 9, [F(2, 3).astype(np.float64)], {}, 2),
    ("dropout10_mask", "Dropout", 10, [F(2, 3)], {}, 2),
    ("dropout12_mask", "Dropout", 12, [F(2, 3)], {}, 2),
    ("where", "Where", 16, [F(2, 3) > 0, F(2, 3), F(3)], {}, 1),
    ("equal", "Equal", 13, [I64(1, 2, 3), I64(1, 0, 3)], {}, 1),
    ("less", "Less", 13, [F(2, 3), F(3)], {}, 1),
    ("greater", "Greater", 9, [F(2, 3), F(3)], {}, 1),
    ("less_or_equal", "LessOrEqual", 16, [I64(1, 2, 3), I64(2)], {}, 1),
    ("greater_or_equal", "GreaterOrEqual", 12, [I64(1, 2, 3), I64(2)], {}, 1),
    ("not", "Not", 1, [F(2, 3) > 0], {}, 1),
    ("and", "And", 7, [F(2, 3) > 0, F(3) > 0], {}, 1),
    ("or", "Or", 7, [F(2, 3) > 0, F(3) > 0], {}, 1),
    ("xor", "Xor", 7, [F(2, 3) > 0, F(3) > 0], {}, 1),
    ("range_int", "Range", 11, [np.array(2, np.int64), np.array(11, np.int64), np.array(3, np.int64)], {}, 1),
    ("range_float_neg", "Range", 11, [np.array(1.0, np.float32), np.array(-2.0, np.float32),
                                       np.array(-0.7, np.float32)], {}, 1),
    ("argmax", "ArgMax", 13, [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], {"axis": 1}, 1),
    ("argmax_last_nokeep", "ArgMax", 12, [np.array([[1, 3, 3], [2, 2, 0]], np.float32)],
     {"axis": -1, "keepdims": 0, "select_last_index": 1}, 1),
    ("argmin", "ArgMin", 11, [F(3, 4)], {"axis": 0}, 1),
    ("reduce_mean11", "ReduceMean", 11, [F(2, 3, 4)], {"axes": [1, -1], "keepdims": 0}, 1),
    ("reduce_mean18", "ReduceMean", 18, [F(2, 3, 4), I64(1)], {}, 1),
    ("reduce_mean18_all", "ReduceMean", 18, [F(2, 3, 4)], {"keepdims": 0}, 1),
    ("reduce_max13", "ReduceMax", 13, [F(2, 3, 4)], {"axes": [0]}, 1),
    ("reduce_max20_noop", "ReduceMax", 20, [F(2, 3, 4)], {"noop_with_empty_axes": 1}, 1),
    ("reduce_min18", "ReduceMin", 18, [F(2, 3, 4), I64(-1)], {"keepdims": 0}, 1),
    ("reduce_sum11", "ReduceSum", 11, [F(2, 3, 4)], {"axes": [2]}, 1),
    ("reduce_sum13", "ReduceSum", 13, [F(2, 3, 4), I64(0, 2)], {"keepdims": 0}, 1),
    ("reduce_sum13_int", "ReduceSum", 13, [I64(1, 2, 3, 4).reshape(2, 2)], {}, 1),
    ("reduce_prod", "ReduceProd", 13, [I64(1, 2, 3, 4)], {"keepdims": 0}, 1),
    ("flatten", "Flatten", 13, [F(2, 3, 4, 5)], {"axis": 2}, 1),
    ("flatten_default", "Flatten", 9, [F(2, 3, 4)], {}, 1),
    ("flatten_neg", "Flatten", 13, [F(2, 3, 4)], {"axis": -1}, 1),
    ("min", "Min", 13, [F(2, 3), F(3), F(1, 3)], {}, 1),
    ("max", "Max", 8, [F(2, 3), F(3)], {}, 1),
    ("sum", "Sum", 13, [F(2, 3), F(3), F(2, 1)], {}, 1),
    ("mean", "Mean", 13, [F(2, 3), F(3)], {}, 1),
    ("clip6", "Clip", 6, [F(3, 4)], {"min": -0.5, "max": 0.3}, 1),
    ("clip6_default", "Clip", 6, [F(3, 4)], {}, 1),
    ("clip13", "Clip", 13, [F(3, 4), np.array(-0.2, np.float32), np.array(0.4, np.float32)], {}, 1),
    ("clip13_min_only", "Clip", 13, [F(3, 4), np.array(0.1, np.float32)], {}, 1),
    ("clip13_max_only", "Clip", 13, [F(3, 4), None, np.array(0.1, np.float32)], {}, 1),
    ("clip11_int", "Clip", 12, [I64(-5, 0, 5), np.array(-1, np.int64), np.array(2, np.int64)], {}, 1),
    ("topk", "TopK", 11, [np.array([[3, 1, 3, 2], [0, 5, 5, 5]], np.float32), I64(2)], {}, 2),
    ("topk_smallest_axis0", "TopK", 11, [F(4, 3), I64(3)], {"axis": 0, "largest": 0}, 2),
    ("topk1_attr", "TopK", 9, [F(2, 5)], {"k": 2}, 2),
    ("nonzero", "NonZero", 13, [np.array([[1, 0, 2], [0, 0, 3]], np.float32)], {}, 1),
    # the output has the indices' shape, the data is read from index 0 on the other axes
    ("gather_elements_short_indices", "GatherElements", 13,
     [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[0, -1]], np.int64)], {"axis": 1}, 1),
    ("gather_elements11_short_axis0", "GatherElements", 11,
     [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[2], [0]], np.int64)], {"axis": 0}, 1),
    ("gather_elements_long_axis", "GatherElements", 13,
     [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[0, 3, 1, 1, 2], [3, 3, 3, 0, 0]],
                                                               np.int64)], {"axis": 1}, 1),
    ("gather_elements_empty_indices", "GatherElements", 13,
     [F(3, 4), np.zeros((0, 2), np.int64)], {"axis": 1}, 1),
    # integer Pow: through a double, out of range (and 0 to a negative power) the type's minimum;
    # 2 and 3 as a scalar exponent: x*x and x*x*x, wrapping
    ("pow15_int32_negative_exp", "Pow", 15,
     [I32(2, 1, -1, 0, 0, -2, 3, 50000, 7), I32(-1, -2, -3, -1, 0, -1, 30, 2, 3)], {}, 1),
    ("pow13_int64_negative_exp_int32", "Pow", 13,
     [I64(2, -3, 1, 1, 0, 3, 3), I32(62, 3, -2, -1, -1, 39, 40)], {}, 1),
    ("pow15_int32_scalar_2_wraps", "Pow", 15, [I32(50000, -50000, 3, 0), np.array(2, np.int32)], {}, 1),
    ("pow15_int32_scalar_3_wraps", "Pow", 15, [I32(50000, -50000, 3, -1), I32(3)], {}, 1),
    ("pow15_int64_scalar_neg", "Pow", 15, [I64(2, 1, -1, 0), np.array(-1, np.int64)], {}, 1),
    ("pow15_int32_float_exp", "Pow", 15, [I32(2, 0, 3, -8), A32(-1, -1, 0.5, 2)], {}, 1),
    ("softmax13_empty", "Softmax", 13, [np.zeros((3, 0), np.float32)], {}, 1),
    ("logsoftmax13_empty_axis0", "LogSoftmax", 13, [np.zeros((0, 3), np.float32)], {"axis": 0}, 1),
    ("softmax11_empty_legacy", "Softmax", 11, [np.zeros((2, 0, 3), np.float32)], {}, 1),
    ("logsoftmax11_empty_legacy", "LogSoftmax", 11, [np.zeros((2, 0, 3), np.float32)], {"axis": 2}, 1),
    # reductions over no elements: -inf / inf, INT_MIN / INT_MAX, 0 and 1; an empty output stays
    ("reduce_max13_empty_axis", "ReduceMax", 13, [np.zeros((0, 3), np.float32)], {"axes": [0]}, 1),
    ("reduce_max13_empty_output", "ReduceMax", 13, [np.zeros((0, 3), np.float32)], {"axes": [1]}, 1),
    ("reduce_min18_empty_int32", "ReduceMin", 18, [np.zeros((0, 3), np.int32), I64(0)],
     {"keepdims": 0}, 1),
    ("reduce_max20_empty_all_int64", "ReduceMax", 20, [np.zeros((2, 0), np.int64)], {}, 1),
    ("reduce_mean18_empty", "ReduceMean", 18, [np.zeros((0, 3), np.float32), I64(0)], {}, 1),
    ("reduce_mean13_empty_int32", "ReduceMean", 13, [np.zeros((0, 3), np.int32)], {"axes": [0]}, 1),
    ("reduce_sum13_empty", "ReduceSum", 13, [np.zeros((0, 3), np.float64), I64(0)], {}, 1),
    ("reduce_prod18_empty", "ReduceProd", 18, [np.zeros((2, 0), np.int64), I64(1)], {}, 1),
    # NaN: ORT's max / min scan skips it unless it is the first element
    ("reduce_max13_nan_rows", "ReduceMax", 13, [NAN_ROWS], {"axes": [1]}, 1),
    ("reduce_min18_nan_rows", "ReduceMin", 18, [NAN_ROWS, I64(-1)], {"keepdims": 0}, 1),
    ("reduce_max18_nan_columns", "ReduceMax", 18, [np.tile(NAN_ROWS.T, (1, 5)), I64(0)], {}, 1),
    ("reduce_min13_nan_middle_axis", "ReduceMin", 13, [np.stack([NAN_ROWS.T] * 2, -1)], {"axes": [1]}, 1),
    ("reduce_max20_nan_leading_axes", "ReduceMax", 20, [NAN_ROWS.reshape(2, 3, 3), I64(0, 1)], {}, 1),
    ("argmax13_nan", "ArgMax", 13, [NAN_ROWS], {"axis": 1}, 1),
    ("argmax12_nan_last", "ArgMax", 12, [NAN_ROWS], {"axis": 1, "select_last_index": 1}, 1),
    ("argmin13_nan_axis0_nokeep", "ArgMin", 13, [np.tile(NAN_ROWS.T, (1, 5))],
     {"axis": 0, "keepdims": 0}, 1),
    ("argmin12_nan_last", "ArgMin", 12, [NAN_ROWS], {"axis": -1, "select_last_index": 1}, 1),
    # integer sums, products and means accumulate in double and saturate
    ("reduce_sum11_int32_saturates", "ReduceSum", 11,
     [np.array([[INT32_MAX, 5], [INT32_MIN, -1], [INT32_MAX, -10]], np.int32)], {"axes": [1]}, 1),
    ("reduce_sum13_int64_saturates", "ReduceSum", 13, [I64(INT64_MAX, 5, -10)], {"keepdims": 0}, 1),
    ("reduce_prod18_int32_saturates", "ReduceProd", 18,
     [np.array([[INT32_MAX, 5, -10], [INT32_MIN, -1, 1], [1 << 20, 1 << 20, 0]], np.int32), I64(1)],
     {}, 1),
    ("reduce_mean18_int32_no_overflow", "ReduceMean", 18,
     [np.array([[INT32_MAX, 1], [INT32_MIN, -1]], np.int32), I64(1)], {}, 1),
    # absent Clip bounds are the type's lowest / max, a NaN bound is ignored
    ("clip13_absent_bounds", "Clip", 13, [A32(-INF, -1, INF, NAN)], {}, 1),
    ("clip11_min_absent", "Clip", 11, [A32(-INF, 0, 5), None, np.array(2, np.float32)], {}, 1),
    ("clip13_double_max_absent", "Clip", 13, [np.array([-1, INF]), np.array(0.0)], {}, 1),
    ("clip13_float16_max_absent", "Clip", 13, [A16(-1, INF, 3), A16(0)], {}, 1),
    ("clip11_nan_min", "Clip", 11, [A32(-INF, 0, 5), np.array(NAN, np.float32),
                                     np.array(2, np.float32)], {}, 1),
    ("clip13_nan_max", "Clip", 13, [np.array([-1, INF, NAN]), np.array(0.0), np.array(NAN)], {}, 1),
    ("clip6_default_inf", "Clip", 6, [A32(-INF, 1, INF)], {}, 1),
    ("clip12_int_min_above_max", "Clip", 12, [I64(-5, 0, 5), I64(1)[0], I64(-1)[0]], {}, 1),
    # Gemm with beta 0 ignores C, inf and NaN too
    ("gemm_beta0_c_inf", "Gemm", 13, [F(2, 3), F(3, 2), A32(INF, NAN)], {"beta": 0.0}, 1),
    ("gemm11_beta0_k0", "Gemm", 11, [np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32),
                                      A32(INF, 1, NAN)], {"beta": 0.0}, 1),
    ("topk_nan_largest", "TopK", 11, [A32(NAN, 1, INF, -INF, NAN, 2).reshape(1, 6), I64(3)], {}, 2),
    ("topk_nan_largest_all", "TopK", 11, [A32(NAN, 1, INF, -INF, NAN, 2).reshape(1, 6), I64(6)], {}, 2),
    ("topk_nan_smallest_axis0", "TopK", 11, [A32(NAN, 1, INF, -INF, NAN, 2).reshape(6, 1), I64(6)],
     {"axis": 0, "largest": 0}, 2),
    # double to float16 goes through float32 (rounding twice), in every Cast version
    ("cast6_double_float16", "Cast", 6, [np.array([1 + 2**-11 + 2**-40, 65519.99999, 2049 + 1e-9])],
     {"to": TensorProto.FLOAT16}, 1),
    ("cast19_double_float16", "Cast", 19, [np.array([1 + 2**-11 + 2**-40, 65519.99999, 2049 + 1e-9])],
     {"to": TensorProto.FLOAT16}, 1),
    ("castlike15_double_float16", "CastLike", 15, [np.array([1 + 2**-11 + 2**-40, 65519.99999]),
                                                    A16(0)], {}, 1),
    # float16 ops computed in float32 and rounded once
    ("sum13_float16", "Sum", 13, [A16(60000, 1), A16(60000, 2), A16(-60000, 3)], {}, 1),
    ("mean13_float16", "Mean", 13, [A16(60000, 1), A16(60000, 2), A16(0, 4)], {}, 1),
    ("thresholded_relu22_float16", "ThresholdedRelu", 22, [A16(0.69, 0.7, 0.71)], {"alpha": 0.7}, 1),
    ("sign13_float16_nan", "Sign", 13, [A16(NAN, -2, 2, 0)], {}, 1),
    ("leaky_relu16_float16", "LeakyRelu", 16, [(F(4, 5) * 3).astype(np.float16)], {"alpha": 0.3}, 1),
    ("softsign22_float16", "Softsign", 22, [(F(4, 5) * 3).astype(np.float16)], {}, 1),
    ("gemm13_float16", "Gemm", 13, [F(4, 6).astype(np.float16), F(6, 3).astype(np.float16)],
     {"alpha": 0.3}, 1),
    ("reduce_sum13_float16", "ReduceSum", 13, [A16(60000, 60000, -60000)], {"keepdims": 0}, 1),
    # float attributes are float32: LeakyRelu's default 0.01 too
    ("leaky_relu16_double_default", "LeakyRelu", 16, [np.array([-3.0, -100.0, 2.0])], {}, 1),
    # LayerNormalization: Mean and InvStdDev float32 (for double and float16 X too); scale and
    # bias broadcast; a mean far from 0 (ORT's variance is the mean of squared deviations)
    ("layer_norm17", "LayerNormalization", 17, [F(2, 3, 8), F(8), F(8)], {}, 3),
    ("layer_norm17_axis1_eps", "LayerNormalization", 17, [F(2, 3, 8), F(3, 8), F(3, 8)],
     {"axis": 1, "epsilon": 1e-3}, 3),
    ("layer_norm17_neg_axis_no_bias", "LayerNormalization", 17, [F(2, 3, 8), F(3, 8)], {"axis": -2}, 1),
    ("layer_norm17_broadcast_scale", "LayerNormalization", 17, [F(2, 3, 8), F(1), F(1, 8)], {}, 3),
    ("layer_norm17_axis0", "LayerNormalization", 17, [F(4, 5), F(4, 5), F(5)], {"axis": 0}, 3),
    ("layer_norm17_double", "LayerNormalization", 17, [F(3, 16).astype(np.float64),
                                                       F(16).astype(np.float64)], {}, 3),
    ("layer_norm17_float16", "LayerNormalization", 17, [F(3, 16).astype(np.float16),
                                                        F(16).astype(np.float16),
                                                        F(16).astype(np.float16)], {}, 3),
    ("layer_norm17_large_mean", "LayerNormalization", 17, [F(4, 64) * 1e-2 + 100, F(64), F(64)], {}, 3),
    ("layer_norm17_no_rows", "LayerNormalization", 17, [np.zeros((0, 3), np.float32), F(3), F(3)], {}, 3),
    # OneHot: negative indices count from the end (version 9 too, as ORT), others out of range
    # give a row of off values; depth a scalar or one-element vector, a float depth truncated
    ("one_hot11", "OneHot", 11, [I64(0, -1, 3, -4, 5, -5), np.array(4, np.int64), A32(0, 1)], {}, 1),
    ("one_hot9_axis0", "OneHot", 9, [I64(0, 1, 2, 7).reshape(2, 2), I64(3), A32(-1, 2)], {"axis": 0}, 1),
    ("one_hot11_float_depth", "OneHot", 11, [I64(2, 0), np.array([3.7], np.float32), A32(5, 7)],
     {"axis": -2}, 1),
    ("one_hot11_int32", "OneHot", 11, [I32(1, -2, 0), np.array(3, np.float32), A32(0, 1)], {"axis": 1}, 1),
    ("one_hot11_empty", "OneHot", 11, [np.zeros((0, 2), np.int64), np.array(3, np.int64), A32(0, 1)],
     {"axis": 1}, 1),
    ("one_hot28", "OneHot", 28, [I64(2, 1), np.array(3, np.int64), A32(0, 1)], {}, 1),
    # GatherND: negative indices, whole slices (an empty last axis), batch_dims
    ("gather_nd11", "GatherND", 11, [F(2, 3, 4), I64(-1, 2, 0, 0).reshape(2, 2)], {}, 1),
    ("gather_nd13_scalars", "GatherND", 13, [F(2, 3, 4), I64(1, 2, -1, 0, 0, 0).reshape(2, 1, 3)], {}, 1),
    ("gather_nd13_whole", "GatherND", 13, [F(2, 3), np.zeros((2, 0), np.int64)], {}, 1),
    ("gather_nd12_batch_dims", "GatherND", 12, [F(2, 3, 4), I64(1, -1, 0, 0).reshape(2, 1, 2)],
     {"batch_dims": 1}, 1),
    ("gather_nd13_batch_dims_rows", "GatherND", 13, [F(3, 5, 4), I64(4, 0, 2).reshape(3, 1)],
     {"batch_dims": 1}, 1),
    ("gather_nd13_batch_dims2", "GatherND", 13, [F(2, 3, 4), np.zeros((2, 3, 0), np.int64)],
     {"batch_dims": 2}, 1),
    ("gather_nd13_no_indices", "GatherND", 13, [F(2, 3, 4), np.zeros((0, 2), np.int64)], {}, 1),
    ("gather_nd13_int", "GatherND", 13, [I64(5, 6, 7), I64(2)], {}, 1),
    # BatchNormalization (inference): per channel; per element for BatchNormalization-7 spatial 0
    ("batch_norm15", "BatchNormalization", 15, [F(2, 3, 4, 5), F(3), F(3), F(3), np.abs(F(3))],
     {"epsilon": 1e-3}, 1),
    ("batch_norm9_2d", "BatchNormalization", 9, [F(4, 3), F(3), F(3), F(3), np.abs(F(3))], {}, 1),
    ("batch_norm14_double", "BatchNormalization", 14,
     [F(2, 3, 4).astype(np.float64)] + [F(3).astype(np.float64)] * 3 + [np.abs(F(3)).astype(np.float64)],
     {"momentum": 0.5}, 1),
    ("batch_norm15_float16", "BatchNormalization", 15,
     [(F(2, 3, 4) * 3).astype(np.float16)] + [F(3).astype(np.float16)] * 3
     + [np.abs(F(3)).astype(np.float16)], {}, 1),
    ("batch_norm15_float16_float_params", "BatchNormalization", 15,
     [(F(2, 3, 4) * 3).astype(np.float16), F(3), F(3), F(3), np.abs(F(3))], {}, 1),
    ("batch_norm7_spatial0", "BatchNormalization", 7,
     [F(2, 3, 4), F(3, 4), F(3, 4), F(3, 4), np.abs(F(3, 4))], {"spatial": 0}, 1),
    ("batch_norm15_empty", "BatchNormalization", 15, [np.zeros((0, 3, 2), np.float32), F(3), F(3),
                                                      F(3), np.abs(F(3))], {}, 1),
    ("batch_norm15_negative_var", "BatchNormalization", 15, [F(2, 3), F(3), F(3), F(3), -np.abs(F(3))],
     {}, 1),
]
# ReduceL1 / L2 / SumSquare / LogSum / LogSumExp: axes attribute before 18, input from 18;
# noop_with_empty_axes maps each element (|x|, x * x, log); integers computed in double and
# saturated; no elements: 0, or -inf (an integer type's minimum) for the logs
_ROWS = A32(INF, 1, -INF, 2, 1, NAN, -INF, -INF, INF, INF, 1, -1, 100, 100.5).reshape(7, 2)
for _op in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"):
    _positive = np.abs(F(2, 3, 4)) + 0.1
    CASES += [
        (f"{_op}_1", _op, 1, [_positive], {}, 1),
        (f"{_op}_11_axes", _op, 11, [_positive], {"axes": [0, -1], "keepdims": 0}, 1),
        (f"{_op}_13_axes", _op, 13, [_positive], {"axes": [1]}, 1),
        (f"{_op}_18_input", _op, 18, [_positive, I64(-1)], {"keepdims": 0}, 1),
        (f"{_op}_18_all", _op, 18, [_positive], {}, 1),
        (f"{_op}_18_noop", _op, 18, [A32(-1, 2, 0.5)], {"noop_with_empty_axes": 1}, 1),
        (f"{_op}_18_noop_axes", _op, 18, [_positive, I64(1)], {"noop_with_empty_axes": 1}, 1),
        (f"{_op}_18_empty", _op, 18, [np.zeros((0, 3), np.float32), I64(0)], {}, 1),
        (f"{_op}_18_empty_int32", _op, 18, [np.zeros((0, 3), np.int32), I64(0)], {"keepdims": 0}, 1),
        (f"{_op}_18_empty_output", _op, 18, [np.zeros((0, 3), np.float32), I64(1)], {}, 1),
        (f"{_op}_18_int32", _op, 18, [np.array([[3, -4], [2**20, 2**20], [INT32_MAX, 7]], np.int32),
                                     I64(1)], {}, 1),
        (f"{_op}_13_int64", _op, 13, [np.array([[3, 4], [2**40, 2**40]], np.int64)], {"axes": [1]}, 1),
        (f"{_op}_18_float16", _op, 18, [A16(300, 400, 1, 2).reshape(2, 2), I64(1)], {}, 1),
        (f"{_op}_13_inf_nan", _op, 13, [_ROWS], {"axes": [1]}, 1),
        (f"{_op}_18_double", _op, 18, [_positive.astype(np.float64), I64(0, 2)], {}, 1),
    ]
_X34 = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
CASES += [
    # CumSum: in order, in the type (int32 wraps; float16 in float32); exclusive, reverse
    ("cumsum11", "CumSum", 11, [F(3, 4), np.array(1, np.int64)], {}, 1),
    ("cumsum14_exclusive_reverse", "CumSum", 14, [_X34, np.array([-1], np.int32)],
     {"exclusive": 1, "reverse": 1}, 1),
    ("cumsum14_exclusive_axis0", "CumSum", 14, [_X34, np.array(0, np.int64)], {"exclusive": 1}, 1),
    ("cumsum14_int32_wraps", "CumSum", 14, [I32(INT32_MAX, 2, 3), np.array(0, np.int64)], {}, 1),
    ("cumsum14_float16", "CumSum", 14, [A16(2048, 1, 1, 1, 1000), np.array(0, np.int64)], {}, 1),
    ("cumsum14_empty", "CumSum", 14, [np.zeros((2, 0), np.float32), np.array(1, np.int64)],
     {"exclusive": 1, "reverse": 1}, 1),
    # Pad: attributes in version 2; negative pads crop first, then reflect / edge / wrap pad
    ("pad2", "Pad", 2, [_X34], {"pads": [1, 0, 0, 1], "value": 2.5}, 1),
    ("pad2_reflect", "Pad", 2, [_X34], {"pads": [0, 2, 0, 1], "mode": "reflect"}, 1),
    ("pad11_constant", "Pad", 11, [_X34, I64(1, -1, 2, 0), np.array(7.0, np.float32)], {}, 1),
    ("pad13_edge", "Pad", 13, [_X34, I64(2, 1, 0, 3)], {"mode": "edge"}, 1),
    ("pad18_axes", "Pad", 18, [_X34, I64(1, 2), np.array(-1.0, np.float32), I64(-1)], {}, 1),
    ("pad18_reflect_crop", "Pad", 18, [_X34, I64(0, 2, 0, -1)], {"mode": "reflect"}, 1),
    ("pad18_reflect_crop_end", "Pad", 18, [_X34, I64(0, -1, 0, 2)], {"mode": "reflect"}, 1),
    ("pad19_wrap", "Pad", 19, [_X34, I64(1, 5, 2, 0)], {"mode": "wrap"}, 1),
    ("pad21_wrap_crop", "Pad", 21, [_X34, I64(0, 2, 0, -1)], {"mode": "wrap"}, 1),
    ("pad13_int", "Pad", 13, [I64(1, 2), I64(1, 2), np.array(7, np.int64)], {}, 1),
    ("pad18_empty_constant", "Pad", 18, [np.zeros((0, 2), np.float32), I64(1, 0, 0, 0)], {}, 1),
    # PRelu: the slope broadcasts
    ("prelu16", "PRelu", 16, [F(2, 3, 4), F(3, 1)], {}, 1),
    ("prelu9_scalar_slope", "PRelu", 9, [F(2, 3), A32(0.25)], {}, 1),
    ("prelu7", "PRelu", 7, [F(2, 3), F(3)], {}, 1),
    ("prelu16_int32", "PRelu", 16, [I32(-1, 2, -3), I32(2)], {}, 1),
    ("prelu16_float16", "PRelu", 16, [A16(-1, 2, -3), A16(0.3)], {}, 1),
    # GlobalAveragePool / GlobalMaxPool: over every axis after (N, C); GlobalMaxPool skips NaN
    ("global_average_pool", "GlobalAveragePool", 1, [F(2, 3, 4, 5)], {}, 1),
    ("global_average_pool22_1d", "GlobalAveragePool", 22, [F(2, 3, 7)], {}, 1),
    ("global_max_pool", "GlobalMaxPool", 1, [F(2, 3, 4, 5)], {}, 1),
    ("global_max_pool22_nan", "GlobalMaxPool", 22, [A32(1, NAN, 3, NAN, 1, 2).reshape(1, 2, 3)], {}, 1),
    ("global_average_pool22_float16", "GlobalAveragePool", 22, [A16(60000, 60000, 1, 2).reshape(1, 2, 2)],
     {}, 1),
    # Trilu: k beyond the matrix keeps everything or nothing
    ("trilu14_upper", "Trilu", 14, [F(2, 3, 4)], {}, 1),
    ("trilu14_lower_k", "Trilu", 14, [_X34, np.array(-1, np.int64)], {"upper": 0}, 1),
    ("trilu14_upper_k", "Trilu", 14, [F(4, 3), np.array(1, np.int64)], {}, 1),
    ("trilu14_huge_k", "Trilu", 14, [_X34, np.array(2**62, np.int64)], {}, 1),
    ("trilu14_lower_huge_negative_k", "Trilu", 14, [_X34, np.array(-2**63, np.int64)], {"upper": 0}, 1),
    ("trilu14_bool", "Trilu", 14, [_X34 > 3], {}, 1),
    ("trilu14_empty", "Trilu", 14, [np.zeros((0, 3), np.float32)], {"upper": 0}, 1),
]
CASES += [("ReduceLogSumExp_18_inf_nan_axis0", "ReduceLogSumExp", 18, [_ROWS.T.copy(), I64(0)], {}, 1),
          ("ReduceLogSum_28", "ReduceLogSum", 28, [A32(1, 2, 3)], {}, 1),
          ("ReduceLogSumExp_28", "ReduceLogSumExp", 28, [A32(1, 2, 3)], {}, 1)]
# Conv (1, 11, 22): 1-D, 2-D and 3-D; strides, dilations, pads, every auto_pad (SAME with a stride
# beyond the kernel needs no padding), groups and depthwise, with and without bias, kernel_shape
# given or read from W; float16 computed in float32. (float64: ORT has no Conv kernel, see below.)
_X19 = F(2, 3, 9)
CASES += [
    ("conv11_1d", "Conv", 11, [_X19, F(4, 3, 3)], {}, 1),
    ("conv22_1d_bias_pads_strides", "Conv", 22, [_X19, F(4, 3, 3), F(4)], {"pads": [1, 2], "strides": [2]}, 1),
    ("conv1_1d_dilations_kernel_shape", "Conv", 1, [_X19, F(4, 3, 3)],
     {"dilations": [2], "pads": [2, 2], "kernel_shape": [3]}, 1),
    ("conv11_1d_same_upper_stride2", "Conv", 11, [_X19, F(4, 3, 4), F(4)],
     {"auto_pad": "SAME_UPPER", "strides": [2]}, 1),
    ("conv11_1d_same_lower_stride2", "Conv", 11, [_X19, F(4, 3, 4)],
     {"auto_pad": "SAME_LOWER", "strides": [2]}, 1),
    ("conv22_1d_same_upper_k4", "Conv", 22, [_X19, F(2, 3, 4)], {"auto_pad": "SAME_UPPER"}, 1),
    ("conv22_1d_same_lower_k4", "Conv", 22, [_X19, F(2, 3, 4)], {"auto_pad": "SAME_LOWER"}, 1),
    ("conv11_1d_same_stride_beyond_kernel", "Conv", 11, [F(1, 2, 10), F(3, 2, 1)],
     {"auto_pad": "SAME_LOWER", "strides": [3]}, 1),
    ("conv11_1d_valid_stride2", "Conv", 11, [_X19, F(4, 3, 3)], {"auto_pad": "VALID", "strides": [2]}, 1),
    ("conv11_1d_notset", "Conv", 11, [_X19, F(4, 3, 3)], {"auto_pad": "NOTSET", "pads": [0, 1]}, 1),
    ("conv11_1d_group2_bias", "Conv", 11, [F(1, 4, 7), F(6, 2, 3), F(6)], {"group": 2}, 1),
    ("conv22_1d_depthwise_multiplier2", "Conv", 22, [F(2, 4, 8), F(8, 1, 3), F(8)],
     {"group": 4, "pads": [1, 1]}, 1),
    ("conv11_1d_pointwise", "Conv", 11, [F(2, 16, 5), F(8, 16, 1)], {}, 1),
    ("conv11_1d_stride_beyond_kernel", "Conv", 11, [F(1, 2, 10), F(3, 2, 2)], {"strides": [3]}, 1),
    ("conv11_1d_kernel_beyond_input", "Conv", 11, [F(1, 2, 3), F(2, 2, 5)], {"pads": [1, 1]}, 1),
    ("conv11_1d_empty_batch", "Conv", 11, [np.zeros((0, 2, 5), np.float32), F(3, 2, 3), F(3)], {}, 1),
    ("conv11_2d", "Conv", 11, [F(2, 3, 7, 6), F(5, 3, 3, 2), F(5)],
     {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1]}, 1),
    ("conv22_2d_kernel_shape", "Conv", 22, [F(1, 2, 5, 5), F(3, 2, 3, 3)], {"kernel_shape": [3, 3]}, 1),
    ("conv11_2d_same_lower_strides", "Conv", 11, [F(1, 3, 7, 8), F(4, 3, 3, 3)],
     {"auto_pad": "SAME_LOWER", "strides": [2, 3]}, 1),
    ("conv1_2d_same_upper", "Conv", 1, [F(1, 3, 6, 5), F(4, 3, 2, 3), F(4)], {"auto_pad": "SAME_UPPER"}, 1),
    ("conv11_2d_valid", "Conv", 11, [F(1, 3, 6, 5), F(4, 3, 2, 3)], {"auto_pad": "VALID"}, 1),
    ("conv11_2d_depthwise", "Conv", 11, [F(2, 3, 5, 6), F(3, 1, 3, 3), F(3)],
     {"group": 3, "pads": [1, 1, 1, 1]}, 1),
    ("conv11_2d_group2", "Conv", 11, [F(1, 4, 5, 5), F(4, 2, 2, 2)], {"group": 2, "strides": [2, 2]}, 1),
    ("conv11_3d", "Conv", 11, [F(1, 2, 5, 4, 4), F(3, 2, 2, 3, 2), F(3)], {"pads": [0, 1, 0, 1, 0, 1]}, 1),
    ("conv11_1d_float16", "Conv", 11, [(F(2, 3, 9) * 2).astype(np.float16), F(4, 3, 3).astype(np.float16),
                                       F(4).astype(np.float16)], {"pads": [1, 1]}, 1),
    ("conv22_2d_depthwise_float16", "Conv", 22, [(F(1, 3, 5, 5) * 2).astype(np.float16),
                                                 F(3, 1, 3, 3).astype(np.float16)],
     {"group": 3, "auto_pad": "SAME_UPPER"}, 1),
]
# Einsum (12): explicit and implicit outputs, ellipsis (broadcast, or covering no axes), repeated
# labels (diagonals), size-1 axes broadcast; in the inputs' type (int32 wraps), float16 in float32
CASES += [
    ("einsum_matmul", "Einsum", 12, [F(2, 3), F(3, 4)], {"equation": "ij,jk->ik"}, 1),
    ("einsum_batched_matmul", "Einsum", 12, [F(2, 3, 4), F(2, 4, 5)], {"equation": "bij,bjk->bik"}, 1),
    ("einsum_implicit", "Einsum", 12, [F(2, 3), F(3, 4)], {"equation": "ij,jk"}, 1),
    ("einsum_implicit_order", "Einsum", 12, [F(2, 3), F(3, 4)], {"equation": "kj,ji"}, 1),
    ("einsum_transpose", "Einsum", 12, [F(2, 3, 4)], {"equation": "abc->cab"}, 1),
    ("einsum_trace", "Einsum", 12, [F(3, 3)], {"equation": "ii"}, 1),
    ("einsum_diagonal", "Einsum", 12, [F(3, 3)], {"equation": "ii->i"}, 1),
    ("einsum_diagonal_ellipsis", "Einsum", 12, [F(3, 2, 3)], {"equation": "i...i->..."}, 1),
    ("einsum_diagonal_times", "Einsum", 12, [F(4, 2, 4), F(4)], {"equation": "iji,i->ji"}, 1),
    ("einsum_ellipsis_batch", "Einsum", 12, [F(2, 3, 4, 5), F(2, 3, 5, 2)], {"equation": "...ij,...jk->...ik"}, 1),
    ("einsum_ellipsis_broadcast", "Einsum", 12, [F(2, 1, 3), F(1, 4, 3)], {"equation": "...j,...j->..."}, 1),
    ("einsum_ellipsis_implicit", "Einsum", 12, [F(2, 3, 4), F(4, 5)], {"equation": "...ij,jk"}, 1),
    ("einsum_ellipsis_in_output_only", "Einsum", 12, [F(2, 3)], {"equation": "ij->j..."}, 1),
    ("einsum_sum_all", "Einsum", 12, [F(2, 3)], {"equation": "ij->"}, 1),
    ("einsum_dot", "Einsum", 12, [F(5), F(5)], {"equation": "i,i"}, 1),
    ("einsum_outer", "Einsum", 12, [F(5), F(4)], {"equation": "i,j"}, 1),
    ("einsum_three_operands", "Einsum", 12, [F(2, 3), F(3, 4), F(4, 2)], {"equation": "ij,jk,kl->il"}, 1),
    ("einsum_bilinear", "Einsum", 12, [F(2, 3), F(4, 3, 5), F(2, 5)], {"equation": "bn,anm,bm->ba"}, 1),
    ("einsum_upper_case_explicit", "Einsum", 12, [F(2, 3), F(3)], {"equation": "bA,A->b"}, 1),
    ("einsum_upper_case_implicit_scalar", "Einsum", 12, [F(2, 3), F(3, 2)], {"equation": "Ab,bA"}, 1),
    ("einsum_upper_and_lower", "Einsum", 12, [F(2, 3, 4)], {"equation": "bAa->aAb"}, 1),
    ("einsum_label_broadcast", "Einsum", 12, [F(2, 1), F(3, 3)], {"equation": "ij,jk->ik"}, 1),
    ("einsum_label_broadcast_elementwise", "Einsum", 12, [F(2, 3), F(1, 3)], {"equation": "ij,ij->ij"}, 1),
    ("einsum_spaces", "Einsum", 12, [F(2, 3), F(3, 4)], {"equation": "ij ,jk -> ki"}, 1),
    ("einsum_empty_contraction", "Einsum", 12, [np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32)],
     {"equation": "ij,jk->ik"}, 1),
    ("einsum_double", "Einsum", 12, [F(2, 3).astype(np.float64), F(3, 4).astype(np.float64)],
     {"equation": "ij,jk->ik"}, 1),
    ("einsum_float16", "Einsum", 12, [(F(3, 8) * 4).astype(np.float16), (F(8, 2) * 4).astype(np.float16)],
     {"equation": "ij,jk->ik"}, 1),
    ("einsum_float16_reduce", "Einsum", 12, [A16(60000, 60000, -60000)], {"equation": "i->"}, 1),
    ("einsum_int32_wraps", "Einsum", 12, [I32(INT32_MAX, 5, 3, 4).reshape(2, 2), I32(2, 5, 3, 4).reshape(2, 2)],
     {"equation": "ij,jk->ik"}, 1),
    ("einsum_int64", "Einsum", 12, [I64(*range(6)).reshape(2, 3), I64(*range(12)).reshape(3, 4)],
     {"equation": "ij,jk"}, 1),
    ("einsum_int32_diagonal_sum", "Einsum", 12, [I32(*range(9)).reshape(3, 3)], {"equation": "ii->"}, 1),
]


def build(op, opset, inputs, attrs, n_out, as_initializers):
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, value in enumerate(inputs):
        if value is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        value = np.asarray(value)
        if as_initializers:
            inits.append(numpy_helper.from_array(value, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, ELEM[value.dtype], list(value.shape)))
            feeds[name] = value
    model = single_node_model(op, opset, names, graph_inputs, inits, attrs, n_out)
    return onnx.shape_inference.infer_shapes(model), feeds  # fills in the outputs' types


def single_node_model(op, opset, names, graph_inputs, inits, attrs, n_out):
    """A model of one `op` node (named "the_node") reading `names`, outputs out0, out1, ..."""
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name="the_node", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("as_initializers", [False, True], ids=["runtime", "folded"])
@pytest.mark.parametrize("case_id, op, opset, inputs, attrs, n_out", CASES, ids=[c[0] for c in CASES])
def test_op_vs_onnxruntime(case_id, op, opset, inputs, attrs, n_out, as_initializers):
    model, feeds = build(op, opset, inputs, attrs, n_out, as_initializers)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = converters.from_onnx(model)
    if as_initializers:
        assert sess.nodes == []  # everything folded at import
    got = sess.run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, case_id
        assert g.dtype == w.dtype, case_id
        if w.dtype.kind in "biu":  # integer and shape ops: bitwise
            np.testing.assert_array_equal(g, w, err_msg=case_id)
        else:
            np.testing.assert_allclose(g, w, **(F64_TOL if w.dtype == np.float64 else TOL),
                                       err_msg=case_id)


# (base shape, exponent shape): ORT computes x*x for an exponent of 2 only where its broadcast loop
# hands the exponent over as one value per run of the innermost axis; elsewhere std::pow
_POW_SHAPES = [((5,), ()), ((5,), (1,)), ((3, 4), (3, 1)), ((1, 4), (3, 1)), ((5, 1), (1, 1)),
               ((5, 1), ()), ((5, 1, 1), (1,)), ((1,), (5, 1)), ((3, 1), (3, 1)), ((), ()),
               ((1, 1), (1,)), ((2, 3, 1), (2, 1, 1)), ((2, 1, 1), (2, 3, 1)), ((3, 4), (1, 4)),
               ((3, 1), (3, 4)), ((), (3,))]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("shapes", _POW_SHAPES, ids=str)
def test_integer_pow_broadcast_like_onnxruntime(shapes, dtype):
    """Squares and cubes that overflow wrap (x*x in the type) or become the type's minimum
    (std::pow through a double), as ORT's broadcast loop decides; at run time and folded."""
    base = np.resize(np.array([50000, -3, 3037000500, 2]).astype(dtype), shapes[0])
    for power in (2, 3):
        inputs = [base, np.full(shapes[1], power, dtype)]
        want = None
        for folded in (False, True):
            model, feeds = build("Pow", 15, inputs, {}, 1, folded)
            if want is None:
                want = ort.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            got = converters.from_onnx(model).run(None, feeds)[0]
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=f"power {power} folded={folded}")


def test_every_registered_version_is_a_real_onnx_version():
    from onnx import defs

    for op, versions in supported_ops().items():
        real = set()
        for v in range(1, defs.onnx_opset_version() + 1):
            try:
                real.add(defs.get_schema(op, v, "").since_version)
            except Exception:  # noqa: BLE001 - op not defined yet at v
                pass
        assert set(versions) <= real, (op, sorted(set(versions) - real))


def test_softmax_before_13_coerces_to_2d():
    """Opset < 13: softmax over all axes from `axis` on; opset 13: over `axis` only."""
    x = F(2, 3, 4)
    old = converters.from_onnx(build("Softmax", 11, [x], {"axis": 1}, 1, False)[0])
    new = converters.from_onnx(build("Softmax", 13, [x], {"axis": 1}, 1, False)[0])
    (a,) = old.run(None, {"in0": x})
    (b,) = new.run(None, {"in0": x})
    np.testing.assert_allclose(a.reshape(2, -1).sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(b.sum(1), 1, rtol=1e-6)


def test_slice_bounds_at_the_integer_extremes():
    """Every start / end among the int64 and int32 extremes, both step signs: ORT clamps as ONNX
    says, except that an end of INT32_MAX or INT64_MAX means 'to the end' stepping backwards too."""
    x = np.arange(5, dtype=np.float32)
    nodes, inits = [], []
    for dt in (np.int64, np.int32):
        info = np.iinfo(dt)
        bounds = sorted({info.min, -6, -5, -1, 0, 2, 5, 6, 2**31 - 1, info.max})
        steps = [-2, -1, 1, 3]  # huge steps crashed ONNX's data propagation: test_onnx_errors
        for k, (start, end, step) in enumerate(itertools.product(bounds, bounds, steps)):
            name = f"{np.dtype(dt).name}_{k}"
            for part, v in zip("seap", (start, end, 0, step)):
                inits.append(numpy_helper.from_array(np.array([v], dt), f"{name}_{part}"))
            nodes.append(helper.make_node("Slice", ["x"] + [f"{name}_{p}" for p in "seap"], [name]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                              [helper.make_empty_tensor_value_info(n.output[0]) for n in nodes], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX shape inference expects an empty INT_MAX slice: ORT warns
    want = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = converters.from_onnx(model).run(None, {"x": x})
    for node, g, w in zip(nodes, got, want):
        np.testing.assert_array_equal(g, w, err_msg=node.output[0])


def test_the_ai_onnx_domain_is_the_default_domain():
    """ORT takes a node in domain 'ai.onnx' for one in '' whichever of the two the opset import
    names (ONNX's shape inference does not, where they differ)."""
    x = F(2, 3)
    for opset_domain in ("", "ai.onnx"):
        node = helper.make_node("Softmax", ["x"], ["y"], domain="ai.onnx", axis=0)
        graph = helper.make_graph([node], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                                  [helper.make_empty_tensor_value_info("y")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(opset_domain, 13)])
        model.ir_version = 8
        want = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})
        np.testing.assert_allclose(converters.from_onnx(model).run(None, {"x": x})[0], want[0], **TOL)


def _topk_model(elem, k, largest, sorted_, as_initializer=None):
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=-1, largest=largest,
                            sorted=sorted_)
    inits = [numpy_helper.from_array(I64(k), "k")]
    inputs = [helper.make_tensor_value_info("x", elem, None)]
    if as_initializer is not None:
        inits.append(numpy_helper.from_array(as_initializer, "x"))
        inputs = []
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info("values", elem, None),
                               helper.make_tensor_value_info("indices", TensorProto.INT64, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    return model


def _by_index(values, indices):
    """TopK's outputs in index order: with sorted=0 their order is the runtime's choice."""
    order = np.argsort(indices, axis=-1)
    return np.take_along_axis(values, order, -1), np.take_along_axis(indices, order, -1)


_BIG = 2**53  # above it float64 rounds integers together: 2**53 + 1 became 2**53
_PAIRS = [_BIG + v for v in (1, 0, 3, 2, 5, 4, 7, 6, 9, 8)]  # the larger of each pair first
_TOPK_INTS = {
    "int64": np.array([[_BIG, _BIG + 1, 5, _BIG + 1, -2**63, 2**63 - 1, -_BIG - 1, -_BIG, 5,
                        -2**63],
                       [3, 3, 3, 2**62 + 1, 2**62, 2**62 + 1, -1, 0, 0, 3], _PAIRS], np.int64),
    "uint64": np.array([[_BIG, _BIG + 1, 5, _BIG + 1, 2**64 - 1, 0, 2**64 - 2, 5, 0, 2**63],
                        [7, 7, 2**63 + 1, 2**63, 2**63 + 1, 7, 0, 1, 0, 7], _PAIRS], np.uint64),
}


@pytest.mark.parametrize("sorted_", [1, 0], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("largest", [1, 0], ids=["largest", "smallest"])
@pytest.mark.parametrize("dtype", sorted(_TOPK_INTS))
def test_topk_compares_integers_exactly(dtype, largest, sorted_):
    """int64 / uint64 are ordered exactly, equal values by lower index first: as ORT for int64;
    ORT has no uint64 TopK, so as ONNX's reference implementation of the spec for uint64."""
    from onnx.reference import ReferenceEvaluator

    x = _TOPK_INTS[dtype]
    elem = TensorProto.INT64 if dtype == "int64" else TensorProto.UINT64
    for k in (1, 3, 4, x.shape[1]):
        model = _topk_model(elem, k, largest, sorted_)
        if dtype == "int64":
            want = ort.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None, {"x": x})
        else:
            want = ReferenceEvaluator(model).run(None, {"x": x})
        want = want if sorted_ else _by_index(*want)
        runs = [converters.from_onnx(model).run(None, {"x": x}),
                converters.from_onnx(_topk_model(elem, k, largest, sorted_, x)).run(None, {})]
        for got in runs:  # at run time, and folded at import
            assert got[0].dtype == x.dtype and got[1].dtype == np.int64
            got = got if sorted_ else _by_index(*got)
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"k={k} values")
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"k={k} indices")


@pytest.mark.parametrize("attrs", [{}, {"pads": [1, 2], "strides": [2], "dilations": [2]},
                                   {"auto_pad": "SAME_UPPER", "strides": [2]},
                                   {"auto_pad": "SAME_LOWER"}, {"auto_pad": "VALID"}, {"group": 2}],
                         ids=["plain", "pads_strides_dilations", "same_upper", "same_lower", "valid",
                              "group2"])
@pytest.mark.parametrize("spatial", [(9,), (6, 5)], ids=["1d", "2d"])
def test_conv_float64_like_the_reference(attrs, spatial):
    """ORT has no float64 Conv kernel: fastrnn computes it in float64, as ONNX's reference does."""
    from onnx.reference import ReferenceEvaluator

    attrs = {k: (v * len(spatial) if k in ("strides", "dilations") else
                 v[:1] * len(spatial) + v[1:] * len(spatial) if k == "pads" else v)
             for k, v in attrs.items()}
    inputs = [F(2, 4, *spatial).astype(np.float64), F(6, 4 // attrs.get("group", 1),
                                                      *(3,) * len(spatial)).astype(np.float64),
              F(6).astype(np.float64)]
    for folded in (False, True):
        model, feeds = build("Conv", 11, inputs, attrs, 1, folded)
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        got = converters.from_onnx(model).run(None, feeds)[0]
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, want, **F64_TOL)


def test_einsum_ellipsis_over_no_axes_at_run_time():
    """An ellipsis may cover no axes in one input and some in another (ORT at run time; ONNX's
    shape inference refuses it where it knows the ranks)."""
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="...j,...j")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                            for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    feeds = {"a": F(2, 1, 3), "b": F(3)}
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = converters.from_onnx(model).run(None, feeds)[0]
    assert got.shape == want.shape == (2, 1)
    np.testing.assert_allclose(got, want, **TOL)


def test_conv1d_before_an_rnn_takes_milliseconds():
    """(1, 64, 200) x (128, 64, 5): im2col and one matmul, not a Python loop over positions."""
    import time

    x, w, b = F(1, 64, 200), F(128, 64, 5), F(128)
    sess = converters.from_onnx(build("Conv", 11, [x, w, b], {"pads": [2, 2]}, 1, False)[0])
    feeds = {"in0": x, "in1": w, "in2": b}
    sess.run(None, feeds)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    assert sorted(times)[2] < 0.1, times  # about 1 ms; generous for a busy machine


def test_products_of_broadcast_and_strided_views_as_onnxruntime():
    """MatMul and Gemm reading an Expand's broadcast (zero strides: Keras 3's zero state times
    the recurrent kernel) and a strided Slice, at run time: numpy would multiply such views in
    its own loops, fastrnn hands them to BLAS contiguous; the values are ORT's."""
    nodes = [helper.make_node("Expand", ["s", "shape_small"], ["zeros"]),
             helper.make_node("MatMul", ["zeros", "w"], ["y0"]),
             helper.make_node("Expand", ["row", "shape_large"], ["rows"]),
             helper.make_node("MatMul", ["rows", "w"], ["y1"]),
             helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["xs"]),
             helper.make_node("MatMul", ["xs", "w"], ["y2"]),
             helper.make_node("Gemm", ["xs", "w", "bias"], ["y3"], alpha=0.5),
             helper.make_node("Gemm", ["w", "xs"], ["y4"], transA=1, transB=1)]
    consts = {"shape_small": I64(1, 16), "shape_large": I64(300, 16), "w": F(16, 8),
              "bias": F(8), "starts": I64(0), "ends": I64(32), "axes": I64(1), "steps": I64(2)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                     for n in ("s", "row", "x")],
        [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None) for k in range(5)],
        [numpy_helper.from_array(v, n) for n, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = {"s": np.array(0.75, np.float32), "row": F(1, 16), "x": F(5, 32)}
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)
    got = converters.from_onnx(model).run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, **TOL)


def test_small_expands_are_copies_and_large_ones_views():
    """A prepared Expand's output up to 4096 elements is its own array, a larger one a broadcast
    view of the input (no copy of a tensor that may be large; a plan's outputs are copied
    anyway, so this looks at the node's call)."""
    from converters.onnx_import.kernels import RUNTIME, prepare

    call, fast, _ = prepare("Expand", {}, [RUNTIME, RUNTIME], 1)
    assert fast
    row = F(1, 8)
    for shape, copied in (((4, 8), True), ((512, 8), True), ((513, 8), False)):
        got = call([row, I64(*shape)])[0]
        np.testing.assert_array_equal(got, np.broadcast_to(row, shape))
        assert (got.strides[0] != 0) == copied, shape
        assert np.shares_memory(got, row) != copied, shape
