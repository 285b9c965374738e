"""A Loop whose body is a recurrent cell's step (tf2onnx's Keras layers it cannot rewrite) runs as one
call of fastrnn's kernel (converters/onnx_import/loop_cells.py), with the same results as the Loop
run node by node and as ONNX Runtime: on the tf2onnx fixtures in tests/data/keras/, at other batch
sizes and lengths, with masked steps, in float64, and with the Loop's trip count, condition and
time counter fed values the kernel cannot take (the Loop then runs node by node, errors
included).
"""
from __future__ import annotations

import functools
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
import fastrnn  # noqa: E402
from converters.onnx_import import loop_cells, loop_pairs  # noqa: E402
from fastrnn.errors import FastRNNError  # noqa: E402
from fastrnn.recurrent import Stack  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "keras"
TOL = dict(rtol=1e-5, atol=1e-5)
F64_TOL = dict(rtol=1e-10, atol=1e-12)
SIGMOID, TANH, RELU = ("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0), ("relu", 0.0, 0.0)
KERAS3_HARD_SIGMOID = ("hardsigmoid", 1 / 6, 0.5)  # relu6(x + 3) / 6
# per looped fixture (opset 13): each Loop's cell as (mode, activations, linear_before_reset,
# whether its steps are masked)
GRU_AFTER = ("GRU", [SIGMOID, TANH], 1, False)
GRU_BEFORE = ("GRU", [SIGMOID, TANH], 0, False)
LSTM = ("LSTM", [SIGMOID, TANH, TANH], 0, False)
RNN_TANH, RNN_RELU = ("RNN", [TANH], 0, False), ("RNN", [RELU], 0, False)
MASKED_LSTM = ("LSTM", [SIGMOID, TANH, TANH], 0, True)
MASKED_GRU = ("GRU", [SIGMOID, TANH], 1, True)
EXPECTED = {
    "k2_bidir_rnn_concat": [RNN_TANH, RNN_TANH],
    "k2_classifier_masked": [MASKED_LSTM],
    "k2_embedding_mask_gru": [MASKED_GRU],
    "k2_gru_reset_before": [GRU_BEFORE],
    "k2_lstm_recurrent_dropout": [LSTM],
    "k2_masking_gru_seq": [MASKED_GRU],
    "k2_masking_lstm": [MASKED_LSTM],
    "k2_simple_rnn": [RNN_TANH],
    "k2_simple_rnn_relu_last": [RNN_RELU],
    "k3_bidir_gru_sum": [GRU_AFTER, GRU_AFTER],
    "k3_bidir_rnn_concat": [RNN_TANH, RNN_TANH],
    "k3_classifier_masked": [MASKED_LSTM],
    "k3_embedding_mask_gru": [MASKED_GRU],
    "k3_fixed_batch_gru_last": [GRU_AFTER],
    "k3_gru_backwards_last": [GRU_AFTER],
    "k3_gru_dense": [GRU_AFTER],
    "k3_gru_reset_after": [GRU_AFTER],
    "k3_gru_reset_before": [GRU_BEFORE],
    "k3_lstm_hard_sigmoid": [("LSTM", [KERAS3_HARD_SIGMOID, TANH, TANH], 0, False)],
    "k3_lstm_recurrent_dropout": [LSTM],
    "k3_masking_gru_seq": [MASKED_GRU],
    "k3_masking_lstm": [MASKED_LSTM],
    "k3_simple_rnn": [RNN_TANH],
    "k3_simple_rnn_relu_last": [RNN_RELU],
    "k3_stacked": [GRU_AFTER],
}
MASKED = sorted(name for name, cells in EXPECTED.items() if cells[0][3])


def _model(name: str):
    return onnx.load(str(DATA / f"{name}_opset13.onnx"))


def _node_by_node(model, monkeypatch):
    """The plan with every Loop run node by node (recognition off while it is built)."""
    with monkeypatch.context() as m:
        m.setattr(loop_cells, "recognise", lambda node, constants: None)
        return converters.from_onnx(model)


def _feeds(model, N: int, T: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shape = [d if d is not None else (N, T)[min(axis, 1)] for axis, d in enumerate(dims)]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = (rng.integers(1, 12, size=shape) if dtype.kind == "i"
                          else rng.standard_normal(shape)).astype(dtype)
    return feeds


def _loops(plan) -> list:
    return [node for node in plan.nodes if node.op == "Loop"]


def _counting_kernel_calls(plan, monkeypatch) -> list:
    """A list that gets an entry each time a kernel runs (one of the plan's Loops, or the two
    Loops of a Bidirectional layer in one call)."""
    calls = []
    run = Stack.run
    monkeypatch.setattr(Stack, "run", lambda self, *a: calls.append(1) or run(self, *a))
    return calls


def _kernel_calls_expected(plan, name: str) -> int:
    """One per Loop (and recurrent node), one for both Loops of a Bidirectional layer (run as
    a LoopedPair)."""
    lines = plan.kernel_calls()
    pairs = [line for line in lines if ": LoopedPair(LoopedCell(" in line]
    assert len(pairs) == ("bidir" in name)
    layers = sum(n.op in ("Loop", "RecurrentLayer") for n in plan.nodes)
    assert len(lines) == layers - len(pairs)
    return len(lines)


def test_every_looped_fixture_is_listed():
    looped = {p.stem.split("_opset")[0] for p in DATA.glob("*_opset13.onnx")
              if any(n.op_type == "Loop" for n in onnx.load(str(p)).graph.node)}
    assert looped == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cells_are_recognised(name):
    plan = converters.from_onnx(DATA / f"{name}_opset13.onnx")
    loops = _loops(plan)
    assert len(loops) == len(EXPECTED[name])
    for node, expected in zip(loops, EXPECTED[name]):
        cell = node.state
        mode, acts, lbr, masked = expected
        assert (cell.mode, cell.linear_before_reset, cell.masked) == (mode, lbr, masked)
        assert [a[0] for a in cell.activations] == [a[0] for a in acts]
        assert [v for a in cell.activations for v in a[1:]] == pytest.approx([v for a in acts for v in a[1:]])
        assert (cell.input_size, cell.hidden_size) == (4, 6) or name == "k3_stacked"
        assert repr(cell).startswith(f"LoopedCell({mode}, ")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("N,T", [(1, 1), (2, 7), (3, 100)])
def test_as_node_by_node_and_onnxruntime(name, N, T, monkeypatch, tmp_path):
    """The kernel's results against the same Loop run node by node, against ORT, and from the
    saved plan (which recognises the cell again when it loads)."""
    model = _model(name)
    fast, slow = converters.from_onnx(model), _node_by_node(model, monkeypatch)
    assert all(node.state is not None for node in _loops(fast))
    assert all(node.state is None for node in _loops(slow))
    if name == "k3_fixed_batch_gru_last":
        N, T = 3, 5  # its sizes are fixed
    feeds = _feeds(model, N, T)
    calls = _counting_kernel_calls(fast, monkeypatch)
    got, ref = fast.run(None, feeds), ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    assert len(calls) == _kernel_calls_expected(fast, name)
    slow_got = slow.run(None, feeds)
    path = tmp_path / "plan.frnn"
    fastrnn.save(fast, path)
    loaded = fastrnn.load(path)
    assert all(node.state is not None for node in _loops(loaded))
    for g, r, s, saved in zip(got, ref, slow_got, loaded.run(None, feeds)):
        assert g.dtype == r.dtype == s.dtype and g.shape == r.shape == s.shape
        np.testing.assert_allclose(g, r, **TOL)
        np.testing.assert_allclose(g, s, **TOL)
        np.testing.assert_array_equal(g, saved)


# each row's taken steps (T = 9): all, the first 4 (trailing padding), the last 3 (leading
# padding), none, a run in the middle
RUNS = [(0, 9), (0, 4), (6, 9), (0, 0), (2, 7)]


def _masked_feeds(model, taken: np.ndarray, seed: int = 3) -> dict:
    """Random steps where `taken` [N, T] is set, masked ones elsewhere: zero vectors for a
    Masking(0.0) layer, token 0 for an Embedding(mask_zero=True)."""
    (name, x), = _feeds(model, *taken.shape, seed=seed).items()
    if x.ndim == 3:
        x = np.where(taken[..., None], x, 0).astype(x.dtype)
    else:
        x = np.where(taken, x, 0).astype(x.dtype)
    return {name: x}


def _states_as_graph_inputs(model, H: int = 6):
    """The model with its Loop's initial states (h, c, the last output; zeros as Keras builds
    them) fed as graph inputs 's<k>' [N, H] instead."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    slots = _loops(converters.from_onnx(model))[0].state.slots.values()
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    for slot in slots:
        loop.input[2 + slot] = f"s{slot}"
        model.graph.input.append(helper.make_tensor_value_info(f"s{slot}", TensorProto.FLOAT,
                                                               [None, H]))
    return model


@pytest.mark.parametrize("name", MASKED)
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("given_states", [False, True])
def test_masked_steps_as_node_by_node_and_onnxruntime(name, holes, given_states, monkeypatch):
    """Rows padded at the end, at the start, entirely, around a run of steps, or with a gap in
    them go through the kernel (each row's taken steps moved to the front and run with their
    count as its length; the states in between as Keras keeps them), from zero states or given
    ones."""
    model = _model(name)
    taken = np.zeros((len(RUNS), 9), bool)
    for row, (a, b) in enumerate(RUNS):
        taken[row, a:b] = True
    if holes:
        taken[4, 4] = taken[0, 1] = taken[0, 7] = False
        taken[3, 5] = True
    feeds = _masked_feeds(model, taken)
    if given_states:
        model = _states_as_graph_inputs(model)
        rng = np.random.default_rng(11)
        feeds.update({vi.name: rng.uniform(-1, 1, (len(RUNS), 6)).astype(np.float32)
                      for vi in model.graph.input if vi.name.startswith("s")})
    plan = converters.from_onnx(model)
    calls = _counting_kernel_calls(plan, monkeypatch)
    got = plan.run(None, feeds)
    assert len(calls) == 1
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    slow = _node_by_node(model, monkeypatch).run(None, feeds)
    for g, r, s in zip(got, ref, slow):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, **TOL)
        np.testing.assert_allclose(g, s, **TOL)


@functools.lru_cache(maxsize=None)
def _masked_plans(name: str):
    """The masked model with its initial states as graph inputs: its plan, the same plan with
    the Loop run node by node, the state inputs' names, and a list that gets an entry per kernel
    call of the first."""
    model = _states_as_graph_inputs(_model(name))
    with pytest.MonkeyPatch.context() as patch:
        slow = _node_by_node(model, patch)
    fast = converters.from_onnx(model)
    calls = []
    (loop,) = _loops(fast)
    stack = loop.state.stack
    stack.run = lambda *a, run=stack.run: calls.append(1) or run(*a)
    return fast, slow, [vi.name for vi in model.graph.input[1:]], calls


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(["k3_masking_gru_seq", "k2_masking_lstm"]))
def test_any_mask_as_node_by_node(data, name):
    """Any mask (each row's taken steps anywhere), any initial states: the kernel's results are
    the Loop's node by node."""
    fast, slow, states, calls = _masked_plans(name)
    before = len(calls)
    N = data.draw(st.integers(1, 4), label="N")
    T = data.draw(st.integers(1, 12), label="T")
    taken = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T),
                                        min_size=N, max_size=N), label="taken"))
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    feeds = _masked_feeds(_model(name), taken, seed=seed)
    rng = np.random.default_rng(seed)
    feeds.update({s: rng.uniform(-1, 1, (N, 6)).astype(np.float32) for s in states})
    for g, w in zip(fast.run(None, feeds), slow.run(None, feeds)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, **TOL)
    assert len(calls) == before + 1


