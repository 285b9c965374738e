"""Converters from ONNX nodes (one per op and operator version) to plan nodes.

Each converter reads a node's attributes (already plain Python values) and emits plan nodes with
the newest-version semantics the numpy kernels implement: attributes that later versions turned into
inputs become constant inputs, opset-dependent defaults become explicit attributes. This module needs
no onnx (the importer hands it decoded nodes), but only the importer uses it.
"""
from __future__ import annotations

import numpy as np

from fastrnn import activations as fr_acts
from fastrnn.errors import FormatError, ShapeError, UnsupportedError

from . import recurrent_node
from .dtypes import numpy_dtype, onnx_type_name
from .registry import converter


def _input(node, i: int) -> str:
    return node.inputs[i] if i < len(node.inputs) else ""


def _outputs(node, n: int | None = None) -> list[str]:
    return list(node.outputs if n is None else node.outputs[:n])


def _int64(ctx, values, hint: str) -> str:
    return ctx.add_const(np.asarray(values, dtype=np.int64), hint)


def _emit_same(op: str):
    """Converter that maps the node 1:1 onto plan op `op` (same inputs, outputs, attrs)."""
    def conv(ctx, node):
        ctx.emit(op, node.inputs, node.outputs, dict(node.attrs))
    return conv


# ------------------------------------------------------------------ constants and identity
@converter("Constant", 1, 9, 11, 12, 13, 19, 21, 23, 24, 25)
def _constant(ctx, node):
    a = node.attrs
    if "value" in a:
        value = a["value"]
    elif "value_float" in a:
        value = np.array(a["value_float"], dtype=np.float32)
    elif "value_floats" in a:
        value = np.array(a["value_floats"], dtype=np.float32)
    elif "value_int" in a:
        value = np.array(a["value_int"], dtype=np.int64)
    elif "value_ints" in a:
        value = np.array(a["value_ints"], dtype=np.int64)
    elif {"value_string", "value_strings", "sparse_value"} & set(a):
        raise UnsupportedError("string and sparse Constant values are not supported")
    else:
        raise FormatError("Constant node has no value attribute")
    ctx.set_const(node.outputs[0], np.asarray(value))


@converter("ConstantOfShape", 9, 20, 21, 23, 24, 25)
def _constant_of_shape(ctx, node):
    value = node.attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if value.size != 1:
        raise FormatError(f"ConstantOfShape value must hold one element, got {value.size}")
    ctx.emit("ConstantOfShape", [node.inputs[0], ctx.add_const(value, "value")], node.outputs)


for _v in (1, 13, 14, 16, 19, 21, 23, 24, 25):
    converter("Identity", _v)(_emit_same("Identity"))


@converter("Dropout", 7, 10, 12, 13, 22)
def _dropout(ctx, node):
    mode = _input(node, 2)
    if mode:
        flag = ctx.const(mode)
        if flag is None or bool(np.asarray(flag).reshape(-1)[0]):
            raise UnsupportedError("Dropout in training mode (training_mode input true or not "
                                   "constant) is not supported; fastrnn runs inference only")
    attrs = {} if node.version >= 12 else {"mask": False, "mask_like_input": node.version < 10}
    ctx.emit("Dropout", [node.inputs[0]], node.outputs, attrs)


# ------------------------------------------------------------------ shapes and data movement
for _v in (1, 13, 21, 23, 24, 25):
    converter("Transpose", _v)(_emit_same("Transpose"))


@converter("Reshape", 1)
def _reshape_v1(ctx, node):
    shape = node.attrs.get("shape")
    if shape is None:
        raise FormatError("Reshape-1 needs the shape attribute")
    ctx.emit("Reshape", [node.inputs[0], _int64(ctx, shape, "shape")], node.outputs)


for _v in (5, 13, 14, 19, 21, 23, 24, 25):
    converter("Reshape", _v)(_emit_same("Reshape"))


def _axes_attr_to_input(op: str):
    def conv(ctx, node):
        axes = node.attrs.get("axes")
        inputs = [node.inputs[0]]
        if axes is not None:
            inputs.append(_int64(ctx, axes, "axes"))
        elif op == "Unsqueeze":
            raise FormatError("Unsqueeze needs axes")
        ctx.emit(op, inputs, node.outputs)
    return conv


