"""The benchmark runner's case ids: every case parses back from its id, and --threads makes the same
shapes at other thread counts."""
import pytest

from benchmarks.cases import CASES, Case, at_threads, by_id


def test_every_case_parses_back_from_its_id():
    for case_id, case in CASES.items():
        assert by_id(case_id) == case
        assert by_id(case_id.replace(f"-t{case.threads}", "-t16")) == Case(
            case.mode, case.hidden, case.input, case.batch, 16, case.layers, case.stream)


def test_at_threads_keeps_order_and_drops_repeats():
    cases = [CASES["lstm-b1-h64-t1"], CASES["lstm-b1-h64-t2"], CASES["gru-step-h128-t1"]]
    ids = [c.id for c in at_threads(cases, [1, 4])]
    assert ids == ["lstm-b1-h64-t1", "lstm-b1-h64-t4", "gru-step-h128-t1", "gru-step-h128-t4"]


@pytest.mark.parametrize("bad", ["", "lstm", "rnn-b1-h64-t1", "lstm-b1-h64", "lstm-b1-h64-t1x"])
def test_unknown_ids_are_refused(bad):
    with pytest.raises(ValueError, match="not a case id"):
        by_id(bad)


def test_the_probe_times_fastrnn_tiles_on_a_checked_product():
    from benchmarks.cases import packed_product_gflops
    rate = packed_product_gflops(8, 32, 32)
    assert 0 < rate < float("inf")


def test_the_report_says_where_the_product_rate_came_from():
    from benchmarks.compare import _product_rate
    old = _product_rate(dict(sgemm_gflops=104.2))
    assert old == "104 GFLOP/s per core (numpy sgemm)"
    new = _product_rate(dict(sgemm_gflops=260.0, sgemm_sources=dict(numpy=126.0, fastrnn_tiles=260.0)))
    assert "numpy's sgemm, 126" in new and "fastrnn's tiles, 260" in new
