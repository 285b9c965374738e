"""Single ONNX RNN / GRU / LSTM nodes over the attribute grid; hand-built If nodes (at the end;
Loop and If nested in Loops: test_onnx_loop.py).

float32: against ONNX Runtime (~1e-5). ORT rejects layout=1, so a layout=1 node is compared with the
layout=0 node on transposed inputs and outputs. float64 (ORT has no float64 GRU/LSTM): against the
float64 reference in tests/reference.py, with the ONNX -> PyTorch gate permutation written out here
independently of fastrnn.gates.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
import fastrnn  # noqa: E402
import reference  # noqa: E402
from fastrnn.errors import FormatError, UnsupportedError  # noqa: E402

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
INPUTS = {"RNN": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
          "GRU": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
          "LSTM": ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]}
OUTPUTS = {"RNN": ["Y", "Y_h"], "GRU": ["Y", "Y_h"], "LSTM": ["Y", "Y_h", "Y_c"]}
# ONNX block order written with PyTorch's letters -> position of each PyTorch block
ONNX_ORDER = {"LSTM": "iofg", "GRU": "zrn", "RNN": "n"}
TORCH_ORDER = {"LSTM": "ifgo", "GRU": "rzn", "RNN": "n"}
F32_TOL = dict(rtol=1e-5, atol=1e-5)
F64_TOL = dict(rtol=1e-10, atol=1e-12)


def onnx_to_torch(mode, block_array):
    """Reorder gate blocks (axis 0) from ONNX to PyTorch order, for the reference."""
    blocks = np.split(np.asarray(block_array), GATES[mode], axis=0)
    return np.concatenate([blocks[ONNX_ORDER[mode].index(g)] for g in TORCH_ORDER[mode]], axis=0)


class NodeCase:
    """A single recurrent node: model, feeds and what the reference needs."""

    def __init__(self, mode, direction="forward", *, T=4, N=3, I=5, H=4, dtype=np.float32,
                 bias="yes", seq="none", initial_h=False, initial_c=False, peephole=False,
                 activations=None, alpha=None, beta=None, clip=None, layout=0,
                 linear_before_reset=0, input_forget=0, hidden_size_attr=True, outputs=None,
                 opset=14, weight_scale=0.5, seed=0):
        rng = np.random.default_rng(seed)
        G = GATES[mode]
        D = 2 if direction == "bidirectional" else 1
        self.mode, self.direction, self.D, self.H, self.T, self.N = mode, direction, D, H, T, N
        self.dtype, self.layout, self.opset = dtype, layout, opset
        self.activations, self.alpha, self.beta, self.clip = activations, alpha, beta, clip
        self.linear_before_reset, self.input_forget = linear_before_reset, input_forget
        elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
        w = lambda *s: (rng.standard_normal(s) * weight_scale).astype(dtype)  # noqa: E731
        self.W, self.R = w(D, G * H, I), w(D, G * H, H)
        self.B = w(D, 2 * G * H) if bias != "no" else None
        self.P = w(D, 3 * H) if peephole else None
        X = rng.standard_normal((T, N, I)).astype(dtype)
        h0 = w(D, N, H) if initial_h else None
        c0 = w(D, N, H) if initial_c else None
        lens = None
        if seq == "full":
            lens = np.full(N, T, np.int32)
        elif seq == "var":
            lens = rng.integers(1, T + 1, N).astype(np.int32)
            lens[0] = T
        elif seq == "zero":
            lens = rng.integers(0, T + 1, N).astype(np.int32)
            lens[0], lens[-1] = T, 0
        self.X, self.h0, self.c0, self.lens = X, h0, c0, lens

        inits = [numpy_helper.from_array(self.W, "W"), numpy_helper.from_array(self.R, "R")]
        names = ["X", "W", "R", "", "", "", "", ""]
        graph_inputs, self.feeds = [], {}

        def feed(slot, name, value, elem_type):
            names[slot] = name
            vals = value
            if layout and name in ("X", "initial_h", "initial_c"):
                vals = value.transpose(1, 0, 2)
            self.feeds[name] = np.ascontiguousarray(vals)
            graph_inputs.append(helper.make_tensor_value_info(name, elem_type, list(vals.shape)))

        feed(0, "X", X, elem)
        if self.B is not None:
            inits.append(numpy_helper.from_array(self.B, "B"))
            names[3] = "B"
        if lens is not None:
            feed(4, "sequence_lens", lens, TensorProto.INT32)
        if h0 is not None:
            feed(5, "initial_h", h0, elem)
        if c0 is not None:
            feed(6, "initial_c", c0, elem)
        if self.P is not None:
            inits.append(numpy_helper.from_array(self.P, "P"))
            names[7] = "P"
        n_in = len(INPUTS[mode])
        names = names[:n_in]
        while names and names[-1] == "":
            names.pop()

        attrs = {}
        if hidden_size_attr:
            attrs["hidden_size"] = H
        if direction != "forward":
            attrs["direction"] = direction
        if activations is not None:
            attrs["activations"] = activations
        if alpha is not None:
            attrs["activation_alpha"] = alpha
        if beta is not None:
            attrs["activation_beta"] = beta
        if clip is not None:
            attrs["clip"] = clip
        if layout:
            attrs["layout"] = layout
        if mode == "GRU" and linear_before_reset:
            attrs["linear_before_reset"] = linear_before_reset
        if mode == "LSTM" and input_forget:
            attrs["input_forget"] = input_forget
        outs = list(OUTPUTS[mode]) if outputs is None else list(outputs)
        self.outputs = [o for o in outs if o]
        node = helper.make_node(mode, names, outs, name="rnn_node", **attrs)
        graph = helper.make_graph(
            [node], "g", graph_inputs,
            [helper.make_tensor_value_info(o, elem, None) for o in self.outputs], inits)
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        self.model.ir_version = 8

    def layout0(self, opset=None):
        """The same node with layout=0 (for ORT) and feeds in that layout."""
        clone = NodeCase.__new__(NodeCase)
        clone.__dict__.update(self.__dict__)
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        node = m.graph.node[0]
        keep = [a for a in node.attribute if a.name != "layout"]
        del node.attribute[:]
        node.attribute.extend(keep)
        for vi in m.graph.input:
            if self.layout and vi.name in ("X", "initial_h", "initial_c"):
                dims = vi.type.tensor_type.shape.dim
                dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
        if opset is not None:
            m.opset_import[0].version = opset
        clone.model = m
        clone.layout = 0
        clone.feeds = {k: (np.ascontiguousarray(v.transpose(1, 0, 2))
                           if self.layout and k in ("X", "initial_h", "initial_c") else v)
                       for k, v in self.feeds.items()}
        return clone

    def reference(self):
        """float64 reference outputs in ONNX layout, by output name."""
        GH = GATES[self.mode] * self.H
        params = []
        for d in range(self.D):
            params.append({
                "w_ih": onnx_to_torch(self.mode, self.W[d]),
                "w_hh": onnx_to_torch(self.mode, self.R[d]),
                "b_ih": None if self.B is None else onnx_to_torch(self.mode, self.B[d, :GH]),
                "b_hh": None if self.B is None else onnx_to_torch(self.mode, self.B[d, GH:]),
                "peephole": None if self.P is None else
                np.concatenate([self.P[d, :self.H], self.P[d, 2 * self.H:], self.P[d, self.H:2 * self.H]]),
            })
        f32 = lambda v: None if v is None else [float(np.float32(a)) for a in v]  # noqa: E731
        # ONNX float attributes are float32: the reference gets the same rounded values
        acts = reference.parse_activations(self.mode, self.activations, f32(self.alpha),
                                           f32(self.beta), self.D)
        clip = None if self.clip is None else float(np.float32(self.clip))
        ys, hs, cs = [], [], []
        for d in range(self.D):
            y, h, c = reference.run_direction(
                self.mode, params[d], self.X, None if self.h0 is None else self.h0[d],
                None if self.c0 is None else self.c0[d], self.lens,
                reverse=(self.direction == "reverse" or d == 1), acts=acts[d], clip=clip,
                linear_before_reset=bool(self.linear_before_reset),
                input_forget=bool(self.input_forget))
            ys.append(y)
            hs.append(h)
            cs.append(c)
        y = np.stack(ys, axis=2)  # (T, N, D, H)
        h_n = np.stack(hs)
        c_n = np.stack(cs) if self.mode == "LSTM" else None
        Y = y.transpose(0, 2, 1, 3)  # [T, D, N, H]
        out = {"Y": Y, "Y_h": h_n, "Y_c": c_n}
        if self.layout:
            out = {"Y": y.transpose(1, 0, 2, 3), "Y_h": h_n.transpose(1, 0, 2),
                   "Y_c": None if c_n is None else c_n.transpose(1, 0, 2)}
        return [out[o] for o in self.outputs]


def run_fastrnn(case):
    sess = converters.from_onnx(case.model)
    return sess.run(None, case.feeds)


def run_ort(case):
    """ORT outputs for `case` (via the layout-0 twin for layout 1), in `case`'s layout."""
    twin = case.layout0() if case.layout else case
    sess = ort.InferenceSession(twin.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, twin.feeds)
    if case.layout:
        outs = [o.transpose(2, 0, 1, 3) if name == "Y" else o.transpose(1, 0, 2)
                for name, o in zip(case.outputs, outs)]
    return outs


