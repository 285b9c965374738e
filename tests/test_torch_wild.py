"""converters.from_torch on checkpoints as users have them, each saved with torch and read back
through the file path (no torch in the reading path) and, where it makes sense, in memory.

Training checkpoints (optimizer state, Lightning with omegaconf configs, paths and AttributeDict
hyper-parameters, DataParallel, torch.compile), whole pickled
modules, half / bfloat16 / float64 tensors, views sharing one storage, the legacy format,
weight_norm / spectral_norm (both APIs) in state dicts and modules, quantized LSTMs, constructor
options, several RNNs in one checkpoint, composite models behind DataParallel. Outputs must
equal torch's on the same input (float32, 1e-5) or the error must be typed and say what to do.
"""
from __future__ import annotations

import argparse
import collections
import copy
import pathlib
import sys
import types
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="these tests build checkpoints with torch")
from torch.nn.utils import parametrizations  # noqa: E402

from converters.torch_composite import from_torch_composite  # noqa: E402
from converters.torch_convert import from_torch, inspect_torch  # noqa: E402
from fastrnn.errors import ArgumentError, FormatError, UnsafeFileError, UnsupportedError  # noqa: E402

I, H, T, N = 3, 4, 5, 2
TOL = 1e-5


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x))[0].numpy()


def assert_matches(layer, m, x):
    np.testing.assert_allclose(layer(x)[0], torch_out(m, x), rtol=TOL, atol=TOL)


def inputs(batch_first=False, seed=0):
    x = np.random.default_rng(seed).standard_normal((T, N, I)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(1, 0, 2)) if batch_first else x


def saved(tmp_path, obj, name="c.pt", **kw):
    path = tmp_path / name
    torch.save(obj, path, **kw)
    return str(path)


class Net(torch.nn.Module):
    def __init__(self, rnn=None):
        super().__init__()
        self.emb = torch.nn.Embedding(10, I)
        self.rnn = rnn if rnn is not None else torch.nn.LSTM(I, H)
        self.fc = torch.nn.Linear(H, 2)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0])


def trained_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H)
    opt = torch.optim.Adam(lstm.parameters())
    lstm(torch.randn(T, N, I))[0].sum().backward()
    opt.step()
    return lstm, opt


# --------------------------------------------------------------------------------------------------
# checkpoints that wrap the state dict
# --------------------------------------------------------------------------------------------------
def test_training_checkpoints(tmp_path):
    lstm, opt = trained_lstm()
    net = Net(lstm)
    plain = {"state_dict": net.state_dict(), "epoch": 3, "optimizer": opt.state_dict()}
    lightning = {
        "epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
        "hyper_parameters": {"hidden": H, "lr": 1e-3},
    }
    data_parallel = torch.nn.DataParallel(net).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(net).state_dict()
    assert next(iter(compiled)).startswith("_orig_mod.")
    x = inputs()
    for i, ckpt in enumerate([plain, lightning, data_parallel, compiled]):
        assert_matches(from_torch(saved(tmp_path, ckpt, f"c{i}.ckpt")), lstm, x)
        assert_matches(from_torch(ckpt), lstm, x)
        assert_matches(from_torch(saved(tmp_path, ckpt, f"c{i}.ckpt"), prefix="rnn"), lstm, x)


def test_whole_pickled_module_is_refused_unrun(tmp_path):
    for obj in (torch.nn.LSTM(I, H), torch.nn.Sequential(torch.nn.LSTM(I, H))):
        with pytest.raises(UnsafeFileError, match=r"state_dict\(\)"):
            from_torch(saved(tmp_path, obj))


# --------------------------------------------------------------------------------------------------
# tensor kinds
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_bfloat16_and_double_weights(tmp_path, dtype):
    torch.manual_seed(1)
    m = torch.nn.GRU(I, H, num_layers=2).to(dtype)
    reference = copy.deepcopy(m).float()  # the same (rounded) weights, run in float32
    x = inputs()
    for src in (saved(tmp_path, m.state_dict()),
                saved(tmp_path, m.state_dict(), "legacy.pt", _use_new_zipfile_serialization=False),
                m.state_dict(), m):
        layer = from_torch(src)
        assert layer.dtype == (np.float64 if dtype == torch.float64 else np.float32)
        assert_matches(layer, reference, x)


