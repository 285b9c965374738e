"""Recurrent layers unrolled over time in the graph, run as one kernel call
(converters/onnx_import/unrolled_cells.py, unrolled_layer.py, unrolled_pairs.py).

torch.onnx.export(dynamo=True) writes nn.RNN out step by step; those exports (tanh and relu, with
and without bias and initial state, one and two directions, one to three layers, batch-first, a
dynamic batch, float64) must run as one UnrolledCell node per layer (a bidirectional layer's two
directions in one call) and agree with ONNX Runtime, torch and the float64 reference. So must
Python loops over nn.RNNCell / GRUCell / LSTMCell (legacy and dynamo exports; each a single plan
node, its folded first step and the stacking of its states included; a forward and a backward
loop as one call), and tf2onnx's exports of Keras layers built with unroll=True
(tests/data/keras_unrolled, against Keras's own outputs and ORT), where each step projects its
own slice of a Split of X, GRUs with reset_after=True and False among them. Graphs built here vary
what the exporter fixes (the slice of each step: Squeeze(Slice), Gather, a bare Slice or a Split;
time indices counting up, down or over a flipped input; no input projection; the order of the
step's sums; a sigmoid; a folded first step; for a bidirectional pair, the Concat that joins it,
initial states, a longer input, a chain started from the other's state), and steps that are no
recognised cell's, or share a value with the rest of the graph, stay nodes. Inputs the fused call
declines run the nodes themselves, errors included.
"""
from __future__ import annotations

import functools
import io
import logging
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are torch's dynamo exports")
onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")

from onnx import helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
import fastrnn  # noqa: E402
from converters.onnx_import import unrolled_cells  # noqa: E402
from converters.onnx_import.unrolled_layer import UnrolledLayer, UnrolledPair  # noqa: E402
from fastrnn.errors import FastRNNError  # noqa: E402
from reference import reference_model, run_direction  # noqa: E402
from test_onnx_exports import serial_kernels  # noqa: E402,F401 - serial but *with_threads* tests

I, H, T = 5, 6, 7
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def fast_calls(monkeypatch):
    """Per call of a fused node: True where it gave the outputs (a pair's two chains in one
    kernel call), "each alone" where a pair's chains gave them in a call each, False where the
    chains' own nodes ran instead."""
    calls, depth, alone = [], [0], []

    def record(cls):
        call = cls.__call__

        def recorded(self, ins):
            depth[0] += 1
            try:
                outs = call(self, ins)
            finally:
                depth[0] -= 1
            if not depth[0]:  # not a chain's call inside a pair's
                calls.append(outs is not None and ("each alone" if alone else True))
                del alone[:]
            return outs
        monkeypatch.setattr(cls, "__call__", recorded)
    record(UnrolledLayer)
    record(UnrolledPair)
    each_alone = UnrolledPair._each_alone

    def recorded_alone(self, ins_f, ins_b):
        alone.append(True)
        return each_alone(self, ins_f, ins_b)
    monkeypatch.setattr(UnrolledPair, "_each_alone", recorded_alone)
    return calls


def _fused_calls(plan) -> list:
    """The fused nodes' calls (an UnrolledLayer or UnrolledPair each) in the plan's schedule."""
    wanted = tuple(o.name for o in plan.get_outputs())
    return [step[2].state for _, steps in plan._schedule(wanted).segments for step in steps
            if step[2].op == unrolled_cells.OP]


def _chains(plan) -> list:
    """The UnrolledLayer of every fused chain, a pair's forward one first."""
    return [chain for call in _fused_calls(plan) for chain in (
        (call.forward, call.backward) if isinstance(call, UnrolledPair) else (call,))]


