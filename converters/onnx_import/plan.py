"""fastrnn's execution plan for an imported ONNX graph, and the session that runs it.

onnx-free: the importer (``importer.py``) is the only code that reads ONNX; what it produces is an
:class:`OnnxPlan` (named inputs and outputs, folded constants, and a topologically ordered list of
plan nodes: recurrent layers on fastrnn's kernels, everything else on numpy), which runs, saves and
loads with numpy and fastrnn alone.

The session interface follows onnxruntime.InferenceSession: ``run(output_names, input_feed)``,
``get_inputs()``, ``get_outputs()``.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastrnn.errors import (ArgumentError, DTypeError, FastRNNError, FormatError, ShapeError,
                            UnsupportedError)
from fastrnn.validation import read_dtype

from . import (control_flow, fuse_layers, loop_cells, loop_pairs, recurrent_node, shape_memo,
               unrolled_cells)
from .dtypes import type_string
from .kernels import BRANCH_KEYS, CONDITIONAL, KERNELS, LOUD, NEUTRAL, QUIET, RUNTIME, prepare

PLAN_KIND = "onnx_plan"
PLAN_FORMAT = 1
# sub-graphs (Loop bodies, If branches) nested in a saved plan deeper than this are refused
MAX_NESTING = 16
# dtypes a .frnn file holds; other integer constants are widened to int64 (uint64: bit view)
_SAVABLE = {"float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"}
_WIDENED = {"int16", "uint16", "uint32", "uint64"}  # saved as int64, their dtype in the table
# schedule nodes that stand for a chain of plan nodes, which run where the fused call declines
_FUSED = (fuse_layers.OP, unrolled_cells.OP, loop_pairs.OP)


class NodeArg:
    """Name, type and shape of a graph input or output, like onnxruntime's NodeArg."""

    __slots__ = ("name", "type", "shape")

    def __init__(self, name: str, type: str, shape: list):
        self.name = name
        self.type = type
        self.shape = shape

    def __repr__(self) -> str:
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class ValueInfo:
    """A graph input/output: name, numpy dtype name (or None), shape (list of int | str | None) or None."""

    __slots__ = ("name", "dtype", "shape")

    def __init__(self, name: str, dtype: str | None, shape: Sequence | None):
        self.name = name
        self.dtype = dtype
        self.shape = None if shape is None else list(shape)

    def node_arg(self) -> NodeArg:
        return NodeArg(self.name, type_string(self.dtype), [] if self.shape is None else list(self.shape))

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}

    @classmethod
    def from_json(cls, d: Mapping) -> "ValueInfo":
        """What to_json wrote: a string name, a numeric numpy dtype name (or None), and a list
        of sizes (int >= 0, a symbolic name, or None) or None; anything else is a FormatError."""
        name, dtype, shape = d["name"], d["dtype"], d["shape"]
        if not isinstance(name, str):
            raise FormatError(f"plan value name must be a string, found {name!r:.80}")
        if shape is not None and not (isinstance(shape, list) and all(map(_is_dim, shape))):
            raise FormatError(f"plan value {name!r} has a malformed shape {shape!r:.80}")
        if dtype is not None and not _is_numeric_dtype_name(dtype):
            raise FormatError(f"plan value {name!r} has dtype {dtype!r:.80}; a saved plan "
                              f"names numeric dtypes such as 'float32'")
        return cls(name, dtype, shape)


def _feed_specs(infos: Sequence[ValueInfo], dtypes: Mapping) -> list | None:
    """Per input (name, dtype, rank, (axis, size) of its fixed sizes) for _fast_feeds; None when
    an input's dtype or shape is not known (its feeds are _check_feeds's to judge)."""
    specs = []
    for info in infos:
        if info.shape is None or dtypes[info.name] is None:
            return None
        fixed = tuple((axis, size) for axis, size in enumerate(info.shape) if isinstance(size, int))
        specs.append((info.name, dtypes[info.name], len(info.shape), fixed))
    return specs


