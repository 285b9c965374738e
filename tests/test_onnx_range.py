"""Range against ONNX Runtime, bitwise: the element count and every value, per type, at run time
(the inputs fed) and folded at import (the inputs initializers).

ORT 1.32 (onnxruntime/core/providers/cpu/generator/range.cc, ComputeRange) counts
ceil((double(limit) - double(start)) / double(delta)) for float32 / float64 and exactly for
integers, and accumulates the values in the input type (y[i] = y[i-1] + delta, rounded at every
step); float16 (Range-27) runs the op's function body in float32 (float64 for stash_type 11).
fastrnn computed start + i * delta and counted integers in double: float32 / float64 / float16
values differed in most of the cases below, and int64 counts near the type's limits were one short.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building and importing ONNX models needs onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference these tests compare with")

from onnx import helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
from fastrnn.errors import ArgumentError, ShapeError, UnsupportedError  # noqa: E402


def _float_cases(dtype, n, seed):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    cases = [(0.1, 1.0, 0.1), (0, 1, 0.1), (1, 0, -0.1), (0.3, 2.2, 0.3), (-1e30, 1e30, 3e28),
             (16777216, 16777220, 1), (1e7, 1e7 + 100, 0.7), (1 / 3, 100, 1 / 3), (2, 2, 1),
             (0, 1, -1), (0, 1, np.inf), (1, 0, -np.inf), (0, 10_000, 0.37)]  # 27028 accumulated
    if dt == np.float32:
        cases += [(-3e38, 3e38, 1e38)]  # limit - start overflows float32, not double: 7 values
    if dt == np.float64:
        cases += [(-1e307, 1e308, 3e306), (0.0, 0.3, 0.1), (5e-324, 1e-322, 5e-324)]
    if dt == np.float16:
        cases = [c for c in cases if abs(c[0]) < 6e4 and abs(c[1]) < 6e4 and c[2] != 0.37] + [
            (0.0007543563842773438, 20656.0, 27.5),  # float32 and float64 stashes differ here
            (0.0005044937133789062, 50464.0, 624.0), (4.690885543823242e-05, 14824.0, 43.75),
            (0, 2048, 1), (2000, 2100, 0.3)]
    top = 4 if dt == np.float16 else 30
    for _ in range(n):
        kind = rng.integers(3)
        if kind == 0:  # a whole number of steps, or just past / short of one
            s = rng.uniform(-10, 10)
            d = rng.choice([-1, 1]) * rng.uniform(1e-3, 2)
            l = s + d * (rng.integers(0, 300) + rng.choice([0, 0, 1e-7, -1e-7, rng.uniform(-1, 1)]))
        elif kind == 1:  # magnitudes across the type's range
            e = rng.integers(-20, top)
            s = rng.uniform(-1, 1) * 10.0 ** e
            d = rng.choice([-1, 1]) * 10.0 ** (e - rng.integers(0, 4)) * rng.uniform(0.1, 1)
            l = s + d * rng.integers(0, 1500) * rng.uniform(0.9, 1.1)
        else:  # decimal steps
            d = float(rng.choice([0.1, 0.2, 0.3, 0.05, 0.01, 1 / 3, 0.7]))
            s = round(float(rng.uniform(-5, 5)), 1)
            l = s + d * rng.integers(0, 500)
        cases.append((float(s), float(l), float(d)))
    with np.errstate(over="ignore"):
        arrays = [tuple(np.array(v, dt) for v in c) for c in cases]
    return [c for c in arrays if all(np.isfinite(c[:2])) and c[2] != 0]


def _int_cases(dtype, n, seed):
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    rng = np.random.default_rng(seed)
    cases = [(2, 11, 3), (10, 4, -2), (0, 10, -1), (5, 5, 1), (lo, hi, hi), (hi, lo, lo),
             (lo, hi, (hi >> 2) + 1), (hi, lo, -(hi >> 2) - 1), (hi - 3, hi, 1), (lo + 3, lo, -1)]
    if dtype == np.int64:  # the count in double is one short of ORT's exact one
        cases += [(-2315126045623110811, 8991772983981613421, 10214000930085568),
                  (8831702690425992540, 6032141128612719464, -103687465252343447)]
    edges = [lo, lo + 1, hi, hi - 1, 0]
    while len(cases) < n:
        s, l = (int(rng.choice(edges)) if rng.random() < .4 else int(rng.integers(lo, hi, endpoint=True))
                for _ in range(2))
        if s == l:
            continue
        d = max(1, min(abs(l - s) // int(rng.integers(1, 3000)) + int(rng.integers(-2, 3)), hi))
        cases.append((s, l, d if l > s else -d))
    return [tuple(np.array(v, dtype) for v in c) for c in cases]


CASES = {"float32": _float_cases(np.float32, 150, 1), "float64": _float_cases(np.float64, 150, 2),
         "int16": _int_cases(np.int16, 80, 3), "int32": _int_cases(np.int32, 80, 4),
         "int64": _int_cases(np.int64, 120, 5)}
# float16 is Range-27 only; ORT runs its function body, whose precision stash_type picks
F16 = _float_cases(np.float16, 100, 6)
VARIANTS = [(dt, 11, None) for dt in CASES] + [("float16", 27, None), ("float16", 27, 1),
                                                ("float16", 27, 11)]


def _model(cases, opset, stash, as_initializers):
    """One Range node on fed inputs, or one per case on initializers."""
    elem = helper.np_dtype_to_tensor_dtype(cases[0][0].dtype)
    attrs = {} if stash is None else {"stash_type": stash}
    if as_initializers:
        nodes = [helper.make_node("Range", [f"s{i}", f"l{i}", f"d{i}"], [f"y{i}"], name=f"r{i}", **attrs)
                 for i in range(len(cases))]
        inits = [numpy_helper.from_array(v, f"{w}{i}") for i, c in enumerate(cases)
                 for w, v in zip("sld", c)]
        inputs, outputs = [], [f"y{i}" for i in range(len(cases))]
    else:
        nodes = [helper.make_node("Range", ["s", "l", "d"], ["y"], name="r", **attrs)]
        inits, outputs = [], ["y"]
        inputs = [helper.make_tensor_value_info(w, elem, []) for w in "sld"]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, elem, None)
                                                  for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11 if opset >= 23 else 8
    return model


def _ort(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the inferred-shape warnings of the folded float16 outputs
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _bitwise(got, want, what):
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), (what, got, want)


@pytest.mark.parametrize("dtype, opset, stash", VARIANTS, ids=[f"{d}-{o}-stash{s}" for d, o, s in VARIANTS])
def test_range_at_run_time_is_ort_bitwise(dtype, opset, stash):
    cases = F16 if dtype == "float16" else CASES[dtype]
    model = _model(cases, opset, stash, as_initializers=False)
    want, plan = _ort(model), converters.from_onnx(model)
    assert [n.op for n in plan.nodes] == ["Range"]
    for s, l, d in cases:
        feeds = {"s": s, "l": l, "d": d}
        _bitwise(plan.run(None, feeds)[0], want.run(None, feeds)[0], (s, l, d))


@pytest.mark.parametrize("dtype, opset, stash", VARIANTS, ids=[f"{d}-{o}-stash{s}" for d, o, s in VARIANTS])
def test_range_folded_at_import_is_ort_bitwise(dtype, opset, stash):
    cases = F16 if dtype == "float16" else CASES[dtype]
    model = _model(cases, opset, stash, as_initializers=True)
    want, plan = _ort(model).run(None, {}), converters.from_onnx(model)
    assert plan.nodes == []  # all folded
    for c, g, w in zip(cases, plan.run(None, {}), want):
        _bitwise(g, w, c)


def test_range_examples():
    """What differed: float32 accumulation gets stuck where x + 1 == x, and 0.1 steps drift; the
    int64 count is exact where double rounding loses one."""
    def run(*v, dtype, opset=11):
        return converters.from_onnx(_model([tuple(np.array(x, dtype) for x in v)], opset, None,
                                           True)).run(None, {})[0]
    assert run(16777216, 16777220, 1, dtype=np.float32).tolist() == [16777216.0] * 4
    assert run(0.1, 1.0, 0.1, dtype=np.float32)[6:].tolist() == \
        np.array([0.70000005, 0.8000001, 0.9000001], np.float32).tolist()
    assert run(-2**63, 2**63 - 1, 2**63 - 1, dtype=np.int64).tolist() == \
        [-2**63, -1, 2**63 - 2]  # ceil((2**64 - 1) / (2**63 - 1)) = 3; in double 2
    assert run(0, 1, np.inf, dtype=np.float32).shape == (0,)


@pytest.mark.parametrize("s, l, d, err, match", [
    (0, 1, 0, ArgumentError, "delta must not be 0"),
    (0, 1, np.nan, ArgumentError, "must be finite and delta not NaN"),
    (0, np.inf, 1, ArgumentError, "must be finite and delta not NaN"),
    (-np.inf, 0, 1, ArgumentError, "must be finite and delta not NaN"),
    (-1.7e308, 1.7e308, 1, UnsupportedError, r"element count .* is not finite"),
    (1.7e308, -1.7e308, 1, UnsupportedError, r"element count .* is not finite"),
    (0, 1e13, 1, UnsupportedError, r"elements\), more than the \d+ allowed"),
], ids=["delta0", "delta_nan", "limit_inf", "start_inf", "widest", "widest_backwards", "too_many"])
def test_range_errors_at_run_time_where_ort_fails_too(s, l, d, err, match):
    model = _model([tuple(np.array(v, np.float64) for v in (s, l, d))], 11, None, False)
    feeds = {w: np.array(v, np.float64) for w, v in zip("sld", (s, l, d))}
    with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
        _ort(model).run(None, feeds)
    with pytest.raises(err, match=match):
        converters.from_onnx(model).run(None, feeds)


def test_range_inputs_must_be_scalars_as_in_ort():
    inputs = [helper.make_tensor_value_info(w, onnx.TensorProto.FLOAT, None) for w in "sld"]
    graph = helper.make_graph([helper.make_node("Range", ["s", "l", "d"], ["y"], name="r")], "g",
                              inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    plan, sess = converters.from_onnx(model), _ort(model)
    one = {w: np.array([v], np.float32) for w, v in zip("sld", (0, 3, 1))}  # 1-element vectors: fine
    _bitwise(plan.run(None, one)[0], sess.run(None, one)[0], "shape (1,)")
    two_d = dict(one, s=np.zeros((1, 1), np.float32))
    with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
        sess.run(None, two_d)
    with pytest.raises(ShapeError, match=r"Range start must be a scalar, got shape \(1, 1\)"):
        plan.run(None, two_d)