def _torch_export(module, args, dynamo: bool, **options) -> bytes:
    """The module exported at opset 17 (the legacy exporter; `options` its own) or by the dynamo
    exporter (`options`: dynamic_shapes), quietly."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                return torch.onnx.export(module, args, dynamo=True, verbose=False,
                                         **options).model_proto.SerializeToString()
            f = io.BytesIO()
            torch.onnx.export(module, args, f, dynamo=False, opset_version=17, **options)
            return f.getvalue()
    finally:
        logging.disable(logging.NOTSET)


# --------------------------------------------------------------------------------------------------
# torch's dynamo exports of nn.RNN
# --------------------------------------------------------------------------------------------------
EXPORTS = {  # name: nn.RNN options, initial state given, dynamic batch, dtype
    "tanh-h0": (dict(), True, False, torch.float32),
    "relu": (dict(nonlinearity="relu"), False, False, torch.float32),
    "no-bias-h0": (dict(bias=False), True, False, torch.float32),
    "bidirectional-h0": (dict(bidirectional=True), True, False, torch.float32),
    "2-layers-bidirectional-relu-batch-first": (
        dict(num_layers=2, bidirectional=True, nonlinearity="relu", batch_first=True), False,
        False, torch.float32),
    "2-layers-batch-first-h0": (dict(num_layers=2, batch_first=True), True, False, torch.float32),
    "2-layers-bidirectional-no-bias": (dict(num_layers=2, bidirectional=True, bias=False), False,
                                       False, torch.float32),
    "3-layers-h0-float64": (dict(num_layers=3), True, False, torch.float64),
    "dynamic-batch-bidirectional-batch-first": (dict(bidirectional=True, batch_first=True),
                                                False, True, torch.float32),
    "dynamic-batch-h0": (dict(num_layers=2), True, True, torch.float32),
}


@functools.lru_cache(maxsize=None)
def _export(name: str):
    options, with_h0, dynamic, dtype = EXPORTS[name]
    torch.manual_seed(0)
    module = torch.nn.RNN(I, H, **options).to(dtype).eval()
    D = 2 if options.get("bidirectional") else 1
    L = options.get("num_layers", 1)
    x = torch.randn((3, T, I) if options.get("batch_first") else (T, 3, I), dtype=dtype)
    args = (x, torch.randn(L * D, 3, H, dtype=dtype)) if with_h0 else (x,)
    dyn = None
    if dynamic:
        B = torch.export.Dim("B", min=1, max=64)
        batch = {0: B} if options.get("batch_first") else {1: B}
        dyn = (batch, {1: B}) if with_h0 else (batch,)
    return _torch_export(module, args, True, dynamic_shapes=dyn), module


@pytest.mark.parametrize("name", list(EXPORTS))
def test_dynamo_rnn_export(name, fast_calls):
    model, module = _export(name)
    options, with_h0, dynamic, dtype = EXPORTS[name]
    D = 2 if options.get("bidirectional") else 1
    L = options.get("num_layers", 1)
    proto = onnx.load_from_string(model)
    assert "RNN" not in {n.op_type for n in proto.graph.node}  # unrolled
    plan = converters.from_onnx(model)
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    rng = np.random.default_rng(1)
    state_dict = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    for N in ((3, 1, 5) if dynamic else (3,)):
        x = rng.standard_normal((N, T, I) if options.get("batch_first") else (T, N, I))
        feeds = {proto.graph.input[0].name: x.astype(np_dtype)}
        h0 = rng.uniform(-1, 1, (L * D, N, H)) if with_h0 else None
        if with_h0:
            feeds[proto.graph.input[1].name] = h0.astype(np_dtype)
        del fast_calls[:]
        got = plan.run(None, feeds)
        # a bidirectional layer's two directions in one call
        assert [type(call) for call in _fused_calls(plan)] == \
            [UnrolledPair if D == 2 else UnrolledLayer] * L
        assert fast_calls == [True] * L
        assert len(_chains(plan)) == L * D
        assert all(layer.n == T for layer in _chains(plan))  # folded first steps too
        for g, w in zip(got, ref.run(None, feeds)):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, **TOL)
        with torch.no_grad():
            y, h_n = module(torch.from_numpy(feeds[proto.graph.input[0].name]),
                            None if h0 is None else torch.from_numpy(h0.astype(np_dtype)))
        np.testing.assert_allclose(got[0], y.numpy(), **TOL)
        np.testing.assert_allclose(got[1], h_n.numpy(), **TOL)
        want_y, want_h = reference_model("RNN", state_dict, x, h0, num_layers=L,
                                         batch_first=options.get("batch_first", False),
                                         nonlinearity=options.get("nonlinearity", "tanh"))
        np.testing.assert_allclose(got[0], want_y, **TOL)
        np.testing.assert_allclose(got[1], want_h, **TOL)


class CellLoop(torch.nn.Module):
    """A Python loop over nn.RNNCell / GRUCell / LSTMCell, which both exporters unroll (each step
    a Gemm of x_t and one of h, the first one's folded with the zero state)."""

    def __init__(self, cell: str, **options):
        super().__init__()
        self.cell = getattr(torch.nn, cell)(I, H, **options)

    def forward(self, x, *state):
        h, c = (list(state) + [torch.zeros(x.shape[1], H)] * 2)[:2]
        outs = []
        for t in range(x.shape[0]):
            if isinstance(self.cell, torch.nn.LSTMCell):
                h, c = self.cell(x[t], (h, c))
            else:
                h = self.cell(x[t], h)
            outs.append(h)
        return torch.stack(outs), h


CELL_LOOPS = {  # name: cell, its options, initial state given, batch; the chain's steps
    "rnn-cell": ("RNNCell", {}, False, 3, T),
    "rnn-cell-batch-1": ("RNNCell", {}, False, 1, T),
    "rnn-cell-relu-h0": ("RNNCell", {"nonlinearity": "relu"}, True, 3, T),
    "rnn-cell-no-bias": ("RNNCell", {"bias": False}, False, 3, T),
    "gru-cell": ("GRUCell", {}, False, 3, T),
    "gru-cell-h0": ("GRUCell", {}, True, 3, T),
    "gru-cell-no-bias": ("GRUCell", {"bias": False}, True, 1, T),
    "lstm-cell": ("LSTMCell", {}, False, 3, T),
    "lstm-cell-batch-1": ("LSTMCell", {}, False, 1, T),
    "lstm-cell-h0": ("LSTMCell", {}, True, 3, T),
}


@functools.lru_cache(maxsize=None)
def _export_cell_loop(name: str, dynamo: bool):
    cell, options, with_h0, batch, _ = CELL_LOOPS[name]
    torch.manual_seed(0)
    module = CellLoop(cell, **options).eval()
    states = 2 if cell == "LSTMCell" else 1
    args = (torch.randn(T, batch, I),) + tuple(torch.randn(batch, H)
                                               for _ in range(states if with_h0 else 0))
    names = {} if dynamo else {"input_names": ["x", "h", "c"][:len(args)]}
    return _torch_export(module, args, dynamo, **names), module


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(CELL_LOOPS))
def test_cell_loop_export(name, dynamo, fast_calls):
    """A loop over nn.RNNCell, nn.GRUCell or nn.LSTMCell runs as one chain, its first step from
    zeros (folded by the exporter) and the stacking of its states (Unsqueeze and Concat)
    included: the whole graph is one node. All against ORT and torch."""
    model, module = _export_cell_loop(name, dynamo)
    cell, _, with_h0, batch, steps = CELL_LOOPS[name]
    proto = onnx.load_from_string(model)
    rng = np.random.default_rng(5)
    feeds = {proto.graph.input[0].name: rng.standard_normal((T, batch, I)).astype(np.float32)}
    for given in proto.graph.input[1:]:  # the initial states
        feeds[given.name] = rng.uniform(-1, 1, (batch, H)).astype(np.float32)
    plan, got = _run_both(model, feeds)
    assert [layer.n for layer in _chains(plan)] == [steps]
    assert fast_calls == [True]
    wanted = tuple(o.name for o in plan.get_outputs())
    assert [step[2].op for _, steps in plan._schedule(wanted).segments
            for step in steps] == [unrolled_cells.OP]
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values()))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), **TOL)


