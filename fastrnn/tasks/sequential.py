"""Many-to-one and many-to-many aligned models: Sequential, Classifier, Tagger."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import fileformat
from ..errors import ArgumentError, ShapeError
from ..vocab import Vocabulary
from .records import load_stages, load_vocab, stages_record, vocab_meta
from .stages import (apply_heads, check_choice, check_info, check_labels, check_vocab,
                     final_hidden, prepare_input, run_rnns, split_stages)

POOLS = ("last", "mean", "max")


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
        inp, v, self.rnns, self.heads = split_stages(stages, type(self).__name__)
        self.input = inp
        self.vocab = check_vocab(vocab if vocab is not None else v, "vocab")
        if self.vocab is not None and inp is None:
            raise ArgumentError(
                f"{type(self).__name__}: a vocabulary needs an input stage to encode text into: "
                f"without one the model takes float features, neither text nor ids; put the "
                f"Vocabulary first (one-hot rows) or an Embedding / OneHot of its size")
        if self.vocab is not None and len(self.vocab) != inp.size:
            raise ShapeError(f"the vocabulary has {len(self.vocab)} symbols but the input stage "
                             f"takes {inp.size} ids")
        self.pool = None if pool is None else check_choice(pool, POOLS, "pool")
        self.labels = check_labels(labels, self.output_size)
        self.info = check_info(info)

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
        feats, lengths, batched = prepare_input(self.input, self.vocab, self.batch_first, x,
                                                lengths, type(self).__name__)
        out, state = run_rnns(self.rnns, feats, lengths)
        if self.pool is None:
            return out, lengths, batched
        if self.pool == "last":
            return final_hidden(self.rnns[-1], state), lengths, batched
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
        At padded steps of a tagger the id is -1. Outputs that hold NaN, or are all -inf, have
        no argmax: an ArgumentError naming where (numpy would give NaN's index, or 0); of
        several +inf outputs the first is taken."""
        y, pad = self._outputs(x, lengths)
        ids = y.argmax(axis=-1)
        top = np.take_along_axis(y, ids[..., None], axis=-1)[..., 0]  # NaN where any is
        if not np.isfinite(top).all():
            nan, masked = np.isnan(top), top == -np.inf
            for bad, what in ((nan, "hold NaN"), (masked, "are all -inf")):
                if pad is not None:
                    bad &= ~pad
                if bad.any():
                    at = tuple(int(i) for i in np.argwhere(bad)[0])
                    where = f" at index {at} (of the ids' shape {ids.shape})" if at else ""
                    raise ArgumentError(
                        f"{type(self).__name__}.predict: the outputs{where} {what}, so no class "
                        f"can be chosen (the input or the weights hold NaN or inf, or a step "
                        f"overflowed)")
        return ids if pad is None else np.where(pad, -1, ids)

    def _outputs(self, x, lengths):
        """(outputs as __call__ returns them, the padded steps in their layout or None)."""
        feats, lengths, batched = self.features(x, lengths)
        y = apply_heads(self.heads, feats)
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
                "stages": stages_record("", self.input, self.rnns, self.heads, tensors),
                "vocab": vocab_meta(self.vocab), "labels": self.labels, "info": self.info}
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
    stages = load_stages(meta["stages"], tensors)
    kw = dict(vocab=load_vocab(meta.get("vocab")), labels=meta.get("labels"),
              info=meta.get("info"))
    if cls is not Tagger:
        kw["pool"] = meta.get("pool", "last")
    return cls(*stages, **kw)


fileformat.register_kind("sequential", _load_sequential)
