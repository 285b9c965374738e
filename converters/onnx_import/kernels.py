"""numpy implementations of the plan's surrounding ops (everything but the recurrent layers).

onnx-free: a saved plan runs with numpy and fastrnn only. Each plan op has the semantics of the
newest ONNX version of the op of the same name; the import-time converters (``op_converters``)
rewrite older versions into that form (attributes that became inputs are turned into constant
inputs, opset-dependent defaults are made explicit), so the kernels never look at an opset.

A kernel is ``fn(attrs: dict, inputs: list[ndarray | None], n_out: int) -> list[ndarray]``;
absent optional inputs are ``None``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Callable

import numpy as np

from fastrnn.errors import ArgumentError, ShapeError, UnsupportedError
from fastrnn.validation import read_dtype

Kernel = Callable[[dict, list, int], list]
KERNELS: dict[str, Kernel] = {}

# the most elements a kernel creates a tensor of (8 GiB of float32): sizes read from a model's
# values (ConstantOfShape, Tile, Expand, Range...) are checked before anything is allocated
MAX_ELEMENTS = 1 << 31
_max_elements = contextvars.ContextVar("max_elements", default=MAX_ELEMENTS)


class SizeLimitError(UnsupportedError):
    """A kernel's output would have more elements than the limit allows."""


@contextlib.contextmanager
def element_limit(limit: int):
    """Lower the element limit inside the block (import-time constant folding)."""
    token = _max_elements.set(min(limit, _max_elements.get()))
    try:
        yield
    finally:
        _max_elements.reset(token)


def _check_size(shape, what: str) -> None:
    count, limit = math.prod(shape), _max_elements.get()
    if count > limit:
        raise SizeLimitError(f"{what} would have shape {list(shape)} ({count} elements), more "
                             f"than the {limit} allowed")


_broadcast_shapes = functools.lru_cache(maxsize=1024)(np.broadcast_shapes)


def _broadcast(op: str, *shapes) -> tuple:
    """The shape the given shapes broadcast to, within the element limit (the shapes a plan's
    nodes meet are few: remembered)."""
    try:
        shape = _broadcast_shapes(*(tuple(s) for s in shapes))
    except ValueError:
        raise ShapeError(f"{op} cannot broadcast shapes {[tuple(s) for s in shapes]}") from None
    _check_size(shape, f"{op}'s output")
    return shape


def kernel(*names: str):
    """Register a kernel under one or more plan op names."""
    def deco(fn: Kernel) -> Kernel:
        for name in names:
            KERNELS[name] = fn
        return fn
    return deco


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


def _scalar(a, what: str):
    arr = np.asarray(a)
    if arr.size != 1:
        raise ShapeError(f"{what} must hold exactly one value, got shape {arr.shape}")
    return arr.reshape(-1)[0]


def _f32(value: float) -> float:
    """An ONNX float attribute's value: attributes are float32, so a default such as 0.01 is used
    as float32(0.01) in float64 arithmetic too, as ORT does."""
    return float(np.float32(value))


def _to_int(v, dtype, saturate: bool) -> np.ndarray:
    """float64 values to integer `dtype` the way ORT's C++ casts them on x86-64: truncated toward
    zero; NaN and values outside the range become the type's minimum, or, with `saturate` (ORT's
    integer reductions), values above the range its maximum."""
    info = np.iinfo(dtype)
    v = np.asarray(v, dtype=np.float64)
    top = float(info.max) + 1.0  # 2**bits or 2**(bits-1): the first double above the range
    inside = (v > float(info.min) - 1.0) & (v < top)  # NaN: False
    out = np.full(v.shape, info.min, dtype=dtype)
    out[inside] = v[inside].astype(dtype)
    if saturate:
        out[v >= top] = info.max
    return out


def _f16_in_f32(fn: Kernel) -> Kernel:
    """ORT computes these ops on float16 in float32 and rounds the result to float16 once (Sum of
    60000, 60000, -60000 is 60000, not inf; ThresholdedRelu compares with alpha in float32)."""
    @functools.wraps(fn)
    def run(attrs, ins, n_out):
        if not any(x is not None and x.dtype == np.float16 for x in ins):
            return fn(attrs, ins, n_out)
        wide = [x.astype(np.float32) if x is not None and x.dtype == np.float16 else x for x in ins]
        outs = fn(attrs, wide, n_out)
        with np.errstate(over="ignore"):  # beyond float16's range: inf
            return [y.astype(np.float16) if y.dtype == np.float32 else y for y in outs]
    return run


# ------------------------------------------------------------------ data movement
@kernel("Identity")
def _identity(attrs, ins, n_out):
    return [ins[0]]


@kernel("Dropout")
def _dropout(attrs, ins, n_out):
    x = ins[0]
    out = [x]
    if n_out > 1:  # ORT's inference mask: all true, all false (versions 7-11), of X's type (7-9)
        dtype = x.dtype if attrs.get("mask_like_input") else np.bool_
        out.append(np.full(x.shape, attrs.get("mask", True), dtype=dtype))
    return out


@kernel("Transpose")
def _transpose(attrs, ins, n_out):
    perm = attrs.get("perm")
    x = ins[0]
    if perm is not None and sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"perm {perm} is not a permutation of the {x.ndim} axes of shape {x.shape}")
    return [np.transpose(x, perm)]


@kernel("Reshape")
def _reshape(attrs, ins, n_out):
    x, shape = ins[0], _ints(ins[1])
    if not attrs.get("allowzero", 0):
        for i, s in enumerate(shape):
            if s == 0:
                if i >= x.ndim:
                    raise ShapeError(f"Reshape target {shape} copies dimension {i} (0) but the "
                                     f"input has shape {x.shape}")
                shape[i] = x.shape[i]
    if shape.count(-1) > 1:
        raise ShapeError(f"Reshape target {shape} has more than one -1")
    if any(s < -1 for s in shape):  # numpy would take any negative entry for -1
        raise ShapeError(f"Reshape target {shape} has an entry below -1")
    try:
        return [np.reshape(x, shape)]
    except ValueError:
        raise ShapeError(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                         f"into {shape}") from None


@kernel("Flatten")
def _flatten(attrs, ins, n_out):
    x = ins[0]
    axis = attrs.get("axis", 1)
    if axis < 0:
        axis += x.ndim
    if not 0 <= axis <= x.ndim:
        raise ShapeError(f"Flatten axis {attrs.get('axis', 1)} is out of range for shape {x.shape}")
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@kernel("Squeeze")
def _squeeze(attrs, ins, n_out):
    x = ins[0]
    axes = ins[1] if len(ins) > 1 else None
    if axes is None or np.size(axes) == 0:  # ORT: empty axes squeeze every size-1 axis
        return [np.squeeze(x)]
    axes = _squeeze_norm(_ints(axes), x.ndim)
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"Squeeze axis {a} has size {x.shape[a]}, not 1 (shape {x.shape})")
    return [np.squeeze(x, axis=axes)]


def _squeeze_norm(axes: list[int], rank: int) -> tuple:
    return tuple(sorted({_axis(a, rank, "Squeeze axis") for a in axes}))


def _unsqueeze_norm(axes: list[int], rank: int) -> list[int]:
    """Where Unsqueeze's `axes` put the new axes of size 1 in the output of an input of `rank`."""
    norm = sorted(_axis(a, rank + len(axes), "Unsqueeze axis") for a in axes)
    if len(set(norm)) != len(norm):
        raise ShapeError(f"Unsqueeze axes {axes} repeat an axis")
    return norm


