"""Sequence tasks (fastrnn.tasks, fastrnn.heads, converters.torch_composite) against PyTorch.

Every task shape runs the same weights in PyTorch and fastrnn: many-to-one with each pooling,
many-to-many, one-to-many (greedy generation compared token by token, with the logits of each
step), encoder-decoder (greedy and beam search); probabilities agree within 1e-5 (float32).
Then the shipped models: they load, reach the accuracy recorded in their files, and match
PyTorch running their weights. Then the typed errors, ids checked before any kernel runs, and
the generator's allocation-free steps.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn import demo
from fastrnn.errors import ArgumentError, DTypeError, ShapeError, UnsupportedError

torch = pytest.importorskip("torch", reason="the models are built (and exported) with torch")
nn = torch.nn
from converters.torch_composite import from_torch_composite, seq2seq_from_torch  # noqa: E402

ATOL = 1e-5
MODES = ["RNN", "GRU", "LSTM"]


def close(a, b, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


class TorchSeq(nn.Module):
    """Embedding (or one-hot) -> recurrent -> Linear, as people write it."""

    def __init__(self, mode, vocab=6, emb=5, hidden=7, layers=1, bidirectional=False, out=3,
                 embedding=True):
        super().__init__()
        self.vocab = vocab
        self.emb = nn.Embedding(vocab, emb) if embedding else None
        self.rnn = getattr(nn, mode)(emb if embedding else vocab, hidden, num_layers=layers,
                                     bidirectional=bidirectional, batch_first=True)
        self.fc = nn.Linear((2 if bidirectional else 1) * hidden, out)

    def inputs(self, ids):
        ids = torch.as_tensor(ids)
        return self.emb(ids) if self.emb is not None else \
            nn.functional.one_hot(ids, self.vocab).float()

    def forward(self, ids, lengths, pool):
        x = self.inputs(ids)
        packed = nn.utils.rnn.pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True,
                                                   enforce_sorted=False)
        out, h = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        h = h[0] if isinstance(h, tuple) else h
        lengths = torch.as_tensor(lengths)
        valid = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
        if pool == "last":
            feats = torch.cat([h[-2], h[-1]], -1) if self.rnn.bidirectional else h[-1]
        elif pool == "mean":
            feats = out.sum(1) / lengths[:, None]
        elif pool == "max":
            feats = out.masked_fill(~valid, -float("inf")).max(1).values
        else:
            return torch.softmax(self.fc(out), -1) * valid
        return torch.softmax(self.fc(feats), -1)


def _ids(rows=4, steps=9, vocab=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, steps))
    lengths = np.array([steps, 1, 5, steps - 2][:rows])
    return ids, lengths


# ------------------------------------------------------------------------------------ many-to-one / many-to-many
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pool", ["last", "mean", "max", None])
@pytest.mark.parametrize("bidirectional,layers", [(False, 1), (True, 2)])
def test_sequential_matches_torch(mode, pool, bidirectional, layers):
    torch.manual_seed(1)
    net = TorchSeq(mode, layers=layers, bidirectional=bidirectional).eval()
    model = from_torch_composite(net, embedding="emb", rnn="rnn", head="fc",
                                 head_activation="softmax", task="sequential", pool=pool)
    ids, lengths = _ids()
    with torch.no_grad():
        expected = net(ids, lengths, pool).numpy()
    close(model(ids, lengths=lengths), expected)
    if pool is not None:                                   # unbatched = one row of a batch
        close(model(ids[2, :lengths[2]]), expected[2])


@pytest.mark.parametrize("mode", MODES)
def test_one_hot_vocabulary_input_and_text(mode):
    torch.manual_seed(2)
    net = TorchSeq(mode, vocab=4, embedding=False, out=2).eval()
    vocab = fastrnn.Vocabulary("ATCG")
    clf = from_torch_composite(net, rnn="rnn", head="fc", head_activation="softmax",
                               vocab=vocab, labels=["neg", "pos"])
    assert isinstance(clf, fastrnn.Classifier) and clf.vocab is vocab
    texts = ["GATTACA", "TATAAAG", "C"]
    ids, lengths = vocab.encode_batch(texts)
    with torch.no_grad():
        expected = net(ids, lengths, "last").numpy()
    close(clf(texts), expected)
    close(clf(ids, lengths=lengths), expected)
    close(clf("GATTACA"), expected[0])
    np.testing.assert_array_equal(clf.predict(texts), expected.argmax(1))


def test_tagger_pads_with_zeros_and_time_major_layout():
    torch.manual_seed(3)
    net = TorchSeq("GRU").eval()
    tagger = from_torch_composite(net, embedding="emb", rnn="rnn", head="fc",
                                  head_activation="softmax", task="tagger")
    ids, lengths = _ids()
    with torch.no_grad():
        expected = net(ids, lengths, None).numpy()
    y = tagger(ids, lengths=lengths)
    assert y.shape == (4, 9, 3)
    close(y, expected)
    assert not y[1, 1:].any()
    pred = tagger.predict(ids, lengths=lengths)
    assert pred[1, 0] >= 0 and (pred[1, 1:] == -1).all()
    # a time-major copy of the same model takes (T, N) ids and returns (T, N, C)
    rnn_tm = fastrnn.layer_from_config({**tagger.rnns[0].config(), "batch_first": False})
    rnn_tm.load_state_dict(tagger.rnns[0].state_dict())
    tm = fastrnn.Tagger(tagger.input, rnn_tm, *tagger.heads)
    close(tm(ids.T, lengths=lengths), expected.transpose(1, 0, 2))


def test_chained_layers_and_heads_match_torch():
    torch.manual_seed(4)
    emb, gru, lstm = nn.Embedding(6, 4), nn.GRU(4, 6, batch_first=True), \
        nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    fc1, fc2 = nn.Linear(10, 8), nn.Linear(8, 3)
    net = nn.ModuleDict(dict(emb=emb, gru=gru, lstm=lstm, fc1=fc1, fc2=fc2)).eval()
    model = from_torch_composite(net.state_dict(), embedding="emb", rnn=["gru", "lstm"],
                                 head=["fc1", "fc2"], head_activation=["tanh", "log_softmax"],
                                 batch_first=True, task="tagger")
    ids = np.random.default_rng(5).integers(0, 6, (2, 7))
    with torch.no_grad():
        out, _ = lstm(gru(emb(torch.as_tensor(ids)))[0])
        expected = torch.log_softmax(fc2(torch.tanh(fc1(out))), -1).numpy()
    close(model(ids), expected)


def test_save_load_round_trip_of_every_task(tmp_path):
    torch.manual_seed(6)
    net = TorchSeq("LSTM", bidirectional=True).eval()
    vocab = fastrnn.Vocabulary("abcdef")
    models = [from_torch_composite(net, embedding="emb", rnn="rnn", head="fc", pool="max",
                                   vocab=vocab, labels=list("xyz"), info={"accuracy": 0.5}),
              from_torch_composite(net, embedding="emb", rnn="rnn", head="fc", task="tagger")]
    for m in models:
        fastrnn.save(m, tmp_path / "m.frnn")
        back = fastrnn.load(tmp_path / "m.frnn")
        assert type(back) is type(m) and back.pool == m.pool and back.info == m.info
        close(back(np.array([[0, 1, 2, 5]])), m(np.array([[0, 1, 2, 5]])), atol=0)
    assert fastrnn.fileformat.inspect(tmp_path / "m.frnn")["kind"] == "sequential"


def test_task_models_pickle_after_calls():
    """Called models hold their layers' compiled functions, left out of a pickle."""
    import pickle

    from fastrnn.demo import load_model
    classifier = load_model("dna_motif")
    generator = load_model("weather_chars")
    seq2seq = load_model("date_format")
    runs = [(classifier, lambda m: m(["ACGTTATAAAGG", "CCGAT"])),
            (generator, lambda m: m.generate_ids("Denver", 12, temperature=0.8, seed=1)),
            (seq2seq, lambda m: m.translate(["5 March 2021", "07.11.1962"], max_len=12, beam=2))]
    for model, run in runs:
        want = run(model)
        np.testing.assert_array_equal(run(pickle.loads(pickle.dumps(model))), want)