# ------------------------------------------------------------------ more Keras layers
MORE = pathlib.Path(__file__).parent / "data" / "keras_loops"
MORE_FIXTURES = sorted(p.stem for p in MORE.glob("*.onnx"))


def test_more_fixtures_are_there():
    assert len(MORE_FIXTURES) == 24  # 12 models (make_fixtures.py there), Keras 3 and Keras 2


@pytest.mark.parametrize("name", MORE_FIXTURES)
def test_more_keras_loops_as_keras_onnxruntime_and_node_by_node(name, monkeypatch, tmp_path):
    """Bidirectional masked layers (their outputs zeroed at masked steps), go_backwards, return_state,
    stacked masked layers, larger sizes, no bias, hard_sigmoid, SimpleRNN's relu and sigmoid: every
    Loop runs as a kernel call, on the recorded masked input (rows padded at either end and with
    a gap) as Keras, ORT and the Loops run node by node, and at another batch size and length."""
    model = onnx.load(str(MORE / f"{name}.onnx"))
    with np.load(MORE / f"{name}.npz") as d:
        x = d["x"]
        keras_outs = [d[f"out{k}"] for k in range(sum(k.startswith("out") for k in d.files))]
    plan = converters.from_onnx(model)
    loops = _loops(plan)
    assert loops and all(node.state is not None for node in loops)
    calls = _counting_kernel_calls(plan, monkeypatch)
    slow = _node_by_node(model, monkeypatch)
    sess = ort.InferenceSession(model.SerializeToString())
    got = plan.run(None, {"x": x})
    assert len(calls) == _kernel_calls_expected(plan, name)
    for g, k, r, s in zip(got, keras_outs, sess.run(None, {"x": x}), slow.run(None, {"x": x})):
        assert g.dtype == r.dtype and g.shape == k.shape == r.shape
        np.testing.assert_allclose(g, k, **TOL)
        np.testing.assert_allclose(g, r, **TOL)
        np.testing.assert_allclose(g, s, **TOL)
    other = _feeds(model, 2, 30)
    for g, r in zip(plan.run(None, other), sess.run(None, other)):
        np.testing.assert_allclose(g, r, **TOL)
    fastrnn.save(plan, tmp_path / "plan.frnn")
    for g, saved in zip(got, fastrnn.load(tmp_path / "plan.frnn").run(None, {"x": x})):
        np.testing.assert_array_equal(g, saved)


