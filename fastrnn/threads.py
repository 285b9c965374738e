"""numba's thread pool: a deliberately chosen threading layer and the public thread-count controls.

`workqueue`, numba's fallback, costs ~100 us per parallel region and aborts when parallel code is
entered from several Python threads at once, so fastrnn never runs parallel kernels on it: it asks
for `omp` (then `tbb`) and, if neither loads, runs its serial kernels and says so once.
fastrnn's hot path calls no BLAS, so BLAS thread pools never compete with numba's.

numba's thread count belongs to each Python thread; `set_num_threads` is fastrnn's count for the
whole process, which a thread's call adopts. GNU OpenMP cannot run in a process forked after its
pool started (numba kills such a child with SIGTERM at its first parallel region), so a child
forked from a process whose `omp` pool had started runs fastrnn's serial kernels.
"""
import os
import threading
import warnings

import numba

from .errors import ArgumentError

_SAFE_LAYERS = ("omp", "tbb")
_lock = threading.Lock()
_parallel_ok: bool | None = None
_process_count: int | None = None  # set_num_threads' count, for every thread of the process
_forked_from_omp = False  # this process was forked after its parent's GNU OpenMP pool started


def _loadable(layer: str) -> bool:
    try:
        if layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        else:
            from numba.np.ufunc import tbbpool  # noqa: F401
    except ImportError:
        return False
    return True


def _choose_layer() -> str | None:
    requested = os.environ.get("NUMBA_THREADING_LAYER", "").lower()
    if requested in _SAFE_LAYERS and _loadable(requested):
        return requested
    for layer in _SAFE_LAYERS:
        if _loadable(layer):
            return layer
    return None


def parallel_enabled() -> bool:
    """True when fastrnn's parallel kernels may run (a thread-safe layer is, or will be, active)."""
    global _parallel_ok
    if _parallel_ok is None:
        with _lock:
            if _parallel_ok is None:
                _parallel_ok = _configure()
    return _parallel_ok


def _configure() -> bool:
    try:
        active = numba.threading_layer()
    except ValueError:  # no parallel region has run yet in this process: we may still choose
        active = None
    if active is not None:
        ok = active in _SAFE_LAYERS
    else:
        layer = _choose_layer()
        ok = layer is not None
        if ok:
            numba.config.THREADING_LAYER = layer
    if not ok:
        warnings.warn(
            "fastrnn: no thread-safe numba threading layer (omp or tbb) is available"
            + (f" (active: {active})" if active else "")
            + "; running single-threaded kernels", RuntimeWarning, stacklevel=3)
    return ok


def threading_layer() -> str | None:
    """The numba threading layer fastrnn's parallel kernels run on, or None when running serially."""
    if not parallel_enabled():
        return None
    try:
        return numba.threading_layer()
    except ValueError:
        return numba.config.THREADING_LAYER


def set_num_threads(n: int) -> None:
    """Threads used by fastrnn's parallel kernels (1 .. cores), in every thread of the process:
    each Python thread that calls fastrnn afterwards sets its own numba count to n."""
    global _process_count
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ArgumentError(
            f"num_threads must be an int in 1..{numba.config.NUMBA_NUM_THREADS}, got {n!r}")
    numba.set_num_threads(n)
    _process_count = n


def get_num_threads() -> int:
    """fastrnn's thread count: set_num_threads' if it was called, else numba's for this thread."""
    return numba.get_num_threads() if _process_count is None else _process_count


def workers() -> int:
    """Threads a call may use (1 means the serial kernels); the kernel picks how to split them."""
    count = _read_count()
    if _process_count is not None and count != _process_count:
        numba.set_num_threads(_process_count)  # a thread that has not run fastrnn since
        count = _process_count
    if count > 1 and _parallel_ok:
        return count
    if count > 1 and _forked_from_omp:
        _warn_forked()
    return 1


def _first_read() -> int:
    """The first call's count: it starts numba's thread pool, settles the threading layer and
    puts the cheap reader in place for the calls after it."""
    global _read_count
    count = numba.get_num_threads()
    parallel_enabled()
    _read_count = _count_reader()
    return count


_read_count = _first_read


def _count_reader():
    """The calling thread's thread count without numba.get_num_threads' pool-start check, which
    takes a process-wide lock on every call (0.7 us of every layer call, against 0.1 us): numba's
    own C getter that get_num_threads calls once the pool is up, where this numba version has
    it."""
    from numba.np.ufunc import parallel

    reader = getattr(parallel, "_get_num_threads", None)
    if callable(reader) and reader() == numba.get_num_threads():
        return reader
    return numba.get_num_threads


def _pool_breaks_on_fork() -> bool:
    """Whether numba's thread pool has started on GNU OpenMP (or an OpenMP it cannot name)."""
    from numba.np.ufunc import parallel

    if not getattr(parallel, "_is_initialized", True):
        return False
    try:
        if numba.threading_layer() != "omp":
            return False
        from numba.np.ufunc import omppool
    except (ValueError, ImportError):
        return False
    return getattr(omppool, "openmp_vendor", "GNU") != "Intel"


def _after_fork_in_child() -> None:
    global _parallel_ok, _forked_from_omp
    if _pool_breaks_on_fork():
        _parallel_ok = False
        _forked_from_omp = True


_warned_forked = False


def _warn_forked() -> None:
    global _warned_forked
    if not _warned_forked:
        _warned_forked = True
        warnings.warn(
            "fastrnn: this process was forked from one whose GNU OpenMP thread pool had started, "
            "and OpenMP cannot run after such a fork; fastrnn runs one thread here (start worker "
            "processes with the 'spawn' or 'forkserver' method, or fork them before the parent's "
            "first fastrnn call, to keep parallel kernels)", RuntimeWarning, stacklevel=5)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
