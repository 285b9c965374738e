"""Built-in latency benchmark of fastrnn alone (the peers' side-by-side runner is in benchmarks/)."""
import math
import time
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError
from .layers import LAYERS
from .threads import get_num_threads, set_num_threads
from .validation import as_float, positive_int

DEFAULT_CASES = [  # (mode, hidden, input, batch)
    ("LSTM", 64, 64, 1), ("LSTM", 128, 64, 1), ("LSTM", 256, 64, 1), ("LSTM", 512, 256, 1),
    ("GRU", 128, 64, 1), ("GRU", 256, 64, 1), ("RNN", 256, 64, 1), ("LSTM", 256, 64, 64),
]


@dataclass
class BenchResult:
    mode: str
    hidden: int
    input: int
    batch: int
    steps: int
    threads: int
    first_call_s: float
    sequence_us: float
    step_us: float | None


def median_time(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Median wall time of fn() in seconds over `repeats` runs (at least `min_seconds` in all).
    repeats must be an int >= 1 (the median of no runs would be NaN) and min_seconds a finite
    number >= 0 (an infinite one ran for ever)."""
    repeats = positive_int("repeats", repeats)
    seconds = as_float(min_seconds)
    if seconds is None or not 0 <= seconds < math.inf:
        raise ArgumentError(f"min_seconds must be a finite number >= 0, got {min_seconds!r}")
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_case(mode, hidden, input_size, batch, steps=100, threads=1, repeats=20,
             weight_dtype=None) -> BenchResult:
    steps, repeats = positive_int("steps", steps), positive_int("repeats", repeats)
    batch = positive_int("batch", batch)  # numpy's own errors for -1, 1.5 or True are untyped
    if not isinstance(mode, str) or mode not in LAYERS:
        raise ArgumentError(f"mode must be one of {sorted(LAYERS)}, got {mode!r:.40}")
    previous = get_num_threads()
    set_num_threads(threads)
    try:
        layer = LAYERS[mode](input_size, hidden, seed=0, weight_dtype=weight_dtype)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((steps, batch, input_size)).astype(np.float32)
        t0 = time.perf_counter()
        layer(x)
        first = time.perf_counter() - t0
        seq = median_time(lambda: layer(x), repeats, 0.2)
        step_us = None
        if batch == 1:
            stream = layer.stream(batch)
            x_t = x[0]
            stream.step(x_t)
            step_us = median_time(lambda: stream.step(x_t), 20 * repeats, 0.1) * 1e6
        return BenchResult(mode, hidden, input_size, batch, steps, threads, first, seq * 1e6,
                           step_us)
    finally:
        set_num_threads(previous)


def format_table(results) -> str:
    """run_case results as a Markdown table, one row each in their order; no results give the
    header alone. The sequence column's heading names the steps T when the results share
    them; otherwise each of its cells does."""
    results = list(results)
    steps = {r.steps for r in results}
    shared = steps.pop() if len(steps) == 1 else None
    sequence = "sequence" if shared is None else f"T={shared} sequence"
    lines = [f"| cell | H | I | batch | threads | {sequence} | per step | one streaming step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        step = "-" if r.step_us is None else f"{r.step_us:.1f} µs"
        seq = f"{r.sequence_us:.0f} µs" + ("" if shared is not None else f" (T={r.steps})")
        lines.append(f"| {r.mode} | {r.hidden} | {r.input} | {r.batch} | {r.threads} | "
                     f"{seq} | {r.sequence_us / r.steps:.2f} µs | {step} |")
    return "\n".join(lines)
