"""The benchmark runner's cases and floors: every case parses back from its id, --threads makes the
same shapes at other thread counts, each floor is the larger of its memory and compute terms (a
sequence's layers each from the level holding it), and the probe's product rate says where it
came from; the extra cases beyond the grid; the two-thread handover probe and its warning."""
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.cases import CASES, EXTRA_CASES, Case, at_threads, by_id


def test_every_case_parses_back_from_its_id():
    for case_id, case in {**CASES, **EXTRA_CASES}.items():
        assert by_id(case_id) == case
        assert by_id(case_id.replace(f"-t{case.threads}", "-t16")) == replace(case, threads=16)


def test_the_extra_cases_are_the_shapes_their_ids_name():
    assert {c.mode for c in EXTRA_CASES.values()} == {"LSTM", "GRU", "RNN"}
    bi = by_id("gru-2layer-bi-b1-h256-t2")
    assert (bi.mode, bi.layers, bi.bidirectional, bi.hidden, bi.threads) == ("GRU", 2, True, 256, 2)
    assert bi.layer_inputs() == [64, 512]
    proj = by_id("lstm-b1-h256-p128-t1")
    assert (proj.proj, proj.hidden_out) == (128, 128)
    assert by_id("lstm-b1-h128-T1000-t1").steps == 1000
    assert set(CASES).isdisjoint(EXTRA_CASES)


def test_at_threads_keeps_order_and_drops_repeats():
    cases = [CASES["lstm-b1-h64-t1"], CASES["lstm-b1-h64-t2"], CASES["gru-step-h128-t1"]]
    ids = [c.id for c in at_threads(cases, [1, 4])]
    assert ids == ["lstm-b1-h64-t1", "lstm-b1-h64-t4", "gru-step-h128-t1", "gru-step-h128-t4"]


@pytest.mark.parametrize("bad", ["", "lstm", "lstm-b1-h64", "lstm-b1-h64-t1x", "gru-b1-h64-p32-t1",
                                 "lstm-b1-h64-p64-t1", "lstm-bi-step-h64-t1",
                                 "lstm-step-h64-T10-t1", "lstm-b1-h64-T0-t1"])
def test_unknown_ids_are_refused(bad):
    with pytest.raises(ValueError, match="not a case id"):
        by_id(bad)


def test_the_probe_times_fastrnn_tiles_on_a_checked_product():
    from benchmarks.cases import packed_product_gflops
    rate = packed_product_gflops(8, 32, 32)
    assert 0 < rate < float("inf")


@pytest.mark.parametrize("offset", [0, 16, 48])
def test_aligned_ones_start_where_asked(offset):
    from benchmarks.cases import aligned_ones
    for size in (1, 1000, 300_000):
        a = aligned_ones(size, offset)
        assert a.ctypes.data % 64 == offset and a.size == size and a.dtype == np.float32
        assert np.all(a == 1)


def test_the_probe_reads_every_size_at_each_offset(monkeypatch):
    """Where an array starts moves a core's read rate: every size is read aligned and not, so
    the figures do not change with where numpy happened to allocate."""
    import benchmarks.cases as cases
    starts = []
    real = cases.aligned_ones

    def recording(size, offset=0):
        a = real(size, offset)
        starts.append(a.ctypes.data % 64)
        return a
    monkeypatch.setattr(cases, "aligned_ones", recording)
    monkeypatch.setattr(cases, "cache_levels",
                        lambda: [dict(name="L1", size=16 << 10, private=True)])
    monkeypatch.setattr(cases, "packed_product_gflops", lambda m, k, n: 1.0)
    cases.probe()
    assert sorted(set(starts)) == sorted(cases.READ_OFFSETS)


def test_the_probe_times_tiles_on_aligned_weights(monkeypatch):
    import benchmarks.cases as cases
    real = cases._packed_products()
    seen = []

    def products(a, bp, bias, out, reps):
        seen.append(bp.ctypes.data % 64)
        real(a, bp, bias, out, reps)
    monkeypatch.setattr(cases, "_packed_products", lambda: products)
    assert cases.packed_product_gflops(8, 32, 32) > 0
    assert seen and set(seen) == {0}


def test_the_report_says_where_the_product_rate_came_from():
    from benchmarks.compare import _product_rate
    old = _product_rate(dict(sgemm_gflops=104.2))
    assert old == "104 GFLOP/s per core (numpy sgemm)"
    new = _product_rate(dict(sgemm_gflops=260.0, sgemm_sources=dict(numpy=126.0, fastrnn_tiles=260.0)))
    assert "numpy's sgemm, 126" in new and "fastrnn's tiles, 260" in new


_MACHINE = dict(levels=[dict(name="L1", size=48 << 10, private=True, gbps=400.0),
                        dict(name="L2", size=1 << 20, private=True, gbps=200.0),
                        dict(name="L3", size=32 << 20, private=False, gbps=100.0),
                        dict(name="DRAM", size=None, private=False, gbps=40.0)],
                sgemm_gflops=250.0)


