"""Malformed models and bad calls give clear, typed fastrnn errors; plans save, load and run
without onnx; the session behaves like onnxruntime's where users can tell."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
import fastrnn  # noqa: E402
from fastrnn.errors import (ArgumentError, DTypeError, FastRNNError, FormatError,  # noqa: E402
                            ShapeError, UnsupportedError)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I, H = 5, 4


def lstm_model(opset=14, x_shape=("T", "N", I), bidirectional=False, extra_nodes=(), outputs=None,
               seq=True):
    rng = np.random.default_rng(0)
    D = 2 if bidirectional else 1
    inits = [numpy_helper.from_array(rng.standard_normal((D, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((D, 4 * H, H)).astype(np.float32), "R")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    names = ["X", "W", "R"]
    if seq:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [x_shape[1]]))
        names += ["", "lens"]
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], name="lstm", hidden_size=H,
                            direction="bidirectional" if bidirectional else "forward")
    outs = outputs or [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                       for n in ("Y", "Y_h", "Y_c")]
    graph = helper.make_graph([node, *extra_nodes], "g", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def feeds(T=3, N=2):
    rng = np.random.default_rng(1)
    return {"X": rng.standard_normal((T, N, I)).astype(np.float32),
            "lens": np.full(N, T, np.int32)}


def small_model(nodes, inits=(), inputs=(), opset=14, outputs=("y",)):
    graph = helper.make_graph(nodes, "g", list(inputs),
                              [helper.make_empty_tensor_value_info(o) for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_refuses(model) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT's own exception types
        return True
    return False


# --------------------------------------------------------------------------------------------------
# what cannot be read
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"this is not an onnx model", b"\x00\xff" * 50, b"",
                                  np.random.default_rng(0).bytes(4096)],
                         ids=["text", "binary", "empty", "random"])
def test_garbage_bytes(data):
    with pytest.raises(FormatError, match="ONNX model"):
        converters.from_onnx(data)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95, 0.999])
def test_truncated_bytes(fraction):
    data = lstm_model().SerializeToString()
    with pytest.raises(FormatError):
        converters.from_onnx(data[:int(len(data) * fraction)])


def test_truncated_file(tmp_path):
    data = lstm_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.onnx"):
        converters.from_onnx(str(path))


def test_paths_and_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        converters.from_onnx(str(tmp_path / "missing.onnx"))
    with pytest.raises(FormatError, match="directory"):
        converters.from_onnx(tmp_path)
    with pytest.raises(ArgumentError, match="path, bytes or an onnx.ModelProto"):
        converters.from_onnx(42)
    path = tmp_path / "ok.onnx"
    onnx.save_model(lstm_model(), str(path))
    for src in (str(path), path, path.read_bytes(), bytearray(path.read_bytes()), lstm_model()):
        assert converters.from_onnx(src).run(["Y_h"], feeds())[0].shape == (1, 2, H)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_path_that_is_not_a_regular_file_is_refused_before_reading(tmp_path, kind):
    """A FIFO would block the read for ever, /dev/zero feed it without end."""
    path = tmp_path / "model.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    with pytest.raises(FormatError, match="not a regular file"):
        converters.from_onnx(path)


def test_external_data_missing_or_unreachable(tmp_path):
    model = lstm_model()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.bin", size_threshold=0)
    data = path.read_bytes()
    with pytest.raises(FormatError, match="external data"):
        converters.from_onnx(data)  # bytes: nothing to resolve the data file against
    os.remove(tmp_path / "m.bin")
    with pytest.raises(FormatError, match="external data"):
        converters.from_onnx(str(path))


def _external(name, dims, location):
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims,
                              data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def test_external_data_is_read_from_the_models_folder_only(tmp_path, monkeypatch):
    """Tensors in node attributes and external initializers that also carry raw_data: from bytes or
    a ModelProto nothing is read (onnx would look in the current directory); from a path, only
    files in the model's folder."""
    monkeypatch.chdir(tmp_path)
    data = np.arange(6, dtype=np.float32)
    data.tofile(tmp_path / "secret.bin")
    init = numpy_helper.from_array(np.zeros(6, np.float32), "w")
    init.data_location = TensorProto.EXTERNAL  # keeps its raw_data
    init.external_data.add(key="location", value="secret.bin")
    shape = numpy_helper.from_array(np.array([6], np.int64), "shape")
    models = [
        small_model([helper.make_node("Constant", [], ["y"], value=_external("c", [6], "secret.bin"))]),
        small_model([helper.make_node("ConstantOfShape", ["shape"], ["y"],
                                      value=_external("v", [1], "secret.bin"))], [shape]),
        small_model([helper.make_node("Identity", ["w"], ["y"])], [init]),
    ]
    for model in models:
        for src in (model, model.SerializeToString()):
            with pytest.raises(FormatError, match="external data"):
                converters.from_onnx(src)
    (tmp_path / "m").mkdir()
    data.tofile(tmp_path / "m" / "c.bin")
    for location in ("c.bin", "../secret.bin"):
        node = helper.make_node("Constant", [], ["y"], value=_external("c", [6], location))
        onnx.save_model(small_model([node]), str(tmp_path / "m" / "m.onnx"))
        if location == "c.bin":
            (y,) = converters.from_onnx(tmp_path / "m" / "m.onnx").run(None, {})
            np.testing.assert_array_equal(y, data)
        else:
            with pytest.raises(FormatError, match="external data"):
                converters.from_onnx(tmp_path / "m" / "m.onnx")


# --------------------------------------------------------------------------------------------------
# inconsistent or unsupported graphs fail at import
# --------------------------------------------------------------------------------------------------
def test_recurrent_weight_shapes_must_agree():
    model = lstm_model()
    model.graph.initializer[1].CopyFrom(
        numpy_helper.from_array(np.zeros((1, 4 * H, H + 1), np.float32), "R"))
    with pytest.raises(ShapeError, match=r"node 'lstm'.*R must have shape"):
        converters.from_onnx(model)
    model = lstm_model()
    b = helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(np.zeros((1, 7), np.float32)))
    model.graph.node.insert(0, b)
    model.graph.node[1].input[3] = "B"
    with pytest.raises(ShapeError, match="B must have shape"):
        converters.from_onnx(model)


def test_input_features_must_match_w():
    with pytest.raises(ShapeError, match="input features"):
        converters.from_onnx(lstm_model(x_shape=("T", "N", I + 2)))


def test_hidden_size_must_match_r():
    model = lstm_model()
    (attr,) = [a for a in model.graph.node[0].attribute if a.name == "hidden_size"]
    attr.i = H + 1
    with pytest.raises(ShapeError):
        converters.from_onnx(model)


def test_shape_inference_catches_inconsistent_graph():
    mm = helper.make_node("MatMul", ["Y_h", "M"], ["Z"], name="proj")
    outs = [helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)]
    model = lstm_model(extra_nodes=[mm], outputs=outs)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((H + 3, 2), np.float32), "M"))
    with pytest.raises(ShapeError, match="inconsistent"):
        converters.from_onnx(model)


@pytest.mark.parametrize("change", ["float", "string", "undefined"])
def test_attributes_of_the_wrong_type_are_a_format_error(change):
    """An attribute whose declared type is not the schema's (or no valid type at all) is refused
    at import, not read as something else (a None value broke int())."""
    model = lstm_model()
    (attr,) = [a for a in model.graph.node[0].attribute if a.name == "hidden_size"]
    if change == "float":
        attr.type, attr.f = onnx.AttributeProto.FLOAT, float(H)
    elif change == "string":
        attr.type, attr.s = onnx.AttributeProto.STRING, b"4"
    else:
        attr.type = onnx.AttributeProto.UNDEFINED  # what an unknown type parses as
    with pytest.raises(FormatError, match="attribute 'hidden_size'"):
        converters.from_onnx(model)


