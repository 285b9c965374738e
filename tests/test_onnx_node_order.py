"""Graphs whose nodes are out of order run as ONNX Runtime runs them: ORT sorts the main graph's
nodes as it loads a model, and so does fastrnn (node_order.py), in If branches and Loop bodies
too (ORT refuses those out of order; the tests compare with ORT running them in order).

A torch export shuffled and reversed; Loop and If nodes listed before the nodes defining what
their subgraphs read, at any depth, and Loop bodies out of order themselves; the caller's model
left as it was, and a model in order not copied; cycles, values defined nowhere or twice refused;
a long chain listed backwards.
"""
from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
from converters.onnx_import.node_order import topologically_sorted  # noqa: E402
from fastrnn.errors import FormatError  # noqa: E402
from test_onnx_errors import ort_refuses  # noqa: E402

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
TOL = dict(rtol=1e-5, atol=1e-5)
I, H = 6, 8


def _vi(name, shape=None, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=14):
    graph = helper.make_graph(nodes, "g", inputs, [_vi(o) if isinstance(o, str) else o
                                                   for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _fx(*shape, seed=0):
    """Standard normal float32 values, none of them zero."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.where(x == 0, np.float32(0.5), x)


def _reordered(model, order):
    """A copy of the model whose main graph lists its nodes in `order` (indices)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [model.graph.node[i] for i in order]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _shuffled(model, seed):
    order = np.random.default_rng(seed).permutation(len(model.graph.node))
    return _reordered(model, [int(i) for i in order])


def _reversed(model):
    return _reordered(model, range(len(model.graph.node) - 1, -1, -1))


def _in_order(graph) -> bool:
    """Every node of the graph reads only values defined before it (or outside the graph)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    produced = {o for n in graph.node for o in n.output}
    for n in graph.node:
        if any(i in produced and i not in defined for i in n.input):
            return False
        defined.update(n.output)
    return True


def _check_like_ort(model, feeds_list, reference=None):
    """fastrnn runs the model as ORT runs it, or the `reference` model (dtype, shape, values), on
    every feed."""
    sess = converters.from_onnx(model)
    ref = ort.InferenceSession((reference or model).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        got, want = sess.run(None, feeds), ref.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
            np.testing.assert_allclose(g, w, **TOL)
    return sess


# --------------------------------------------------------------------------------------------------
# a real export, shuffled and reversed
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _exported() -> bytes:
    """A 2-layer bidirectional LSTM and a Linear + Tanh over its outputs, exported by torch's
    legacy exporter without constant folding (the weight-reordering Slice / Concat nodes stay)."""
    torch = pytest.importorskip("torch", reason="the model is exported with torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
            self.fc = torch.nn.Linear(2 * H, 3)

        def forward(self, x):
            y, (h, _) = self.lstm(x)
            return torch.tanh(self.fc(y)), h

    torch.manual_seed(0)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.from_numpy(_fx(5, 2, I)),), f, opset_version=14,
                          do_constant_folding=False, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "T", 1: "N"}})
    return f.getvalue()


def _export_feeds():
    return [{"x": _fx(T, N, I, seed=T * 10 + N)} for T, N in ((5, 2), (7, 3), (1, 1))]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_shuffled_export_runs_as_ort_runs_it(seed):
    model = onnx.load_from_string(_exported())
    shuffled = _shuffled(model, seed)
    assert not _in_order(shuffled.graph)
    sess = _check_like_ort(shuffled, _export_feeds())
    in_order = converters.from_onnx(model)
    assert sorted(n.op for n in sess.nodes) == sorted(n.op for n in in_order.nodes)
    for feeds in _export_feeds():
        for g, w in zip(sess.run(None, feeds), in_order.run(None, feeds)):
            np.testing.assert_array_equal(g, w)


def test_a_reversed_export_runs_as_ort_runs_it():
    model = _reversed(onnx.load_from_string(_exported()))
    assert not _in_order(model.graph)
    _check_like_ort(model, _export_feeds())


# --------------------------------------------------------------------------------------------------
# subgraphs
# --------------------------------------------------------------------------------------------------
def _body(nodes, carried, outputs):
    """A Loop body: inputs (i, c, *carried), outputs (cond, *outputs), floats of unknown shape
    unless given as (name, shape, elem)."""
    spec = lambda v: _vi(v) if isinstance(v, str) else _vi(*v)  # noqa: E731
    inputs = [_vi("i", [], INT64), _vi("c", [], BOOL)] + [spec(v) for v in carried]
    return helper.make_graph(nodes, "body", inputs, [spec(v) for v in outputs])


BODY_NODES = [helper.make_node("Mul", ["v", "w"], ["vw"], name="mul"),
              helper.make_node("Add", ["vw", "rx"], ["v_next"], name="add"),
              helper.make_node("Tanh", ["v_next"], ["v_scan"], name="tanh"),
              helper.make_node("Identity", ["c"], ["c_out"], name="cond")]


def _loop_model(body_nodes=BODY_NODES, relu_after_loop=True):
    """v <- v * w + relu(x) M times, scanning tanh of each v; relu(x) is computed in the main
    graph, by a node listed after the Loop (or before it)."""
    body = _body(body_nodes, [("v", [2, 3])],
                 [("c_out", [], BOOL), ("v_next", [2, 3]), ("v_scan", [2, 3])])
    loop = helper.make_node("Loop", ["M", "cond", "v0"], ["v_final", "vs"], name="loop", body=body)
    relu = helper.make_node("Relu", ["x"], ["rx"], name="relu")
    return _model([loop, relu] if relu_after_loop else [relu, loop],
                  [_vi("M", [], INT64), _vi("cond", [], BOOL), _vi("v0", [2, 3]), _vi("x", [2, 3])],
                  ["v_final", "vs"], [numpy_helper.from_array(_fx(2, 3, seed=9), "w")])


def _loop_feeds():
    return [{"M": np.array(m, np.int64), "cond": np.array(True), "v0": _fx(2, 3, seed=m),
             "x": _fx(2, 3, seed=7)} for m in (4, 1, 0)]


def test_a_loop_reading_a_value_defined_after_it():
    model = _loop_model()
    sess = _check_like_ort(model, _loop_feeds())
    (loop,) = [n for n in sess.nodes if n.op == "Loop"]
    assert loop.inputs == ["M", "cond", "v0", "rx"]


@pytest.mark.parametrize("body_order", [[3, 2, 1, 0], [2, 0, 3, 1]], ids=["reversed", "shuffled"])
@pytest.mark.parametrize("relu_after_loop", [False, True], ids=["loop_in_order", "loop_first"])
def test_a_loop_body_out_of_order(body_order, relu_after_loop):
    """ORT 1.32 sorts a model's main graph but refuses a subgraph out of order ("Nodes in a graph
    must be topologically sorted"); fastrnn sorts that too, and runs it as ORT runs the body in
    order."""
    model = _loop_model([BODY_NODES[i] for i in body_order], relu_after_loop)
    assert not _in_order(model.graph.node[0 if relu_after_loop else 1].attribute[0].g)
    assert ort_refuses(model)
    _check_like_ort(model, _loop_feeds(), reference=_loop_model(BODY_NODES, relu_after_loop))


def _if_model(nested_loop=False):
    """y = If(cond) over x: then x + late, else x - late (or a Loop adding late twice), where
    late = neg(x) * 3 comes from two nodes listed after the If, in reverse order."""
    then = helper.make_graph([helper.make_node("Add", ["x", "late"], ["t"], name="add")], "then",
                             [], [_vi("t", [2, 3])])
    if nested_loop:
        body = _body([helper.make_node("Identity", ["c"], ["c_out"]),
                      helper.make_node("Add", ["v", "late"], ["v_next"])],
                     [("v", [2, 3])], [("c_out", [], BOOL), ("v_next", [2, 3])])
        other = helper.make_graph(
            [helper.make_node("Loop", ["two", "", "x"], ["e"], name="twice", body=body)], "else",
            [], [_vi("e", [2, 3])], [numpy_helper.from_array(np.array(2, np.int64), "two")])
    else:
        other = helper.make_graph([helper.make_node("Sub", ["x", "late"], ["e"], name="sub")],
                                  "else", [], [_vi("e", [2, 3])])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then,
                              else_branch=other),
             helper.make_node("Mul", ["negx", "three"], ["late"], name="times3"),
             helper.make_node("Neg", ["x"], ["negx"], name="neg")]
    return _model(nodes, [_vi("x", [2, 3]), _vi("cond", [], BOOL)], ["y"],
                  [numpy_helper.from_array(np.array(3, np.float32), "three")])


@pytest.mark.parametrize("nested_loop", [False, True], ids=["branches", "loop_in_a_branch"])
def test_an_if_reading_values_defined_after_it(nested_loop):
    model = _if_model(nested_loop)
    _check_like_ort(model, [{"x": _fx(2, 3, seed=s), "cond": np.array(c)}
                            for s, c in ((1, True), (2, False))])


# --------------------------------------------------------------------------------------------------
# the caller's model, and models in order
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: _shuffled(onnx.load_from_string(_exported()), 5),
                                  lambda: _loop_model(BODY_NODES[::-1]), lambda: _if_model(True)],
                         ids=["export", "loop", "if"])
def test_the_callers_model_is_left_as_it_was(make):
    model = make()
    before = model.SerializeToString()
    converters.from_onnx(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("make", [lambda: onnx.load_from_string(_exported()),
                                  lambda: _loop_model(relu_after_loop=False)],
                         ids=["export", "loop"])
def test_a_model_in_order_is_neither_copied_nor_changed(make):
    model = make()
    before = model.SerializeToString()
    assert topologically_sorted(model) is model
    assert model.SerializeToString() == before


def test_the_sorted_copy_keeps_the_models_order_among_ready_nodes():
    """Kahn's order, the ready node listed first taken first: a node moves only after what it
    reads; the nodes listed after it keep their places; sorting again changes nothing."""
    nodes = [helper.make_node("Neg", ["b"], ["y"], name="reads_b"),
             helper.make_node("Relu", ["x"], ["r"], name="free"),
             helper.make_node("Abs", ["x"], ["b"], name="defines_b"),
             helper.make_node("Sin", ["r"], ["s"], name="after")]
    model = _model(nodes, [_vi("x", [3])], ["y", "s"])
    ordered = topologically_sorted(model)
    assert [n.name for n in ordered.graph.node] == ["free", "defines_b", "reads_b", "after"]
    assert [n.name for n in model.graph.node] == ["reads_b", "free", "defines_b", "after"]
    assert topologically_sorted(ordered) is ordered
    _check_like_ort(model, [{"x": _fx(3)}])


def test_subgraphs_are_sorted_inside_graphs_that_are_sorted_too():
    """The Loop listed first and its body reversed: both put in order in one copy."""
    ordered = topologically_sorted(_loop_model(BODY_NODES[::-1]))
    assert [n.name for n in ordered.graph.node] == ["relu", "loop"]
    assert [n.name for n in ordered.graph.node[1].attribute[0].g.node] == \
        ["cond", "mul", "add", "tanh"]


def test_any_graph_attribute_reads_what_its_graphs_read():
    """Not only If and Loop: a node whose attributes hold a graph, or a list of graphs, follows
    the nodes defining what those read (the importer then refuses such an op as unsupported)."""
    reads_a = helper.make_graph([helper.make_node("Neg", ["a"], ["na"])], "one", [], [_vi("na")])
    reads_b = helper.make_graph([helper.make_node("Neg", ["b"], ["nb"])], "two", [], [_vi("nb")])
    holder = helper.make_node("Holder", ["x"], ["y"], name="holder", domain="custom", one=reads_a,
                              many=[reads_b])
    nodes = [holder, helper.make_node("Abs", ["x"], ["a"], name="defines_a"),
             helper.make_node("Relu", ["x"], ["b"], name="defines_b")]
    ordered = topologically_sorted(_model(nodes, [_vi("x", [3])], ["y"]))
    assert [n.name for n in ordered.graph.node] == ["defines_a", "defines_b", "holder"]


# --------------------------------------------------------------------------------------------------
# what no order mends
# --------------------------------------------------------------------------------------------------
def _cycle_cases():
    two = [helper.make_node("Relu", ["b"], ["a"], name="A"),
           helper.make_node("Add", ["a", "x"], ["b"], name="B"),
           helper.make_node("Neg", ["a"], ["y"], name="after")]
    itself = [helper.make_node("Add", ["x", "y"], ["y"], name="self")]
    through_body = _body([helper.make_node("Identity", ["c"], ["c_out"]),
                          helper.make_node("Add", ["v", "y"], ["v_next"])],
                         [("v", [3])], [("c_out", [], BOOL), ("v_next", [3])])
    loop = [helper.make_node("Loop", ["M", "", "x"], ["y"], name="loop", body=through_body)]
    in_body = _body([helper.make_node("Identity", ["c"], ["c_out"], name="id"),
                     helper.make_node("Add", ["v", "q"], ["p"], name="P"),
                     helper.make_node("Neg", ["p"], ["q"], name="Q"),
                     helper.make_node("Abs", ["p"], ["v_next"], name="abs")],
                    [("v", [3])], [("c_out", [], BOOL), ("v_next", [3])])
    inner = [helper.make_node("Loop", ["M", "", "x"], ["y"], name="outer", body=in_body)]
    inputs = [_vi("x", [3]), _vi("M", [], INT64)]
    return {"two nodes": (_model(two, inputs, ["y"]), ["A", "B"]),
            "a node and itself": (_model(itself, inputs, ["y"]), ["self"]),
            "through a loop body": (_model(loop, inputs, ["y"]), ["loop"]),
            "inside a loop body": (_model(inner, inputs, ["y"]), ["outer/body/P", "outer/body/Q"])}


@pytest.mark.parametrize("case", list(_cycle_cases()))
def test_a_cycle_is_a_format_error_naming_its_nodes(case):
    model, names = _cycle_cases()[case]
    assert ort_refuses(model)
    with pytest.raises(FormatError, match="form a cycle") as e:
        converters.from_onnx(model)
    assert f"nodes {names} form a cycle" in str(e.value)


def test_a_value_defined_nowhere_is_still_a_format_error():
    nodes = [helper.make_node("Add", ["a", "nowhere"], ["y"], name="reads"),
             helper.make_node("Neg", ["x"], ["a"], name="defines_a")]
    model = _model(nodes, [_vi("x", [3])], ["y"])
    with pytest.raises(FormatError, match=r"node 'reads' \(Add\) reads \['nowhere'\], which no "
                                          r"graph input, initializer or node defines"):
        converters.from_onnx(model)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in_order", "out_of_order"])
def test_a_value_defined_twice_is_still_a_format_error(shuffle):
    """In order, the message is the structure check's, as before; out of order, the nodes reading
    the name follow its first definition, and the second is refused."""
    nodes = [helper.make_node("Neg", ["x"], ["v"], name="first"),
             helper.make_node("Abs", ["v"], ["y"], name="reads"),
             helper.make_node("Relu", ["x"], ["v"], name="second")]
    if shuffle:
        nodes = [nodes[1], nodes[2], nodes[0]]
    model = _model(nodes, [_vi("x", [3])], ["y"])
    assert ort_refuses(model)
    again = "first" if shuffle else "second"
    with pytest.raises(FormatError) as e:
        converters.from_onnx(model)
    assert str(e.value) == (f"value 'v' is defined twice (again by node '{again}'; a graph input, "
                            f"initializer or earlier node output has that name)")


# --------------------------------------------------------------------------------------------------
# size
# --------------------------------------------------------------------------------------------------
def test_a_long_chain_listed_backwards():
    """50,000 Neg nodes, each listed before the one it reads: sorted without recursion."""
    n = 50_000
    names = ["x"] + [f"v{i}" for i in range(1, n)] + ["y"]
    nodes = [helper.make_node("Neg", [names[i]], [names[i + 1]]) for i in range(n)]
    model = _model(nodes[::-1], [_vi("x", [3])], ["y"])
    x = _fx(3)
    np.testing.assert_array_equal(converters.from_onnx(model).run(None, {"x": x})[0], x)