def test_a_sequence_floor_takes_each_layer_from_the_level_holding_it():
    from benchmarks.cases import floor
    # LSTM H = 256: each layer's R is 1 MiB, which one core's L2 holds while that layer runs
    two = CASES["lstm-2layer-b1-h256-t1"]
    (w0, r), (w1, _) = two.layer_weight_bytes()
    got = floor(two, _MACHINE)
    assert got["level"] == "L2" and got["bound"] == "memory"
    assert got["seconds"] == pytest.approx((200 * r + w0 + w1) / 200e9)
    # a streaming step touches every weight each step: the 6 MiB of LSTM H = 512 come from L3
    step = CASES["lstm-step-h512-t1"]
    w, r = step.weight_bytes()
    got = floor(step, _MACHINE)
    assert got["level"] == "L3" and got["seconds"] == pytest.approx((w + r) / 100e9)


def test_the_weights_count_every_direction_and_the_projection():
    grid = CASES["gru-b1-h128-t1"]
    assert grid.flops() == 2 * 100 * 3 * 128 * (64 + 128)
    bi = replace(grid, bidirectional=True)
    assert bi.layer_weight_bytes() == [tuple(2 * b for b in grid.layer_weight_bytes()[0])]
    assert bi.flops() == 2 * grid.flops()
    proj = EXTRA_CASES["lstm-b1-h256-p128-t1"]
    # gates' R (4H x P) and the projection (P x H) every step; W (4H x I) once
    assert proj.layer_weight_bytes() == [(4 * 4 * 256 * 64, 4 * (4 * 256 * 128 + 128 * 256))]


def test_a_bidirectional_floor_keeps_a_direction_on_each_core():
    from benchmarks.cases import floor
    # LSTM H = 256: 1 MiB of R a direction; one direction fits an L2, both do not
    one = floor(Case("LSTM", 256, 64, bidirectional=True), _MACHINE)
    two = floor(Case("LSTM", 256, 64, threads=2, bidirectional=True), _MACHINE)
    assert one["level"] == two["level"] == "L2"
    assert one["seconds"] == pytest.approx(2 * two["seconds"])
    # a unidirectional 2 MiB R split over two cores fits their L2s as well; on one it is in L3
    assert floor(Case("LSTM", 362, 64, threads=2), _MACHINE)["level"] == "L2"
    assert floor(Case("LSTM", 362, 64), _MACHINE)["level"] == "L3"


def test_a_floor_is_the_larger_of_memory_and_compute():
    from benchmarks.cases import floor
    batch = CASES["lstm-b64-h256-t2"]
    got = floor(batch, _MACHINE)
    assert got["bound"] == "compute"
    assert got["seconds"] == pytest.approx(batch.flops() / (2 * 250e9))


def test_the_report_names_the_cpu_generation():
    import llvmlite.binding as llvm

    from benchmarks.compare import cpu_description
    assert cpu_description().endswith(f"LLVM {llvm.get_host_cpu_name()})")


def test_the_handover_probe_times_two_threads_or_says_it_cannot():
    import numba

    from benchmarks.handover import ABORT, _ping_pong, round_trip_ns
    got = round_trip_ns(trips=200, runs=1)
    if numba.get_num_threads() >= 2:  # a time, however slow (a busy core can make it ms)
        assert got is not None and 0 < got < float("inf")
    else:
        assert got is None
    # iterations that run one after the other (one thread) give up instead of waiting forever
    sync = np.zeros(24, np.int64)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        _ping_pong(sync, 10, 1000)
    finally:
        numba.set_num_threads(before)
    assert sync[ABORT] > 0


@pytest.mark.parametrize("values,warned", [
    ([45.0, 52.0, 48.0], None), ([45.0, 410.0, 50.0], "slowed down"),
    ([380.0, 420.0], "slow throughout"), ([None, None], None), ([], None)])
def test_the_report_warns_of_slow_handovers(values, warned):
    from benchmarks.compare import handover_note
    note = handover_note(values)
    assert (note is None) if warned is None else (warned in note)


# ----- fastrnn.bench: the built-in `fastrnn bench` table and runner -----
def _result(**kw):
    from fastrnn.bench import BenchResult
    base = dict(mode="LSTM", hidden=64, input=64, batch=1, steps=100, threads=1,
                first_call_s=0.5, sequence_us=250.0, step_us=2.5)
    return BenchResult(**{**base, **kw})


def test_format_table_of_no_results_is_its_header():
    """format_table([]) raised IndexError (it read results[0].steps for the heading)."""
    from fastrnn.bench import format_table
    lines = format_table([]).splitlines()
    assert lines == ["| cell | H | I | batch | threads | sequence | per step | "
                     "one streaming step |", "|---|---|---|---|---|---|---|---|"]
    assert format_table(iter([])) == format_table([])