@kernel("Unsqueeze")
def _unsqueeze(attrs, ins, n_out):
    x = ins[0]
    return [np.expand_dims(x, tuple(_unsqueeze_norm(_ints(ins[1]), x.ndim)))]


@kernel("Concat")
def _concat(attrs, ins, n_out):
    xs = [x for x in ins if x is not None]
    axis = _axis(attrs["axis"], xs[0].ndim, "Concat axis")
    _check_size([sum(x.size for x in xs)], "Concat's output")
    try:
        return [np.concatenate(xs, axis=axis)]
    except ValueError:
        raise ShapeError(f"Concat on axis {axis} got incompatible shapes "
                         f"{[tuple(x.shape) for x in xs]}") from None


_INT_MAX = (2**31 - 1, 2**63 - 1)


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX's clamping, plus ORT's rule that an end of INT32_MAX or INT64_MAX means 'to the end'
    in either direction (the spec clamps it to dim - 1, which makes a backward slice empty)."""
    if step == 0:
        raise ArgumentError("Slice step must not be 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
    else:
        start = min(max(start, 0), dim - 1)
        end = -1 if end in _INT_MAX else min(max(end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


@kernel("Slice")
def _slice(attrs, ins, n_out):
    x = ins[0]
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"Slice starts/ends/axes/steps differ in length: {len(starts)}, "
                         f"{len(ends)}, {len(axes)}, {len(steps)}")
    axes = [_axis(a, x.ndim, "Slice axis") for a in axes]
    return [x[_slice_index(starts, ends, axes, steps, x.shape)]]


def _slice_index(starts: list, ends: list, axes: list, steps: list, shape: tuple) -> tuple:
    """x[index] for a tensor of this shape; axes already in range."""
    if len(set(axes)) != len(axes):
        raise ShapeError(f"Slice axes {axes} repeat an axis")
    index = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = _slice_bounds(s, e, st, shape[a])
    return tuple(index)


@kernel("Split")
def _split(attrs, ins, n_out):
    x = ins[0]
    axis = _axis(attrs.get("axis", 0), x.ndim, "Split axis")
    split = ins[1] if len(ins) > 1 else None
    bounds = _split_bounds(axis, x.shape[axis], None if split is None else _ints(split), n_out)
    return list(np.split(x, bounds, axis=axis))


def _split_bounds(axis: int, dim: int, sizes: list | None, n_out: int) -> np.ndarray:
    """Where np.split cuts axis `axis` (of size `dim`) into n_out parts of the given sizes (or
    equal ones, the last smaller)."""
    if sizes is not None:
        if len(sizes) != n_out or sum(sizes) != dim or min(sizes, default=0) < 0:
            raise ShapeError(f"Split sizes {sizes} do not cut axis {axis} of size {dim} "
                             f"into {n_out} outputs")
    else:
        chunk = -(-dim // n_out)
        sizes = [chunk] * (n_out - 1) + [dim - chunk * (n_out - 1)]
        if sizes[-1] < 0:
            raise ShapeError(f"cannot split axis {axis} of size {dim} into {n_out} outputs")
    return np.cumsum(sizes)[:-1]


@kernel("Gather")
def _gather(attrs, ins, n_out):
    x, idx = ins
    axis = _axis(attrs.get("axis", 0), x.ndim, "Gather axis")
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise ShapeError(f"Gather indices must be integers, got {idx.dtype}")
    _check_size(x.shape[:axis] + idx.shape + x.shape[axis + 1:], "Gather's output")
    try:
        return [np.take(x, idx, axis=axis)]
    except IndexError:
        raise ShapeError(f"Gather index out of range: indices in [{idx.min()}, {idx.max()}] "
                         f"for axis {axis} of size {x.shape[axis]}") from None


@kernel("ReverseSequence")
def _reverse_sequence(attrs, ins, n_out):
    """Along the time axis, each batch entry's first sequence_lens[b] steps reversed and the rest
    copied (tf2onnx's ReverseV2 of a Keras go_backwards layer); lengths outside [0, T] are
    refused, as ORT does."""
    x, lens = ins
    time_axis, batch_axis = attrs.get("time_axis", 0), attrs.get("batch_axis", 1)
    if x.ndim < 2 or (time_axis, batch_axis) not in ((0, 1), (1, 0)):
        raise ShapeError(f"ReverseSequence needs an input of rank 2 or more and time / batch axes "
                         f"0 and 1, got shape {x.shape}, time_axis {time_axis}, batch_axis "
                         f"{batch_axis}")
    T, N = x.shape[time_axis], x.shape[batch_axis]
    lens = np.asarray(lens)
    if lens.shape != (N,) or lens.dtype.kind not in "iu":
        raise ShapeError(f"ReverseSequence sequence_lens must be {N} integers (one per batch "
                         f"entry), got shape {lens.shape} of {lens.dtype}")
    listed = lens.tolist()  # one per batch entry: few
    for n in listed:
        if not 0 <= n <= T:
            raise ArgumentError(f"ReverseSequence sequence lengths must be in [0, {T}], got {n}")
    if listed.count(T) == N:  # the whole sequence of every entry (tf2onnx's ReverseV2)
        return [(x[::-1] if time_axis == 0 else x[:, ::-1]).copy()]
    steps = np.arange(T).reshape(T, 1)
    source = np.where(steps < lens, lens - 1 - steps, steps)  # (T, N): the step each comes from
    rows = np.arange(N).reshape(1, N)
    if time_axis == 0:
        return [x[source, rows]]
    return [x[rows.T, source.T]]


def _norm_indices(idx, dim: int) -> np.ndarray:
    idx = np.asarray(idx).astype(np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise ShapeError(f"index out of range: indices in [{idx.min()}, {idx.max()}] for an "
                         f"axis of size {dim}")
    return np.where(idx < 0, idx + dim, idx)


@kernel("GatherElements")
def _gather_elements(attrs, ins, n_out):
    """The output has the indices' shape. As ORT: indices of the data's rank, on every other axis
    no longer than the data (the data is read from index 0 there), on `axis` of any length."""
    x, idx = ins
    axis = _axis(attrs.get("axis", 0), x.ndim, "GatherElements axis")
    idx = np.asarray(idx)
    if idx.ndim != x.ndim:
        raise ShapeError(f"GatherElements indices of shape {idx.shape} must have the rank of the "
                         f"data, shape {x.shape}")
    if any(i != axis and n > d for i, (n, d) in enumerate(zip(idx.shape, x.shape))):
        raise ShapeError(f"GatherElements indices of shape {idx.shape} are longer than the data, "
                         f"shape {x.shape}, on an axis other than {axis}")
    window = tuple(slice(None) if i == axis else slice(0, n) for i, n in enumerate(idx.shape))
    return [np.take_along_axis(x[window], _norm_indices(idx, x.shape[axis]), axis=axis)]


@kernel("GatherND")
def _gather_nd(attrs, ins, n_out):
    """Slices of the data at the index tuples on the indices' last axis, the first `batch_dims`
    axes of data and indices paired (negative indices count from the end)."""
    x, idx = ins
    b = attrs.get("batch_dims", 0)
    idx = np.asarray(idx)
    if idx.ndim < 1 or not 0 <= b < min(x.ndim, idx.ndim):
        raise ShapeError(f"GatherND batch_dims {b} must be below the ranks of data {x.shape} "
                         f"and indices {idx.shape} (indices of rank 1 or more)")
    k = idx.shape[-1]
    if x.shape[:b] != idx.shape[:b] or k > x.ndim - b:
        raise ShapeError(f"GatherND indices of shape {idx.shape} do not fit data of shape "
                         f"{x.shape} with batch_dims {b}")
    out_shape = idx.shape[:-1] + x.shape[b + k:]
    _check_size(out_shape, "GatherND's output")
    batch, count = math.prod(x.shape[:b]), math.prod(idx.shape[b:-1])
    data = x.reshape((batch,) + x.shape[b:])
    tuples = idx.reshape(batch, count, k)
    where = [np.broadcast_to(np.arange(batch).reshape(batch, 1), (batch, count))]
    where += [_norm_indices(tuples[..., j], x.shape[b + j]) for j in range(k)]
    return [data[tuple(where)].reshape(out_shape)]


@kernel("OneHot")
def _one_hot(attrs, ins, n_out):
    """`values[1]` where an index (negative ones count from the end) equals the position on the
    new axis, `values[0]` elsewhere; indices out of range give a row of `values[0]`."""
    idx, depth, values = ins
    depth = int(_scalar(depth, "OneHot depth"))  # a float depth is truncated, as ORT
    values = np.asarray(values)
    if depth < 0:
        raise ArgumentError(f"OneHot depth must not be negative, got {depth}")
    if values.shape != (2,):
        raise ShapeError(f"OneHot values must be [off_value, on_value], got shape {values.shape}")
    idx = np.asarray(idx)
    axis = attrs.get("axis", -1)
    if not -idx.ndim - 1 <= axis <= idx.ndim:
        raise ShapeError(f"OneHot axis {axis} is out of range for indices of rank {idx.ndim}")
    axis = axis + idx.ndim + 1 if axis < 0 else axis
    _check_size(idx.shape + (depth,), "OneHot's output")
    with np.errstate(invalid="ignore"):  # float indices truncate (NaN: out of range)
        idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)
    shape = [1] * idx.ndim
    shape.insert(axis, depth)
    hot = np.expand_dims(idx, axis) == np.arange(depth).reshape(shape)
    return [np.where(hot, values[1], values[0])]


@kernel("ScatterElements")
def _scatter_elements(attrs, ins, n_out):
    data, idx, upd = ins
    axis = _axis(attrs.get("axis", 0), data.ndim, "ScatterElements axis")
    idx = _norm_indices(idx, data.shape[axis])
    if idx.shape != np.shape(upd):
        raise ShapeError(f"ScatterElements indices {idx.shape} and updates {np.shape(upd)} differ")
    out = np.array(data, copy=True)
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    where = tuple(grid)
    reduction = attrs.get("reduction", "none")
    if reduction == "none":
        out[where] = upd
    else:
        ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
        ufunc.at(out, where, np.asarray(upd, dtype=out.dtype))
    return [out]


@kernel("Shape")
def _shape(attrs, ins, n_out):
    shape = ins[0].shape[attrs.get("start", 0):attrs.get("end")]
    return [np.array(shape, dtype=np.int64)]


@kernel("Size")
def _size(attrs, ins, n_out):
    return [np.array(ins[0].size, dtype=np.int64)]


@kernel("Expand")
def _expand(attrs, ins, n_out):
    x, shape = ins[0], tuple(_ints(ins[1]))
    return [np.broadcast_to(x, _broadcast("Expand", x.shape, shape))]


@kernel("Tile")
def _tile(attrs, ins, n_out):
    x, reps = ins[0], _ints(ins[1])
    if len(reps) != x.ndim or min(reps, default=0) < 0:
        raise ShapeError(f"Tile repeats {reps} must be one count >= 0 per axis of shape {x.shape}")
    _check_size([d * r for d, r in zip(x.shape, reps)], "Tile's output")
    return [np.tile(x, reps)]


@kernel("ConstantOfShape")
def _constant_of_shape(attrs, ins, n_out):
    shape = _ints(ins[0]) if ins[0] is not None else []
    if any(s < 0 for s in shape):
        raise ShapeError(f"ConstantOfShape got a negative dimension in {shape}")
    _check_size(shape, "ConstantOfShape's output")
    value = ins[1] if len(ins) > 1 and ins[1] is not None else np.zeros(1, np.float32)
    return [np.full(shape, np.asarray(value).reshape(-1)[0], dtype=np.asarray(value).dtype)]


def _cast_to(x, dt):
    with np.errstate(all="ignore"):
        return _converted(x, dt)


def _converted(x, dt):
    """x as dtype dt (x itself when it is one already); floating-point errors are the caller's."""
    if x.dtype == dt:
        return x
    if x.dtype == np.float64 and dt == np.float16:  # ORT converts through float32
        return x.astype(np.float32).astype(dt)
    return x.astype(dt)


@kernel("Cast")
def _cast(attrs, ins, n_out):
    return [_cast_to(ins[0], np.dtype(attrs["to"]))]


@kernel("CastLike")
def _cast_like(attrs, ins, n_out):
    return [_cast_to(ins[0], ins[1].dtype)]


@kernel("Range")
def _range(attrs, ins, n_out):
    """Range as ORT 1.32 computes it (its CPU kernel, onnxruntime/core/providers/cpu/generator/
    range.cc, ComputeRange; the integer count measured against it): the count is
    ceil((double(limit) - double(start)) / double(delta)) for float32 / float64, the exact
    ceil((limit - start) / delta) for integers, at least 0; the values accumulate in the input type,
    y[0] = start, y[i] = y[i-1] + delta (rounding at every step: not start + i * delta, as ONNX's
    reference computes it). float16 (Range-27), which ORT runs through the op's function body:
    start, limit and delta cast to float32 (float64 for stash_type 11, its result cast back through
    float32), the count and the values computed in that type, the values cast to float16."""
    for v, w in zip(ins, ("start", "limit", "delta")):
        if np.ndim(v) > 1 or np.size(v) != 1:  # ORT takes a scalar or a 1-element vector
            raise ShapeError(f"Range {w} must be a scalar, got shape {np.shape(v)}")
    dtype = np.asarray(ins[0]).dtype
    start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in ins)
    if delta == 0:
        raise ArgumentError("Range delta must not be 0")
    if not (math.isfinite(start) and math.isfinite(limit)) or math.isnan(delta):
        raise ArgumentError(f"Range start and limit must be finite and delta not NaN, got {start}, "
                            f"{limit}, {delta}")
    work = dtype
    if dtype.kind in "iu":
        quotient = -((int(start) - int(limit)) // int(delta))  # exact ceiling division
    elif dtype == np.float16:
        work = np.dtype(np.float64 if attrs.get("stash_type", 1) == 11 else np.float32)
        start, limit, delta = (work.type(v) for v in (start, limit, delta))
        quotient = float((limit - start) / delta)  # in the working type
    else:
        quotient = (float(limit) - float(start)) / float(delta)  # in double
    # an infinite delta gives 0 elements; bounds too far apart for a double (the widest float64
    # ones) have no count, an error in ORT too
    if not math.isfinite(quotient):
        raise SizeLimitError(f"Range's element count ceil((limit - start) / delta) is not finite "
                             f"(start {start}, limit {limit}, delta {delta})")
    count = max(math.ceil(quotient), 0)
    _check_size([count], "Range's output")
    out = np.full(count, delta, dtype=work)
    if count:
        out[0] = start
        np.add.accumulate(out, out=out)  # sequential: out[i] = out[i-1] + delta
    if work != dtype:
        out = out.astype(np.float32).astype(dtype)
    return [out]


@kernel("NonZero")
def _nonzero(attrs, ins, n_out):
    x = np.asarray(ins[0])
    if x.ndim == 0:
        x = x.reshape(1)
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


_PAD_MODES = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@kernel("Pad")
def _pad(attrs, ins, n_out):
    """pads [x1_begin, x2_begin, ..., x1_end, ...] for `axes` (default all); negative pads crop,
    before the padding (which then reflects, repeats or wraps the cropped data), as ORT."""
    x, pads = ins[0], _ints(ins[1])
    value = ins[2] if len(ins) > 2 and ins[2] is not None else 0
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(x.ndim)
    axes = [_axis(a, x.ndim, "Pad axis") for a in _ints(axes)]
    if len(set(axes)) != len(axes) or len(pads) != 2 * len(axes):
        raise ShapeError(f"Pad needs 2 pads per axis of {axes} (no axis repeated), got {pads}")
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + len(axes)]
    shape = [d + b + e for d, b, e in zip(x.shape, begin, end)]
    if min(shape, default=0) < 0:
        raise ShapeError(f"Pad pads {pads} crop more than the shape {x.shape} has")
    _check_size(shape, "Pad's output")
    x = x[tuple(slice(max(-b, 0), d - max(-e, 0)) for d, b, e in zip(x.shape, begin, end))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        fill = np.asarray(_scalar(value, "Pad value")).astype(x.dtype)
        return [np.pad(x, widths, constant_values=fill)]
    for d, (b, e) in zip(x.shape, widths):
        if (b or e) and (d == 0 or (mode == "reflect" and max(b, e) > d - 1)):
            raise ShapeError(f"Pad mode {mode!r} cannot pad {b} and {e} values onto an axis of "
                             f"{d} (shape {x.shape} after cropping)")
    return [np.pad(x, widths, mode=_PAD_MODES[mode])]


@kernel("CumSum")
@_f16_in_f32
def _cumsum(attrs, ins, n_out):
    """Accumulated in order in x's type (integers wrap; float16 in float32, each sum rounded to
    float16, as ORT); exclusive starts from 0, reverse from the end."""
    x = ins[0]
    axis = _axis(int(_scalar(ins[1], "CumSum axis")), x.ndim, "CumSum axis")
    reverse = attrs.get("reverse", 0)
    if reverse:
        x = np.flip(x, axis)
    if attrs.get("exclusive", 0):  # x shifted by one along the axis, a 0 first
        head = (slice(None),) * axis
        x = np.concatenate([np.zeros_like(x[head + (slice(0, 1),)]), x[head + (slice(0, -1),)]],
                           axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    return [np.flip(y, axis) if reverse else y]


@kernel("Trilu")
def _trilu(attrs, ins, n_out):
    x = ins[0]
    if x.ndim < 2:
        raise ShapeError(f"Trilu needs a tensor of rank 2 or more, got shape {x.shape}")
    k = int(_scalar(ins[1], "Trilu k")) if len(ins) > 1 and ins[1] is not None else 0
    k = min(max(k, -x.shape[-2]), x.shape[-1])  # beyond: everything or nothing
    return [np.triu(x, k) if attrs.get("upper", 1) else np.tril(x, k)]


@kernel("Where")
def _where(attrs, ins, n_out):
    cond, a, b = ins
    _broadcast("Where", np.shape(cond), np.shape(a), np.shape(b))
    return [np.where(cond, a, b)]


# ------------------------------------------------------------------ linear algebra
def _blas_ready(a):
    """`a` as an operand numpy hands to BLAS: a view that is neither C- nor F-contiguous (an
    Expand's zero strides, a strided slice) made contiguous, since numpy multiplies those in its
    own loops, ~20x slower (a [1, 128] broadcast of zeros times [128, 512]: 90 against 5 us)."""
    if type(a) is np.ndarray and not (a.flags.c_contiguous or a.flags.f_contiguous):
        return np.ascontiguousarray(a)
    return a


@kernel("MatMul")
def _matmul(attrs, ins, n_out):
    a, b = _blas_ready(ins[0]), _blas_ready(ins[1])
    rows = a.shape[-2:-1] if a.ndim > 1 else ()
    cols = b.shape[-1:] if b.ndim > 1 else ()
    _check_size(_broadcast("MatMul", a.shape[:-2], b.shape[:-2]) + rows + cols, "MatMul's output")
    try:
        return [np.matmul(a, b)]
    except ValueError:
        raise ShapeError(f"MatMul shapes {a.shape} and {b.shape} do not match") from None


@kernel("Gemm")
@_f16_in_f32
def _gemm(attrs, ins, n_out):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"Gemm takes 2-D A and B, got {a.shape} and {b.shape}")
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"Gemm inner dimensions differ: {a.shape} @ {b.shape}")
    _broadcast("Gemm", (a.shape[0], b.shape[1]), np.shape(c))
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if a.dtype.kind in "iu":  # no ORT kernel; ONNX allows it: exact when alpha and beta are
        info = np.iinfo(a.dtype)  # whole numbers of the type
        if not all(float(v).is_integer() and info.min <= v <= info.max for v in (alpha, beta)):
            raise UnsupportedError(f"Gemm on {a.dtype} with alpha {alpha} and beta {beta}: "
                                   f"integer Gemm needs whole-number alpha and beta in range")
        alpha, beta = int(alpha), int(beta)
    y = _blas_ready(a) @ _blas_ready(b)
    if alpha != 1:
        y = y * y.dtype.type(alpha)
    if c is not None and beta != 0:  # ORT ignores C when beta is 0 (an inf or NaN in C too)
        y = y + (c if beta == 1 else c * c.dtype.type(beta))
    return [y.astype(a.dtype, copy=False)]


