"""Graphs that torch.onnx.export really produces, run by fastrnn and by ONNX Runtime on fresh inputs.

Legacy exporter (dynamo=False) at opsets 9, 11, 14, 17, 20, with and without constant folding (without
it the ONNX weight reordering stays in the graph as Slice/Concat/Unsqueeze subgraphs, folded at
import); the dynamo exporter for LSTM / GRU and for nn.RNN, which it unrolls over time. Exports are
cached per session; inputs of other sequence lengths and batch sizes exercise the dynamic axes.
"""
from __future__ import annotations

import functools
import io
import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are built (and exported) with torch")
onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

import converters  # noqa: E402
import fastrnn  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def serial_kernels(request):
    """Serial kernels by default: these tests are about the graphs, and a parallel region per step
    costs milliseconds on a busy 2-core machine. Tests named *with_threads* keep the default."""
    if "with_threads" in request.node.name:
        yield
        return
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    yield
    fastrnn.set_num_threads(before)
SIZES = [(5, 3), (9, 2), (1, 1), (4, 6)]  # (T, N): the export's own, then others
OPSETS = [9, 11, 14, 17, 20]
I, H, V = 8, 16, 50


class Classifier(torch.nn.Module):
    """Embedding -> LSTM -> Linear -> Softmax over the last hidden state."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, I)
        self.lstm = torch.nn.LSTM(I, H, batch_first=True)
        self.fc = torch.nn.Linear(H, 5)

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.emb(tokens))
        return torch.softmax(self.fc(h[-1]), dim=-1)


class Tagger(torch.nn.Module):
    """GRU (2 layers, bidirectional) -> Linear per time step."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(I, H, num_layers=2, bidirectional=True)
        self.fc = torch.nn.Linear(2 * H, 7)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y)


class WithState(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, *state):
        return self.rnn(x, state if len(state) == 2 else state[0])


class GRUWithH0(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(I, H, num_layers=2)

    def forward(self, x, h0):
        return self.gru(x, h0)


class Packed(torch.nn.Module):
    def __init__(self, enforce_sorted):
        super().__init__()
        self.lstm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
        self.enforce_sorted = enforce_sorted

    def forward(self, x, lengths):
        p = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=self.enforce_sorted)
        y, (h, c) = self.lstm(p)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])
        return y, h, c


def _randn(*shape):
    return np.random.default_rng(sum(shape) * 7 + len(shape)).standard_normal(shape).astype(np.float32)


# name -> (module factory, inputs(T, N, opset) -> list of arrays, input names, dynamic axes)
MODELS = {
    "lstm_2layer_bidir": (lambda: torch.nn.LSTM(I, H, num_layers=2, bidirectional=True),
                          lambda T, N, o: [_randn(T, N, I)], ["x"], {"x": {0: "T", 1: "N"}}),
    "lstm_batch_first_h0_c0": (
        lambda: WithState(torch.nn.LSTM(I, H, num_layers=2, batch_first=True)),
        lambda T, N, o: [_randn(N, T, I), _randn(2, N, H), _randn(2, N, H) + 1],
        ["x", "h0", "c0"], {"x": {0: "N", 1: "T"}, "h0": {1: "N"}, "c0": {1: "N"}}),
    "gru_2layer": (lambda: torch.nn.GRU(I, H, num_layers=2), lambda T, N, o: [_randn(T, N, I)],
                   ["x"], {"x": {0: "T", 1: "N"}}),
    "gru_bidir_h0": (lambda: WithState(torch.nn.GRU(I, H, bidirectional=True)),
                     lambda T, N, o: [_randn(T, N, I), _randn(2, N, H)], ["x", "h0"],
                     {"x": {0: "T", 1: "N"}, "h0": {1: "N"}}),
    "rnn_relu_bidir_nobias": (
        lambda: torch.nn.RNN(I, H, nonlinearity="relu", bias=False, bidirectional=True),
        lambda T, N, o: [_randn(T, N, I)], ["x"], {"x": {0: "T", 1: "N"}}),
    "rnn_tanh_batch_first": (lambda: torch.nn.RNN(I, H, num_layers=2, batch_first=True),
                             lambda T, N, o: [_randn(N, T, I)], ["x"], {"x": {0: "N", 1: "T"}}),
    "classifier": (Classifier, lambda T, N, o: [
        np.random.default_rng(T * N).integers(0, V, (N, T)).astype(np.int64)],
                   ["tokens"], {"tokens": {0: "N", 1: "T"}}),
    "tagger": (Tagger, lambda T, N, o: [_randn(T, N, I)], ["x"], {"x": {0: "T", 1: "N"}}),
    "packed_lengths": (None, None, ["x", "lengths"], {"x": {0: "T", 1: "N"}, "lengths": {0: "N"}}),
}


