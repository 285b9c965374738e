"""converters.from_torch against real PyTorch modules.

Grid: cell (RNN tanh, RNN relu, GRU, LSTM, LSTM with proj_size) x num_layers 1-2 x bidirectional x
bias x batch_first x float32/float64. From the module itself every behaviour is compared with the
torch module: the whole sequence from a zero state and from a random initial state, lengths against
PackedSequence(enforce_sorted=False), unbatched input and streaming (unidirectional). From state
dicts (torch tensors, numpy arrays) and files (torch.save zip, legacy torch.save, safetensors) the
converted parameters must equal the module's bit for bit and one run must match torch.
Tolerances: float32 1e-5, float64 1e-10 (absolute and relative).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch converter tests compare against torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn  # noqa: E402
import converters  # noqa: E402
from converters.torch_composite import from_torch_composite, seq2seq_from_torch  # noqa: E402
from converters.torch_convert import (convert_file, from_torch, infer_architecture,  # noqa: E402
                                      inspect_torch)
from converters.torch_files import TensorRef  # noqa: E402
from fastrnn.errors import (ArgumentError, DTypeError, FormatError, ShapeError,  # noqa: E402
                            UnsupportedError)

try:
    from tests.test_torch_files import write_safetensors
except ImportError:  # tests/ is on sys.path under pytest's default import mode
    from test_torch_files import write_safetensors

I, H, P, T, N = 3, 4, 2, 5, 3
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
CELLS = ["RNN_TANH", "RNN_RELU", "GRU", "LSTM", "LSTM_PROJ"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


def make_module(cell, num_layers=1, bidirectional=False, bias=True, batch_first=False,
                dtype=np.float64, input_size=I, hidden_size=H):
    torch.manual_seed(_seed(cell, num_layers, bidirectional, bias, batch_first, str(dtype)))
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
              bidirectional=bidirectional, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    if cell.startswith("RNN"):
        m = torch.nn.RNN(input_size, hidden_size, nonlinearity=cell[4:].lower(), **kw)
    elif cell == "GRU":
        m = torch.nn.GRU(input_size, hidden_size, **kw)
    else:
        m = torch.nn.LSTM(input_size, hidden_size, proj_size=P if cell == "LSTM_PROJ" else 0, **kw)
    return m.eval()


def hints_for(m):
    return dict(nonlinearity=getattr(m, "nonlinearity", None), batch_first=m.batch_first)


def torch_run(m, x, hx=None, lengths=None):
    """The module on numpy inputs; packed sequences for lengths; results as numpy."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if hx is not None:
            hx = tuple(torch.from_numpy(a) for a in hx) if isinstance(hx, tuple) else torch.from_numpy(hx)
        if lengths is not None:
            packed = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=m.batch_first,
                                          enforce_sorted=False)
            out, h = m(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=m.batch_first,
                                         total_length=x.shape[1 if m.batch_first else 0])
        else:
            out, h = m(xt, hx)
    h = tuple(a.numpy() for a in h) if isinstance(h, tuple) else h.numpy()
    return out.numpy(), h


def assert_close(got, want, dtype, what=""):
    tol = TOL[np.dtype(dtype)]
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype} != {np.dtype(dtype)}"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def assert_same(layer, got, want, what=""):
    (out, h), (eout, eh) = got, want
    assert_close(out, eout, layer.dtype, f"{what} out")
    if isinstance(eh, tuple):
        assert isinstance(h, tuple) and len(h) == 2
        assert_close(h[0], eh[0], layer.dtype, f"{what} h_n")
        assert_close(h[1], eh[1], layer.dtype, f"{what} c_n")
    else:
        assert_close(h, eh, layer.dtype, f"{what} h_n")


def random_input(m, rng, dtype, steps=T, batch=N):
    shape = (batch, steps, I) if m.batch_first else (steps, batch, I)
    return rng.standard_normal(shape).astype(dtype)


def random_state(m, rng, dtype, batch=N, unbatched=False):
    lead = (m.num_layers * (2 if m.bidirectional else 1),) + (() if unbatched else (batch,))
    h0 = rng.standard_normal(lead + (m.proj_size or m.hidden_size,)).astype(dtype)
    if isinstance(m, torch.nn.LSTM):
        return h0, rng.standard_normal(lead + (m.hidden_size,)).astype(dtype)
    return h0


