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
"""
import functools
import glob
import hashlib
import os

import numba
import numpy as np
from numba.core import cpu, types
from numba.core.registry import CPUDispatcher

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
    sources_stamp(), or None where this numba lacks those classes."""
    try:
        from numba.core.caching import CompileResultCacheImpl, FunctionCache
        locators = list(CompileResultCacheImpl._locator_classes)
    except (ImportError, AttributeError):
        return None

    def stamped(base):
        def get_source_stamp(self):
            return base.get_source_stamp(self), sources_stamp()
        return type(base.__name__, (base,), {"get_source_stamp": get_source_stamp})

    impl = type("KernelCacheImpl", (CompileResultCacheImpl,),
                {"_locator_classes": [stamped(base) for base in locators]})
    members = {"_impl_class": impl}
    if hasattr(FunctionCache, "_load_overload") and \
            hasattr(FunctionCache, "_guard_against_spurious_io_errors"):
        members["load_overload"] = _load_without_refresh
    return type("KernelCache", (FunctionCache,), members)


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


_KERNEL_CACHE = _kernel_cache_class()


def _cached_njit(fn, **options):
    """numba.njit with the shared options, its disk cache stamped with sources_stamp() as well as
    the function's own source (numba's own cache where this numba lacks the classes)."""
    if _KERNEL_CACHE is None:
        return numba.njit(fn, **_OPTIONS, **options)
    dispatcher = numba.njit(fn, **dict(_OPTIONS, cache=False), **options)
    if isinstance(dispatcher, CPUDispatcher):  # not with numba's JIT disabled
        dispatcher._cache = _KERNEL_CACHE(dispatcher.py_func)
    return dispatcher


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