for _op in ("Squeeze", "Unsqueeze"):
    for _v in (1, 11):
        converter(_op, _v)(_axes_attr_to_input(_op))
    for _v in (13, 21, 23, 24, 25):
        converter(_op, _v)(_emit_same(_op))


@converter("Concat", 1, 4, 11, 13)
def _concat(ctx, node):
    axis = node.attrs.get("axis", 1 if node.version == 1 else None)
    if axis is None:
        raise FormatError("Concat needs the axis attribute")
    ctx.emit("Concat", [i for i in node.inputs if i], node.outputs, {"axis": int(axis)})


@converter("Slice", 1)
def _slice_v1(ctx, node):
    a = node.attrs
    if "starts" not in a or "ends" not in a:
        raise FormatError("Slice-1 needs starts and ends")
    inputs = [node.inputs[0], _int64(ctx, a["starts"], "starts"), _int64(ctx, a["ends"], "ends")]
    if "axes" in a:
        inputs.append(_int64(ctx, a["axes"], "axes"))
    ctx.emit("Slice", inputs, node.outputs)


for _v in (10, 11, 13):
    converter("Slice", _v)(_emit_same("Slice"))


@converter("Split", 1, 2, 11, 13, 18)
def _split(ctx, node):
    axis = int(node.attrs.get("axis", 0))
    inputs = [node.inputs[0]]
    if node.version < 13:
        split = node.attrs.get("split")
        if split is not None:
            inputs.append(_int64(ctx, split, "split"))
        elif node.version == 1 and _input(node, 1):
            inputs.append(node.inputs[1])
    elif _input(node, 1):
        inputs.append(node.inputs[1])
    n = node.attrs.get("num_outputs")
    if n is not None and int(n) != len(node.outputs):
        raise FormatError(f"Split num_outputs={n} but the node has {len(node.outputs)} outputs")
    ctx.emit("Split", inputs, node.outputs, {"axis": axis})


for _v in (1, 11, 13):
    converter("Gather", _v)(_emit_same("Gather"))
for _v in (11, 13):
    converter("GatherElements", _v)(_emit_same("GatherElements"))
for _v in (11, 12, 13):
    converter("GatherND", _v)(_emit_same("GatherND"))
for _v in (9, 11, 28):
    converter("OneHot", _v)(_emit_same("OneHot"))


@converter("ReverseSequence", 10)
def _reverse_sequence(ctx, node):
    axes = {"time_axis": int(node.attrs.get("time_axis", 0)),
            "batch_axis": int(node.attrs.get("batch_axis", 1))}
    if set(axes.values()) != {0, 1}:
        raise FormatError(f"ReverseSequence time_axis and batch_axis must be 0 and 1 (either "
                          f"way round), got {axes}")
    ctx.emit("ReverseSequence", node.inputs, node.outputs, axes)


@converter("Scatter", 9, 11)
@converter("ScatterElements", 11, 13, 16, 18)
def _scatter_elements(ctx, node):
    attrs = {"axis": int(node.attrs.get("axis", 0)),
             "reduction": node.attrs.get("reduction", "none")}
    if attrs["reduction"] not in ("none", "add", "mul", "max", "min"):
        raise UnsupportedError(f"ScatterElements reduction {attrs['reduction']!r}")
    ctx.emit("ScatterElements", node.inputs, node.outputs, attrs)


for _v in (1, 13, 15, 19, 21, 23, 24, 25):
    converter("Shape", _v)(_emit_same("Shape"))
for _v in (1, 13, 19, 21, 23, 24, 25):
    converter("Size", _v)(_emit_same("Size"))
for _v in (8, 13):
    converter("Expand", _v)(_emit_same("Expand"))
for _v in (6, 13):
    converter("Tile", _v)(_emit_same("Tile"))
for _v in (1, 9, 11, 13, 21, 23, 24, 25):
    converter("Flatten", _v)(_emit_same("Flatten"))
for _v in (9, 16):
    converter("Where", _v)(_emit_same("Where"))
for _v in (11, 27):
    converter("Range", _v)(_emit_same("Range"))
for _v in (9, 13):
    converter("NonZero", _v)(_emit_same("NonZero"))


for _v in (11, 14):
    converter("CumSum", _v)(_emit_same("CumSum"))
converter("Trilu", 14)(_emit_same("Trilu"))