def module_params(m):
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


def assert_params_equal(layer, m, dtype):
    got = layer.state_dict()
    want = module_params(m)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == np.dtype(dtype), k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


GRID = pytest.mark.parametrize(
    "cell,num_layers,bidirectional,bias,batch_first,dtype",
    [(c, nl, bi, b, bf, dt) for c in CELLS for nl in (1, 2) for bi in (False, True)
     for b in (True, False) for bf in (False, True) for dt in (np.float32, np.float64)],
    ids=lambda v: {np.float32: "f32", np.float64: "f64"}.get(v, str(v)),
)


# --------------------------------------------------------------------------------------------------
# the grid, from the module: every behaviour against torch
# --------------------------------------------------------------------------------------------------
@GRID
def test_module_grid(cell, num_layers, bidirectional, bias, batch_first, dtype):
    m = make_module(cell, num_layers, bidirectional, bias, batch_first, dtype)
    layer = from_torch(m)
    assert isinstance(layer, fastrnn.RNN if cell.startswith("RNN") else getattr(fastrnn, cell[:4]))
    assert layer.dtype == np.dtype(dtype) and layer.batch_first == batch_first
    assert (layer.num_layers, layer.bidirectional, layer.bias) == (num_layers, bidirectional, bias)
    if cell.startswith("RNN"):
        assert layer.nonlinearity == cell[4:].lower()
    assert layer.proj_size == (P if cell == "LSTM_PROJ" else 0)
    assert_params_equal(layer, m, dtype)
    rng = np.random.default_rng(_seed("grid", cell, num_layers, bidirectional, bias, batch_first))

    # whole sequence, zero state
    x = random_input(m, rng, dtype)
    assert_same(layer, layer(x), torch_run(m, x), "zero state")
    # initial state
    hx = random_state(m, rng, dtype)
    assert_same(layer, layer(x, hx), torch_run(m, x, hx), "initial state")
    # lengths vs PackedSequence(enforce_sorted=False), unsorted and with one full row
    lengths = np.array([2, T, 1])
    assert_same(layer, layer(x, hx, lengths=lengths), torch_run(m, x, hx, lengths), "lengths")
    assert_same(layer, layer(x, lengths=lengths), torch_run(m, x, None, lengths), "lengths, h0=0")
    # unbatched
    xu = rng.standard_normal((T, I)).astype(dtype)
    hu = random_state(m, rng, dtype, unbatched=True)
    assert_same(layer, layer(xu, hu), torch_run(m, xu, hu), "unbatched")
    # streaming vs the module on the whole sequence
    if bidirectional:
        with pytest.raises(UnsupportedError):
            layer.stream(N)
        return
    stream = layer.stream(N)
    stream.state = hx
    steps = [stream.step(x[:, t] if batch_first else x[t]).copy() for t in range(T)]
    out, h = torch_run(m, x, hx)
    got = np.stack(steps, axis=1 if batch_first else 0)
    assert_close(got, out, dtype, "stream out")
    state = stream.state
    if isinstance(h, tuple):
        assert_close(state[0], h[0], dtype, "stream h")
        assert_close(state[1], h[1], dtype, "stream c")
    else:
        assert_close(state, h, dtype, "stream h")


# --------------------------------------------------------------------------------------------------
# the grid, from state dicts and files: identical parameters, identical results
# --------------------------------------------------------------------------------------------------
SOURCES = ["state_dict", "numpy_dict", "torch_zip", "torch_legacy", "safetensors"]


def make_source(kind, m, tmp_path):
    sd = m.state_dict()
    if kind == "state_dict":
        return sd
    if kind == "numpy_dict":
        return module_params(m)
    path = tmp_path / f"ckpt.{'safetensors' if kind == 'safetensors' else 'pt'}"
    if kind == "torch_zip":
        torch.save(sd, path)
    elif kind == "torch_legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        write_safetensors(path, module_params(m))
    return str(path)