# ------------------------------------------------------------------ element-wise
def _int_div(a, b):
    q = np.floor_divide(a, b)
    fix = (a - q * b != 0) & ((a < 0) != (b < 0))
    return q + fix.astype(q.dtype)


def _div(a, b):
    if np.result_type(a, b).kind in "iu":
        if np.any(np.asarray(b) == 0):
            raise ArgumentError("integer division by zero in Div")
        return _int_div(a, b)
    return np.true_divide(a, b)


def _pow_squares_inline(a_shape, b_shape) -> bool:
    """Whether ORT's broadcast loop hands Pow the exponent one value per run of the output's
    innermost axis: it is 1 on the innermost axis (of the trailing axes both shapes have, a
    scalar counting as one axis of 1) where either is longer than 1, and the base is not. ORT
    then computes x*x for an exponent of 2 and x*x*x for 3 in the base's type."""
    n = max(min(len(a_shape), len(b_shape)), 1)
    a_dims, b_dims = (tuple(s)[-n:] if len(s) >= n else (1,) for s in (a_shape, b_shape))
    for da, db in zip(reversed(a_dims), reversed(b_dims)):
        if max(da, db) > 1:
            return db == 1 and da > 1
    return False


def _pow(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind not in "iu":
        return np.power(a, b).astype(a.dtype, copy=False)
    # ORT: static_cast<T>(std::pow(double(x), double(y))) (2^-1 = 0, 0^-1 = INT_MIN, 3^30 in
    # int32 = INT_MIN); the exponent broadcast to the full shape keeps numpy's pow from taking
    # shortcuts of its own for a scalar exponent
    x, e = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
    y = _to_int(np.power(x, np.ascontiguousarray(e)), a.dtype, saturate=False)
    if _pow_squares_inline(a.shape, b.shape):
        x = np.broadcast_to(a, y.shape)
        y = np.where(e == 2, x * x, np.where(e == 3, x * x * x, y))  # wrapping in T
    return y


def _mod(a, b, fmod=0):
    return np.fmod(a, b) if fmod else np.mod(a, b)


BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
    "Xor": np.logical_xor, "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or,
}


