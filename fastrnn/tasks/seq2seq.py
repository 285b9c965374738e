"""Sequence tasks on a recurrent stack: many-to-one, many-to-many, one-to-many, encoder-decoder.

A model is a chain of *stages*: an optional input stage (``Embedding``, ``OneHot`` or a
``Vocabulary``, which means one-hot rows of its size), one or more recurrent layers
(``fastrnn.RNN/GRU/LSTM``, chained output to input) and zero or more ``Linear`` heads.

- ``Sequential(input, rnn, head, pool="last" | "mean" | "max")``: many-to-one (``Classifier``);
  ``pool=None``: many-to-many aligned, the heads applied at every step (``Tagger``).
- ``Generator(input, rnn, head)``: one-to-many, streamed token by token through the layers' stream
  API (greedy, temperature, top-k, top-p, seeded, stop symbol) with nothing allocated per step.
- ``Seq2Seq(source=..., encoder=..., target=..., decoder=..., head=...)``: the encoder's final state
  seeds the decoder; greedy (batched) and beam-search decoding.

Token ids come in the layout of the first recurrent layer: (N, T) when it is ``batch_first``, else
(T, N), or unbatched (T,); texts (a string, or a list of strings for a batch) are encoded with the
model's vocabulary. Every id is checked against the input stage's size before any kernel runs; ids
at padded steps (past a row's length) are never read and may be anything.
Every model saves with ``fastrnn.save`` and loads with ``fastrnn.load``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ArgumentError, DTypeError, ShapeError, UnsupportedError
from ..heads import Embedding, Linear, OneHot, check_sampling, stage_from_config
from ..kernels.heads import sample
from ..layers import RecurrentLayer, layer_from_config
from ..recurrent import check_lengths
from ..validation import as_array
from ..vocab import Vocabulary, check_ids

__all__ = ["Sequential", "Classifier", "Tagger", "Generator", "Seq2Seq"]

POOLS = ("last", "mean", "max")


# ------------------------------------------------------------------------------------ helpers
def _split_stages(stages: Sequence[Any], what: str, *, need_input: bool = False):
    """(input stage or None, vocabulary or None, [recurrent layers], [Linear heads])."""
    stages = list(stages)
    if len(stages) == 1 and isinstance(stages[0], (list, tuple)):
        stages = list(stages[0])
    inp, vocab = None, None
    if stages and isinstance(stages[0], (Embedding, OneHot, Vocabulary)):
        inp = stages.pop(0)
        if isinstance(inp, Vocabulary):
            vocab, inp = inp, OneHot(len(inp))
    rnns = []
    while stages and isinstance(stages[0], RecurrentLayer):
        rnns.append(stages.pop(0))
    heads = []
    while stages and isinstance(stages[0], Linear):
        heads.append(stages.pop(0))
    if stages:
        raise ArgumentError(
            f"{what} takes stages in the order [Embedding | OneHot | Vocabulary], one or more "
            f"recurrent layers, then Linear heads; {type(stages[0]).__name__} is out of place")
    if not rnns:
        raise ArgumentError(f"{what} needs at least one recurrent layer (fastrnn.RNN/GRU/LSTM)")
    if need_input and inp is None:
        raise ArgumentError(f"{what} needs an input stage (Embedding, OneHot or Vocabulary) to "
                            f"feed its own tokens back")
    size = inp.output_size if inp is not None else rnns[0].input_size
    for i, r in enumerate(rnns):
        if r.input_size != size:
            src = "the input stage" if i == 0 else f"recurrent layer {i - 1}"
            raise ShapeError(f"{what}: recurrent layer {i} has input_size {r.input_size}, but "
                             f"{src} gives {size} features")
        size = r.num_directions * r.hidden_out
    for i, h in enumerate(heads):
        if h.in_features != size:
            raise ShapeError(f"{what}: head {i} has in_features {h.in_features}, but the stage "
                             f"before it gives {size} features")
        size = h.out_features
    return inp, vocab, rnns, heads


def _check_lengths(lengths: Any, rows: int, steps: int) -> np.ndarray:
    """The layers' check (recurrent.check_lengths), any shape of N entries taken as (N,)."""
    return check_lengths(as_array(lengths, "lengths").reshape(-1), rows, steps)