def test_a_saved_plan_runs_its_chains_fused(tmp_path, fast_calls):
    model, _ = _export("bidirectional-h0")
    plan = converters.from_onnx(model)
    fastrnn.save(plan, tmp_path / "rnn.frnn")
    loaded = fastrnn.load(tmp_path / "rnn.frnn")
    rng = np.random.default_rng(2)
    feeds = {"input": rng.standard_normal((T, 3, I)).astype(np.float32),
             "hx": rng.standard_normal((2, 3, H)).astype(np.float32)}
    for got, want in zip(loaded.run(None, feeds), plan.run(None, feeds)):
        np.testing.assert_array_equal(got, want)
    assert fast_calls == [True] * 2
    assert [repr(call) for call in _fused_calls(loaded)] == [
        f"UnrolledPair(UnrolledLayer(RNN, input_size={I}, hidden_size={H}, steps={T}, "
        f"activation='tanh'), UnrolledLayer(RNN, input_size={I}, hidden_size={H}, steps={T}, "
        f"activation='tanh', reverse))"]


# --------------------------------------------------------------------------------------------------
# tf2onnx's exports of Keras layers built with unroll=True
# --------------------------------------------------------------------------------------------------
KERAS_UNROLLED = pathlib.Path(__file__).parent / "data" / "keras_unrolled"
KERAS_CHAINS = {  # name: the steps of each chain it runs fused (of T = 9)
    "simple_rnn_seq": [9], "simple_rnn_relu_state": [9], "simple_rnn_backwards_no_bias": [9],
    "bidir_simple_rnn": [9, 9], "stacked_simple_rnn": [9, 9], "gru": [9],
    # reset_after=False: h by [H, 2H] for z and r, r * h by [H, H] in the step
    "gru_reset_before_backwards": [9], "gru_reset_before_state": [9],
    "gru_reset_before_no_bias": [9], "bidir_gru_reset_before": [9, 9],
    "lstm_seq_state": [9], "bidir_lstm": [9, 9],
    # Keras 2's hard_sigmoid is 0.2 x + 0.5, Keras 3's x / 6 + 0.5 (each clipped to [0, 1])
    "lstm_hard_sigmoid": [9], "gru_relu_hard_sigmoid": [9], "gru_reset_before_hard_sigmoid": [9]}


@pytest.mark.parametrize("name", [f"{flavour}_{name}" for flavour in ("k3", "k2")
                                  for name in KERAS_CHAINS])