# ------------------------------------------------------------------------------------ one-to-many
class TorchGen(nn.Module):
    def __init__(self, mode, vocab=7, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, 5)
        self.rnn = getattr(nn, mode)(5, 16, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(16, vocab)

    @torch.no_grad()
    def greedy(self, prompt, steps, stop=None):
        out, h = self.rnn(self.emb(torch.as_tensor(prompt))[None])
        tokens, all_logits = [], []
        for _ in range(steps):
            logits = self.fc(out[0, -1])
            t = int(logits.argmax())
            if t == stop:
                break
            tokens.append(t)
            all_logits.append(logits.numpy())
            out, h = self.rnn(self.emb(torch.tensor([[t]])), h)
        return tokens, all_logits


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generation_token_by_token(mode):
    torch.manual_seed(7)
    net = TorchGen(mode).eval()
    gen = from_torch_composite(net, embedding="emb", rnn="rnn", head="fc", task="generator")
    prompt = [1, 4, 2]
    tokens, logits = net.greedy(prompt, 40)
    got = []
    for i, t in enumerate(gen.stream_ids(prompt, 40, greedy=True)):
        close(gen.logits, logits[i])
        got.append(t)
    assert got == tokens
    np.testing.assert_array_equal(gen.generate_ids(prompt, 40, temperature=0), tokens)
    stop = tokens[5]
    assert gen.generate_ids(prompt, 40, greedy=True, stop=stop).tolist() == \
        net.greedy(prompt, 40, stop=stop)[0]


def _text_generator():
    torch.manual_seed(8)
    net = TorchGen("LSTM", vocab=6).eval()
    vocab = fastrnn.Vocabulary("abc .", eos="\n")
    return net, from_torch_composite(net, embedding="emb", rnn="rnn", head="fc",
                                     task="generator", vocab=vocab)


def test_sampling_is_seeded_and_filters_behave():
    net, gen = _text_generator()
    assert gen.stop == gen.vocab.eos_id
    a = gen.generate("ab", 50, temperature=1.3, seed=11)
    assert a == gen.generate("ab", 50, temperature=1.3, seed=11)
    assert any(gen.generate("ab", 50, temperature=1.3, seed=s) != a for s in range(12, 16))
    greedy = gen.generate("ab", 50, greedy=True)
    assert gen.generate("ab", 50, top_k=1, seed=3) == greedy
    assert gen.generate("ab", 50, top_p=1e-6, seed=3) == greedy
    assert "".join(gen.stream("ab", 50, temperature=0.7, top_k=3, top_p=0.9, seed=5)) == \
        gen.generate("ab", 50, temperature=0.7, top_k=3, top_p=0.9, seed=5)
    assert "\n" not in gen.generate("ab", 200, seed=1)       # the stop symbol ends generation


def test_top_k_top_p_draw_only_allowed_tokens():
    from fastrnn.heads import sample_token
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = {sample_token(logits, 1.0, top_k=2, rng=s) for s in range(300)}
    assert draws == {0, 1}
    draws = {sample_token(logits, 1.0, top_p=0.75, rng=s) for s in range(300)}
    assert draws == {0, 1}
    draws = [sample_token(logits, 1.0, rng=s) for s in range(4000)]
    close(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    with pytest.raises(ArgumentError):
        sample_token(logits, -1.0)
    with pytest.raises(ArgumentError):
        sample_token(logits, top_p=0.0)
    with pytest.raises(ArgumentError):
        sample_token(logits, top_k=-2)


def _allocated_while(run):
    """(run()'s result, the bytes traced memory grew by while it ran)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_generation_steps_allocate_nothing():
    _, gen = _text_generator()
    it = gen.stream_ids("ab", 2000, temperature=1.0, seed=0, stop=False)
    next(it)                                                  # set-up done
    first = gen.logits
    count, grown = _allocated_while(lambda: sum(1 for _ in zip(range(500), it)))
    assert count == 500 and gen.logits is first
    assert grown < 2048, f"{grown} bytes allocated over 500 steps"


# ------------------------------------------------------------------------------------ encoder-decoder
class TorchS2S(nn.Module):
    def __init__(self, mode, src=6, tgt=7, layers=2, bidirectional=True, hidden=6):
        super().__init__()
        d = 2 if bidirectional else 1
        self.mode = mode
        self.src_emb, self.tgt_emb = nn.Embedding(src, 4), nn.Embedding(tgt, 5)
        self.enc = getattr(nn, mode)(4, hidden, num_layers=layers, bidirectional=bidirectional,
                                     batch_first=True)
        self.dec = getattr(nn, mode)(5, d * hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(d * hidden, tgt)

    @torch.no_grad()
    def state(self, src):
        _, h = self.enc(self.src_emb(torch.as_tensor(src))[None])

        def fold(a):
            if not self.enc.bidirectional:
                return a
            a = a.view(self.enc.num_layers, 2, *a.shape[1:])
            return torch.cat([a[:, 0], a[:, 1]], -1)
        return tuple(map(fold, h)) if isinstance(h, tuple) else fold(h)

    @torch.no_grad()
    def step(self, tokens, state):
        out, state = self.dec(self.tgt_emb(torch.as_tensor(tokens))[:, None], state)
        return torch.log_softmax(self.fc(out[:, 0]), -1).double().numpy(), state

    def greedy(self, src, bos, eos, max_len):
        state, tok, out = self.state(src), bos, []
        for _ in range(max_len):
            logp, state = self.step([tok], state)
            tok = int(logp[0].argmax())
            if tok == eos:
                break
            out.append(tok)
        return out

    def beam(self, src, bos, eos, beam, max_len):
        """Reference beam search over explicit hypotheses (ids, score, state)."""
        live, done = [([], 0.0, self.state(src))], []
        for t in range(max_len):
            cands = []
            for ids, score, state in live:
                logp, new = self.step([ids[-1] if ids else bos], state)
                cands += [(score + float(logp[0, v]), ids, v, new) for v in range(logp.shape[1])]
            cands.sort(key=lambda c: -c[0])
            live = []
            for score, ids, v, state in cands[:2 * beam]:
                if v == eos:
                    done.append((ids, score))
                else:
                    live.append((ids + [v], score, state))
                if len(live) == beam:
                    break
            if len(done) >= beam:
                break
        else:
            done += [(ids, score) for ids, score, _ in live]
        return sorted(done, key=lambda d: -d[1])


def _s2s(mode, bidirectional=True):
    torch.manual_seed(9)
    net = TorchS2S(mode, bidirectional=bidirectional).eval()
    model = seq2seq_from_torch(net, source="src_emb", encoder="enc", target="tgt_emb",
                               decoder="dec", head="fc", bos=0, eos=1)
    return net, model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_seq2seq_greedy_matches_torch(mode, bidirectional):
    net, model = _s2s(mode, bidirectional)
    srcs = [[1, 2, 3, 4, 5], [5, 5, 0], [2]]
    expected = [net.greedy(s, 0, 1, 15) for s in srcs]
    ids, lens = model.greedy_ids(np.array([s + [0] * (5 - len(s)) for s in srcs]),
                                 lengths=[len(s) for s in srcs], max_len=15)
    assert [row[:n].tolist() for row, n in zip(ids, lens)] == expected
    assert model.translate(np.array(srcs[0]), max_len=15) == expected[0]


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_beam_search_matches_reference(mode):
    net, model = _s2s(mode)
    for src in ([1, 2, 3, 4, 5], [3, 0, 3]):
        expected = net.beam(src, 0, 1, beam=3, max_len=8)
        got = model.beam_search(np.array(src), beam=3, max_len=8, n_best=3)
        assert [ids for ids, _ in got] == [ids for ids, _ in expected[:3]]
        close([s for _, s in got], [s for _, s in expected[:3]], atol=1e-4)
        assert model.beam_search(np.array(src), beam=1, max_len=8)[0][0] == \
            net.greedy(src, 0, 1, 8)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_beam_translate_honours_lengths_and_empty_rows(mode):
    """translate(beam > 1) reads lengths as greedy decoding does: a padded row decodes as the row
    alone, a row of length 0 (or an empty source) from the encoder's zero state, and the beams of
    a batch as each row on its own; text with lengths= is refused on both paths."""
    net, model = _s2s(mode)
    src, junk = [1, 2, 3], [5, 4, 4, 5]
    alone = model.translate(np.array(src), beam=3, max_len=8)
    assert alone == net.beam(src, 0, 1, beam=3, max_len=8)[0][0]
    padded = np.array(src + junk)
    assert model.translate(padded, beam=3, max_len=8, lengths=[3]) == alone
    rows = [[1, 2, 3, 4, 5], [5, 5, 0], [2], []]
    batch = np.array([r + [3] * (5 - len(r)) for r in rows])  # (N, T): the encoder's layout
    got = model.translate(batch, beam=3, max_len=8, lengths=[len(r) for r in rows])
    assert got[:3] == [model.translate(np.array(r), beam=3, max_len=8) for r in rows[:3]]
    empty = model.beam_search(batch[3:], beam=3, max_len=8, lengths=[0])[0][0]
    assert got[3] == empty
    assert model.beam_search(np.zeros(0, np.int64), beam=3, max_len=8)[0][0] == empty
    sv, tv = fastrnn.Vocabulary("abcdef"), fastrnn.Vocabulary("xyz.!", bos="^", eos="$")
    text = seq2seq_from_torch(net.state_dict(), source="src_emb", encoder="enc",
                              target="tgt_emb", decoder="dec", head="fc", source_vocab=sv,
                              target_vocab=tv, batch_first=True)
    assert text.translate(["", "abc"], beam=3, max_len=8) == \
        [text.translate("", beam=3, max_len=8), text.translate("abc", beam=3, max_len=8)]
    for beam in (1, 3):
        with pytest.raises(ArgumentError, match="lengths"):
            text.translate("abc", beam=beam, lengths=[2])


def test_beam_search_of_non_finite_logits():
    """NaN logits were taken as 'no finite score': beam search found nothing and translate gave
    an empty answer, while greedy decoding returned NaN's index. Now NaN is an ArgumentError in
    both; a hypothesis whose logits are all -inf has no continuation (none found), and +inf
    logits are certain (their log-softmax was NaN, so the hypothesis was dropped)."""
    net, model = _s2s("GRU")
    head = model.heads[-1]
    state = head.state_dict()
    for bias, beam_result in ((np.nan, ArgumentError), (-np.inf, [])):
        state["bias"][:] = bias
        head.load_state_dict(state)
        if beam_result is ArgumentError:
            for call in (lambda: model.beam_search(np.array([1, 2]), beam=3, max_len=5),
                         lambda: model.translate(np.array([1, 2]), beam=3, max_len=5)):
                with pytest.raises(ArgumentError, match="step 0 of hypothesis 0 hold NaN"):
                    call()
        else:
            assert model.beam_search(np.array([1, 2]), beam=3, max_len=5) == beam_result
            assert model.translate(np.array([1, 2]), beam=3, max_len=5) == beam_result
        with pytest.raises(ArgumentError, match="step 0 of row 0 (hold NaN|are all -inf)"):
            model.translate(np.array([1, 2]), max_len=5)                  # greedy
    state["weight"][:] = 0
    state["bias"][:] = [np.inf, 0, 0, np.inf, 0, 0, 0]         # tokens 0 and 3; eos is 1
    head.load_state_dict(state)
    hyps = model.beam_search(np.array([1, 2]), beam=4, max_len=2, n_best=4)
    assert sorted(ids for ids, _ in hyps) == [[0, 0], [0, 3], [3, 0], [3, 3]]
    np.testing.assert_allclose([score for _, score in hyps], 2 * np.log(0.5))
    assert model.greedy_ids(np.array([1, 2]), max_len=3)[0].tolist() == [0, 0, 0]


def test_tagger_predict_marks_padding_from_lengths_not_from_zero_scores():
    """A head whose scores are all exactly 0 (relu) at valid steps keeps their argmax; only
    steps past a row's length are -1 (text batches carry their lengths too)."""
    head = fastrnn.Linear(4, 2, activation="relu")
    head.load_state_dict({"weight": np.zeros((2, 4)), "bias": np.zeros(2)})
    vocab = fastrnn.Vocabulary("abc")
    tagger = fastrnn.Tagger(fastrnn.OneHot(3), fastrnn.GRU(3, 4, batch_first=True, seed=0), head,
                            vocab=vocab)
    ids = np.array([[0, 1, 2], [2, 1, 0]])
    assert tagger.predict(ids).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert tagger.predict(ids, lengths=[3, 2]).tolist() == [[0, 0, 0], [0, 0, -1]]
    assert tagger.predict(["abc", "c"]).tolist() == [[0, 0, 0], [0, -1, -1]]
    assert tagger.predict("ab").tolist() == [0, 0]


def test_into_forms_check_their_arrays():
    """The *_into forms write into the caller's array: every shape, dtype and id is checked
    first (a wrong out array would be written out of bounds by the kernel)."""
    rng = np.random.default_rng(0)
    lin = fastrnn.Linear(4, 3, activation="tanh", seed=0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    out = np.empty((5, 3), np.float32)
    assert lin.apply_into(x, out) is out
    close(out, lin(x))
    close(lin.apply_into(x, out, "none"), lin(x, activation="none"))
    f32 = np.float32
    bad = [(np.ones((2000, 4), f32), np.zeros((1, 1), f32), ShapeError),
           (np.ones((5, 2), f32), out, ShapeError),
           (x, np.zeros((4, 3), f32), ShapeError),
           (x, np.zeros((5, 3)), DTypeError),
           (x.astype(np.float64), out, DTypeError),
           (np.asfortranarray(rng.standard_normal((5, 4)).astype(f32)), out, DTypeError),
           (x.tolist(), out, DTypeError),
           (x[None], out, ShapeError)]
    for a, o, error in bad:
        with pytest.raises(error):
            lin.apply_into(a, o)
    with pytest.raises(ArgumentError):
        lin.apply_into(x, out, "bogus")
    read_only = np.zeros((5, 3), f32)
    read_only.flags.writeable = False
    with pytest.raises(ArgumentError):
        lin.apply_into(x, read_only)
    for stage, width in ((fastrnn.OneHot(4), 4), (fastrnn.Embedding(4, 6, seed=0), 6)):
        ids = np.array([3, 0, 2])
        got = stage.lookup_into(ids, np.full((3, width), 7, np.float32))
        close(got, stage(ids))
        for bad_ids, o, error in [(np.array([-1, 0, 0]), np.zeros((3, width), f32), ArgumentError),
                                  (np.array([4, 0, 0]), np.zeros((3, width), f32), ArgumentError),
                                  (np.array([1.0, 0, 0]), np.zeros((3, width), f32), DTypeError),
                                  (ids, np.zeros((2, width), f32), ShapeError),
                                  (ids, np.zeros((3, width + 1), f32), ShapeError),
                                  (ids, np.zeros((3, width)), DTypeError),
                                  (ids[None], np.zeros((3, width), f32), ShapeError)]:
            with pytest.raises(error):
                stage.lookup_into(bad_ids, o)


def test_stop_is_one_symbol_or_id():
    gen = fastrnn.load(demo.model_path("weather_chars"))
    with pytest.raises(ShapeError):
        gen.generate("Denver", 5, stop=[1])
    assert gen.generate("Denver", 5, stop=np.int64(1), greedy=True) == \
        gen.generate("Denver", 5, stop=1, greedy=True)


def test_seq2seq_text_save_load(tmp_path):
    net, model = _s2s("LSTM")
    sv, tv = fastrnn.Vocabulary("abcdef"), fastrnn.Vocabulary("xyz.!", bos="^", eos="$")
    model = seq2seq_from_torch(net.state_dict(), source="src_emb", encoder="enc",
                               target="tgt_emb", decoder="dec", head="fc", source_vocab=sv,
                               target_vocab=tv, batch_first=True)
    out = model.translate(["abc", "fed"], max_len=10)
    assert out == [model.translate("abc", max_len=10), model.translate("fed", max_len=10)]
    assert model.translate(["abc"], beam=2, max_len=10)[0] == \
        model.translate("abc", beam=2, max_len=10)
    fastrnn.save(model, tmp_path / "s.frnn")
    back = fastrnn.load(tmp_path / "s.frnn")
    assert back.translate(["abc", "fed"], max_len=10) == out and back.bos == tv.bos_id


# ------------------------------------------------------------------------------------ shipped models
def _torch_rnn(layer):
    cfg = layer.config()
    m = getattr(nn, cfg["mode"])(cfg["input_size"], cfg["hidden_size"], cfg["num_layers"],
                                 batch_first=cfg["batch_first"],
                                 bidirectional=cfg["bidirectional"])
    m.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    return m.eval()


def _torch_linear(head):
    m = nn.Linear(head.in_features, head.out_features)
    m.load_state_dict({k: torch.tensor(v) for k, v in head.state_dict().items()})
    return m


@pytest.mark.parametrize("name", sorted(demo.MODELS))
def test_shipped_model_reaches_recorded_accuracy(name):
    model = demo.load_model(name)
    recorded = model.info["accuracy"]
    assert recorded > {"dna_motif": 0.95, "weather_chars": 0.85, "date_format": 0.9}[name]
    assert demo.SCORERS[name](model) >= recorded - 1e-9


def test_shipped_classifier_matches_torch():
    clf = demo.load_model("dna_motif")
    seqs, _ = demo.dna_dataset(64, seed=5)
    ids, lengths = clf.vocab.encode_batch(seqs)
    rnn, fc = _torch_rnn(clf.rnns[0]), _torch_linear(clf.heads[0])
    with torch.no_grad():
        x = torch.tensor(clf.vocab.one_hot(ids))
        _, (h, _) = rnn(nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                          batch_first=True, enforce_sorted=False))
        expected = torch.softmax(fc(h[-1]), -1).numpy()
    close(clf(seqs), expected)


def test_shipped_generator_matches_torch_greedy():
    gen = demo.load_model("weather_chars")
    net = TorchGen("GRU", vocab=gen.vocab_size, layers=1)
    net.emb = nn.Embedding.from_pretrained(torch.tensor(gen.input.weight))
    net.rnn, net.fc = _torch_rnn(gen.rnns[0]), _torch_linear(gen.heads[0])
    prompt = gen.vocab.encode("Boston")
    tokens, logits = net.greedy(prompt, 40, stop=gen.stop)
    got = []
    for i, t in enumerate(gen.stream_ids(prompt, 40, greedy=True)):
        close(gen.logits, logits[i], atol=1e-4)
        got.append(t)
    assert got == tokens and demo.well_formed_weather("Boston" + gen.vocab.decode(got))


def test_shipped_seq2seq_matches_torch_greedy():
    s2s = demo.load_model("date_format")
    net = TorchS2S("GRU", bidirectional=True, layers=1)
    net.src_emb = nn.Embedding.from_pretrained(torch.tensor(s2s.source.weight))
    net.tgt_emb = nn.Embedding.from_pretrained(torch.tensor(s2s.target.weight))
    net.enc, net.dec = _torch_rnn(s2s.encoder), _torch_rnn(s2s.decoder)
    net.fc = _torch_linear(s2s.heads[0])
    src, tgt = demo.date_dataset(20, seed=7)
    for s, t in zip(src, tgt):
        ids = net.greedy(s2s.source_vocab.encode(s), s2s.bos, s2s.eos, 12)
        assert s2s.target_vocab.decode(np.array(ids)) == s2s.translate(s, max_len=12)


# ------------------------------------------------------------------------------------ errors
def _boom(*args, **kwargs):
    raise AssertionError("a recurrent kernel ran on invalid input")


@pytest.mark.parametrize("bad", [np.array([[0, 1, 6]]), np.array([[-1, 2, 3]]),
                                 np.array([[0.0, 1.0, 2.0]])])
def test_bad_ids_are_rejected_before_any_kernel(bad, monkeypatch):
    torch.manual_seed(10)
    net = TorchSeq("LSTM").eval()
    clf = from_torch_composite(net, embedding="emb", rnn="rnn", head="fc")
    monkeypatch.setattr(fastrnn.LSTM, "__call__", _boom)
    with pytest.raises(ArgumentError if bad.dtype.kind == "i" else DTypeError):
        clf(bad)
    gen = from_torch_composite(TorchGen("LSTM", vocab=6), embedding="emb", rnn="rnn", head="fc",
                               task="generator")
    with pytest.raises(ArgumentError if bad.dtype.kind == "i" else DTypeError):
        next(gen.stream_ids(bad[0], 5))


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_bad_id_is_named_at_the_index_the_caller_gave(batch_first):
    """The ids are made time-major before they are checked: the error still names the index in
    the caller's array (batch-first, time-major or unbatched)."""
    clf = fastrnn.Classifier(fastrnn.Embedding(5, 3, seed=0),
                             fastrnn.GRU(3, 4, batch_first=batch_first, seed=0),
                             fastrnn.Linear(4, 2, seed=0))
    ids = np.zeros((2, 4), np.int64)
    ids[1, 3] = 9
    with pytest.raises(ArgumentError, match=r"got 9 at index \(1, 3\)"):
        clf(ids)
    with pytest.raises(ArgumentError, match=r"got 9 at index \(2,\)"):
        clf(np.array([0, 0, 9]))
    s2s = demo.load_model("date_format")
    with pytest.raises(ArgumentError, match=r"got 99 at index \(0, 2\)"):
        s2s.greedy_ids([[1, 2, 99]])


def test_ids_past_lengths_are_never_read():
    torch.manual_seed(11)
    clf = from_torch_composite(TorchSeq("GRU").eval(), embedding="emb", rnn="rnn", head="fc")
    ids = np.array([[1, 2, 3, -7], [4, 99, 99, 99]])
    close(clf(ids, lengths=[3, 1]), clf(np.array([[1, 2, 3, 0], [4, 0, 0, 0]]), lengths=[3, 1]),
          atol=0)
    with pytest.raises(ArgumentError):
        clf(ids, lengths=[4, 1])


def test_typed_errors():
    emb, lstm, fc = fastrnn.Embedding(5, 3), fastrnn.LSTM(3, 4), fastrnn.Linear(4, 5)
    with pytest.raises(ShapeError):
        fastrnn.Sequential(fastrnn.Embedding(5, 2), lstm, fc)
    with pytest.raises(ShapeError):
        fastrnn.Sequential(emb, lstm, fastrnn.Linear(3, 2))
    with pytest.raises(ArgumentError):
        fastrnn.Sequential(emb, fc, lstm)
    with pytest.raises(ArgumentError):
        fastrnn.Sequential(emb, lstm, fc, pool="median")
    with pytest.raises(ArgumentError):
        fastrnn.Linear(4, 5, activation="gelu")
    with pytest.raises(UnsupportedError):
        fastrnn.Generator(emb, fastrnn.LSTM(3, 2, bidirectional=True), fastrnn.Linear(4, 5))
    with pytest.raises(ArgumentError):
        fastrnn.Generator(emb, lstm, fastrnn.Linear(4, 5, activation="sigmoid"))
    with pytest.raises(ShapeError):
        fastrnn.Generator(emb, lstm, fastrnn.Linear(4, 6))
    clf = fastrnn.Sequential(emb, lstm, fc)
    with pytest.raises(ShapeError):
        clf(np.zeros((2, 3, 4), np.int64))
    with pytest.raises(ArgumentError, match="no vocabulary"):
        clf("abc")
    with pytest.raises(ShapeError):
        clf(np.zeros((3, 2), np.int64), lengths=[1, 2, 3])
    gen = fastrnn.Generator(emb, lstm, fc)
    with pytest.raises(ArgumentError):
        gen.generate_ids(None, 5)                          # no prompt, no bos
    with pytest.raises(ArgumentError):
        gen.generate_ids([1], 5, temperature=-1)
    with pytest.raises(ArgumentError):
        gen.generate("ab", 5)                              # no vocabulary for text
    with pytest.raises(ShapeError):                        # decoder state size mismatch
        fastrnn.Seq2Seq(source=emb, encoder=fastrnn.GRU(3, 4, bidirectional=True), target=emb,
                        decoder=fastrnn.GRU(3, 4), head=fastrnn.Linear(4, 5), bos=0, eos=1)
    with pytest.raises(ArgumentError):                     # no bos / eos
        fastrnn.Seq2Seq(source=emb, encoder=fastrnn.GRU(3, 4), target=emb,
                        decoder=fastrnn.GRU(3, 4), head=fastrnn.Linear(4, 5))


def test_a_vocabulary_needs_an_input_stage_to_encode_into():
    vocab, gru, fc = fastrnn.Vocabulary("ATCG"), fastrnn.GRU(4, 8, seed=0), fastrnn.Linear(8, 2)
    with pytest.raises(ArgumentError, match="Classifier: a vocabulary needs an input stage"):
        fastrnn.Classifier(gru, fc, vocab=vocab)         # text could never run, nor ids
    with pytest.raises(ArgumentError, match="Tagger: a vocabulary needs an input stage"):
        fastrnn.Tagger(gru, fc, vocab=vocab)
    by_stage = fastrnn.Classifier(vocab, gru, fc)         # the vocabulary as the input stage
    by_keyword = fastrnn.Classifier(fastrnn.OneHot(4), gru, fc, vocab=vocab)
    np.testing.assert_array_equal(by_stage("ACGT"), by_keyword("ACGT"))


@pytest.mark.parametrize("bad", ["abc", ["a", "b", "c"], 3])
def test_a_vocabulary_argument_must_be_a_vocabulary(bad):
    emb, rnn, head = fastrnn.Embedding(3, 4), fastrnn.GRU(4, 5), fastrnn.Linear(5, 3)
    builds = {
        "Sequential": lambda: fastrnn.Classifier(emb, rnn, head, vocab=bad),
        "Generator": lambda: fastrnn.Generator(emb, rnn, head, vocab=bad),
        "Seq2Seq target": lambda: fastrnn.Seq2Seq(source=emb, encoder=fastrnn.GRU(4, 5),
                                                  target=emb, decoder=rnn, head=head,
                                                  bos=0, eos=1, target_vocab=bad),
        "Seq2Seq source": lambda: fastrnn.Seq2Seq(source=emb, encoder=fastrnn.GRU(4, 5),
                                                  target=emb, decoder=rnn, head=head,
                                                  bos=0, eos=1, source_vocab=bad)}
    for name, build in builds.items():
        with pytest.raises(ArgumentError, match="must be a fastrnn.Vocabulary or None"):
            build()


def test_composite_from_checkpoint_file_and_module_prefix(tmp_path):
    torch.manual_seed(12)
    net = TorchSeq("GRU", layers=2).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, path)
    ids, lengths = _ids()
    expected = from_torch_composite(net, embedding="emb", rnn="rnn", head="fc")(ids, lengths)
    from_file = from_torch_composite(str(path), embedding="emb", rnn="rnn", head="fc",
                                     batch_first=True)
    close(from_file(ids, lengths=lengths), expected, atol=0)
    wrapped = {"module." + k: v for k, v in net.state_dict().items()}   # DataParallel names
    close(from_torch_composite(wrapped, embedding="emb", rnn="rnn", head="fc",
                               batch_first=True)(ids, lengths=lengths), expected, atol=0)
    with pytest.raises(ArgumentError, match="no tensor 'head.weight'"):
        from_torch_composite(net, embedding="emb", rnn="rnn", head="head")


# ------------------------------------------------------------------ odd arguments fail typed
def test_ragged_and_scalar_inputs_are_typed_errors():
    """Nested lists of unequal lengths (numpy's plain ValueError) and scalars where sequences
    belong give fastrnn's errors everywhere a user passes ids, features, lengths or states."""
    ragged = [[1, 2], [3]]
    layer = fastrnn.GRU(2, 3, seed=0)
    with pytest.raises(ShapeError, match="rectangular"):
        layer(ragged)
    with pytest.raises(ShapeError, match="rectangular"):
        layer(np.zeros((3, 2, 2), np.float32), lengths=ragged)
    with pytest.raises(ShapeError, match="rectangular"):
        layer.stream(1).step(ragged)
    clf = fastrnn.Classifier(fastrnn.Embedding(6, 2, seed=0), layer, fastrnn.Linear(3, 2, seed=0))
    with pytest.raises(ShapeError, match="rectangular"):
        clf.predict(ragged)
    net, gen = _text_generator()
    with pytest.raises(ShapeError, match="rectangular"):
        gen.generate_ids(ragged)
    net, s2s = _s2s("GRU")
    for beam in (1, 3):
        with pytest.raises(ShapeError, match="rectangular"):
            s2s.translate(ragged, beam=beam)
        with pytest.raises((ShapeError, DTypeError)):
            s2s.translate(3, beam=beam)  # one id is not a sequence
    for bad in ("x", None, float("nan"), True):
        for beam in (1, 3):
            with pytest.raises(ArgumentError, match="length_penalty must be a finite number"):
                s2s.translate([1, 2], beam=beam, length_penalty=bad)


def test_numbers_past_a_float_and_sizes_past_2_40_are_typed_errors():
    """Python ints beyond float's range (numpy's isfinite raised TypeError on them), top_k past
    int64 (the kernel's OverflowError), decoder sizes numpy cannot allocate (its ValueError),
    stages whose weights exceed 2^40 elements."""
    net, gen = _text_generator()
    for kw in (dict(temperature=10**400), dict(top_p=10**400)):
        with pytest.raises(ArgumentError):
            gen.generate_ids("ab", 3, **kw)
    greedy = gen.generate_ids("ab", 5, top_k=0, seed=1).tolist()
    assert gen.generate_ids("ab", 5, top_k=10**400, seed=1).tolist() == greedy  # all tokens
    with pytest.raises(ArgumentError):
        fastrnn.heads.sample_token([1.0, 2.0], temperature=10**400)
    net, s2s = _s2s("GRU")
    for beam in (1, 3):
        with pytest.raises(ArgumentError, match="length_penalty"):
            s2s.translate([1, 2], beam=beam, length_penalty=10**400)
        for max_len in (2**31 + 1, 2**63, 10**400):
            with pytest.raises(ArgumentError, match="max_len"):
                s2s.translate([1, 2], beam=beam, max_len=max_len)
    with pytest.raises(ArgumentError, match="beam"):
        s2s.translate([1, 2], beam=2**31 + 1)
    for make in (lambda: fastrnn.Embedding(2**62, 3), lambda: fastrnn.Linear(3, 2**62),
                 lambda: fastrnn.OneHot(2**62), lambda: fastrnn.OneHot(2**40)(np.zeros(2, int))):
        with pytest.raises(ArgumentError, match="2\\^40"):
            make()


def test_linear_reads_read_only_input_without_compiling_again():
    """A read-only input (a memory-mapped file, a stride-0 broadcast) is copied like any other
    the kernel was not compiled for, rather than compiling a read-only specialization."""
    from fastrnn.kernels.heads import linear_forward, sample
    lin = fastrnn.Linear(4, 3, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    want = lin(x)
    logits = np.arange(5.0)
    token = fastrnn.heads.sample_token(logits, rng=3)
    compiled = len(linear_forward.signatures), len(sample.signatures)
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(lin(ro), want)
    np.testing.assert_array_equal(lin(np.broadcast_to(x[:1], (3, 4))), lin(np.repeat(x[:1], 3, 0)))
    logits.flags.writeable = False
    assert fastrnn.heads.sample_token(logits, rng=3) == token
    assert (len(linear_forward.signatures), len(sample.signatures)) == compiled


def test_translate_checks_beam_before_choosing_greedy():
    """beam=1.0 and beam=True were taken as greedy decoding (beam == 1), an array as beam hit
    numpy's ambiguous truth value; beam_search refused all three."""
    net, s2s = _s2s("GRU")
    for beam in (1.0, True, np.array([1, 1]), [2], "2", 0):
        with pytest.raises(ArgumentError, match="beam must be an int"):
            s2s.translate([1, 2], beam=beam)
    assert s2s.translate([1, 2], beam=np.int64(1)) == s2s.translate([1, 2])


def test_a_large_length_penalty_does_not_overflow():
    """sum / n ** length_penalty overflowed a Python float (OverflowError) for a large finite
    penalty, and divided by zero for a large negative one."""
    net, s2s = _s2s("GRU")
    src = [1, 2, 3]
    for penalty in (2.0**31, 1e4, -1e4, -2.0**31):
        hyps = s2s.beam_search(src, beam=3, max_len=6, length_penalty=penalty, n_best=3)
        assert hyps and all(np.isfinite(score) or score == -np.inf for _, score in hyps)


def test_generation_seed_is_checked_and_a_long_stream_needs_no_memory_up_front():
    net, gen = _text_generator()
    for bad in (1.5, -1, True, "7", float("inf")):
        with pytest.raises(ArgumentError, match="seed must be None or an int"):
            gen.generate_ids("ab", 5, seed=bad)
    first = gen.generate_ids("ab", 5000, seed=4, stop=False)
    tracemalloc.start()
    stream = gen.stream_ids("ab", 2**40, seed=4, stop=False)     # lazy: 2^40 steps asked for
    got = [next(stream) for _ in range(5000)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == first.tolist()                # the same draws across the 4096-step refill
    assert peak < 2**20


def _tiny_seq2seq(**kw):
    args = dict(source=fastrnn.Embedding(5, 3, seed=0), encoder=fastrnn.GRU(3, 4, seed=0),
                target=fastrnn.Embedding(4, 2, seed=0), decoder=fastrnn.GRU(2, 4, seed=0),
                head=fastrnn.Linear(4, 4, seed=0), bos=0, eos=1)
    return fastrnn.Seq2Seq(**{**args, **kw})


def _tiny_generator(**kw):
    return fastrnn.Generator(fastrnn.Vocabulary("ab", eos="$"), fastrnn.GRU(3, 4, seed=0),
                             fastrnn.Linear(4, 3, seed=0), **kw)


def _tiny_classifier(**kw):
    return fastrnn.Classifier(fastrnn.Vocabulary("ab"), fastrnn.GRU(2, 4, seed=0),
                              fastrnn.Linear(4, 2, seed=0), **kw)


@pytest.mark.parametrize("make", [
    lambda: _tiny_classifier(pool=np.array(["last", "max"])),   # numpy's untyped ValueError
    lambda: _tiny_seq2seq(bridge=np.array(["sum", "concat"])),
    lambda: _tiny_classifier(labels=5),                          # not iterable: a TypeError
    lambda: _tiny_classifier(labels="ab"),                       # once taken as ["a", "b"]
    lambda: _tiny_classifier(info=[1, 2]),                       # dict([1, 2]): a TypeError
    lambda: _tiny_generator(info="ab"),                          # dict("ab"): a ValueError
    lambda: _tiny_seq2seq(info=[("a", 1), 3]),
    lambda: _tiny_seq2seq(bos=None),                             # no target_vocab to ask
    lambda: _tiny_seq2seq(target=fastrnn.Vocabulary("abcd"), decoder=fastrnn.GRU(4, 4, seed=0),
                          bos=None, eos=None),                   # a vocabulary without bos
])
def test_choices_labels_notes_and_token_ids_are_argument_errors(make):
    with pytest.raises(ArgumentError):
        make()


def test_seq2seq_bos_and_eos_are_single_ids():
    with pytest.raises(ShapeError, match="bos is one target id"):
        _tiny_seq2seq(bos=[0])                                   # once int()'s TypeError
    with pytest.raises(ShapeError, match="eos is one target id"):
        _tiny_seq2seq(eos=np.array([1, 2]))
    with pytest.raises(ArgumentError, match=r"bos=ID, or a target_vocab built with bos=SYMBOL"):
        _tiny_seq2seq(bos=None)
    assert _tiny_seq2seq(bos=np.int8(2), eos=np.array(3)).eos == 3


def test_embedding_lookups_allocate_nothing_whatever_their_width():
    """np.take's default mode copies through a temporary as large as `out`: a wide embedding
    allocated that much per generated token."""
    emb = fastrnn.Embedding(3, 1 << 14, seed=0)
    out = np.empty((2, 1 << 14), np.float32)
    ids = np.array([2, 0])
    emb.lookup_into(ids, out)
    _, grown = _allocated_while(lambda: [emb.lookup_into(ids, out) for _ in range(20)])
    assert grown < 4096, f"{grown} bytes allocated by 20 lookups of 128 KiB rows"
    np.testing.assert_array_equal(out, emb.weight[[2, 0]])

    gen = fastrnn.Generator(fastrnn.Embedding(5, 4096, seed=0), fastrnn.GRU(4096, 8, seed=0),
                            fastrnn.Linear(8, 5, seed=0))
    it = gen.stream_ids([1], 1000, seed=0, stop=False)
    next(it)
    count, grown = _allocated_while(lambda: sum(1 for _ in zip(range(200), it)))
    assert count == 200 and grown < 4096, f"{grown} bytes allocated over 200 steps"


# ------------------------------------------------------------------------------------ non-finite logits
def _fixed_logits_generator(logits, vocab=None):
    """A Generator whose every step scores exactly `logits` (a zero head weight, the logits
    as its bias), with a stop symbol it never picks unless asked."""
    size = len(logits)
    head = fastrnn.Linear(3, size, seed=0)
    head.load_state_dict({"weight": np.zeros((size, 3)), "bias": np.asarray(logits, float)})
    return fastrnn.Generator(fastrnn.Embedding(size, 2, seed=0), fastrnn.GRU(2, 3, seed=0), head,
                             vocab=vocab)


SAMPLING_MODES = [dict(greedy=True), dict(temperature=0), dict(temperature=1.0, seed=0),
                  dict(temperature=0.5, top_k=2, seed=1), dict(top_p=0.6, seed=2),
                  dict(temperature=3.0, top_k=3, top_p=0.9, seed=3), dict(temperature=1e-30)]


@pytest.mark.parametrize("kw", SAMPLING_MODES)
def test_nan_logits_are_an_error_naming_the_step_in_every_mode(kw):
    """NaN logits gave an arbitrary in-range id (0 for greedy, others by chance when sampling),
    and generation went on feeding it back."""
    gen = _fixed_logits_generator([0.5, np.nan, 1.0, 2.0])
    with pytest.raises(ArgumentError, match=r"generation step 0 .*hold NaN \(at 1 of 4 ids: 1\)"):
        gen.generate_ids([0], 5, **kw)
    with pytest.raises(ArgumentError, match="hold NaN"):
        fastrnn.heads.sample_token([0.5, np.nan, 1.0, 2.0], **{k: v for k, v in kw.items()
                                                                 if k not in ("greedy", "seed")})
    # NaN from a later step: token 3 is certain, and its embedding row is NaN, so the state
    # and the logits of step 1 are NaN; step 0's token comes out first
    gen = _fixed_logits_generator([0.0, 0.0, 0.0, 50.0])
    weight = gen.input.weight.copy()
    weight[3] = np.nan
    gen.input.load_state_dict({"weight": weight})
    stream = gen.stream_ids([0], 5, stop=False, **kw)
    assert next(stream) == 3
    with pytest.raises(ArgumentError, match="generation step 1 .*hold NaN"):
        next(stream)


@pytest.mark.parametrize("kw", SAMPLING_MODES)
def test_infinite_logits_in_every_mode(kw):
    """One +inf logit is certain (its softmax was NaN: top-p drew another id); several share
    the draw (greedy takes the first, as for ties); -inf ids are never drawn; all -inf is an
    error (greedy returned 0)."""
    one = _fixed_logits_generator([1.0, np.inf, 2.0, 3.0])
    assert one.generate_ids([0], 20, stop=False, **kw).tolist() == [1] * 20
    several = _fixed_logits_generator([np.inf, 1.0, np.inf, 3.0])
    got = several.generate_ids([0], 400, stop=False, **kw)
    if kw.get("greedy") or kw.get("temperature") == 0:
        assert set(got.tolist()) == {0}
    else:  # top_k >= 2 and top_p keep both; fair draws: 200 +- 4.5 sigma
        assert set(got.tolist()) == {0, 2} and 155 < np.count_nonzero(got == 0) < 245
    masked = _fixed_logits_generator([-np.inf, 1.0, 1.5, -np.inf])
    assert set(masked.generate_ids([0], 200, stop=False, **kw).tolist()) <= {1, 2}
    none = _fixed_logits_generator([-np.inf] * 4)
    with pytest.raises(ArgumentError, match="generation step 0 .*all -inf"):
        none.generate_ids([0], 3, **kw)


def test_sample_token_of_non_finite_logits():
    from fastrnn.heads import sample_token
    assert {sample_token([1.0, np.inf, 2.0], top_p=0.5, rng=s) for s in range(50)} == {1}
    assert {sample_token([np.inf, 0.0, np.inf], rng=s) for s in range(200)} == {0, 2}
    assert sample_token([np.inf, 0.0, np.inf], temperature=0) == 0
    assert {sample_token([-np.inf, 0.0, -np.inf, 1.0], rng=s) for s in range(200)} == {1, 3}
    assert sample_token(np.array([3e38, -3e38, 1.0], np.float32), rng=0) == 0  # finite, large
    for bad, match in (([np.nan, 1.0], "hold NaN"), ([-np.inf, -np.inf], "all -inf"),
                       ([np.inf, np.nan], "hold NaN")):
        for temperature in (0, 1.0):
            with pytest.raises(ArgumentError, match=match):
                sample_token(bad, temperature)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (2, 1.0), (0, 0.5), (2, 0.9)])
def test_the_sampling_kernel_returns_minus_one_for_rows_it_cannot_draw_from(top_k, top_p):
    """A draw from logits holding NaN or +inf, or all -inf, is -1 (the generation loop then asks
    usable_logits); -inf among finite logits is drawn from as it is, never chosen."""
    from fastrnn.kernels.heads import sample
    scratch = np.empty(4), np.empty(4, np.int64)
    for bad in ([np.nan, 1.0, 2.0, 0.0], [1.0, np.inf, 2.0, 0.0], [-np.inf] * 4,
                [np.inf, np.nan, -np.inf, 1.0]):
        for dtype in (np.float32, np.float64):
            assert sample(np.array(bad, dtype), 1.0, top_k, top_p, 0.5, *scratch) == -1
    row = np.array([-np.inf, 0.0, -np.inf, 1.0])
    assert {sample(row, 1.0, top_k, top_p, u, *scratch) for u in np.linspace(0, 0.999, 50)} <= {1, 3}


def test_numpy_argmax_stops_at_the_first_nan():
    """Greedy generation's check relies on it: argmax of a row holding NaN is the
    first NaN's index, on numpy's SIMD paths too (every length and position, both dtypes)."""
    for dtype in (np.float32, np.float64):
        for size in range(1, 70):
            for at in range(size):
                row = np.arange(size, dtype=dtype)
                row[at] = np.nan
                row[-1] = np.inf if at != size - 1 else row[-1]
                assert row.argmax() == at


def test_greedy_generation_allocates_nothing_and_matches_the_kernel():
    """Greedy steps take numpy's argmax instead of the sampling kernel: the same ids."""
    from fastrnn.kernels.heads import sample
    _, gen = _text_generator()
    ids = gen.generate_ids("ab", 300, greedy=True, stop=False)
    picks = []
    it = gen.stream_ids("ab", 300, greedy=True, stop=False)
    for t in it:
        picks.append(sample(gen.logits, 0.0, 0, 1.0, 0.5, np.empty(6), np.empty(6, np.int64)))
        assert t == picks[-1]
    assert ids.tolist() == picks
    it = gen.stream_ids("ab", 2000, greedy=True, stop=False)
    next(it)
    count, grown = _allocated_while(lambda: sum(1 for _ in zip(range(500), it)))
    assert count == 500 and grown < 2048, f"{grown} bytes allocated over 500 steps"


def test_seq2seq_greedy_checks_only_the_rows_still_decoding():
    """NaN logits of a row past its eos are padding (no error, the other rows unchanged);
    a row still decoding with NaN logits is an ArgumentError naming it."""
    model = fastrnn.Seq2Seq(source=fastrnn.Embedding(5, 3, seed=3), encoder=fastrnn.GRU(3, 4, seed=3),
                            target=fastrnn.Embedding(4, 2, seed=3),
                            decoder=fastrnn.GRU(2, 4, seed=3), head=fastrnn.Linear(4, 4, seed=3),
                            bos=0, eos=1)
    src = np.array([[0, 1]])                         # (T, N): sources [0] and [1]
    ids, lens = model.greedy_ids(src, max_len=6)
    assert lens.tolist() == [6, 0]                   # row 1 ends at once, row 0 never does
    weight = model.target.weight.copy()
    weight[1] = np.nan                               # feeding eos back: NaN state and logits
    model.target.load_state_dict({"weight": weight})
    got, got_lens = model.greedy_ids(src, max_len=6)
    assert got_lens.tolist() == [6, 0] and got[0].tolist() == ids[0].tolist()
    weight[2] = np.nan                               # row 0 feeds token 2 back
    model.target.load_state_dict({"weight": weight})
    with pytest.raises(ArgumentError, match="step 1 of row 0 hold NaN"):
        model.greedy_ids(src, max_len=6)


def test_predict_refuses_outputs_without_an_argmax():
    """predict gave NaN's index (or 0 for all -inf) as a class; NaN at padded steps, which are
    never read, is no error."""
    clf = fastrnn.Classifier(fastrnn.GRU(2, 3, batch_first=True, seed=0),
                             fastrnn.Linear(3, 2, seed=0), pool="mean")
    x = np.ones((2, 3, 2), np.float32)
    assert clf.predict(x).shape == (2,)
    x[1, 1, 0] = np.nan
    with pytest.raises(ArgumentError, match=r"Classifier.predict: the outputs at index \(1,\) "
                                            r"\(of the ids' shape \(2,\)\) hold NaN"):
        clf.predict(x)
    assert clf.predict(x, lengths=[3, 1]).shape == (2,)   # the NaN step is past row 1's length
    tagger = fastrnn.Tagger(fastrnn.GRU(2, 3, batch_first=True, seed=0),
                            fastrnn.Linear(3, 2, seed=0))
    with pytest.raises(ArgumentError, match=r"Tagger.predict: the outputs at index \(1, 1\)"):
        tagger.predict(x)
    assert tagger.predict(x, lengths=[3, 1]).tolist()[1] == [tagger.predict(x[1:, :1])[0, 0],
                                                             -1, -1]
    head = fastrnn.Linear(3, 2, seed=0)
    head.load_state_dict({"weight": np.zeros((2, 3)), "bias": [-np.inf, -np.inf]})
    masked = fastrnn.Classifier(fastrnn.GRU(2, 3, seed=0), head)
    with pytest.raises(ArgumentError, match="are all -inf"):
        masked.predict(np.ones((4, 2), np.float32))
    head.load_state_dict({"weight": np.zeros((2, 3)), "bias": [np.inf, np.inf]})
    assert masked.predict(np.ones((4, 2), np.float32)) == 0             # the first of ties
