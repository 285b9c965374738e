"""ONNX Loop (and If / Loop nested in one another) run by fastrnn's plan, against ONNX Runtime.

Hand-built graphs: counter loops, while-loops on their condition, scan outputs, values read from
the enclosing scopes, zero trips, every combination of M and cond; malformed Loop nodes and saved
records. The tf2onnx Loop fixtures (Keras SimpleRNN, Keras 3 GRU, masked layers...) are compared
with Keras and ORT on their recorded inputs, at batch 2 / length 7 and 1 / 1, and saved, in
test_onnx_keras.py; here at a longer length, saved and loaded.
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
import fastrnn  # noqa: E402
from converters.onnx_import.plan import MAX_NESTING, OnnxPlan  # noqa: E402
from fastrnn.errors import FormatError, ShapeError, UnsupportedError  # noqa: E402
from test_onnx_keras import DATA, LOOPS, _recorded, _resized  # noqa: E402

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
LOOP_OPSETS = [9, 11, 13, 16, 19, 21]  # Loop-1 (opset 9), 11, 13, 16, 19, 21


def _vi(name, shape=None, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def _body(nodes, carried, outputs, inits=(), name="body"):
    """A Loop body: inputs (i, c, *carried), outputs (cond, *outputs); carried and outputs are
    (name, shape, elem) or names (float, shape unknown)."""
    spec = lambda v: _vi(v) if isinstance(v, str) else _vi(*v)  # noqa: E731
    inputs = [_vi("i", [], INT64), _vi("c", [], BOOL)] + [spec(v) for v in carried]
    return helper.make_graph(nodes, name, inputs, [spec(v) for v in outputs], list(inits))


def _model(nodes, inputs, outputs, opset=13, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, [_vi(o) if isinstance(o, str) else o
                                                   for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 13 else 8
    return model


def _ort(model):
    """An ORT session of a ModelProto or a path."""
    source = str(model) if isinstance(model, pathlib.Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def ort_refuses(model) -> bool:
    try:
        _ort(model)
    except Exception:  # noqa: BLE001 - ORT's own exception types
        return True
    return False


def _check(model, feeds_list, tmp_path=None):
    """fastrnn runs the model as ORT does (dtype, shape, values) on every feed, and so does its
    saved plan when tmp_path is given."""
    sess = converters.from_onnx(model)
    ref = _ort(model)
    loaded = None
    if tmp_path is not None:
        fastrnn.save(sess, tmp_path / "loop.frnn")
        loaded = fastrnn.load(tmp_path / "loop.frnn")
    for feeds in feeds_list:
        got = sess.run(None, feeds)
        want = ref.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        if loaded is not None:
            for g, s in zip(got, loaded.run(None, feeds)):
                assert g.dtype == s.dtype
                np.testing.assert_array_equal(g, s)
    return sess


def _fx(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# counter loops, while-loops, M and cond
# --------------------------------------------------------------------------------------------------
def _counter_loop(opset):
    """v <- v * w + relu(x) (x: an outer input, w: an outer initializer) M times; scan outputs the
    new v and the iteration number; the body passes its condition on."""
    body = _body([helper.make_node("Mul", ["v", "w"], ["vw"]),
                  helper.make_node("Add", ["vw", "rx"], ["v_next"]),
                  helper.make_node("Identity", ["v_next"], ["v_scan"]),
                  helper.make_node("Identity", ["i"], ["i_scan"]),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 [("v", [2, 3])],
                 [("c_out", [], BOOL), ("v_next", [2, 3]), ("v_scan", [2, 3]),
                  ("i_scan", [], INT64)])
    nodes = [helper.make_node("Relu", ["x"], ["rx"]),
             helper.make_node("Loop", ["M", "cond", "v0"], ["v_final", "vs", "iters"], name="count",
                              body=body)]
    return _model(nodes, [_vi("M", [], INT64), _vi("cond", [], BOOL), _vi("v0", [2, 3]),
                          _vi("x", [2, 3])],
                  ["v_final", "vs", _vi("iters", None, INT64)], opset,
                  [numpy_helper.from_array(_fx(2, 3, seed=9), "w")])


@pytest.mark.parametrize("opset", LOOP_OPSETS)
def test_counter_loop_with_scan_outputs_and_outer_values(opset, tmp_path):
    model = _counter_loop(opset)
    feeds = [{"M": np.array(m, np.int64), "cond": np.array(c), "v0": _fx(2, 3, seed=abs(m)),
              "x": _fx(2, 3, seed=7)} for m, c in ((5, True), (1, True), (0, True), (4, False),
                                                     (-3, True))]
    sess = _check(model, feeds, tmp_path)
    (loop,) = [n for n in sess.nodes if n.op == "Loop"]
    assert loop.inputs == ["M", "cond", "v0", "rx"]  # the outer value it reads: passed explicitly
    assert sess.run(None, feeds[0])[1].shape == (5, 2, 3)


def _hoisting_loop():
    """v <- v @ reshape(w)^T + x for M steps, where w (an outer input) is reshaped to [3, 3] and
    transposed in the body: nodes that read only values no iteration changes (w, and the carried
    passthrough k, scaled) run once per Loop run."""
    body = _body([helper.make_node("Reshape", ["w", "shape"], ["w33"]),
                  helper.make_node("Transpose", ["w33"], ["wt"], perm=[1, 0]),
                  helper.make_node("Mul", ["k", "two"], ["k2"]),
                  helper.make_node("MatMul", ["v", "wt"], ["vw"]),
                  helper.make_node("Add", ["vw", "x"], ["vx"]),
                  helper.make_node("Mul", ["vx", "k2"], ["v_next"]),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 [("v", [2, 3]), ("k", [])],
                 [("c_out", [], BOOL), ("v_next", [2, 3]), ("k", []), ("v_next", [2, 3])],
                 inits=[numpy_helper.from_array(np.array([3, 3], np.int64), "shape"),
                        numpy_helper.from_array(np.array(0.25, np.float32), "two")])
    nodes = [helper.make_node("Loop", ["M", "", "v0", "k0"], ["v_final", "k_final", "vs"],
                              name="hoist", body=body)]
    return _model(nodes, [_vi("M", [], INT64), _vi("v0", [2, 3]), _vi("k0", []),
                          _vi("w", [None]), _vi("x", [2, 3])], ["v_final", "k_final", "vs"])


def test_loop_invariant_nodes_run_once_per_loop_run(monkeypatch):
    """The body's Reshape, Transpose and the Mul of the passed-through k run at the first
    iteration only; the results are ORT's, and a Loop of no iteration runs none of them (so a w
    that cannot be reshaped fails only when an iteration needs it, as in ORT)."""
    from converters.onnx_import import plan as plan_module

    model = _hoisting_loop()
    sess = converters.from_onnx(model)
    ran = []
    run_steps = plan_module._run_steps
    monkeypatch.setattr(plan_module, "_run_steps", lambda steps, values: (
        ran.extend(step[2].op for step in steps), run_steps(steps, values))[1])
    feeds = {"M": np.array(6, np.int64), "v0": _fx(2, 3), "k0": np.array(1.5, np.float32),
             "w": _fx(9, seed=3), "x": _fx(2, 3, seed=4)}
    for g, w in zip(sess.run(None, feeds), _ort(model).run(None, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert ran.count("Reshape") == ran.count("Transpose") == 1
    assert ran.count("MatMul") == 6 and ran.count("Mul") == 6 + 1
    ran.clear()
    bad = dict(feeds, w=_fx(8), M=np.array(0, np.int64))
    for g, w in zip(sess.run(None, bad), _ort(model).run(None, bad)):
        np.testing.assert_array_equal(g, w)
    assert "Reshape" not in ran
    with pytest.raises(ShapeError, match="Reshape"):
        sess.run(None, dict(bad, M=np.array(2, np.int64)))


def _while_loop(m_input, cond_input):
    """v <- v + step until v >= limit (the body's condition output); M and cond inputs optional."""
    body = _body([helper.make_node("Add", ["v", "step"], ["v_next"]),
                  helper.make_node("Less", ["v_next", "limit"], ["below"]),
                  helper.make_node("Mul", ["v_next", "v_next"], ["sq"])],
                 [("v", [])], [("below", [], BOOL), ("v_next", []), ("sq", [])])
    inputs = ["M" if m_input else "", "cond" if cond_input else "", "v0"]
    nodes = [helper.make_node("Loop", inputs, ["v_final", "squares"], name="grow", body=body)]
    model_inputs = [_vi("v0", []), _vi("step", []), _vi("limit", [])]
    if m_input:
        model_inputs.append(_vi("M", [], INT64))
    if cond_input:
        model_inputs.append(_vi("cond", [], BOOL))
    return _model(nodes, model_inputs, ["v_final", "squares"])


@pytest.mark.parametrize("m_input, cond_input", [(True, True), (True, False), (False, True),
                                                 (False, False)],
                         ids=["M_and_cond", "M_only", "cond_only", "neither"])
def test_while_loop_on_its_condition(m_input, cond_input, tmp_path):
    """The body's condition output ends the loop whichever inputs the node has (as ORT runs it,
    also without a cond input); M caps the trips."""
    model = _while_loop(m_input, cond_input)
    feeds = []
    for v0, step, limit, m, c in ((0.0, 1.0, 5.5, 3, True), (0.0, 1.0, 5.5, 10, True),
                                  (0.0, 0.5, 0.2, 4, True), (9.0, 1.0, 5.0, 0, True),
                                  (0.0, 1.0, 3.0, 6, False)):
        f = {"v0": np.float32(v0), "step": np.float32(step), "limit": np.float32(limit)}
        if m_input:
            f["M"] = np.array(m, np.int64)
        if cond_input:
            f["cond"] = np.array(c)
        feeds.append({k: np.asarray(v) for k, v in f.items()})
    _check(model, feeds, tmp_path)


@pytest.mark.parametrize("scan_shape", [[3], [2, 3], None, ["k"]], ids=repr)
def test_zero_trips_give_initial_values_and_empty_scan_outputs(scan_shape):
    """No iteration: the loop-carried outputs are the initial values; a scan output is empty,
    [0, *shape] where the body output's shape is known (declared or inferred), else [0]."""
    body = _body([helper.make_node("Add", ["v", "one"], ["v_next"]),
                  helper.make_node("Cast", ["i"], ["fi"], to=FLOAT),
                  helper.make_node("Mul", ["fi", "row"], ["s"]),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 ["v"], [("c_out", [], BOOL), "v_next", ("s", scan_shape)],
                 [numpy_helper.from_array(np.float32(1), "one"),
                  numpy_helper.from_array(np.ones((2, 3) if scan_shape == [2, 3] else 3,
                                                  np.float32), "row")])
    unknown = helper.make_graph(
        [helper.make_node("Neg", ["v"], ["neg"]), helper.make_node("Identity", ["c"], ["c_out"])],
        "unknown", [_vi("i", [], INT64), _vi("c", [], BOOL), _vi("v")],
        [_vi("c_out", [], BOOL), _vi("v_out"), _vi("neg")])
    unknown.node.append(helper.make_node("Identity", ["v"], ["v_out"]))
    for graph in (body, unknown):
        model = _model([helper.make_node("Loop", ["M", "", "v0"], ["v_final", "scan"], body=graph)],
                       [_vi("M", [], INT64), _vi("v0", ["n"])], ["v_final", "scan"])
        feeds = [{"M": np.array(m, np.int64), "v0": _fx(n, seed=m)} for m, n in ((0, 3), (2, 3))]
        _check(model, feeds)


# --------------------------------------------------------------------------------------------------
# nesting: Loop in Loop, If in Loop, Loop in If
# --------------------------------------------------------------------------------------------------
def _inner_loop():
    """Inner body: acc <- acc + v * x (v: the outer body's loop-carried value, x: the model's
    input), scanning acc."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["v", "x"], ["vx"]), helper.make_node("Add", ["acc", "vx"], ["acc2"]),
         helper.make_node("Identity", ["c2"], ["c2_out"]),
         helper.make_node("Identity", ["acc2"], ["acc_scan"])],
        "inner", [_vi("j", [], INT64), _vi("c2", [], BOOL), _vi("acc", [3])],
        [_vi("c2_out", [], BOOL), _vi("acc2", [3]), _vi("acc_scan", [3])])
    return helper.make_node("Loop", ["K", "", "v"], ["inner_acc", "inner_scan"], name="inner",
                            body=body)


def test_loop_in_a_loop(tmp_path):
    """The inner body reads the outer body's value and the model's input; the outer body scans
    the inner loop's scan output (stacked twice)."""
    outer_body = _body([_inner_loop(), helper.make_node("Tanh", ["inner_acc"], ["v_next"]),
                        helper.make_node("Identity", ["c"], ["c_out"])],
                       [("v", [3])], [("c_out", [], BOOL), ("v_next", [3]), "inner_scan"])
    model = _model([helper.make_node("Loop", ["M", "", "v0"], ["v_final", "scans"], name="outer",
                                     body=outer_body)],
                   [_vi("M", [], INT64), _vi("K", [], INT64), _vi("v0", [3]), _vi("x", [3])],
                   ["v_final", "scans"])
    feeds = [{"M": np.array(m, np.int64), "K": np.array(k, np.int64), "v0": _fx(3, seed=1),
              "x": _fx(3, seed=2)} for m, k in ((3, 2), (2, 4), (0, 2), (2, 0))]
    sess = _check(model, feeds, tmp_path)
    assert sess.run(None, feeds[0])[1].shape == (3, 2, 3)
    (loop,) = sess.nodes
    assert [n.op for n in loop.graphs["body"].nodes] == ["Loop", "Tanh", "Identity"]


def _if_in_loop_body(multi_node):
    """Body: v <- v + 1 on even iterations, v * -2 (or tanh(v * -2)) on odd ones; the If's
    condition is computed from the iteration number at run time."""
    then = helper.make_graph([helper.make_node("Add", ["v", "one"], ["t"])], "then", [], [_vi("t")])
    other_nodes = [helper.make_node("Mul", ["v", "minus_two"], ["e"])]
    out = "e"
    if multi_node:
        other_nodes.append(helper.make_node("Tanh", ["e"], ["e2"]))
        out = "e2"
    other = helper.make_graph(other_nodes, "else", [], [_vi(out)])
    nodes = [helper.make_node("Mod", ["i", "two"], ["parity"]),
             helper.make_node("Equal", ["parity", "zero"], ["even"]),
             helper.make_node("If", ["even"], ["v_next"], name="step_if", then_branch=then,
                              else_branch=other),
             helper.make_node("Identity", ["c"], ["c_out"])]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.float32(1), "one")]
    return _body(nodes, [("v", [2])], [("c_out", [], BOOL), ("v_next", [2]), ("v_next", [2])],
                 inits)