def test_keras_unrolled_export(name, fast_calls):
    model = (KERAS_UNROLLED / f"{name}.onnx").read_bytes()
    saved = np.load(KERAS_UNROLLED / f"{name}.npz")
    chains = KERAS_CHAINS[name[3:]]
    plan, got = _run_both(model, {"x": saved["x"]})
    assert [layer.n for layer in _chains(plan)] == chains
    calls = _fused_calls(plan)
    if "bidir" in name:  # the two directions in one call
        assert [type(call) for call in calls] == [UnrolledPair]
    described = " ".join(plan.kernel_calls())  # the cell each was recognised as
    if "hard_sigmoid" in name:
        assert f"('hardsigmoid', {0.2 if name.startswith('k2') else 1 / 6}, 0.5)" in described
    if "gru" in name:
        assert f"linear_before_reset={int('reset_before' not in name)}" in described
    assert fast_calls == [True] * len(calls)
    for k, value in enumerate(got):
        np.testing.assert_allclose(value, saved[f"out{k}"], **TOL)
    x = np.random.default_rng(4).standard_normal((5,) + saved["x"].shape[1:]).astype(np.float32)
    _run_both(model, {"x": x})  # another batch size
    assert fast_calls == [True] * (2 * len(calls))


# --------------------------------------------------------------------------------------------------
# unrolled graphs built here
# --------------------------------------------------------------------------------------------------
INT64_MIN = -(1 << 63)