@pytest.mark.parametrize("source", SOURCES)
@GRID
def test_sources_grid(cell, num_layers, bidirectional, bias, batch_first, dtype, source, tmp_path):
    m = make_module(cell, num_layers, bidirectional, bias, batch_first, dtype)
    layer = from_torch(make_source(source, m, tmp_path), **hints_for(m))
    assert layer.config() == from_torch(m).config()
    assert_params_equal(layer, m, dtype)
    rng = np.random.default_rng(_seed("src", cell, num_layers, bidirectional, bias, batch_first))
    x = random_input(m, rng, dtype)
    hx = random_state(m, rng, dtype)
    lengths = np.array([T, 3, 1])
    assert_same(layer, layer(x, hx, lengths=lengths), torch_run(m, x, hx, lengths), source)


def test_hints_default_when_state_dict_does_not_say():
    m = make_module("RNN_RELU", batch_first=True)
    layer = from_torch(m.state_dict())
    assert layer.nonlinearity == "tanh" and layer.batch_first is False  # not recorded: defaults
    layer = from_torch(m.state_dict(), nonlinearity="ReLU", batch_first=True)
    assert layer.nonlinearity == "relu" and layer.batch_first is True


def test_batch_first_hint_overrides_module_and_nonlinearity_must_agree():
    m = make_module("RNN_RELU", batch_first=False)
    assert from_torch(m, batch_first=True).batch_first is True
    assert from_torch(m, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ArgumentError, match="contradicts"):
        from_torch(m, nonlinearity="tanh")
    with pytest.raises(ArgumentError, match="RNN only"):
        from_torch(make_module("GRU").state_dict(), nonlinearity="relu")
    with pytest.raises(ArgumentError, match="'tanh' or 'relu'"):
        from_torch(m.state_dict(), nonlinearity="sigmoid")
    # a hint other than None is taken by its truth value, as the layers take batch_first
    assert from_torch(m.state_dict(), batch_first=1).batch_first is True
    assert from_torch(m, batch_first=0).batch_first is False
    with pytest.raises(ArgumentError, match="batch_first"):
        from_torch(m.state_dict(), batch_first=np.array([1, 0]))


def test_dtype_hint():
    m = make_module("LSTM", dtype=np.float64)
    assert from_torch(m).dtype == np.float64
    layer = from_torch(m, dtype=np.float32)
    assert layer.dtype == np.float32
    rng = np.random.default_rng(0)
    x = random_input(m, rng, np.float64)
    out, _ = torch_run(m, x)
    np.testing.assert_allclose(layer(x.astype(np.float32))[0], out, atol=1e-5, rtol=1e-5)
    for bad in (np.int32, "(2,3", "(-1,)f4"):  # numpy parses the strings as Python
        with pytest.raises(ArgumentError, match="float32 or float64"):
            from_torch(m, dtype=bad)


# --------------------------------------------------------------------------------------------------
# half precision
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("source", ["module", "state_dict", "torch_zip", "torch_legacy", "safetensors"])
@pytest.mark.parametrize("cell", ["GRU", "LSTM_PROJ"])
def test_half_precision_is_widened(cell, source, half, tmp_path):
    hdt = getattr(torch, half)
    m32 = make_module(cell, num_layers=2, bidirectional=True, dtype=np.float32)
    mh = make_module(cell, num_layers=2, bidirectional=True, dtype=np.float32).to(hdt)
    # the float32 module holding exactly the half-precision values
    m32.load_state_dict({k: v.float() for k, v in mh.state_dict().items()})
    if source == "module":
        src = mh
    elif source == "state_dict":
        src = mh.state_dict()
    elif source == "safetensors":
        src = str(tmp_path / "h.safetensors")
        write_safetensors(src, {k: v for k, v in mh.state_dict().items()})
    else:
        src = str(tmp_path / "h.pt")
        torch.save(mh.state_dict(), src, _use_new_zipfile_serialization=source == "torch_zip")
    layer = from_torch(src)
    assert layer.dtype == np.float32
    assert_params_equal(layer, m32, np.float32)
    x = random_input(m32, np.random.default_rng(1), np.float32)
    assert_same(layer, layer(x), torch_run(m32, x), half)