def _prepare(inp, vocab, batch_first: bool, x: Any, lengths: Any, what: str):
    """Input -> (features (T, N, F) time-major, lengths (N,) or None, batched)."""
    is_text = isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0
                                     and all(isinstance(s, str) for s in x))
    if is_text:
        if vocab is None:
            raise ArgumentError(f"{what} has no vocabulary to encode text with; pass token ids "
                                f"(or build it with vocab=...)")
        if lengths is not None:
            raise ArgumentError("lengths= goes with id arrays; texts carry their own lengths")
        if isinstance(x, str):
            ids, batched = vocab.encode(x)[:, None], False
        else:
            ids, lengths = vocab.encode_batch(x, batch_first=False)
            batched = True
    else:
        arr = as_array(x, f"{what}'s input")
        if arr.dtype.kind == "f":
            if inp is not None and not (isinstance(inp, OneHot) and arr.ndim in (2, 3)
                                        and arr.shape[-1] == inp.size):
                raise DTypeError(f"{what} takes token ids (integers) for its "
                                 f"{type(inp).__name__} input, got dtype {arr.dtype}")
            if arr.ndim not in (2, 3):
                raise ShapeError(f"feature input must be (T, F) or 3-D, got shape {arr.shape}")
            batched = arr.ndim == 3
            feats = arr[:, None] if not batched else (arr.transpose(1, 0, 2) if batch_first
                                                      else arr)
            if lengths is not None:
                lengths = _check_lengths(lengths, feats.shape[1], feats.shape[0])
            return feats, lengths, batched
        if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
            raise DTypeError(f"{what} takes token ids as integers, got dtype {arr.dtype}")
        if inp is None:
            raise DTypeError(f"{what} has no input stage, so it takes float features, not ids")
        if arr.ndim not in (1, 2):
            raise ShapeError(f"token ids must be (T,) or 2-D ({'N, T' if batch_first else 'T, N'})"
                             f", got shape {arr.shape}")
        batched = arr.ndim == 2
        ids = arr[:, None] if not batched else (arr.T if batch_first else arr)
    steps, rows = ids.shape
    if lengths is not None:
        lengths = _check_lengths(lengths, rows, steps)
        pad = np.arange(steps)[:, None] >= lengths[None, :]
        if pad.any():
            ids = np.where(pad, 0, ids)    # padded steps are never read: any id is allowed there
    ids = check_ids(ids, inp.size, f"{what} input ids")
    return inp(ids), lengths, batched


def _run_rnns(rnns, feats: np.ndarray, lengths, state0=None):
    """Time-major features through the chain -> (outputs (T, N, F), final state of the last)."""
    state = None
    for i, r in enumerate(rnns):
        x = feats.transpose(1, 0, 2) if r.batch_first else feats
        out, state = r(x, state0 if i == 0 else None, lengths=lengths)
        feats = out.transpose(1, 0, 2) if r.batch_first else out
    return feats, state


def _final_h(rnn, state) -> np.ndarray:
    """The last layer's final hidden state, directions concatenated: (N, D * H_out)."""
    h = state[0] if rnn.mode == "LSTM" else state
    d = rnn.num_directions
    top = h[-d:]
    return np.concatenate(list(top), axis=-1) if d > 1 else top[0]


def _apply_heads(heads, x: np.ndarray, final_activation: str | None = None) -> np.ndarray:
    for i, h in enumerate(heads):
        x = h(x, final_activation if i == len(heads) - 1 else None)
    return x


