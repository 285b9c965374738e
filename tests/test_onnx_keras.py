"""Graphs that tf2onnx exports from Keras models, run by fastrnn, by ONNX Runtime and (on the
recorded inputs) compared with Keras's own outputs.

The fixtures in tests/data/keras/ come from make_fixtures.py there (tensorflow 2.21, tf2onnx 1.17,
Keras 3.15 for k3_*, tf_keras 2.21 for k2_*; opsets 13 and 17); these tests need no tensorflow.
tf2onnx turns Keras LSTM and Keras 2 GRU(reset_after=True) into ONNX LSTM / GRU nodes, and a
go_backwards layer's input reversal into ReverseSequence; what it cannot rewrite (SimpleRNN, Keras 3
GRU, Keras 2 GRU(reset_after=False), Keras 3 LSTM with hard_sigmoid, a layer with recurrent dropout
or fed a mask) stays a Loop over the Keras cell, which fastrnn runs as a Loop plan node (its body a
nested plan), recognised as a cell's step and run by the kernel (tests/test_onnx_loop_cells.py).
"""
from __future__ import annotations

import functools
import pathlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

import converters  # noqa: E402
import fastrnn  # noqa: E402
from fastrnn.errors import ArgumentError, FormatError, ShapeError  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "keras"
TOL = dict(rtol=1e-5, atol=1e-5)
F64_TOL = dict(rtol=1e-10, atol=1e-12)
VOCAB = 12  # make_fixtures.V: token inputs index an Embedding of this many rows
# the models tf2onnx leaves a Loop in (written at opset 13 only)
LOOPED = {
    "k3": {"gru_reset_after", "gru_reset_before", "simple_rnn", "simple_rnn_relu_last", "stacked",
           "bidir_gru_sum", "bidir_rnn_concat", "gru_backwards_last", "masking_lstm",
           "masking_gru_seq", "embedding_mask_gru", "classifier_masked", "fixed_batch_gru_last",
           "gru_dense", "lstm_hard_sigmoid", "lstm_recurrent_dropout"},
    "k2": {"gru_reset_before", "simple_rnn", "simple_rnn_relu_last", "bidir_rnn_concat",
           "masking_lstm", "masking_gru_seq", "embedding_mask_gru", "classifier_masked",
           "lstm_recurrent_dropout"},
}
MODELS = 31  # in make_fixtures.MODELS
FIXTURES = sorted(p.stem for p in DATA.glob("*.onnx"))
LOOPS = [f for f in FIXTURES if f.split("_opset")[0][3:] in LOOPED[f[:2]]]
RUNNABLE = FIXTURES


@pytest.fixture(autouse=True)
def serial_kernels():
    """Serial kernels: these tests are about the graphs (and the machine is shared)."""
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    yield
    fastrnn.set_num_threads(before)


def _recorded(name: str) -> tuple[dict, list]:
    with np.load(DATA / f"{name}.npz") as d:
        feeds = {k: d[k] for k in d.files if not k.startswith("out")}
        outs = [d[f"out{k}"] for k in range(sum(k.startswith("out") for k in d.files))]
    return feeds, outs