def compare(got, want, tol, label=""):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, label
        np.testing.assert_allclose(g, w, err_msg=label, **tol)


# --------------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------------
CUSTOM_ACTS = {
    "RNN": dict(activations=["LeakyRelu"], alpha=[0.3]),
    "GRU": dict(activations=["HardSigmoid", "Elu"], alpha=[0.3, 0.7], beta=[0.4]),
    "LSTM": dict(activations=["HardSigmoid", "ScaledTanh", "Affine"], alpha=[0.25, 0.8, 0.5],
                 beta=[0.45, 1.2, 0.1]),
}
CUSTOM_ACTS_BI = {
    "RNN": dict(activations=["Relu", "Softsign"]),
    "GRU": dict(activations=["Sigmoid", "LeakyRelu", "HardSigmoid", "Softplus"], alpha=[0.2, 0.3],
                beta=[0.6]),
    "LSTM": dict(activations=["Sigmoid", "Tanh", "ThresholdedRelu", "HardSigmoid", "Elu", "Tanh"],
                 alpha=[0.1, 0.2, 0.9], beta=[0.5]),
}

CONFIGS = {
    "defaults": {},
    "no_bias": dict(bias="no"),
    "empty_names": dict(bias="no", seq="var"),  # '' for B between present inputs
    "initial_state": dict(initial_h=True, initial_c=True),
    "seq_full": dict(seq="full"),
    "seq_var": dict(seq="var", initial_h=True, initial_c=True),
    "seq_zero": dict(seq="zero", initial_h=True, initial_c=True),
    "clip": dict(clip=0.7, weight_scale=1.5),
    "activations": "custom",
    "no_hidden_size": dict(hidden_size_attr=False),
    "only_Y": dict(outputs=["Y"]),
    "only_Y_h": dict(outputs=["", "Y_h"]),
    "layout1": dict(layout=1, seq="var", initial_h=True, initial_c=True),
    "all": dict(seq="var", initial_h=True, initial_c=True, peephole=True, clip=1.5, layout=1,
                weight_scale=1.0),
}
MODE_CONFIGS = {
    "GRU": {"lbr": dict(linear_before_reset=1), "lbr_seq": dict(linear_before_reset=1, seq="var",
                                                                initial_h=True)},
    "LSTM": {"peepholes": dict(peephole=True), "input_forget": dict(input_forget=1),
             "peep_if_seq": dict(peephole=True, input_forget=1, seq="var", initial_h=True,
                                 initial_c=True),
             "only_Y_c": dict(outputs=["", "", "Y_c"]), "Y_and_Y_c": dict(outputs=["Y", "", "Y_c"])},
    "RNN": {},
}
DIRECTIONS = ["forward", "reverse", "bidirectional"]