def _is_dim(size: Any) -> bool:
    if isinstance(size, int) and not isinstance(size, bool):
        return 0 <= size < 2**63
    return size is None or isinstance(size, str)


def _is_numeric_dtype_name(name: Any) -> bool:
    dt = read_dtype(name) if isinstance(name, str) else None
    return dt is not None and dt.kind in "biuf" and dt.name == name


class PlanNode:
    """One step of the plan: op name, input/output value names ('' = absent), JSON-able attrs,
    the nested plans of a control-flow node (graphs, saved inside its attrs), and what building
    the plan prepared for it (state: a recurrent node's Stack; a Loop's loop_cells.LoopedCell
    where its body is a recurrent cell's step, else None)."""

    __slots__ = ("op", "name", "inputs", "outputs", "attrs", "state", "graphs")

    def __init__(self, op: str, inputs: Sequence[str], outputs: Sequence[str],
                 attrs: Mapping | None = None, name: str = "", graphs: Mapping | None = None):
        self.op = op
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.state = None
        self.graphs = dict(graphs or {})

    def to_json(self) -> dict:
        return {"op": self.op, "name": self.name, "inputs": self.inputs, "outputs": self.outputs,
                "attrs": self.attrs}

    def __repr__(self) -> str:
        return f"PlanNode({self.op}, {self.name!r}, {self.inputs} -> {self.outputs})"


class NodeFailure:
    """What ``execute_node`` attaches to the error it raises (as ``error.node_failure``): the plan
    node and the message after the "node 'name' (Op)" that names it, so that import-time folding
    can name the ONNX node instead, once."""

    def __init__(self, node: PlanNode, detail: str):
        self.node, self.detail = node, detail


def _node_error(cls, node: PlanNode, detail: str) -> FastRNNError:
    err = cls(f"node {node.name!r} ({node.op}){detail}")
    err.node_failure = NodeFailure(node, detail)
    return err


def execute_node(node: PlanNode, ins: list) -> list:
    """Run one plan node on its input arrays (None for absent ones); errors name the node."""
    try:
        if node.op == recurrent_node.OP:
            return recurrent_node.run(node.attrs, node.state, ins, len(node.outputs))
        if node.op in control_flow.GRAPHS:
            return control_flow.run(node, ins)
        return KERNELS[node.op](node.attrs, ins, len(node.outputs))
    except Exception as e:
        _raise_node_error(node, ins, e)


def _raise_node_error(node: PlanNode, ins: list, e: Exception):
    """Inside the handler of `e`, raised by running `node`: raise it again as the typed error that
    names the node, or as it is where it is none of the kinds below."""
    if isinstance(e, FastRNNError):
        raise _node_error(type(e), node, f": {e}") from e
    if isinstance(e, (ValueError, IndexError)):
        shapes = [None if x is None else tuple(np.shape(x)) for x in ins]
        raise _node_error(ShapeError, node, f" failed on inputs of shapes {shapes}: {e}") from e
    if isinstance(e, TypeError):
        types = [None if x is None else str(np.asarray(x).dtype) for x in ins]
        raise _node_error(DTypeError, node, f" failed on inputs of dtypes {types}: {e}") from e
    if isinstance(e, ArithmeticError):  # OverflowError, ZeroDivisionError: a value it cannot take
        raise _node_error(ArgumentError, node, f" failed on the values of its inputs: "
                                               f"{type(e).__name__}: {e}") from e
    if isinstance(e, AttributeError):  # an input the kernel needs is absent (None)
        absent = [i for i, x in enumerate(ins) if x is None]
        raise _node_error(FormatError, node, f" failed with inputs {absent} absent: {e}") from e
    if isinstance(e, KeyError):  # a saved plan's node without an attribute its op requires
        raise _node_error(FormatError, node, f" lacks the attribute {e}") from e
    if isinstance(e, MemoryError):  # under the kernels' size cap, but more than this process has
        shapes = [None if x is None else tuple(np.shape(x)) for x in ins]
        raise _node_error(UnsupportedError, node, f" ran out of memory on inputs of shapes "
                                                  f"{shapes}") from e
    raise


