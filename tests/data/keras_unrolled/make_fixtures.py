"""Regenerate the Keras -> tf2onnx fixtures of tests/test_onnx_unrolled.py: recurrent layers built
with unroll=True, which tf2onnx writes out step by step (needs tensorflow; the tests themselves do
not).

    /tmp/tfenv/bin/python tests/data/keras_unrolled/make_fixtures.py [NAME ...]  # from the root

NAME: only those of the models below (all by default). /tmp/tfenv as in
tests/data/keras/make_fixtures.py. Each model is built with Keras 3 (k3_*) and
Keras 2 (tf_keras, k2_*), random weights and biases (seeded), exported at opset 13; NAME.npz holds
the input (key x: N = 3, T = 9) and Keras's outputs on it (out0, out1, ...).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fixture_runner  # noqa: E402 - before numpy and TensorFlow: it picks the flavour

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
I, H = 4, 6
N, T = 3, 9


def _models(keras):
    L = keras.layers

    def features(layer_fn):
        x = keras.Input((T, I), name="x")
        return keras.Model(x, layer_fn(x)), np.random.default_rng(1).standard_normal(
            (N, T, I)).astype(np.float32)

    return {
        "simple_rnn_seq": lambda: features(L.SimpleRNN(H, unroll=True, return_sequences=True)),
        "simple_rnn_relu_state": lambda: features(L.SimpleRNN(
            H, unroll=True, activation="relu", return_state=True)),
        "simple_rnn_backwards_no_bias": lambda: features(L.SimpleRNN(
            H, unroll=True, go_backwards=True, use_bias=False, return_sequences=True)),
        "bidir_simple_rnn": lambda: features(L.Bidirectional(L.SimpleRNN(
            H, unroll=True, return_sequences=True))),
        "stacked_simple_rnn": lambda: features(lambda x: L.SimpleRNN(H, unroll=True)(
            L.SimpleRNN(H, unroll=True, return_sequences=True)(x))),
        "gru": lambda: features(L.GRU(H, unroll=True, return_sequences=True)),
        "gru_reset_before_backwards": lambda: features(L.GRU(
            H, unroll=True, reset_after=False, go_backwards=True, return_sequences=True)),
        "gru_reset_before_state": lambda: features(L.GRU(
            H, unroll=True, reset_after=False, return_sequences=True, return_state=True)),
        "gru_reset_before_no_bias": lambda: features(L.GRU(
            H, unroll=True, reset_after=False, use_bias=False)),
        "bidir_gru_reset_before": lambda: features(L.Bidirectional(L.GRU(
            H, unroll=True, reset_after=False, return_sequences=True))),
        "lstm_seq_state": lambda: features(L.LSTM(H, unroll=True, return_sequences=True,
                                                  return_state=True)),
        "lstm_hard_sigmoid": lambda: features(L.LSTM(
            H, unroll=True, recurrent_activation="hard_sigmoid", return_sequences=True)),
        "gru_relu_hard_sigmoid": lambda: features(L.GRU(
            H, unroll=True, activation="relu", recurrent_activation="hard_sigmoid",
            return_state=True)),
        "gru_reset_before_hard_sigmoid": lambda: features(L.GRU(
            H, unroll=True, reset_after=False, recurrent_activation="hard_sigmoid",
            return_sequences=True)),
        "bidir_lstm": lambda: features(L.Bidirectional(L.LSTM(H, unroll=True))),
    }


if __name__ == "__main__":
    keras_fixture_runner.run(HERE, _models)
