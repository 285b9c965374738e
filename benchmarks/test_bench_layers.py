"""The cases of benchmarks/cases.py under pytest-benchmark, one group per case.

Not part of the test suite (pytest's testpaths is tests/); run with

    python -m pytest benchmarks --benchmark-only [-k lstm-b1-h256]

All engines share this one process here, so their thread pools can disturb each other; tests run
engine by engine to limit that. benchmarks/compare.py, which runs each engine in a process of its
own, gives the reference numbers.
"""
import time

import pytest

from benchmarks import engines
from benchmarks.cases import CASES, EXTRA_CASES

ALL_CASES = {**CASES, **EXTRA_CASES}
PAIRS = [pytest.param(engine, case_id, id=f"{case_id}-{engine}")
         for engine in engines.ENGINES for case_id in ALL_CASES]


@pytest.mark.parametrize("engine, case_id", PAIRS)
def test_layer(benchmark, engine, case_id):
    for module in engines.REQUIRES[engine]:
        pytest.importorskip(module, reason=f"{engine} needs {module}, which is not installed")
    case = ALL_CASES[case_id]
    try:
        bench = engines.setup(engine, case)
    except NotImplementedError as e:  # a shape the engine cannot run (ONNX: no LSTM projection)
        pytest.skip(str(e))
    start = time.perf_counter()
    while time.perf_counter() - start < 0.1:       # warm-up, outside the timing
        bench.run()
    benchmark.group = case_id
    benchmark.extra_info.update(engine=engine, threads=case.threads)
    benchmark(bench.run)
