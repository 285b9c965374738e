"""The one place that calls numba.njit: every kernel shares these options.

fastmath drops only the flags that are safe for recurrent inference: reassociation (so dot products
vectorise), contraction (FMA), no signed zeros and reciprocal approximations. It keeps NaN/Inf
semantics, because `clip` uses +inf for "no clip" and overflowing exp must still saturate sigmoid.
error_model="numpy" removes the division-by-zero branch that blocks vectorisation.
Kernels never allocate, so they compile without numba's runtime (its `_nrt` target option): no
reference counting on every array view and helper call, which cost ~15% of a small-H step (and
an atomic increment on a shared counter, i.e. cross-core traffic, in parallel kernels). numba
versions without that option get the default (slower, same results).

numba's disk cache keys a function on its own source file and bytecode, not on the helpers and
intrinsics it compiles in: a kernel cached before an edit of gemm.py or simd.py would load as it
was. Kernels are therefore cached under a stamp that also covers every module of this folder
(`sources_stamp`); numba versions without the cache classes this relies on get numba's own.
A cache that cannot be used never stops a call: a folder that cannot be written is read when it
holds a cache of these sources (warmed into a read-only image) and, with no folder at all,
kernels compile in memory; an entry that cannot be read or written is compiled; each with a
KernelCacheWarning.
"""
import functools
import glob
import hashlib
import os
import pickle
import warnings

import numba
import numpy as np
from numba.core import cpu, types
from numba.core.registry import CPUDispatcher

from ..errors import KernelCacheWarning, KernelNotSavedWarning

FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})
_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy")
if hasattr(cpu.CPUTargetOptions, "_nrt"):
    _OPTIONS["_nrt"] = False


KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def sources_stamp() -> str:
    """A digest of the contents of every Python module in KERNELS_DIR (read once per process)."""
    return _folder_digest(KERNELS_DIR)


@functools.lru_cache(maxsize=None)
def _folder_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    return digest.hexdigest()


def _kernel_cache_class():
    """numba's FunctionCache with each of its locators' source stamps extended by
    sources_stamp(), a read-only folder that holds a cache accepted for loading, and its files
    read and written as _entry_file_class says; None where this numba lacks those classes."""
    try:
        from numba.core.caching import (CompileResultCacheImpl, FunctionCache,
                                        IndexDataCacheFile)
        locators = list(CompileResultCacheImpl._locator_classes)
    except (ImportError, AttributeError):
        return None
    if not all(hasattr(FunctionCache, name) for name in
               ("_load_overload", "_save_overload", "_guard_against_spurious_io_errors")):
        return None

    impl = type("KernelCacheImpl", (CompileResultCacheImpl,),
                {"_locator_classes": [_stamped_locator(base) for base in locators]})
    entry_file = _entry_file_class(IndexDataCacheFile)

    def __init__(self, py_func):
        FunctionCache.__init__(self, py_func)
        self._cache_file = entry_file(self._cache_path, self._impl.filename_base,
                                      self._impl.locator.get_source_stamp())

    return type("KernelCache", (FunctionCache,), {
        "_impl_class": impl, "__init__": __init__, "load_overload": _load_without_refresh,
        "save_overload": _save_or_warn})


def _stamped_locator(base):
    """`base` with sources_stamp() in its source stamp, and a folder it cannot write accepted
    when it holds a cache of these sources (numba skips it: a cache warmed into a read-only
    image or NUMBA_CACHE_DIR was never read, and with no writable folder at all numba raised
    on import). A stale one is skipped, so that a writable folder after it can be used."""
    def get_source_stamp(self):
        return base.get_source_stamp(self), sources_stamp()

    def ensure_cache_path(self):
        try:
            base.ensure_cache_path(self)
        except OSError:
            if not _holds_cache(self.get_cache_path(), self.get_source_stamp()):
                raise

    return type(base.__name__, (base,), {"get_source_stamp": get_source_stamp,
                                         "ensure_cache_path": ensure_cache_path})


