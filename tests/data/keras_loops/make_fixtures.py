"""Regenerate the Keras -> tf2onnx fixtures of tests/test_onnx_loop_cells.py: layers tf2onnx leaves
as a Loop over the Keras cell, masked ones and cell variants beyond tests/data/keras (needs
tensorflow; the tests themselves do not).

    /tmp/tfenv/bin/python tests/data/keras_loops/make_fixtures.py [NAME ...]  # from the root

(/tmp/tfenv as in tests/data/keras/make_fixtures.py). Each model is built with Keras 3 (k3_*) and
Keras 2 (tf_keras, k2_*), random weights and biases (seeded), exported at opset 13; NAME.npz holds
the input (key x: N = 4, T = 11, rows padded at the end, at the start and with a gap, where the
model masks: zero vectors for Masking(0.0), token 0 for Embedding(mask_zero=True)) and Keras's
outputs on it (out0, out1, ...).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fixture_runner  # noqa: E402 - before numpy and TensorFlow: it picks the flavour

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
I, H, V = 4, 6, 12
N, T = 4, 11


def _masked(x: np.ndarray) -> np.ndarray:
    """Row 1 padded at the end, row 2 at the start, row 3 with a gap (zeros: masked)."""
    x = x.copy()
    x[1, 7:] = 0
    x[2, :3] = 0
    x[3, 4] = 0
    return x


def _models(keras):
    L = keras.layers

    def features(layer_fn, i=I):
        x = keras.Input((None, i), name="x")
        return keras.Model(x, layer_fn(x)), _masked(
            np.random.default_rng(1).standard_normal((N, T, i)).astype(np.float32))

    def tokens(layer_fn, i=I):
        x = keras.Input((None,), dtype="int32", name="x")
        ids = np.random.default_rng(2).integers(1, V, size=(N, T)).astype(np.int32)
        return keras.Model(x, layer_fn(L.Embedding(V, i, mask_zero=True)(x))), _masked(ids)

    def masking(layer):
        return lambda x: layer(L.Masking(0.0)(x))

    return {
        "bidir_gru_masked_seq": lambda: features(masking(
            L.Bidirectional(L.GRU(H, return_sequences=True)))),
        "bidir_lstm_tokens_last": lambda: tokens(L.Bidirectional(L.LSTM(H))),
        "bidir_lstm_tokens_larger": lambda: tokens(L.Bidirectional(L.LSTM(64)), i=32),
        "gru_backwards_masked_seq": lambda: features(masking(
            L.GRU(H, return_sequences=True, go_backwards=True))),
        "simple_rnn_relu_masked_seq": lambda: features(masking(
            L.SimpleRNN(H, return_sequences=True, activation="relu"))),
        "gru_reset_before_masked_state": lambda: features(masking(
            L.GRU(H, reset_after=False, return_state=True))),
        "lstm_larger_masked_state": lambda: features(masking(
            L.LSTM(64, return_sequences=True, return_state=True)), i=32),
        "stacked_gru_masked": lambda: features(masking(
            lambda x: L.GRU(H)(L.GRU(H, return_sequences=True)(x)))),
        "gru_no_bias": lambda: features(L.GRU(H, use_bias=False, return_sequences=True)),
        "simple_rnn_sigmoid": lambda: features(L.SimpleRNN(H, activation="sigmoid",
                                                           return_sequences=True)),
        "gru_hard_sigmoid": lambda: features(L.GRU(H, recurrent_activation="hard_sigmoid",
                                                   return_sequences=True)),
        "lstm_hard_sigmoid_masked": lambda: features(masking(
            L.LSTM(H, recurrent_activation="hard_sigmoid"))),
    }


if __name__ == "__main__":
    keras_fixture_runner.run(HERE, _models)