# ------------------------------------------------------------------ the Loop's own inputs
def _loop_inputs_as_graph_inputs(model, time_dtype=TensorProto.INT32):
    """k3_gru_reset_after with the Loop's trip count M ('m'), its condition ('go') and the time
    counter's start ('t0') fed as graph inputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    loop.input[0], loop.input[1], loop.input[2] = "m", "go", "t0"
    model.graph.input.extend([helper.make_tensor_value_info("m", TensorProto.INT64, []),
                              helper.make_tensor_value_info("go", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("t0", time_dtype, [])])
    return model


def _endless(model):
    """The body's condition output replaced by its condition input: only M stops the Loop."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    body.node.append(helper.make_node("Identity", [body.input[1].name], ["always"]))
    body.output[0].name = "always"
    return model


def _outcome(run):
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - compared below: both engines refuse, or neither
        return e


@pytest.mark.parametrize("endless", [False, True])
def test_trip_count_condition_and_start_as_onnxruntime(endless, monkeypatch):
    """Every combination of M, the condition and the time counter's start, against ORT: the
    kernel takes the sequences it can (M or the condition ending it, a start past 0), the Loop
    runs node by node for the rest (no iteration, a negative start) and refuses an index past
    the input as ORT does."""
    model = _loop_inputs_as_graph_inputs(_model("k3_gru_reset_after"))
    if endless:
        model = _endless(model)
    plan = converters.from_onnx(model)
    assert _loops(plan)[0].state is not None
    sess = ort.InferenceSession(model.SerializeToString())
    T = 9
    x = _feeds(model, 2, T)["x"]
    for m in (0, 1, 4, T, T + 1, 50):
        for go in (True, False):
            for t0 in (0, 3, T - 1, T, -2):
                feeds = {"x": x, "m": np.array(m, np.int64), "go": np.array(go),
                         "t0": np.array(t0, np.int32)}
                ref = _outcome(lambda: sess.run(None, feeds))
                with monkeypatch.context() as patch:
                    calls = _counting_kernel_calls(plan, patch)
                    got = _outcome(lambda: plan.run(None, feeds))
                where = (m, go, t0)
                takes = go and m >= 1 and 0 <= t0 < T and (not endless or t0 + m <= T)
                assert len(calls) == takes, where
                if isinstance(ref, Exception):
                    assert isinstance(got, FastRNNError), (where, ref, got)
                    continue
                assert not isinstance(got, Exception), (where, got)
                for g, r in zip(got, ref):
                    assert g.dtype == r.dtype and g.shape == r.shape, where
                    np.testing.assert_allclose(g, r, **TOL, err_msg=str(where))