def _binary(op):
    fn = BINARY[op]

    def run(attrs, ins, n_out):
        a, b = ins
        _broadcast(op, np.shape(a), np.shape(b))
        with np.errstate(all="ignore"):
            return [np.asarray(fn(a, b))]
    return run


for _op in BINARY:
    KERNELS[_op] = _binary(_op)


@kernel("Mod")
def _mod_kernel(attrs, ins, n_out):
    a, b = ins
    _broadcast("Mod", np.shape(a), np.shape(b))
    if np.result_type(a, b).kind in "iu" and np.any(np.asarray(b) == 0):
        raise ArgumentError("integer modulo by zero in Mod")
    with np.errstate(all="ignore"):
        return [np.asarray(_mod(a, b, attrs.get("fmod", 0)))]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1 + erf(x / math.sqrt(2)))).astype(x.dtype)


UNARY = {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil,
    "Tanh": np.tanh, "Sigmoid": _sigmoid, "Sin": np.sin, "Cos": np.cos, "Not": np.logical_not,
    "Erf": lambda x: np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": lambda x: np.logaddexp(x.dtype.type(0), x),
    "Relu": lambda x: np.maximum(x, x.dtype.type(0)),
}


def _unary(op):
    fn = UNARY[op]

    def run(attrs, ins, n_out):
        with np.errstate(all="ignore"):
            return [_unary_value(op, fn, ins[0])]
    return run