def grid():
    for mode in ("RNN", "GRU", "LSTM"):
        configs = dict(CONFIGS)
        configs.update(MODE_CONFIGS[mode])
        for direction, (name, cfg) in itertools.product(DIRECTIONS, configs.items()):
            yield pytest.param(mode, direction, name, cfg, id=f"{mode}-{direction}-{name}")


def make_case(mode, direction, cfg, **extra):
    if cfg == "custom":
        cfg = (CUSTOM_ACTS_BI if direction == "bidirectional" else CUSTOM_ACTS)[mode]
    cfg = dict(cfg)
    if mode != "LSTM":
        cfg.pop("initial_c", None)
        cfg.pop("peephole", None)
    cfg.update(extra)
    return NodeCase(mode, direction, **cfg)


@pytest.mark.parametrize("mode, direction, name, cfg", list(grid()))
def test_float32_vs_onnxruntime(mode, direction, name, cfg):
    case = make_case(mode, direction, cfg)
    # ORT refuses a node without hidden_size (fastrnn infers it from R): ORT runs the same node with it
    ort_case = make_case(mode, direction, cfg, hidden_size_attr=True)
    compare(run_fastrnn(case), run_ort(ort_case), F32_TOL, f"{mode} {direction} {name}")


@pytest.mark.parametrize("mode, direction, name, cfg",
                         [p for p in grid() if p.values[2] in
                          ("defaults", "seq_zero", "clip", "activations", "layout1", "all", "lbr_seq",
                           "peep_if_seq", "only_Y_h")])