@functools.lru_cache(maxsize=None)
def _ort(name: str):
    return ort.InferenceSession(str(DATA / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def _resized(sess, feeds: dict, N: int, T: int) -> dict | None:
    """The feeds at batch size N and length T on the axes the graph leaves open (batch is axis 0
    of every input, time axis 1 of x), or None when every size is fixed."""
    rng = np.random.default_rng(5)
    resized = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else (N, T)[min(axis, 1)]
                 for axis, d in enumerate(arg.shape)]
        old = feeds[arg.name]
        if old.dtype.kind == "i":
            resized[arg.name] = rng.integers(0, VOCAB, size=shape).astype(old.dtype)
        else:
            resized[arg.name] = rng.standard_normal(shape).astype(old.dtype)
    if all(resized[k].shape == feeds[k].shape for k in feeds):
        return None
    return resized


def test_every_model_has_a_fixture_at_both_opsets():
    """The LOOPED lists match the files: a runnable model at opsets 13 and 17, a looped one at 13."""
    for flavour in ("k3", "k2"):
        names = {f.split("_opset")[0][3:] for f in FIXTURES if f.startswith(flavour)}
        assert LOOPED[flavour] <= names
        for name in names:
            opsets = {f.split("_opset")[1] for f in FIXTURES if f.startswith(f"{flavour}_{name}_")}
            assert opsets == ({"13"} if name in LOOPED[flavour] else {"13", "17"}), (flavour, name)
    assert len(FIXTURES) - len(LOOPS) == 2 * (2 * MODELS - sum(map(len, LOOPED.values())))


def _onnxruntime_runs(name: str) -> bool:
    """ORT has no float64 LSTM kernel: those models are compared with Keras only (fastrnn runs
    them in float64)."""
    return "float64" not in name


@pytest.mark.parametrize("name", RUNNABLE)
def test_runs_as_keras_and_onnxruntime(name):
    feeds, keras_outs = _recorded(name)
    sess = converters.from_onnx(DATA / f"{name}.onnx")
    got = sess.run(None, feeds)
    assert len(got) == len(keras_outs)
    for g, k in zip(got, keras_outs):
        assert g.dtype == k.dtype and g.shape == k.shape
        np.testing.assert_allclose(g, k, **(F64_TOL if g.dtype == np.float64 else TOL))
    if _onnxruntime_runs(name):
        ref = _ort(name).run(None, feeds)
        assert len(ref) == len(got)
        for g, r, k in zip(got, ref, keras_outs):
            assert g.dtype == r.dtype and g.shape == r.shape
            np.testing.assert_allclose(g, r, **TOL)
            np.testing.assert_allclose(r, k, **TOL)  # ORT agrees with Keras too (within 3e-7 here)


@pytest.mark.parametrize("name", RUNNABLE)
def test_other_batch_and_length_and_saved_plan(name, tmp_path):
    """At batch 2 and length 7, and at 1 and 1, where the graph leaves those open, as ORT; the
    saved plan loads and gives the same numbers."""
    feeds, _ = _recorded(name)
    sess = converters.from_onnx(DATA / f"{name}.onnx")
    others = [_resized(sess, feeds, N, T) for N, T in ((2, 7), (1, 1))]
    path = tmp_path / "model.frnn"
    fastrnn.save(sess, path)
    loaded = fastrnn.load(path)
    for f in [feeds] + [other for other in others if other is not None]:
        got = sess.run(None, f)
        if _onnxruntime_runs(name):
            for g, r in zip(got, _ort(name).run(None, f)):
                np.testing.assert_allclose(g, r, **TOL)
        for g, s in zip(got, loaded.run(None, f)):
            np.testing.assert_array_equal(g, s)


def test_float64_model_is_refused_by_onnxruntime_and_run_by_fastrnn():
    """The reason the float64 fixtures skip ORT: its LSTM has no double kernel (README: float64
    recurrent ops are fastrnn's own)."""
    feeds, (keras_out,) = _recorded("k3_lstm_float64_opset17")
    with pytest.raises(Exception, match="double"):
        _ort("k3_lstm_float64_opset17").run(None, feeds)
    got = converters.from_onnx(DATA / "k3_lstm_float64_opset17.onnx").run(None, feeds)[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, keras_out, **F64_TOL)


def test_fixed_sizes_are_checked():
    """A fixed batch (and length) in the Keras Input is the ONNX input's: other sizes are refused,
    as ORT does."""
    sess = converters.from_onnx(DATA / "k2_fixed_batch_lstm_opset13.onnx")
    assert sess.get_inputs()[0].shape == [3, 5, 4]
    with pytest.raises(ShapeError, match="x"):
        sess.run(None, {"x": np.zeros((2, 5, 4), np.float32)})
    with pytest.raises(ShapeError, match="x"):
        sess.run(None, {"x": np.zeros((3, 6, 4), np.float32)})


@pytest.mark.parametrize("name", LOOPS)
def test_loops_run_as_loop_nodes(name):
    """The Loop tf2onnx leaves for a Keras layer it could not rewrite is a Loop plan node (the
    numbers: test_runs_as_keras_and_onnxruntime; the kernel that runs it: test_onnx_loop_cells)."""
    loops = [n.name for n in onnx.load(str(DATA / f"{name}.onnx")).graph.node if n.op_type == "Loop"]
    assert loops
    sess = converters.from_onnx(DATA / f"{name}.onnx")
    assert sorted(n.name for n in sess.nodes if n.op == "Loop") == sorted(loops)


# ------------------------------------------------------------------ ReverseSequence (go_backwards)
def _reverse_sequence_model(x_shape, batch_axis=None, time_axis=None, opset=13):
    attrs = {k: v for k, v in (("batch_axis", batch_axis), ("time_axis", time_axis)) if v is not None}
    node = onnx.helper.make_node("ReverseSequence", ["x", "lens"], ["y"], name="rev", **attrs)
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape),
                      onnx.helper.make_tensor_value_info("lens", onnx.TensorProto.INT64, [None])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


@pytest.mark.parametrize("batch_axis,time_axis,shape", [
    (None, None, (5, 3)), (1, 0, (5, 3, 2)), (0, 1, (3, 5)), (0, 1, (3, 5, 2, 2))])
def test_reverse_sequence_as_onnxruntime(batch_axis, time_axis, shape):
    """Each batch entry's first length steps reversed, the rest copied; lengths 0 and T too, and
    every entry whole (tf2onnx's ReverseV2: a reversed copy)."""
    model = _reverse_sequence_model([None] * len(shape), batch_axis, time_axis)
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    sess, ref_sess = converters.from_onnx(model), ort.InferenceSession(model.SerializeToString())
    for lens in ([5, 0, 2], [5, 5, 5]):
        feeds = {"x": x, "lens": np.array(lens, np.int64)}
        got = sess.run(None, feeds)[0]
        np.testing.assert_array_equal(got, ref_sess.run(None, feeds)[0])
        assert not np.array_equal(got, x) and not np.shares_memory(got, x)


def test_reverse_sequence_refuses_what_onnxruntime_refuses():
    sess = converters.from_onnx(_reverse_sequence_model([5, 3]))
    x = np.zeros((5, 3), np.float32)
    for lens in ([6, 1, 1], [-1, 1, 1]):
        with pytest.raises(ArgumentError, match=r"in \[0, 5\], got " + str(lens[0])):
            sess.run(None, {"x": x, "lens": np.array(lens, np.int64)})
    with pytest.raises(ShapeError, match="3 integers"):
        sess.run(None, {"x": x, "lens": np.array([1, 1], np.int64)})
    for axes in ((0, 0), (1, 2)):
        with pytest.raises(FormatError, match="time_axis and batch_axis must be 0 and 1"):
            converters.from_onnx(_reverse_sequence_model([5, 3], *axes))