def _unary_value(op: str, fn, x):
    return np.asarray(fn(x)).astype(x.dtype, copy=False) if op != "Not" else fn(x)


for _op in UNARY:
    KERNELS[_op] = _f16_in_f32(_unary(_op))


@kernel("Sign")
def _sign(attrs, ins, n_out):
    x = ins[0]
    y = np.sign(x)
    if x.dtype == np.float16:  # ORT's float16 Sign: NaN is 0 (float and double: NaN)
        y[np.isnan(x)] = 0
    return [y]


# float attribute defaults are float32 values (_f32): LeakyRelu's 0.01 is 0.009999999776...
@kernel("LeakyRelu")
@_f16_in_f32
def _leaky_relu(attrs, ins, n_out):
    x = ins[0]
    return [np.where(x >= 0, x, x * x.dtype.type(attrs.get("alpha", _f32(0.01))))]


@kernel("HardSigmoid")
@_f16_in_f32
def _hard_sigmoid(attrs, ins, n_out):
    x = ins[0]
    t = x.dtype.type
    alpha, beta = t(attrs.get("alpha", _f32(0.2))), t(attrs.get("beta", 0.5))
    return [np.clip(x * alpha + beta, t(0), t(1))]


@kernel("Elu")
@_f16_in_f32
def _elu(attrs, ins, n_out):
    x = ins[0]
    t = x.dtype.type
    with np.errstate(all="ignore"):
        return [np.where(x >= 0, x, t(attrs.get("alpha", 1.0)) * (np.exp(np.minimum(x, t(0))) - t(1)))]


@kernel("Selu")
@_f16_in_f32
def _selu(attrs, ins, n_out):
    x = ins[0]
    t = x.dtype.type
    alpha = t(attrs.get("alpha", 1.67326319217681884765625))
    gamma = t(attrs.get("gamma", 1.05070102214813232421875))
    with np.errstate(all="ignore"):
        return [np.where(x > 0, gamma * x, gamma * (alpha * np.exp(np.minimum(x, t(0))) - alpha))]


@kernel("ThresholdedRelu")
@_f16_in_f32
def _thresholded_relu(attrs, ins, n_out):
    x = ins[0]
    return [np.where(x > x.dtype.type(attrs.get("alpha", 1.0)), x, x.dtype.type(0))]


@kernel("Gelu")
@_f16_in_f32
def _gelu_kernel(attrs, ins, n_out):
    with np.errstate(all="ignore"):
        return [_gelu(ins[0], attrs.get("approximate", "none")).astype(ins[0].dtype, copy=False)]


@kernel("PRelu")
@_f16_in_f32
def _prelu(attrs, ins, n_out):
    x, slope = ins
    _broadcast("PRelu", x.shape, slope.shape)
    return [np.where(x < 0, x * slope, x)]


@kernel("Clip")
def _clip(attrs, ins, n_out):
    """As ORT: an absent bound is the type's lowest / largest value (so -inf and inf become the
    largest finite floats), a NaN bound is ignored, a NaN input stays NaN; min > max gives max."""
    x = ins[0]
    limits = np.finfo(x.dtype) if x.dtype.kind == "f" else np.iinfo(x.dtype)
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else limits.min
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else limits.max
    lo, hi = _scalar(lo, "Clip min"), _scalar(hi, "Clip max")
    y = np.where(x < lo, lo, x)  # comparisons with NaN are false: a NaN bound changes nothing
    y = np.where(y > hi, hi, y)
    return [y.astype(x.dtype, copy=False)]


def _variadic(op, fn):
    def run(attrs, ins, n_out):
        xs = [x for x in ins if x is not None]
        _broadcast(op, *(np.shape(x) for x in xs))
        return [np.asarray(functools.reduce(fn, xs))]
    return run


KERNELS["Min"] = _variadic("Min", np.minimum)
KERNELS["Max"] = _variadic("Max", np.maximum)
KERNELS["Sum"] = _f16_in_f32(_variadic("Sum", np.add))


@kernel("Mean")
@_f16_in_f32
def _mean(attrs, ins, n_out):
    total = KERNELS["Sum"](attrs, ins, 1)[0]
    return [(total / len([x for x in ins if x is not None])).astype(total.dtype, copy=False)]