def _packed_inputs(T, N, opset):
    rng = np.random.default_rng(T * 10 + N)
    lengths = rng.integers(1, T + 1, N)
    lengths[rng.integers(N)] = T
    if opset < 11:  # the opset-9 export needs sorted lengths (enforce_sorted=True)
        lengths = np.sort(lengths)[::-1].copy()
    return [_randn(T, N, I), lengths.astype(np.int64)]


def _module(name, opset):
    torch.manual_seed(0)
    if name == "packed_lengths":
        return Packed(enforce_sorted=opset < 11).eval()
    return MODELS[name][0]().eval()


def _inputs(name, T, N, opset):
    if name == "packed_lengths":
        return _packed_inputs(T, N, opset)
    return MODELS[name][1](T, N, opset)


@functools.lru_cache(maxsize=None)
def export_legacy(name: str, opset: int, folding: bool) -> bytes:
    _, _, names, dynamic = MODELS[name]
    module = _module(name, opset)
    args = tuple(torch.from_numpy(a) for a in _inputs(name, *SIZES[0], opset))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, opset_version=opset, do_constant_folding=folding,
                          dynamo=False, input_names=names, dynamic_axes=dynamic)
    return f.getvalue()


def check_against_ort(model_bytes, feeds_list, sess=None):
    sess = sess or converters.from_onnx(model_bytes)
    ref = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [i.name for i in ref.get_inputs()]
    assert [i.type for i in sess.get_inputs()] == [i.type for i in ref.get_inputs()]
    assert [i.shape for i in sess.get_inputs()] == [i.shape for i in ref.get_inputs()]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]
    for feeds in feeds_list:
        want = ref.run(None, feeds)
        got = sess.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, **TOL)
    return sess


LEGACY = [pytest.param(name, opset, folding, id=f"{name}-opset{opset}-{'fold' if folding else 'nofold'}")
          for name in MODELS for opset in OPSETS for folding in (True, False)]


@pytest.mark.parametrize("name, opset, folding", LEGACY)
def test_legacy_export(name, opset, folding):
    model = export_legacy(name, opset, folding)
    _, _, names, _ = MODELS[name]
    feeds = [dict(zip(names, _inputs(name, T, N, opset))) for T, N in SIZES]
    sess = check_against_ort(model, feeds)
    # constant folding at import: the weight-reordering subgraphs are gone, no node is constant
    assert sum(n.op == "RecurrentLayer" for n in sess.nodes) >= 1
    assert not any(n.op in ("Unsqueeze", "Concat") and all(i in sess.constants for i in n.inputs)
                   for n in sess.nodes)


def test_export_with_threads():
    """The same graphs on fastrnn's default (parallel, batch > 1) kernels."""
    model = export_legacy("tagger", 20, False)
    feeds = [{"x": _randn(T, N, I)} for T, N in [(6, 4), (3, 2)]]
    check_against_ort(model, feeds)


def test_unfolded_export_folds_to_the_same_plan():
    folded = converters.from_onnx(export_legacy("lstm_2layer_bidir", 9, True))
    unfolded = converters.from_onnx(export_legacy("lstm_2layer_bidir", 9, False))
    raw = onnx.load_from_string(export_legacy("lstm_2layer_bidir", 9, False))
    assert sum(n.op_type == "Slice" for n in raw.graph.node) > 20  # the reordering subgraphs
    assert [n.op for n in folded.nodes] == [n.op for n in unfolded.nodes]


@pytest.mark.parametrize("folding", [True, False])
def test_zero_initial_states_are_dropped(folding):
    """The exporters build zero h0/c0 from the input's shape; the plan starts from zeros instead."""
    sess = converters.from_onnx(export_legacy("lstm_2layer_bidir", 11, folding))
    assert [n.op for n in sess.nodes] == ["RecurrentLayer", "Transpose", "Reshape", "RecurrentLayer",
                                          "Transpose", "Reshape", "Concat", "Concat"]
    assert all(n.inputs[2] == n.inputs[3] == "" for n in sess.nodes if n.op == "RecurrentLayer")


