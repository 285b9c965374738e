"""Stacked recurrent nodes of an ONNX plan run as one multi-layer call
(converters/onnx_import/fuse_layers.py): torch exports of 2- and 3-layer RNN / GRU / LSTM, one and
two directions, give the same arrays bit for bit as the nodes run one by one, and ORT's numbers;
chains that cannot run as one (given initial states, a middle layer's output read elsewhere,
sizes that do not stack) stay apart, and an input the fused call declines runs the nodes
themselves, errors included.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are torch exports")
onnx = pytest.importorskip("onnx", reason="importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")

import converters  # noqa: E402
import fastrnn  # noqa: E402
from converters.onnx_import import fuse_layers  # noqa: E402
from fastrnn.errors import ArgumentError, UnsupportedError  # noqa: E402
from onnx import helper  # noqa: E402
from test_onnx_exports import WithState  # noqa: E402

I, H = 8, 16
TOL = dict(rtol=1e-5, atol=1e-5)
CELLS = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}


class Returning(torch.nn.Module):
    """Two separate recurrent modules, the first one's output also returned (or with
    `hidden_b` another hidden size for the second)."""

    def __init__(self, hidden_b=H, first_out=True):
        super().__init__()
        self.a = torch.nn.LSTM(I, H)
        self.b = torch.nn.LSTM(H, hidden_b)
        self.first_out = first_out

    def forward(self, x):
        y, _ = self.a(x)
        z, _ = self.b(y)
        return (y, z) if self.first_out else z


def _export(module, names=("x",), dynamic=None, opset=17, args=None) -> bytes:
    torch.manual_seed(0)
    args = args if args is not None else (torch.randn(5, 3, I),)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, f, dynamo=False, opset_version=opset,
                          input_names=list(names),
                          dynamic_axes=dynamic or {"x": {0: "T", 1: "N"}})
    return f.getvalue()


def _stacked(cell: str, layers: int, bidirectional: bool, opset: int = 17) -> bytes:
    torch.manual_seed(0)
    return _export(CELLS[cell](I, H, num_layers=layers, bidirectional=bidirectional), opset=opset)


def _ops(plan, wanted=None) -> list:
    wanted = tuple(wanted or (o.name for o in plan.get_outputs()))
    return [step[2].op for _, steps in plan._schedule(wanted).segments for step in steps]


def _unfused(model: bytes, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fuse_layers, "fuse", lambda nodes, wanted, constants: nodes)
        plan = converters.from_onnx(model)
        plan.run(None, {"x": np.zeros((1, 1, I), np.float32)})  # its schedule, made unfused
    return plan


def _x(T, N, seed=0):
    return np.random.default_rng(seed).standard_normal((T, N, I)).astype(np.float32)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_as_unfused_and_onnxruntime(cell, layers, bidirectional, monkeypatch):
    model = _stacked(cell, layers, bidirectional)
    fused, plain = converters.from_onnx(model), _unfused(model, monkeypatch)
    ops = _ops(fused)
    assert ops.count(fuse_layers.OP) == 1 and "RecurrentLayer" not in ops
    assert "Concat" not in ops  # the final states come from the stack as they are
    assert _ops(plain).count("RecurrentLayer") == layers
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in fused.get_outputs()]
    for T, N in ((1, 1), (7, 3)):
        x = {"x": _x(T, N)}
        got = fused.run(None, x)
        for g, p, r in zip(got, plain.run(None, x), sess.run(None, x)):
            np.testing.assert_array_equal(g, p)
            np.testing.assert_allclose(g, r, **TOL)
        for name, whole in zip(names, got):  # each output alone: a schedule of its own
            (alone,) = fused.run([name], x)
            np.testing.assert_array_equal(alone, whole)


def test_opset_11_squeeze_axes_attribute(monkeypatch):
    model = _stacked("LSTM", 2, False, opset=11)
    fused, plain = converters.from_onnx(model), _unfused(model, monkeypatch)
    assert _ops(fused).count(fuse_layers.OP) == 1
    for g, p in zip(fused.run(None, {"x": _x(6, 2)}), plain.run(None, {"x": _x(6, 2)})):
        np.testing.assert_array_equal(g, p)


@pytest.mark.parametrize("model, feeds", [
    (lambda: _export(WithState(torch.nn.GRU(I, H, num_layers=2)), ("x", "h0"),
                     {"x": {0: "T", 1: "N"}, "h0": {1: "N"}},
                     args=(torch.randn(5, 3, I), torch.randn(2, 3, H))),
     lambda: {"x": _x(4, 3), "h0": np.random.default_rng(1).standard_normal((2, 3, H))
              .astype(np.float32)}),
    (lambda: _export(Returning()), lambda: {"x": _x(4, 3)}),
    (lambda: _export(Returning(hidden_b=12, first_out=False)), lambda: {"x": _x(4, 3)}),
], ids=["initial-states", "middle-output-read", "other-hidden-size"])
def test_layers_that_cannot_run_as_one_stay_apart(model, feeds):
    model, feeds = model(), feeds()
    plan = converters.from_onnx(model)
    assert fuse_layers.OP not in _ops(plan)
    for g, r in zip(plan.run(None, feeds), ort.InferenceSession(model).run(None, feeds)):
        np.testing.assert_allclose(g, r, **TOL)


def test_a_declined_input_runs_the_nodes_themselves(monkeypatch):
    """An empty sequence: the fused call declines it, the layers' own nodes refuse it, with the
    same error as without fusion."""
    model = _stacked("GRU", 2, True)
    errors = []
    for plan in (converters.from_onnx(model), _unfused(model, monkeypatch)):
        with pytest.raises(UnsupportedError, match="empty sequences") as err:
            plan.run(None, {"x": np.zeros((0, 2, I), np.float32)})
        errors.append(str(err.value))
    assert errors[0] == errors[1]


def test_a_saved_plan_fuses_its_layers_too(tmp_path):
    model = _stacked("LSTM", 3, True)
    plan = converters.from_onnx(model)
    fastrnn.save(plan, tmp_path / "plan.frnn")
    loaded = fastrnn.load(tmp_path / "plan.frnn")
    assert _ops(loaded).count(fuse_layers.OP) == 1
    for g, s in zip(plan.run(None, {"x": _x(5, 2)}), loaded.run(None, {"x": _x(5, 2)})):
        np.testing.assert_array_equal(g, s)


def test_kernel_calls_name_what_runs_on_the_kernels():
    """OnnxPlan.kernel_calls: per wanted outputs, each call of a recurrent kernel and what it
    runs; a layer whose weights come at run time says so."""
    plan = converters.from_onnx(_stacked("LSTM", 2, True))
    assert plan.kernel_calls() == [f"/LSTM+/LSTM_1: FusedLayers(LSTM({I}, {H}, 2 layers, "
                                   f"bidirectional))"]
    single = converters.from_onnx(_stacked("GRU", 1, False))
    assert single.kernel_calls() == [f"/GRU: GRU({I}, {H})"]
    assert single.kernel_calls([single.get_outputs()[1].name]) == single.kernel_calls()
    with pytest.raises(ArgumentError, match="outputs"):
        single.kernel_calls(["nope"])
    with pytest.raises(ArgumentError, match="outputs"):
        single.kernel_calls(single.get_outputs()[0].name)
    W = helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [1, 3 * H, I])
    R = helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, [1, 3 * H, H])
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["T", "N", I])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=H,
                                                name="gru")], "g", [x, W, R], [y])
    given = converters.from_onnx(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert given.kernel_calls() == ["gru: GRU node, weights given at run time"]
