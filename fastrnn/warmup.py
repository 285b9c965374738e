"""Compile every kernel ahead of time, so that no call waits on numba.

numba compiles a kernel the first time it is called with new argument types and keeps the result
in its disk cache (NUMBA_CACHE_DIR, else `__pycache__` beside fastrnn's kernels or a per-user
folder). On a machine whose cache is empty, a fresh install or a new fastrnn version, each kind of
call pays its compile on first use: ~12 s for a one-thread sequence, ~30-40 s for a two-thread
one, more again for the first batch, stream or bidirectional call. In a service that is a first
request of half a minute and, later, a stall whenever a request of a new kind arrives.

`warmup` runs one small call of every kind (one per kernel entry, `EXERCISES`) in worker
processes that compile concurrently, each filling the shared cache; every later process loads the
kernels from it in milliseconds. The kernels do not depend on the cell type or the sizes (those
are run-time arguments), only on the dtype: one warm-up per dtype covers every model of it.
"""
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import WarmupError
from .validation import as_flag, check_dtype, positive_float, positive_int

RECORD_PREFIX = "fastrnn-warmup-record "  # a worker's output line that carries one task's record
# seconds a worker may take over one call before it is stopped: the slowest compiles take about a
# minute alone on 2 cores, several times that beside the other workers on a busy machine
DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class Exercise:
    """A call that reaches `kernels` (module-level dispatchers in fastrnn.kernels: engine, units,
    fused or heads), on `threads` threads; `cost` is its cold compile in seconds (alone, in a fresh
    process, on a 2-core AMD EPYC Zen 4), to hand the longest out first."""
    name: str
    kernels: tuple
    threads: int
    cost: float
    run: Callable


def _layer(mode, hidden, dtype, weight_dtype, **kw):
    import fastrnn
    return getattr(fastrnn, mode)(8, hidden, dtype=dtype, weight_dtype=weight_dtype, seed=0, **kw)


def _sequence(layer, steps, rows):
    x = np.random.default_rng(0).standard_normal((steps, rows, layer.input_size))
    layer(x.astype(layer.dtype))


def _stream(dtype, weight_dtype):
    layer = _layer("LSTM", 32, dtype, weight_dtype)
    layer.stream(1).step(np.ones((1, 8), layer.dtype))


def _heads(dtype, weight_dtype):
    from .heads import Linear, sample_token
    head = Linear(8, 4, dtype=dtype, seed=0)
    head(np.ones((2, 8), dtype))
    sample_token(np.arange(4.0), top_k=2, rng=0)


# The shapes pick each kernel through the layer's routing (recurrent.DirectionParams.route); the
# worker checks that the call reached it. H = 128 keeps every shape above the routes' size
# thresholds with float16 weights too (half the bytes).
EXERCISES = (
    Exercise("units", ("units.run_units",), 2, 32.0,
             lambda d, w: _sequence(_layer("LSTM", 128, d, w), 16, 1)),
    Exercise("directions", ("engine.run_directions",), 2, 18.0,
             lambda d, w: _sequence(_layer("LSTM", 128, d, w, bidirectional=True), 16, 1)),
    Exercise("serial", ("engine.run_serial",), 1, 12.0,
             lambda d, w: _sequence(_layer("LSTM", 32, d, w), 4, 1)),
    Exercise("stream", ("engine.run_stream",), 1, 13.0, _stream),
    Exercise("rows", ("engine.run_parallel",), 2, 19.0,
             lambda d, w: _sequence(_layer("GRU", 128, d, w), 2, 16)),
    Exercise("fused", ("fused.run_fused",), 2, 10.0,
             lambda d, w: _sequence(_layer("LSTM", 128, d, w), 2, 16)),
    Exercise("fused_serial", ("fused.run_fused_serial",), 1, 6.0,
             lambda d, w: _sequence(_layer("LSTM", 128, d, w), 2, 8)),
    Exercise("heads", ("heads.linear_forward", "heads.sample"), 1, 1.0, _heads),
)


def _dispatcher(path):
    from .kernels import engine, fused, heads, units
    module, name = path.split(".")
    return getattr({"engine": engine, "fused": fused, "heads": heads, "units": units}[module],
                   name)