def test_names_defined_twice_are_a_format_error():
    """ORT uses the first of two initializers of a name (fastrnn used the last) and refuses a node
    output named like a graph input or initializer ('Duplicate definition')."""
    model = lstm_model()
    model.graph.initializer.insert(0, numpy_helper.from_array(np.zeros((1, 4 * H, I), np.float32), "W"))
    with pytest.raises(FormatError, match="initializer 'W' defined twice"):
        converters.from_onnx(model)
    for name in ("X", "W"):
        model = lstm_model(extra_nodes=[helper.make_node("Neg", ["Y_h"], [name], name="shadow")])
        assert ort_refuses(model)
        with pytest.raises(FormatError, match=f"'{name}' is defined twice \\(again by node 'shadow'"):
            converters.from_onnx(model)


def test_attributes_by_reference_or_given_twice_are_a_format_error():
    model = lstm_model()
    (attr,) = [a for a in model.graph.node[0].attribute if a.name == "hidden_size"]
    attr.ref_attr_name = "hs"  # only meaningful in a function body
    with pytest.raises(FormatError, match="'hidden_size' refers to a function attribute"):
        converters.from_onnx(model)
    model = lstm_model()  # direction="forward", then "reverse"
    model.graph.node[0].attribute.append(helper.make_attribute("direction", "reverse"))
    assert ort_refuses(model)
    with pytest.raises(FormatError, match="'direction' is given twice"):
        converters.from_onnx(model)


def test_what_the_operator_version_does_not_define_is_refused():
    """ORT refuses a node with an attribute its op version does not define (LSTM-7 has no layout,
    ArgMax-11 no select_last_index) or without a required one, and an opset onnx does not know."""
    lstm7 = lstm_model(opset=7)
    lstm7.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    argmax11 = small_model([helper.make_node("ArgMax", ["x"], ["y"], axis=1, select_last_index=1)],
                           inputs=[x], opset=11)
    cast = small_model([helper.make_node("Cast", ["x"], ["y"])], inputs=[x])
    for model, match in ((lstm7, "'layout' is not defined"),
                         (argmax11, "'select_last_index' is not defined"),
                         (cast, r"required attribute\(s\) \['to'\] missing")):
        assert ort_refuses(model)
        with pytest.raises(FormatError, match=match):
            converters.from_onnx(model)
    future = lstm_model(opset=onnx.defs.onnx_opset_version() + 1)
    assert ort_refuses(future)
    with pytest.raises(UnsupportedError, match="knows opsets up to"):
        converters.from_onnx(future)


def test_a_required_input_left_empty_is_a_format_error():
    shape = helper.make_node("Shape", [""], ["S"], name="shape_of_nothing")
    outs = [helper.make_tensor_value_info("S", TensorProto.INT64, None)]
    with pytest.raises(FormatError, match=r"'shape_of_nothing' \(Shape\): input 0 \(data\) is required"):
        converters.from_onnx(lstm_model(extra_nodes=[shape], outputs=outs))
    model = lstm_model()
    model.graph.node[0].input[2] = ""  # R
    with pytest.raises(FormatError, match=r"input 2 \(R\) is required"):
        converters.from_onnx(model)


_ATTRIBUTE_VALUES = {
    "hidden_size": st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, 1, H, 2**31]),
    "layout": st.integers(-3, 3),
    "input_forget": st.integers(-2, 2),
    "clip": st.floats(allow_nan=True, allow_infinity=True),
    "direction": st.sampled_from(["forward", "reverse", "bidirectional", "", "Forward", "x"]),
    "activations": st.lists(st.sampled_from(["Sigmoid", "Tanh", "Relu", "HardSigmoid", "x", ""]),
                            max_size=7),
    "activation_alpha": st.lists(st.floats(-10, 10), max_size=7),
    "activation_beta": st.lists(st.floats(-10, 10), max_size=7),
}


@settings(max_examples=150, deadline=None)
@given(values=st.fixed_dictionaries({}, optional=_ATTRIBUTE_VALUES))
def test_any_recurrent_attributes_import_or_fail_typed(values):
    """Whatever values the LSTM node's attributes hold, importing (and running what imports)
    raises nothing but fastrnn's errors."""
    model = lstm_model()
    node = model.graph.node[0]
    keep = [a for a in node.attribute if a.name not in values]
    del node.attribute[:]
    node.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in values.items()
                                  if not (isinstance(v, list) and not v)])
    try:
        sess = converters.from_onnx(model)
    except FastRNNError:
        return
    try:
        sess.run(None, feeds())
    except FastRNNError:
        pass


def test_undefined_values_are_a_format_error():
    model = lstm_model()
    model.graph.node[0].input[1] = "no_such_weight"
    with pytest.raises(FormatError, match="no_such_weight"):
        converters.from_onnx(model)


def test_every_unsupported_op_is_listed_at_import():
    extra = [helper.make_node("Det", ["Y_h"], ["E"], name="my_det"),
             helper.make_node("NoSuchOp", ["E"], ["F"], name="mystery"),
             helper.make_node("FusedThing", ["F"], ["G"], domain="com.example", name="vendor"),
             helper.make_node("Scan", ["E"], ["K"], name="branch", num_scan_inputs=1,
                              body=helper.make_graph([], "body", [], []))]
    outs = [helper.make_tensor_value_info("G", TensorProto.FLOAT, None)]
    model = lstm_model(extra_nodes=extra, outputs=outs)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedError) as info:
        converters.from_onnx(model)
    msg = str(info.value)
    for text in ("Det", "my_det", "NoSuchOp", "mystery", "FusedThing", "com.example", "vendor",
                 "Scan", "branch", "4 node(s)"):
        assert text in msg


def test_unsupported_op_version_names_supported_versions():
    node = helper.make_node("Add", ["a", "b"], ["c"], name="old_add")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])
                                            for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    with pytest.raises(UnsupportedError, match=r"Add .*version 6.*supported versions: \[7, 13, 14\]"):
        converters.from_onnx(model)


def test_training_mode_dropout_is_unsupported():
    node = helper.make_node("Dropout", ["Y_h", "", "train"], ["D"], name="drop")
    outs = [helper.make_tensor_value_info("D", TensorProto.FLOAT, None)]
    model = lstm_model(extra_nodes=[node], outputs=outs)
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "train"))
    with pytest.raises(UnsupportedError, match="training"):
        converters.from_onnx(model)


def test_float16_weights_are_unsupported():
    model = lstm_model()
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    for out in model.graph.output:
        out.type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(UnsupportedError, match="float32 and float64"):
        converters.from_onnx(model)


# --------------------------------------------------------------------------------------------------
# bad calls
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sess():
    return converters.from_onnx(lstm_model(x_shape=("T", "N", I)))


def test_missing_feed(sess):
    with pytest.raises(ArgumentError, match=r"\['lens'\] are missing"):
        sess.run(None, {"X": feeds()["X"]})


def test_unknown_feed_and_output_names(sess):
    with pytest.raises(ArgumentError, match="unknown input"):
        sess.run(None, {**feeds(), "x": 1})
    with pytest.raises(ArgumentError, match="unknown output"):
        sess.run(["Y", "nope"], feeds())
    with pytest.raises(ArgumentError, match="dict"):
        sess.run(None, [feeds()["X"]])


def test_wrong_rank_feed(sess):
    f = feeds()
    f["X"] = f["X"][0]
    with pytest.raises(ShapeError, match="rank 3"):
        sess.run(None, f)