def test_float64_vs_reference(mode, direction, name, cfg):
    case = make_case(mode, direction, cfg, dtype=np.float64)
    got = run_fastrnn(case)
    assert all(g.dtype == np.float64 for g in got)
    compare(got, case.reference(), F64_TOL, f"{mode} {direction} {name} float64")


@pytest.mark.parametrize("mode, direction, name, cfg",
                         [p for p in grid() if p.values[1] == "bidirectional" and p.values[2] in
                          ("all", "activations", "seq_zero")])
def test_float32_reference_agrees_with_onnxruntime(mode, direction, name, cfg):
    """The reference used for float64 is itself ORT's behaviour (in float32)."""
    case = make_case(mode, direction, cfg)
    compare(case.reference(), run_ort(case), dict(rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("mode, opset", [("RNN", 7), ("RNN", 22), ("GRU", 3), ("GRU", 7),
                                         ("GRU", 22), ("LSTM", 7), ("LSTM", 22), ("LSTM", 1),
                                         ("RNN", 1), ("GRU", 1)])
def test_opset_versions(mode, opset):
    case = make_case(mode, "bidirectional", dict(seq="var", initial_h=True, peephole=True),
                     opset=opset, linear_before_reset=1 if opset >= 3 and mode == "GRU" else 0)
    # ORT implements these ops from version 7: compare a version-1/3 node with its opset-7 twin
    ort_case = case.layout0(opset=max(opset, 7))
    compare(run_fastrnn(case), run_ort(ort_case), F32_TOL)


def test_one_activation_set_for_both_directions():
    """ORT insists on 2 sets for bidirectional; fastrnn also accepts one set, used for both."""
    one = make_case("GRU", "bidirectional", dict(activations=["HardSigmoid", "Tanh"], alpha=[0.3],
                                                 beta=[0.4]))
    two = make_case("GRU", "bidirectional", dict(activations=["HardSigmoid", "Tanh"] * 2,
                                                 alpha=[0.3, 0.3], beta=[0.4, 0.4]))
    compare(run_fastrnn(one), run_ort(two), F32_TOL)


def test_activation_names_are_case_insensitive():
    a = make_case("LSTM", "forward", dict(activations=["sigmoid", "TANH", "tAnH"]))
    b = make_case("LSTM", "forward", {})
    compare(run_fastrnn(a), run_ort(b), F32_TOL)


def test_unknown_activation_is_unsupported():
    case = make_case("RNN", "forward", dict(activations=["Gelu"]))
    with pytest.raises(UnsupportedError, match="Gelu"):
        converters.from_onnx(case.model)


def test_wrong_number_of_activations_is_a_format_error():
    case = make_case("LSTM", "forward", dict(activations=["Sigmoid", "Tanh"]))
    with pytest.raises(FormatError, match="activations"):
        converters.from_onnx(case.model)


def test_runs_again_with_other_batch_and_length():
    case = make_case("LSTM", "bidirectional", dict(seq="var", initial_h=True, initial_c=True))
    # the node's declared shapes are static: make the batch and sequence axes symbolic
    symbolic = {"X": {0: "T", 1: "N"}, "sequence_lens": {0: "N"}, "initial_h": {1: "N"},
                "initial_c": {1: "N"}}
    for vi in case.model.graph.input:
        for axis, label in symbolic[vi.name].items():
            vi.type.tensor_type.shape.dim[axis].dim_param = label
    sess = converters.from_onnx(case.model)
    ref = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for T, N in [(1, 1), (7, 2), (3, 5)]:
        feeds = {"X": rng.standard_normal((T, N, 5)).astype(np.float32),
                 "sequence_lens": rng.integers(1, T + 1, N).astype(np.int32),
                 "initial_h": rng.standard_normal((2, N, 4)).astype(np.float32),
                 "initial_c": rng.standard_normal((2, N, 4)).astype(np.float32)}
        compare(sess.run(None, feeds), ref.run(None, feeds), F32_TOL, f"T={T} N={N}")


def test_weights_as_graph_inputs():
    """W / R / B fed at run time (not initializers): reordered and packed on every call."""
    case = make_case("GRU", "bidirectional", dict(seq="var", initial_h=True, linear_before_reset=1))
    graph = case.model.graph
    for init in list(graph.initializer):
        arr = numpy_helper.to_array(init)
        graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, list(arr.shape)))
        case.feeds[init.name] = arr
    del graph.initializer[:]
    sess = converters.from_onnx(case.model)
    assert {i.name for i in sess.get_inputs()} >= {"W", "R", "B"}
    compare(sess.run(None, case.feeds), run_ort(case), F32_TOL)
    # other weights, same session
    case.feeds["R"] = case.feeds["R"] * 0.5
    compare(sess.run(None, case.feeds), run_ort(case), F32_TOL)


