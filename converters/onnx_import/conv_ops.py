"""Conv and Einsum: their numpy kernels and their import-time converters.

onnx-free, like ``kernels``: the kernels register with the same ``kernel`` decorator (this module is
imported at the end of ``kernels`` so a saved plan finds them), the converters with ``converter``.

Conv (1, 11, 22): N-D (1-D and 2-D are what speech and text models put before an RNN), grouped and
depthwise, im2col through a strided view and one batched matmul for all groups, in float32 as ORT
(float16 in float32, rounded once); float64, which ORT has no kernel for, in float64.

Einsum (12): explicit and implicit outputs, ellipsis, repeated labels (diagonals), size-1 labelled
and ellipsis dimensions broadcast, as ORT does; computed in the inputs' type (integers wrap),
float16 in float32.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from fastrnn.errors import ArgumentError, DTypeError, FormatError, ShapeError, UnsupportedError

from .kernels import _check_size, _f16_in_f32, _max_elements, kernel
from .registry import converter

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ------------------------------------------------------------------ Conv
def _conv_ints(attrs, name: str, n: int, default: int, positive: bool) -> list[int]:
    value = attrs.get(name)
    if value is None:
        return [default] * n
    try:
        values = [int(v) for v in value]
    except (TypeError, ValueError):
        raise FormatError(f"Conv {name} must be a list of integers, got {value!r:.80}") from None
    if len(values) != n:
        raise ShapeError(f"Conv {name} {values} has {len(values)} values, {n} expected for an "
                         f"input with {n // 2 if name == 'pads' else n} spatial axes")
    if positive and min(values, default=1) < 1:
        raise ArgumentError(f"Conv {name} {values} must be positive")
    if not positive and min(values, default=0) < 0:
        raise ArgumentError(f"Conv {name} {values} must not be negative")
    return values


def _conv_geometry(attrs, x_shape, w_shape):
    """(strides, dilations, pads begin, pads end, output spatial shape) as ORT computes them."""
    nsp = len(x_shape) - 2
    kernel_shape = attrs.get("kernel_shape")
    if kernel_shape is not None:
        if [int(k) for k in kernel_shape] != list(w_shape[2:]):
            raise ShapeError(f"Conv kernel_shape {list(kernel_shape)} is not W's spatial shape "
                             f"{list(w_shape[2:])} (W shape {list(w_shape)})")
    kernel = list(w_shape[2:])
    if min(kernel, default=1) < 1:
        raise ShapeError(f"Conv kernel shape {kernel} must be positive (W shape {list(w_shape)})")
    strides = _conv_ints(attrs, "strides", nsp, 1, True)
    dilations = _conv_ints(attrs, "dilations", nsp, 1, True)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise FormatError(f"Conv auto_pad {auto_pad!r} is not one of {list(_AUTO_PADS)}")
    if auto_pad == "NOTSET":
        pads = _conv_ints(attrs, "pads", 2 * nsp, 0, False)
        begin, end = pads[:nsp], pads[nsp:]
    else:
        if attrs.get("pads") is not None:
            raise FormatError(f"Conv has both auto_pad {auto_pad} and pads; ORT refuses that")
        begin, end = [0] * nsp, [0] * nsp
        if auto_pad != "VALID":
            if any(d != 1 for d in dilations):
                raise UnsupportedError(f"Conv auto_pad {auto_pad} with dilations {dilations}: "
                                       f"ORT supports no dilation with SAME_UPPER / SAME_LOWER")
            for i in range(nsp):
                size = x_shape[2 + i]
                target = -(-size // strides[i])
                needed = max(0, (target - 1) * strides[i] + kernel[i] - size)
                head = (needed + 1) // 2 if auto_pad == "SAME_LOWER" else needed // 2
                begin[i], end[i] = head, needed - head
    out = []
    for i in range(nsp):
        span = dilations[i] * (kernel[i] - 1) + 1
        size = x_shape[2 + i] + begin[i] + end[i] - span
        if size < 0:
            raise ShapeError(f"Conv input of shape {list(x_shape)} is smaller on spatial axis {i} "
                             f"({x_shape[2 + i]} + pads {begin[i]}, {end[i]}) than the dilated "
                             f"kernel ({span})")
        out.append(size // strides[i] + 1)
    return strides, dilations, begin, end, out


@kernel("Conv")
def _conv(attrs, ins, n_out):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if x.dtype.kind != "f" or w.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        raise DTypeError(f"Conv takes X, W (and B) of one floating-point type, got "
                         f"{[None if a is None else str(a.dtype) for a in ins]}")
    return _conv_wide(attrs, ins, n_out)


@_f16_in_f32
def _conv_wide(attrs, ins, n_out):
    """y[n, m] = sum over the group's channels c and kernel offsets k of W[m, c, k] * x[n, c, o*s +
    k*d] (x zero-padded), plus B[m]: the windows of each group (im2col, from a strided view of the
    padded input) times the group's weights, all groups in one batched matmul."""
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if x.ndim < 3:
        raise ShapeError(f"Conv needs X of shape (N, C, D1, ...), got {x.shape}")
    if w.ndim != x.ndim:
        raise ShapeError(f"Conv W of shape {w.shape} does not match X of shape {x.shape}: W must "
                         f"be (M, C / group, k1, ...) with as many spatial axes as X")
    group = int(attrs.get("group", 1))
    N, C = x.shape[:2]
    M, Cg = w.shape[:2]
    if group < 1 or C != Cg * group:
        raise ShapeError(f"Conv input channels {C} are not W's channels {Cg} times group {group}")
    if M % group:
        raise ShapeError(f"Conv output channels {M} are not divisible by group {group}")
    if b is not None and b.shape != (M,):
        raise ShapeError(f"Conv bias B must have shape ({M},), one value per output channel, got "
                         f"{b.shape}")
    strides, dilations, begin, end, out = _conv_geometry(attrs, x.shape, w.shape)
    nsp = x.ndim - 2
    kernel = w.shape[2:]
    K, P = math.prod(kernel), math.prod(out)
    _check_size((N, M, *out), "Conv's output")
    _check_size((group, N * P, Cg * K), "Conv's unfolded input (im2col)")
    padded = [x.shape[2 + i] + begin[i] + end[i] for i in range(nsp)]
    _check_size((N, C, *padded), "Conv's padded input")
    if any(begin) or any(end):
        x = np.pad(x, [(0, 0), (0, 0)] + [(begin[i], end[i]) for i in range(nsp)])
    Mg = M // group
    if P and N:
        windows = as_strided(
            x, shape=(N, group, Cg, *out, *kernel),
            strides=(x.strides[0], Cg * x.strides[1], x.strides[1],
                     *(x.strides[2 + i] * strides[i] for i in range(nsp)),
                     *(x.strides[2 + i] * dilations[i] for i in range(nsp))),
            writeable=False)
        # (group, N, *out, Cg, *kernel) -> (group, N * P, Cg * K): the one copy
        order = (1, 0, *range(3, 3 + nsp), 2, *range(3 + nsp, 3 + 2 * nsp))
        cols = np.ascontiguousarray(windows.transpose(order)).reshape(group, N * P, Cg * K)
        weights = w.reshape(group, Mg, Cg * K).transpose(0, 2, 1)
        y = np.matmul(cols, weights)  # (group, N * P, Mg)
        y = y.reshape(group, N, *out, Mg)
        y = np.moveaxis(y, -1, 1).reshape(group * Mg, N, *out)  # (M, N, *out)
        y = np.ascontiguousarray(np.moveaxis(y, 1, 0))
    else:
        y = np.zeros((N, M, *out), x.dtype)
    if b is not None:
        y += b.reshape((M,) + (1,) * nsp)
    return [y]


