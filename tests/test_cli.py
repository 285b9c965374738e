"""The `fastrnn` command line: bench, convert (ONNX), inspect, run, demo, and its error exit."""
import os

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


def test_convert_onnx_then_run_matches_onnxruntime(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="exporting a test model needs torch")
    ort = pytest.importorskip("onnxruntime", reason="the reference run needs onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.GRU(4, 6, batch_first=True)
    path = tmp_path / "g.onnx"
    torch.onnx.export(model, (torch.randn(1, 5, 4),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y", "h"],
                      dynamic_axes={"x": {0: "N", 1: "T"}})
    assert main(["convert", str(path), "-o", str(tmp_path / "g.frnn")]) == 0
    assert "kernel calls: 1\n  /GRU: GRU(4, 6)\n" in capsys.readouterr().out
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


def _classifier():
    return fastrnn.Classifier(fastrnn.Vocabulary("ACGT"),
                              fastrnn.GRU(4, 6, batch_first=True, seed=0),
                              fastrnn.Linear(6, 2, activation="softmax", seed=1))


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_run_classifier_file_writes_its_one_output(tmp_path, rows):
    clf = _classifier()
    fastrnn.save(clf, tmp_path / "clf.frnn")
    ids, lengths = clf.vocab.encode_batch(["ACGTTA", "GGA", "T"][:rows])
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "lengths.npy", lengths)
    assert main(["run", str(tmp_path / "clf.frnn"), "--input", f"x={tmp_path / 'ids.npy'}",
                 "-o", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")
    assert list(got) == ["output"]
    np.testing.assert_array_equal(got["output"], clf(ids))
    assert main(["run", str(tmp_path / "clf.frnn"), "--input", f"x={tmp_path / 'ids.npy'}",
                 "--input", f"lengths={tmp_path / 'lengths.npy'}",
                 "-o", str(tmp_path / "o.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["output"], clf(ids, lengths))


def test_run_task_model_takes_x_and_optional_lengths_only(tmp_path, capsys):
    fastrnn.save(_classifier(), tmp_path / "clf.frnn")
    np.save(tmp_path / "ids.npy", np.zeros((2, 3), np.int64))
    feed = f"{tmp_path / 'ids.npy'}"
    assert main(["run", str(tmp_path / "clf.frnn"), "--input", f"x={feed}",
                 "--input", f"y={feed}"]) == 2
    assert "a Classifier takes one input (x=FILE.npy" in capsys.readouterr().err


def _generator():
    vocab = fastrnn.Vocabulary("abc", eos="$")
    return fastrnn.Generator(vocab, fastrnn.GRU(4, 5, seed=0), fastrnn.Linear(5, 4, seed=1))


def _seq2seq():
    vocab = fastrnn.Vocabulary("abc", bos="^", eos="$")
    return fastrnn.Seq2Seq(source=vocab, encoder=fastrnn.GRU(5, 6, seed=0), target=vocab,
                           decoder=fastrnn.GRU(5, 6, seed=1), head=fastrnn.Linear(6, 5, seed=2))


@pytest.mark.parametrize("make, kind, instead", [
    (_generator, "a Generator", "generate"), (_seq2seq, "a Seq2Seq", "translate"),
    (lambda: fastrnn.Vocabulary("abc"), "a Vocabulary", "encode")])
def test_run_refuses_models_that_do_not_run_on_arrays(tmp_path, capsys, make, kind, instead):
    fastrnn.save(make(), tmp_path / "m.frnn")
    np.save(tmp_path / "ids.npy", np.zeros((2, 3), np.int64))
    assert main(["run", str(tmp_path / "m.frnn"), "--input", f"x={tmp_path / 'ids.npy'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrnn run: error: ") and kind in err and instead in err


def test_run_rejects_inputs_that_are_not_npy_arrays(tmp_path, capsys):
    fastrnn.save(fastrnn.GRU(4, 8, seed=0), tmp_path / "gru.frnn")
    (tmp_path / "garbage.npy").write_bytes(b"garbage")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "objects.npy", np.array([{}, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", x=np.zeros((5, 1, 4), np.float32))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04garbage")
    for name in ("garbage.npy", "empty.npy", "objects.npy", "archive.npz", "broken.npz"):
        path = tmp_path / name
        assert main(["run", str(tmp_path / "gru.frnn"), "--input", f"x={path}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastrnn run: error: --input x=") and str(path) in err
        assert "allow_pickle" not in err


def test_run_writes_exactly_the_output_path(tmp_path, capsys):
    fastrnn.save(fastrnn.GRU(4, 8, seed=0), tmp_path / "gru.frnn")
    np.save(tmp_path / "x.npy", np.zeros((5, 1, 4), np.float32))
    out = tmp_path / "outfile"
    assert main(["run", str(tmp_path / "gru.frnn"), "--input", f"x={tmp_path / 'x.npy'}",
                 "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.is_file() and not (tmp_path / "outfile.npz").exists()
    assert sorted(np.load(out)) == ["h_n", "output"]


def test_inspect_refuses_a_config_that_is_not_an_object(tmp_path, capsys):
    path = tmp_path / "odd.frnn"
    fastrnn.fileformat.write_container(path, "layer", {"config": [1, 2]}, {})
    assert main(["inspect", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("fastrnn inspect: error: ") and "'config' must be a JSON object" in err
    assert out == ""                                          # no half description before it
    assert main(["inspect", "--json", str(path)]) == 0        # the raw header, as it is


def test_inspect_describes_a_task_models_stages(tmp_path, capsys):
    model = fastrnn.Classifier(fastrnn.Embedding(10, 3, seed=0),
                               fastrnn.GRU(3, 4, num_layers=2, bidirectional=True, seed=0),
                               fastrnn.Linear(8, 2, activation="softmax", seed=0),
                               labels=["no", "yes"])
    fastrnn.save(model, tmp_path / "c.frnn")
    assert main(["inspect", str(tmp_path / "c.frnn")]) == 0
    out = capsys.readouterr().out
    assert ("stages:      Embedding(10, 3) -> bidirectional GRU(3, 4, num_layers=2) -> "
            "Linear(8, 2) softmax") in out
    assert "labels:      2 (no, yes)" in out
    shipped = os.path.join(os.path.dirname(fastrnn.__file__), "models", "date_format.frnn")
    assert main(["inspect", shipped]) == 0
    out = capsys.readouterr().out
    assert "encoder:     Embedding(44, 16) -> bidirectional GRU(16, 64)\n" in out
    assert "target_vocab: 13 characters" in out and "accuracy:" in out


@pytest.mark.parametrize("meta", [
    {"stages": {"input": 3, "rnns": "GRU", "heads": [None, {"type": "odd"}, [1]]}},
    {"encoder": {"rnns": [{"mode": "LSTM"}]}, "vocab": {"symbols": "abc"}, "labels": 5,
     "info": ["not", "a", "dict"]},
])
def test_inspect_shows_a_malformed_task_meta_without_failing(tmp_path, capsys, meta):
    path = tmp_path / "odd.frnn"
    fastrnn.fileformat.write_container(path, "sequential", meta, {})
    assert main(["inspect", str(path)]) == 0
    assert "kind:        sequential" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["bench", "--quick", "--steps", "-1"], ["bench", "--quick", "--steps", "0"],
    ["bench", "--quick", "--repeats", "0"], ["demo", "dna_motif", "--repeats", "0"],
    ["demo", "dna_motif", "--repeats", "-3"], ["demo", "--repeats", "two"]])
def test_counts_below_one_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"fastrnn {argv[0]}: error: argument --" in err and "an integer >= 1" in err


def test_library_counts_below_one_are_argument_errors():
    from fastrnn.bench import run_case
    from fastrnn.demo import run_demo
    with pytest.raises(fastrnn.errors.ArgumentError, match="repeats"):
        run_demo(["dna_motif"], repeats=0, out=lambda line: None)
    with pytest.raises(fastrnn.errors.ArgumentError, match="steps"):
        run_case("GRU", 8, 4, 1, steps=-1)
    with pytest.raises(fastrnn.errors.ArgumentError, match="repeats"):
        run_case("GRU", 8, 4, 1, steps=2, repeats=0)


@pytest.mark.parametrize("argv", [
    ["--rounds", "-1"], ["--rounds", "0"], ["--repeats", "0"], ["--repeats", "-5"],
    ["--threads", "0"], ["--min-seconds", "-1"], ["--warmup", "nan"], ["--timeout", "0"]])
def test_compare_runner_validates_its_counts(argv, capsys, tmp_path, monkeypatch):
    from benchmarks import compare

    def measure(*args, **kw):
        raise AssertionError("the runner started measuring")
    monkeypatch.setattr(compare, "subprocess_json", measure)
    with pytest.raises(SystemExit) as exit_:
        compare.main(argv + ["--out", str(tmp_path / "results")])
    assert exit_.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


class _NamedOutputs:
    """A converted ONNX model as `fastrnn run` sees one, with outputs of any names."""

    def __init__(self, names):
        self.names = names

    def get_inputs(self):
        return []

    def get_outputs(self):
        return [type("Arg", (), {"name": name}) for name in self.names]

    def run(self, output_names, feeds):
        return [np.full(2, i, np.float32) for i in range(len(self.names))]


def test_run_writes_every_output_whatever_its_name(tmp_path, monkeypatch, capsys):
    """np.savez takes the names as keywords: "file" collided with its own argument (a
    TypeError), "allow_pickle" was taken as its option and left out of the archive."""
    names = ["file", "allow_pickle", "output"]
    monkeypatch.setattr(fastrnn.fileformat, "load", lambda path: _NamedOutputs(names))
    out = tmp_path / "out.npz"
    assert main(["run", "model.frnn", "-o", str(out)]) == 0
    with np.load(out) as archive:
        assert sorted(archive) == sorted(names)
        for i, name in enumerate(names):
            np.testing.assert_array_equal(archive[name], np.full(2, i, np.float32))


def test_inspect_shows_a_vocabulary_files_size(tmp_path, capsys):
    fastrnn.save(fastrnn.Vocabulary("ab", eos="$"), tmp_path / "v.frnn")
    assert main(["inspect", str(tmp_path / "v.frnn")]) == 0
    out = capsys.readouterr().out
    assert "vocabulary:  3 characters\n" in out and "parameters:  0\n" in out


@pytest.mark.parametrize("inputs, message", [
    (["x=X", "x=X"], "--input x= is given twice"),
    (["=X"], "expects NAME=FILE.npy, got '=X'"),
])
def test_run_takes_each_input_name_once(tmp_path, capsys, inputs, message):
    fastrnn.save(_classifier(), tmp_path / "clf.frnn")
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.int64))
    argv = ["run", str(tmp_path / "clf.frnn")]
    for item in inputs:
        argv += ["--input", item.replace("X", str(tmp_path / "x.npy"))]
    assert main(argv) == 2
    assert message.replace("X", str(tmp_path / "x.npy")) in capsys.readouterr().err


def test_demo_of_an_unknown_model_prints_only_the_error(capsys):
    assert main(["demo", "dna_motif", "no_such_model"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no shipped model 'no_such_model'" in err


def test_bench_refuses_an_unknown_cell():
    from fastrnn.bench import run_case
    for mode in ("LSTMX", ["LSTM"], None):   # LAYERS[mode]: a KeyError, a TypeError
        with pytest.raises(fastrnn.errors.ArgumentError, match="mode must be one of"):
            run_case(mode, 8, 4, 1, steps=2, repeats=1)