@pytest.mark.parametrize("mode, acts", [
    ("LSTM", ["ThresholdedRelu", "Tanh", "Tanh"]), ("LSTM", ["Sigmoid", "ScaledTanh", "Tanh"]),
    ("GRU", ["Elu", "Affine"]), ("RNN", ["LeakyRelu"]), ("GRU", ["HardSigmoid", "Tanh"]),
    ("LSTM", ["HardSigmoid", "LeakyRelu", "Elu"]),
], ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_activation_defaults_when_alpha_beta_run_out(mode, acts):
    """No alpha/beta given: ORT's defaults (LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1, else 0)."""
    case = make_case(mode, "forward", dict(activations=acts))
    compare(run_fastrnn(case), run_ort(case), F32_TOL)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("attrs", [
    {"activation_alpha": [0.5]}, {"activation_beta": [0.5, 2.0]},
    {"activation_alpha": [0.5] * 8, "activation_beta": [1.5] * 8},
    {"activation_alpha": [float("nan")], "activation_beta": [float("inf")]},
    {"activation_alpha": []}, {"activations": []}, {"activations": [], "activation_alpha": [0.5]},
], ids=["alpha", "beta", "many", "nan_inf", "empty_alpha", "empty_activations",
        "empty_activations_alpha"])
def test_alpha_and_beta_without_activations_are_unused(mode, direction, attrs):
    """The default activations take no alpha or beta: ORT runs the node with them and ignores
    the values (any values). An empty activations list is the defaults to ORT's GRU and LSTM; its
    RNN refuses one, and so does fastrnn."""
    case = make_case(mode, direction, dict(seq="var", initial_h=True))
    plain = run_ort(case)
    node = case.model.graph.node[0]
    for name, values in attrs.items():
        kind = onnx.AttributeProto.STRINGS if name == "activations" else onnx.AttributeProto.FLOATS
        node.attribute.append(helper.make_attribute(name, values, attr_type=kind))
    if mode == "RNN" and "activations" in attrs:
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail, match="activations"):
            run_ort(case)
        with pytest.raises(FormatError, match="activations"):
            converters.from_onnx(case.model)
        return
    want = run_ort(case)
    compare(want, plain, dict(rtol=0, atol=0))
    compare(run_fastrnn(case), want, F32_TOL, f"{mode} {direction} {attrs}")