# --------------------------------------------------------------------------------------------------
# prefixes, wrappers, containers
# --------------------------------------------------------------------------------------------------
class Seq2Seq(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(I, I)
        self.encoder = torch.nn.Module()
        self.encoder.rnn = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
        self.decoder = torch.nn.Module()
        self.decoder.rnn = torch.nn.GRU(I, H, batch_first=True)
        self.head = torch.nn.Linear(H, 2)


def test_prefix_picks_a_group_and_errors_list_them():
    torch.manual_seed(0)
    model = Seq2Seq()
    sd = model.state_dict()
    with pytest.raises(ArgumentError) as err:
        from_torch(sd)
    assert "'decoder.rnn.'" in str(err.value) and "'encoder.rnn.'" in str(err.value)
    assert "prefix" in str(err.value)
    enc = from_torch(sd, prefix="encoder.rnn")
    assert enc.mode == "LSTM" and enc.bidirectional and enc.num_layers == 2
    np.testing.assert_array_equal(enc.state_dict()["weight_hh_l1_reverse"],
                                  sd["encoder.rnn.weight_hh_l1_reverse"].numpy())
    dec = from_torch(sd, prefix="decoder.rnn.", batch_first=True)
    assert dec.mode == "GRU"
    with pytest.raises(ArgumentError, match="several"):
        from_torch(sd, prefix="rnn.")
    with pytest.raises(ArgumentError, match="prefixes found"):
        from_torch(sd, prefix="nope.")
    # a module containing several RNNs: same selection by attribute path
    assert from_torch(model, prefix="decoder.rnn").batch_first is True
    with pytest.raises(ArgumentError, match="encoder.rnn"):
        from_torch(model)
    with pytest.raises(ArgumentError, match="no nn.RNN"):
        from_torch(torch.nn.Linear(2, 2))


def test_module_wrapper_ddp_and_lightning_checkpoints(tmp_path):
    torch.manual_seed(1)
    m = make_module("LSTM", num_layers=2)
    sd = m.state_dict()
    ddp = {f"module.rnn.{k}": v for k, v in sd.items()}
    ddp["module.head.weight"] = torch.zeros(2, H)
    assert_params_equal(from_torch(ddp), m, np.float64)
    assert_params_equal(from_torch(ddp, prefix="rnn."), m, np.float64)
    assert_params_equal(from_torch(ddp, prefix="module.rnn."), m, np.float64)
    # {"state_dict": ...}, {"model": ...} and a Lightning checkpoint with optimizer state
    lightning = {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.encoder.{k}": v for k, v in sd.items()},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [], "callbacks": {}, "hyper_parameters": {"hidden": H},
    }
    for i, ckpt in enumerate([{"state_dict": sd}, {"model": sd, "optimizer": {}}, lightning]):
        path = tmp_path / f"c{i}.ckpt"
        torch.save(ckpt, path)
        assert_params_equal(from_torch(str(path)), m, np.float64)
        assert_params_equal(from_torch(ckpt), m, np.float64)
    assert_params_equal(from_torch(str(tmp_path / "c2.ckpt"), prefix="model.encoder"), m, np.float64)
    # two copies of the same weights (model + EMA) are two groups: ambiguity is an error
    both = {"model": sd, "ema": sd}
    with pytest.raises(ArgumentError, match="'ema.'.*'model.'"):
        from_torch(both)
    assert_params_equal(from_torch(both, prefix="ema"), m, np.float64)


def test_parametrized_module_converts_its_effective_weights():
    m = make_module("GRU", dtype=np.float32)
    torch.nn.utils.parametrizations.weight_norm(m, name="weight_hh_l0")
    layer = from_torch(m)
    np.testing.assert_allclose(layer.state_dict()["weight_hh_l0"], m.weight_hh_l0.detach().numpy())
    x = random_input(m, np.random.default_rng(2), np.float32)
    assert_same(layer, layer(x), torch_run(m, x))
    # its state dict stores weight_norm's parts (original0, original1): computed the same way
    assert_same(layer, from_torch(m.state_dict())(x), torch_run(m, x))


# --------------------------------------------------------------------------------------------------
# clear errors for bad state dicts
# --------------------------------------------------------------------------------------------------
def _lstm_sd():
    m = make_module("LSTM", num_layers=2, bidirectional=True)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_unknown_key_is_an_error():
    sd = _lstm_sd()
    sd["weight_ih_l0_revers"] = sd["weight_ih_l0_reverse"]
    with pytest.raises(FormatError, match="weight_ih_l0_revers"):
        from_torch(sd)
    sd = _lstm_sd()
    sd["weight_hh_l0_g"] = torch.ones(4 * H, 1)
    with pytest.raises(FormatError, match="weight_norm"):
        from_torch(sd)


def test_layer_numbers_are_ascii_digits_int_can_read():
    """A layer number of non-ASCII digits (not layer 0) or of more digits than int() converts
    (not Python's own ValueError) makes a name torch never writes: a FormatError."""
    for digits in ("\u0660", "9" * 5000):
        sd = {"weight_ih_l" + digits: np.zeros((H, I)), "weight_hh_l" + digits: np.zeros((H, H))}
        with pytest.raises(FormatError, match="no torch RNN"):
            from_torch(sd)
        assert inspect_torch(sd) == []
        with pytest.raises(FormatError, match="unknown parameter"):
            infer_architecture(sd)
        gru = dict(make_module("GRU").state_dict(), **sd)
        with pytest.raises(FormatError, match="unknown tensors"):
            from_torch(gru)


_LONG = "k" * 10_000  # a key of 10,000 characters


def _gru_weights(prefix=""):
    return {prefix + k: v.detach().numpy() for k, v in make_module("GRU").state_dict().items()}


def _weight_norm_parts_that_disagree():
    sd = _gru_weights(_LONG + ".")
    v = sd.pop(_LONG + ".weight_hh_l0")  # (12, 4): a magnitude g must be (12, 1) or (1, 4)
    return dict(sd, **{_LONG + ".weight_hh_l0_g": np.ones((12, 2)), _LONG + ".weight_hh_l0_v": v})


@pytest.mark.parametrize("convert,error,expected", [
    (lambda: from_torch(dict(_gru_weights(), **{"weight_ih_l" + "7" * 5000: np.zeros(1)})),
     FormatError, ["weight_ih_l777", "...(5011 chars)...", "hold only weight_ih_l{k}[_reverse]"]),
    (lambda: from_torch({_LONG: np.zeros(1)}), FormatError,
     ["...(10000 chars)...", "names like 'weight_ih_l0'"]),
    (lambda: infer_architecture({_LONG: np.zeros(1)}), FormatError,
     ["unknown parameter", "...(10000 chars)..."]),
    (lambda: from_torch(dict(_gru_weights(_LONG + "."), **{_LONG + ".bias_hh_l0": np.zeros(2)})),
     ShapeError, ["...(10001 chars)...", "bias_hh_l0 has shape (2,), expected (12,) for a GRU"]),
    (lambda: from_torch({**_gru_weights(_LONG + "a."), **_gru_weights(_LONG + "b.")}),
     ArgumentError, ["...(10002 chars)...kkkkkkkkkkkkkkkkkka.'", "pick one with prefix="]),
    (lambda: from_torch({f"{i}{_LONG[:100]}.{k}": v for i in range(1000)
                         for k, v in _gru_weights().items()}, prefix="rnn."),
     ArgumentError, ["'0kkk", "...(102 chars)...", ", ... (1000 in all)"]),
    (lambda: from_torch({f"weight_{kind}_l{i}": np.zeros((3 * H, H)) for i in range(1000)
                         for kind in ("ih", "hh")} | {"weight_ih_l2000": np.zeros((3 * H, H))}),
     FormatError, ["numbered [0, 1, 2, 3, 4, 5, 6, 7, ... (1001 in all)], expected 0..1000"]),
    (lambda: from_torch({"weight_ih_l" + str(i): np.zeros((3 * H, I)) for i in range(1000)}),
     FormatError, ["missing ['weight_hh_l0', 'weight_hh_l1', ", ", ... (1000 in all)]"]),
    (lambda: from_torch(_weight_norm_parts_that_disagree()), ShapeError,
     ["...(10015 chars)...kkkkk.weight_hh_l0_g has shape (12, 2)", "as weight_norm's magnitude"]),
    (lambda: from_torch(dict(_gru_weights(_LONG + "."),
                             **{_LONG + ".parametrizations.weight_hh_l0.original": np.zeros(1)})),
     UnsupportedError, ["...(10039 chars)...", "remove the parametrization"]),
    (lambda: from_torch_composite({f"{i}{_LONG}.weight": np.zeros((2, 2)) for i in range(100)},
                                  embedding="emb", rnn="rnn"),
     ArgumentError, ["no tensor 'emb.weight'", "...(10001 chars)...", "(100 in all)"]),
], ids=["layer-digits", "no-rnn", "infer", "shape", "two-groups", "many-groups", "layer-numbers",
        "missing", "weight-norm", "parametrized", "composite"])
def test_messages_show_long_names_briefly(convert, error, expected):
    """A key from the file goes into a message as its first 60 and last 20 characters and its
    length, and a list of them as its first few and their count: a 5,000-digit layer number made
    a message of 5 KB, a key of 10,000 characters one of 10 to 20 KB, 1,000 groups one of 108 KB,
    the 100 parts of a composite model one of 1 MB."""
    with pytest.raises(error) as err:
        convert()
    message = str(err.value)
    assert len(message) < 500, message[:1000]
    for piece in expected:
        assert piece in message, (piece, message)


def test_unreadable_weights_are_refused_with_the_reason(tmp_path):
    """Weights the file reader cannot read (an LSTM saved from the meta device) are refused with
    the reader's reason, not a shape error about the placeholder they are read as."""
    with torch.device("meta"):
        m = torch.nn.LSTM(I, H)
    path = tmp_path / "meta.pt"
    torch.save(m.state_dict(), path)
    with pytest.raises(UnsupportedError, match="weight_ih_l0: meta"):
        from_torch(str(path))
    assert "weight_ih_l0: meta" in inspect_torch(str(path))[0]["error"]


def test_missing_and_inconsistent_keys():
    sd = _lstm_sd()
    del sd["bias_hh_l1_reverse"]
    with pytest.raises(FormatError, match="bias_hh_l1_reverse"):
        from_torch(sd)
    sd = _lstm_sd()
    del sd["weight_ih_l1"]
    with pytest.raises(FormatError, match="missing.*weight_ih_l1"):
        from_torch(sd)
    sd = {k.replace("_l1", "_l2"): v for k, v in _lstm_sd().items()}
    with pytest.raises(FormatError, match=r"numbered \[0, 2\]"):
        from_torch(sd)


@pytest.mark.parametrize("name,shape,match", [
    ("weight_hh_l1", (4 * H, H + 1), r"weight_hh_l1 has shape \(16, 5\), expected \(16, 4\)"),
    ("weight_ih_l1_reverse", (4 * H, H), r"expected \(16, 8\)"),
    ("bias_ih_l0", (4 * H, 1), "2-D"),
    ("bias_hh_l0", (3 * H,), r"expected \(16,\)"),
])
def test_shape_mismatch(name, shape, match):
    sd = _lstm_sd()
    sd[name] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ShapeError, match=match):
        from_torch(sd)


