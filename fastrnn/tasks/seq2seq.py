"""Encoder-decoder: Seq2Seq, with greedy (batched) and beam-search decoding."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .. import fileformat
from ..errors import ArgumentError, ShapeError, UnsupportedError
from ..heads import usable_logits
from ..layers import RecurrentLayer
from ..validation import as_array, as_float
from ..vocab import Vocabulary, check_ids
from .records import load_stages, load_vocab, stages_record, vocab_meta
from .stages import (HeadChain, apply_heads, check_choice, check_info, check_row_lengths,
                     check_vocab, empty_batch, prepare_input, run_rnns, split_stages)

BRIDGES = ("concat", "sum")


class Seq2Seq:
    """Encoder-decoder: the encoder's final state seeds the decoder, which then feeds its own
    tokens back from ``bos`` until ``eos`` (or ``max_len``).

    source / target: the input stages (Embedding, OneHot or Vocabulary) of encoder and decoder.
    encoder: a recurrent layer (deep and bidirectional allowed); decoder: a unidirectional one
    with as many layers, whose state size matches the encoder's (for a bidirectional encoder
    the two directions are concatenated per layer, bridge="concat", or added, bridge="sum").
    An LSTM decoder after a GRU/RNN encoder starts from c = 0; an LSTM encoder's c is dropped
    before a GRU/RNN decoder. head: Linear (or a list) scoring the next target token.
    bos / eos: target ids (default: the target vocabulary's bos / eos).
    """

    kind = "seq2seq"

    def __init__(self, *, source, encoder: RecurrentLayer, target, decoder: RecurrentLayer,
                 head, source_vocab: Vocabulary | None = None,
                 target_vocab: Vocabulary | None = None, bos: int | None = None,
                 eos: int | None = None, bridge: str = "concat", info: Mapping | None = None):
        heads = list(head) if isinstance(head, (list, tuple)) else [head]
        self.source, sv, enc, _ = split_stages([source, encoder], "Seq2Seq encoder",
                                               need_input=True)
        self.target, tv, dec, self.heads = split_stages([target, decoder, *heads],
                                                        "Seq2Seq decoder", need_input=True)
        if len(enc) != 1 or len(dec) != 1:
            raise ArgumentError("Seq2Seq takes one recurrent layer (of any depth) on each side")
        self.encoder, self.decoder = enc[0], dec[0]
        self.source_vocab = check_vocab(source_vocab if source_vocab is not None else sv,
                                        "source_vocab")
        self.target_vocab = check_vocab(target_vocab if target_vocab is not None else tv,
                                        "target_vocab")
        for name, v, stage in (("source", self.source_vocab, self.source),
                               ("target", self.target_vocab, self.target)):
            if v is not None and len(v) != stage.size:
                raise ShapeError(f"the {name} vocabulary has {len(v)} symbols but the {name} "
                                 f"input stage takes {stage.size} ids")
        if not self.heads or self.heads[-1].out_features != self.target.size:
            raise ShapeError("Seq2Seq needs a head scoring the target tokens: its last Linear "
                             f"must give {self.target.size} outputs")
        if self.heads[-1].activation not in ("none", "softmax", "log_softmax"):
            raise ArgumentError(f"the last head must score tokens (activation none, softmax or "
                                f"log_softmax), got {self.heads[-1].activation!r}")
        if self.decoder.bidirectional:
            raise UnsupportedError("the decoder runs step by step: it must be unidirectional")
        self.bridge = check_choice(bridge, BRIDGES, "bridge")
        e, d = self.encoder, self.decoder
        if e.num_layers != d.num_layers:
            raise ShapeError(f"the encoder has {e.num_layers} layers and the decoder "
                             f"{d.num_layers}: each encoder layer's final state seeds one decoder "
                             f"layer")
        factor = e.num_directions if bridge == "concat" else 1
        if e.hidden_out * factor != d.hidden_out:
            raise ShapeError(f"the decoder's hidden state has {d.hidden_out} features, but the "
                             f"encoder's final state gives {e.hidden_out * factor} "
                             f"(bridge={bridge!r})")
        if e.mode == "LSTM" and d.mode == "LSTM" and e.hidden_size * factor != d.hidden_size:
            raise ShapeError(f"the decoder's cell state has {d.hidden_size} features, the "
                             f"encoder's gives {e.hidden_size * factor}")
        tvocab = self.target_vocab
        if bos is None and tvocab is not None:
            bos = tvocab.bos_id
        if eos is None and tvocab is not None:
            eos = tvocab.eos_id
        self.bos = _target_id(bos, "bos", self.target.size)
        self.eos = _target_id(eos, "eos", self.target.size)
        self.info = check_info(info)

    # ----- encoder -----
    def encode(self, src, lengths=None):
        """Source -> (decoder's initial state, batched): h (L, N, H) or (h, c) for an LSTM."""
        feats, lengths, batched = prepare_input(self.source, self.source_vocab,
                                                self.encoder.batch_first, src, lengths,
                                                "Seq2Seq encoder")
        if feats.shape[0] == 0:  # an empty source: one padded step, the encoder's zero state
            feats = np.zeros((1,) + feats.shape[1:], feats.dtype)
            lengths = np.zeros(feats.shape[1], np.int64)
        _, state = run_rnns([self.encoder], feats, lengths)
        e, d = self.encoder, self.decoder
        h, c = (state if e.mode == "LSTM" else (state, None))

        def fold(a):
            if e.num_directions == 1:
                return a
            a = a.reshape(e.num_layers, 2, *a.shape[1:])
            return (np.concatenate([a[:, 0], a[:, 1]], axis=-1) if self.bridge == "concat"
                    else a[:, 0] + a[:, 1])

        h = fold(h)
        if d.mode != "LSTM":
            return h, batched
        c = fold(c) if c is not None else np.zeros(h.shape[:2] + (d.hidden_size,), h.dtype)
        return (h, c), batched

    # ----- greedy -----
    def greedy_ids(self, src, lengths=None, max_len: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Batched greedy decoding: (ids (N, max_len), lengths (N,)); ids past a row's length
        (its eos, not counted) are padding. Unbatched input gives (max_len,) and ().

        A row still decoding whose logits hold NaN, or are all -inf, is an ArgumentError
        naming the step and row; of several +inf logits the first is taken."""
        max_len = _check_max_len(max_len)
        state, batched = self.encode(src, lengths)
        h = state[0] if isinstance(state, tuple) else state
        rows = h.shape[1]
        stream = self.decoder.stream(rows)
        stream.state = state
        heads = HeadChain(self.heads, rows, "none")
        x = np.zeros((rows, self.target.output_size), self.target.dtype)
        tok = np.full(rows, self.bos, np.int64)
        out = np.zeros((rows, max_len), np.int64)
        done = np.zeros(rows, bool)
        hit = np.zeros(rows, bool)
        flat = heads.bufs[-1].reshape(-1)  # the logits of every row: finite when their dot is
        for t in range(max_len):
            self.target._lookup_into(tok, x)
            logits = heads(stream.step(x))
            np.argmax(logits, axis=1, out=tok)
            if not math.isfinite(flat.dot(flat)):
                _check_greedy_rows(logits, tok, done, t)
            out[:, t] = tok
            np.equal(tok, self.eos, out=hit)
            np.logical_or(done, hit, out=done)
            if done.all():
                break
        is_eos = out == self.eos
        lens = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), max_len)
        return (out, lens) if batched else (out[0], lens[0])

    # ----- beam search -----
    def beam_search(self, src, beam: int = 4, max_len: int = 50, length_penalty: float = 0.0,
                    n_best: int = 1, lengths=None) -> list[tuple[list[int], float]]:
        """One source sequence (or a batch of one, with ``lengths`` as for encode) -> the n_best
        hypotheses as (ids without eos, score), best first; none where no hypothesis has a
        finite score. Logits that hold NaN are an ArgumentError (as in greedy decoding); +inf
        logits are certain (log-probability -log(count) each, the other tokens -inf); a
        hypothesis whose logits are all -inf has no continuation.

        Each step extends every live hypothesis by every token, keeps the ``beam`` best by the
        sum of log-probabilities, and sets those ending in eos aside; the search ends once
        ``beam`` hypotheses have ended (or at max_len, where the live ones count too). A
        hypothesis of n tokens (eos included) scores sum(log p) / n ** length_penalty.
        """
        beam = _check_beam(beam)
        if isinstance(n_best, bool) or not isinstance(n_best, (int, np.integer)) \
                or not 1 <= n_best <= beam:
            raise ArgumentError(f"n_best must be an int in [1, beam={beam}], got {n_best!r}")
        length_penalty = _check_length_penalty(length_penalty)
        max_len = _check_max_len(max_len)
        state, batched = self.encode(src, lengths)
        if batched:
            h = state[0] if isinstance(state, tuple) else state
            if h.shape[1] != 1:
                raise ShapeError(f"beam_search decodes one source sequence, got a batch of "
                                 f"{h.shape[1]}; use translate() for several")
        beam = int(beam)
        lstm = isinstance(state, tuple)
        rep = (lambda a: np.repeat(a.reshape(a.shape[0], 1, -1), beam, axis=1))
        stream = self.decoder.stream(beam)
        stream.state = (rep(state[0]), rep(state[1])) if lstm else rep(state)
        heads = HeadChain(self.heads, beam, "log_softmax")
        flat = heads.bufs[-1].reshape(-1)
        vsize = self.target.size
        x = np.zeros((beam, self.target.output_size), self.target.dtype)
        tokens = np.full(beam, self.bos, np.int64)
        scores = np.full(beam, -np.inf)
        scores[0] = 0.0
        hist = np.zeros((beam, max_len), np.int64)
        finished: list[tuple[float, list[int], float]] = []

        def norm(score, n):
            if not length_penalty or score == 0:
                return score
            with np.errstate(all="ignore"):  # n ** length_penalty may overflow to inf or 0
                return float(score / np.power(float(n), length_penalty))

        for t in range(max_len):
            self.target._lookup_into(tokens, x)
            h = stream.step(x)
            logp = heads(h).astype(np.float64)
            if not math.isfinite(flat.dot(flat)):  # all finite, the usual case, in one call
                # logits with NaN or +inf, or all -inf, have NaN log-probabilities
                unusable = np.isnan(logp).any(axis=1) & np.isfinite(scores)
                if unusable.any():
                    self._usable_log_probs(h, logp, np.flatnonzero(unusable), t)
            cand = (scores[:, None] + logp).ravel()
            order = np.argsort(-cand, kind="stable")[:2 * beam]
            keep = []
            for idx in order:
                s = cand[idx]
                if not np.isfinite(s):
                    break
                b, v = divmod(int(idx), vsize)
                if v == self.eos:
                    finished.append((norm(s, t + 1), hist[b, :t].tolist(), float(s)))
                else:
                    keep.append((b, v, s))
                if len(keep) == beam:
                    break
            if len(finished) >= beam or not keep:
                break
            src_rows = np.array([k[0] for k in keep] + [keep[0][0]] * (beam - len(keep)))
            hist = hist[src_rows]
            tokens = np.array([k[1] for k in keep] + [keep[0][1]] * (beam - len(keep)))
            hist[:, t] = tokens
            scores = np.array([k[2] for k in keep] + [-np.inf] * (beam - len(keep)))
            st = stream.state
            stream.state = (st[0][:, src_rows], st[1][:, src_rows]) if lstm else st[:, src_rows]
        else:
            for b in range(beam):
                if np.isfinite(scores[b]):
                    finished.append((norm(scores[b], max_len), hist[b].tolist(),
                                     float(scores[b])))
        finished.sort(key=lambda f: -f[0])
        return [(ids, float(score)) for score, ids, _ in finished[:n_best]]

    def _usable_log_probs(self, h, logp, rows, step: int) -> None:
        """Beam rows whose log-softmax is NaN, from their logits: NaN is an ArgumentError (as
        in greedy decoding); the +inf tokens share the probability (log(1 / count) each, every
        other token -inf); every logit -inf leaves the hypothesis no continuation (all -inf)."""
        logits = apply_heads(self.heads, h[rows], "none").astype(np.float64)
        for r, row in zip(rows, logits):
            if (row == -np.inf).all():
                logp[r] = -np.inf
                continue
            usable = usable_logits(row, np.empty_like(row), f"the decoder's logits at step "
                                                            f"{step} of hypothesis {r}")
            if usable is row:  # finite logits with a NaN log-softmax: cannot happen
                raise ArgumentError(f"the decoder's log-probabilities at step {step} of "
                                    f"hypothesis {r} are NaN")
            logp[r] = usable - math.log(np.count_nonzero(usable == 0))

    # ----- text in, text out -----
    def translate(self, src, max_len: int = 50, beam: int = 1, length_penalty: float = 0.0,
                  lengths=None):
        """Source text (or ids) -> target text (or ids): one string or a list for a batch.

        beam=1 decodes greedily (batched); beam>1 runs beam_search on each sequence."""
        beam = _check_beam(beam)
        if beam == 1:
            _check_length_penalty(length_penalty)  # unused by greedy decoding, checked alike
            ids, lens = self.greedy_ids(src, lengths, max_len)
            rows = [ids[:lens].tolist()] if ids.ndim == 1 else \
                [r[:n].tolist() for r, n in zip(ids, lens)]
            single = ids.ndim == 1
        else:
            sources, single = self._one_by_one(src, lengths)
            rows = []
            for one, length in sources:
                hyps = self.beam_search(one, beam, max_len, length_penalty, lengths=length)
                rows.append(hyps[0][0] if hyps else [])
        if self.target_vocab is not None:
            rows = [self.target_vocab.decode(np.array(r, np.int64)) for r in rows]
        return rows[0] if single else rows

    def _one_by_one(self, src, lengths):
        """translate's beam path: ([(one source, its lengths or None)], whether src is one
        sequence); the rows of a 2-D batch as batches of one in the encoder's layout."""
        if isinstance(src, (list, tuple)) and len(src) == 0:
            raise empty_batch("Seq2Seq encoder")
        if isinstance(src, str) or (isinstance(src, (list, tuple)) and src
                                    and isinstance(src[0], str)):
            if lengths is not None:
                raise ArgumentError("lengths= goes with id arrays; texts carry their own lengths")
            texts = [src] if isinstance(src, str) else list(src)
            return [(text, None) for text in texts], isinstance(src, str)
        arr = as_array(src, "source ids")
        if arr.ndim == 1:
            return [(arr, lengths)], True
        if arr.ndim != 2:
            raise ShapeError(f"source ids must be (T,) or 2-D, got shape {arr.shape}")
        first = self.encoder.batch_first
        rows, steps = arr.shape if first else arr.shape[::-1]
        if rows == 0:
            raise empty_batch("Seq2Seq encoder", arr.shape, first)
        lens = None if lengths is None else check_row_lengths(lengths, rows, steps)
        return [(arr[i:i + 1] if first else arr[:, i:i + 1],
                 None if lens is None else lens[i:i + 1]) for i in range(rows)], False

    def to_record(self):
        tensors: dict[str, np.ndarray] = {}
        meta = {"encoder": stages_record("encoder.", self.source, [self.encoder], [], tensors),
                "decoder": stages_record("decoder.", self.target, [self.decoder], self.heads,
                                         tensors),
                "source_vocab": vocab_meta(self.source_vocab),
                "target_vocab": vocab_meta(self.target_vocab),
                "bos": self.bos, "eos": self.eos, "bridge": self.bridge, "info": self.info}
        return self.kind, meta, tensors

    def __repr__(self) -> str:
        return (f"fastrnn.Seq2Seq(source={self.source!r}, encoder={self.encoder!r}, "
                f"target={self.target!r}, decoder={self.decoder!r}, head={self.heads!r})")


def _check_greedy_rows(logits, tok, done, step: int) -> None:
    """Greedy decoding's check of logits that are not all finite: a row still decoding whose
    top logit (at its argmax ``tok``, which numpy takes at the first NaN) is not finite holds
    NaN or +inf, or is all -inf; NaN and all -inf are an ArgumentError (heads.usable_logits),
    +inf is certain, and argmax took the first. Rows past their eos are padding."""
    top = np.take_along_axis(logits, tok[:, None], axis=1)[:, 0]
    for r in np.flatnonzero(~np.isfinite(top) & ~done):
        usable_logits(logits[r], np.empty_like(logits[r]),
                      f"the decoder's logits at step {step} of row {r}")


def _target_id(value, name: str, size: int) -> int:
    """The bos / eos target id: one int in [0, size)."""
    if value is None:
        raise ArgumentError(f"Seq2Seq needs the {name} id: give {name}=ID, or a target_vocab "
                            f"built with {name}=SYMBOL")
    arr = check_ids(value, size, f"{name} id")
    if arr.ndim:
        raise ShapeError(f"{name} is one target id, got shape {arr.shape}")
    return int(arr)


def _check_length_penalty(value) -> float:
    number = as_float(value)
    if number is None or not math.isfinite(number):
        raise ArgumentError(f"length_penalty must be a finite number, got {value!r}")
    return number


# The most steps and hypotheses a decoder preallocates (ids of every row and step, a stream of
# `beam` rows): beyond them numpy's errors are untyped; up to them a size memory cannot hold
# raises MemoryError (2^31 steps of one row are 16 GiB of ids).
_MAX_LEN = 1 << 31
_MAX_BEAM = 1 << 31


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) \
            or not 1 <= max_len <= _MAX_LEN:
        raise ArgumentError(f"max_len must be an int in [1, {_MAX_LEN}], got {max_len!r}")
    return int(max_len)


def _check_beam(beam) -> int:
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) \
            or not 1 <= beam <= _MAX_BEAM:
        raise ArgumentError(f"beam must be an int in [1, {_MAX_BEAM}], got {beam!r}")
    return int(beam)


def _load_seq2seq(meta, tensors):
    enc = load_stages(meta["encoder"], tensors, "encoder.")
    dec = load_stages(meta["decoder"], tensors, "decoder.")
    return Seq2Seq(source=enc[0], encoder=enc[1], target=dec[0], decoder=dec[1], head=dec[2:],
                   source_vocab=load_vocab(meta.get("source_vocab")),
                   target_vocab=load_vocab(meta.get("target_vocab")), bos=meta.get("bos"),
                   eos=meta.get("eos"), bridge=meta.get("bridge", "concat"),
                   info=meta.get("info"))


fileformat.register_kind("seq2seq", _load_seq2seq)