@converter("Pad", 2, 11, 13, 18, 19, 21, 23, 24, 25)
def _pad(ctx, node):
    mode = node.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge") + (("wrap",) if node.version >= 19 else ()):
        raise FormatError(f"Pad-{node.version} mode {mode!r} is not one of its modes")
    if node.version == 2:
        inputs = [node.inputs[0], _int64(ctx, node.attrs["pads"], "pads"),
                  ctx.add_const(np.array(node.attrs.get("value", 0.0), np.float32), "value")]
    else:
        inputs = node.inputs[:4]
    ctx.emit("Pad", inputs, node.outputs, {"mode": mode})


@converter("Cast", 6, 9, 13, 19, 21, 23, 24, 25)
def _cast(ctx, node):
    to = node.attrs.get("to")
    dt = None if to is None else numpy_dtype(to)
    if dt is None:
        raise UnsupportedError(f"Cast to {onnx_type_name(to) if to is not None else '?'} is not "
                               f"supported")
    ctx.emit("Cast", node.inputs[:1], node.outputs, {"to": str(dt)})


for _v in (15, 19, 21, 23, 24, 25):
    converter("CastLike", _v)(_emit_same("CastLike"))


# ------------------------------------------------------------------ arithmetic
for _v in (1, 9, 13):
    converter("MatMul", _v)(_emit_same("MatMul"))


@converter("Gemm", 7, 9, 11, 13)
def _gemm(ctx, node):
    attrs = {k: node.attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in node.attrs}
    inputs = node.inputs[:3] if _input(node, 2) else node.inputs[:2]
    ctx.emit("Gemm", inputs, node.outputs, attrs)


_BINARY_VERSIONS = {
    "Add": (7, 13, 14), "Sub": (7, 13, 14), "Mul": (7, 13, 14), "Div": (7, 13, 14),
    "Pow": (7, 12, 13, 15), "Equal": (7, 11, 13, 19), "Less": (7, 9, 13), "Greater": (7, 9, 13),
    "LessOrEqual": (12, 16), "GreaterOrEqual": (12, 16), "And": (7,), "Or": (7,), "Xor": (7,),
    "Mod": (10, 13), "BitwiseAnd": (18,), "BitwiseOr": (18,),
}
for _op, _vs in _BINARY_VERSIONS.items():
    for _v in _vs:
        converter(_op, _v)(_emit_same(_op))

_UNARY_VERSIONS = {
    "Neg": (6, 13), "Abs": (6, 13), "Sqrt": (6, 13), "Exp": (6, 13), "Log": (6, 13),
    "Reciprocal": (6, 13), "Floor": (6, 13), "Ceil": (6, 13), "Sign": (9, 13), "Erf": (9, 13),
    "Tanh": (6, 13), "Sigmoid": (6, 13), "Relu": (6, 13, 14), "Not": (1,), "Sin": (7, 22),
    "Cos": (7, 22), "Softsign": (1, 22), "Softplus": (1, 22), "LeakyRelu": (6, 16),
    "HardSigmoid": (6, 22), "Elu": (6, 22), "Selu": (6, 22), "ThresholdedRelu": (10, 22),
    "Gelu": (20,),
}
for _op, _vs in _UNARY_VERSIONS.items():
    for _v in _vs:
        converter(_op, _v)(_emit_same(_op))

for _v in (7, 9, 16):
    converter("PRelu", _v)(_emit_same("PRelu"))
for _op in ("GlobalAveragePool", "GlobalMaxPool"):
    for _v in (1, 22):
        converter(_op, _v)(_emit_same(_op))

for _op, _vs in {"Min": (6, 8, 12, 13), "Max": (6, 8, 12, 13), "Sum": (6, 8, 13),
                 "Mean": (6, 8, 13)}.items():
    for _v in _vs:
        converter(_op, _v)(_emit_same(_op))


@converter("Clip", 6)
def _clip_v6(ctx, node):
    # the spec's defaults are float32's extremes (float16 data keeps -inf and inf, as in ORT)
    big = float(np.finfo(np.float32).max)
    lo = node.attrs.get("min", -big)
    hi = node.attrs.get("max", big)
    inputs = [node.inputs[0], ctx.add_const(np.array(lo, np.float32), "min"),
              ctx.add_const(np.array(hi, np.float32), "max")]
    ctx.emit("Clip", inputs, node.outputs)