def _unrolled(steps=T, *, take="squeeze", order="up", projection=True, act="Tanh", sums="bias-first",
              h0="input", state_rank=3, dtype=np.float32, outputs=("y", "h_n"), seed=0,
              time_dim="T", extra=None, odd=None):
    """An unrolled Elman layer in the dynamo exporter's form, with what it fixes varied (`odd`:
    step 3 unlike the others); returns (model bytes, its weights)."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    width = I if projection else H
    w = {"Wt": rng.uniform(-0.5, 0.5, (I, H)), "b_ih": rng.uniform(-0.5, 0.5, H),
         "R": rng.uniform(-0.5, 0.5, (H, H)), "b_hh": rng.uniform(-0.5, 0.5, H)}
    inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in w.items()]

    def const(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name
    nodes = []
    zero, minus_one = const("zero", [0]), const("minus_one", [-1])
    source = "x"
    if projection:
        nodes += [helper.make_node("MatMul", ["x", "Wt"], ["xw"]),
                  helper.make_node("Add", ["xw", "b_ih"], ["L"])]
        source = "L"
    if order == "flip":
        nodes.append(helper.make_node("Slice", [source, minus_one, const("min", [INT64_MIN]), zero,
                                                minus_one], ["flipped"]))
        source = "flipped"
    indices = list(range(steps))[::-1] if order == "down" else list(range(steps))
    if h0 == "input":
        state = "h0"
        if state_rank == 3:
            nodes.append(helper.make_node("Unsqueeze", ["h0", zero], ["h0_3"]))
            state = "h0_3"
    elif h0 == "constant":
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (1, 3, H)).astype(dtype), "hc"))
        state = "hc"
    else:  # no initial state: the first step folded to act(C + u), C = 0 @ R + b_hh
        rows = 3 if h0 == "folded" else 1
        C = np.broadcast_to(w["b_hh"], (1, rows, H))
        inits.append(numpy_helper.from_array(C.astype(dtype), "folded"))
    states = []
    inits.append(numpy_helper.from_array((2 * w["b_hh"]).astype(dtype), "b_odd"))
    if take == "split":  # one piece per step, each squeezed
        nodes.append(helper.make_node("Split", [source], [f"piece{k}" for k in range(steps)],
                                      axis=0))
    for k, t in enumerate(indices):
        u = f"u{k}"
        odd_here = odd if k == 3 else None
        t = t + 1 if odd_here == "index" else t
        if take == "split":
            nodes.append(helper.make_node("Squeeze", [f"piece{t}", zero], [u]))
        elif take == "gather":
            inits.append(numpy_helper.from_array(np.array(t, np.int64), f"t{k}"))
            nodes.append(helper.make_node("Gather", [source, f"t{k}"], [u], axis=0))
        else:
            out = f"s{k}" if take == "squeeze" else u
            nodes.append(helper.make_node("Slice", [source, const(f"t{k}", [t]),
                                                    const(f"e{k}", [t + 1]), zero], [out]))
            if take == "squeeze":
                nodes.append(helper.make_node("Squeeze", [out, zero], [u]))
        if k == 0 and h0.startswith("folded"):
            nodes += [helper.make_node("Add", ["folded", u], [f"p{k}"]),
                      helper.make_node(act, [f"p{k}"], [f"state{k}"])]
            state = f"state{k}"
            states.append(state)
            continue
        if odd_here == "state":  # the state two steps back
            state = states[-2]
        nodes.append(helper.make_node("MatMul", [state, "R"], [f"m{k}"]))
        b_hh = "b_odd" if odd_here == "bias" else "b_hh"
        if sums == "bias-first":
            nodes += [helper.make_node("Add", [f"m{k}", b_hh], [f"a{k}"]),
                      helper.make_node("Add", [f"a{k}", u], [f"p{k}"])]
        else:  # the slice first, the bias last
            nodes += [helper.make_node("Add", [u, f"m{k}"], [f"a{k}"]),
                      helper.make_node("Add", [b_hh, f"a{k}"], [f"p{k}"])]
        pre = f"p{k}"
        if extra == "half":  # not an Elman step: its sum halved
            inits.append(numpy_helper.from_array(np.array(0.5, dtype), f"half{k}"))
            nodes.append(helper.make_node("Mul", [pre, f"half{k}"], [f"q{k}"]))
            pre = f"q{k}"
        nodes.append(helper.make_node("Relu" if odd_here == "act" else act, [pre], [f"state{k}"]))
        state = f"state{k}"
        states.append(state)
    in_time = states[::-1] if order in ("down", "flip") else states
    outs = []
    if "y" in outputs:
        nodes.append(helper.make_node("Concat", in_time, ["y"], axis=0))
        outs.append(helper.make_tensor_value_info("y", elem, None))
    if "h_n" in outputs:
        nodes.append(helper.make_node("Identity", [states[-1]], ["h_n"]))
        outs.append(helper.make_tensor_value_info("h_n", elem, None))
    for name in outputs:
        if name not in ("y", "h_n"):  # a value inside the chain
            outs.append(helper.make_tensor_value_info(name, elem, None))
    inputs = [helper.make_tensor_value_info("x", elem, [time_dim, "N", width])]
    if h0 == "input":
        inputs.append(helper.make_tensor_value_info("h0", elem, ["M", H]))
    graph = helper.make_graph(nodes, "unrolled", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), w


def _run_both(model, feeds):
    plan = converters.from_onnx(model)
    got = plan.run(None, feeds)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **TOL)
    return plan, got


def _feeds(width=I, steps=T, N=3, dtype=np.float32, seed=3):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((steps, N, width)).astype(dtype),
            "h0": rng.uniform(-1, 1, (N, H)).astype(dtype)}


def _reference(w, x, h0, act, *, reverse, projection=True):
    p = {"w_ih": w["Wt"].T if projection else np.eye(H), "w_hh": w["R"].T,
         "b_ih": w["b_ih"] if projection else None, "b_hh": w["b_hh"]}
    return run_direction("RNN", p, x, h0, reverse=reverse, acts=[(act, 0.0, 0.0)])


VARIANTS = [  # take, order, projection, act, sums, state rank, dtype
    ("squeeze", "up", True, "Tanh", "bias-first", 3, np.float32),
    ("gather", "up", True, "Relu", "slice-first", 3, np.float32),
    ("slice", "up", True, "Tanh", "bias-first", 3, np.float32),
    ("squeeze", "down", True, "Tanh", "slice-first", 3, np.float32),
    ("gather", "flip", True, "Sigmoid", "bias-first", 3, np.float32),
    ("squeeze", "flip", False, "Tanh", "bias-first", 3, np.float32),
    ("squeeze", "up", False, "Relu", "bias-first", 2, np.float32),
    ("gather", "down", True, "Tanh", "bias-first", 2, np.float64),
    ("split", "down", True, "Relu", "bias-first", 3, np.float32),
]


@pytest.mark.parametrize("take, order, projection, act, sums, rank, dtype", VARIANTS,
                         ids=["-".join(str(v) if not isinstance(v, type) else v.__name__
                                       for v in case) for case in VARIANTS])
def test_unrolled_variants(take, order, projection, act, sums, rank, dtype, fast_calls):
    model, w = _unrolled(take=take, order=order, projection=projection, act=act, sums=sums,
                         state_rank=rank, dtype=dtype)
    width = I if projection else H
    for N in (3, 1):
        feeds = _feeds(width, N=N, dtype=dtype)
        del fast_calls[:]
        plan, (y, h_n) = _run_both(model, feeds)
        assert len(_chains(plan)) == 1 and fast_calls == [True]
        want_y, want_h, _ = _reference(w, feeds["x"], feeds["h0"], act.lower(),
                                       reverse=order in ("down", "flip"), projection=projection)
        if take == "slice" or rank == 3:
            assert y.shape == (T, N, H) and h_n.shape == (1, N, H)
        else:
            assert y.shape == (T * N, H) and h_n.shape == (N, H)
        np.testing.assert_allclose(y.reshape(T, N, H), want_y, **TOL)
        np.testing.assert_allclose(h_n.reshape(N, H), want_h, **TOL)


def test_a_constant_initial_state(fast_calls):
    model, _ = _unrolled(h0="constant", order="down")
    plan, _ = _run_both(model, {"x": _feeds()["x"]})
    assert len(_chains(plan)) == 1 and fast_calls == [True]


@pytest.mark.parametrize("rows", ["folded", "folded-any-batch"])
def test_a_first_step_folded_from_zeros(rows, fast_calls):
    """An export without an initial state folds the first step's product with zeros into a
    constant: that step joins the chain, which starts from zeros. A constant of one batch size
    takes only that one (the graph broadcasts others differently): other batches run the
    nodes."""
    model, w = _unrolled(h0=rows, order="flip")
    for N in (3, 1):
        del fast_calls[:]
        x = _feeds(N=N)["x"]
        plan, (y, h_n) = _run_both(model, {"x": x})
        assert [layer.n for layer in _chains(plan)] == [T]
        assert fast_calls == [N == 3 or rows == "folded-any-batch"]
        if fast_calls[0]:
            want_y, want_h, _ = _reference(w, x, None, "tanh", reverse=True)
            np.testing.assert_allclose(y, want_y, **TOL)
            np.testing.assert_allclose(h_n[0], want_h, **TOL)


def test_a_step_that_is_not_an_elman_cell_stays_nodes():
    model, _ = _unrolled(extra="half")
    plan, _ = _run_both(model, _feeds())
    assert _chains(plan) == []


def test_a_step_unlike_a_cell_only_past_small_inputs_stays_nodes():
    """Steps of min(relu(.), 6) (relu6) agree with a relu cell until a pre-activation passes 6:
    no chain, and every output is ORT's on inputs that pass it."""
    model = onnx.load_from_string(_unrolled(act="Relu")[0])
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type == "Relu":
            out = node.output[0]
            node.output[0] = out + "_relu"
            nodes.append(helper.make_node("Min", [out + "_relu", "six"], [out]))
    del graph.node[:]
    graph.node.extend(nodes)
    feeds = _feeds()
    feeds["x"] = feeds["x"] * np.float32(50)
    plan, (y, _) = _run_both(model.SerializeToString(), feeds)
    assert _chains(plan) == [] and y.max() == 6


