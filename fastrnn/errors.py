"""Typed errors raised at fastrnn's Python boundary.

Every message says what was expected and what came, so that a caller can fix the call without
reading the source.
"""


class FastRNNError(Exception):
    """Base class of every error fastrnn raises on purpose."""


class ShapeError(FastRNNError, ValueError):
    """An array has the wrong rank, size or shape."""


class DTypeError(FastRNNError, TypeError):
    """An array has a dtype fastrnn cannot use there."""


class ArgumentError(FastRNNError, ValueError):
    """A constructor or call argument is out of its allowed range or of the wrong kind."""


class FormatError(FastRNNError, ValueError):
    """A file or serialized model is malformed: wrong magic, version, truncation, missing tensors."""


class UnsupportedError(FastRNNError, ValueError):
    """The input is well formed but asks for something fastrnn does not implement."""


class UnsafeFileError(FormatError):
    """A file asks to run code (a pickle global outside the allowed set) and was refused."""


class WarmupError(FastRNNError, RuntimeError):
    """A warm-up worker (fastrnn.warmup) failed: a kernel did not compile or was not reached."""


class KernelCacheWarning(RuntimeWarning):
    """numba's disk cache could not serve or keep a kernel: it compiles (again) instead."""


class KernelNotSavedWarning(KernelCacheWarning):
    """A kernel compiled, but could not be written to the disk cache (or there is none)."""