def test_wrong_static_dim(sess):
    f = feeds()
    f["X"] = np.zeros((3, 2, I + 1), np.float32)
    with pytest.raises(ShapeError, match="axis 2"):
        sess.run(None, f)


def test_wrong_dtype_feed(sess):
    f = feeds()
    f["X"] = f["X"].astype(np.float64)
    with pytest.raises(DTypeError, match=r"tensor\(float\)"):
        sess.run(None, f)
    f = feeds()
    f["lens"] = f["lens"].astype(np.int64)
    with pytest.raises(DTypeError, match=r"tensor\(int32\)"):
        sess.run(None, f)


def test_python_lists_are_converted_like_onnxruntime(sess):
    f = feeds(T=2, N=1)
    got = sess.run(None, {"X": f["X"].tolist(), "lens": [2]})
    for a, b in zip(got, sess.run(None, f)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_lengths_out_of_range(sess):
    f = feeds()
    f["lens"][0] = 9
    with pytest.raises(ArgumentError, match="lengths"):
        sess.run(None, f)


def test_runtime_shape_error_names_the_node():
    add = helper.make_node("Add", ["Y_h", "Q"], ["S"], name="bad_add")
    outs = [helper.make_tensor_value_info("S", TensorProto.FLOAT, None)]
    model = lstm_model(extra_nodes=[add], outputs=outs)
    model.graph.input.append(helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["a", "b"]))
    s = converters.from_onnx(model)
    with pytest.raises(ShapeError, match="bad_add"):
        s.run(None, {**feeds(), "Q": np.zeros((3, 3), np.float32)})


def test_slice_axes_repeated_at_run_time():
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [2])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for v, n in (([0, 1], "s"), ([2, 3], "e"))]
    s = converters.from_onnx(small_model([helper.make_node("Slice", ["x", "s", "e", "axes"], ["y"])],
                                         inits, [x, axes]))
    with pytest.raises(ShapeError, match=r"Slice axes \[0, 0\] repeat an axis"):
        s.run(None, {"x": np.zeros((4, 4), np.float32), "axes": np.array([0, -2], np.int64)})


# sizes read from a model's values: ORT creates the session (it folds nothing) and fails at run time
_HUGE = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "huge")
_ONE = numpy_helper.from_array(np.ones((1, 1), np.float32), "one")
_SCALARS = [numpy_helper.from_array(np.array(v, np.float32), n)
            for v, n in ((0, "a"), (1e13, "b"), (1, "c"))]
FORGED = {
    "constant_of_shape": ([helper.make_node("ConstantOfShape", ["huge"], ["y"])], [_HUGE]),
    "tile": ([helper.make_node("Tile", ["one", "huge"], ["y"])], [_ONE, _HUGE]),
    "range": ([helper.make_node("Range", ["a", "b", "c"], ["y"])], _SCALARS),
    "range_widest_doubles": ([helper.make_node("Range", ["a", "b", "c"], ["y"])],
                             [numpy_helper.from_array(np.array(v), n)
                              for v, n in ((-1.7e308, "a"), (1.7e308, "b"), (1.0, "c"))]),
    "expand_add": ([helper.make_node("Expand", ["one", "huge"], ["e"]),
                    helper.make_node("Add", ["e", "one"], ["y"])], [_ONE, _HUGE]),
    "one_hot": ([helper.make_node("OneHot", ["i", "depth", "v"], ["y"])],
                [numpy_helper.from_array(np.zeros(4, np.int64), "i"),
                 numpy_helper.from_array(np.array(2**40, np.int64), "depth"),
                 numpy_helper.from_array(np.array([0, 1], np.float32), "v")]),
    "pad": ([helper.make_node("Pad", ["one", "pads"], ["y"])],
            [_ONE, numpy_helper.from_array(np.array([2**20, 2**20, 0, 0], np.int64), "pads")]),
    "expand_mul_at_run_time": ([helper.make_node("Expand", ["x", "huge"], ["e"]),
                                helper.make_node("Mul", ["e", "x"], ["y"])], [_HUGE]),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_sizes_run_at_run_time_and_fail_there_before_allocating(case):
    nodes, inits = FORGED[case]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])
    model = small_model(nodes, inits, [x] if case.endswith("run_time") else [])
    s = converters.from_onnx(model)  # nothing allocated at import: the nodes stay in the plan
    assert s.nodes
    feeds = {"x": np.ones((1, 1), np.float32)} if s.get_inputs() else {}
    with pytest.raises(UnsupportedError, match=r"elements\), more than the \d+ allowed|"
                                               r"element count .* is not finite"):
        s.run(None, feeds)


def test_folding_at_import_has_a_budget():
    """Constant folding creates at most 2**26 elements more than the initializers hold; the rest is
    left to run time (three 2**25-element ConstantOfShape: the third is not folded)."""
    value = numpy_helper.from_array(np.zeros(1, np.int8))
    shape = numpy_helper.from_array(np.array([2**25], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], [f"y{i}"], value=value) for i in range(3)]
    s = converters.from_onnx(small_model(nodes, [shape], outputs=("y0", "y1", "y2")))
    assert [(n.op, n.outputs) for n in s.nodes] == [("ConstantOfShape", ["y2"])]


def test_range_of_non_finite_bounds_is_an_argument_error():
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for v, n in ((0, "a"), (np.inf, "b"), (1, "c"))]
    with pytest.raises(ArgumentError, match="finite"):
        converters.from_onnx(small_model([helper.make_node("Range", ["a", "b", "c"], ["y"])], inits))


# a node that fails: its inputs, as initializers (folded at import) or fed (at run time)
_FAILING = {
    "range_delta_0": (helper.make_node("Range", ["a", "b", "c"], ["y"], name="rng"), 11,
                      {"a": np.float32(0), "b": np.float32(1), "c": np.float32(0)},
                      ArgumentError, "Range-11", "Range", ": Range delta must not be 0"),
    "reshape_impossible": (helper.make_node("Reshape", ["a", "b"], ["y"], name="rs"), 14,
                           {"a": np.zeros(6, np.float32), "b": np.array([4, 2], np.int64)},
                           ShapeError, "Reshape-14", "Reshape",
                           r": cannot reshape a tensor of shape (6,) (6 elements) into [4, 2]"),
    "scatter_out_of_range": (helper.make_node("Scatter", ["a", "b", "c"], ["y"], name="sc"), 10,
                             {"a": np.zeros(3, np.float32), "b": np.array([5], np.int64),
                              "c": np.ones(1, np.float32)},
                             ShapeError, "Scatter-9, as ScatterElements", "ScatterElements",
                             ": index out of range: indices in [5, 5] for an axis of size 3"),
}


@pytest.mark.parametrize("case", list(_FAILING))
@pytest.mark.parametrize("folded", [True, False], ids=["at_import", "at_run_time"])
def test_a_failing_node_is_named_once(case, folded):
    """The error names the node once, with its op and why: the ONNX op and version when it fails as
    it is folded at import (was "node 'rng' (Range-11): node 'rng' (Range): ..."), the plan op at
    run time."""
    node, opset, values, err, onnx_op, plan_op, why = _FAILING[case]
    if folded:
        inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in values.items()]
        with pytest.raises(err) as info:
            converters.from_onnx(small_model([node], inits, opset=opset))
        want = f"node {node.name!r} ({onnx_op}){why}"
    else:
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                None) for n, v in values.items()]
        s = converters.from_onnx(small_model([node], (), inputs, opset=opset))
        with pytest.raises(err) as info:
            s.run(None, {n: np.asarray(v) for n, v in values.items()})
        want = f"node {node.name!r} ({plan_op}){why}"
    assert str(info.value) == want
    assert str(info.value).count(node.name) == 1
    assert "node " not in str(info.value.__cause__)  # the kernel's own error, unnamed


