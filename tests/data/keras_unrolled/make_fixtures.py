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
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FLAVOUR = os.environ.get("KERAS_FLAVOUR")  # "k2" or "k3" in the child processes
if FLAVOUR == "k2":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
I, H = 4, 6
N, T = 3, 9


def _models(keras):
    L = keras.layers

    def features(layer_fn):
        x = keras.Input((T, I), name="x")
        return keras.Model(x, layer_fn(x))

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


def _write(name: str, model, x: np.ndarray) -> None:
    import tensorflow as tf
    import tf2onnx

    rng = np.random.default_rng(0)
    for w in model.weights:  # Keras starts biases at zero: random ones test them too
        if "bias" in w.name:
            w.assign((rng.standard_normal(w.shape) * 0.5).astype(np.float32))
    outs = model(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    spec = [tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype, name="x")]
    path = os.path.join(HERE, f"{FLAVOUR}_{name}")
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=path + ".onnx")
    np.savez(path + ".npz", x=x, **{f"out{k}": np.asarray(o) for k, o in enumerate(outs)})
    print("wrote", path)


def main() -> None:
    if FLAVOUR is None:
        for flavour in ("k3", "k2"):
            subprocess.run([sys.executable, __file__] + sys.argv[1:], check=True,
                           env=dict(os.environ, KERAS_FLAVOUR=flavour))
        return
    if FLAVOUR == "k2":
        import tf_keras as keras
    else:
        import keras
    x = np.random.default_rng(1).standard_normal((N, T, I)).astype(np.float32)
    for name, build in _models(keras).items():
        if sys.argv[1:] and name not in sys.argv[1:]:
            continue
        keras.utils.set_random_seed(0)
        _write(name, build(), x)


if __name__ == "__main__":
    main()