def test_views_sharing_one_storage(tmp_path):
    """Transposed, strided and offset views of one storage, as parameters_to_vector users save."""
    torch.manual_seed(2)
    m = torch.nn.LSTM(I, H, bidirectional=True)
    pool = torch.randn(4000)
    views, flat_slices, start = {}, {}, 11
    vector = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
    offset = 0
    for name, v in m.state_dict().items():
        n = v.numel()
        if v.dim() == 2:
            base = pool[start:start + n].view(v.shape[1], v.shape[0])
            base.copy_(v.t())
            views[name] = base.t()
        else:
            views[name] = pool[start:start + 2 * n:2]
            views[name].copy_(v)
        flat_slices[name] = vector[offset:offset + n].view(v.shape)
        start, offset = start + 2 * n + 3, offset + n
    assert not views["weight_hh_l0"].is_contiguous()
    x = inputs()
    for sd in (views, flat_slices):
        assert_matches(from_torch(saved(tmp_path, sd)), m, x)
        assert_matches(from_torch(saved(tmp_path, sd, "l.pt", _use_new_zipfile_serialization=False)),
                       m, x)
        assert_matches(from_torch(sd), m, x)


# --------------------------------------------------------------------------------------------------
# weight_norm / spectral_norm
# --------------------------------------------------------------------------------------------------
def _with_norms(kind, steps=3):
    """An LSTM whose weight_hh_l0 and weight_ih_l1 carry a reparametrization, run ``steps``
    times in training mode (spectral_norm's vectors move), then in eval mode."""
    torch.manual_seed(3)
    m = torch.nn.LSTM(I, H, num_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        for name in ("weight_hh_l0", "weight_ih_l1"):
            {"parametrized weight_norm": parametrizations.weight_norm,
             "parametrized spectral_norm": parametrizations.spectral_norm,
             "weight_norm": torch.nn.utils.weight_norm,
             "spectral_norm": torch.nn.utils.spectral_norm}[kind](m, name)
    for _ in range(steps):
        m(torch.randn(T, N, I))
    return m.eval()


NORMS = ["parametrized weight_norm", "parametrized spectral_norm", "weight_norm", "spectral_norm"]


@pytest.mark.parametrize("kind", NORMS)
def test_normalized_weights_in_state_dicts_are_computed(tmp_path, kind):
    m = _with_norms(kind)
    x = inputs()
    assert "weight_hh_l0" not in m.state_dict()
    assert_matches(from_torch(saved(tmp_path, m.state_dict())), m, x)
    assert_matches(from_torch(m.state_dict()), m, x)
    net = torch.nn.Sequential(torch.nn.Linear(I, I), m)
    assert_matches(from_torch(saved(tmp_path, {"model": net.state_dict()}), prefix="1"), m, x)
    [group] = inspect_torch(saved(tmp_path, m.state_dict()))
    assert (group["mode"], group["num_layers"]) == ("LSTM", 2)


@pytest.mark.parametrize("kind", NORMS)
def test_normalized_module_converts_what_its_forward_uses(kind):
    """The hook-based APIs set the weight attribute only in a forward pre-hook: spectral_norm's
    is the raw weight before the first forward, and after load_state_dict both are stale."""
    x = inputs()
    untouched = _with_norms(kind, steps=0)
    assert_matches(from_torch(untouched), untouched, x)
    m = _with_norms(kind)
    m.load_state_dict({k: v + torch.randn_like(v) for k, v in m.state_dict().items()})
    assert_matches(from_torch(m), m, x)


def test_training_mode_spectral_norm_module_is_left_unchanged():
    m = _with_norms("parametrized spectral_norm").train()
    u = m.parametrizations.weight_hh_l0[0]._u.clone()
    layer = from_torch(m)
    assert m.training and torch.equal(m.parametrizations.weight_hh_l0[0]._u, u)
    assert_matches(layer, m.eval(), inputs())


@pytest.mark.parametrize("dim", [None, 1])
def test_weight_norm_over_other_dims(tmp_path, dim):
    torch.manual_seed(4)
    m = torch.nn.GRU(I, H)
    parametrizations.weight_norm(m, "weight_hh_l0", dim=dim)
    assert_matches(from_torch(saved(tmp_path, m.state_dict())), m, inputs())


def test_unknown_parametrization_and_partial_parts_are_refused(tmp_path):
    m = torch.nn.GRU(I, H)
    parametrizations.orthogonal(m, "weight_ih_l0")
    with pytest.raises(UnsupportedError, match="remove_parametrizations"):
        from_torch(saved(tmp_path, m.state_dict()))
    sd = dict(_with_norms("spectral_norm").state_dict())
    del sd["weight_hh_l0_u"]
    with pytest.raises(FormatError, match="weight_hh_l0_orig.*remove_spectral_norm"):
        from_torch(sd)


# --------------------------------------------------------------------------------------------------
# quantized LSTMs
# --------------------------------------------------------------------------------------------------
def test_quantized_dynamic_lstm_is_unsupported(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.LSTM(I, H)),
                                                   {torch.nn.LSTM}, dtype=torch.qint8)
    for src in (q, q[0], q.state_dict()):
        with pytest.raises(UnsupportedError, match="quantized.*float model"):
            from_torch(src)
    with pytest.raises(UnsupportedError, match="quantized"):
        from_torch_composite(q, rnn="0")
    path = saved(tmp_path, q.state_dict())
    with pytest.raises(UnsupportedError, match="ScriptObject.*quantized.*float model") as info:
        from_torch(path)
    assert isinstance(info.value, UnsafeFileError)  # refused unread, as every unknown global