def test_a_body_that_is_almost_a_cell_stays_a_loop():
    """A GRU step whose update is h = z*h + (0.5 - z)*n matches no cell: the Loop runs node by
    node (and still as ORT)."""
    model = _model("k3_gru_reset_after")
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    (one,) = [t for t in body.initializer if t.name.endswith("gru_cell_1/sub/x:0")]
    assert numpy_helper.to_array(one) == 1
    one.CopyFrom(numpy_helper.from_array(np.array(0.5, np.float32), one.name))
    plan = converters.from_onnx(model)
    assert _loops(plan)[0].state is None
    feeds = _feeds(model, 2, 6)
    for g, r in zip(plan.run(None, feeds), ort.InferenceSession(model.SerializeToString())
                    .run(None, feeds)):
        np.testing.assert_allclose(g, r, **TOL)


def _with_node_after(body, producer_output: str, op: str, constants: dict):
    """The body with `op`(value, *constants) inserted after the node that makes
    `producer_output`, which then names op's result."""
    (producer,) = [n for n in body.node if producer_output in n.output]
    producer.output[list(producer.output).index(producer_output)] = producer_output + "_raw"
    body.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k)
                            for k, v in constants.items())
    body.node.insert(list(body.node).index(producer) + 1, helper.make_node(
        op, [producer_output + "_raw", *constants], [producer_output]))