def known_op(op: str) -> bool:
    return op == recurrent_node.OP or op in KERNELS or op in control_flow.GRAPHS


def _prepared_call(node: PlanNode, constants: Mapping) -> tuple:
    """(the node's call on its inputs with what each call would work out again done once, whether
    that call is a fast path: one whose errors are not the node's own, so that a failure (an
    error, or None for an input it leaves to the node) runs the node again by execute_node, and
    how it treats the floating-point error state: kernels.NEUTRAL, QUIET or LOUD)."""
    n_out = len(node.outputs)
    if node.op == recurrent_node.OP:
        return recurrent_node.bind(node.attrs, node.state, n_out), True, LOUD
    if node.op == control_flow.LOOP:
        node.state = loop_cells.recognise(node, constants)
        if node.state is not None:  # the body is a recurrent cell's step: run by the kernel
            return node.state, True, LOUD
    if node.op in control_flow.GRAPHS:
        return (lambda ins: control_flow.run(node, ins)), False, LOUD
    consts = [None if not name else constants.get(name, RUNTIME) for name in node.inputs]
    return prepare(node.op, node.attrs, consts, n_out)


class _Schedule:
    """How to compute some of a plan's outputs: the nodes that lead to them, as steps on a list of
    values that starts as `template` (the constants in their slots; slot 0 holds None, for absent
    inputs, slot 1 takes absent outputs). A step: (call, fast (see _prepared_call), node, what
    gathers its inputs from the values, whether that gives the only input itself rather than a
    tuple, the slot of its only output or the slots of its outputs, its number in `reads`: the
    slots it reads and writes). The steps come in `segments` (quiet, steps): a quiet one runs
    inside np.errstate(all="ignore"), entered once for it."""

    __slots__ = ("segments", "template", "input_slots", "output_slots", "reads", "_loop_splits",
                 "memo")

    def __init__(self, plan: "OnnxPlan", wanted: tuple):
        needed, keep = set(wanted), []
        for node in reversed(plan._nodes):
            if any(o in needed for o in node.outputs if o):
                keep.append(node)
                needed.update(i for i in node.inputs if i)
        keep.reverse()
        keep = unrolled_cells.fuse(keep, set(wanted), plan._constants)
        keep = fuse_layers.fuse(keep, set(wanted), plan._constants)
        keep = loop_pairs.fuse(keep)
        self.reads: list[tuple] = []  # per step number: (the slots it reads, those it writes)
        self._loop_splits: dict[tuple, tuple] = {}
        consts, env = {}, {}
        self.template = [None, None]
        for name, value in plan._constants.items():
            consts[name] = len(self.template)
            self.template.append(value)

        def env_slot(name: str) -> int:
            if not name:
                return 1
            if name not in env:
                env[name] = len(self.template)
                self.template.append(None)
            return env[name]
        def make_step(node, call, fast) -> tuple:
            ins = [consts[i] if i in consts else env_slot(i) if i else 0 for i in node.inputs]
            outs = tuple(env_slot(o) for o in node.outputs)
            gather = operator.itemgetter(*ins) if ins else (lambda values: ())
            self.reads.append((tuple(ins), outs))
            return (call, fast, node, gather, len(ins) == 1, outs[0] if len(outs) == 1 else outs,
                    len(self.reads) - 1)
        self.input_slots = [env_slot(v.name) for v in plan._inputs]
        self.segments = []
        for node in keep:
            if node.op in _FUSED:  # declined inputs run the chain's own steps
                fused = node.state
                fused.steps = [make_step(n, *plan._calls[id(n)][:2]) for n in fused.nodes]
                call, fast, errors = fused, True, LOUD
            else:
                call, fast, errors = plan._calls[id(node)]
            step = make_step(node, call, fast)
            quiet = self.segments[-1][0] if errors == NEUTRAL and self.segments else errors == QUIET
            if not self.segments or self.segments[-1][0] != quiet:
                self.segments.append((quiet, []))
            self.segments[-1][1].append(step)
        self.output_slots = [env[name] if name in env else consts[name] for name in wanted]
        # the steps that compute from the inputs' shapes alone: once per set of shapes
        self.memo = shape_memo.memo_for(self.segments, [v.name for v in plan._inputs],
                                        plan._constants)

    def loop_split(self, varying: tuple) -> tuple:
        """(segments of the steps that read none of the inputs at the `varying` positions, nor
        what such steps write; segments of the others), each in the schedule's order."""
        split = self._loop_splits.get(varying)
        if split is None:
            moved = {self.input_slots[k] for k in varying}
            fixed, moving = [], []
            for quiet, steps in self.segments:
                for step in steps:
                    reads, writes = self.reads[step[6]]
                    if moved.intersection(reads):
                        moved.update(writes)
                        _append(moving, quiet, step)
                    else:
                        _append(fixed, quiet, step)
            split = self._loop_splits[varying] = (fixed, moving)
        return split


