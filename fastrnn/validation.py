"""Argument checks shared by the layers and the task stages: dtypes, sizes, rebuilding from config."""
import inspect
import math
from typing import Mapping

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def read_dtype(value) -> np.dtype | None:
    """np.dtype(value), or None where numpy cannot read it as a dtype (its TypeError and
    ValueError, and the SyntaxError of strings it parses as Python, such as "(2,3")."""
    try:
        return np.dtype(value)
    except (TypeError, ValueError, SyntaxError):
        return None


def check_dtype(dtype) -> np.dtype:
    """The numpy dtype for `dtype`, which must be float32 or float64; None is float32, the
    default, as in PyTorch (numpy would read it as float64)."""
    if dtype is None:
        return SUPPORTED_DTYPES[0]
    dt = read_dtype(dtype)
    if dt is None:
        raise DTypeError(f"dtype must be float32 or float64, got {dtype!r}")
    if dt not in SUPPORTED_DTYPES:
        raise DTypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def as_array(value, what: str) -> np.ndarray:
    """np.asarray(value), with typed errors for nested sequences of unequal lengths and for what
    numpy cannot read (numpy raises its own ValueError / TypeError for them). PyTorch tensors
    are read detached and, for bfloat16 (which numpy lacks), widened to float32."""
    try:
        if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
            value = value.detach().cpu()  # a meta tensor has no data: NotImplementedError
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
        return np.asarray(value)
    except ValueError as exc:
        raise ShapeError(f"{what} must be a rectangular array (every row of one length), got "
                         f"nested sequences of unequal lengths ({exc})") from None
    except (TypeError, RuntimeError) as exc:  # NotImplementedError is a RuntimeError
        raise DTypeError(f"{what} must be an array of numbers, got {type(value).__name__} that "
                         f"numpy cannot read ({exc})") from None


def as_flag(value, what: str) -> bool:
    """An on/off argument, taken by its truth value as Python and torch take it (0, None, 1 and
    numpy bools too); a value without one (a numpy array of several elements) is an
    ArgumentError instead of numpy's untyped ValueError."""
    try:
        return bool(value)
    except (ValueError, TypeError):
        raise ArgumentError(f"{what} must be True or False, got {type(value).__name__} "
                            f"{_short(value)}") from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def real_array(value, what: str, shape: tuple) -> np.ndarray:
    """as_array(value) of real numbers (floats or integers) with exactly this shape."""
    arr = as_array(value, what)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeError(f"{what} must have shape {shape}, got {arr.shape}")
    return arr


def check_seed(seed, what: str = "seed"):
    """`seed` for np.random.default_rng: None, an int >= 0, or numpy's Generator, BitGenerator
    or SeedSequence (numpy's own errors for anything else are untyped)."""
    if seed is None or isinstance(seed, (np.random.Generator, np.random.BitGenerator,
                                         np.random.SeedSequence)):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ArgumentError(f"{what} must be None, an int >= 0 or a numpy Generator, got "
                            f"{seed!r}")
    return int(seed)


# Sizes fastrnn allocates from (a layer's or stage's parameters, a stream's buffer, the output
# of an Embedding, OneHot or Linear call) of more than MAX_ELEMENTS elements (4 TiB of float32)
# are refused before anything is allocated.
# numpy raises its own ValueError for arrays past 2^63 bytes; anything smaller that memory cannot
# hold raises MemoryError as it is allocated (the caller asked for that much).
MAX_ELEMENTS = 1 << 40
# Layers of a stack: each costs Python objects and a kernel call, so a count that could never be
# run (num_layers=2**62 looped for ever) is refused; 65536 layers take ~25 s to build.
MAX_LAYERS = 1 << 16


def check_elements(what: str, count: int) -> None:
    """ArgumentError when `count` elements (a Python int: no overflow) exceed MAX_ELEMENTS."""
    if count > MAX_ELEMENTS:
        raise ArgumentError(f"{what} would hold {count} elements, more than the {MAX_ELEMENTS} "
                            f"(2^40) fastrnn allocates")


def as_float(value) -> float | None:
    """A real number (int, float or numpy integer / floating; not bool) as a float, or None for
    anything else, ints beyond float's range included (float() would raise OverflowError and
    numpy's isfinite TypeError for them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def positive_float(name: str, value) -> float:
    """`value` as a finite float > 0 (bools refused)."""
    number = as_float(value)
    if number is None or not 0 < number < math.inf:
        raise ArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= minimum (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# The `seed` that skips an object's random initialisation, for one whose parameters are loaded
# next: a file's config can claim any size, and nothing may be allocated from it before the
# parameters have been checked against it.
NO_INIT = object()


def build_from_config(classes: Mapping, key: str, config: Mapping, state: Mapping | None = None):
    """classes[config[key]](**rest of config), with typed errors for unknown kinds or arguments;
    with `state`, its parameters loaded (load_state_dict) instead of a random initialisation."""
    if not isinstance(config, Mapping):
        raise ArgumentError(f"a config must be a dict, got {type(config).__name__}")
    cfg = dict(config)
    kind = cfg.pop(key, None)
    if not isinstance(kind, str) or kind not in classes:
        raise ArgumentError(f"config {key} must be one of {sorted(classes)}, got {kind!r}")
    if state is not None and "seed" in inspect.signature(classes[kind]).parameters:
        cfg["seed"] = NO_INIT
    try:
        obj = classes[kind](**cfg)
    except DTypeError:
        raise
    except TypeError as exc:  # an argument the class does not take
        raise ArgumentError(f"bad {kind} config {dict(config)!r}: {exc}") from None
    return obj if state is None else obj.load_state_dict(state)


def check_clip(clip) -> float | None:
    """None (no clip; also for +inf, so that a config stays JSON) or a positive finite float."""
    if clip is None:
        return None
    value = as_float(clip)
    if value is None or not value > 0:
        raise ArgumentError(f"clip must be None or a positive number, got {clip!r}")
    return None if value == np.inf else value


def check_weight_dtype(weight_dtype, dtype) -> np.dtype:
    """The dtype weight matrices are stored in: the layer's dtype, or float16 for float32 layers
    (half the bytes each step streams; see the README for the accuracy cost)."""
    if weight_dtype is None:
        return np.dtype(dtype)
    wanted = read_dtype(weight_dtype)
    if wanted is None:
        raise ArgumentError(f"weight_dtype must be None, 'float16' or the layer's dtype, "
                            f"got {weight_dtype!r}")
    if wanted == dtype:
        return wanted
    if wanted == np.float16 and dtype == np.float32:
        return wanted
    raise ArgumentError(f"weight_dtype {wanted.name} is not available for {np.dtype(dtype).name} "
                        f"layers: use None, the layer's dtype or (float32 layers) 'float16'")
