"""The 18 recurrent cases of ONNX's backend node test suite, run through converters.from_onnx.

The onnx wheel ships the generators, not the data: ``collect_testcases()`` builds every node case in
memory; we keep the recurrent ones by name and compare fastrnn with each case's own expected outputs
(ORT cannot run the three layout=1 "batchwise" cases, so the expected outputs are the reference).
"""
import re

import numpy as np
import pytest

pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")

import converters  # noqa: E402
import fastrnn  # noqa: E402

EXPECTED_NAMES = sorted([
    "test_lstm_defaults", "test_lstm_with_initial_bias", "test_lstm_reverse",
    "test_lstm_bidirectional", "test_lstm_batchwise", "test_lstm_with_peepholes",
    "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_reverse",
    "test_gru_bidirectional", "test_gru_batchwise", "test_gru_seq_length",
    "test_simple_rnn_defaults", "test_simple_rnn_with_initial_bias", "test_simple_rnn_reverse",
    "test_simple_rnn_bidirectional", "test_simple_rnn_batchwise", "test_rnn_seq_length",
])
NAME = re.compile(r"^test_(lstm|gru|simple_rnn|rnn)_")
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def recurrent_cases():
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators of unrelated ops warn about overflows
        cases = collect_testcases()
    return {c.name: c for c in cases if NAME.match(c.name) and c.kind == "node"}


def test_all_18_recurrent_cases_are_collected(recurrent_cases):
    assert sorted(recurrent_cases) == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_backend_case(recurrent_cases, name, tmp_path):
    case = recurrent_cases[name]
    sess = converters.from_onnx(case.model)
    feed_names = [i.name for i in sess.get_inputs()]
    graph_outputs = [o.name for o in case.model.graph.output]
    assert [o.name for o in sess.get_outputs()] == graph_outputs
    assert case.data_sets
    for inputs, expected in case.data_sets:
        feeds = dict(zip(feed_names, inputs))
        got = sess.run(None, feeds)
        assert len(got) == len(expected)
        for out_name, g, e in zip(graph_outputs, got, expected):
            assert g.shape == e.shape, out_name
            assert g.dtype == e.dtype, out_name
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {out_name}")
        # every output alone, in reverse order: any subset of outputs works
        for out_name, e in reversed(list(zip(graph_outputs, expected))):
            (g,) = sess.run([out_name], feeds)
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
    # the converted plan survives save / load
    path = tmp_path / f"{name}.frnn"
    fastrnn.save(sess, path)
    loaded = fastrnn.load(path)
    for inputs, expected in case.data_sets[:1]:
        for g, e in zip(loaded.run(None, dict(zip(feed_names, inputs))), expected):
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