def test_packed_sequence_lengths_are_honoured():
    """Rows past their length are zero and padding never leaks, as in ORT and PyTorch."""
    model = export_legacy("packed_lengths", 17, True)
    sess = converters.from_onnx(model)
    x, lengths = _packed_inputs(6, 4, 17)
    lengths[:] = [6, 2, 4, 1]
    y, h, c = sess.run(None, {"x": x, "lengths": lengths})
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0)
    x2 = x.copy()
    for b, L in enumerate(lengths):
        x2[L:, b] = 1e3  # garbage padding
    y2, h2, c2 = sess.run(None, {"x": x2, "lengths": lengths})
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h2)
    with torch.no_grad():
        ty, th, tc = _module("packed_lengths", 17)(torch.from_numpy(x), torch.from_numpy(lengths))
    np.testing.assert_allclose(y, ty.numpy(), **TOL)
    np.testing.assert_allclose(h, th.numpy(), **TOL)


def test_classifier_matches_torch():
    model = export_legacy("classifier", 17, True)
    sess = converters.from_onnx(model)
    (tokens,) = _inputs("classifier", 11, 4, 17)
    (probs,) = sess.run(None, {"tokens": tokens})
    with torch.no_grad():
        want = _module("classifier", 17)(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(probs, want, **TOL)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# dynamo exporter
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def export_dynamo(name: str) -> bytes:
    torch.manual_seed(0)
    B = torch.export.Dim("B", min=1, max=64)
    T = torch.export.Dim("T", min=2, max=256)
    if name == "lstm":
        module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        args, dyn = (torch.randn(3, 5, I),), ({0: B, 1: T},)
    elif name == "gru":
        module = GRUWithH0()
        args, dyn = (torch.randn(5, 3, I), torch.randn(2, 3, H)), ({1: B}, {1: B})
    elif name == "tagger":
        module = Tagger()
        args, dyn = (torch.randn(5, 3, I),), ({1: B},)
    else:  # nn.RNN: unrolled over time into MatMul / Add / Tanh / Relu
        module = torch.nn.RNN(I, H, num_layers=2, nonlinearity="relu" if name == "rnn_relu" else "tanh",
                              bidirectional=name == "rnn_relu")
        args, dyn = (torch.randn(5, 3, I),), None
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), args, dynamo=True, dynamic_shapes=dyn,
                                        verbose=False)
    finally:
        logging.disable(logging.NOTSET)
    return program.model_proto.SerializeToString()


DYNAMO_SIZES = {  # what each graph allows: the dynamo exporter fixes T in a Reshape for some
    "lstm": [(3, 5), (7, 2), (2, 1), (4, 9)],  # (N, T) batch-first
    "gru": [(5, 3), (5, 1), (5, 6)],
    "tagger": [(5, 3), (5, 2)],
    "rnn_tanh": [(5, 3)],
    "rnn_relu": [(5, 3)],
}


@pytest.mark.parametrize("name", list(DYNAMO_SIZES))
def test_dynamo_export(name):
    model = export_dynamo(name)
    proto = onnx.load_from_string(model)
    ops = {n.op_type for n in proto.graph.node}
    if name.startswith("rnn"):
        assert "RNN" not in ops and "MatMul" in ops  # unrolled
    rng = np.random.default_rng(0)
    feeds = []
    for a, b in DYNAMO_SIZES[name]:
        feed = {proto.graph.input[0].name: rng.standard_normal((a, b, I)).astype(np.float32)}
        if name == "gru":
            feed[proto.graph.input[1].name] = rng.standard_normal((2, b, H)).astype(np.float32)
        feeds.append(feed)
    check_against_ort(model, feeds)