@pytest.mark.parametrize("multi_node", [False, True], ids=["single_node_branches", "multi_node"])
def test_if_in_a_loop(multi_node, tmp_path):
    """The body's outer-scope constants (-2) reach the If branches inside it."""
    model = _model([helper.make_node("Loop", ["M", "", "v0"], ["v_final", "vs"], name="loop",
                                     body=_if_in_loop_body(multi_node))],
                   [_vi("M", [], INT64), _vi("v0", [2])], ["v_final", "vs"],
                   inits=[numpy_helper.from_array(np.float32(-2), "minus_two")])
    feeds = [{"M": np.array(m, np.int64), "v0": _fx(2, seed=m)} for m in (0, 1, 5)]
    sess = _check(model, feeds, tmp_path)
    body_ops = [n.op for n in sess.nodes[0].graphs["body"].nodes]
    assert ("If" if multi_node else "Conditional") in body_ops


def test_loop_in_an_if_branch_at_run_time(tmp_path):
    """An If on a run-time condition whose then branch runs a Loop reading the model's input."""
    body = _body([helper.make_node("Add", ["v", "x"], ["v_next"]),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 [("v", [2])], [("c_out", [], BOOL), ("v_next", [2])])
    then = helper.make_graph([helper.make_node("Loop", ["M", "", "x"], ["looped"], body=body)],
                             "then", [], [_vi("looped")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["neg"])], "else", [], [_vi("neg")])
    model = _model([helper.make_node("If", ["flag"], ["y"], name="pick", then_branch=then,
                                     else_branch=other)],
                   [_vi("flag", [], BOOL), _vi("M", [], INT64), _vi("x", [2])], ["y"])
    feeds = [{"flag": np.array(f), "M": np.array(3, np.int64), "x": _fx(2)} for f in (True, False)]
    sess = _check(model, feeds, tmp_path)
    assert [n.op for n in sess.nodes] == ["If"]