@converter("Conv", 1, 11, 22)
def _conv_converter(ctx, node):
    a = node.attrs
    attrs = {}
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise FormatError(f"Conv auto_pad {auto_pad!r} is not one of {list(_AUTO_PADS)}")
    if auto_pad != "NOTSET" and "pads" in a:
        raise FormatError(f"Conv has both auto_pad {auto_pad} and pads; ORT refuses that")
    group = int(a.get("group", 1))
    if group < 1:
        raise ArgumentError(f"Conv group must be positive, got {group}")
    attrs["auto_pad"], attrs["group"] = auto_pad, group
    lengths = {}
    for name in ("kernel_shape", "strides", "dilations", "pads"):
        if name in a:
            values = [int(v) for v in a[name]]
            if name in ("strides", "dilations", "kernel_shape") and min(values, default=1) < 1:
                raise ArgumentError(f"Conv {name} {values} must be positive")
            if name == "pads" and min(values, default=0) < 0:
                raise ArgumentError(f"Conv pads {values} must not be negative")
            attrs[name] = values
            lengths[name] = len(values) // 2 if name == "pads" else len(values)
            if name == "pads" and len(values) % 2:
                raise ShapeError(f"Conv pads {values} must have two values per spatial axis")
    x_shape, w_shape = ctx.shape(node.inputs[0]), ctx.shape(node.inputs[1])
    for what, shape in (("X", x_shape), ("W", w_shape)):
        if shape is not None:
            if len(shape) < 3:
                raise ShapeError(f"Conv {what} must have shape (N, C, D1, ...), its shape is "
                                 f"{shape}")
            lengths[f"{what}'s spatial axes"] = len(shape) - 2
    if len(set(lengths.values())) > 1:
        raise ShapeError(f"Conv attributes and inputs disagree on the number of spatial axes: "
                         f"{lengths}")
    inputs = node.inputs[:3] if len(node.inputs) > 2 and node.inputs[2] else node.inputs[:2]
    ctx.emit("Conv", inputs, node.outputs, attrs)


