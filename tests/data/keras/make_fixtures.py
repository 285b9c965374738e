"""Regenerate the Keras -> tf2onnx fixtures of tests/test_onnx_keras.py (needs tensorflow; the
tests themselves do not).

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 tf-keras==2.21.0
    /tmp/tfenv/bin/python tests/data/keras/make_fixtures.py       # from the repository root

Every model below is built twice, with Keras 3 (keras 3.15, files k3_*) and with Keras 2 (tf_keras,
TF_USE_LEGACY_KERAS=1, files k2_*): tf2onnx rewrites different layers of the two into ONNX
RNN / GRU / LSTM nodes. For each model and opset in OPSETS this writes K_NAME_opsetN.onnx
(tf2onnx.convert.from_keras, random weights) and K_NAME_opsetN.npz: the inputs (keys the ONNX
input names) and Keras's outputs on them (keys out0, out1, ...). A graph tf2onnx leaves a Loop
in (the layer it could not rewrite) is written at the first opset only (the Loop is the same at
both; tests/data/keras_loops has more of them). The inputs are fixed random values; the weights are
seeded.
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
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

if FLAVOUR == "k2":
    import tf_keras as keras  # noqa: E402
else:
    import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OPSETS = (13, 17)
I, H, V, CLASSES = 4, 6, 12, 5
N, T = 3, 5  # the recorded inputs' batch size and length
L = keras.layers


def _features(n: int = N, t: int = T, masked: bool = False) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((n, t, I)).astype(np.float32)
    if masked:  # Masking(0.0): trailing padding of lengths 5, 3, 1 and one zero step inside row 0
        for row, length in enumerate((t, t - 2, 1)[:n]):
            x[row, length:] = 0.0
        x[0, 1] = 0.0
    return x


def _tokens(n: int = N, t: int = T, padded: bool = False) -> np.ndarray:
    ids = np.random.default_rng(2).integers(1, V, size=(n, t)).astype(np.int32)
    if padded:  # mask_zero: trailing padding of lengths 5, 2, 4
        for row, length in enumerate((t, 2, t - 1)[:n]):
            ids[row, length:] = 0
    return ids


def _seq(layer_fn, x_fn=_features, batch=None, time=None, dtype="float32"):
    """A model of one input of shape (batch, time, I) through layer_fn."""
    def build():
        shape = (time,) if x_fn is _tokens else (time, I)
        inp = keras.Input(shape, batch_size=batch, name="x", dtype=dtype)
        return keras.Model(inp, layer_fn(inp))
    return build


def _classifier(mask_zero: bool):
    def fn(x):
        e = L.Embedding(V, I, mask_zero=mask_zero)(x)
        return L.Dense(CLASSES, activation="softmax")(L.LSTM(H)(e))
    return fn


def _stacked(x):
    y = L.LSTM(H, return_sequences=True)(x)
    y = L.GRU(H, return_sequences=True)(y)
    return L.LSTM(H)(y)


def _with_initial_state():
    x = keras.Input((None, I), name="x")
    h0 = keras.Input((H,), name="h0")
    c0 = keras.Input((H,), name="c0")
    y, h, c = L.LSTM(H, return_sequences=True, return_state=True)(x, initial_state=[h0, c0])
    return keras.Model([x, h0, c0], [y, h, c])


def _seq_dense(x):
    return L.Dense(3)(L.GRU(H, return_sequences=True)(x))


def _conv_lstm_norm(x):
    y = L.Conv1D(5, 3, padding="same", activation="relu")(x)
    y = L.LayerNormalization()(L.LSTM(H, return_sequences=True)(y))
    return L.GlobalAveragePooling1D()(y)


# name -> (model builder, recorded inputs {name: array})
MODELS = {
    "lstm_seq": (_seq(lambda x: L.LSTM(H, return_sequences=True)(x)), lambda: {"x": _features()}),
    "lstm_last": (_seq(lambda x: L.LSTM(H)(x)), lambda: {"x": _features()}),
    "lstm_state": (_seq(lambda x: L.LSTM(H, return_sequences=True, return_state=True)(x)),
                   lambda: {"x": _features()}),
    "lstm_last_state": (_seq(lambda x: L.LSTM(H, return_state=True)(x)), lambda: {"x": _features()}),
    "lstm_nobias_relu": (_seq(lambda x: L.LSTM(H, use_bias=False, activation="relu",
                                                 return_sequences=True)(x)),
                         lambda: {"x": _features()}),
    "gru_reset_after": (_seq(lambda x: L.GRU(H, return_sequences=True)(x)),
                        lambda: {"x": _features()}),
    "gru_reset_before": (_seq(lambda x: L.GRU(H, reset_after=False, return_sequences=True,
                                              return_state=True)(x)),
                         lambda: {"x": _features()}),
    "simple_rnn": (_seq(lambda x: L.SimpleRNN(H, return_sequences=True)(x)),
                   lambda: {"x": _features()}),
    "simple_rnn_relu_last": (_seq(lambda x: L.SimpleRNN(H, activation="relu")(x)),
                             lambda: {"x": _features()}),
    "stacked": (_seq(_stacked), lambda: {"x": _features()}),
    "bidir_lstm_concat": (_seq(lambda x: L.Bidirectional(L.LSTM(H, return_sequences=True))(x)),
                          lambda: {"x": _features()}),
    "bidir_gru_sum": (_seq(lambda x: L.Bidirectional(L.GRU(H, return_sequences=True),
                                                     merge_mode="sum")(x)),
                      lambda: {"x": _features()}),
    "bidir_lstm_last": (_seq(lambda x: L.Bidirectional(L.LSTM(H))(x)), lambda: {"x": _features()}),
    "bidir_rnn_concat": (_seq(lambda x: L.Bidirectional(L.SimpleRNN(H, return_sequences=True))(x)),
                         lambda: {"x": _features()}),
    "lstm_backwards": (_seq(lambda x: L.LSTM(H, go_backwards=True, return_sequences=True)(x)),
                       lambda: {"x": _features()}),
    "gru_backwards_last": (_seq(lambda x: L.GRU(H, go_backwards=True)(x)),
                           lambda: {"x": _features()}),
    "masking_lstm": (_seq(lambda x: L.LSTM(H)(L.Masking(0.0)(x))),
                     lambda: {"x": _features(masked=True)}),
    "masking_gru_seq": (_seq(lambda x: L.GRU(H, return_sequences=True)(L.Masking(0.0)(x))),
                        lambda: {"x": _features(masked=True)}),
    "embedding_mask_gru": (_seq(lambda x: L.GRU(H)(L.Embedding(V, I, mask_zero=True)(x)),
                                x_fn=_tokens, dtype="int32"),
                           lambda: {"x": _tokens(padded=True)}),
    "classifier": (_seq(_classifier(False), x_fn=_tokens, dtype="int32"),
                   lambda: {"x": _tokens()}),
    "classifier_masked": (_seq(_classifier(True), x_fn=_tokens, dtype="int32"),
                          lambda: {"x": _tokens(padded=True)}),
    "fixed_batch_lstm": (_seq(lambda x: L.LSTM(H, return_sequences=True)(x), batch=N, time=T),
                         lambda: {"x": _features()}),
    "fixed_batch_gru_last": (_seq(lambda x: L.GRU(H)(x), batch=N), lambda: {"x": _features()}),
    "initial_state": (_with_initial_state, lambda: {
        "x": _features(), "h0": _features()[:, 0, :1].repeat(H, 1),
        "c0": -_features()[:, 1, :1].repeat(H, 1)}),
    "gru_dense": (_seq(_seq_dense), lambda: {"x": _features()}),
    "conv_lstm_norm": (_seq(_conv_lstm_norm), lambda: {"x": _features()}),
    "bidir_lstm_state": (_seq(lambda x: L.Bidirectional(L.LSTM(H, return_state=True))(x)),
                         lambda: {"x": _features()}),
    "lstm_unroll": (_seq(lambda x: L.LSTM(H, unroll=True, return_sequences=True)(x), time=T),
                    lambda: {"x": _features()}),
    "lstm_float64": (_seq(lambda x: L.LSTM(H, return_sequences=True, dtype="float64")(x),
                          dtype="float64"),
                     lambda: {"x": _features().astype(np.float64)}),
    "lstm_hard_sigmoid": (_seq(lambda x: L.LSTM(H, recurrent_activation="hard_sigmoid",
                                                return_sequences=True)(x)),
                          lambda: {"x": _features()}),
    "lstm_recurrent_dropout": (_seq(lambda x: L.LSTM(H, recurrent_dropout=0.2)(x)),
                               lambda: {"x": _features()}),
}


def _randomize(model: keras.Model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(w.dtype) for w in weights])


def _signature(model: keras.Model) -> tuple:
    return tuple(tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in model.inputs)


def make(name: str, opset: int) -> bool:
    """Write the model's fixture at this opset; True when its graph holds a Loop."""
    keras.backend.clear_session()  # the same node names on every run
    build, feeds = MODELS[name]
    model = build()
    _randomize(model, seed=sum(map(ord, name)))
    inputs = feeds()
    outs = model([inputs[i.name] for i in model.inputs] if len(model.inputs) > 1
                 else inputs[model.inputs[0].name])
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=_signature(model), opset=opset)
    base = os.path.join(HERE, f"{FLAVOUR}_{name}_opset{opset}")
    with open(base + ".onnx", "wb") as f:
        f.write(proto.SerializeToString())
    np.savez(base + ".npz", **inputs, **{f"out{k}": np.asarray(o) for k, o in enumerate(outs)})
    ops = [n.op_type for n in proto.graph.node]
    print(f"{FLAVOUR} {name} opset {opset}: {ops}")
    return "Loop" in ops


def main(names: list[str]) -> None:
    looped = set()
    for opset in OPSETS:
        for name in names:
            if name not in looped and make(name, opset):
                looped.add(name)


if __name__ == "__main__":
    if FLAVOUR is None:
        for flavour in ("k3", "k2"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:]], check=True,
                           env={**os.environ, "KERAS_FLAVOUR": flavour})
    else:
        main(sys.argv[1:] or list(MODELS))
