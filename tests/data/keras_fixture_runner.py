"""What the tf2onnx fixture scripts tests/data/keras_loops/ and keras_unrolled/make_fixtures.py
share (needs tensorflow; the tests themselves do not): each Keras flavour in a process of its own
(Keras 3: k3_*, Keras 2 through tf_keras: k2_*), and per model its ONNX export at opset 13 with
random biases (seeded) and NAME.npz holding the input (key x) and Keras's outputs on it (out0,
out1, ...). Imported before TensorFlow, since the flavour is chosen by the environment.
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


def run(folder: str, models) -> None:
    """Write into `folder` the fixtures of `models(keras)` ({name: build() -> (model, x)}), only
    those the script's arguments name where it has any: this process runs the script once per
    flavour, each child writes its flavour's."""
    names = sys.argv[1:]
    if FLAVOUR is None:
        for flavour in ("k3", "k2"):
            subprocess.run([sys.executable, sys.argv[0]] + names, check=True,
                           env=dict(os.environ, KERAS_FLAVOUR=flavour))
        return
    if FLAVOUR == "k2":
        import tf_keras as keras
    else:
        import keras
    for name, build in models(keras).items():
        if names and name not in names:
            continue
        keras.utils.set_random_seed(0)
        model, x = build()
        _write(os.path.join(folder, f"{FLAVOUR}_{name}"), model, x)


def _write(path: str, model, x: np.ndarray) -> None:
    import tensorflow as tf
    import tf2onnx

    rng = np.random.default_rng(0)
    for w in model.weights:  # Keras starts biases at zero: random ones test them too
        if "bias" in w.name:
            w.assign((rng.standard_normal(w.shape) * 0.5).astype(np.float32))
    outs = model(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    spec = [tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype, name="x")]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=path + ".onnx")
    np.savez(path + ".npz", x=x, **{f"out{k}": np.asarray(o) for k, o in enumerate(outs)})
    print("wrote", path)