def test_body_values_from_constants_fold_at_import():
    """What the body computes from constants only (here from an outer initializer and its own)
    is folded into the body plan; the Loop itself is never folded, even on constant inputs."""
    body = _body([helper.make_node("Mul", ["w", "k"], ["wk"]),
                  helper.make_node("Add", ["v", "wk"], ["v_next"]),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 [("v", [2])], [("c_out", [], BOOL), ("v_next", [2])],
                 [numpy_helper.from_array(np.float32(3), "k")])
    model = _model([_const("M", np.array(10**12, np.int64)),
                    helper.make_node("Loop", ["M", "cond", "v0"], ["v_final"], body=body)],
                   [_vi("cond", [], BOOL), _vi("v0", [2])], ["v_final"],
                   inits=[numpy_helper.from_array(_fx(2), "w")])
    start = time.perf_counter()
    sess = converters.from_onnx(model)
    assert time.perf_counter() - start < 10
    (loop,) = sess.nodes
    assert [n.op for n in loop.graphs["body"].nodes] == ["Add", "Identity"]
    feeds = {"cond": np.array(False), "v0": _fx(2)}
    np.testing.assert_array_equal(sess.run(None, feeds)[0], _ort(model).run(None, feeds)[0])


# --------------------------------------------------------------------------------------------------
# tf2onnx's Loops over Keras cells
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOOPS)
def test_keras_loop_at_length_20_as_onnxruntime_and_saved(name, tmp_path):
    feeds, _ = _recorded(name)
    sess = converters.from_onnx(DATA / f"{name}.onnx")
    feeds = _resized(sess, feeds, 3, 20) or feeds
    fastrnn.save(sess, tmp_path / "keras.frnn")
    loaded = fastrnn.load(tmp_path / "keras.frnn")
    assert [n.op for n in loaded.nodes].count("Loop") == [n.op for n in sess.nodes].count("Loop") > 0
    got = sess.run(None, feeds)
    for g, r, s in zip(got, _ort(DATA / f"{name}.onnx").run(None, feeds), loaded.run(None, feeds)):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(g, s)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def _plain_body(**changes):
    """Identity body of one loop-carried value, with `changes` to its inputs / outputs."""
    inputs = changes.get("inputs", [_vi("i", [], INT64), _vi("c", [], BOOL), _vi("v", [2])])
    outputs = changes.get("outputs", [_vi("c_out", [], BOOL), _vi("v_out", [2])])
    nodes = [helper.make_node("Identity", ["c"], ["c_out"]),
             helper.make_node("Identity", ["v"], ["v_out"])]
    return helper.make_graph(nodes, "body", inputs, outputs)