def test_a_node_failing_on_a_numpy_error_is_named_once(monkeypatch):
    from converters.onnx_import import kernels

    def broken(attrs, ins, n_out):
        raise ValueError("numpy says no")

    monkeypatch.setitem(kernels.KERNELS, "Range", broken)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "a"), (3, "b"), (1, "c"))]
    with pytest.raises(ShapeError) as info:
        converters.from_onnx(small_model([helper.make_node("Range", ["a", "b", "c"], ["y"], name="r")],
                                         inits))
    assert str(info.value) == ("node 'r' (Range-11) failed on inputs of shapes [(), (), ()]: "
                               "numpy says no")


@pytest.mark.parametrize("error", [OverflowError("too big"), ZeroDivisionError("by zero")],
                         ids=lambda e: type(e).__name__)
def test_a_node_failing_on_an_arithmetic_error_is_typed(monkeypatch, error):
    """OverflowError and ZeroDivisionError from a kernel are ArgumentErrors that name the node (an
    integer Gemm with alpha inf let an OverflowError escape untyped)."""
    from converters.onnx_import import kernels

    def broken(attrs, ins, n_out):
        raise error

    monkeypatch.setitem(kernels.KERNELS, "Range", broken)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "a"), (3, "b"), (1, "c"))]
    with pytest.raises(ArgumentError) as info:
        converters.from_onnx(small_model([helper.make_node("Range", ["a", "b", "c"], ["y"], name="r")],
                                         inits))
    assert str(info.value) == (f"node 'r' (Range-11) failed on the values of its inputs: "
                               f"{type(error).__name__}: {error}")


def _refused_at_import_or_run(model, feeds, err):
    """fastrnn raises `err`, as it folds the node at import or as it runs it."""
    with pytest.raises(err) as info:
        converters.from_onnx(model).run(None, feeds)
    return info


def _both_ways(nodes, values, opset):
    """The model with `values` as initializers (folded at import), and with them fed at run time."""
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in values.items()]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None)
              for n, v in values.items()]
    return [(small_model(nodes, inits, opset=opset), {}),
            (small_model(nodes, (), inputs, opset=opset), {n: np.asarray(v) for n, v in values.items()})]


@pytest.mark.parametrize("indices_shape", [(4, 2), (3,), (1, 1, 1)])
def test_gather_elements_indices_beyond_the_data_are_a_shape_error(indices_shape):
    """ORT refuses indices of another rank than the data, or longer than the data on an axis other
    than `axis` (fastrnn used to broadcast indices and data against each other)."""
    values = {"d": np.arange(12, dtype=np.float32).reshape(3, 4),
              "i": np.zeros(indices_shape, np.int64)}
    node = helper.make_node("GatherElements", ["d", "i"], ["y"], axis=1)
    for model, feeds in _both_ways([node], values, 13):
        with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
            ort.InferenceSession(model.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, feeds)
        _refused_at_import_or_run(model, feeds, ShapeError)


# nodes of the ops around the recurrent layers that ORT refuses too: (node, opset, values, error)
_REFUSED = {
    "gather_nd_index_out_of_range": (helper.make_node("GatherND", ["d", "i"], ["y"]), 13,
                                     {"d": np.zeros((2, 3), np.float32), "i": np.array([[0, 3]])},
                                     ShapeError),
    "gather_nd_batch_mismatch": (helper.make_node("GatherND", ["d", "i"], ["y"], batch_dims=1), 13,
                                 {"d": np.zeros((2, 3), np.float32), "i": np.zeros((3, 1), np.int64)},
                                 ShapeError),
    "one_hot_negative_depth": (helper.make_node("OneHot", ["i", "depth", "v"], ["y"]), 11,
                               {"i": np.array([0, 1]), "depth": np.array(-2),
                                "v": np.array([0, 1], np.float32)},
                               (ArgumentError, ShapeError)),  # shape inference sees a constant
    "layer_norm_over_nothing": (helper.make_node("LayerNormalization", ["x", "s"], ["y"]), 17,
                                {"x": np.zeros((2, 0), np.float32), "s": np.zeros(0, np.float32)},
                                ShapeError),
    "layer_norm_scale_too_big": (helper.make_node("LayerNormalization", ["x", "s"], ["y"]), 17,
                                 {"x": np.zeros((2, 3), np.float32), "s": np.ones((3, 3), np.float32)},
                                 ShapeError),
    "pad_reflect_beyond_the_axis": (helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), 18,
                                    {"x": np.zeros((2, 3), np.float32), "p": np.array([0, 3, 0, 0])},
                                    ShapeError),
    "pad_edge_of_nothing": (helper.make_node("Pad", ["x", "p"], ["y"], mode="edge"), 18,
                            {"x": np.zeros((0, 3), np.float32), "p": np.array([1, 0, 0, 0])},
                            ShapeError),
    "global_pool_over_nothing": (helper.make_node("GlobalMaxPool", ["x"], ["y"]), 22,
                                 {"x": np.zeros((1, 2, 0), np.float32)}, ShapeError),
    "cumsum_axis_out_of_range": (helper.make_node("CumSum", ["x", "a"], ["y"]), 14,
                                 {"x": np.zeros((2, 3), np.float32), "a": np.array(2)}, ShapeError),
}


def test_reshape_entries_below_minus_one_are_refused():
    """numpy takes any negative entry of a shape for -1; ORT refuses them."""
    node = helper.make_node("Reshape", ["x", "s"], ["y"])
    for target in ([-2, 12], [-5, 4], [-7, -1]):
        values = {"x": np.zeros((2, 3, 4), np.float32), "s": np.array(target)}
        for model, feeds in _both_ways([node], values, 14):
            with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
                ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, feeds)
            _refused_at_import_or_run(model, feeds, ShapeError)


def test_feeds_that_make_no_array_of_the_inputs_type_are_dtype_errors():
    """A Python int past the input's integer type, and None (np.asarray would make a NaN)."""
    x = helper.make_tensor_value_info("x", TensorProto.INT32, None)
    model = small_model([helper.make_node("Identity", ["x"], ["y"])], inputs=[x])
    with pytest.raises(DTypeError, match="int32"):
        converters.from_onnx(model).run(None, {"x": [2 ** 40]})
    f = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    model = small_model([helper.make_node("Identity", ["x"], ["y"])], inputs=[f])
    with pytest.raises(DTypeError, match="None"):
        converters.from_onnx(model).run(None, {"x": None})


def test_bool_tensors_hold_true_as_one_and_half_floats_fit_16_bits():
    """A bool initializer's raw bytes other than 0 and 1 are true, stored as 1 (as ORT has
    them); float16 values given as int32_data past 16 bits are refused (onnx would wrap them)."""
    flags = onnx.TensorProto(name="b", data_type=TensorProto.BOOL, dims=[3],
                             raw_data=bytes([0, 1, 2]))
    model = small_model([helper.make_node("Identity", ["b"], ["y"])], inits=[flags])
    (got,) = converters.from_onnx(model).run(None, {})
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {})
    assert got.tobytes() == want.tobytes() == bytes([0, 1, 1])
    half = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT16, dims=[2],
                            int32_data=[15360, 70000])
    model = small_model([helper.make_node("Identity", ["w"], ["y"])], inits=[half])
    with pytest.raises(FormatError, match="16 bits"):
        converters.from_onnx(model)


