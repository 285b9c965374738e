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
Every model saves with ``fastrnn.save`` and loads with ``fastrnn.load``: each model's module
registers the loader of its record kind ("sequential", "generator", "seq2seq").

Modules: ``stages`` (checking a chain of stages, preparing input, running the recurrent stack and
the heads), ``records`` (a chain's saved record), ``sequential``, ``generator``, ``seq2seq``.
"""
from .generator import Generator
from .seq2seq import BRIDGES, Seq2Seq
from .sequential import POOLS, Classifier, Sequential, Tagger

__all__ = ["Sequential", "Classifier", "Tagger", "Generator", "Seq2Seq", "POOLS", "BRIDGES"]