def _loop_of(body, outputs=("v_final",)):
    return _model([helper.make_node("Loop", ["M", "", "v0"], list(outputs), name="the_loop",
                                    body=body)],
                  [_vi("M", [], INT64), _vi("v0", [2])], list(outputs))


@pytest.mark.parametrize("case", ["body inputs", "body outputs", "node outputs",
                                  "iteration type", "condition type", "condition output type",
                                  "returns an outer value"])
def test_malformed_loop_nodes_are_a_format_error_naming_the_node(case):
    """Each refused by ORT too."""
    i, c, v = _vi("i", [], INT64), _vi("c", [], BOOL), _vi("v", [2])
    c_out, v_out = _vi("c_out", [], BOOL), _vi("v_out", [2])
    model, match = {
        "body inputs": (_loop_of(_plain_body(inputs=[i, c])), "body takes 2 input"),
        "body outputs": (_loop_of(_plain_body(outputs=[c_out])), "body gives 1 output"),
        "node outputs": (_loop_of(_plain_body(), ("v_final", "extra")), "body gives 2 output"),
        "iteration type": (_loop_of(_plain_body(inputs=[_vi("i", [], FLOAT), c, v])),
                           "input 0 .* is float, ONNX Loop takes int64"),
        "condition type": (_loop_of(_plain_body(inputs=[i, _vi("c", [], INT64), v])),
                           "input 1 .* is int64, ONNX Loop takes bool"),
        "condition output type": (_loop_of(_plain_body(outputs=[_vi("c_out", [], INT64), v_out])),
                                  "output 0 .* is int64, ONNX Loop takes bool"),
        "returns an outer value": (_loop_of(_plain_body(outputs=[c_out, _vi("v0", [2])])),
                                   "outer value"),
    }[case]
    assert ort_refuses(model)
    with pytest.raises(FormatError, match=r"'the_loop[' /].*" + match):
        converters.from_onnx(model)