def test_gate_count_and_projection_checks():
    with pytest.raises(ShapeError, match="gate blocks"):
        from_torch({"weight_ih_l0": np.zeros((2 * H, I)), "weight_hh_l0": np.zeros((2 * H, H))})
    gru = make_module("GRU").state_dict()
    gru["weight_hr_l0"] = torch.zeros(P, H, dtype=torch.float64)
    with pytest.raises(ShapeError):
        from_torch(gru)


def test_non_float_weights_and_non_tensor_sources():
    sd = {k: v.detach().numpy() for k, v in make_module("RNN_TANH").state_dict().items()}
    sd["weight_ih_l0"] = sd["weight_ih_l0"].astype(np.int64)
    with pytest.raises(DTypeError, match="weight_ih_l0"):
        from_torch(sd)
    with pytest.raises(ArgumentError, match="expects"):
        from_torch(42)


def test_cells_and_non_rnn_state_dicts_are_named():
    with pytest.raises(UnsupportedError, match="LSTMCell"):
        from_torch(torch.nn.LSTMCell(I, H).state_dict())
    with pytest.raises(FormatError, match="no torch RNN"):
        from_torch(torch.nn.Linear(I, H).state_dict())


def test_errors_are_value_errors():
    for exc in (FormatError, ShapeError, ArgumentError, UnsupportedError):
        assert issubclass(exc, ValueError)