for _v in (11, 12, 13):
    converter("Clip", _v)(_emit_same("Clip"))


# ------------------------------------------------------------------ softmax, reductions
def _softmax(op: str):
    def conv(ctx, node):
        legacy = node.version < 13
        axis = int(node.attrs.get("axis", 1 if legacy else -1))
        ctx.emit(op, node.inputs[:1], node.outputs, {"axis": axis, "legacy": legacy})
    return conv


for _op in ("Softmax", "LogSoftmax"):
    for _v in (1, 11, 13):
        converter(_op, _v)(_softmax(_op))

for _op in ("ArgMax", "ArgMin"):
    for _v in (1, 11, 12, 13):
        converter(_op, _v)(_emit_same(_op))


def _reduce(op: str, input_from: int):
    def conv(ctx, node):
        attrs = {"keepdims": int(node.attrs.get("keepdims", 1))}
        inputs = [node.inputs[0]]
        if node.version < input_from:
            axes = node.attrs.get("axes")
            if axes is not None:
                inputs.append(_int64(ctx, axes, "axes"))
        else:
            attrs["noop_with_empty_axes"] = int(node.attrs.get("noop_with_empty_axes", 0))
            if _input(node, 1):
                inputs.append(node.inputs[1])
        ctx.emit(op, inputs, node.outputs, attrs)
    return conv


for _op, _vs, _from in (("ReduceSum", (1, 11, 13), 13), ("ReduceMean", (1, 11, 13, 18), 18),
                        ("ReduceMax", (1, 11, 12, 13, 18, 20), 18),
                        ("ReduceMin", (1, 11, 12, 13, 18, 20), 18),
                        ("ReduceProd", (1, 11, 13, 18), 18), ("ReduceL1", (1, 11, 13, 18), 18),
                        ("ReduceL2", (1, 11, 13, 18), 18),
                        ("ReduceSumSquare", (1, 11, 13, 18), 18),
                        ("ReduceLogSum", (1, 11, 13, 18, 28), 18),
                        ("ReduceLogSumExp", (1, 11, 13, 18, 28), 18)):
    for _v in _vs:
        converter(_op, _v)(_reduce(_op, _from))


@converter("TopK", 1, 10, 11, 24)
def _topk(ctx, node):
    attrs = {"axis": int(node.attrs.get("axis", -1)), "largest": int(node.attrs.get("largest", 1)),
             "sorted": int(node.attrs.get("sorted", 1))}
    if node.version == 1:
        inputs = [node.inputs[0], _int64(ctx, [node.attrs["k"]], "k")]
    else:
        inputs = node.inputs[:2]
    ctx.emit("TopK", inputs, node.outputs, attrs)


# ------------------------------------------------------------------ normalization
@converter("LayerNormalization", 17)
def _layer_norm(ctx, node):
    attrs = {k: node.attrs[k] for k in ("axis", "epsilon", "stash_type") if k in node.attrs}
    if attrs.get("stash_type", 1) not in (1, 11):
        raise UnsupportedError(f"LayerNormalization stash_type {attrs['stash_type']} is not "
                               f"supported (1: float32, 11: float64)")
    ctx.emit("LayerNormalization", node.inputs, node.outputs, attrs)


@converter("BatchNormalization", 7, 9, 14, 15)
def _batch_norm(ctx, node):
    if node.attrs.get("training_mode", 0) or any(node.outputs[1:]):
        raise UnsupportedError("BatchNormalization in training mode (training_mode 1, or the "
                               "running or saved statistics asked for) is not supported; fastrnn "
                               "runs inference only")
    attrs = {"epsilon": node.attrs["epsilon"]} if "epsilon" in node.attrs else {}
    ctx.emit("BatchNormalization", node.inputs[:5], node.outputs[:1], attrs)


# ------------------------------------------------------------------ recurrent layers
_DIRECTIONS = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}