class _HeadChain:
    """Preallocated buffers for running a head chain on (rows, F) without allocating."""

    def __init__(self, heads, rows: int, final_activation: str | None):
        self.heads = heads
        self.bufs = [np.zeros((rows, h.out_features), h.dtype) for h in heads]
        self.final = final_activation
        self.inp = [np.zeros((rows, h.in_features), h.dtype) for h in heads[:1]]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != self.heads[0].dtype or not x.flags.c_contiguous:
            np.copyto(self.inp[0], x)
            x = self.inp[0]
        last = len(self.heads) - 1
        for i, (h, out) in enumerate(zip(self.heads, self.bufs)):
            h._apply_into(x, out, self.final if i == last else None)
            x = out
        return x


# ------------------------------------------------------------------------------------ records
def _stages_record(prefix: str, inp, rnns, heads, tensors: dict) -> dict:
    meta = {"input": None if inp is None else inp.config(),
            "rnns": [r.config() for r in rnns], "heads": [h.config() for h in heads]}
    if inp is not None:
        for k, v in inp.state_dict().items():
            tensors[f"{prefix}input.{k}"] = v
    for i, r in enumerate(rnns):
        for k, v in r.state_dict().items():
            tensors[f"{prefix}rnn.{i}.{k}"] = v
    for i, h in enumerate(heads):
        for k, v in h.state_dict().items():
            tensors[f"{prefix}head.{i}.{k}"] = v
    return meta


