"""One-to-many: the Generator, streamed token by token."""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping

import numpy as np

from .. import fileformat
from ..errors import ArgumentError, ShapeError, UnsupportedError
from ..heads import check_sampling, usable_logits
from ..kernels.heads import sample
from ..validation import as_array, as_flag
from ..vocab import Vocabulary, check_ids
from .records import load_stages, load_vocab, stages_record, vocab_meta
from .stages import HeadChain, check_info, check_vocab, split_stages

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
        inp, v, self.rnns, self.heads = split_stages(stages, "Generator", need_input=True)
        self.input = inp
        self.vocab = check_vocab(vocab if vocab is not None else v, "vocab")
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
        self.info = check_info(info)
        self._latest = threading.local()  # per thread: concurrent requests each see their own

    def __getstate__(self) -> dict:
        """Without the threads' latest logits (a thread-local cannot be copied or pickled)."""
        return {k: v for k, v in self.__dict__.items() if k != "_latest"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _latest=threading.local())

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
        """The scores of the latest step generated in the calling thread (V,): a view that its
        next step overwrites."""
        return getattr(self._latest, "logits", None)

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

        Logits that are not all finite, in every mode: NaN anywhere, or every logit -inf,
        raises ArgumentError naming the step (no token can be chosen; before, an arbitrary id
        came out); +inf logits are certain: one is that token, several share the draw alike
        (greedy takes the first, as for tied scores). -inf tokens are never drawn.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ArgumentError(f"steps must be an int >= 0, got {steps!r}")
        greedy = as_flag(greedy, "greedy")
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
        heads = HeadChain(self.heads, 1, "none")
        x = np.zeros((1, self.input.output_size), self.input.dtype)
        tok = np.zeros(1, np.int64)
        probs = np.empty(self.vocab_size, np.float64)
        order = np.empty(self.vocab_size, np.int64)
        y = np.ascontiguousarray(feats[-1:])
        row = heads.bufs[-1][0]                         # the one logits buffer, reused
        latest = self._latest
        # what cannot be decoded as it is (NaN, +inf, every logit -inf) goes to usable_logits,
        # which refuses NaN and all -inf: numpy's argmax stops at the first NaN (it ranks NaN
        # above every number), so greedy's top logit is finite unless the row holds one of
        # those; a draw from such a row returns -1 (kernels.heads.sample)
        argmax, value, isfinite = row.argmax, row.item, math.isfinite
        greedy = temperature <= 0.0
        masked = np.empty_like(row)
        for i in range(steps):
            heads(y)
            latest.logits = row  # set at every step: generations may interleave in one thread
            j = i % _UNIFORM_BLOCK
            if j == 0 and i:
                rng.random(out=uniforms)
            if greedy:
                best = argmax()
                t = int(best) if isfinite(value(best)) else -1
            else:
                t = sample(row, temperature, top_k, top_p, uniforms[j], probs, order)
            if t < 0:
                t = sample(usable_logits(row, masked, f"the model's logits at generation step "
                                                      f"{i} (0: the first after the prompt)"),
                           temperature, top_k, top_p, uniforms[j], probs, order)
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
        meta = {"stages": stages_record("", self.input, self.rnns, self.heads, tensors),
                "vocab": vocab_meta(self.vocab), "stop": self.stop, "info": self.info}
        return self.kind, meta, tensors

    def __repr__(self) -> str:
        return f"fastrnn.Generator({', '.join(repr(s) for s in self.stages())})"


def _load_generator(meta, tensors):
    return Generator(*load_stages(meta["stages"], tensors), vocab=load_vocab(meta.get("vocab")),
                     stop=meta.get("stop"), info=meta.get("info"))


fileformat.register_kind("generator", _load_generator)