def _relu6(body):  # tf2onnx's form of tf.nn.relu6
    (relu,) = [n for n in body.node if n.op_type == "Relu"]
    relu.op_type = "Clip"
    body.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), "relu6_lo"),
                             numpy_helper.from_array(np.array(6.0, np.float32), "relu6_hi")])
    relu.input.extend(["relu6_lo", "relu6_hi"])


def _relu_then_min(body):
    (relu,) = [n for n in body.node if n.op_type == "Relu"]
    _with_node_after(body, relu.output[0], "Min", {"six": 6.0})


def _relu_plus_offset(body):
    (relu,) = [n for n in body.node if n.op_type == "Relu"]
    _with_node_after(body, relu.output[0], "Add", {"offset": 3e-5})


def _clipped_cell_state(body):  # TF's LSTMCell(cell_clip=3)
    (c_out,) = [o.name for o in body.output if o.name.endswith("while/Identity_5:0")]
    _with_node_after(body, c_out, "Clip", {"clip_lo": -3.0, "clip_hi": 3.0})


@pytest.mark.parametrize("name, change", [
    ("k3_simple_rnn_relu_last", _relu6), ("k3_simple_rnn_relu_last", _relu_then_min),
    ("k3_simple_rnn_relu_last", _relu_plus_offset),
    ("k3_lstm_recurrent_dropout", _clipped_cell_state)])
def test_a_body_unlike_a_cell_only_past_small_inputs_stays_a_loop(name, change):
    """Bodies that agree with a cell on small inputs and part from it past a threshold (relu6,
    a clipped cell state) or by less than 1e-4 (an added 3e-5) are no cell: the Loop runs node
    by node, as ORT, also on inputs that pass the thresholds."""
    model = _model(name)
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    change(loop.attribute[0].g)
    plan = converters.from_onnx(model)
    assert _loops(plan)[0].state is None
    session = ort.InferenceSession(model.SerializeToString())
    for scale in (0.3, 30.0):
        feeds = {k: (v * scale).astype(v.dtype) for k, v in _feeds(model, 2, 40).items()}
        for g, r in zip(plan.run(None, feeds), session.run(None, feeds)):
            np.testing.assert_allclose(g, r, **TOL)