@functools.lru_cache(maxsize=None)
def _holds_cache(folder: str, stamp) -> bool:
    """Whether `folder` holds an index of this numba saved under `stamp` (numba's index file:
    numba's version pickled, then (stamp, entries) pickled)."""
    for path in glob.glob(os.path.join(glob.escape(folder), "*.nbi")):
        try:
            with open(path, "rb") as f:
                if pickle.load(f) == numba.__version__ and pickle.loads(f.read())[0] == stamp:
                    return True
        except Exception:  # noqa: BLE001 - an index that cannot be read holds no cache
            continue
    return False


def _entry_file_class(base):
    """numba's IndexDataCacheFile, safe against what a crash, a full disk, a copy cut short or
    two processes saving at once leave behind. An index or data file that does not unpickle is
    a miss (with a warning), and the next save writes the index anew. Each data file also
    carries the stamp and index key it was saved under, and loads only for those: numba names
    a data file by the index it read, so two processes saving other signatures (or CPUs) of one
    kernel at once can leave one's code under the other's key, and a reader between another
    process's index and data writes would get a data file left from before an edit."""
    class KernelCacheFile(base):
        def save(self, key, data):
            super().save(key, (self._source_stamp, key, data))

        def load(self, key):
            entry = super().load(key)
            if entry is None or entry[:2] != (self._source_stamp, key):
                return None
            return entry[2]

        def _load_index(self):
            return self._unpickled(super()._load_index, self._index_path) or {}

        def _load_data(self, name):
            entry = self._unpickled(functools.partial(super()._load_data, name),
                                    self._data_path(name))
            return entry if isinstance(entry, tuple) and len(entry) == 3 else None

        @staticmethod
        def _unpickled(load, path):
            try:
                return load()
            except FileNotFoundError:  # removed by another process's save since its index
                return None
            except Exception as exc:  # noqa: BLE001 - any unreadable entry is compiled anew
                warnings.warn(f"fastrnn: kernel cache file {path} is unreadable "
                              f"({type(exc).__name__}: {exc}); compiling the kernel again",
                              KernelCacheWarning, stacklevel=2)
                return None

    return KernelCacheFile


def _load_without_refresh(self, sig, target_context):
    """numba's load_overload without its target_context.refresh(): that imports and installs
    every lowering and typing registry numba has (a warm start's first call: 0.27-0.31 s with it,
    0.04-0.07 s without, on a Zen 3), which only compiling needs, and numba's compiler refreshes
    before it compiles. A cached kernel's code needs only the symbols numba installs when its
    context is built and the thread pool its parallel code starts on rebuilding (its library's
    reload_init)."""
    with self._guard_against_spurious_io_errors():
        return self._load_overload(sig, target_context)
    return None  # what numba's own returns when the guard swallows an I/O error


def _save_or_warn(self, sig, data):
    """numba's save_overload, where a folder or file that cannot be written (read-only, full,
    another owner's) is a warning, not an error after the compile succeeded: the call goes on
    with the kernel compiled in memory."""
    try:
        with self._guard_against_spurious_io_errors():
            self._save_overload(sig, data)
    except OSError as exc:
        warnings.warn(f"fastrnn: could not save a compiled kernel to numba's cache in "
                      f"{self._cache_path} ({exc}); this process keeps it in memory and the "
                      f"next one compiles it again", KernelNotSavedWarning, stacklevel=2)


_KERNEL_CACHE = _kernel_cache_class()