# --------------------------------------------------------------------------------------------------
# layers around the recurrent ones: LayerNormalization, OneHot, GatherND, BatchNormalization, reductions
# --------------------------------------------------------------------------------------------------
class Around(torch.nn.Module):
    """An LSTM (a GRU for batch_norm) with a layer around it that the exporters turn into other ops."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        rnn = torch.nn.GRU if kind == "batch_norm" else torch.nn.LSTM
        self.rnn = rnn(I, H, batch_first=True)
        self.ln = torch.nn.LayerNorm(H)
        self.bn = torch.nn.BatchNorm1d(H)
        with torch.no_grad():  # statistics as after training, not the identity
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
            self.ln.weight.normal_()
            self.ln.bias.normal_()
        self.fc = torch.nn.Linear(H, 3)

    def forward(self, x, lengths):
        if self.kind == "one_hot":
            x = torch.nn.functional.one_hot(x, I).float()
        out, _ = self.rnn(x)
        if self.kind == "layer_norm":
            return self.fc(self.ln(out))
        if self.kind == "batch_norm":
            return self.fc(self.bn(out.transpose(1, 2)).transpose(1, 2))
        if self.kind == "last_step":  # dynamo: GatherND
            return self.fc(out[torch.arange(out.shape[0]), lengths - 1])
        if self.kind == "gather_squeeze":  # legacy: GatherElements, If(size 1: Squeeze, Identity)
            idx = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
            return self.fc(out.gather(1, idx).squeeze(1))
        if self.kind == "reductions":  # ReduceLogSumExp, ReduceL2
            return torch.logsumexp(self.fc(out), -1), torch.nn.functional.normalize(out[:, -1], dim=-1)
        return self.fc(out)


AROUND_SIZES = [(3, 5), (2, 7), (4, 2)]  # (N, T), batch first: the export's own, then others


def _around_inputs(kind, N, T):
    rng = np.random.default_rng(N * 10 + T)
    x = rng.integers(0, I, (N, T)) if kind == "one_hot" else rng.standard_normal((N, T, I))
    return [x.astype(np.int64 if kind == "one_hot" else np.float32),
            rng.integers(1, T + 1, N).astype(np.int64)]


@functools.lru_cache(maxsize=None)
def export_around(kind: str, dynamo: bool) -> bytes:
    torch.manual_seed(0)
    module = Around(kind).eval()
    args = tuple(torch.from_numpy(a) for a in _around_inputs(kind, *AROUND_SIZES[0]))
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                N, T = torch.export.Dim("N", min=2, max=64), torch.export.Dim("T", min=2, max=64)
                return torch.onnx.export(module, args, dynamo=True, verbose=False,
                                         dynamic_shapes=({0: N, 1: T}, {0: N})
                                         ).model_proto.SerializeToString()
            f = io.BytesIO()
            torch.onnx.export(module, args, f, dynamo=False, input_names=["x", "lengths"],
                              dynamic_axes={"x": {0: "N", 1: "T"}, "lengths": {0: "N"}})
            return f.getvalue()
    finally:
        logging.disable(logging.NOTSET)


AROUND = {("layer_norm", False): "LayerNormalization", ("layer_norm", True): "LayerNormalization",
          ("one_hot", False): "OneHot", ("last_step", True): "GatherND",
          ("batch_norm", False): "BatchNormalization", ("reductions", False): "ReduceLogSumExp"}


@pytest.mark.parametrize("kind, dynamo", list(AROUND),
                         ids=[f"{k}-{'dynamo' if d else 'legacy'}" for k, d in AROUND])
def test_layers_around_the_recurrent_ones(kind, dynamo):
    """At the exporter's default opset: the op is in the graph, and fastrnn matches ORT on other
    batch sizes and lengths, and torch."""
    model = export_around(kind, dynamo)
    proto = onnx.load_from_string(model)
    assert AROUND[kind, dynamo] in {n.op_type for n in proto.graph.node}
    names = [i.name for i in proto.graph.input]
    # the sizes the graph allows: after another export, the dynamo exporter may fix T
    fixed = [d.dim_value or None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    sizes = [s for s in AROUND_SIZES if all(f in (None, n) for f, n in zip(fixed, s))]
    feeds = [dict(zip(names, _around_inputs(kind, N, T))) for N, T in sizes]
    sess = check_against_ort(model, feeds)
    torch.manual_seed(0)
    module = Around(kind).eval()
    with torch.no_grad():
        want = module(*(torch.from_numpy(a) for a in _around_inputs(kind, *sizes[-1])))
    got = sess.run(None, feeds[-1])
    for g, w in zip(got, want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(g, w.numpy(), **TOL)


@functools.lru_cache(maxsize=None)
def export_gather_squeeze(opset: int) -> bytes:
    torch.manual_seed(0)
    module = Around("gather_squeeze").eval()
    args = tuple(torch.from_numpy(a) for a in _around_inputs("gather_squeeze", *AROUND_SIZES[0]))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=opset,
                          input_names=["x", "lengths"],
                          dynamic_axes={"x": {0: "N", 1: "T"}, "lengths": {0: "N"}})
    return f.getvalue()


@pytest.mark.parametrize("opset", [11, 14, 17])
def test_last_valid_step_by_gather_and_squeeze(opset, tmp_path):
    """out.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, H)).squeeze(1): the legacy exporter
    cannot prove the squeezed size is 1 and writes an If on it (Squeeze / Identity branches, the
    axes an attribute at opset 11, a Constant in the branch from 13); fastrnn decides it at run
    time, as ORT, at batch sizes other than the export's (1 included), and the plan saves."""
    model = export_gather_squeeze(opset)
    proto = onnx.load_from_string(model)
    (node,) = [n for n in proto.graph.node if n.op_type == "If"]
    assert {n.op_type for a in node.attribute for n in a.g.node} >= {"Squeeze", "Identity"}
    sizes = AROUND_SIZES + [(1, 4), (6, 1)]
    feeds = [dict(zip(["x", "lengths"], _around_inputs("gather_squeeze", N, T))) for N, T in sizes]
    sess = check_against_ort(model, feeds)
    assert "Conditional" in {n.op for n in sess.nodes}
    torch.manual_seed(0)
    module = Around("gather_squeeze").eval()
    fastrnn.save(sess, tmp_path / "last_step.frnn")
    loaded = fastrnn.load(tmp_path / "last_step.frnn")
    for f in feeds:
        with torch.no_grad():
            want = module(*(torch.from_numpy(f[k]) for k in ("x", "lengths"))).numpy()
        (got,) = sess.run(None, f)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, **TOL)
        np.testing.assert_array_equal(loaded.run(None, f)[0], got)