def test_a_float_lstm_beside_a_quantized_one_is_chosen_by_prefix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.LSTM(I, H)),
                                                   {torch.nn.LSTM})
    float_lstm = torch.nn.LSTM(I, H)
    both = torch.nn.ModuleDict({"fast": q[0], "exact": float_lstm})
    with pytest.raises(ArgumentError, match="'exact.', 'fast.'"):
        from_torch(both)
    assert_matches(from_torch(both, prefix="exact"), float_lstm, inputs())
    with pytest.raises(UnsupportedError, match="fast is a .*quantized"):
        from_torch(both, prefix="fast")


# --------------------------------------------------------------------------------------------------
# constructor options, nesting, several RNNs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, hints", [
    (lambda: torch.nn.LSTM(I, 6, num_layers=2, proj_size=2, bidirectional=True), {}),
    (lambda: torch.nn.LSTM(I, H, num_layers=2, bias=False), {}),
    (lambda: torch.nn.GRU(I, H, batch_first=True), {"batch_first": True}),
    (lambda: torch.nn.RNN(I, H, nonlinearity="relu", num_layers=2, bidirectional=True),
     {"nonlinearity": "relu"}),
], ids=["lstm-proj-bi", "lstm-nobias", "gru-batch-first", "rnn-relu-bi"])
def test_constructor_options_from_files(tmp_path, make, hints):
    torch.manual_seed(5)
    m = make()
    x = inputs(m.batch_first)
    assert_matches(from_torch(saved(tmp_path, m.state_dict()), **hints), m, x)
    assert_matches(from_torch(saved(tmp_path, m.state_dict(), "l.pt",
                                    _use_new_zipfile_serialization=False), **hints), m, x)
    assert_matches(from_torch(torch.nn.Sequential(torch.nn.Identity(), m)), m, x)


class TwoRNNs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.GRU(I, H)
        self.dec = torch.nn.LSTM(I, H)
        self.ema = torch.nn.ModuleDict({"enc": torch.nn.GRU(I, H)})


def test_several_rnns_in_one_checkpoint(tmp_path):
    torch.manual_seed(6)
    t = TwoRNNs()
    x = inputs()
    for src in (saved(tmp_path, {"model": t.state_dict(), "epoch": 1}),
                saved(tmp_path, torch.nn.DataParallel(t).state_dict(), "dp.pt"), t):
        with pytest.raises(ArgumentError, match=r"'(model\.|module\.)?dec\.', "
                                                r"'(model\.|module\.)?ema\.enc\.'"):
            from_torch(src)
        # "enc" is the model's own enc, not ema.enc, behind "model." or "module." as in the module
        assert_matches(from_torch(src, prefix="enc"), t.enc, x)
        assert_matches(from_torch(src, prefix="ema.enc"), t.ema.enc, x)
        assert_matches(from_torch(src, prefix="dec."), t.dec, x)


# --------------------------------------------------------------------------------------------------
# composite models
# --------------------------------------------------------------------------------------------------
def test_composite_behind_data_parallel_keeps_the_module_settings(tmp_path):
    """batch_first and nonlinearity are not in a state dict: read them from the wrapped module."""
    torch.manual_seed(7)
    net = Net(torch.nn.RNN(I, H, batch_first=True, nonlinearity="relu")).eval()
    ids = np.random.default_rng(7).integers(0, 10, (N, T))
    with torch.no_grad():
        want = net(torch.from_numpy(ids)).numpy()
    for src in (net, torch.nn.DataParallel(net)):
        for rnn in ("rnn", "rnn."):  # the part's attribute path or its state dict prefix
            tagger = from_torch_composite(src, embedding="emb", rnn=rnn, head="fc", task="tagger")
            np.testing.assert_allclose(tagger(ids), want, rtol=TOL, atol=TOL)
    path = saved(tmp_path, torch.nn.DataParallel(net).state_dict())
    tagger = from_torch_composite(path, embedding="emb", rnn="rnn", head="fc", task="tagger",
                                  batch_first=True, nonlinearity="relu")
    np.testing.assert_allclose(tagger(ids), want, rtol=TOL, atol=TOL)