# --------------------------------------------------------------------------------------------------
# If: a condition known at import inlines the taken branch; one known at run time runs single-node
# branches (the legacy exporter's x.squeeze(dim) on a size it cannot prove is 1)
# --------------------------------------------------------------------------------------------------
def _vi(name, shape=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _branch(name, nodes, out, inits=()):
    return helper.make_graph(nodes, name, [], [_vi(out)], list(inits))


def _squeeze_branch(opset, form, src="x", out="sq"):
    """Squeeze(src) on axis 1: the axes as attribute (opset < 13), as a Constant node or as an
    initializer of the branch (13+)."""
    if form == "attr":
        return _branch("squeeze", [helper.make_node("Squeeze", [src], [out], axes=[1])], out)
    axes = numpy_helper.from_array(np.array([1], np.int64), "sq_axes")
    squeeze = helper.make_node("Squeeze", [src, "sq_axes"], [out])
    if form == "constant":
        return _branch("squeeze", [helper.make_node("Constant", [], ["sq_axes"], value=axes), squeeze],
                       out)
    return _branch("squeeze", [squeeze], out, [axes])


def _identity_branch(src="x", out="same"):
    return _branch("identity", [helper.make_node("Identity", [src], [out])], out)


def _if_model(nodes, inputs, opset=14, inits=(), outputs=("y",)):
    graph = helper.make_graph(nodes, "g", inputs, [_vi(o) for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _check_if(model, feeds_list, conditional, op="Conditional"):
    """fastrnn runs the model as ORT does on every feed; the plan has a run-time If (a
    Conditional node of single-node branches, an If node of nested plans) or not."""
    sess = converters.from_onnx(model)
    assert (op in {n.op for n in sess.nodes}) == conditional
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        for got, want in zip(sess.run(None, feeds), ref.run(None, feeds)):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    return sess


def _fx(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("taken", [True, False])
@pytest.mark.parametrize("source", ["Constant", "folded"])
def test_if_on_a_condition_known_at_import_inlines_the_taken_branch(taken, source):
    """Branches reading outer values and an outer initializer, with an initializer and a Constant
    node of their own; the condition a Constant node or folded from initializers."""
    if source == "Constant":
        cond = [helper.make_node("Constant", [], ["cond"],
                                 value=numpy_helper.from_array(np.array(taken)))]
    else:
        cond = [helper.make_node("Greater", ["a", "b"], ["cond"])]
    inits = [numpy_helper.from_array(np.array([2.0 if taken else 0.0], np.float32), "a"),
             numpy_helper.from_array(np.array([1.0], np.float32), "b"),
             numpy_helper.from_array(np.array(3.0, np.float32), "k")]
    then = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t"]),
                              helper.make_node("Mul", ["t", "k"], ["then_out"])], "then", [],
                             [_vi("then_out")], [numpy_helper.from_array(_fx(3, seed=5), "w")])
    other = helper.make_graph([helper.make_node("Constant", [], ["c"],
                                                value=numpy_helper.from_array(_fx(2, 3, seed=6))),
                               helper.make_node("Sub", ["x", "c"], ["else_out"])], "else", [],
                              [_vi("else_out")])
    nodes = cond + [helper.make_node("If", ["cond"], ["y"], name="pick", then_branch=then,
                                     else_branch=other),
                    helper.make_node("Relu", ["y"], ["z"])]
    model = _if_model(nodes, [_vi("x", [2, 3])], inits=inits, outputs=("y", "z"))
    sess = _check_if(model, [{"x": _fx(2, 3)}, {"x": _fx(2, 3, seed=1)}], conditional=False)
    assert {n.op for n in sess.nodes} == ({"Add", "Mul", "Identity", "Relu"} if taken
                                          else {"Sub", "Identity", "Relu"})


SQUEEZE_FORMS = [(11, "attr"), (13, "constant"), (13, "initializer"), (17, "constant"),
                 (21, "initializer")]


@pytest.mark.parametrize("squeeze_in_then", [True, False], ids=["then_squeezes", "else_squeezes"])
@pytest.mark.parametrize("opset, form", SQUEEZE_FORMS, ids=[f"{o}-{f}" for o, f in SQUEEZE_FORMS])
def test_if_on_the_size_of_an_axis_squeezes_it_or_not_at_run_time(opset, form, squeeze_in_then):
    """The legacy exporter's pattern: If(Equal(Gather(Shape(x), 1), 1)), Squeeze(x, [1]) in one
    branch and Identity(x) in the other; the output's rank depends on the condition."""
    cond = [helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["size"], axis=0),
            helper.make_node("Equal", ["size", "one"], ["is_one" if not squeeze_in_then else "cond"])]
    if not squeeze_in_then:
        cond.append(helper.make_node("Not", ["is_one"], ["cond"]))
    squeeze, same = _squeeze_branch(opset, form), _identity_branch()
    node = helper.make_node("If", ["cond"], ["y"], name="squeeze_if",
                            then_branch=squeeze if squeeze_in_then else same,
                            else_branch=same if squeeze_in_then else squeeze)
    model = _if_model(cond + [node, helper.make_node("Neg", ["y"], ["z"])],
                      [_vi("x", ["N", "T", 3])], opset,
                      [numpy_helper.from_array(np.array(1, np.int64), "one")], ("y", "z"))
    feeds = [{"x": _fx(2, 1, 3)}, {"x": _fx(4, 5, 3, seed=1)}, {"x": _fx(1, 1, 3, seed=2)}]
    sess = _check_if(model, feeds, conditional=True)
    # rank 2 when axis 1 has size 1 (the squeezing branch runs, whichever it is), 3 otherwise
    assert sess.run(None, feeds[0])[0].shape == (2, 3)
    assert sess.run(None, feeds[1])[0].shape == (4, 5, 3)


@pytest.mark.parametrize("opset, form", [(11, "attr"), (14, "constant")])
def test_if_on_a_condition_fed_at_run_time(opset, form):
    """The condition a bool input, scalar or of shape [1]; the branch not taken is not run (its
    Squeeze would fail on that input)."""
    node = helper.make_node("If", ["cond"], ["y"], then_branch=_squeeze_branch(opset, form),
                            else_branch=_identity_branch())
    for shape in ([], [1]):
        model = _if_model([node], [_vi("x", ["N", "T", 3]), _vi("cond", shape, TensorProto.BOOL)],
                          opset)
        flag = lambda v: np.array(v).reshape(shape)  # noqa: E731
        _check_if(model, [{"x": _fx(2, 1, 3), "cond": flag(True)},
                          {"x": _fx(2, 1, 3), "cond": flag(False)},
                          {"x": _fx(2, 4, 3), "cond": flag(False)}], conditional=True)


def test_if_branch_with_its_own_initializer_at_run_time_and_its_saved_plan(tmp_path):
    then = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t"])], "then", [], [_vi("t")],
                             [numpy_helper.from_array(_fx(3, seed=3), "w")])
    other = helper.make_graph([helper.make_node("Constant", [], ["c"],
                                                value=numpy_helper.from_array(_fx(3, seed=4)))],
                              "else", [], [_vi("c")])  # a constant branch output
    model = _if_model([helper.make_node("If", ["cond"], ["y"], name="add_if", then_branch=then,
                                        else_branch=other)],
                      [_vi("x", ["N", 3]), _vi("cond", [], TensorProto.BOOL)])
    feeds = [{"x": _fx(2, 3), "cond": np.array(v)} for v in (True, False)]
    sess = _check_if(model, feeds, conditional=True)
    fastrnn.save(sess, tmp_path / "if.frnn")
    loaded = fastrnn.load(tmp_path / "if.frnn")
    assert [n.op for n in loaded.nodes] == ["Conditional"]
    for f in feeds:
        for a, b in zip(sess.run(None, f), loaded.run(None, f)):
            np.testing.assert_array_equal(a, b)