@pytest.mark.parametrize("odd, chains", [("act", [3, 3]), ("bias", [3, 3]), ("index", [3, 3]),
                                         ("state", [2, 3])])
def test_a_step_unlike_the_others(odd, chains, fast_calls):
    """Step 3 with another activation, another bias, the slice of step 4, or the state of two
    steps back: the steps around it run as chains of their own, and every output is ORT's. (Two
    steps that multiply the same state end the chain before them: steps 2 and 3 run as
    nodes.)"""
    model, _ = _unrolled(odd=odd)
    plan, _ = _run_both(model, _feeds(steps=T + 1))
    assert [layer.n for layer in _chains(plan)] == chains
    assert fast_calls == [True] * len(chains)


def test_a_value_inside_the_chain_read_elsewhere(fast_calls):
    """A step's sum is also a graph output: that step runs as nodes, the steps before and after
    it as two fused chains, and every output is ORT's."""
    model, _ = _unrolled(outputs=("y", "h_n", "p3"))
    plan, _ = _run_both(model, _feeds())
    assert [layer.n for layer in _chains(plan)] == [3, 3] and fast_calls == [True] * 2


def test_a_chain_of_one_step_stays_nodes():
    model, _ = _unrolled(steps=1)
    plan, _ = _run_both(model, _feeds(steps=1))
    assert _chains(plan) == []


def test_longer_inputs_use_the_chains_steps(fast_calls):
    """The graph reads its first T steps of a longer input: so does the fused call."""
    for order in ("up", "flip"):
        model, _ = _unrolled(order=order)
        del fast_calls[:]
        plan, _ = _run_both(model, _feeds(steps=T + 4))
        assert len(_chains(plan)) == 1 and fast_calls == [True]


def test_a_split_takes_only_its_length(fast_calls):
    """A Split into one piece per step gives other lengths pieces of other sizes: the nodes
    run them, and fail where ORT fails."""
    model, _ = _unrolled(take="split")
    plan, _ = _run_both(model, _feeds())
    with pytest.raises(Exception):
        ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
            None, _feeds(steps=2 * T))
    with pytest.raises(FastRNNError):
        plan.run(None, _feeds(steps=2 * T))
    assert fast_calls == [True, False]


def test_declined_inputs_run_the_nodes(fast_calls):
    """An initial state that broadcasts over the batch (as the graph allows) runs the nodes, with
    ORT's results; a sequence shorter than the chain fails where ORT fails."""
    model, _ = _unrolled()
    feeds = _feeds()
    feeds["h0"] = feeds["h0"][:1]
    _run_both(model, feeds)
    assert fast_calls == [False]
    plan = converters.from_onnx(model)
    short = _feeds(steps=T - 2)
    with pytest.raises(Exception):
        ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, short)
    with pytest.raises(FastRNNError):
        plan.run(None, short)
    assert len(_chains(plan)) == 1 and fast_calls == [False, False]