def test_format_table_names_t_per_row_when_the_results_differ_in_steps():
    """The heading took T from the first result alone, so a row of other steps showed under
    a wrong T."""
    from fastrnn.bench import format_table
    same = format_table([_result(), _result(mode="GRU", step_us=None)]).splitlines()
    assert "| T=100 sequence |" in same[0] and len(same) == 4
    assert same[2] == "| LSTM | 64 | 64 | 1 | 1 | 250 µs | 2.50 µs | 2.5 µs |"
    assert same[3].endswith("| 250 µs | 2.50 µs | - |")
    mixed = format_table(r for r in [_result(), _result(steps=50)]).splitlines()
    assert "| sequence |" in mixed[0] and "T=" not in mixed[0]
    assert "| 250 µs (T=100) | 2.50 µs |" in mixed[2] and "| 250 µs (T=50) | 5.00 µs |" in mixed[3]


@pytest.mark.parametrize("batch", [0, -1, 1.5, True, "2", None])
def test_run_case_checks_the_batch(batch):
    """A negative, float or bool batch reached numpy (an untyped ValueError / TypeError)."""
    from fastrnn.bench import run_case
    from fastrnn.errors import ArgumentError
    with pytest.raises(ArgumentError, match="batch must be an int >= 1"):
        run_case("GRU", 8, 4, batch, steps=2, repeats=1)


def test_median_time_needs_a_run():
    """repeats=0 (and no minimum time) gave NaN, the median of no times, with a warning."""
    from fastrnn.bench import median_time
    from fastrnn.errors import ArgumentError
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ArgumentError, match="repeats must be an int >= 1"):
            median_time(lambda: None, bad)
    assert 0 <= median_time(lambda: None, 1) < 1


def test_median_time_needs_a_finite_minimum_time():
    """min_seconds=inf ran fn for ever; NaN and negative times were taken as none."""
    from fastrnn.bench import median_time
    from fastrnn.errors import ArgumentError
    for bad in (float("nan"), -1.0, float("inf"), "0.1", None, True):
        with pytest.raises(ArgumentError, match="min_seconds must be a finite number >= 0"):
            median_time(lambda: None, 3, bad)
    calls = []
    median_time(lambda: calls.append(1), 3, np.float32(0.01))
    assert len(calls) >= 3


def test_a_floor_counts_the_bytes_a_weight_streams():
    from benchmarks.cases import floor
    step = CASES["gru-step-h256-t1"]   # 960 KiB of float32 weights, 480 KiB as float16
    assert step.weight_bytes(2) == tuple(b // 2 for b in step.weight_bytes())
    single, half = floor(step, _MACHINE), floor(step, _MACHINE, itemsize=2)
    assert single["level"] == half["level"] == "L2"
    assert half["seconds"] == pytest.approx(single["seconds"] / 2)
    big = CASES["lstm-step-h512-t1"]   # 6 MiB, 3 MiB as float16: L3 either way
    assert floor(big, _MACHINE, itemsize=2)["seconds"] == pytest.approx(
        floor(big, _MACHINE)["seconds"] / 2)


def _machine_info():
    return dict(cpu="test CPU", usable_cpus=2, logical_cpus=2, versions=dict(fastrnn="0"),
                python="3", probe=dict(_MACHINE, sgemm_gflops=250.0), timing="t", date="d",
                load_average=[0.0, 0.0])


def test_float16_weights_are_reported_beside_fastrnn_and_never_as_a_peer():
    from benchmarks.compare import report, summarise
    check = np.linspace(-1, 1, 8)
    times = {"fastrnn": 50e-6, "fastrnn-f16": 28e-6, "onnxruntime": 70e-6, "torch": 500e-6}
    rows = [dict(case=CASES["lstm-step-h512-t1"], results={
        e: dict(seconds=t, check=list(check + (2e-4 if e == "fastrnn-f16" else 0)))
        for e, t in times.items()})]
    machine = _machine_info()
    geomean = summarise(rows, machine)
    (row,) = rows
    assert row["ratio"] == geomean == pytest.approx(50 / 70)   # not against the faster f16
    assert row["ratios"]["fastrnn-f16"] == pytest.approx(28 / 70)
    assert row["own_floors"]["fastrnn-f16"]["seconds"] == pytest.approx(row["floor"]["seconds"] / 2)
    text = report(rows, list(times), machine, geomean, [], "")
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert "fastrnn-f16 / best peer" in header and "fastrnn-f16 % of its floor" in header
    table_row = next(line for line in text.splitlines() if line.startswith("| lstm-step"))
    assert table_row.count("|") == header.count("|")
    assert "| 0.71 |" in table_row and "| 0.40 |" in table_row
    assert "Geometric mean of fastrnn-f16 / best peer**: 0.40" in text
    assert "agrees with torch's to 0.0e+00" in text      # the same-weight engines only
    assert "fastrnn-f16's output (its weights rounded to float16) is within 2.0e-04" in text


def test_without_float16_weights_the_report_has_its_usual_columns():
    from benchmarks.compare import report, summarise
    rows = [dict(case=CASES["gru-b1-h64-t1"], results={
        "fastrnn": dict(seconds=30e-6, check=[0.5]), "onnxruntime": dict(seconds=60e-6,
                                                                         check=[0.5])})]
    machine = _machine_info()
    text = report(rows, ["fastrnn", "onnxruntime"], machine, summarise(rows, machine), [], "")
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert "f16" not in header and "fastrnn-f16 is" not in text and header.count("|") == 8