def _run_exercise(name, dtype, weight_dtype):
    """Run one exercise in this process: {name, dtype, weight_dtype, seconds, compiled, cache};
    raises if the call did not reach its kernels, or left them compiled in this process only
    (no folder to cache them in, or their save failed)."""
    from . import set_num_threads
    from .errors import KernelNotSavedWarning
    exercise = next((e for e in EXERCISES if e.name == name), None)
    if exercise is None:
        raise WarmupError(f"no warm-up exercise {name!r}: expected one of "
                          f"{', '.join(e.name for e in EXERCISES)}")
    kernels = [_dispatcher(k) for k in exercise.kernels]
    uncached = [path for path, k in zip(exercise.kernels, kernels) if k.stats.cache_path is None]
    if uncached:
        raise WarmupError(f"warm-up {name!r} ({dtype}): {', '.join(uncached)} cannot be cached, "
                          f"numba has no folder it can write its cache in (NUMBA_CACHE_DIR, "
                          f"fastrnn/kernels/__pycache__ or the user cache folder)")
    set_num_threads(exercise.threads)
    misses = _cache_misses(kernels)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, _watch(kernels) as reached:
        warnings.simplefilter("always", KernelNotSavedWarning)
        exercise.run(np.dtype(dtype), weight_dtype)
    seconds = time.perf_counter() - t0
    missed = [path for path, k in zip(exercise.kernels, kernels) if k not in reached]
    if missed:
        raise WarmupError(f"warm-up {name!r} ({dtype}) did not reach {', '.join(missed)}: "
                          f"its shapes no longer select that kernel")
    unsaved = [w for w in caught if issubclass(w.category, KernelNotSavedWarning)]
    if unsaved:
        raise WarmupError(f"warm-up {name!r} ({dtype}) compiled but did not fill the cache: "
                          f"{unsaved[0].message}")
    return dict(name=name, dtype=dtype, weight_dtype=weight_dtype, seconds=seconds,
                compiled=_cache_misses(kernels) > misses, cache=kernels[0].stats.cache_path)


def _cache_misses(kernels):
    """How many times these kernels have been compiled in this process for want of a cached
    one."""
    return sum(sum(k.stats.cache_misses.values()) for k in kernels)


def compiled_here() -> int:
    """How many kernels (entry and dtype) this process has compiled so far, rather than loaded
    from numba's cache."""
    return _cache_misses([_dispatcher(k) for e in EXERCISES for k in e.kernels])


@contextlib.contextmanager
def _watch(kernels):
    """The set of `kernels` that calls inside the block reached: asked for a compiled function
    (layers and streams call every kernel through kernels._jit.compiled_for), or compiled anew
    (a plain call of a dispatcher)."""
    reached = set()
    counts = [len(k.overloads) for k in kernels]

    def recording(kernel, compile_for):
        def compile(sig):
            reached.add(kernel)
            return compile_for(sig)
        return compile

    from .kernels._jit import forget_compiled
    forget_compiled(kernels)
    for kernel in kernels:
        kernel.compile = recording(kernel, kernel.compile)
    try:
        yield reached
    finally:
        for kernel, count in zip(kernels, counts):
            del kernel.compile  # the class's method again
            if len(kernel.overloads) > count:
                reached.add(kernel)


def plan(dtypes=("float32",), float16_weights=False, threads=None):
    """The (exercise, dtype, weight dtype) tasks a warm-up runs, longest first. Exercises that
    need more threads than `threads` (default: numba's maximum, 1 without a thread-safe
    threading layer) are left out: such calls never run them."""
    from numba import config
    from .threads import parallel_enabled
    if threads is None:
        threads = config.NUMBA_NUM_THREADS if parallel_enabled() else 1
    variants = []
    for dtype in (dtypes,) if isinstance(dtypes, str) else dtypes:
        variants.append((str(check_dtype(dtype)), None))
    if as_flag(float16_weights, "float16_weights"):
        variants.append(("float32", "float16"))
    tasks = [(e, d, w) for d, w in dict.fromkeys(variants) for e in EXERCISES
             if e.threads <= threads and not (w and e.name == "heads")]
    return sorted(tasks, key=lambda t: -t[0].cost)