def _function_model(depth: int, calls: int = 2):
    """x -> F0(x), where F_k calls F_{k+1} `calls` times (their sum) and F_depth is Neg: a model
    of a few hundred bytes that inlines to ~calls**depth nodes."""
    opsets = [helper.make_opsetid("", 14), helper.make_opsetid("local", 1)]
    functions = [helper.make_function("local", f"F{depth}", ["a"], ["b"],
                                      [helper.make_node("Neg", ["a"], ["b"])], opsets)]
    for k in reversed(range(depth)):
        nodes = [helper.make_node(f"F{k + 1}", ["a"], [f"p{i}"], domain="local")
                 for i in range(calls)]
        nodes.append(helper.make_node("Sum", [f"p{i}" for i in range(calls)], ["b"]))
        functions.append(helper.make_function("local", f"F{k}", ["a"], ["b"], nodes, opsets))
    graph = helper.make_graph([helper.make_node("F0", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    return model


def test_local_functions_are_inlined_in_a_fresh_process():
    """onnx.inliner is a submodule `import onnx` does not import: a process that imported
    nothing else (no torch, no onnxscript) inlines too."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        import numpy as np
        import converters
        from test_onnx_errors import _function_model
        assert "onnx.inliner" not in sys.modules
        y = converters.from_onnx(_function_model(3)).run(None, {{"x": np.ones(2, np.float32)}})[0]
        print(y.tolist())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[-8.0,", "-8.0]"]


def test_local_functions_that_inline_past_the_limit_or_recurse_are_refused():
    model = _function_model(3)
    np.testing.assert_array_equal(
        converters.from_onnx(model).run(None, {"x": np.ones(2, np.float32)})[0],
        ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.ones(2, np.float32)})[0])
    with pytest.raises(UnsupportedError, match="inline to more than"):
        converters.from_onnx(_function_model(26))  # 2**26 nodes from ~2 KB
    looped = _function_model(2)
    looped.functions[0].node[0].op_type = "F0"  # F2 (the Neg) now calls F0
    looped.functions[0].node[0].domain = "local"
    with pytest.raises(UnsupportedError, match="calls itself"):
        converters.from_onnx(looped)
    with pytest.raises(UnsupportedError, match="more than 100 deep"):
        converters.from_onnx(_function_model(3000, calls=1))  # a chain, not a tree


@pytest.mark.parametrize("case", list(_REFUSED))
def test_what_onnxruntime_refuses_is_a_typed_error(case):
    node, opset, values, err = _REFUSED[case]
    for model, feeds in _both_ways([node], values, opset):
        with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
            ort.InferenceSession(model.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, feeds)
        _refused_at_import_or_run(model, feeds, err)


@pytest.mark.parametrize("node", [
    helper.make_node("BatchNormalization", list("xsbmv"), ["y", "mean", "var"], training_mode=1),
    helper.make_node("BatchNormalization", list("xsbmv"), ["y", "", "var", "", ""], name="v9"),
    helper.make_node("LayerNormalization", ["x", "s"], ["y"], stash_type=16),
    helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap"),
], ids=["batch_norm_training_mode", "batch_norm_running_var", "layer_norm_bfloat16_stash",
        "pad18_wrap"])
def test_training_and_unknown_modes_are_refused_at_import(node):
    opset = {"Pad": 18, "BatchNormalization": 9 if node.name == "v9" else 15}.get(node.op_type, 17)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    inits = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in "sbmv"]
    inits.append(numpy_helper.from_array(np.zeros(4, np.int64), "p"))
    outs = [o for o in node.output if o]
    model = small_model([node], inits, [x], opset, outputs=outs)
    with pytest.raises(UnsupportedError if node.op_type != "Pad" else FormatError,
                       match="training|stash_type|mode"):
        converters.from_onnx(model)


@pytest.mark.parametrize("alpha, beta", [(np.inf, 1.0), (1.0, -np.inf), (1.0, np.nan), (0.5, 1.0),
                                         (1e10, 1.0)])
def test_integer_gemm_needs_whole_number_alpha_and_beta(alpha, beta):
    """ORT has no integer Gemm; fastrnn computes it exactly when alpha and beta are whole numbers
    in the type's range and refuses the rest (alpha inf was an untyped OverflowError, alpha 0.5
    was truncated to 0)."""
    values = {"a": np.ones((2, 3), np.int32), "b": np.ones((3, 2), np.int32),
              "c": np.ones(2, np.int32)}
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=alpha, beta=beta)
    for model, feeds in _both_ways([node], values, 13):
        info = _refused_at_import_or_run(model, feeds, UnsupportedError)
        assert "integer Gemm needs whole-number alpha and beta" in str(info.value)


def test_integer_gemm_with_whole_number_alpha_and_beta_runs_like_the_reference():
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    values = {"a": rng.integers(-9, 9, (4, 3)).astype(np.int64),
              "b": rng.integers(-9, 9, (2, 3)).astype(np.int64), "c": rng.integers(-9, 9, 2)}
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=3.0, beta=-2.0, transB=1)
    for model, feeds in _both_ways([node], values, 13):
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        got = converters.from_onnx(model).run(None, feeds)[0]
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_reduce_max_of_no_bool_values_runs_as_the_spec_says():
    """ORT refuses it ("ReduceMax is not defined for empty set with bool type"); the spec gives the
    type's minimum, False (ReduceMin: True). An empty output is empty in both."""
    for axis, empty_set in ((0, True), (1, False)):
        values = {"x": np.zeros((0, 3), np.bool_), "axes": np.array([axis], np.int64)}
        for op, value in (("ReduceMax", False), ("ReduceMin", True)):
            node = helper.make_node(op, ["x", "axes"], ["y"])
            for model, feeds in _both_ways([node], values, 20):
                got = converters.from_onnx(model).run(None, feeds)[0]
                assert got.dtype == np.bool_
                if empty_set:
                    with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
                        ort.InferenceSession(model.SerializeToString(),
                                             providers=["CPUExecutionProvider"]).run(None, feeds)
                    np.testing.assert_array_equal(got, np.full((1, 3), value))
                else:
                    assert got.shape == (0, 1)


def test_shape_inference_cannot_be_made_to_exhaust_memory():
    """Slice steps near INT64_MIN made ONNX shape inference with data propagation allocate without
    bound (a 139-byte model) or crash; in a process limited to 3 GiB they import and run as in ORT."""
    steps = (-2**63, -2**63 + 1, -2**62)
    inits = [numpy_helper.from_array(np.array([v], np.int64), n)
             for v, n in ((3, "s"), (0, "e"), (0, "a"), *((p, f"p{i}") for i, p in enumerate(steps)))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", f"p{i}"], [f"y{i}"]) for i in range(3)]
    model = small_model(nodes, inits, [x], 13, outputs=("y0", "y1", "y2"))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.arange(4, dtype=np.float32)})
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        import numpy as np, converters
        s = converters.from_onnx({model.SerializeToString()!r})
        print([y.tolist() for y in s.run(None, {{"x": np.arange(4, dtype=np.float32)}})])
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([y.tolist() for y in want])


def test_errors_are_fastrnn_errors_and_builtin_kinds():
    assert issubclass(FormatError, ValueError) and issubclass(FormatError, FastRNNError)
    assert issubclass(ShapeError, ValueError) and issubclass(DTypeError, TypeError)
    assert issubclass(UnsupportedError, ValueError)


# --------------------------------------------------------------------------------------------------
# session behaviour
# --------------------------------------------------------------------------------------------------
def test_node_args_like_onnxruntime():
    model = lstm_model(bidirectional=True)
    s = converters.from_onnx(model)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for mine, theirs in zip(s.get_inputs() + s.get_outputs(), ref.get_inputs() + ref.get_outputs()):
        assert (mine.name, mine.type, mine.shape) == (theirs.name, theirs.type, theirs.shape)
    assert "NodeArg(name='X'" in repr(s.get_inputs()[0])


def test_a_negative_declared_size_is_unknown_like_in_onnxruntime():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    model = small_model([helper.make_node("Neg", ["x"], ["y"])], inputs=[x])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s = converters.from_onnx(model)
    assert s.get_inputs()[0].shape == ref.get_inputs()[0].shape == [None, 3]
    assert s.run(None, {"x": np.ones((2, 3), np.float32)})[0].shape == (2, 3)


def test_outputs_are_fresh_arrays(sess):
    f = feeds()
    y1, h1, c1 = sess.run(None, f)
    assert y1.flags.c_contiguous and y1.flags.writeable
    y1[...] = 99
    y2, h2, _ = sess.run(None, f)
    assert not np.any(y2 == 99)
    assert not np.shares_memory(h1, h2)


def test_identity_of_input_and_constant_outputs():
    nodes = [helper.make_node("Identity", ["x"], ["same"]),
             helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.arange(3.0)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("same", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("k", TensorProto.DOUBLE, [3]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = converters.from_onnx(model)
    x = np.array([1.0, 2.0], np.float32)
    same, k, again = s.run(None, {"x": x})
    np.testing.assert_array_equal(k, [0, 1, 2])
    same[0] = 7
    k[0] = 7
    assert x[0] == 1 and again[0] == 1
    assert s.run(["k"], {"x": x})[0][0] == 0


def test_record_is_json_and_roundtrips(tmp_path):
    s = converters.from_onnx(lstm_model(bidirectional=True))
    kind, meta, tensors = s.to_record()
    assert kind == "onnx_plan"
    json.dumps(meta, allow_nan=False)
    fastrnn.save(s, tmp_path / "p.frnn")
    loaded = fastrnn.load(tmp_path / "p.frnn")
    for a, b in zip(s.run(None, feeds()), loaded.run(None, feeds())):
        np.testing.assert_array_equal(a, b)


def test_corrupt_plan_record_is_a_format_error():
    from converters.onnx_import.plan import OnnxPlan

    kind, meta, tensors = converters.from_onnx(lstm_model()).to_record()
    bad = dict(meta, nodes=[dict(meta["nodes"][0], op="Nope")])
    with pytest.raises(FormatError, match="Nope"):
        OnnxPlan.from_record(bad, tensors)
    with pytest.raises(FormatError):
        OnnxPlan.from_record({k: v for k, v in meta.items() if k != "inputs"}, tensors)
    with pytest.raises(FormatError):
        OnnxPlan.from_record(meta, {})


@pytest.mark.parametrize("change", [
    {"shape": [True, 2, 5]}, {"shape": [-1, "N", 5]}, {"shape": [2**70]}, {"shape": "TN5"},
    {"dtype": "object"}, {"dtype": "U5"}, {"dtype": ">f4"}, {"dtype": "complex64"}, {"dtype": 1},
    {"dtype": "(2,3"}, {"dtype": "(-1,)f4"}, {"name": 3},
], ids=repr)
def test_a_saved_plan_input_that_to_json_cannot_write_is_a_format_error(change):
    """Found by tests/test_fuzz_loaders.py: a size `true`, a string shape or an object dtype
    loaded, and get_inputs() then reported it."""
    from converters.onnx_import.plan import OnnxPlan

    kind, meta, tensors = converters.from_onnx(lstm_model()).to_record()
    bad = dict(meta, inputs=[dict(meta["inputs"][0], **change)] + meta["inputs"][1:])
    with pytest.raises(FormatError, match="plan value"):
        OnnxPlan.from_record(bad, tensors)
    for ok in ({"shape": None}, {"shape": [None, "N", 5]}, {"dtype": None}, {"dtype": "float32"}):
        OnnxPlan.from_record(dict(meta, inputs=[dict(meta["inputs"][0], **ok)] + meta["inputs"][1:]),
                             tensors)


def test_a_saved_plan_whose_directions_disagree_is_a_format_error():
    """Direction 1's constants swapped for a consistent set of another size (or input size)
    would have the kernels index one state stack and output by direction 0's sizes: refused at
    load, whatever the record claims."""
    from converters.onnx_import.plan import OnnxPlan

    kind, meta, tensors = converters.from_onnx(lstm_model(bidirectional=True)).to_record()
    names = {name: key for name, key, _ in meta["constants"]}
    params = meta["nodes"][0]["attrs"]["params"][1]
    rng = np.random.default_rng(0)
    for hidden, inputs in ((H * 8, I), (1, I), (H, I + 5), (H, 1)):
        bad = dict(tensors)
        shapes = {"w_ih": (4 * hidden, inputs), "w_hh": (4 * hidden, hidden),
                  "b_ih": (4 * hidden,), "b_hh": (4 * hidden,)}
        for k, shape in shapes.items():
            if params[k] is not None:
                bad[names[params[k]]] = rng.standard_normal(shape).astype(np.float32)
        with pytest.raises(FormatError, match="directions must all be"):
            OnnxPlan.from_record(meta, bad)
    attrs = dict(meta["nodes"][0]["attrs"], reverse=[False])
    with pytest.raises(FormatError, match="direction"):
        OnnxPlan.from_record(dict(meta, nodes=[dict(meta["nodes"][0], attrs=attrs)]
                                  + meta["nodes"][1:]), tensors)


def test_a_saved_plan_with_odd_names_or_constant_dtypes_is_a_format_error():
    from converters.onnx_import.plan import OnnxPlan

    kind, meta, tensors = converters.from_onnx(lstm_model()).to_record()
    node = meta["nodes"][0]
    for change in (dict(inputs=[{}] + node["inputs"][1:]), dict(outputs="Y"), dict(op=3),
                   dict(attrs=[])):
        with pytest.raises(FormatError, match="onnx_plan record"):
            OnnxPlan.from_record(dict(meta, nodes=[dict(node, **change)] + meta["nodes"][1:]),
                                 tensors)
    name, key, _ = meta["constants"][0]
    for dt in ("U500000000", "float64", "object"):
        table = [[name, key, dt]] + meta["constants"][1:]
        with pytest.raises(FormatError, match="widens only"):
            OnnxPlan.from_record(dict(meta, constants=table), tensors)


def test_a_saved_plan_node_without_a_required_attribute_fails_typed():
    from converters.onnx_import.plan import OnnxPlan

    cat = helper.make_node("Concat", ["Y_h", "Y_c"], ["Z"], name="cat", axis=0)
    outs = [helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)]
    kind, meta, tensors = converters.from_onnx(lstm_model(extra_nodes=[cat], outputs=outs)).to_record()
    for node in meta["nodes"]:
        if node["op"] == "Concat":
            del node["attrs"]["axis"]
    plan = OnnxPlan.from_record(meta, tensors)
    with pytest.raises(FormatError, match=r"node 'cat' \(Concat\) lacks the attribute 'axis'"):
        plan.run(None, feeds())


def test_saved_plan_runs_without_onnx(tmp_path):
    """A converted plan loads and runs in a process where onnx and onnxruntime cannot be imported."""
    s = converters.from_onnx(lstm_model(bidirectional=True))
    f = feeds(T=4, N=3)
    fastrnn.save(s, tmp_path / "plan.frnn")
    np.savez(tmp_path / "io.npz", *s.run(None, f), **{"in_" + k: v for k, v in f.items()})
    _runs_without_onnx(tmp_path, f"""
        import converters
        plan = fastrnn.load({str(tmp_path / "plan.frnn")!r})
        data = np.load({str(tmp_path / "io.npz")!r})
        got = plan.run(None, {{"X": data["in_X"], "lens": data["in_lens"]}})
        for i, g in enumerate(got):
            np.testing.assert_array_equal(g, data[f"arr_{{i}}"])
        assert not any(m.startswith(("onnx", "torch")) for m in sys.modules if sys.modules[m])
    """)


def _runs_without_onnx(tmp_path, body: str) -> None:
    """Run `body` in a fresh process where onnx, onnxruntime, onnxscript and torch cannot be
    imported (sys, numpy as np and fastrnn are); it must finish without an error."""
    preamble = textwrap.dedent("""
        import sys
        for name in ("onnx", "onnxruntime", "onnxscript", "torch"):
            sys.modules[name] = None  # any import of them now fails
        import numpy as np
        import fastrnn
    """)
    script = preamble + textwrap.dedent(body) + "\nprint('ran without onnx')\n"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ran without onnx" in out.stdout


# --------------------------------------------------------------------------------------------------
# If: what is not inlined nor a single-node branch pair, and malformed branches
# --------------------------------------------------------------------------------------------------
def _fvi(name, shape=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _one_node_branch(name, node, out, inits=()):
    return helper.make_graph([node], name, [], [_fvi(out)], list(inits))


def _if_of(then, other, cond_input=True, nodes_before=(), inits=(), x_shape=("N", 1, I)):
    """If(cond) over x, y its output; cond a bool input (decided at run time)."""
    inputs = [_fvi("X", list(x_shape))]
    if cond_input:
        inputs.append(_fvi("cond", [], TensorProto.BOOL))
    node = helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=then, else_branch=other)
    graph = helper.make_graph([*nodes_before, node], "g", inputs, [_fvi("y")], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _same():
    return _one_node_branch("same", helper.make_node("Identity", ["X"], ["same"]), "same")


def test_unsupported_ops_in_if_branches_are_listed_at_import():
    det = _one_node_branch("e", helper.make_node("Det", ["X"], ["E"], name="my_det"), "E")
    with pytest.raises(UnsupportedError, match=r"Det .* at node 'the_if/then_branch/my_det'"):
        converters.from_onnx(_if_of(det, _same()))


def _nested(depth):
    """`depth` Ifs, each in the then branch of the one before, all on the constant condition."""
    branch = _one_node_branch("leaf", helper.make_node("Neg", ["X"], ["leaf"]), "leaf")
    for level in range(depth):
        out = f"y{level}" if level < depth - 1 else "y"
        node = helper.make_node("If", ["cond"], [out], name=f"if{level}", then_branch=branch,
                                else_branch=_one_node_branch(f"e{level}", helper.make_node(
                                    "Identity", ["X"], [f"same{level}"]), f"same{level}"))
        branch = helper.make_graph([node], f"level{level}", [], [_fvi(out)])
    nodes = [helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
             *branch.node]
    graph = helper.make_graph(nodes, "g", [_fvi("X", [2])], [_fvi("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_if_nesting_is_bounded():
    from converters.onnx_import.importer import MAX_IF_DEPTH

    x = np.array([1.0, -2.0], np.float32)
    fine = converters.from_onnx(_nested(MAX_IF_DEPTH))  # branches MAX_IF_DEPTH deep
    np.testing.assert_array_equal(fine.run(None, {"X": x})[0], -x)
    with pytest.raises(UnsupportedError, match=f"If nested more than {MAX_IF_DEPTH} deep"):
        converters.from_onnx(_nested(MAX_IF_DEPTH + 1))


def test_malformed_if_branches_are_a_format_error():
    """Each refused by ORT too."""
    reads = _one_node_branch("reads", helper.make_node("Add", ["X", "nowhere"], ["s"]), "s")
    with_input = helper.make_graph([helper.make_node("Identity", ["X"], ["s"])], "in",
                                   [_fvi("z", [1])], [_fvi("s")])
    shadows = helper.make_graph([helper.make_node("Neg", ["X"], ["r"])], "shadows", [], [_fvi("r")])
    passes = helper.make_graph([], "passes", [], [_fvi("X")])
    before = [helper.make_node("Relu", ["X"], ["r"])]
    cases = {"reads": (_if_of(reads, _same()), "reads"),
             "declares inputs": (_if_of(with_input, _same()), "take none"),
             "shadows": (_if_of(_same(), shadows, nodes_before=before), "defined twice"),
             "returns an outer value": (_if_of(passes, _same()), "outer value")}
    no_else = _if_of(_same(), _same())
    (other,) = [a for a in no_else.graph.node[0].attribute if a.name == "else_branch"]
    no_else.graph.node[0].attribute.remove(other)
    cases["no else_branch"] = (no_else, r"required attribute\(s\) \['else_branch'\]")
    for name, (model, match) in cases.items():
        assert ort_refuses(model), name
        with pytest.raises(FormatError, match=match):
            converters.from_onnx(model)


def test_if_condition_of_more_than_one_value():
    """ORT refuses it as it loads the model (a constant condition) or runs the If."""
    two = numpy_helper.from_array(np.array([True, False]), "cond")
    known = _if_of(_same(), _same(), cond_input=False, inits=[two])
    assert ort_refuses(known)
    with pytest.raises(ShapeError, match=r"node 'the_if' \(If-13\): .*exactly one value"):
        converters.from_onnx(known)
    fed = _if_of(_same(), _same())
    fed.graph.input[1].CopyFrom(_fvi("cond", ["k"], TensorProto.BOOL))
    x = np.ones((2, 1, I), np.float32)
    with pytest.raises(ShapeError, match=r"node 'the_if' \(Conditional\): .*exactly one value"):
        converters.from_onnx(fed).run(None, {"X": x, "cond": np.array([True, False])})


def _conditional_record():
    squeeze = _one_node_branch("sq", helper.make_node("Squeeze", ["X", "axes"], ["sq"]), "sq",
                               [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return converters.from_onnx(_if_of(squeeze, _same())).to_record()


@pytest.mark.parametrize("change", [
    {"then": None}, {"else": []}, {"then": {"op": "Squeeze"}}, {"then.op": "Nope"},
    {"then.op": "RecurrentLayer"}, {"then.op": "Conditional"}, {"then.op": 3}, {"else.attrs": []},
    {"then.inputs": [0, 7]}, {"then.inputs": [-2]}, {"then.inputs": [True]}, {"then.inputs": "01"},
    {"then.n_out": 0}, {"then.n_out": 1.0}, {"else.outputs": [1]}, {"else.outputs": [0, 0]},
    {"else.outputs": ["0"]}, {"inputs": ["", "X"]},
], ids=repr)
def test_a_saved_conditional_node_that_is_malformed_is_a_format_error(change):
    from converters.onnx_import.plan import OnnxPlan

    kind, meta, tensors = _conditional_record()
    (node,) = [n for n in meta["nodes"] if n["op"] == "Conditional"]
    assert OnnxPlan.from_record(meta, tensors)  # as saved: loads
    node = json.loads(json.dumps(node))
    for key, value in change.items():
        if key == "inputs":
            node["inputs"] = value
        elif "." in key:
            branch, field = key.split(".")
            node["attrs"][branch][field] = value
        else:
            node["attrs"][key] = value
    bad = dict(meta, nodes=[node if n["op"] == "Conditional" else n for n in meta["nodes"]])
    with pytest.raises(FormatError, match=r"'the_if' \(Conditional\)"):
        OnnxPlan.from_record(bad, tensors)


# --------------------------------------------------------------------------------------------------
# Conv and Einsum: what ORT refuses (or hangs on) is a typed error, at import or at run time
# --------------------------------------------------------------------------------------------------
_X = np.zeros((1, 4, 6), np.float32)
_CONV_REFUSED = {
    "channels_not_w_times_group": ({"group": 2}, {"x": _X, "w": np.zeros((4, 4, 3), np.float32)},
                                   ShapeError),
    "group_does_not_divide_m": ({"group": 2}, {"x": _X, "w": np.zeros((3, 2, 3), np.float32)},
                                ShapeError),
    "bias_of_another_size": ({}, {"x": _X, "w": np.zeros((3, 4, 3), np.float32),
                                  "b": np.zeros(2, np.float32)}, ShapeError),
    "kernel_shape_not_ws": ({"kernel_shape": [2]}, {"x": _X, "w": np.zeros((3, 4, 3), np.float32)},
                            ShapeError),
    "kernel_beyond_the_input": ({}, {"x": _X, "w": np.zeros((3, 4, 7), np.float32)}, ShapeError),
    "same_with_dilations": ({"auto_pad": "SAME_UPPER", "dilations": [2]},
                            {"x": _X, "w": np.zeros((3, 4, 3), np.float32)}, UnsupportedError),
    "x_of_rank_2": ({}, {"x": np.zeros((4, 6), np.float32), "w": np.zeros((3, 4, 3), np.float32)},
                    ShapeError),
    "w_of_another_rank": ({}, {"x": _X, "w": np.zeros((3, 4, 3, 3), np.float32)}, ShapeError),
    "pads_of_another_length": ({"pads": [1, 1, 1, 1]}, {"x": _X, "w": np.zeros((3, 4, 3), np.float32)},
                               ShapeError),
    "negative_pads": ({"pads": [-1, 0]}, {"x": _X, "w": np.zeros((3, 4, 3), np.float32)},
                      (ArgumentError, ShapeError)),
    "zero_stride": ({"strides": [0]}, {"x": _X, "w": np.zeros((3, 4, 3), np.float32)},
                    (ArgumentError, ShapeError)),
    "zero_group": ({"group": 0}, {"x": _X, "w": np.zeros((3, 4, 3), np.float32)},
                   (ArgumentError, ShapeError)),
    "float64": ({}, {"x": _X.astype(np.float64), "w": np.zeros((3, 4, 3))}, None),  # runs: see ops
}


@pytest.mark.parametrize("case", list(_CONV_REFUSED))
def test_conv_that_onnxruntime_refuses_is_a_typed_error(case):
    attrs, values, err = _CONV_REFUSED[case]
    node = helper.make_node("Conv", list(values), ["y"], name="conv", **attrs)
    for model, feeds in _both_ways([node], values, 11):
        if err is None:  # ORT has no float64 Conv; fastrnn runs it (tested in test_onnx_ops)
            assert converters.from_onnx(model).run(None, feeds)[0].dtype == np.float64
            continue
        if case not in _CONV_ORT_RUNS or not feeds:
            with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
                ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, feeds)
        _refused_at_import_or_run(model, feeds, err)


# ORT's shape inference refuses these where it knows the shapes, its kernel runs them where it
# does not; fastrnn refuses them either way, as the spec does
_CONV_ORT_RUNS = {"pads_of_another_length", "negative_pads"}


@pytest.mark.parametrize("attrs, err", [({"auto_pad": "VALID", "pads": [0, 0]}, FormatError),
                                        ({"auto_pad": "SAME_UPPER", "pads": [1, 1]}, FormatError),
                                        ({"auto_pad": "BOGUS"}, FormatError)],
                         ids=["valid_and_pads", "same_and_pads", "unknown_auto_pad"])
def test_conv_attributes_refused_at_import(attrs, err):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.zeros((3, 4, 3), np.float32), "w")
    model = small_model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], [w], [x], opset=11)
    assert ort_refuses(model)
    with pytest.raises(err):
        converters.from_onnx(model)


_A, _B = np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32)
_EINSUM_REFUSED = {
    # ORT loops forever on a '.' that is not part of '...' (in ONNX's shape inference, where the
    # input's rank is known; fastrnn parses every equation before it): ORT is not run
    "lone_dot": ("i.j->i", {"a": _A}, (FormatError, ShapeError), False),
    "two_dots": ("ij..->i", {"a": _A}, (FormatError, ShapeError), False),
    "digit": ("i1->i", {"a": _A}, (FormatError, ShapeError), True),
    "two_arrows": ("ij->ij->i", {"a": _A}, (FormatError, ShapeError), False),
    "two_ellipses": ("...i...->i", {"a": _A}, (FormatError, ShapeError), False),
    "output_label_in_no_input": ("ij,jk->kz", {"a": _A, "b": _B}, (FormatError, ShapeError), True),
    "output_repeats_a_label": ("ii->ii", {"a": np.zeros((3, 3), np.float32)},
                               (FormatError, ShapeError), True),
    "terms_for_other_inputs": ("ij,jk,k->i", {"a": _A, "b": _B}, ShapeError, True),
    "rank_not_the_terms": ("ijk,jk->i", {"a": _A, "b": _B}, ShapeError, True),
    "diagonal_of_unequal_axes": ("ii->i", {"a": np.zeros((3, 4), np.float32)}, ShapeError, True),
    "sizes_that_do_not_broadcast": ("ij,jk->ik", {"a": _A, "b": np.zeros((2, 4), np.float32)},
                                    ShapeError, True),
    "ellipsis_over_other_ranks": ("...j,...j->...", {"a": np.zeros((2, 1, 3), np.float32),
                                                      "b": np.zeros((4, 3), np.float32)},
                                  ShapeError, True),
    "ellipsis_summed_away": ("...ij->ij", {"a": np.zeros((2, 3, 4), np.float32)}, ShapeError, True),
    "implicit_upper_case_output": ("bZa", {"a": np.zeros((2, 3, 4), np.float32)},
                                   UnsupportedError, True),
}


@pytest.mark.parametrize("case", list(_EINSUM_REFUSED))
def test_einsum_that_onnxruntime_refuses_is_a_typed_error(case):
    equation, values, err, run_ort = _EINSUM_REFUSED[case]
    node = helper.make_node("Einsum", list(values), ["y"], name="einsum", equation=equation)
    for model, feeds in _both_ways([node], values, 12):
        if run_ort:
            with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
                ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, feeds)
        _refused_at_import_or_run(model, feeds, err)


def test_an_einsum_equation_in_an_if_branch_is_parsed_before_shape_inference():
    """onnx's shape inference would loop for ever on the branch's "i.j->i" (the input's rank is
    known): the equation is refused first."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_empty_tensor_value_info("y")
    then = helper.make_graph([helper.make_node("Einsum", ["x"], ["y"], equation="i.j->i")],
                             "then", [], [y])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [y])
    cond = numpy_helper.from_array(np.array(True), "c")
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    with pytest.raises((FormatError, ShapeError), match="Einsum"):
        converters.from_onnx(small_model([node], [cond], [x], opset=13))


def test_a_saved_plan_with_conv_and_einsum_runs_without_onnx(tmp_path):
    """The kernels of conv_ops are registered when a saved plan is loaded (no importer, no onnx)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (6, 2, 3)), ("b", (6,)), ("m", (6, 5)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, pads=[1, 1]),
             helper.make_node("Einsum", ["c", "m"], ["y"], equation="nct,ck->ntk")]
    model = small_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 4, "T"])], opset=13)
    s = converters.from_onnx(model)
    assert [n.op for n in s.nodes] == ["Conv", "Einsum"]
    x = rng.standard_normal((2, 4, 7)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(s.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    fastrnn.save(s, tmp_path / "plan.frnn")
    np.savez(tmp_path / "io.npz", x=x, y=s.run(None, {"x": x})[0])
    _runs_without_onnx(tmp_path, f"""
        plan = fastrnn.load({str(tmp_path / "plan.frnn")!r})
        data = np.load({str(tmp_path / "io.npz")!r})
        np.testing.assert_array_equal(plan.run(None, {{"x": data["x"]}})[0], data["y"])
        assert "converters.onnx_import.importer" not in sys.modules
    """)