def _append(segments: list, quiet: bool, step: tuple) -> None:
    if not segments or segments[-1][0] != quiet:
        segments.append((quiet, []))
    segments[-1][1].append(step)


def _run_segments(segments: list, values: list) -> None:
    for quiet, steps in segments:
        if quiet:
            with np.errstate(all="ignore"):
                _run_steps(steps, values)
        else:
            _run_steps(steps, values)


def _run_steps(steps: list, values: list) -> None:
    for call, fast, node, gather, one_in, out_slots, _ in steps:
        ins = [gather(values)] if one_in else list(gather(values))
        try:
            outs = call(ins)
        except Exception as e:
            if not fast:
                _raise_node_error(node, ins, e)
            outs = None
        if outs is None:  # a fast path failed, or left these inputs to the node's own run
            if node.op in _FUSED:
                _run_steps(node.state.steps, values)
                continue
            outs = execute_node(node, ins)
        if type(out_slots) is int:
            values[out_slots] = outs[0]
        else:
            for slot, value in zip(out_slots, outs):
                values[slot] = value


class OnnxPlan:
    """An imported ONNX graph as fastrnn's execution plan; runs like an onnxruntime session."""

    def __init__(self, inputs: Sequence[ValueInfo], outputs: Sequence[ValueInfo],
                 nodes: Sequence[PlanNode], constants: Mapping[str, np.ndarray],
                 source: Mapping | None = None):
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._nodes = list(nodes)
        self._constants = {}
        for name, value in constants.items():
            arr = np.asarray(value)
            if arr.flags.writeable:
                arr = arr.view()
                arr.flags.writeable = False  # shared with every run: never written
            self._constants[name] = arr
        self.source = dict(source or {})
        self._input_dtypes = {}
        for v in self._inputs:
            self._input_dtypes[v.name] = None if v.dtype is None else np.dtype(v.dtype)
        self._output_names = tuple(v.name for v in self._outputs)
        self._input_names = tuple(v.name for v in self._inputs)
        self._feed_specs = _feed_specs(self._inputs, self._input_dtypes)
        self._validate()
        for node in self._nodes:
            if node.op == recurrent_node.OP:
                node.state = recurrent_node.prepare(node.attrs, self._constants)
        self._calls = {id(node): _prepared_call(node, self._constants) for node in self._nodes}
        self._schedules: dict[tuple, _Schedule] = {}

    # ------------------------------------------------------------------ structure
    def _validate(self) -> None:
        defined = set(self._constants)
        names = [v.name for v in self._inputs]
        if len(set(names)) != len(names):
            raise FormatError(f"plan inputs repeat a name: {names}")
        defined.update(names)
        for node in self._nodes:
            if not known_op(node.op):
                raise FormatError(f"plan node {node.name!r} has unknown op {node.op!r}")
            if node.op == CONDITIONAL:
                _check_conditional(node)
            elif node.op in control_flow.GRAPHS:
                control_flow.check(node)
            for name in node.inputs:
                if name and name not in defined:
                    raise FormatError(f"plan node {node.name!r} ({node.op}) reads {name!r}, which "
                                      f"nothing before it defines")
            defined.update(n for n in node.outputs if n)
        for v in self._outputs:
            if v.name not in defined:
                raise FormatError(f"plan output {v.name!r} is not produced by any node")

    def _schedule(self, wanted: tuple) -> _Schedule:
        sched = self._schedules.get(wanted)
        if sched is None:
            sched = self._schedules[wanted] = _Schedule(self, wanted)
        return sched

    @property
    def input_infos(self) -> list[ValueInfo]:
        return list(self._inputs)

    @property
    def output_infos(self) -> list[ValueInfo]:
        return list(self._outputs)

    @property
    def input_names(self) -> tuple:
        return self._input_names

    @property
    def output_names(self) -> tuple:
        return self._output_names

    @property
    def nodes(self) -> list[PlanNode]:
        return list(self._nodes)

    @property
    def constants(self) -> dict[str, np.ndarray]:
        return dict(self._constants)

    def get_inputs(self) -> list[NodeArg]:
        return [v.node_arg() for v in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [v.node_arg() for v in self._outputs]

    def get_providers(self) -> list[str]:
        return ["FastRNNExecutionProvider"]

    def __repr__(self) -> str:
        ops: dict[str, int] = {}
        for n in self._nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        return (f"OnnxPlan(inputs={[v.name for v in self._inputs]}, "
                f"outputs={[v.name for v in self._outputs]}, nodes={ops})")

    def kernel_calls(self, output_names: Sequence[str] | None = None) -> list[str]:
        """What of computing the named outputs (all when None or empty) runs on fastrnn's
        recurrent kernels, one line per call in the order they run ("node name: what it runs"):
        recurrent nodes (a stack of them fused into one call), Loops over a cell's step, layers
        an exporter wrote out step by step. Recurrent layers missing from it run node by node
        (nested graphs' nodes are not listed)."""
        wanted = tuple(output_names) if output_names else self._output_names
        bad = [n for n in wanted if n not in self._output_names]
        if bad or isinstance(output_names, str):
            raise ArgumentError(f"output_names must be a list of the model's outputs "
                                f"{list(self._output_names)}, got {output_names!r}")
        calls = []
        for _, steps in self._schedule(wanted).segments:
            for step in steps:
                node = step[2]
                if node.op == recurrent_node.OP:
                    what = (f"{node.attrs['mode']} node, weights given at run time"
                            if node.state is None else recurrent_node.describe(node.state))
                elif node.op in _FUSED or (node.op == control_flow.LOOP and
                                           node.state is not None):
                    what = repr(node.state)
                else:
                    continue
                calls.append(f"{node.name}: {what}")
        return calls

    # ------------------------------------------------------------------ running
    def _fast_feeds(self, input_feed) -> list | None:
        """The feeds in input order when each is an ndarray of its input's dtype and shape (those
        _check_feeds takes as they are), else None (_check_feeds decides)."""
        if (self._feed_specs is None or type(input_feed) is not dict
                or len(input_feed) != len(self._feed_specs)):
            return None
        values = []
        for name, want, rank, fixed in self._feed_specs:
            value = input_feed.get(name)
            if type(value) is not np.ndarray or value.dtype != want or value.ndim != rank:
                return None
            shape = value.shape
            for axis, size in fixed:
                if shape[axis] != size:
                    return None
            values.append(value)
        return values

    def _check_feeds(self, input_feed) -> list:
        if not isinstance(input_feed, Mapping):
            raise ArgumentError(f"input_feed must be a dict of input name -> array, got "
                                f"{type(input_feed).__name__}")
        expected = [v.name for v in self._inputs]
        unknown = [k for k in input_feed if k not in self._input_dtypes]
        if unknown:
            raise ArgumentError(f"unknown input name(s) {unknown}; the model's inputs are {expected}")
        missing = [k for k in expected if k not in input_feed]
        if missing:
            raise ArgumentError(f"required input(s) {missing} are missing from input_feed "
                                f"(got {list(input_feed)}); the model's inputs are {expected}")
        feeds = []
        for info in self._inputs:
            value = input_feed[info.name]
            want = self._input_dtypes[info.name]
            if not isinstance(value, np.ndarray):
                if value is None:  # np.asarray(None, float32) would be a NaN
                    raise DTypeError(f"input {info.name!r}: expected an array, got None")
                try:
                    value = np.asarray(value, dtype=want if not isinstance(value, np.generic) else None)
                except (TypeError, ValueError, OverflowError) as e:
                    raise DTypeError(f"input {info.name!r}: cannot make a {want} array of "
                                     f"{type(value).__name__}: {e}") from None
            if want is not None and value.dtype != want:
                raise DTypeError(f"input {info.name!r} must be {type_string(info.dtype)} "
                                 f"({want}), got {value.dtype}")
            if info.shape is not None:
                if value.ndim != len(info.shape):
                    raise ShapeError(f"input {info.name!r} must have rank {len(info.shape)} "
                                     f"(shape {info.shape}), got shape {value.shape}")
                bad = [(i, d, s) for i, (d, s) in enumerate(zip(info.shape, value.shape))
                       if isinstance(d, int) and d != s]
                if bad:
                    raise ShapeError(f"input {info.name!r} must have shape {info.shape}, got "
                                     f"{list(value.shape)} (axis {bad[0][0]}: expected "
                                     f"{bad[0][1]}, got {bad[0][2]})")
            feeds.append(value)
        return feeds

    def run(self, output_names: Sequence[str] | None = None, input_feed: Mapping | None = None,
            run_options: Any = None) -> list[np.ndarray]:
        """Compute the named outputs (all when None or empty) from input_feed, like ORT's run."""
        if input_feed is None:
            input_feed = {}
        feeds = self._fast_feeds(input_feed)
        if feeds is None:
            feeds = self._check_feeds(input_feed)
        all_outputs = self._output_names
        if not output_names:
            wanted = all_outputs
        else:
            if isinstance(output_names, str):
                raise ArgumentError(f"output_names must be a list of names, got the string "
                                    f"{output_names!r}")
            wanted = tuple(output_names)
            bad = [n for n in wanted if n not in all_outputs]
            if bad:
                raise ArgumentError(f"unknown output name(s) {bad}; the model's outputs are "
                                    f"{list(all_outputs)}")
        results = []
        seen: set[int] = {id(v) for v in feeds}
        for value in self._execute(feeds, self._schedule(wanted)):
            value = np.asarray(value)
            flags = value.flags
            if (id(value) in seen or not flags.writeable or not flags.c_contiguous
                    or not flags.owndata):
                value = np.array(value, copy=True, order="C")
            seen.add(id(value))
            results.append(value)
        return results

    @staticmethod
    def _execute(inputs: Sequence, sched: _Schedule) -> list:
        values = sched.template.copy()
        for slot, value in zip(sched.input_slots, inputs):
            values[slot] = value
        if sched.memo is None:
            _run_segments(sched.segments, values)
        else:
            sched.memo.run(inputs, values, _run_segments)
        return [values[i] for i in sched.output_slots]

    def evaluate(self, values: Sequence) -> list:
        """Every output from the inputs' values in order, unchecked and uncopied: a nested plan
        (Loop body, If branch) run by its control-flow node."""
        return self._execute(values, self._schedule(self._output_names))

    def iterations(self, varying: Sequence[int]):
        """For a Loop body: `evaluate` for one run of the Loop, whose inputs keep their first
        iteration's values but at the `varying` positions. The nodes that read no varying input
        (nor what a node reading one writes) run once, at the first iteration; the others at
        every one."""
        sched = self._schedule(self._output_names)
        fixed, moving = sched.loop_split(tuple(varying))
        base: list = []

        def evaluate(inputs: Sequence) -> list:
            if not base:
                values = sched.template.copy()
                for slot, value in zip(sched.input_slots, inputs):
                    values[slot] = value
                _run_segments(fixed, values)
                base.append(values)
            values = base[0].copy()
            for k in varying:
                values[sched.input_slots[k]] = inputs[k]
            _run_segments(moving, values)
            return [values[i] for i in sched.output_slots]
        return evaluate

    def __call__(self, **feeds) -> list[np.ndarray]:
        return self.run(None, feeds)

    # ------------------------------------------------------------------ saving
    def to_record(self) -> tuple[str, dict, dict[str, np.ndarray]]:
        """(kind, meta, tensors) for fastrnn.save."""
        tensors, table = {}, []
        for i, (name, arr) in enumerate(self._constants.items()):
            key = f"c{i}"
            dt = str(arr.dtype)
            if dt not in _SAVABLE:
                if arr.dtype.kind not in "iu":
                    raise DTypeError(f"constant {name!r} has dtype {dt}, which cannot be saved")
                arr = arr.view(np.int64) if arr.dtype == np.uint64 else arr.astype(np.int64)
            tensors[key] = arr
            table.append([name, key, dt])
        nodes = []
        for index, node in enumerate(self._nodes):
            entry = node.to_json()
            for key, graph in node.graphs.items():
                _, graph_meta, graph_tensors = graph.to_record()
                entry["attrs"] = {**entry["attrs"], key: graph_meta}
                prefix = _graph_prefix(index, key)
                tensors.update((prefix + k, v) for k, v in graph_tensors.items())
            nodes.append(entry)
        meta = {
            "format": PLAN_FORMAT,
            "inputs": [v.to_json() for v in self._inputs],
            "outputs": [v.to_json() for v in self._outputs],
            "nodes": nodes,
            "constants": table,
            "source": self.source,
        }
        return PLAN_KIND, meta, tensors

    @classmethod
    def from_record(cls, meta: Mapping, tensors: Mapping[str, np.ndarray],
                    depth: int = 0) -> "OnnxPlan":
        """Rebuild a plan from what to_record produced (the registered 'onnx_plan' loader);
        `depth`: how deep in control-flow nodes' sub-graphs this one is."""
        try:
            fmt = meta["format"]
            if fmt != PLAN_FORMAT:
                raise FormatError(f"onnx_plan format {fmt!r} is not supported; this fastrnn reads "
                                  f"format {PLAN_FORMAT}")
            constants = {}
            for name, key, dt in meta["constants"]:
                arr = tensors[key]
                if str(arr.dtype) != dt:
                    if dt not in _WIDENED or arr.dtype != np.int64:
                        raise FormatError(f"onnx_plan constant {name!r} is stored as "
                                          f"{arr.dtype} with dtype {dt!r}: a saved plan widens "
                                          f"only {sorted(_WIDENED)} to int64")
                    arr = arr.view(np.uint64) if dt == "uint64" else arr.astype(dt)
                constants[name] = arr
            inputs = [ValueInfo.from_json(d) for d in meta["inputs"]]
            outputs = [ValueInfo.from_json(d) for d in meta["outputs"]]
            nodes = [_node_from_json(cls, index, d, tensors, depth)
                     for index, d in enumerate(meta["nodes"])]
            source = meta.get("source", {})
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed onnx_plan record: {type(e).__name__}: {e}") from None
        try:
            return cls(inputs, outputs, nodes, constants, source)
        except (ShapeError, DTypeError, ArgumentError) as e:
            raise FormatError(f"inconsistent onnx_plan record: {e}") from None


def _index(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _check_conditional(node: PlanNode) -> None:
    """A Conditional node's branches (kernels.CONDITIONAL): each one kernel (not a recurrent layer,
    not another Conditional) reading the node's inputs by index, its outputs mapped onto the
    node's; a record that says otherwise would fail or index out of range at run time."""
    where = f"plan node {node.name!r} ({node.op})"
    if not node.inputs or not node.inputs[0]:
        raise FormatError(f"{where} has no condition input")
    for key in ("then", "else"):
        branch = node.attrs.get(key)
        if not isinstance(branch, dict) or sorted(branch) != sorted(BRANCH_KEYS):
            raise FormatError(f"{where}: its {key!r} branch must be an object with keys "
                              f"{list(BRANCH_KEYS)}, found {branch!r:.80}")
        op, n_out = branch["op"], branch["n_out"]
        if not isinstance(op, str) or op not in KERNELS or op == CONDITIONAL:
            raise FormatError(f"{where}: its {key!r} branch runs {op!r:.80}, not a kernel op")
        if not isinstance(branch["attrs"], dict):
            raise FormatError(f"{where}: its {key!r} branch attrs must be an object")
        if not _index(n_out, 1, 1 << 16):
            raise FormatError(f"{where}: its {key!r} branch n_out must be a positive integer, "
                              f"found {n_out!r:.80}")
        ins, outs = branch["inputs"], branch["outputs"]
        if not isinstance(ins, list) or not all(_index(i, -1, len(node.inputs)) for i in ins):
            raise FormatError(f"{where}: its {key!r} branch inputs must be indices into the "
                              f"node's {len(node.inputs)} inputs (or -1), found {ins!r:.80}")
        if not isinstance(outs, list) or len(outs) != len(node.outputs) \
                or not all(_index(k, 0, n_out) for k in outs):
            raise FormatError(f"{where}: its {key!r} branch outputs must be {len(node.outputs)} "
                              f"indices below n_out={n_out}, found {outs!r:.80}")


def _graph_prefix(index: int, key: str) -> str:
    """Where node `index`'s graph `key` keeps its tensors in a record (top-level ones: c0, c1...)."""
    return f"g{index}.{key}."


def _node_from_json(cls, index: int, d: Mapping, tensors: Mapping, depth: int) -> PlanNode:
    op, name, attrs = _text(d["op"]), _text(d.get("name", "")), dict(_attrs(d["attrs"]))
    graphs = {}
    for key in control_flow.GRAPHS.get(op, ()):
        graph_meta = attrs.pop(key, None)
        where = f"plan node {name!r} ({op})"
        if not isinstance(graph_meta, dict):
            raise FormatError(f"{where}: its {key!r} graph must be a saved plan, found "
                              f"{graph_meta!r:.80}")
        if depth >= MAX_NESTING:
            raise FormatError(f"{where}: sub-graphs nested more than {MAX_NESTING} deep")
        prefix = _graph_prefix(index, key)
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            graphs[key] = cls.from_record(graph_meta, own, depth + 1)
        except FormatError as e:
            raise FormatError(f"{where}, its {key}: {e}") from None
    return PlanNode(op, _texts(d["inputs"]), _texts(d["outputs"]), attrs, name, graphs)


def _text(value) -> str:
    if not isinstance(value, str):
        raise FormatError(f"onnx_plan record: expected a string, found {value!r:.80}")
    return value


def _texts(values) -> list[str]:
    if not isinstance(values, list):
        raise FormatError(f"onnx_plan record: expected a list of names, found {values!r:.80}")
    return [_text(v) for v in values]


def _attrs(value) -> dict:
    if not isinstance(value, dict):
        raise FormatError(f"onnx_plan record: a node's attrs must be an object, found "
                          f"{value!r:.80}")
    return value


def load_plan(meta: dict, tensors: dict) -> OnnxPlan:
    """fastrnn.fileformat loader for kind 'onnx_plan'."""
    return OnnxPlan.from_record(meta, tensors)