def test_the_guesses_checked_are_bounded(monkeypatch):
    """A body is a file's: however many matrices it offers, at most _MAX_GUESSES guesses are
    checked (the Keras bodies here match within 40); past that the Loop runs node by node."""
    checked = []
    matches = loop_cells._Analysis._matches
    monkeypatch.setattr(loop_cells._Analysis, "_matches",
                        lambda self, spec: checked.append(1) or matches(self, spec))
    model = _model("k3_fixed_batch_gru_last")
    assert _loops(converters.from_onnx(model))[0].state is not None
    needed = len(checked)
    assert 1 < needed <= 40
    monkeypatch.setattr(loop_cells, "_MAX_GUESSES", needed - 1)
    checked.clear()
    plan = converters.from_onnx(model)
    assert _loops(plan)[0].state is None and len(checked) == needed - 1
    feeds = _feeds(model, 3, 5)
    for g, r in zip(plan.run(None, feeds), ort.InferenceSession(model.SerializeToString())
                    .run(None, feeds)):
        np.testing.assert_allclose(g, r, **TOL)


def _as_float64(model):
    """The model with every float32 tensor, type and cast in float64."""
    model = onnx.ModelProto.FromString(model.SerializeToString())

    def convert(graph):
        for t in graph.initializer:
            if t.data_type == TensorProto.FLOAT:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                vi.type.tensor_type.elem_type = TensorProto.DOUBLE
        for node in graph.node:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.DOUBLE
                if attr.type == onnx.AttributeProto.GRAPH:
                    convert(attr.g)
    convert(model.graph)
    return model


@pytest.mark.parametrize("name", ["k3_gru_reset_after", "k3_gru_reset_before", "k3_simple_rnn",
                                  "k3_lstm_recurrent_dropout"])
def test_float64_loops(name, monkeypatch):
    model = _as_float64(_model(name))
    plan = converters.from_onnx(model)
    cell = _loops(plan)[0].state
    assert cell is not None and cell.stack.layers[0][0].dtype == np.float64
    feeds = _feeds(model, 2, 50)
    got = plan.run(None, feeds)
    slow = _node_by_node(model, monkeypatch).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    for g, s, r in zip(got, slow, ref):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, s, **F64_TOL)
        np.testing.assert_allclose(g, r, **F64_TOL)


# ------------------------------------------------------------------ Bidirectional: one call
BIDIRECTIONAL = ["k3_bidir_gru_masked_seq", "k2_bidir_lstm_tokens_last",
                 "k3_bidir_lstm_tokens_larger"]


@functools.lru_cache(maxsize=None)
def _bidirectional_plans(name: str):
    """The masked Bidirectional model as it is and with both Loops' initial states as graph
    inputs ('s<loop>_<slot>' [N, H]), the latter's plan, the same plan with the Loops run node
    by node, the state inputs' names and H."""
    model = onnx.load(str(MORE / f"{name}.onnx"))
    base = onnx.ModelProto.FromString(model.SerializeToString())
    loops = _loops(converters.from_onnx(model))
    graph_loops = [n for n in model.graph.node if n.op_type == "Loop"]
    for k, (node, loop) in enumerate(zip(loops, graph_loops)):
        assert node.name == loop.name
        for slot in node.state.slots.values():
            loop.input[2 + slot] = f"s{k}_{slot}"
            model.graph.input.append(helper.make_tensor_value_info(
                f"s{k}_{slot}", TensorProto.FLOAT, [None, node.state.hidden_size]))
    with pytest.MonkeyPatch.context() as patch:
        slow = _node_by_node(model, patch)
    states = [vi.name for vi in model.graph.input[1:]]
    return base, model, converters.from_onnx(model), slow, states, loops[0].state.hidden_size


