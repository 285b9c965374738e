"""Run-time control flow of a plan: ONNX Loop and If, their sub-graphs held as nested plans.

onnx-free, like plan.py: a control-flow plan node holds its sub-graphs in ``node.graphs`` (name ->
nested OnnxPlan, which runs its own nodes by ``evaluate``). The names a sub-graph reads from the
enclosing scopes became explicit: the node passes them after its own ONNX inputs, and the nested
plan takes them after its formal inputs, in the same order.

Loop plan node: inputs [M, cond, v_initial * N, captured...], outputs [v_final * N, scans * K],
attrs {"carried": N}; graph "body": inputs [iteration, cond, v * N, captured...], outputs
[cond, v * N, scan * K].
If plan node: inputs [cond, captured...], graphs "then_branch" and "else_branch", each taking the
captured values and giving the node's outputs.
"""
from __future__ import annotations

import numpy as np

from fastrnn.errors import DTypeError, FormatError, ShapeError

from .kernels import _check_size

LOOP = "Loop"
IF = "If"
GRAPHS = {LOOP: ("body",), IF: ("then_branch", "else_branch")}


def run(node, ins: list) -> list:
    return _run_loop(node, ins) if node.op == LOOP else _run_if(node, ins)


def _flag(value, what: str) -> bool:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ShapeError(f"{what} must hold exactly one value, got shape {list(arr.shape)}")
    return bool(arr.reshape(-1)[0])


def _trip_count(value) -> int | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"the max trip count M must be int64, got {arr.dtype}")
    if arr.size != 1:
        raise ShapeError(f"the max trip count M must hold exactly one value, got shape "
                         f"{list(arr.shape)}")
    return int(arr.reshape(-1)[0])


def _run_if(node, ins: list) -> list:
    taken = "then_branch" if _flag(ins[0], "the If condition") else "else_branch"
    return node.graphs[taken].evaluate(ins[1:])


def _run_loop(node, ins: list) -> list:
    """ONNX Loop as ONNX Runtime runs it: while (M absent or i < M) and cond, where cond is the
    body's condition output after each iteration (also when the node has no cond input)."""
    body = node.graphs["body"]
    n = node.attrs["carried"]
    trips = _trip_count(ins[0])
    going = True if ins[1] is None else _flag(ins[1], "the Loop condition")
    carried, outer = list(ins[2:2 + n]), list(ins[2 + n:])
    # the counter, the condition and the carried values a body output replaces vary; a carried
    # value passed through as it is and the outer ones do not: what reads only those runs once
    names_in, names_out = body.input_names, body.output_names
    evaluate = body.iterations([0, 1] + [2 + k for k in range(n)
                                         if names_out[1 + k] != names_in[2 + k]])
    steps: list[list] = []
    scanned = 0  # elements of the scan outputs so far: a Loop that never stops may not grow them
    i = 0       # without end (one with none runs on, as in ONNX Runtime)
    while going and (trips is None or i < trips):
        outs = evaluate([np.array(i, np.int64), np.array(going), *carried, *outer])
        going = _flag(outs[0], "the Loop body's condition output")
        carried = outs[1:1 + n]
        steps.append(outs[1 + n:])
        scanned += sum(np.size(out) for out in steps[-1])
        _check_size((scanned,), f"the scan outputs of Loop {node.name!r} after {i + 1} iterations")
        i += 1
    return carried + [_stack(steps, k, info) for k, info in enumerate(body.output_infos[1 + n:])]


def _stack(steps: list[list], k: int, info) -> np.ndarray:
    """Scan output k of every iteration along a new axis 0. No iteration: empty, of the body
    output's rank where it is known, as ONNX Runtime gives it ([0, *shape] with 0 for the sizes
    not known; else [0])."""
    if not steps:
        if info.shape is None:
            return np.zeros([0], dtype=info.dtype)
        sizes = [d if isinstance(d, int) else 0 for d in info.shape]
        return np.zeros([0, *sizes], dtype=info.dtype)
    first = np.shape(steps[0][k])
    for i, outs in enumerate(steps):
        if np.shape(outs[k]) != first:
            raise ShapeError(f"scan output {k} has shape {list(np.shape(outs[k]))} at iteration "
                             f"{i} and {list(first)} at iteration 0; a scan output keeps its shape")
    return np.stack([outs[k] for outs in steps])


def check(node) -> None:
    """A saved control-flow node agrees with its sub-graphs (what running it indexes)."""
    where = f"plan node {node.name!r} ({node.op})"
    if sorted(node.graphs) != sorted(GRAPHS[node.op]):
        raise FormatError(f"{where} must hold the graphs {list(GRAPHS[node.op])}, it holds "
                          f"{sorted(node.graphs)}")
    if node.op == IF:
        if not node.inputs or not node.inputs[0]:
            raise FormatError(f"{where} has no condition input")
        for key in GRAPHS[IF]:
            _check_counts(where, key, node.graphs[key], len(node.inputs) - 1, len(node.outputs))
        return
    n = node.attrs.get("carried")
    if not (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= len(node.inputs) - 2
            and n <= len(node.outputs)):
        raise FormatError(f"{where}: 'carried' must be a count of loop-carried values no more "
                          f"than its {len(node.inputs)} - 2 inputs and {len(node.outputs)} "
                          f"outputs, found {n!r:.80}")
    if not all(node.inputs[2:]):
        raise FormatError(f"{where} leaves a loop-carried or outer value input empty")
    body = node.graphs["body"]
    _check_counts(where, "body", body, len(node.inputs), len(node.outputs) + 1)
    untyped = [v.name for v in body.output_infos[1 + n:] if v.dtype is None]
    if untyped:
        raise FormatError(f"{where}: its body's scan outputs {untyped} have no dtype")


def _check_counts(where: str, key: str, graph, n_in: int, n_out: int) -> None:
    if len(graph.input_infos) != n_in or len(graph.output_infos) != n_out:
        raise FormatError(f"{where}: its {key} must take {n_in} input(s) and give {n_out} "
                          f"output(s), it takes {len(graph.input_infos)} and gives "
                          f"{len(graph.output_infos)}")
