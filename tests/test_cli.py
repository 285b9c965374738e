"""The `fastrnn` command line: bench, convert (ONNX), inspect, run, demo, and its error exit."""
import numpy as np
import pytest

import fastrnn
from fastrnn.cli import main


def test_bench_quick_prints_a_latency_table(capsys):
    assert main(["bench", "--quick", "--steps", "5", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "| cell | H |" in out
    assert out.count("| LSTM |") == 3


def test_bench_with_float16_weights(capsys):
    assert main(["bench", "--quick", "--steps", "5", "--repeats", "2",
                 "--weight-dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "float16 weights" in out and out.count("| LSTM |") == 3


def test_run_layer_file_writes_outputs(tmp_path, capsys):
    layer = fastrnn.LSTM(3, 5, num_layers=2, seed=0)
    fastrnn.save(layer, tmp_path / "m.frnn")
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tmp_path / "m.frnn"), "--input", f"x={tmp_path / 'x.npy'}",
                 "-o", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")
    out, (h_n, c_n) = layer(x)
    np.testing.assert_array_equal(got["output"], out)
    np.testing.assert_array_equal(got["h_n"], h_n)
    np.testing.assert_array_equal(got["c_n"], c_n)
    assert main(["inspect", str(tmp_path / "m.frnn")]) == 0
    text = capsys.readouterr().out
    assert "LSTM" in text and "weight_hh_l1" in text and "parameters:" in text


def test_convert_onnx_then_run_matches_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch", reason="exporting a test model needs torch")
    ort = pytest.importorskip("onnxruntime", reason="the reference run needs onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.GRU(4, 6, batch_first=True)
    path = tmp_path / "g.onnx"
    torch.onnx.export(model, (torch.randn(1, 5, 4),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y", "h"],
                      dynamic_axes={"x": {0: "N", 1: "T"}})
    assert main(["convert", str(path), "-o", str(tmp_path / "g.frnn")]) == 0
    x = np.random.default_rng(1).standard_normal((1, 9, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tmp_path / "g.frnn"), "--input", f"x={tmp_path / 'x.npy'}",
                 "-o", str(tmp_path / "o.npz")]) == 0
    want = ort.InferenceSession(str(path)).run(None, {"x": x})
    got = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(got["y"], want[0], atol=1e-5)
    np.testing.assert_allclose(got["h"], want[1], atol=1e-5)


def test_demo_runs_one_shipped_model(capsys):
    assert main(["demo", "dna_motif", "--repeats", "1"]) == 0
    assert "dna_motif" in capsys.readouterr().out


def test_a_demo_that_compiled_says_so(monkeypatch):
    from fastrnn import demo, warmup
    lines = []
    demo.run_demo(["dna_motif"], repeats=1, out=lines.append)  # compiles what is not cached
    lines.clear()
    assert demo.run_demo(["dna_motif"], repeats=1, out=lines.append) == 0
    assert not any("compiling" in line for line in lines)  # nothing left to compile
    counts = iter([3, 5])  # two kernels compiled during the run
    monkeypatch.setattr(warmup, "compiled_here", lambda: next(counts))
    lines.clear()
    demo.run_demo(["dna_motif"], repeats=1, out=lines.append)
    assert "numba compiling 2 of fastrnn's kernels" in lines[-2]
    assert "fastrnn warmup" in lines[-1]


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.frnn"
    bad.write_bytes(b"not a model")
    assert main(["inspect", str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.frnn")]) == 2