# ------------------------------------------------------------------ Einsum
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ELLIPSIS = "..."


def _parse_term(term: str, where: str) -> list[str]:
    """A term's labels in order, '...' one item; anything but letters and one '...' refused."""
    labels, i = [], 0
    while i < len(term):
        if term.startswith(_ELLIPSIS, i):
            if _ELLIPSIS in labels:
                raise FormatError(f"Einsum equation {where} has more than one ellipsis")
            labels.append(_ELLIPSIS)
            i += 3
        elif term[i] in _LETTERS:
            labels.append(term[i])
            i += 1
        else:
            raise FormatError(f"Einsum equation {where} has {term[i]!r} at {i}: labels are the "
                              f"letters a-z and A-Z, and '...' an ellipsis")
    return labels


def parse_equation(equation, n_inputs: int, ranks=None):
    """(input terms, output term or None when implicit) of an Einsum equation, checked against the
    number of inputs and, where known (an int), their ranks."""
    if not isinstance(equation, str):
        raise FormatError(f"Einsum equation must be a string, got {equation!r:.80}")
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise FormatError(f"Einsum equation {equation!r} has more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    terms = [_parse_term(t, f"{equation!r} (term {k})") for k, t in enumerate(lhs.split(","))]
    if len(terms) != n_inputs:
        raise ShapeError(f"Einsum equation {equation!r} has {len(terms)} input term(s) for "
                         f"{n_inputs} input(s)")
    for k, (term, rank) in enumerate(zip(terms, ranks or [None] * n_inputs)):
        letters = len(term) - (_ELLIPSIS in term)
        if isinstance(rank, int) and (rank < letters
                                      or (_ELLIPSIS not in term and rank != letters)):
            raise ShapeError(f"Einsum equation {equation!r}: input {k} has rank {rank}, its term "
                             f"{''.join(term)!r} has {letters} label(s)"
                             f"{' and an ellipsis' if _ELLIPSIS in term else ''}")
    used = {label for term in terms for label in term if label != _ELLIPSIS}
    if not arrow:
        once = [label for label in used if sum(t.count(label) for t in terms) == 1]
        if any(label.isupper() for label in once):
            raise UnsupportedError(f"Einsum equation {equation!r}: an implicit output with "
                                   f"upper-case labels (ORT refuses it, and their order is "
                                   f"ambiguous); write the output after '->'")
        return terms, None
    out = _parse_term(rhs, f"{equation!r} (output)")
    letters = [label for label in out if label != _ELLIPSIS]
    if len(set(letters)) != len(letters):
        raise FormatError(f"Einsum equation {equation!r}: the output repeats a label")
    missing = sorted(set(letters) - used)
    if missing:
        raise FormatError(f"Einsum equation {equation!r}: output label(s) {missing} are in no "
                          f"input")
    return terms, out


def _implicit_output(terms) -> list[str]:
    counts: dict[str, int] = {}
    for term in terms:
        for label in term:
            counts[label] = counts.get(label, 0) + 1
    letters = sorted(label for label, c in counts.items() if c == 1 and label != _ELLIPSIS)
    return ([_ELLIPSIS] if _ELLIPSIS in counts else []) + letters


@kernel("Einsum")
def _einsum(attrs, ins, n_out):
    xs = list(ins)
    if any(x is None for x in xs) or not xs:
        raise FormatError("Einsum needs every input it names")
    if len({x.dtype for x in xs}) > 1 or xs[0].dtype.kind not in "fiu":
        raise DTypeError(f"Einsum takes inputs of one numeric type, got "
                         f"{[str(x.dtype) for x in xs]}")
    return _einsum_wide(attrs, xs, n_out)


@_f16_in_f32
def _einsum_wide(attrs, xs, n_out):
    terms, out = parse_equation(attrs["equation"], len(xs), [x.ndim for x in xs])
    # the ellipsis: the same number of axes in every input where it covers any, broadcast
    spans = {x.ndim - (len(t) - 1) for x, t in zip(xs, terms) if _ELLIPSIS in t} - {0}
    if len(spans) > 1:
        raise ShapeError(f"Einsum equation {attrs['equation']!r}: the ellipsis covers "
                         f"{sorted(spans)} axes in different inputs; it must cover the same "
                         f"number of axes in each (or none)")
    n_ell = spans.pop() if spans else 0
    if out is None:
        out = _implicit_output(terms)
    elif n_ell and _ELLIPSIS not in out:
        raise ShapeError(f"Einsum equation {attrs['equation']!r}: the inputs' ellipsis covers "
                         f"{n_ell} axes, but the output has no ellipsis (ORT refuses to sum them)")
    used = {label for t in terms for label in t}
    free = [c for c in _LETTERS if c not in used]
    if n_ell > len(free):
        raise UnsupportedError(f"Einsum equation {attrs['equation']!r} needs more than the 52 "
                               f"labels numpy has")
    ell = free[:n_ell]
    expanded = []
    for x, t in zip(xs, terms):
        if _ELLIPSIS in t:
            at = t.index(_ELLIPSIS)
            t = t[:at] + ell[:x.ndim - (len(t) - 1)] + t[at + 1:]
        expanded.append(t)
    out = [label for o in out for label in (ell if o == _ELLIPSIS else [o])]
    # each label's size: repeated in one input (a diagonal) its axes are equal; across inputs
    # equal, or 1, which broadcasts
    sizes: dict[str, int] = {}
    for k, (x, t) in enumerate(zip(xs, expanded)):
        own: dict[str, int] = {}
        for label, d in zip(t, x.shape):
            if own.setdefault(label, d) != d:
                raise ShapeError(f"Einsum input {k} of shape {x.shape}: the axes of repeated label "
                                 f"{label!r} (a diagonal) differ in size")
        for label, d in own.items():
            s = sizes.setdefault(label, d)
            if d != s and 1 not in (d, s):
                raise ShapeError(f"Einsum equation {attrs['equation']!r}: label {label!r} has size "
                                 f"{d} in input {k} and {s} elsewhere; inputs of shapes "
                                 f"{[x.shape for x in xs]} do not broadcast")
            if s == 1:
                sizes[label] = d
    operands = []
    for x, t in zip(xs, expanded):
        shape = tuple(sizes[label] for label in t)
        if x.shape != shape:  # numpy may copy what it contracts
            _check_size(shape, "Einsum's broadcast input")
            x = np.broadcast_to(x, shape)
        operands.append(x)
    _check_size([sizes[label] for label in out], "Einsum's output")
    subscripts = ",".join("".join(t) for t in expanded) + "->" + "".join(out)
    # the contraction order numpy picks, with no intermediate beyond the element limit
    path, _ = np.einsum_path(subscripts, *operands, optimize=("greedy", _max_elements.get()))
    with np.errstate(all="ignore"):
        y = np.einsum(subscripts, *operands, optimize=path)
    return [np.asarray(y, dtype=xs[0].dtype)]


@converter("Einsum", 12)
def _einsum_converter(ctx, node):
    equation = node.attrs.get("equation")
    ranks = []
    for name in node.inputs:
        shape = ctx.shape(name) if name else None
        ranks.append(None if shape is None else len(shape))
    if any(not name for name in node.inputs):
        raise FormatError("Einsum inputs cannot be left empty")
    parse_equation(equation, len(node.inputs), ranks)
    ctx.emit("Einsum", node.inputs, node.outputs, {"equation": equation})