def test_with_threads_and_a_long_sequence(fast_calls):
    """T = 100, H = 6 on the default thread count, against ORT."""
    model, _ = _unrolled(steps=100, order="flip")
    plan, _ = _run_both(model, _feeds(steps=100, N=2))
    assert len(_chains(plan)) == 1 and fast_calls == [True]


# --------------------------------------------------------------------------------------------------
# bidirectional layers: a forward and a backward chain over one input, as one call
# --------------------------------------------------------------------------------------------------
def _bidirectional(*, join=("forward", -1), backward="flip", starts=("input", "input"), rank=3,
                   backward_h0=None):
    """A bidirectional Elman layer as two of _unrolled's chains over one x, each with weights of
    its own, the backward one reading its slices in `backward` order ("flip" or "down"), each
    starting as `starts` says (_unrolled's h0: "input" gives inputs f_h0 and b_h0; `backward_h0`
    names a value to start the backward chain from instead); their ys joined by a Concat
    (`join`: which comes first and the axis) or both graph outputs (None). Returns the model
    and each chain's weights."""
    nodes, inits, inputs, outputs, weights = [], [], [], [], []
    for prefix, order, seed, start in (("f_", "up", 0, starts[0]), ("b_", backward, 1, starts[1])):
        model, w = _unrolled(order=order, seed=seed, h0=start, state_rank=rank)
        weights.append(w)
        graph = onnx.load_from_string(model).graph

        def renamed(name, prefix=prefix):
            if name == "h0" and prefix == "b_" and backward_h0 is not None:
                return backward_h0
            return name if name in ("", "x") else prefix + name
        for node in graph.node:
            node.input[:] = [renamed(n) for n in node.input]
            node.output[:] = [renamed(n) for n in node.output]
            nodes.append(node)
        for init in graph.initializer:
            init.name = renamed(init.name)
            inits.append(init)
        for value in graph.input:
            if value.name != "x" and not (prefix == "b_" and backward_h0 is not None):
                value.name = renamed(value.name)
                inputs.append(value)
            elif value.name == "x" and prefix == "f_":
                inputs.insert(0, value)
        for value in graph.output:
            value.name = renamed(value.name)
            outputs.append(value)
    if join is not None:
        first, axis = join
        ys = ["f_y", "b_y"] if first == "forward" else ["b_y", "f_y"]
        nodes.append(helper.make_node("Concat", ys, ["y"], axis=axis))
        outputs = [o for o in outputs if o.name not in ys] + [
            helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "bidirectional", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), weights


def _bidirectional_feeds(steps=T, N=3, seed=5):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((steps, N, I)).astype(np.float32),
            "f_h0": rng.uniform(-1, 1, (N, H)).astype(np.float32),
            "b_h0": rng.uniform(-1, 1, (N, H)).astype(np.float32)}


PAIRS = {  # name: _bidirectional's options
    "forward-first-last-axis": dict(join=("forward", -1)),
    "backward-first-axis-2-reading-down": dict(join=("backward", 2), backward="down"),
    "rank-2-states-axis-1": dict(join=("forward", 1), rank=2),
    "joined-on-axis-0": dict(join=("forward", 0)),  # not the last axis: the Concat runs itself
    "not-joined-backward-from-zeros": dict(join=None, starts=("input", "folded-any-batch")),
    "forward-from-zeros": dict(starts=("folded", "input"), backward="down"),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_a_bidirectional_layer_runs_as_one_call(name, fast_calls):
    """Against ORT and the float64 reference: the pair's y (the joining Concat's value from the
    kernel's y as it is), each direction's last state, whichever initial states it has."""
    options = PAIRS[name]
    join = options.get("join", ("forward", -1))
    model, (w_f, w_b) = _bidirectional(**options)
    feeds = _bidirectional_feeds()
    plan = converters.from_onnx(model)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in plan.get_inputs()}}
    plan, got = _run_both(model, feeds)
    assert [type(call) for call in _fused_calls(plan)] == [UnrolledPair]
    assert fast_calls == [True]
    pair = _fused_calls(plan)[0]
    assert (pair._joined is not None) == (join is not None and join[1] != 0)
    x = feeds["x"].astype(np.float64)
    want_f = _reference(w_f, x, feeds.get("f_h0"), "tanh", reverse=False)
    want_b = _reference(w_b, x, feeds.get("b_h0"), "tanh", reverse=True)
    by_name = dict(zip([o.name for o in plan.get_outputs()], got))
    np.testing.assert_allclose(by_name["f_h_n"].reshape(3, H), want_f[1], **TOL)
    np.testing.assert_allclose(by_name["b_h_n"].reshape(3, H), want_b[1], **TOL)
    if join is not None and join[1] != 0:
        parts = [want_f[0], want_b[0]] if join[0] == "forward" else [want_b[0], want_f[0]]
        np.testing.assert_allclose(by_name["y"].reshape(T, 3, 2 * H),
                                   np.concatenate(parts, axis=-1), **TOL)


