"""The course's composite models (embedding -> recurrent stack -> linear head) exported to ONNX run
through converters.from_onnx with the same outputs as PyTorch and as the from_torch conversion."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are built and exported with torch")
pytest.importorskip("onnx", reason="from_onnx needs onnx at import time")
nn = torch.nn

import converters  # noqa: E402

ATOL = 1e-5


class Classifier(nn.Module):
    """many-to-one: Embedding -> LSTM/GRU -> Linear -> softmax over the last layer's final state."""

    def __init__(self, mode, vocab=6, emb=5, hidden=12, layers=2, bidirectional=False, out=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = getattr(nn, mode)(emb, hidden, num_layers=layers, batch_first=True,
                                     bidirectional=bidirectional)
        self.fc = nn.Linear((2 if bidirectional else 1) * hidden, out)

    def forward(self, ids):
        _, h = self.rnn(self.emb(ids))
        h = h[0] if isinstance(h, tuple) else h
        feats = torch.cat([h[-2], h[-1]], -1) if self.rnn.bidirectional else h[-1]
        return torch.softmax(self.fc(feats), -1)


class Tagger(nn.Module):
    """many-to-many: Embedding -> GRU -> Linear -> log-softmax at every step."""

    def __init__(self, vocab=7, emb=4, hidden=10, out=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.GRU(emb, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, out)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return torch.log_softmax(self.fc(out), -1)


def _export(model, ids, path):
    torch.onnx.export(model, (torch.as_tensor(ids),), str(path), dynamo=False,
                      input_names=["ids"], output_names=["out"],
                      dynamic_axes={"ids": {0: "N", 1: "T"}})
    return converters.from_onnx(str(path))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode,bidirectional", [("LSTM", False), ("GRU", False), ("LSTM", True)])
def test_classifier_through_onnx_matches_torch_and_from_torch(tmp_path, mode, bidirectional):
    torch.manual_seed(0)
    model = Classifier(mode, bidirectional=bidirectional).eval()
    rng = np.random.default_rng(0)
    sess = _export(model, rng.integers(0, 6, (1, 8)), tmp_path / "clf.onnx")
    direct = converters.from_torch(model, embedding="emb", rnn="rnn", head="fc",
                                   head_activation="softmax", pool="last")
    for rows, steps in [(3, 11), (1, 4)]:
        ids = rng.integers(0, 6, (rows, steps))
        with torch.no_grad():
            want = model(torch.as_tensor(ids)).numpy()
        got = sess.run(None, {"ids": ids})[0]
        np.testing.assert_allclose(got, want, atol=ATOL)
        np.testing.assert_allclose(direct(ids, lengths=np.full(rows, steps)), want, atol=ATOL)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tagger_through_onnx_matches_torch(tmp_path):
    torch.manual_seed(1)
    model = Tagger().eval()
    rng = np.random.default_rng(1)
    sess = _export(model, rng.integers(0, 7, (2, 6)), tmp_path / "tagger.onnx")
    ids = rng.integers(0, 7, (4, 13))
    with torch.no_grad():
        want = model(torch.as_tensor(ids)).numpy()
    np.testing.assert_allclose(sess.run(None, {"ids": ids})[0], want, atol=ATOL)