@converter("RNN", 1, 7, 14, 22)
@converter("GRU", 1, 3, 7, 14, 22)
@converter("LSTM", 1, 7, 14, 22)
def _recurrent(ctx, node):
    mode = node.op_type
    a = node.attrs
    names = (list(node.inputs) + [""] * 8)[:8]
    if mode != "LSTM":
        names[6:8] = ["", ""]
    x, w, r, b, seq, h0, c0, p = names
    if not x or not w or not r:
        raise FormatError(f"{mode} needs inputs X, W and R, got {list(node.inputs)}")

    direction = a.get("direction", "forward")
    if direction not in _DIRECTIONS:
        raise FormatError(f"{mode} direction must be forward, reverse or bidirectional, "
                          f"got {direction!r}")
    reverse = _DIRECTIONS[direction]
    D = len(reverse)
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise FormatError(f"{mode} layout must be 0 or 1, got {layout}")
    clip = a.get("clip")
    if clip is not None:
        clip = float(clip)
        if not clip > 0:
            raise FormatError(f"{mode} clip must be positive, got {clip}")
    names_act = a.get("activations")
    alpha, beta = a.get("activation_alpha"), a.get("activation_beta")
    if not names_act and mode != "RNN":
        names_act = None  # ORT's GRU and LSTM read an empty list as the defaults (its RNN refuses)
    if names_act is None:
        alpha = beta = None  # the default activations take none: ORT ignores any given
    else:
        unknown = [n for n in names_act if str(n).lower() not in fr_acts.CODES]
        if unknown:
            raise UnsupportedError(f"{mode} activation(s) {unknown} are not supported; supported: "
                                   f"{sorted(fr_acts.CODES)}")
        per = fr_acts.PER_DIRECTION[mode]
        if len(names_act) not in (per, per * D):
            raise FormatError(f"{mode} with direction={direction} needs {per * D} activations "
                              f"(or {per}, shared), got {len(names_act)}: {names_act}")
    acts = fr_acts.parse(mode, names_act, alpha, beta, D)
    hidden_size = a.get("hidden_size")

    attrs = {
        "mode": mode, "reverse": reverse, "layout": layout, "clip": clip,
        "activations": [[list(t) for t in direction_acts] for direction_acts in acts],
        "linear_before_reset": int(a.get("linear_before_reset", 0)) if mode == "GRU" else 0,
        "input_forget": int(a.get("input_forget", 0)) if mode == "LSTM" else 0,
        "hidden_size": None if hidden_size is None else int(hidden_size),
    }
    where = mode  # the importer prefixes the node name
    consts = {k: (ctx.const(n) if n else None) for k, n in (("W", w), ("R", r), ("B", b), ("P", p))}
    static = all(consts[k] is not None for k, n in (("W", w), ("R", r), ("B", b), ("P", p)) if n)
    dtype = consts["W"].dtype if consts["W"] is not None else ctx.dtype(w)
    if dtype is None:
        dtype = ctx.dtype(x)
    if dtype is None or np.dtype(dtype) not in (np.float32, np.float64):
        raise UnsupportedError(f"{where}: only float32 and float64 are supported, the weights are "
                               f"{dtype}")
    attrs["dtype"] = str(np.dtype(dtype))
    x_shape = ctx.shape(x)
    inputs = [x, seq, h0, c0]
    if static:
        H = recurrent_node.check_weight_shapes(mode, consts["W"], consts["R"], consts["B"],
                                               consts["P"], hidden_size, D, where)
        attrs["hidden_size"] = H
        params = recurrent_node.onnx_to_torch_params(mode, consts["W"], consts["R"], consts["B"],
                                                     consts["P"], H)
        refs = []
        for d, prm in enumerate(params):
            refs.append({k: (None if v is None else
                             ctx.add_const(np.ascontiguousarray(v, dtype=dtype), f"{k}_d{d}"))
                         for k, v in prm.items()})
        attrs["params"] = refs
        input_size = consts["W"].shape[2]
        if x_shape is not None and len(x_shape) == 3 and isinstance(x_shape[2], int) \
                and x_shape[2] != input_size:
            raise ShapeError(f"{where}: X has {x_shape[2]} input features, W expects {input_size} "
                             f"(W shape {consts['W'].shape})")
    else:
        attrs["params"] = None
        inputs += [w, r, b, p]
    if x_shape is not None and len(x_shape) != 3:
        raise ShapeError(f"{where}: X must be 3-D, its declared shape is {x_shape}")
    outputs = (list(node.outputs) + ["", "", ""])[:3]
    ctx.emit(recurrent_node.OP, inputs, outputs, attrs, foldable=False)