def test_a_pair_over_a_longer_input_runs_each_chain_alone(fast_calls):
    """The graph's forward chain reads the first T steps, its backward one (over a flipped
    input) the last T: where they differ, each chain runs in a call of its own."""
    model, _ = _bidirectional()
    _run_both(model, _bidirectional_feeds(steps=T + 3))
    _run_both(model, _bidirectional_feeds(steps=T))
    assert fast_calls == ["each alone", True]


def test_chains_that_read_each_other_run_apart(fast_calls):
    """A backward chain that starts from the forward one's last state cannot run in the same
    call: each runs fused on its own."""
    model, _ = _bidirectional(rank=2, backward_h0="f_h_n", join=None)
    plan, _ = _run_both(model, {k: v for k, v in _bidirectional_feeds().items() if k != "b_h0"})
    assert [type(call) for call in _fused_calls(plan)] == [UnrolledLayer, UnrolledLayer]
    assert fast_calls == [True, True]


def test_with_threads_a_bidirectional_export_runs_its_directions_at_once(fast_calls):
    """torch's dynamo export of a bidirectional nn.RNN(8, 64) at T = 100: on two or three
    threads the pair's Stack runs its two directions at once, one thread each."""
    torch.manual_seed(0)
    module = torch.nn.RNN(8, 64, bidirectional=True).eval()
    model = _torch_export(module, (torch.zeros(100, 2, 8),), True)
    x = np.random.default_rng(6).standard_normal((100, 2, 8)).astype(np.float32)
    plan, got = _run_both(model, {"input": x})
    pair, = _fused_calls(plan)
    assert isinstance(pair, UnrolledPair) and fast_calls == [True]
    if 2 <= fastrnn.get_num_threads() < 4:
        assert pair.stack.layers[0][0].directions_concurrently(100, 2, fastrnn.get_num_threads())
    with torch.no_grad():
        want = module(torch.from_numpy(x))
    np.testing.assert_allclose(got[0], want[0].numpy(), **TOL)


class BidirectionalCellLoop(torch.nn.Module):
    """Two Python loops over cells, one forward and one backward over x, each from initial states
    of its own (h, and c for LSTM: the forward loop's first) or zeros, their states stacked in
    time order and concatenated on the feature axis; gives that and each one's last state."""

    def __init__(self, cell: str):
        super().__init__()
        self.forward_cell = getattr(torch.nn, cell)(I, H)
        self.backward_cell = getattr(torch.nn, cell)(I, H)

    def forward(self, x, *state):
        ys, last = [], []
        per_loop = len(state) // 2
        for k, (cell, steps) in enumerate(((self.forward_cell, range(x.shape[0])),
                                           (self.backward_cell, reversed(range(x.shape[0]))))):
            given = list(state[k * per_loop:(k + 1) * per_loop])
            h, c = (given + [torch.zeros(x.shape[1], H)] * 2)[:2]
            outs = {}
            for t in steps:
                if isinstance(cell, torch.nn.LSTMCell):
                    h, c = cell(x[t], (h, c))
                else:
                    h = cell(x[t], h)
                outs[t] = h
            ys.append(torch.stack([outs[t] for t in range(x.shape[0])]))
            last += [h, c] if isinstance(cell, torch.nn.LSTMCell) else [h]
        return (torch.cat(ys, -1), *last)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("cell, given", [("LSTMCell", False), ("LSTMCell", True),
                                         ("GRUCell", False), ("RNNCell", True)])
def test_a_bidirectional_cell_loop_runs_as_one_call(cell, given, dynamo, fast_calls):
    """Both loops in one two-direction call, the Concat of their stacked states from its y:
    every output (each direction's last h, and c) against ORT and torch."""
    torch.manual_seed(0)
    module = BidirectionalCellLoop(cell).eval()
    states = 2 * (2 if cell == "LSTMCell" else 1) if given else 0
    args = (torch.randn(T, 3, I),) + tuple(torch.randn(3, H) for _ in range(states))
    model = _torch_export(module, args, dynamo)
    proto = onnx.load_from_string(model)
    rng = np.random.default_rng(7)
    feeds = {proto.graph.input[0].name: rng.standard_normal((T, 3, I)).astype(np.float32)}
    for value in proto.graph.input[1:]:
        feeds[value.name] = rng.uniform(-1, 1, (3, H)).astype(np.float32)
    plan, got = _run_both(model, feeds)
    pair, = _fused_calls(plan)
    assert isinstance(pair, UnrolledPair) and pair._joined is not None and fast_calls == [True]
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values()))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), **TOL)