# --------------------------------------------------------------------------------------------------
# files: convert_file, inspect_torch, no torch needed
# --------------------------------------------------------------------------------------------------
def test_convert_file_round_trip(tmp_path):
    m = make_module("LSTM_PROJ", num_layers=2, bidirectional=True, batch_first=True, dtype=np.float32)
    src = tmp_path / "m.pt"
    torch.save({"state_dict": m.state_dict(), "epoch": 1}, src)
    out = tmp_path / "m.frnn"
    layer = convert_file(src, out, batch_first=True)
    loaded = fastrnn.load(out)
    assert loaded.config() == layer.config()
    x = random_input(m, np.random.default_rng(3), np.float32)
    assert_same(loaded, loaded(x), torch_run(m, x), "loaded")


def test_inspect_torch_lists_groups_without_reading_data(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "s2s.pt"
    torch.save(Seq2Seq().state_dict(), path)
    groups = {g["prefix"]: g for g in inspect_torch(str(path))}
    assert set(groups) == {"encoder.rnn.", "decoder.rnn."}
    enc = groups["encoder.rnn."]
    assert (enc["mode"], enc["num_layers"], enc["bidirectional"], enc["hidden_size"]) == ("LSTM", 2, True, H)
    assert enc["source_dtypes"] == ["float32"]
    assert groups["decoder.rnn."]["mode"] == "GRU"


def test_files_convert_without_torch(tmp_path):
    m = make_module("GRU", num_layers=2, dtype=np.float32)
    pt, st, leg = tmp_path / "m.pt", tmp_path / "m.safetensors", tmp_path / "leg.pt"
    torch.save({"model": m.state_dict()}, pt)
    torch.save(m.state_dict(), leg, _use_new_zipfile_serialization=False)
    write_safetensors(st, module_params(m))
    out = tmp_path / "m.frnn"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import converters, numpy as np\n"
        f"a = converters.from_torch({str(pt)!r}); b = converters.from_torch({str(st)!r})\n"
        f"c = converters.from_torch({str(leg)!r})\n"
        "for k, v in a.state_dict().items():\n"
        "    assert np.array_equal(v, b.state_dict()[k]) and np.array_equal(v, c.state_dict()[k])\n"
        f"from converters.torch_convert import convert_file; convert_file({str(pt)!r}, {str(out)!r})\n"
        "print('ok', a.mode)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ok GRU" in res.stdout
    assert_params_equal(fastrnn.load(out), m, np.float32)


def test_cli_convert_and_inspect_without_torch(tmp_path):
    m = make_module("LSTM", num_layers=2, bidirectional=True, dtype=np.float32)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.rnn.{k}": v for k, v in m.state_dict().items()}}, ckpt)
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"evil": Evil()}, evil)
    out = tmp_path / "m.frnn"

    def cli(*argv):
        code = ("import sys; sys.modules['torch'] = None\n"
                f"from fastrnn.cli import main; sys.exit(main({list(map(str, argv))!r}))")
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    res = cli("convert", ckpt, "-o", out, "--batch-first", "--prefix", "rnn")
    assert res.returncode == 0, res.stderr
    res = cli("inspect", out)
    assert res.returncode == 0, res.stderr
    assert "LSTM" in res.stdout
    layer = fastrnn.load(out)
    assert layer.batch_first and layer.bidirectional and layer.num_layers == 2
    assert_params_equal(layer, m, np.float32)
    res = cli("convert", evil, "-o", tmp_path / "evil.frnn")
    assert res.returncode != 0 and "system" in res.stderr
    assert not marker.exists() and not (tmp_path / "evil.frnn").exists()