def test_composite_part_names_prefer_the_model_over_a_nested_copy(tmp_path):
    torch.manual_seed(8)
    net = Net()
    net.ema = Net()
    ids = np.random.default_rng(8).integers(0, 10, (T, N))
    with torch.no_grad():
        want = net.fc(net.rnn(net.emb(torch.from_numpy(ids)))[0]).numpy()
    path = saved(tmp_path, {"model": net.state_dict()})
    tagger = from_torch_composite(path, embedding="emb", rnn="rnn", head="fc", task="tagger")
    np.testing.assert_allclose(tagger(ids), want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("norm", [parametrizations.weight_norm, parametrizations.spectral_norm])
def test_composite_with_normalized_head_and_rnn(tmp_path, norm):
    torch.manual_seed(9)
    net = Net()
    norm(net.fc, "weight")
    norm(net.rnn, "weight_hh_l0")
    net.eval()
    ids = np.random.default_rng(9).integers(0, 10, (T, N))
    with torch.no_grad():
        want = net(torch.from_numpy(ids)).numpy()
    for src in (net, net.state_dict(), saved(tmp_path, {"state_dict": net.state_dict()})):
        tagger = from_torch_composite(src, embedding="emb", rnn="rnn", head="fc", task="tagger")
        np.testing.assert_allclose(tagger(ids), want, rtol=TOL, atol=TOL)


class UserConfig:
    """A class of the user's own in a checkpoint: refused (its pickle could run its code)."""

    def __init__(self):
        self.hidden = H


def test_checkpoint_with_objects_of_unknown_classes_says_how_to_extract_the_weights(tmp_path):
    lstm = torch.nn.LSTM(I, H)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in lstm.state_dict().items()},
            "hyper_parameters": {"config": UserConfig()}}
    with pytest.raises(UnsafeFileError, match=r"UserConfig.*hyper_parameters.*\['state_dict'\]"):
        from_torch(saved(tmp_path, ckpt))


def _without_module(monkeypatch, package: str) -> None:
    """Make `package` (and its submodules) unimportable: reading the file must not need it."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_lightning_checkpoint_with_an_omegaconf_config_and_paths(tmp_path, monkeypatch):
    """Hydra users' Lightning checkpoints keep an omegaconf DictConfig (nested configs, lists,
    interpolations) as hyper_parameters, often with paths and a Namespace: read as inert data,
    never imported or called (omegaconf unimportable while the file is read)."""
    omegaconf = pytest.importorskip("omegaconf")
    lstm, opt = trained_lstm()
    cfg = omegaconf.OmegaConf.create({
        "model": {"hidden": H, "cell": "lstm", "layers": [1, 2]}, "lr": 1e-3,
        "data": {"root": "/data", "train": "${data.root}/train"}})
    ckpt = {
        "epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in lstm.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "hparams_name": "cfg", "hyper_parameters": cfg,
        "datamodule_hyper_parameters": {
            "root": pathlib.PurePosixPath("/data"), "cache": pathlib.Path("/tmp/cache"),
            "args": argparse.Namespace(batch=32, workers=4),
            "counts": collections.defaultdict(int, {"a": 1})},
    }
    path = saved(tmp_path, ckpt, "last.ckpt")
    _without_module(monkeypatch, "omegaconf")
    assert_matches(from_torch(path), lstm, inputs())
    assert_matches(from_torch(path, prefix="model"), lstm, inputs())


def test_lightning_attribute_dict_hyper_parameters(tmp_path, monkeypatch):
    """Lightning's AttributeDict (a dict subclass) as its pickle names it: read as a plain dict."""
    module = "lightning.fabric.utilities.data"
    parts = module.split(".")
    for k in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:k]), types.ModuleType(".".join(parts[:k])))

    class AttributeDict(dict):
        pass
    AttributeDict.__module__, AttributeDict.__qualname__ = module, "AttributeDict"
    sys.modules[module].AttributeDict = AttributeDict
    lstm = torch.nn.LSTM(I, H)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in lstm.state_dict().items()},
            "hyper_parameters": AttributeDict(hidden=H, lr=1e-3, name="lstm")}
    path = saved(tmp_path, ckpt)
    del sys.modules[module].AttributeDict
    assert_matches(from_torch(path), lstm, inputs())


@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_saved_from_a_gpu(tmp_path, monkeypatch, zip_format):
    """Storages tagged "cuda:0", as torch.save writes a model trained on a GPU."""
    registry = list(torch.serialization._package_registry)
    monkeypatch.setattr(torch.serialization, "_package_registry", registry)
    torch.serialization.register_package(0, lambda storage: "cuda:0", lambda obj, location: None)
    m = torch.nn.GRU(I, H, num_layers=2)
    path = saved(tmp_path, {"model": m.state_dict()},
                 _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:
        assert b"cuda:0" in f.read()
    assert_matches(from_torch(path), m, inputs())