def test_nested_if():
    """An If in a branch reading the outer branch's own value: inlined when the outer condition is
    known at import (the inner one decided at run time); run at run time when the inner condition
    is known at import and the outer one is not (the inner inlined into a single-node branch)."""
    inner = helper.make_node("If", ["inner_cond"], ["inner_y"], name="inner",
                             then_branch=_squeeze_branch(14, "constant", src="r", out="r_sq"),
                             else_branch=_identity_branch(src="r", out="r_same"))
    outer_then = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), inner], "outer_then",
                                   [], [_vi("inner_y")])
    outer_else = _branch("outer_else", [helper.make_node("Neg", ["x"], ["n"])], "n")
    true = numpy_helper.from_array(np.array(True))
    outer = helper.make_node("If", ["outer_cond"], ["y"], name="outer", then_branch=outer_then,
                             else_branch=outer_else)
    model = _if_model([helper.make_node("Constant", [], ["outer_cond"], value=true), outer],
                      [_vi("x", ["N", "T", 3]), _vi("inner_cond", [], TensorProto.BOOL)])
    _check_if(model, [{"x": _fx(2, 1, 3), "inner_cond": np.array(v)} for v in (True, False)],
              conditional=True)

    inner_then = _squeeze_branch(14, "initializer", out="x_sq")
    inner = helper.make_node("If", ["known"], ["inner_y"], name="inner", then_branch=inner_then,
                             else_branch=_identity_branch(out="x_same"))
    outer_then = helper.make_graph([helper.make_node("Constant", [], ["known"], value=true), inner],
                                   "outer_then", [], [_vi("inner_y")])
    outer = helper.make_node("If", ["outer_cond"], ["y"], name="outer", then_branch=outer_then,
                             else_branch=_identity_branch(out="x_same_outer"))
    model = _if_model([outer], [_vi("x", ["N", "T", 3]), _vi("outer_cond", [], TensorProto.BOOL)])
    sess = _check_if(model, [{"x": _fx(2, 1, 3), "outer_cond": np.array(v)} for v in (True, False)],
                     conditional=True)
    assert [n.op for n in sess.nodes] == ["Conditional"]