def test_package_import_is_lazy():
    code = "import sys, converters; assert 'torch' not in sys.modules; print(converters.from_torch.__name__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert converters.from_torch is from_torch


# --------------------------------------------------------------------------------------------------
# composite models: converters.torch_composite (the task tests in tests/test_tasks.py)
# --------------------------------------------------------------------------------------------------
class EmbedRecurHead(torch.nn.Module):
    """nn.Embedding -> GRU -> nn.Linear, the last step's output scored."""

    def __init__(self, vocab=7, out=2, head_bias=True, dtype=torch.float32, **embedding):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, I, dtype=dtype, **embedding)
        self.rnn = torch.nn.GRU(I, H, batch_first=True, dtype=dtype)
        self.fc = torch.nn.Linear(H, out, bias=head_bias, dtype=dtype)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(torch.from_numpy(ids)))
        return self.fc(out[:, -1])


def _composite(src, **kw):
    return from_torch_composite(src, embedding="emb", rnn="rnn", head="fc", task="sequential",
                                pool="last", batch_first=True, **kw)


def _torch_scores(net, ids):
    with torch.no_grad():
        return net(ids).numpy()


def test_composite_head_bias_is_the_one_beside_its_weight():
    """A bias-less head took the bias of another part whose name ends like it (aux.fc.bias)."""
    torch.manual_seed(_seed("head bias"))
    net = EmbedRecurHead(head_bias=False).eval()
    net.aux = torch.nn.Module()
    net.aux.fc = torch.nn.Linear(H, 2)
    ids = np.random.default_rng(0).integers(0, 7, (3, T))
    want = _torch_scores(net, ids)
    sd = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("aux.")}
    sd["aux.fc.bias"] = net.aux.fc.bias.detach()  # found by a suffix match of "fc.bias"
    for src in (net, net.state_dict(), sd):
        model = _composite(src)
        assert model.stages()[-1].bias is False
        np.testing.assert_allclose(model(ids), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_embedding_max_norm_rows_are_renormalised_as_torch_looks_them_up(norm_type, dtype):
    torch.manual_seed(_seed("max_norm", norm_type, str(dtype)))
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    net = EmbedRecurHead(max_norm=1.5, norm_type=norm_type, dtype=tdt).eval()
    with torch.no_grad():
        net.emb.weight[::2] *= 4.0  # every other row over max_norm, the rest (mostly) within
    norms = torch.linalg.vector_norm(net.emb.weight.detach(), ord=norm_type, dim=1)
    assert (norms > 1.5).any() and (norms < 1.5).any()
    before = net.emb.weight.detach().clone()
    wrapper = torch.nn.Module()
    wrapper.net = net  # the parts found by suffix ("emb" -> "net.emb"): max_norm still read
    models = [_composite(net), _composite(wrapper)]
    assert torch.equal(net.emb.weight, before)  # converting leaves the module as it was
    ids = np.random.default_rng(1).integers(0, 7, (4, T))
    ids[0, :] = np.arange(T)
    want = _torch_scores(net, ids)  # torch renormalises the rows it looks up, in place
    with torch.no_grad():
        looked_up = net.emb(torch.from_numpy(np.arange(7))).numpy()
    for model in models:
        np.testing.assert_allclose(model.stages()[0].weight, looked_up, rtol=TOL[np.dtype(dtype)],
                                   atol=TOL[np.dtype(dtype)])
        assert_close(model(ids), want, dtype, f"norm_type={norm_type}")


def test_composite_reads_only_the_tensors_it_uses(tmp_path, monkeypatch):
    """A checkpoint file was read whole: a tensor fastrnn cannot read (a sparse buffer) failed the
    conversion, and an optimizer's state was read for nothing."""
    torch.manual_seed(_seed("lazy composite"))
    net = EmbedRecurHead(out=7).eval()  # a head over the vocabulary: a Seq2Seq's too
    path = tmp_path / "train.pt"
    torch.save({"model": net.state_dict(), "extra": {"adjacency": torch.eye(3).to_sparse()},
                "optimizer": {"exp_avg": torch.zeros(999)}}, path)
    read = []
    read_data = TensorRef.numpy
    monkeypatch.setattr(TensorRef, "numpy", lambda ref: read.append(ref.shape) or read_data(ref))
    model = _composite(str(path))
    assert (999,) not in read and len(read) == len(net.state_dict())
    ids = np.random.default_rng(2).integers(0, 7, (3, T))
    np.testing.assert_allclose(model(ids), _torch_scores(net, ids), rtol=1e-5, atol=1e-5)
    s2s = seq2seq_from_torch(str(path), source="emb", encoder="rnn", target="emb", decoder="rnn",
                             head="fc", bos=0, eos=1, batch_first=True)
    np.testing.assert_array_equal(s2s.heads[0].state_dict()["weight"], net.fc.weight.detach())


def test_head_activation_is_a_name_or_a_list_of_names():
    net = EmbedRecurHead()
    for bad in (5, b"softmax", {"fc": "softmax"}):
        with pytest.raises(ArgumentError, match="head_activation must be"):
            _composite(net, head_activation=bad)


def test_prefix_is_not_taken_with_composite_arguments():
    """prefix= was ignored when parts were named: a prefix naming nothing converted silently."""
    net = EmbedRecurHead()
    with pytest.raises(ArgumentError, match="prefix"):
        converters.from_torch(net.state_dict(), prefix="nothere.", rnn="rnn", head="fc")
    with pytest.raises(ArgumentError, match="prefix"):
        converters.from_torch(net, prefix="rnn", embedding="emb", rnn="rnn")