@settings(max_examples=30, deadline=None)
@given(data=st.data(), name=st.sampled_from(BIDIRECTIONAL))
def test_any_mask_bidirectional_as_node_by_node(data, name):
    """A masked Bidirectional layer's two Loops as one two-direction call (each row's taken
    steps moved to the front for both directions, the backward one's states reversed within
    the row's count), under any mask and any initial states: the Loops' results node by node."""
    base, model, fast, slow, states, H = _bidirectional_plans(name)
    N = data.draw(st.integers(1, 4), label="N")
    T = data.draw(st.integers(1, 12), label="T")
    taken = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T),
                                        min_size=N, max_size=N), label="taken"))
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    feeds = _masked_feeds(base, taken, seed=seed)
    rng = np.random.default_rng(seed)
    feeds.update({s: rng.uniform(-1, 1, (N, H)).astype(np.float32) for s in states})
    with pytest.MonkeyPatch.context() as patch:
        calls = _counting_kernel_calls(fast, patch)
        got = fast.run(None, feeds)
    assert len(calls) == 1
    for g, w in zip(got, slow.run(None, feeds)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_a_bidirectional_layer_runs_as_one_two_direction_call(name, monkeypatch):
    """At T = 100 the two Loops run as one call of a two-direction Stack (whose directions run
    at once on two or three threads where the layer is large enough); as ORT, with masked steps
    and without."""
    base, model, fast, _, states, H = _bidirectional_plans(name)
    sess = ort.InferenceSession(model.SerializeToString())
    taken = np.ones((3, 100), bool)
    for holes in (False, True):
        if holes:
            taken[0, 60:] = taken[1, :5] = taken[2, 30:33] = False
        feeds = _masked_feeds(base, taken, seed=5)
        feeds.update({s: np.full((3, H), 0.25, np.float32) for s in states})
        with monkeypatch.context() as patch:
            calls = _counting_kernel_calls(fast, patch)
            got = fast.run(None, feeds)
        assert len(calls) == 1
        for g, r in zip(got, sess.run(None, feeds)):
            np.testing.assert_allclose(g, r, **TOL)
    (line,) = fast.kernel_calls()
    assert ": LoopedPair(" in line
    (pair,) = _pairs(fast)
    forward, backward = pair.stack.layers[0]  # one layer of two directions, run as the Stack's
    assert (forward.reverse, backward.reverse) == (False, True)
    assert forward.mode == backward.mode == ("GRU" if "gru" in name else "LSTM")
    threads = fastrnn.get_num_threads()
    if 2 <= threads < 4:  # at once, one thread each, where the layer pays for it: H = 64
        assert forward.directions_concurrently(100, 3, threads) == (H == 64)


def _pairs(plan) -> list:
    """The LoopedPair calls in the plan's schedule."""
    wanted = tuple(o.name for o in plan.get_outputs())
    return [step[2].state for _, steps in plan._schedule(wanted).segments for step in steps
            if step[2].op == loop_pairs.OP]


def test_reversals_of_part_of_a_sequence_run_each_loop_alone(monkeypatch):
    """The backward Loop's input reversed over fewer steps than T for some row is not the
    backward direction over X: the two Loops then run a kernel call each; as ORT."""
    model = onnx.load(str(MORE / "k3_bidir_gru_masked_seq.onnx"))
    base = onnx.ModelProto.FromString(model.SerializeToString())
    reversals = [n for n in model.graph.node if n.op_type == "ReverseSequence"
                 and "backward_gru_1/ReverseV2" in n.output[0]]  # that its Loop's body reads
    assert len(reversals) == 2  # of X and of the mask (a third reverses the backward output)
    for node in reversals:
        node.input[1] = "lens"
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT64, [None]))
    plan, sess = converters.from_onnx(model), ort.InferenceSession(model.SerializeToString())
    assert len(_pairs(plan)) == 1
    taken = np.ones((2, 9), bool)
    taken[1, 6:] = False
    for lens, calls_expected in (([9, 9], 1), ([9, 6], 2), ([0, 9], 2)):
        feeds = dict(_masked_feeds(base, taken), lens=np.array(lens, np.int64))
        with monkeypatch.context() as patch:
            calls = _counting_kernel_calls(plan, patch)
            got = plan.run(None, feeds)
        assert len(calls) == calls_expected, lens
        for g, r in zip(got, sess.run(None, feeds)):
            np.testing.assert_allclose(g, r, **TOL)