def _sub(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _stages_load(meta: dict, tensors: Mapping, prefix: str = "") -> list:
    """The stages of a saved record (a malformed one: fileformat.load's FormatError)."""
    stages = []
    if meta["input"] is not None:
        stages.append(stage_from_config(meta["input"], _sub(tensors, f"{prefix}input.")))
    for i, cfg in enumerate(meta["rnns"]):
        stages.append(layer_from_config(cfg, _sub(tensors, f"{prefix}rnn.{i}.")))
    for i, cfg in enumerate(meta["heads"]):
        stages.append(stage_from_config(cfg, _sub(tensors, f"{prefix}head.{i}.")))
    return stages


def _vocab_meta(v: Vocabulary | None):
    return None if v is None else v.to_meta()


def _vocab_load(m) -> Vocabulary | None:
    return None if m is None else Vocabulary.from_meta(m)


# ------------------------------------------------------------------------------------ many-to-one / many-to-many
class Sequential:
    """Input stage -> recurrent layer(s) -> pooling -> Linear head(s).

    pool: "last" (the last layer's final hidden state: the output at each row's last valid step;
    for a bidirectional layer the forward state at step L-1 concatenated with the reverse state
    at step 0, torch's ``cat(h_n[-2], h_n[-1])``), "mean" / "max" (over each row's valid steps;
    a row of length 0 pools to zeros), or None (no pooling: the heads run at every step, and
    padded steps give zeros).
    vocab: encodes text inputs (implied when the input stage is a Vocabulary).
    labels: optional class names, one per output; ``info``: JSON-able notes saved with the model.
    """

    kind = "sequential"

    def __init__(self, *stages, pool: str | None = "last", vocab: Vocabulary | None = None,
                 labels: Sequence[str] | None = None, info: Mapping | None = None):
        inp, v, self.rnns, self.heads = _split_stages(stages, type(self).__name__)
        self.input = inp
        self.vocab = vocab if vocab is not None else v
        if self.vocab is not None and not isinstance(self.vocab, Vocabulary):
            raise ArgumentError(f"vocab must be a fastrnn.Vocabulary, got {type(vocab).__name__}")
        if self.vocab is not None and inp is not None and len(self.vocab) != inp.size:
            raise ShapeError(f"the vocabulary has {len(self.vocab)} symbols but the input stage "
                             f"takes {inp.size} ids")
        if pool not in POOLS and pool is not None:
            raise ArgumentError(f"pool must be one of {POOLS} or None, got {pool!r}")
        self.pool = pool
        self.labels = None if labels is None else [str(s) for s in labels]
        if self.labels is not None and len(self.labels) != self.output_size:
            raise ShapeError(f"{len(self.labels)} labels for {self.output_size} outputs")
        self.info = dict(info or {})

    @property
    def batch_first(self) -> bool:
        return self.rnns[0].batch_first

    @property
    def output_size(self) -> int:
        if self.heads:
            return self.heads[-1].out_features
        return self.rnns[-1].num_directions * self.rnns[-1].hidden_out

    def features(self, x, lengths=None):
        """The recurrent stack's outputs: pooled (N, F) or per step (T, N, F), time-major, with
        the batched flag and lengths: (features, lengths, batched)."""
        feats, lengths, batched = _prepare(self.input, self.vocab, self.batch_first, x, lengths,
                                           type(self).__name__)
        out, state = _run_rnns(self.rnns, feats, lengths)
        if self.pool is None:
            return out, lengths, batched
        if self.pool == "last":
            return _final_h(self.rnns[-1], state), lengths, batched
        steps, rows = out.shape[:2]
        if lengths is None:
            return (out.mean(axis=0) if self.pool == "mean" else out.max(axis=0)), None, batched
        valid = (np.arange(steps)[:, None] < lengths[None, :])[..., None]
        if self.pool == "mean":
            total = np.where(valid, out, 0).sum(axis=0)
            return total / np.maximum(lengths, 1)[:, None].astype(out.dtype), lengths, batched
        pooled = np.where(valid, out, -np.inf).max(axis=0, initial=-np.inf)
        return np.where(lengths[:, None] > 0, pooled, 0).astype(out.dtype), lengths, batched

    def __call__(self, x, lengths=None) -> np.ndarray:
        """Many-to-one: (N, C) or (C,) unbatched. pool=None: per step, (T, N, C) / (N, T, C)
        with batch_first / (T, C) unbatched, zeros at padded steps."""
        return self._outputs(x, lengths)[0]

    def predict(self, x, lengths=None) -> np.ndarray:
        """The argmax over the outputs: class ids (N,) / () or per-step ids (like __call__).
        At padded steps of a tagger the id is -1."""
        y, pad = self._outputs(x, lengths)
        ids = y.argmax(axis=-1)
        return ids if pad is None else np.where(pad, -1, ids)

    def _outputs(self, x, lengths):
        """(outputs as __call__ returns them, the padded steps in their layout or None)."""
        feats, lengths, batched = self.features(x, lengths)
        y = _apply_heads(self.heads, feats)
        if self.pool is not None:
            return (y if batched else y[0]), None
        pad = None
        if lengths is not None:
            pad = np.arange(y.shape[0])[:, None] >= lengths[None, :]
            y[pad] = 0
        if not batched:
            return y[:, 0], None if pad is None else pad[:, 0]
        if self.batch_first:
            return (np.ascontiguousarray(y.transpose(1, 0, 2)),
                    None if pad is None else np.ascontiguousarray(pad.T))
        return y, pad

    def stages(self) -> list:
        return ([self.input] if self.input is not None else []) + self.rnns + self.heads

    def to_record(self):
        tensors: dict[str, np.ndarray] = {}
        meta = {"class": type(self).__name__, "pool": self.pool,
                "stages": _stages_record("", self.input, self.rnns, self.heads, tensors),
                "vocab": _vocab_meta(self.vocab), "labels": self.labels, "info": self.info}
        return self.kind, meta, tensors

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self.stages())
        return f"fastrnn.{type(self).__name__}({inner}, pool={self.pool!r})"


class Classifier(Sequential):
    """Many-to-one: a Sequential whose pool is "last" (default), "mean" or "max"."""

    def __init__(self, *stages, pool: str = "last", vocab=None, labels=None, info=None):
        if pool is None:
            raise ArgumentError("a Classifier pools over time; use Tagger for per-step outputs")
        super().__init__(*stages, pool=pool, vocab=vocab, labels=labels, info=info)