# ------------------------------------------------------------------ normalization
@kernel("LayerNormalization")
def _layer_norm(attrs, ins, n_out):
    """Over the axes from `axis` on, as ORT 1.32 computes it: the mean from a float64 sum, the
    variance as the mean of the squared deviations, y = (x - mean) / sqrt(var + epsilon) * scale
    + bias in x's type (float16 in float32); Mean and InvStdDev float32 (float64 for stash_type
    11, which ORT refuses). scale and bias broadcast to x."""
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = _axis(attrs.get("axis", -1), x.ndim, "LayerNormalization axis")
    axes = tuple(range(axis, x.ndim))
    if not math.prod(x.shape[axis:]):
        raise ShapeError(f"LayerNormalization normalizes over no elements: shape {x.shape}, "
                         f"axis {axis}")
    for p in (scale, bias):
        if p is not None and _broadcast("LayerNormalization", x.shape, p.shape) != x.shape:
            raise ShapeError(f"LayerNormalization scale / bias of shape {p.shape} do not "
                             f"broadcast to X's shape {x.shape}")
    stash = np.dtype(np.float64 if attrs.get("stash_type", 1) == 11 else np.float32)
    work = np.dtype(np.float64) if x.dtype == np.float64 else stash
    eps = work.type(attrs.get("epsilon", _f32(1e-5)))
    v = x.astype(work, copy=False)
    mean = np.mean(v, axis=axes, keepdims=True, dtype=np.float64).astype(work)
    d = v - mean
    std = np.sqrt(np.mean(d * d, axis=axes, keepdims=True) + eps)
    y = d / std * scale.astype(work, copy=False)
    if bias is not None:
        y += bias.astype(work, copy=False)
    outs = [y.astype(x.dtype, copy=False), mean.astype(stash), (1 / std).astype(stash)]
    return outs[:n_out]


@kernel("BatchNormalization")
def _batch_norm(attrs, ins, n_out):
    """Inference, as ORT: y = x * s + (bias - mean * s), s = scale / sqrt(var + epsilon) in x's
    type (float16 in float32), per channel (axis 1), or per element of x's shape after the batch
    axis for parameters of that shape (BatchNormalization-7 with spatial 0)."""
    x = ins[0]
    if x.ndim < 2:
        raise ShapeError(f"BatchNormalization needs X of rank 2 or more (N, C, ...), got {x.shape}")
    work = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)
    scale, bias, mean, var = (p.astype(work, copy=False).reshape(
        per_channel if p.shape == x.shape[1:2] else p.shape) for p in ins[1:5])
    for p in (scale, bias, mean, var):
        if p.shape not in (per_channel, x.shape[1:]):
            raise ShapeError(f"BatchNormalization parameters of shape {p.shape} do not fit X of "
                             f"shape {x.shape}: one value per channel ({x.shape[1]}) expected")
    with np.errstate(invalid="ignore", divide="ignore"):
        s = work.type(1) / np.sqrt(var + work.type(attrs.get("epsilon", _f32(1e-5)))) * scale
        y = x.astype(work, copy=False) * s + (bias - mean * s)
    return [y.astype(x.dtype, copy=False)]


# ------------------------------------------------------------------ softmax, reductions
def _softmax_core(x, axis, log):
    e = x - np.max(x, axis=axis, keepdims=True)
    with np.errstate(all="ignore"):
        if log:
            e -= np.log(np.sum(np.exp(e), axis=axis, keepdims=True))
            return e
        np.exp(e, out=e)
        e /= np.sum(e, axis=axis, keepdims=True)
        return e


def _softmax(log):
    def run(attrs, ins, n_out):
        x = ins[0]
        axis = _axis(attrs.get("axis", -1), max(x.ndim, 1), "Softmax axis")
        if x.size == 0:
            return [x.copy()]
        if attrs.get("legacy", False):  # opset < 13: coerce to 2-D at `axis`
            flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
            return [_softmax_core(flat, 1, log).reshape(x.shape)]
        return [_softmax_core(x, axis, log)]
    return _f16_in_f32(run)


KERNELS["Softmax"] = _softmax(False)
KERNELS["LogSoftmax"] = _softmax(True)


def _first_along(x, axes) -> np.ndarray:
    """x at index 0 of each axis in `axes`, those axes kept (size 1)."""
    return x[tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))]


def _nan_if_first(result, x, axes):
    """ORT's sequential max / min (`v > acc ? v : acc`, starting from the first element) skips a
    NaN, unless the first element is NaN: then the result is NaN. `result` keeps the axes."""
    first = _first_along(x, axes)
    return np.where(np.isnan(first), first, result)


def _arg(pick_max):
    fold = np.fmax if pick_max else np.fmin
    best = np.argmax if pick_max else np.argmin

    def run(attrs, ins, n_out):
        x = ins[0]
        axis = _axis(attrs.get("axis", 0), x.ndim, "axis")
        keepdims = attrs.get("keepdims", 1)
        last = attrs.get("select_last_index", 0)
        if x.dtype.kind == "f" and x.size:
            # as ORT's sequential scan: NaN never wins, unless it is first (then index 0)
            hit = x == fold.reduce(x, axis=axis, keepdims=True)  # all False for all-NaN
            if last:
                pos = x.shape[axis] - 1 - np.argmax(np.flip(hit, axis), axis)
            else:
                pos = np.argmax(hit, axis)
            first = np.take(x, 0, axis=axis)
            idx = np.where(hit.any(axis) & ~np.isnan(first), pos, 0)
        elif last:
            idx = x.shape[axis] - 1 - best(np.flip(x, axis=axis), axis=axis)
        else:
            idx = best(x, axis=axis)
        idx = np.asarray(idx, dtype=np.int64)
        return [np.expand_dims(idx, axis) if keepdims else idx]
    return run


KERNELS["ArgMax"] = _arg(True)
KERNELS["ArgMin"] = _arg(False)

def _log_sum_exp(x, axis, keepdims):
    """log(sum(exp(x - m))) + m, m the largest finite value (0 where there is none): infinities
    give what the exact sum does (inf; -inf when all are -inf), as in ORT."""
    top = np.max(np.where(np.isfinite(x), x, -np.inf), axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0).astype(x.dtype)
    return np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top


REDUCE = {"ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min, "ReduceSum": np.sum,
          "ReduceProd": np.prod,
          "ReduceL1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
          "ReduceL2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis,
                                                               keepdims=keepdims)),
          "ReduceSumSquare": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
          "ReduceLogSum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
          "ReduceLogSumExp": _log_sum_exp}