def _cached_njit(fn, **options):
    """numba.njit with the shared options, its disk cache stamped with sources_stamp() as well as
    the function's own source (numba's own cache where this numba lacks the classes)."""
    if _KERNEL_CACHE is None:
        return numba.njit(fn, **_OPTIONS, **options)
    dispatcher = numba.njit(fn, **dict(_OPTIONS, cache=False), **options)
    if isinstance(dispatcher, CPUDispatcher):  # not with numba's JIT disabled
        try:
            dispatcher._cache = _KERNEL_CACHE(dispatcher.py_func)
        except RuntimeError:  # numba found no folder to cache in: the dispatcher keeps none
            warnings.warn(_NO_CACHE_FOLDER.format(numba.config.CACHE_DIR or "unset", KERNELS_DIR),
                          KernelNotSavedWarning, stacklevel=1)
    return dispatcher


_NO_CACHE_FOLDER = ("fastrnn: numba's kernel cache has no folder it can write or that holds a "
                    "cache of these kernels (NUMBA_CACHE_DIR: {}; {}/__pycache__; the user cache "
                    "folder): every process compiles each kernel it calls, 10-50 s each; set "
                    "NUMBA_CACHE_DIR to a writable folder")


def kernel(fn=None, *, parallel=False):
    """Compile a kernel entry point (optionally with prange loops)."""
    if fn is None:
        return lambda f: _cached_njit(f, parallel=parallel)
    return _cached_njit(fn, parallel=parallel)


def inline(fn):
    """Compile a helper that is always inlined into the kernels that call it."""
    return _cached_njit(fn, inline="always")


def helper(fn):
    """Compile a helper called from kernels (compiled once per dtype, inlined by LLVM where it
    pays). Helpers are not written to the disk cache: a cached kernel carries their code."""
    if numba.config.DISABLE_JIT:
        return fn
    options = {k: v for k, v in _OPTIONS.items() if k != "cache"}
    return _HelperDispatcher(py_func=fn, locals={}, targetoptions=dict(options, nopython=True))


class _HelperDispatcher(CPUDispatcher):
    """A dispatcher that types its calls from other jitted code without literal values.

    numba compiles a jitted callee once per distinct set of argument types, and a constant
    argument (`gemm_gates(x, 0, n, ...)`) types as that very value: every call site with other
    constants made another full compilation of the helper (gemm_gates had 7, gemv_gates 8), most
    of a kernel's cold compile time. Typing calls by their plain types compiles each helper once
    per dtype; the constants still fold where LLVM inlines the helper."""

    def get_call_template(self, args, kws):
        return super().get_call_template(tuple(types.unliteral(a) for a in args),
                                         {k: types.unliteral(v) for k, v in kws.items()})


def compiled_for(kernel, args):
    """The kernel's compiled function for exactly these arguments' types, to call again with
    arguments of the same types: it skips numba's typing of every argument on every call, and
    checks nothing (an array of another dtype or layout would be read as if it had these). With
    numba's JIT disabled (or for a plain Python function), the function itself.

    Found once per kernel and argument types: numba's typing of the arguments and its lookup of
    the signature were most of the ~115 us a stream took to build (~24 us now; a decoder builds
    one per translated batch)."""
    compile_for = getattr(kernel, "compile", None)
    if compile_for is None:
        return kernel
    key = (kernel, *map(_type_key, args))
    entry = _COMPILED.get(key)
    if entry is None:
        entry = _COMPILED[key] = compile_for(tuple(numba.typeof(arg) for arg in args))
    return entry


_COMPILED = {}  # compiled_for's (kernel, argument type keys) -> compiled function


def forget_compiled(kernels) -> None:
    """Drop compiled_for's entries of these kernels: their next compiled_for asks the kernel
    again (fastrnn.warmup watches kernel.compile to see which kernels a call reaches)."""
    for key in [k for k in _COMPILED if k[0] in kernels]:
        del _COMPILED[key]


def _type_key(arg):
    """What numba.typeof reads of an argument: an array's class, dtype, rank, layout ('C', 'F'
    or 'A', in numba's order), writeability and alignment; any other value's numba type."""
    if type(arg) is np.ndarray:
        flags = arg.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        return arg.dtype, arg.ndim, layout, flags.writeable, flags.aligned
    return numba.typeof(arg)