class Tagger(Sequential):
    """Many-to-many aligned: one output per step (a Sequential with pool=None)."""

    def __init__(self, *stages, vocab=None, labels=None, info=None):
        super().__init__(*stages, pool=None, vocab=vocab, labels=labels, info=info)


def _load_sequential(meta, tensors):
    cls = {"Classifier": Classifier, "Tagger": Tagger}.get(meta.get("class"), Sequential)
    stages = _stages_load(meta["stages"], tensors)
    kw = dict(vocab=_vocab_load(meta.get("vocab")), labels=meta.get("labels"),
              info=meta.get("info"))
    if cls is not Tagger:
        kw["pool"] = meta.get("pool", "last")
    return cls(*stages, **kw)


# ------------------------------------------------------------------------------------ one-to-many
_UNIFORM_BLOCK = 4096  # a Generator's random numbers drawn per block of steps


class Generator:
    """Input stage -> unidirectional recurrent layer(s) -> Linear head(s) scoring the next token.

    The last head's activation must be "none", "softmax" or "log_softmax": sampling uses its
    pre-activation scores (the logits). vocab: turns text prompts into ids and ids into text;
    stop: the symbol (or id) that ends a generation (default: the vocabulary's eos, if any).
    """

    kind = "generator"

    def __init__(self, *stages, vocab: Vocabulary | None = None, stop: str | int | None = None,
                 info: Mapping | None = None):
        inp, v, self.rnns, self.heads = _split_stages(stages, "Generator", need_input=True)
        self.input = inp
        self.vocab = vocab if vocab is not None else v
        if not self.heads:
            raise ArgumentError("Generator needs a Linear head that scores the next token")
        if self.heads[-1].activation not in ("none", "softmax", "log_softmax"):
            raise ArgumentError(f"the Generator's last head must score tokens (activation none, "
                                f"softmax or log_softmax), got {self.heads[-1].activation!r}")
        if self.heads[-1].out_features != inp.size:
            raise ShapeError(f"the last head gives {self.heads[-1].out_features} scores but the "
                             f"input stage takes {inp.size} ids: they must be the same tokens")
        for r in self.rnns:
            if r.bidirectional:
                raise UnsupportedError("a Generator runs step by step, so its recurrent layers "
                                       "must be unidirectional")
        if self.vocab is not None and len(self.vocab) != inp.size:
            raise ShapeError(f"the vocabulary has {len(self.vocab)} symbols but the model takes "
                             f"{inp.size} ids")
        self.stop = self._stop_id(stop, default=True)
        self.info = dict(info or {})
        self._logits = None

    @property
    def vocab_size(self) -> int:
        return self.input.size

    def _stop_id(self, stop, default=False) -> int | None:
        if stop is None:
            return self.vocab.eos_id if (default and self.vocab is not None) else None
        if isinstance(stop, str):
            if self.vocab is None:
                raise ArgumentError("a stop symbol given as text needs a vocabulary")
            if stop not in self.vocab:
                raise ArgumentError(f"stop symbol {stop!r} is not in the vocabulary")
            return self.vocab.id(stop)
        stop_id = check_ids(stop, self.vocab_size, "stop id")
        if stop_id.ndim:
            raise ShapeError(f"stop is one symbol or id, got shape {stop_id.shape}")
        return int(stop_id)

    def _prompt_ids(self, prompt) -> np.ndarray:
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt
                                       and isinstance(prompt[0], str)):
            if self.vocab is None:
                raise ArgumentError("a text prompt needs a vocabulary; pass ids instead")
            ids = self.vocab.encode(prompt)
        elif prompt is None:
            ids = np.zeros(0, np.int64)
        else:
            ids = as_array(prompt, "prompt ids")
            if ids.size == 0:
                ids = ids.astype(np.int64)
        ids = check_ids(ids, self.vocab_size, "prompt ids")
        if ids.ndim != 1:
            raise ShapeError(f"a prompt is one sequence of ids (T,), got shape {ids.shape}")
        if ids.size == 0:
            bos = self.vocab.bos_id if self.vocab is not None else None
            if bos is None:
                raise ArgumentError("an empty prompt needs a vocabulary with a bos symbol to "
                                    "start from; give a prompt")
            ids = np.array([bos], np.int64)
        return ids

    @property
    def logits(self) -> np.ndarray | None:
        """The scores of the latest generated step (V,): a view that the next step overwrites."""
        return self._logits

    def stream_ids(self, prompt=None, steps: int = 100, *, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, stop: str | int | None = None,
                   greedy: bool = False) -> Iterator[int]:
        """Yield up to ``steps`` generated ids, one per step, as they are produced.

        The prompt runs through the layers in one call; then each step scores the next token,
        picks it, and feeds it back through ``layer.stream(1)``. stop: a symbol or id (default:
        the model's stop symbol), or False for none. greedy=True (or temperature=0)
        takes the argmax; otherwise a token is drawn from softmax(logits / temperature) cut to
        the top_k most likely and then to the top_p nucleus, with numpy's generator seeded by
        ``seed``. Generation ends early at the stop symbol (not yielded). After the set-up,
        no step allocates an array.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ArgumentError(f"steps must be an int >= 0, got {steps!r}")
        temperature, top_k, top_p = check_sampling(0.0 if greedy else temperature, top_k, top_p)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ArgumentError(f"seed must be None or an int >= 0, got {seed!r}")
        stop_id = self.stop if stop is None else (None if stop is False else self._stop_id(stop))
        stop_id = -1 if stop_id is None else stop_id
        ids = self._prompt_ids(prompt)
        return self._loop(ids, int(steps), temperature, top_k, top_p, seed, stop_id)

    def _loop(self, ids, steps, temperature, top_k, top_p, seed, stop_id):
        rng = np.random.default_rng(seed)
        # drawn a block at a time (refilled in place: the same numbers as one draw of `steps`),
        # so that a long generation, which is a lazy stream, needs no memory up front
        uniforms = rng.random(min(max(steps, 1), _UNIFORM_BLOCK))
        streams = [r.stream(1) for r in self.rnns]
        feats = self.input(ids)
        for r, s in zip(self.rnns, streams):
            out, state = r(feats)                       # unbatched (T, F): the whole prompt
            s.state = ((state[0][:, None], state[1][:, None]) if r.mode == "LSTM"
                       else state[:, None])
            feats = out
        heads = _HeadChain(self.heads, 1, "none")
        x = np.zeros((1, self.input.output_size), getattr(self.input, "dtype", np.float32))
        tok = np.zeros(1, np.int64)
        probs = np.empty(self.vocab_size, np.float64)
        order = np.empty(self.vocab_size, np.int64)
        y = np.ascontiguousarray(feats[-1:])
        row = self._logits = heads.bufs[-1][0]          # the one logits buffer, reused
        for i in range(steps):
            heads(y)
            j = i % _UNIFORM_BLOCK
            if j == 0 and i:
                rng.random(out=uniforms)
            t = sample(row, temperature, top_k, top_p, uniforms[j], probs, order)
            if t == stop_id:
                return
            yield t
            if i + 1 == steps:
                return
            tok[0] = t
            self.input._lookup_into(tok, x)
            y = x
            for s in streams:
                y = s.step(y)

    def stream(self, prompt=None, steps: int = 100, **kw) -> Iterator[str]:
        """Like stream_ids, yielding symbols (needs a vocabulary)."""
        if self.vocab is None:
            raise ArgumentError("stream() yields symbols and needs a vocabulary; use stream_ids")
        symbols = self.vocab.symbols
        for t in self.stream_ids(prompt, steps, **kw):
            yield symbols[t]

    def generate_ids(self, prompt=None, steps: int = 100, **kw) -> np.ndarray:
        """All generated ids (the prompt not included) as an int64 array."""
        return np.fromiter(self.stream_ids(prompt, steps, **kw), dtype=np.int64)

    def generate(self, prompt=None, steps: int = 100, **kw) -> str:
        """The generated continuation of ``prompt`` as text (the prompt not included).
        Keywords as stream_ids: temperature, top_k, top_p, seed, stop, greedy."""
        if self.vocab is None:
            raise ArgumentError("generate() returns text and needs a vocabulary; use "
                                "generate_ids")
        return self.vocab.decode(self.generate_ids(prompt, steps, **kw), strip=False)

    def stages(self) -> list:
        return [self.input] + self.rnns + self.heads

    def to_record(self):
        tensors: dict[str, np.ndarray] = {}
        meta = {"stages": _stages_record("", self.input, self.rnns, self.heads, tensors),
                "vocab": _vocab_meta(self.vocab), "stop": self.stop, "info": self.info}
        return self.kind, meta, tensors

    def __repr__(self) -> str:
        return f"fastrnn.Generator({', '.join(repr(s) for s in self.stages())})"


def _load_generator(meta, tensors):
    return Generator(*_stages_load(meta["stages"], tensors), vocab=_vocab_load(meta.get("vocab")),
                     stop=meta.get("stop"), info=meta.get("info"))


# ------------------------------------------------------------------------------------ encoder-decoder
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
        self.source, sv, enc, _ = _split_stages([source, encoder], "Seq2Seq encoder",
                                                need_input=True)
        self.target, tv, dec, self.heads = _split_stages([target, decoder, *heads],
                                                         "Seq2Seq decoder", need_input=True)
        if len(enc) != 1 or len(dec) != 1:
            raise ArgumentError("Seq2Seq takes one recurrent layer (of any depth) on each side")
        self.encoder, self.decoder = enc[0], dec[0]
        self.source_vocab = source_vocab if source_vocab is not None else sv
        self.target_vocab = target_vocab if target_vocab is not None else tv
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
        if bridge not in BRIDGES:
            raise ArgumentError(f"bridge must be one of {BRIDGES}, got {bridge!r}")
        self.bridge = bridge
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
        if bos is None:
            bos = tvocab.bos_id if tvocab is not None else -1
        if eos is None:
            eos = tvocab.eos_id if tvocab is not None else -1
        self.bos = int(check_ids(bos, self.target.size, "bos id (target_vocab needs a bos symbol)"))
        self.eos = int(check_ids(eos, self.target.size, "eos id (target_vocab needs an eos symbol)"))
        self.info = dict(info or {})

    # ----- encoder -----
    def encode(self, src, lengths=None):
        """Source -> (decoder's initial state, batched): h (L, N, H) or (h, c) for an LSTM."""
        feats, lengths, batched = _prepare(self.source, self.source_vocab, self.encoder.batch_first,
                                           src, lengths, "Seq2Seq encoder")
        if feats.shape[0] == 0:  # an empty source: one padded step, the encoder's zero state
            feats = np.zeros((1,) + feats.shape[1:], feats.dtype)
            lengths = np.zeros(feats.shape[1], np.int64)
        _, state = _run_rnns([self.encoder], feats, lengths)
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

    def _head_chain(self, rows, final):
        return _HeadChain(self.heads, rows, final)

    # ----- greedy -----
    def greedy_ids(self, src, lengths=None, max_len: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Batched greedy decoding: (ids (N, max_len), lengths (N,)); ids past a row's length
        (its eos, not counted) are padding. Unbatched input gives (max_len,) and ()."""
        max_len = _check_max_len(max_len)
        state, batched = self.encode(src, lengths)
        h = state[0] if isinstance(state, tuple) else state
        rows = h.shape[1]
        stream = self.decoder.stream(rows)
        stream.state = state
        heads = self._head_chain(rows, "none")
        x = np.zeros((rows, self.target.output_size), getattr(self.target, "dtype", np.float32))
        tok = np.full(rows, self.bos, np.int64)
        out = np.zeros((rows, max_len), np.int64)
        done = np.zeros(rows, bool)
        hit = np.zeros(rows, bool)
        for t in range(max_len):
            self.target._lookup_into(tok, x)
            logits = heads(stream.step(x))
            np.argmax(logits, axis=1, out=tok)
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
        hypotheses as (ids without eos, score), best first; none where every score is NaN or
        -inf (a model whose weights are).

        Each step extends every live hypothesis by every token, keeps the ``beam`` best by the
        sum of log-probabilities, and sets those ending in eos aside; the search ends once
        ``beam`` hypotheses have ended (or at max_len, where the live ones count too). A
        hypothesis of n tokens (eos included) scores sum(log p) / n ** length_penalty.
        """
        if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or beam < 1:
            raise ArgumentError(f"beam must be an int >= 1, got {beam!r}")
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
        heads = self._head_chain(beam, "log_softmax")
        vsize = self.target.size
        x = np.zeros((beam, self.target.output_size), getattr(self.target, "dtype", np.float32))
        tokens = np.full(beam, self.bos, np.int64)
        scores = np.full(beam, -np.inf)
        scores[0] = 0.0
        hist = np.zeros((beam, max_len), np.int64)
        finished: list[tuple[float, list[int], float]] = []

        def norm(score, n):
            return score / (n ** length_penalty) if length_penalty else score

        for t in range(max_len):
            self.target._lookup_into(tokens, x)
            logp = heads(stream.step(x)).astype(np.float64)
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

    # ----- text in, text out -----
    def translate(self, src, max_len: int = 50, beam: int = 1, length_penalty: float = 0.0,
                  lengths=None):
        """Source text (or ids) -> target text (or ids): one string or a list for a batch.

        beam=1 decodes greedily (batched); beam>1 runs beam_search on each sequence."""
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
        lens = None if lengths is None else _check_lengths(lengths, rows, steps)
        return [(arr[i:i + 1] if first else arr[:, i:i + 1],
                 None if lens is None else lens[i:i + 1]) for i in range(rows)], False

    def to_record(self):
        tensors: dict[str, np.ndarray] = {}
        meta = {"encoder": _stages_record("encoder.", self.source, [self.encoder], [], tensors),
                "decoder": _stages_record("decoder.", self.target, [self.decoder], self.heads,
                                          tensors),
                "source_vocab": _vocab_meta(self.source_vocab),
                "target_vocab": _vocab_meta(self.target_vocab),
                "bos": self.bos, "eos": self.eos, "bridge": self.bridge, "info": self.info}
        return self.kind, meta, tensors

    def __repr__(self) -> str:
        return (f"fastrnn.Seq2Seq(source={self.source!r}, encoder={self.encoder!r}, "
                f"target={self.target!r}, decoder={self.decoder!r}, head={self.heads!r})")


def _check_length_penalty(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ArgumentError(f"length_penalty must be a finite number, got {value!r}")
    return float(value)


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ArgumentError(f"max_len must be an int >= 1, got {max_len!r}")
    return int(max_len)


def _load_seq2seq(meta, tensors):
    enc = _stages_load(meta["encoder"], tensors, "encoder.")
    dec = _stages_load(meta["decoder"], tensors, "decoder.")
    return Seq2Seq(source=enc[0], encoder=enc[1], target=dec[0], decoder=dec[1], head=dec[2:],
                   source_vocab=_vocab_load(meta.get("source_vocab")),
                   target_vocab=_vocab_load(meta.get("target_vocab")), bos=meta.get("bos"),
                   eos=meta.get("eos"), bridge=meta.get("bridge", "concat"),
                   info=meta.get("info"))


def _register() -> None:
    from .. import fileformat
    fileformat.register_kind("sequential", _load_sequential)
    fileformat.register_kind("generator", _load_generator)
    fileformat.register_kind("seq2seq", _load_seq2seq)


_register()
