"""The README's Python examples run as printed, and give what their comments say.

Each ```python block of README.md is executed verbatim in a temporary folder; the blocks that
use the reader's own objects (a trained module, a checkpoint, an ONNX file) get small ones made
here, under the names the block uses. Comments that state a result (shapes, decoded text, the
converted model's outputs) are checked against PyTorch / ONNX Runtime where they name one."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import fastrnn

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _block(first_line: str) -> str:
    """The README block that starts with this line (its place in the README may change)."""
    found = [b for b in BLOCKS if b.startswith(first_line)]
    assert len(found) == 1, f"README has {len(found)} python blocks starting {first_line!r}"
    return found[0]


def test_the_readme_blocks_are_all_covered():
    starts = {b.splitlines()[0] for b in BLOCKS}
    assert starts == {"import numpy as np", "import converters",
                      "import converters, fastrnn"}, starts
    assert len(BLOCKS) == 5


def test_api_tour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = fastrnn.get_num_threads()
    ns = {}
    try:
        exec(_block("import numpy as np\nimport fastrnn\n\nlstm"), ns)
    finally:
        fastrnn.set_num_threads(before)
    lstm, x = ns["lstm"], ns["x"]
    out, (h_n, c_n) = lstm(x)
    assert out.shape == (3, 100, 512) and h_n.shape == c_n.shape == (4, 3, 256)
    assert ns["out"].shape == (50, 128) and ns["h_n"].shape == (1, 128)  # the GRU's, unbatched
    assert ns["y_t"].shape == (1, 128)
    np.testing.assert_array_equal(ns["lstm2"](x)[0], out)
    assert ns["lean"].weight_dtype == np.float16
    assert (tmp_path / "model.frnn").is_file()


def test_sequence_tasks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(_block("import numpy as np\nimport fastrnn\n\n# vocabularies"), ns)
    vocab, ids, lengths = ns["vocab"], ns["ids"], ns["lengths"]
    assert vocab.one_hot("AACG").shape == (4, 4)
    assert ids.shape == (2, 7) and lengths.tolist() == [7, 4]
    assert vocab.decode(ids[1, :lengths[1]]) == "TATA"
    assert ns["probs"].shape == (2, 2)
    assert ns["clf"].predict(ids, lengths=lengths).shape == (2,)
    assert ns["tags"].shape == (2, 7, 5)
    assert capsys.readouterr().out  # the streamed generation printed its symbols
    assert ns["s2s"].translate(["5 March 2021", "Dec 24 1999"]) == ["2021-03-05", "1999-12-24"]
    assert (tmp_path / "clf.frnn").is_file()


def test_from_pytorch_composite(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    vocab = fastrnn.Vocabulary("abcdef", bos="^", eos="$")
    sv, tv = fastrnn.Vocabulary("0123456789"), fastrnn.Vocabulary("xyz", bos="^", eos="$")

    class Net(nn.Module):  # every part the block names, on one module
        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.fc = nn.Embedding(8, 6), nn.LSTM(6, 12), nn.Linear(12, 2)
            self.src_emb, self.encoder = nn.Embedding(10, 5), nn.GRU(5, 16)
            self.tgt_emb, self.decoder = nn.Embedding(5, 4), nn.GRU(4, 16)
            self.out = nn.Linear(16, 5)

    gen_parts = nn.ModuleDict({"emb": nn.Embedding(8, 6), "lstm": nn.LSTM(6, 12, batch_first=True),
                               "fc": nn.Linear(12, 8)})
    ns = {"net": Net().eval(), "state_dict": gen_parts.state_dict(), "vocab": vocab, "sv": sv,
          "tv": tv}
    exec(_block("import converters\nfrom converters.torch_composite"), ns)

    net = ns["net"]
    ids = np.array([[1, 4, 2, 7, 0]])
    with torch.no_grad():
        _, (h, _) = net.lstm(net.emb(torch.tensor(ids.T)))
        want = torch.softmax(net.fc(h[-1]), -1).numpy()
    np.testing.assert_allclose(ns["clf"](ids.T), want, atol=1e-5)
    assert isinstance(ns["gen"], fastrnn.Generator) and ns["gen"].vocab is vocab
    assert isinstance(ns["s2s"], fastrnn.Seq2Seq) and isinstance(ns["s2s"].translate("0123"), str)


def test_converting_pytorch_models(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    saved = nn.RNN(8, 16, nonlinearity="relu", batch_first=True)
    torch.save(saved.state_dict(), tmp_path / "checkpoint.pt")
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.rnn = nn.GRU(8, 16)
    x = np.random.default_rng(2).standard_normal((3, 20, 8)).astype(np.float32)
    ns = {"torch_lstm": nn.LSTM(8, 16), "model": model, "x": x}
    exec(_block("import converters\n\nm = converters.from_torch(torch_lstm)"), ns)
    with torch.no_grad():
        want, want_h = saved(torch.from_numpy(x))
    np.testing.assert_allclose(ns["out"], want.numpy(), atol=1e-5)
    np.testing.assert_allclose(ns["h_n"], want_h.numpy(), atol=1e-5)


def test_onnx_models(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    hidden, size = 16, 8

    def weight(name, *shape):
        return numpy_helper.from_array(rng.uniform(-0.3, 0.3, shape).astype(np.float32), name)

    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "h_n", "c_n"],
                          hidden_size=hidden)],
        "readme_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
         for name in ("y", "h_n", "c_n")],
        [weight("W", 1, 4 * hidden, size), weight("R", 1, 4 * hidden, hidden),
         weight("B", 1, 8 * hidden)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    x = rng.standard_normal((30, 2, size)).astype(np.float32)
    ns = {"x": x}
    block = _block("import converters, fastrnn")
    exec(block, ns)
    assert [(i.name, i.type, i.shape) for i in ns["sess"].get_inputs()] == \
        [("x", "tensor(float)", ["T", "N", 8])]
    assert "['T', 'N', 8]" in block
    want = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for got, ref in zip((ns["y"], ns["h_n"], ns["c_n"]), want):
        np.testing.assert_allclose(got, ref, atol=1e-5)
    for got, ref in zip(ns["sess"].run(None, {"x": x}), want):  # the reloaded plan
        np.testing.assert_allclose(got, ref, atol=1e-5)