# reductions that change a single element too (|x|, x * x, log): with noop_with_empty_axes ORT
# applies that to every element
_ELEMENT_MAPS = {"ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


def _reduce_kept(op, x, axes):
    """`op` over `axes` of x (a tuple), the reduced axes kept with size 1, as ORT computes it."""
    if x.dtype.kind == "f" and op in ("ReduceMax", "ReduceMin"):
        fold = np.fmax if op == "ReduceMax" else np.fmin
        return _nan_if_first(fold.reduce(x, axis=axes, keepdims=True), x, axes)
    with np.errstate(all="ignore"):
        if x.dtype.kind in "iu" and op not in ("ReduceMax", "ReduceMin"):
            # ORT computes integers in double and saturates the result to the type's range
            wide = REDUCE[op](x.astype(np.float64), axis=axes, keepdims=True)
            return _to_int(wide, x.dtype, saturate=True)
        return np.asarray(REDUCE[op](x, axis=axes, keepdims=True)).astype(x.dtype, copy=False)


def _empty_reduction(op, dtype):
    """What ORT gives for a reduction over no elements (bool, which ORT refuses: the spec's
    minimum False for ReduceMax, True for ReduceMin)."""
    if op in ("ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare"):
        return 0
    if op in ("ReduceLogSum", "ReduceLogSumExp"):  # log(0); an integer type's minimum
        return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    if op == "ReduceProd":
        return 1
    if dtype.kind == "f":
        return -np.inf if op == "ReduceMax" else np.inf
    if dtype.kind == "b":
        return op == "ReduceMin"
    info = np.iinfo(dtype)
    return info.min if op == "ReduceMax" else info.max


def _reduce(op):
    def run(attrs, ins, n_out):
        x = ins[0]
        axes = ins[1] if len(ins) > 1 else None
        keepdims = bool(attrs.get("keepdims", 1))
        if axes is None or np.asarray(axes).size == 0:
            if attrs.get("noop_with_empty_axes", 0) and op not in _ELEMENT_MAPS:
                return [x]
            axes = () if attrs.get("noop_with_empty_axes", 0) else tuple(range(x.ndim))
        else:
            axes = tuple(sorted({_axis(a, x.ndim, f"{op} axis") for a in _ints(axes)}))
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        if not all(x.shape[a] for a in axes):  # nothing to reduce
            y = np.full(kept, _empty_reduction(op, x.dtype) if math.prod(kept) else 0, x.dtype)
        else:
            y = _reduce_kept(op, x, axes)
        return [y if keepdims else y.reshape([d for i, d in enumerate(kept) if i not in axes])]
    return _f16_in_f32(run)


for _op in REDUCE:
    KERNELS[_op] = _reduce(_op)


def _global_pool(op, fold):
    def run(attrs, ins, n_out):
        x = ins[0]
        if x.ndim < 3 or not math.prod(x.shape[2:]):
            raise ShapeError(f"{op} needs X of shape (N, C, D1, ...) with elements on D1, ..., "
                             f"got {x.shape}")
        with np.errstate(invalid="ignore"):
            return [np.asarray(fold(x, axis=tuple(range(2, x.ndim)), keepdims=True))
                    .astype(x.dtype, copy=False)]
    return _f16_in_f32(run)


KERNELS["GlobalAveragePool"] = _global_pool("GlobalAveragePool", np.mean)
KERNELS["GlobalMaxPool"] = _global_pool("GlobalMaxPool", np.fmax.reduce)  # NaN skipped, as ORT


@kernel("TopK")
def _topk(attrs, ins, n_out):
    x = ins[0]
    k = int(_scalar(ins[1], "TopK k"))
    axis = _axis(attrs.get("axis", -1), x.ndim, "TopK axis")
    if not 0 <= k <= x.shape[axis]:
        raise ShapeError(f"TopK k={k} is out of range for axis {axis} of size {x.shape[axis]}")
    largest = attrs.get("largest", 1)
    # stable: of equal values the lower index comes first, as ONNX and ORT have it
    if x.dtype.kind == "f":  # ORT orders NaN above every number (first when largest, last not)
        key = -x if largest else x
        order = np.lexsort((key, np.isnan(x) != bool(largest)), axis=axis)
    else:  # integers are compared exactly: ~x reverses their order where -x would overflow
        order = np.argsort(~x if largest else x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


# ------------------------------------------------------------------ control flow
# An ONNX If whose condition is known only at run time and whose branches are each one kernel over
# the node's inputs (the importer's lowering; a condition known at import inlines its branch).
# attrs: {"then": branch, "else": branch}, a branch {"op": kernel name, "attrs": its attrs,
# "inputs": [index into the node's inputs, or -1 for absent], "n_out": outputs the kernel makes,
# "outputs": [which kernel output each node output is]}; plan.py validates it as a plan loads.
CONDITIONAL = "Conditional"
BRANCH_KEYS = ("op", "attrs", "inputs", "n_out", "outputs")


@kernel(CONDITIONAL)
def _conditional(attrs, ins, n_out):
    flag = np.asarray(ins[0])
    if flag.size != 1:
        raise ShapeError(f"the If condition must hold exactly one value, got shape {flag.shape}")
    branch = attrs["then" if bool(flag.reshape(-1)[0]) else "else"]
    sub = [None if i < 0 else ins[i] for i in branch["inputs"]]
    outs = KERNELS[branch["op"]](branch["attrs"], sub, branch["n_out"])
    return [outs[k] for k in branch["outputs"]]


# ------------------------------------------------------------------ prepared calls
# A plan node's kernel as a call on its inputs, with what stays the same from call to call
# (attributes, constant inputs, what they give for a rank or a shape) worked out once. A fast path
# covers the common case and leaves anything else to the kernel itself; when a fast path raises,
# the plan runs the kernel again for its error, so results and errors are the kernel's.
# Each call says how it treats numpy's floating-point error state: NEUTRAL (no floating-point
# arithmetic: it runs the same in any state), QUIET (a fast path that leaves out the kernel's own
# np.errstate(all="ignore"): the plan must run it inside one, which it enters once for a run of
# such calls) or LOUD (anything else: run in the caller's state, as the kernel would be).
Call = Callable[[list], list]
RUNTIME = object()  # in a preparer's `consts`: an input only known at run time
NEUTRAL, QUIET, LOUD = "neutral", "quiet", "loud"
PREPARERS: dict[str, tuple[Callable, str]] = {}
_MEMO_KEPT = 64  # ranks or shapes a prepared call remembers before it starts afresh


def preparer(errors: str, *names: str):
    """Register ``make(op, attrs, consts, n_out) -> Call | None`` (None: no fast path), whose
    calls treat the floating-point error state as `errors` says."""
    def deco(fn):
        for name in names:
            PREPARERS[name] = (fn, errors)
        return fn
    return deco


def prepare(op: str, attrs: dict, consts: list, n_out: int) -> tuple[Call, bool, str]:
    """(the node's call, whether it is a fast path, its error-state kind); `consts` holds, per
    input, its constant value, None when it is absent, or RUNTIME."""
    make, errors = PREPARERS.get(op, (None, LOUD))
    fast = None if make is None else make(op, attrs, consts, n_out)
    if fast is not None:
        return fast, True, errors
    fn = KERNELS[op]
    return (lambda ins: fn(attrs, ins, n_out)), False, LOUD


def _memo(compute: Callable) -> Callable:
    """compute(key), remembered for up to _MEMO_KEPT keys (an error is not remembered)."""
    kept = {}

    def get(key):
        value = kept.get(key)
        if value is None:
            if len(kept) >= _MEMO_KEPT:
                kept.clear()
            value = kept[key] = compute(key)
        return value
    return get


def _const_ints(consts: list, i: int) -> list[int] | None:
    """Input i's integer values when it is an integer constant, else None."""
    value = consts[i] if i < len(consts) else None
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return _ints(value)
    return None


def _const_ints_or(consts: list, i: int, default: list) -> list[int] | None:
    """`default` where input i is absent, else _const_ints."""
    return default if i >= len(consts) or consts[i] is None else _const_ints(consts, i)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _with_constant_axes(norm_fn, apply):
    """A preparer for an op whose input 1 is a constant list of axes, normalised once per input
    rank by norm_fn(axes, rank); its call is apply(x, normalised axes), or the kernel where that
    gives None (or x is not an array, or the axes are known only at run time)."""
    def make(op, attrs, consts, n_out):
        axes = _const_ints(consts, 1)
        if not axes:  # run-time axes, or none (Squeeze: every size-1 axis)
            return None
        kernel_fn, norm = KERNELS[op], _memo(lambda rank: norm_fn(axes, rank))

        def run(ins):
            x = ins[0]
            y = apply(x, norm(x.ndim)) if type(x) is np.ndarray else None
            return kernel_fn(attrs, ins, n_out) if y is None else [y]
        return run
    return make


def _squeezed(x, at):
    for a in at:
        if x.shape[a] != 1:
            return None  # the kernel's error
    return x.squeeze(axis=at)


def _unsqueezed(x, at):
    shape = list(x.shape)
    for a in at:
        shape.insert(a, 1)
    return x.reshape(shape)


preparer(NEUTRAL, "Squeeze")(_with_constant_axes(_squeeze_norm, _squeezed))
preparer(NEUTRAL, "Unsqueeze")(_with_constant_axes(_unsqueeze_norm, _unsqueezed))


@preparer(NEUTRAL, "Transpose")
def _prepare_transpose(op, attrs, consts, n_out):
    perm = attrs.get("perm")
    if not (isinstance(perm, list) and all(map(_is_int, perm))
            and sorted(perm) == list(range(len(perm)))):
        return None
    kernel_fn, perm = KERNELS[op], tuple(perm)

    def run(ins):
        x = ins[0]
        if type(x) is not np.ndarray or x.ndim != len(perm):
            return kernel_fn(attrs, ins, n_out)
        return [x.transpose(perm)]
    return run


@preparer(NEUTRAL, "Concat")
def _prepare_concat(op, attrs, consts, n_out):
    axis = attrs.get("axis")
    if not _is_int(axis) or not consts or any(c is None for c in consts):
        return None
    kernel_fn = KERNELS[op]

    def run(ins):
        total = 0
        for x in ins:
            total += x.size
        if total > _max_elements.get():
            return kernel_fn(attrs, ins, n_out)
        return [np.concatenate(ins, axis=axis)]
    return run


@preparer(QUIET, "Cast")
def _prepare_cast(op, attrs, consts, n_out):
    to = attrs.get("to")
    dt = read_dtype(to) if isinstance(to, str) else None
    if dt is None or dt.name != to:
        return None
    return lambda ins: [_converted(ins[0], dt)]


@preparer(NEUTRAL, "Slice")
def _prepare_slice(op, attrs, consts, n_out):
    starts, ends = _const_ints(consts, 1), _const_ints(consts, 2)
    if starts is None or ends is None:
        return None
    axes = _const_ints_or(consts, 3, list(range(len(starts))))
    steps = _const_ints_or(consts, 4, [1] * len(starts))
    if axes is None or steps is None or not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    index = _memo(lambda shape: _slice_index(
        starts, ends, [_axis(a, len(shape), "Slice axis") for a in axes], steps, shape))
    return lambda ins: [ins[0][index(ins[0].shape)]]


@preparer(NEUTRAL, "Split")
def _prepare_split(op, attrs, consts, n_out):
    axis = attrs.get("axis", 0)
    split = consts[1] if len(consts) > 1 else None
    sizes = None if split is None else _const_ints(consts, 1)
    if not _is_int(axis) or (split is not None and sizes is None):
        return None

    def parts(shape):
        at = _axis(axis, len(shape), "Split axis")
        cuts = [0, *_split_bounds(at, shape[at], sizes, n_out).tolist(), shape[at]]
        lead = (slice(None),) * at
        return [lead + (slice(a, b),) for a, b in zip(cuts, cuts[1:])]
    index = _memo(parts)

    def run(ins):
        x = ins[0]
        return [x[i] for i in index(x.shape)]
    return run


@preparer(NEUTRAL, "Gather")
def _prepare_gather(op, attrs, consts, n_out):
    axis = attrs.get("axis", 0)
    if not _is_int(axis):
        return None
    kernel_fn, norm = KERNELS[op], _memo(lambda rank: _axis(axis, rank, "Gather axis"))

    def run(ins):
        x, idx = ins
        if type(x) is not np.ndarray or type(idx) is not np.ndarray or idx.dtype.kind not in "iu":
            return kernel_fn(attrs, ins, n_out)
        at = norm(x.ndim)
        if math.prod(x.shape[:at] + idx.shape + x.shape[at + 1:]) > _max_elements.get():
            return kernel_fn(attrs, ins, n_out)
        return [x.take(idx, axis=at)]
    return run


_EXPAND_COPIED = 1 << 12  # an Expand's output up to this many elements is a copy, not a view


@preparer(NEUTRAL, "Expand")
def _prepare_expand(op, attrs, consts, n_out):
    """Small outputs copied rather than numpy's broadcast view (~6 us to make, and its zero
    strides slow what reads it, a MatMul most); large ones stay views, as the kernel gives."""
    kernel_fn = KERNELS[op]

    def run(ins):
        x, shape = ins
        if type(x) is not np.ndarray or type(shape) is not np.ndarray or shape.ndim != 1 \
                or shape.dtype.kind not in "iu":
            return kernel_fn(attrs, ins, n_out)
        out_shape = _broadcast(op, x.shape, tuple(shape.tolist()))
        if out_shape == x.shape:
            return [x]
        if math.prod(out_shape) > _EXPAND_COPIED:
            return [np.broadcast_to(x, out_shape)]
        out = np.empty(out_shape, x.dtype)
        out[...] = x
        return [out]
    return run


@preparer(NEUTRAL, "ConstantOfShape")
def _prepare_constant_of_shape(op, attrs, consts, n_out):
    value = consts[1] if len(consts) > 1 else None
    if value is None:
        value = np.zeros(1, np.float32)
    if not isinstance(value, np.ndarray) or value.size == 0:
        return None
    kernel_fn, fill, dtype = KERNELS[op], value.reshape(-1)[0], value.dtype

    def run(ins):
        shape = ins[0]
        if type(shape) is not np.ndarray or shape.ndim != 1 or shape.dtype.kind not in "iu":
            return kernel_fn(attrs, ins, n_out)
        dims = shape.tolist()
        if min(dims, default=0) < 0 or math.prod(dims) > _max_elements.get():
            return kernel_fn(attrs, ins, n_out)  # its errors
        return [np.full(dims, fill, dtype)]
    return run


@preparer(QUIET, *BINARY)
def _prepare_binary(op, attrs, consts, n_out):
    """The kernel without its np.errstate, which the plan enters once for a run of such calls,
    nor its broadcast check for arrays of one shape (the output no larger than an input)."""
    fn = BINARY[op]

    def run(ins):
        a, b = ins
        if type(a) is not np.ndarray or type(b) is not np.ndarray or a.shape != b.shape:
            _broadcast(op, np.shape(a), np.shape(b))
        y = fn(a, b)
        return [y if type(y) is np.ndarray else np.asarray(y)]
    return run


@preparer(QUIET, *UNARY)
def _prepare_unary(op, attrs, consts, n_out):
    """Past _f16_in_f32 for inputs that are not float16."""
    kernel_fn, fn = KERNELS[op], UNARY[op]

    def run(ins):
        x = ins[0]
        if type(x) is not np.ndarray or x.dtype == np.float16:
            return kernel_fn(attrs, ins, n_out)
        return [_unary_value(op, fn, x)]
    return run


@preparer(LOUD, "MatMul")
def _prepare_matmul(op, attrs, consts, n_out):
    kernel_fn = KERNELS[op]

    def run(ins):
        a, b = ins
        if not (type(a) is type(b) is np.ndarray and a.ndim == 2 == b.ndim
                and a.shape[0] * b.shape[1] <= _max_elements.get()):
            return kernel_fn(attrs, ins, n_out)
        return [np.matmul(_blas_ready(a), _blas_ready(b))]
    return run


from . import conv_ops  # noqa: E402,F401  (registers Conv and Einsum: a loaded plan needs them too)