def test_if_of_multi_node_branches_at_run_time_runs_nested_plans_and_saves(tmp_path):
    """Branches of several nodes (one with its own initializer, one reading an outer value and a
    value computed before the If) run as the If node's nested plans; the saved plan loads."""
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                              helper.make_node("Squeeze", ["r", "axes"], ["sq"]),
                              helper.make_node("Mul", ["sq", "k"], ["t"])], "then", [], [_vi("t")],
                             [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["n"]),
                               helper.make_node("Add", ["n", "shift"], ["e"])], "else", [],
                              [_vi("e")])
    model = _if_model([helper.make_node("Exp", ["x"], ["shift"]),
                       helper.make_node("If", ["cond"], ["y"], name="multi", then_branch=then,
                                        else_branch=other)],
                      [_vi("x", ["N", "T", 3]), _vi("cond", [], TensorProto.BOOL)],
                      inits=[numpy_helper.from_array(np.array(2.5, np.float32), "k")])
    feeds = [{"x": _fx(2, 1, 3, seed=s), "cond": np.array(v)} for s, v in ((0, True), (1, False))]
    sess = _check_if(model, feeds, conditional=True, op="If")
    (node,) = [n for n in sess.nodes if n.op == "If"]
    assert node.inputs == ["cond", "x", "shift"]  # k: a constant, folded into the branch
    assert [n.op for n in node.graphs["then_branch"].nodes] == ["Relu", "Squeeze", "Mul"]
    fastrnn.save(sess, tmp_path / "if.frnn")
    loaded = fastrnn.load(tmp_path / "if.frnn")
    for f in feeds:
        for a, b in zip(sess.run(None, f), loaded.run(None, f)):
            np.testing.assert_array_equal(a, b)


def test_if_with_a_recurrent_layer_in_a_branch_at_run_time():
    rng = np.random.default_rng(0)
    H, I = 3, 2
    lstm = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=H)],
                             "lstm", [], [_vi("Y")])
    other = helper.make_graph([helper.make_node("Unsqueeze", ["x", "one"], ["u"]),
                               helper.make_node("Tanh", ["u"], ["Yb"])], "other", [], [_vi("Yb")])
    model = _if_model([helper.make_node("If", ["cond"], ["y"], then_branch=lstm, else_branch=other)],
                      [_vi("x", ["T", "N", I]), _vi("cond", [], TensorProto.BOOL)],
                      inits=[numpy_helper.from_array((rng.standard_normal((1, 4 * H, I)) * 0.5)
                                                     .astype(np.float32), "W"),
                             numpy_helper.from_array((rng.standard_normal((1, 4 * H, H)) * 0.5)
                                                     .astype(np.float32), "R"),
                             numpy_helper.from_array(np.array([1], np.int64), "one")])
    x = _fx(4, 2, I)
    sess = _check_if(model, [{"x": x, "cond": np.array(v)} for v in (True, False)],
                     conditional=True, op="If")
    (node,) = sess.nodes
    assert [n.op for n in node.graphs["then_branch"].nodes] == ["RecurrentLayer"]