# --------------------------------------------------------------------------------------------------
# files: external data, save / load
# --------------------------------------------------------------------------------------------------
def test_external_data(tmp_path):
    proto = onnx.load_from_string(export_legacy("tagger", 17, True))
    path = tmp_path / "tagger.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tagger.weights", size_threshold=0)
    assert (tmp_path / "tagger.weights").stat().st_size > 10_000
    sess = converters.from_onnx(str(path))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _randn(6, 2, I)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], **TOL)
    sess2 = converters.from_onnx(path)  # a pathlib.Path works too
    np.testing.assert_allclose(sess2.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], **TOL)


def test_saved_plan_runs_the_same(tmp_path):
    model = export_legacy("lstm_batch_first_h0_c0", 14, False)
    sess = converters.from_onnx(model)
    path = tmp_path / "model.frnn"
    fastrnn.save(sess, path)
    loaded = fastrnn.load(path)
    assert [i.name for i in loaded.get_inputs()] == [i.name for i in sess.get_inputs()]
    assert [o.shape for o in loaded.get_outputs()] == [o.shape for o in sess.get_outputs()]
    feeds = dict(zip(["x", "h0", "c0"], _inputs("lstm_batch_first_h0_c0", 7, 3, 14)))
    for a, b in zip(sess.run(None, feeds), loaded.run(None, feeds)):
        np.testing.assert_array_equal(a, b)


class ConvLSTM(torch.nn.Module):
    """A CRNN / DeepSpeech-style front end: Conv1d (strided, padded) -> ReLU -> LSTM -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(I, H, kernel_size=5, stride=2, padding=2)
        self.depthwise = torch.nn.Conv1d(H, H, kernel_size=3, padding=1, groups=H)
        self.lstm = torch.nn.LSTM(H, H, batch_first=True)
        self.fc = torch.nn.Linear(H, 5)

    def forward(self, x):  # x: (N, I, T)
        y = self.depthwise(torch.relu(self.conv(x)))
        out, _ = self.lstm(y.transpose(1, 2))
        return self.fc(out)


@functools.lru_cache(maxsize=None)
def export_conv_lstm() -> bytes:
    torch.manual_seed(0)
    module = ConvLSTM().eval()
    f = io.BytesIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.from_numpy(_randn(2, I, 12)),), f)  # default settings
    finally:
        logging.disable(logging.NOTSET)
    return f.getvalue()


def test_conv1d_before_an_lstm_matches_onnxruntime_and_torch():
    model = export_conv_lstm()
    proto = onnx.load_from_string(model)
    assert "Conv" in {n.op_type for n in proto.graph.node}
    name = proto.graph.input[0].name
    x = _randn(2, I, 12)
    sess = check_against_ort(model, [{name: x}])
    torch.manual_seed(0)
    with torch.no_grad():
        want = ConvLSTM().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {name: x})[0], want, **TOL)
    assert any(n.op == "Conv" for n in sess.nodes)
