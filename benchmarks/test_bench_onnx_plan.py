"""fastrnn's ONNX plan (converters.from_onnx) against ONNX Runtime on the same model, one group
per case, one thread each unless the case says two: a torch legacy export of a 2-layer LSTM at T=1
(where the plan's own per-node overhead shows) and T=100, torch's dynamo export of nn.RNN(64, 128),
which writes the layer out step by step over T=100 (the plan runs the unrolled steps as one kernel
call), and of a bidirectional one on two threads (the plan runs both directions in one call, one
thread each), and tf2onnx Keras layers whose time loop is an ONNX Loop (which the plan runs as one
kernel call): a GRU at T=20 and T=100, a masked LSTM (Masking(0.0), the last 30 of 100 steps
padding), and on two threads a Bidirectional LSTM(64) over Embedding(mask_zero=True) tokens (the
last 30 of 100 padding; the plan runs its two Loops as one call, a direction per thread).

Not part of the test suite (pytest's testpaths is tests/); run with

    python -m pytest benchmarks/test_bench_onnx_plan.py --benchmark-only

A case is skipped only where a module it needs (torch for the export, onnx, onnxruntime) is not
installed, or where it needs more cores than the machine has.
"""
import functools
import io
import os
import pathlib
import time

import numpy as np
import pytest

KERAS = pathlib.Path(__file__).parent.parent / "tests" / "data" / "keras"
KERAS_LOOPS = {"gru": KERAS / "k3_gru_reset_after_opset13.onnx",
               "lstm-masked": KERAS / "k2_masking_lstm_opset13.onnx",
               "bilstm-masked": KERAS.parent / "keras_loops" / "k3_bidir_lstm_tokens_larger.onnx"}
PADDING = 30  # the masked case's last steps, zeros
# case id -> (modules its model needs, steps T of its input, threads)
CASES = {"onnx-lstm2-h128-t1": (("torch",), 1, 1), "onnx-lstm2-h128-t100": (("torch",), 100, 1),
         "onnx-dynamo-rnn-h128-t100": (("torch",), 100, 1),
         "onnx-dynamo-birnn-h128-t100-2threads": (("torch",), 100, 2),
         "onnx-keras-gru-loop-t20": ((), 20, 1), "onnx-keras-gru-loop-t100": ((), 100, 1),
         "onnx-keras-lstm-masked-loop-t100": ((), 100, 1),
         "onnx-keras-bilstm-masked-loop-t100-2threads": ((), 100, 2)}
REQUIRES = {"plan": ("onnx",), "onnxruntime": ("onnx", "onnxruntime")}
PAIRS = [pytest.param(engine, case_id, id=f"{case_id}-{engine}")
         for engine in REQUIRES for case_id in CASES]


@functools.lru_cache(maxsize=None)
def _lstm_export() -> bytes:
    """nn.LSTM(64, 128, num_layers=2, batch_first=True), seeded, exported with dynamic N and T."""
    import torch
    torch.manual_seed(0)
    module = torch.nn.LSTM(64, 128, num_layers=2, batch_first=True).eval()
    buf = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(1, 1, 64),), buf, dynamo=False, input_names=["x"],
                      output_names=["y", "h", "c"], dynamic_axes={"x": {0: "N", 1: "T"}})
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def _rnn_dynamo_export(bidirectional: bool) -> bytes:
    """nn.RNN(64, 128), seeded, exported by the dynamo exporter at T=100 (unrolled), batch 1."""
    import logging
    import warnings

    import torch
    torch.manual_seed(0)
    module = torch.nn.RNN(64, 128, bidirectional=bidirectional).eval()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (torch.zeros(100, 1, 64),), dynamo=True,
                                        verbose=False)
    finally:
        logging.disable(logging.NOTSET)
    return program.model_proto.SerializeToString()


def _model(case_id: str) -> tuple[bytes, dict]:
    """(the case's ONNX model, its input feed: batch 1, float32, seeded)."""
    steps = CASES[case_id][1]
    rng = np.random.default_rng(0)
    if case_id.startswith("onnx-lstm2"):
        return _lstm_export(), {"x": rng.standard_normal((1, steps, 64)).astype(np.float32)}
    if case_id.startswith("onnx-dynamo-"):
        return _rnn_dynamo_export("birnn" in case_id), {"input": rng.standard_normal(
            (steps, 1, 64)).astype(np.float32)}
    if "bilstm" in case_id:  # tokens, 0 the padding
        x = rng.integers(1, 12, size=(1, steps)).astype(np.int32)
    else:
        x = rng.standard_normal((1, steps, 4)).astype(np.float32)
    if "masked" in case_id:
        x[:, steps - PADDING:] = 0
    layer = case_id.split("onnx-keras-")[1].split("-loop")[0]
    return KERAS_LOOPS[layer].read_bytes(), {"x": x}


def _session(engine: str, model: bytes, threads: int):
    if engine == "plan":
        import converters
        import fastrnn
        fastrnn.set_num_threads(threads)
        return converters.from_onnx(model)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("engine, case_id", PAIRS)
def test_onnx_plan(benchmark, engine, case_id):
    for module in REQUIRES[engine] + CASES[case_id][0]:
        pytest.importorskip(module, reason=f"{case_id} on {engine} needs {module}, which is not "
                                           f"installed")
    model, feed = _model(case_id)
    threads = CASES[case_id][2]
    if threads > (os.cpu_count() or 1):
        pytest.skip(f"{case_id} needs {threads} cores")
    session = _session(engine, model, threads)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.1:       # warm-up (and compilation), outside the timing
        session.run(None, feed)
    benchmark.group = case_id
    benchmark.extra_info.update(engine=engine, threads=threads)
    benchmark(session.run, None, feed)
