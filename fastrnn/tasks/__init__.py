"""Sequence tasks on a recurrent stack (the models are in seq2seq.py until the split)."""
from .seq2seq import BRIDGES, POOLS, Classifier, Generator, Seq2Seq, Sequential, Tagger

__all__ = ["Sequential", "Classifier", "Tagger", "Generator", "Seq2Seq", "POOLS", "BRIDGES"]