def _groups(tasks, jobs):
    """tasks spread over `jobs` workers, each next task to the least loaded (tasks come longest
    first); a worker runs its tasks in turn and compiles the helpers they share once."""
    groups = [[] for _ in range(jobs)]
    loads = [0.0] * jobs
    for task in tasks:
        k = loads.index(min(loads))
        groups[k].append(task)
        loads[k] += task[0].cost
    return [g for g in groups if g]


def worker_count(jobs, tasks) -> int:
    """How many worker processes run `tasks`: `jobs` (default: the cores this process may run
    on), at most one per task."""
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(positive_int("jobs", jobs), len(tasks)))


def warmup(dtypes=("float32",), float16_weights=False, jobs=None,
           progress: Callable[[dict], None] | None = None,
           timeout: float | None = DEFAULT_TIMEOUT) -> list[dict]:
    """Compile (or load from numba's cache) every kernel that calls of these dtypes can run, in
    `jobs` worker processes (default: one per core, at most one per task). Returns one record per
    task: name, dtype, weight_dtype, seconds, compiled (False: it was cached already), cache (the
    cache folder); `progress` gets each record as it comes. A worker that finishes no call for
    `timeout` seconds (None: no limit) is stopped, and the warm-up fails with WarmupError."""
    if timeout is not None:
        timeout = positive_float("timeout", timeout)
    tasks = plan(dtypes, float16_weights)
    results = queue.Queue()
    threads = [threading.Thread(target=_drive, args=(group, results, timeout), daemon=True)
               for group in _groups(tasks, worker_count(jobs, tasks))]
    for thread in threads:
        thread.start()
    records, failures = [], []
    for _ in range(len(tasks) + len(threads)):  # every record, then each worker's end
        item = results.get()
        if isinstance(item, dict):
            records.append(item)
            if progress is not None:
                progress(item)
        elif item:
            failures.append(item)
    if failures:
        raise WarmupError("warm-up failed: " + "; ".join(failures))
    return records


def _drive(group, results, timeout):
    """Run one worker process over `group`, putting each record on `results` as it finishes,
    then the worker's error ('' when it ended well): always len(group) + 1 items, so that the
    caller never waits for a worker that is gone, or stuck (stopped after `timeout` seconds
    without a record)."""
    spec = json.dumps([(e.name, d, w) for e, d, w in group])
    done, error = 0, ""
    try:
        with tempfile.TemporaryFile("w+") as err:
            worker = subprocess.Popen(_worker_command(spec), env=_worker_env(),
                                      stdout=subprocess.PIPE, stderr=err, text=True)
            watchdog = _Watchdog(worker, timeout)
            try:
                for line in worker.stdout:  # anything else a worker prints is not ours
                    if line.startswith(RECORD_PREFIX):
                        results.put(json.loads(line[len(RECORD_PREFIX):]))
                        done += 1
                        watchdog.restart()
            finally:
                watchdog.stop()
            code = worker.wait()
            err.seek(0)
            message = err.read().strip().splitlines()
        if watchdog.fired:
            task = group[done]
            error = (f"a worker finished no call for {timeout:g} s and was stopped (on "
                     f"{task[0].name} {task[1]}, after {done} of its {len(group)} calls)")
        elif code != 0 or done != len(group):  # a traceback's last line, not a signal's
            error = message[-1] if code > 0 and message else (
                f"a worker exited (status {code}) after {done} of its {len(group)} calls")
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who raises it
        error = f"{type(exc).__name__}: {exc}"
    for _ in range(done, len(group)):  # the records it never sent
        results.put("")
    results.put(error)


class _Watchdog:
    """Kills `worker` when `timeout` seconds (None: never) pass without a restart."""

    def __init__(self, worker, timeout):
        self._worker, self._timeout, self._timer, self.fired = worker, timeout, None, False
        self.restart()

    def restart(self):
        self.stop()
        if self._timeout is not None:
            self._timer = threading.Timer(self._timeout, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def stop(self):
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self):
        self.fired = True
        self._worker.kill()


def _worker_command(spec: str) -> list:
    return [sys.executable, "-m", "fastrnn.warmup", spec]


def _worker_env():
    """This process's environment, with the folder that holds this fastrnn first on the path (so
    that a worker imports the same one, installed or not)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


def _worker(spec: str) -> int:
    for name, dtype, weight_dtype in json.loads(spec):
        print(RECORD_PREFIX + json.dumps(_run_exercise(name, dtype, weight_dtype)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
