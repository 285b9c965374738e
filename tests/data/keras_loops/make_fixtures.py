"""Regenerate the Keras -> tf2onnx fixtures of tests/test_onnx_loop_cells.py: layers tf2onnx leaves
as a Loop over the Keras cell, masked ones and cell variants beyond tests/data/keras (needs
tensorflow; the tests themselves do not).

    /tmp/tfenv/bin/python tests/data/keras_loops/make_fixtures.py     # from the repository root

(/tmp/tfenv as in tests/data/keras/make_fixtures.py). Each model is built with Keras 3 (k3_*) and
Keras 2 (tf_keras, k2_*), random weights and biases (seeded), exported at opset 13; NAME.npz holds
the input (key x: N = 4, T = 11, rows padded at the end, at the start and with a gap, where the
model masks: zero vectors for Masking(0.0), token 0 for Embedding(mask_zero=True)) and Keras's
outputs on it (out0, out1, ...).
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

    def tokens(layer_fn):
        x = keras.Input((None,), dtype="int32", name="x")
        ids = np.random.default_rng(2).integers(1, V, size=(N, T)).astype(np.int32)
        return keras.Model(x, layer_fn(L.Embedding(V, I, mask_zero=True)(x))), _masked(ids)

    def masking(layer):
        return lambda x: layer(L.Masking(0.0)(x))

    return {
        "bidir_gru_masked_seq": lambda: features(masking(
            L.Bidirectional(L.GRU(H, return_sequences=True)))),
        "bidir_lstm_tokens_last": lambda: tokens(L.Bidirectional(L.LSTM(H))),
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


def _write(name: str, model, x: np.ndarray, keras) -> None:
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
            subprocess.run([sys.executable, __file__], check=True,
                           env=dict(os.environ, KERAS_FLAVOUR=flavour))
        return
    if FLAVOUR == "k2":
        import tf_keras as keras
    else:
        import keras
    for name, build in _models(keras).items():
        keras.utils.set_random_seed(0)
        model, x = build()
        _write(name, model, x, keras)


if __name__ == "__main__":
    main()