def test_unsupported_node_in_a_loop_body_is_named():
    body = _plain_body()
    body.node.append(helper.make_node("Det", ["v"], ["d"], name="my_det"))
    with pytest.raises(UnsupportedError, match=r"Det .* at node 'the_loop/body/my_det'"):
        converters.from_onnx(_loop_of(body))


def test_a_scan_output_that_changes_shape_is_a_shape_error():
    """ORT fails as well: a scan output keeps its shape from one iteration to the next."""
    body = _body([helper.make_node("Add", ["i", "one"], ["n"]),
                  helper.make_node("Range", ["zero", "n", "one"], ["r"]),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 [], [("c_out", [], BOOL), ("r", None, INT64)],
                 [numpy_helper.from_array(np.array(1, np.int64), "one"),
                  numpy_helper.from_array(np.array(0, np.int64), "zero")])
    model = _model([helper.make_node("Loop", ["M", ""], ["rs"], name="ranges", body=body)],
                   [_vi("M", [], INT64)], [_vi("rs", None, INT64)])
    feeds = {"M": np.array(3, np.int64)}
    with pytest.raises(Exception):  # noqa: B017 - ORT's own exception type
        _ort(model).run(None, feeds)
    sess = converters.from_onnx(model)
    np.testing.assert_array_equal(sess.run(None, {"M": np.array(1, np.int64)})[0], [[0]])
    with pytest.raises(ShapeError, match=r"node 'ranges' \(Loop\): scan output 0 has shape \[2\] "
                                         r"at iteration 1 and \[1\] at iteration 0"):
        sess.run(None, feeds)


def test_a_loops_scan_outputs_stop_at_the_element_limit(monkeypatch):
    """Scan outputs that pass the element limit (lowered here) stop the Loop with a
    SizeLimitError naming it: a Loop that never stops (ORT runs one for ever) cannot grow them
    without end. (M bounds this one, so that the test ends either way.)"""
    from converters.onnx_import import kernels

    monkeypatch.setattr(kernels, "_max_elements", kernels.contextvars.ContextVar(
        "max_elements", default=30_000))
    body = _body([helper.make_node("Identity", ["c"], ["c_out"]),
                  helper.make_node("Identity", ["row"], ["scan"])],
                 [], [("c_out", [], BOOL), ("scan", [100], FLOAT)],
                 [numpy_helper.from_array(np.ones(100, np.float32), "row")])
    model = _model([helper.make_node("Loop", ["M", ""], ["rows"], name="long", body=body)],
                   [_vi("M", [], INT64)], [_vi("rows", None, FLOAT)])
    with pytest.raises(kernels.SizeLimitError, match=r"Loop 'long' after 301 iterations"):
        converters.from_onnx(model).run(None, {"M": np.array(100_000, np.int64)})


def test_errors_in_the_body_name_the_loop_and_the_body_node():
    body = _body([helper.make_node("Reshape", ["v", "shape"], ["v_next"], name="reshape"),
                  helper.make_node("Identity", ["c"], ["c_out"])],
                 ["v"], [("c_out", [], BOOL), "v_next"])
    model = _model([helper.make_node("Loop", ["M", "", "v0"], ["v_final"], name="the_loop",
                                     body=body)],
                   [_vi("M", [], INT64), _vi("v0", ["n"]), _vi("shape", [1], INT64)], ["v_final"])
    sess = converters.from_onnx(model)
    feeds = {"M": np.array(2, np.int64), "v0": _fx(4), "shape": np.array([3], np.int64)}
    with pytest.raises(ShapeError, match=r"node 'the_loop' \(Loop\): node 'the_loop/body/reshape' "
                                         r"\(Reshape\)"):
        sess.run(None, feeds)


# --------------------------------------------------------------------------------------------------
# saved records
# --------------------------------------------------------------------------------------------------
def _loop_record():
    return converters.from_onnx(_counter_loop(13)).to_record()


def test_a_saved_loop_keeps_its_body_tensors_under_its_own_prefix():
    kind, meta, tensors = _loop_record()
    (node,) = [n for n in meta["nodes"] if n["op"] == "Loop"]
    body = node["attrs"]["body"]
    assert body["format"] == meta["format"] and node["attrs"]["carried"] == 1
    assert {key for key in tensors if key.startswith("g")} == \
        {f"g{meta['nodes'].index(node)}.body.{key}" for _, key, _ in body["constants"]}
    json.dumps(meta)  # what fastrnn.save writes: JSON
    plan = OnnxPlan.from_record(meta, tensors)
    assert [n.op for n in plan.nodes[-1].graphs["body"].nodes] == \
        [n["op"] for n in body["nodes"]]


def _changed(meta, change):
    meta = json.loads(json.dumps(meta))
    (node,) = [n for n in meta["nodes"] if n["op"] == "Loop"]
    change(node)
    return meta


@pytest.mark.parametrize("change, match", [
    (lambda n: n["attrs"].pop("body"), "'body' graph must be a saved plan"),
    (lambda n: n["attrs"].update(body=[]), "'body' graph must be a saved plan"),
    (lambda n: n["attrs"].update(carried=5), "'carried' must be"),
    (lambda n: n["attrs"].update(carried=True), "'carried' must be"),
    (lambda n: n["attrs"].pop("carried"), "'carried' must be"),
    (lambda n: n["inputs"].append("x"), "body must take 5 input"),
    (lambda n: n["outputs"].pop(), "body must take 4 input.* and give 3 output"),
    (lambda n: n["inputs"].__setitem__(2, ""), "leaves a loop-carried or outer value input empty"),
    (lambda n: n["attrs"]["body"]["nodes"].pop(0), "reads"),
    (lambda n: n["attrs"]["body"]["outputs"][2].update(dtype=None), "scan outputs .* no dtype"),
    (lambda n: n["attrs"]["body"]["constants"][0].__setitem__(1, "c99"), "KeyError"),
    (lambda n: n["attrs"]["body"].update(format=2), "format 2"),
], ids=lambda v: "" if callable(v) else v)
def test_a_saved_loop_node_that_is_malformed_is_a_format_error(change, match):
    kind, meta, tensors = _loop_record()
    with pytest.raises(FormatError, match=match):
        OnnxPlan.from_record(_changed(meta, change), tensors)


def test_a_saved_loop_node_of_another_op_loads_no_graph():
    """A Loop's body attr under an op that takes no graph is plain attrs, never run."""
    kind, meta, tensors = _loop_record()
    meta = _changed(meta, lambda n: n.update(op="Nope"))
    with pytest.raises(FormatError, match="unknown op 'Nope'"):
        OnnxPlan.from_record(meta, tensors)


def test_saved_nesting_is_bounded():
    """A record nesting bodies deeper than MAX_NESTING is refused before it is built."""
    kind, meta, tensors = _loop_record()
    (node,) = [n for n in meta["nodes"] if n["op"] == "Loop"]
    body = node["attrs"]["body"]
    deep = {"format": meta["format"], "inputs": [], "outputs": [], "constants": [], "source": {},
            "nodes": []}
    for _ in range(MAX_NESTING + 1):
        deep = {"format": meta["format"], "inputs": [], "outputs": [], "constants": [],
                "source": {}, "nodes": [{"op": "Loop", "name": "l", "inputs": ["", ""],
                                         "outputs": [], "attrs": {"carried": 0, "body": deep}}]}
    assert body  # the real one loads
    with pytest.raises(FormatError, match=f"nested more than {MAX_NESTING} deep"):
        OnnxPlan.from_record(deep, {})
