"""ONNX model -> OnnxPlan: load, validate, convert every node, fold constants, drop dead code.

The only module of the ONNX import that imports onnx, and it does so when called.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from fastrnn.errors import (ArgumentError, FastRNNError, FormatError, ShapeError,
                            UnsupportedError)

from . import op_converters  # noqa: F401  (registers the converters)
from . import conv_ops  # registers Conv and Einsum
from . import node_order, recurrent_node
from .control_flow import GRAPHS, IF, LOOP
from .dtypes import numpy_dtype, onnx_type_name
from .kernels import CONDITIONAL, KERNELS, SizeLimitError, element_limit
from .plan import OnnxPlan, PlanNode, ValueInfo, execute_node
from .registry import converter, lookup, supported_versions

DEFAULT_DOMAINS = ("", "ai.onnx")
# elements import-time constant folding may create beyond the model's own initializers; what would
# take more is left to run time (ORT folds nothing), so a forged shape cannot exhaust memory here
FOLD_ELEMENTS = 1 << 26
# If / Loop nodes inside If branches or Loop bodies: nesting deeper than this is refused
MAX_IF_DEPTH = 4
IF_BRANCHES = ("then_branch", "else_branch")


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise UnsupportedError("converting ONNX models needs the onnx package: "
                               "pip install 'fastrnn[onnx]' (running a saved plan does not)") from None
    return onnx


# ------------------------------------------------------------------ loading
def load_model(src) -> Any:
    """A ModelProto from a path (external data beside it), bytes, or a ModelProto."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    if isinstance(src, onnx.ModelProto):
        model = src
        where = "the ModelProto"
    elif isinstance(src, (bytes, bytearray, memoryview)):
        where = f"the {len(src)} bytes given"
        try:
            model = onnx.load_model_from_string(bytes(src))
        except (DecodeError, RuntimeError, ValueError) as e:
            raise FormatError(f"{where} are not a valid ONNX model (protobuf parse failed: {e})") \
                from None
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        where = repr(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such ONNX file: {path!r}")
        if os.path.isdir(path):
            raise FormatError(f"{path!r} is a directory, expected an .onnx file")
        if not os.path.isfile(path):  # a FIFO would block, a device read without end
            raise FormatError(f"{path!r} is not a regular file, expected an .onnx file")
        try:
            model = onnx.load(path, load_external_data=False)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise FormatError(f"{path!r} is not a valid ONNX model (protobuf parse failed: {e})") \
                from None
        _check_model_basics(model, where)
        try:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise FormatError(f"{path!r}: cannot read the external data it refers to: "
                              f"{type(e).__name__}: {e}") from None
    else:
        raise ArgumentError(f"from_onnx takes a path, bytes or an onnx.ModelProto, got "
                            f"{type(src).__name__}")
    _check_model_basics(model, where)
    return model


def _check_model_basics(model, where: str) -> None:
    if not model.HasField("graph") or model.ir_version <= 0:
        raise FormatError(f"{where} is not an ONNX model (no graph or no IR version; "
                          f"garbage or truncated data?)")
    if not model.graph.output:
        raise FormatError(f"{where}: the graph has no outputs")


def _external_refs(model) -> list[str]:
    """Names of the tensors (initializers, node attributes) whose data is still external: not
    loaded, as for bytes or a ModelProto (a model read from a path has its folder's data loaded)."""
    onnx = _onnx()
    tensors = list(model.graph.initializer)
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors.extend(a.tensors)
    return [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


# ------------------------------------------------------------------ node view and context
class NodeView:
    """One ONNX node with decoded attributes (plain Python / numpy values)."""

    __slots__ = ("op_type", "name", "inputs", "outputs", "attrs", "version", "domain")

    def __init__(self, proto, index: int, version: int):
        onnx = _onnx()
        self.op_type = proto.op_type
        self.name = node_order.node_name(proto, index)
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.domain = "" if proto.domain in DEFAULT_DOMAINS else proto.domain
        self.version = version
        attrs = {}
        for a in proto.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) and not (
                    self.op_type in GRAPHS and self.domain == ""
                    and a.type == onnx.AttributeProto.GRAPH):  # kept as GraphProto
                raise UnsupportedError(f"node {self.name!r} ({self.op_type}) has a subgraph "
                                       f"attribute {a.name!r}; fastrnn runs the graphs of If "
                                       f"and Loop only")
            if a.name in attrs:
                raise FormatError(f"node {self.name!r} ({self.op_type}): attribute {a.name!r} "
                                  f"is given twice")
            if a.ref_attr_name:
                raise FormatError(f"node {self.name!r} ({self.op_type}): attribute {a.name!r} "
                                  f"refers to a function attribute ({a.ref_attr_name!r}), which "
                                  f"only a function body may do")
            _check_attribute_type(a, self, version)
            value = onnx.helper.get_attribute_value(a)
            if isinstance(value, onnx.TensorProto):
                value = _to_array(value)
            elif isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode("utf-8", errors="replace") for v in value]
            elif isinstance(value, list) and value and isinstance(value[0], onnx.TensorProto):
                value = [_to_array(v) for v in value]
            attrs[a.name] = value
        self.attrs = attrs
        _check_required(self)


def _check_required(node: "NodeView") -> None:
    """Every input and attribute the operator's schema requires is there (an empty input name
    means absent: the kernels would get None where they need an array)."""
    schema = _schema(node.op_type, node.domain, node.version)
    if schema is None:
        return
    onnx = _onnx()
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for i, formal in enumerate(schema.inputs):
        if formal.option == single and (i >= len(node.inputs) or not node.inputs[i]):
            raise FormatError(f"node {node.name!r} ({node.op_type}): input {i} ({formal.name}) "
                              f"is required, but the node leaves it empty")
    missing = [n for n, a in schema.attributes.items() if a.required and n not in node.attrs]
    if missing:
        raise FormatError(f"node {node.name!r} ({node.op_type}-{node.version}): required "
                          f"attribute(s) {missing} missing")


def _check_attribute_type(attr, node: "NodeView", version: int) -> None:
    """The attribute must be one the operator's schema defines at this version (ORT refuses the
    model otherwise), of the type the schema gives it (the converters read it as that type)."""
    onnx = _onnx()
    names = onnx.AttributeProto.AttributeType
    declared = attr.type
    if declared not in names.values() or declared == onnx.AttributeProto.UNDEFINED:
        raise FormatError(f"node {node.name!r} ({node.op_type}): attribute {attr.name!r} has no "
                          f"valid type (type field {declared})")
    schema = _schema(node.op_type, node.domain, version)
    if schema is None:
        return
    if attr.name not in schema.attributes:
        raise FormatError(f"node {node.name!r} ({node.op_type}-{version}): attribute "
                          f"{attr.name!r} is not defined for this operator version; it has "
                          f"{sorted(schema.attributes)}")
    expected = int(schema.attributes[attr.name].type)
    if expected != declared:
        raise FormatError(f"node {node.name!r} ({node.op_type}): attribute {attr.name!r} is "
                          f"{names.Name(declared)}, the operator takes {names.Name(expected)}")


@functools.lru_cache(maxsize=None)
def _schema(op_type: str, domain: str, version: int):
    """The operator's ONNX schema at this opset version, or None (an operator onnx does not
    define: the importer reports it as unsupported)."""
    onnx = _onnx()
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=version, domain=domain)
    except onnx.defs.SchemaError:
        return None


def _to_array(tensor) -> np.ndarray:
    onnx = _onnx()
    if tensor.data_location == onnx.TensorProto.EXTERNAL:  # to_array would read it from the cwd
        raise FormatError(f"tensor {tensor.name!r} refers to external data that was not loaded")
    dt = numpy_dtype(tensor.data_type)
    if dt is None:
        raise UnsupportedError(f"tensor {tensor.name!r} has element type "
                               f"{onnx_type_name(tensor.data_type)}, which fastrnn does not support")
    if tensor.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) \
            and len(tensor.int32_data):
        bits = np.asarray(tensor.int32_data)
        if bits.min() < 0 or bits.max() > 0xFFFF:  # onnx would wrap them, ORT refuses them
            raise FormatError(f"tensor {tensor.name!r}: its 16-bit values (int32_data) do not "
                              f"fit in 16 bits")
    try:
        arr = onnx.numpy_helper.to_array(tensor)
    except Exception as e:  # noqa: BLE001 - onnx raises assorted types for bad tensors
        raise FormatError(f"tensor {tensor.name!r} cannot be read: {type(e).__name__}: {e}") from None
    expected = tuple(tensor.dims)
    if arr.shape != expected:
        raise FormatError(f"tensor {tensor.name!r} holds {arr.size} values for dims {expected}")
    if dt == np.bool_:  # raw bytes other than 0 and 1 are true, stored as 1 (as ORT does)
        return np.ascontiguousarray(arr, dtype=np.bool_).view(np.uint8) != 0
    return np.asarray(arr, dtype=dt)


class ImportContext:
    """What converters see: constants, known types/shapes, and emit() for plan nodes."""

    def __init__(self, value_types: dict, opsets: dict | None = None):
        self.constants: dict[str, np.ndarray] = {}
        self.fold_budget = FOLD_ELEMENTS  # elements constant folding may still create
        self.nodes: list[PlanNode] = []
        self.value_types = value_types  # name -> (np.dtype | None, shape list | None)
        self._names: set[str] = set()
        self._counter = 0
        self.current: NodeView | None = None
        self.opsets = dict(opsets or {})
        # If branches: the names their values were given in the plan (inside a branch), how many
        # branches deep the conversion is, and where emit() puts nodes while a run-time branch is
        # converted (None: into the plan)
        self.scope: dict[str, str] = {}
        self.depth = 0
        self.capture: list[PlanNode] | None = None

    def reserve(self, names) -> None:
        self._names.update(n for n in names if n)

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def dtype(self, name: str):
        if name in self.constants:
            return self.constants[name].dtype
        info = self.value_types.get(name)
        return None if info is None else info[0]

    def shape(self, name: str):
        if name in self.constants:
            return list(self.constants[name].shape)
        info = self.value_types.get(name)
        return None if info is None else info[1]

    def set_const(self, name: str, value: np.ndarray) -> None:
        self.constants[name] = np.asarray(value)
        self._names.add(name)

    def fresh(self, base: str) -> str:
        """A value name no other value has, from `base`, now taken."""
        name = base
        while name in self._names:
            self._counter += 1
            name = f"{base}_{self._counter}"
        self._names.add(name)
        return name

    def add_const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(f"{self.current.name}/{hint}" if self.current is not None else hint)
        self.set_const(name, value)
        return name

    def emit(self, op: str, inputs, outputs, attrs: dict | None = None, foldable: bool = True,
             graphs: dict | None = None) -> None:
        """Add a plan node; run it now instead when every input is a constant."""
        name = self.current.name if self.current is not None else op
        node = PlanNode(op, inputs, outputs, attrs, name, graphs)
        if self.capture is not None:  # a branch of an If decided at run time: nothing is folded
            self.capture.append(node)
            self.reserve(node.outputs)
            return
        if foldable and all((not i) or i in self.constants for i in node.inputs):
            outs = self._fold(node, [self.constants[i] if i else None for i in node.inputs])
            if outs is not None:
                for out_name, value in zip(node.outputs, outs):
                    if out_name:
                        self.set_const(out_name, np.asarray(value))
                return
        self.nodes.append(node)
        self.reserve(node.outputs)

    def _fold(self, node: PlanNode, ins: list) -> list | None:
        """The node's outputs computed now, or None when that would take more than what is left
        of the folding budget (views of the inputs are free)."""
        if sum(np.size(a) for a in ins if a is not None) > self.fold_budget:
            return None
        try:
            with element_limit(self.fold_budget):
                outs = execute_node(node, ins)
        except SizeLimitError:
            return None
        self.fold_budget -= sum(np.size(o) for o in outs if np.asarray(o).flags.owndata)
        return outs


# ------------------------------------------------------------------ the importer
def _value_info(vi) -> tuple:
    """(numpy dtype or None, shape list or None, onnx elem type) of a ValueInfoProto."""
    t = vi.type
    if t.WhichOneof("value") != "tensor_type":
        return None, None, None
    tt = t.tensor_type
    dt = numpy_dtype(tt.elem_type) if tt.elem_type else None
    shape = None
    if tt.HasField("shape"):
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:  # ORT: a negative size is unknown
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(d.dim_param)
            else:
                shape.append(None)
    return dt, shape, tt.elem_type


def _opsets(model) -> dict:
    opsets = {}
    for o in model.opset_import:
        domain = "" if o.domain in DEFAULT_DOMAINS else o.domain
        opsets[domain] = int(o.version)
    return opsets


def _unsupported_nodes(model, opsets: dict) -> tuple[list[str], list[int]]:
    """Describe every node fastrnn cannot convert, in If branches too; return (problems,
    since_versions of the main graph's nodes)."""
    problems, versions = [], []
    local = {(f.domain, f.name) for f in model.functions}
    for index, n in enumerate(model.graph.node):
        name = node_order.node_name(n, index)
        problem, since = _node_support(n, name, opsets, local)
        versions.append(since)
        if problem:
            problems.append(problem)
        problems.extend(_branch_problems(n, name, opsets, local, 1))
    return problems, versions


_SCAN_HINT = (": fastrnn runs ONNX Loop, not Scan (a recurrent layer runs best as an RNN / GRU / "
              "LSTM node)")
_CONTROL_FLOW_HINTS = {"Scan": _SCAN_HINT}


def _node_support(n, name: str, opsets: dict, local: set) -> tuple[str | None, int]:
    """(what makes the node unsupported or None, its op's since_version or 0)."""
    onnx = _onnx()
    domain = "" if n.domain in DEFAULT_DOMAINS else n.domain
    if (n.domain, n.op_type) in local:
        return f"{n.op_type} (model-local function, domain {n.domain!r}) at node {name!r}", 0
    if domain != "":
        return f"{n.op_type} (domain {n.domain!r}) at node {name!r}", 0
    opset = opsets.get("")
    if opset is None:
        return f"{n.op_type} at node {name!r}: the model imports no default-domain opset", 0
    try:
        since = onnx.defs.get_schema(n.op_type, opset, "").since_version
    except Exception:  # noqa: BLE001 - SchemaError: no such op at this opset
        return f"{n.op_type} (no such ONNX op at opset {opset}) at node {name!r}", 0
    if lookup(n.op_type, since) is None:
        have = supported_versions(n.op_type)
        detail = (f"supported versions: {have}" if have else "not supported at any version")
        return (f"{n.op_type} (opset {opset}, op version {since}; {detail}) at node {name!r}"
                + _CONTROL_FLOW_HINTS.get(n.op_type, ""), since)
    return None, since


def _subgraphs(n) -> list:
    """(attribute name, GraphProto) of an If or Loop node's graph attributes; [] for other nodes
    (their graph attributes are refused as the node is read)."""
    onnx = _onnx()
    if n.op_type not in GRAPHS or n.domain not in DEFAULT_DOMAINS:
        return []
    return [(a.name, a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]


def _check_einsum_equations(graph) -> None:
    """Every Einsum equation parsed (in If branches too) before onnx's shape inference, which
    loops for ever on some malformed ones (a lone '.', as in "i.j->i"), as ONNX Runtime does."""
    onnx = _onnx()
    for n in graph.node:
        if n.op_type == "Einsum" and n.domain in DEFAULT_DOMAINS:
            equation = next((onnx.helper.get_attribute_value(a) for a in n.attribute
                             if a.name == "equation"), None)
            if isinstance(equation, bytes):
                equation = equation.decode("utf-8", "replace")
            conv_ops.parse_equation(equation, len(n.input))
        for _, branch in _subgraphs(n):  # their depth is bounded by _unsupported_nodes
            _check_einsum_equations(branch)


def _branch_problems(n, name: str, opsets: dict, local: set, depth: int) -> list[str]:
    """The unsupported nodes in an If node's branches or a Loop's body (depth: how deep those
    graphs are)."""
    problems = []
    for label, g in _subgraphs(n):
        if depth > MAX_IF_DEPTH:
            return [f"{n.op_type} nested more than {MAX_IF_DEPTH} deep in If branches or Loop "
                    f"bodies at node {name!r}"]
        for index, m in enumerate(g.node):
            inner = f"{name}/{label}/{node_order.node_name(m, index)}"
            problem, _ = _node_support(m, inner, opsets, local)
            if problem:
                problems.append(problem)
            problems.extend(_branch_problems(m, inner, opsets, local, depth + 1))
    return problems


def _infer(model) -> dict:
    """name -> (dtype, shape) from ONNX shape inference; inconsistent shapes raise ShapeError.

    No data propagation (data_prop): it evaluates the graph's own values (a Slice step of INT64_MIN
    made it allocate without bound), and the importer needs no more than types and shapes.
    """
    onnx = _onnx()
    if any(x.domain == "ai.onnx" for x in (*model.graph.node, *model.opset_import)):
        # ORT takes "ai.onnx" for "", onnx's shape inference only where the opset import agrees
        opsets = _opsets(model)
        model, original = onnx.ModelProto(), model
        model.CopyFrom(original)
        for n in model.graph.node:
            if n.domain == "ai.onnx":
                n.domain = ""
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        raise ShapeError(f"the model's shapes or types are inconsistent (ONNX shape inference): "
                         f"{e}") from None
    except ValueError:  # a model over 2 GB cannot be inferred in memory: skip
        return {}
    types = _graph_types(inferred.graph)
    _add_subgraph_types(inferred.graph, types)
    return types


def _graph_types(graph) -> dict:
    types = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        dt, shape, _ = _value_info(vi)
        if dt is not None or shape is not None:
            types[vi.name] = (dt, shape)
    return types


def _add_subgraph_types(graph, types: dict) -> None:
    """The value types of the graph's If branches and Loop bodies (their depth is bounded by
    _unsupported_nodes); a name typed differently in two places is left unknown."""
    for n in graph.node:
        for _, g in _subgraphs(n):
            for name, info in _graph_types(g).items():
                if types.setdefault(name, info) != info:
                    types[name] = (None, None)
            _add_subgraph_types(g, types)


def _check_structure(graph, input_names, outer: frozenset = frozenset(), where: str = "") -> None:
    """Every value is defined once (graph inputs and initializers may share a name: IR < 4
    lists initializers as inputs) and every node reads only values defined before it (node_order
    has sorted the nodes: a value read too early is one defined nowhere); If
    branches and Loop bodies (`where`: the node's name and graph) may also read the `outer`
    values defined before their node, but define no value of an outer name, nor return an outer
    value as it is (ORT refuses both: single static assignment; "add an Identity node").

    onnx.checker is stricter than ONNX Runtime (it rejects, e.g., outputs without a shape), so the
    importer checks what it relies on itself, and shape inference catches inconsistent shapes.
    """
    defined = set()
    for kind, names in (("graph input", input_names),
                        ("initializer", [t.name for t in graph.initializer])):
        seen = set()
        for name in names:
            if name in seen or name in outer:
                raise FormatError(f"{where}{kind} {name!r} defined twice")
            seen.add(name)
        defined |= seen
    for index, n in enumerate(graph.node):
        name = where + node_order.node_name(n, index)
        missing = [i for i in n.input if i and i not in defined and i not in outer]
        if missing:
            raise FormatError(f"node {name!r} ({n.op_type}) reads {missing}, which no graph input, "
                              f"initializer or node defines (truncated graph?)")
        for label, g in _subgraphs(n):
            if n.op_type == LOOP:
                _check_loop_signature(n, g, name)
            if n.op_type == IF and len(g.input):
                raise FormatError(f"node {name!r} (If): its {label} declares inputs "
                                  f"{[i.name for i in g.input]}; If branches take none")
            _check_structure(g, [i.name for i in g.input], outer | defined, f"{name}/{label}/")
        for o in filter(None, n.output):
            if o in defined or o in outer:
                raise FormatError(f"value {o!r} is defined twice (again by node {name!r}; a graph "
                                  f"input, initializer or earlier node output has that name)")
            defined.add(o)
    passed = [o.name for o in graph.output if o.name in outer and o.name not in defined]
    if passed:
        raise FormatError(f"{where[:-1]!r} returns outer value(s) {passed} as they are; ONNX Runtime "
                          f"refuses that (an Identity node in the branch is what it asks for)")
    missing = [o.name for o in graph.output if o.name not in defined]
    if missing:
        raise FormatError(f"{'graph' if not where else where[:-1]} output(s) {missing} are not "
                          f"produced by any node or initializer")


def _check_loop_signature(n, body, name: str) -> None:
    """The Loop's body takes the iteration number, the condition and the N loop-carried values,
    and gives the condition, the N values and the node's other outputs (its scan outputs)."""
    onnx = _onnx()
    initial = list(n.input[2:])
    count = len(initial)
    where = f"node {name!r} (Loop)"
    if len(body.input) != 2 + count:
        raise FormatError(f"{where}: its body takes {len(body.input)} input(s); a Loop of {count} "
                          f"loop-carried value(s) gives it {2 + count}: the iteration number, the "
                          f"condition and the values")
    if len(body.output) < 1 + count or len(body.output) - 1 != len(n.output):
        raise FormatError(f"{where}: its body gives {len(body.output)} output(s); a Loop of "
                          f"{count} loop-carried value(s) and {len(n.output)} output(s) needs "
                          f"1 + {len(n.output)}: the condition, the values and the scan outputs")
    if not all(initial):
        raise FormatError(f"{where}: a loop-carried value's initial input is empty")
    for what, vi, elem in (("input 0 (the iteration number)", body.input[0], onnx.TensorProto.INT64),
                           ("input 1 (the condition)", body.input[1], onnx.TensorProto.BOOL),
                           ("output 0 (the condition)", body.output[0], onnx.TensorProto.BOOL)):
        declared = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        if declared and declared != elem:
            raise FormatError(f"{where}: its body's {what} {vi.name!r} is "
                              f"{onnx_type_name(declared)}, ONNX Loop takes {onnx_type_name(elem)}")


def _named(e: FastRNNError, node: NodeView) -> FastRNNError:
    """The converter's error, naming the ONNX node once: a plan node that failed as it was folded
    (named after the ONNX node) already said "node 'name' (PlanOp)"; what followed is kept."""
    failure = getattr(e, "node_failure", None)
    if failure is None:
        return type(e)(f"node {node.name!r} ({node.op_type}-{node.version}): {e}")
    op = f"{node.op_type}-{node.version}"
    if failure.node.op != node.op_type:  # e.g. Scatter run as ScatterElements
        op += f", as {failure.node.op}"
    return type(e)(f"node {node.name!r} ({op}){failure.detail}")


def _convert_node(ctx: ImportContext, node: NodeView) -> None:
    ctx.current = node
    conv = lookup(node.op_type, node.version)
    try:
        conv(ctx, node)
    except FastRNNError as e:
        raise _named(e, node) from (e.__cause__ if hasattr(e, "node_failure") else e)


# ------------------------------------------------------------------ If
def _convert_branch(ctx: ImportContext, graph, prefix: str) -> list[str]:
    """Convert an If branch's nodes where the If is (into the plan, or into ctx.capture), its
    initializers and values renamed apart from every other value (so a branch may reuse an outer
    name); returns the names its outputs have now (an outer value's own name)."""
    onnx = _onnx()
    if ctx.depth >= MAX_IF_DEPTH:
        raise UnsupportedError(f"If nested more than {MAX_IF_DEPTH} deep")
    if len(graph.sparse_initializer):
        raise UnsupportedError(f"{prefix}: sparse initializers are not supported")
    outer_scope, outer_node = ctx.scope, ctx.current
    scope = ctx.scope = dict(outer_scope)
    ctx.depth += 1
    try:
        for t in graph.initializer:
            scope[t.name] = name = ctx.fresh(f"{prefix}/{t.name}")
            ctx.set_const(name, _to_array(t))
            ctx.fold_budget += ctx.constants[name].size
        for index, proto in enumerate(graph.node):
            # supported (_unsupported_nodes looked into the branches): a default-domain op
            since = onnx.defs.get_schema(proto.op_type, ctx.opsets[""], "").since_version
            view = NodeView(proto, index, since)
            view.name = f"{prefix}/{view.name}"
            view.inputs = [scope.get(i, i) if i else "" for i in view.inputs]
            for o in filter(None, view.outputs):
                scope[o] = ctx.fresh(f"{prefix}/{o}")
            view.outputs = [scope[o] if o else "" for o in view.outputs]
            _convert_node(ctx, view)
        return [scope.get(o.name, o.name) for o in graph.output]
    finally:
        ctx.scope, ctx.current = outer_scope, outer_node
        ctx.depth -= 1


@converter("If", 1, 11, 13, 16, 19, 21, 23, 24, 25)
def _if(ctx: ImportContext, node: NodeView) -> None:
    """A condition known at import (folded): the taken branch is inlined. Otherwise each branch
    must be a single node a kernel runs (the legacy exporter's `x.squeeze(dim)` on a size it
    cannot prove is 1: Squeeze in one branch, Identity in the other); the plan's Conditional node
    runs the one the condition picks."""
    branches = [(label, node.attrs[label]) for label in IF_BRANCHES]
    for label, g in branches:
        if len(g.output) != len(node.outputs):
            raise FormatError(f"its {label} has {len(g.output)} output(s), the node "
                              f"{len(node.outputs)}")
    flag = ctx.const(node.inputs[0])
    if flag is not None:
        if flag.size != 1:
            raise ShapeError(f"the condition must hold exactly one value, it has shape "
                             f"{list(flag.shape)}")
        label, graph = branches[0] if bool(flag.reshape(-1)[0]) else branches[1]
        sources = _convert_branch(ctx, graph, f"{node.name}/{label}")
        for out, src in zip(node.outputs, sources):
            if out:
                ctx.emit("Identity", [src], [out])
        return
    inputs = [node.inputs[0]]
    try:
        attrs = {label[:4]: _run_time_branch(ctx, node, label, g, inputs) for label, g in branches}
    except UnsupportedError:  # branches of more than one kernel node: run as nested plans
        _nested_if(ctx, node, branches)
        return
    ctx.emit(CONDITIONAL, inputs, node.outputs, attrs)


def _nested_if(ctx: ImportContext, node: NodeView, branches: list) -> None:
    """An If on a run-time condition whose branches are nested plans, both taking the values
    either reads from the enclosing scopes."""
    free = _free_names(branches[0][1])
    free += [name for name in _free_names(branches[1][1]) if name not in free]
    graphs, outer = {}, []
    for label, g in branches:
        graphs[label], outer = _subplan(ctx, g, f"{node.name}/{label}", [], free)
    ctx.emit(IF, [node.inputs[0], *outer], node.outputs, foldable=False, graphs=graphs)


def _free_names(graph) -> list[str]:
    """The names the graph (its nodes and their own sub-graphs) reads from enclosing scopes, in
    the order first read."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    free: list[str] = []

    def read(name: str) -> None:
        if name and name not in defined and name not in free:
            free.append(name)

    for n in graph.node:
        for name in n.input:
            read(name)
        for _, g in _subgraphs(n):
            for name in _free_names(g):
                read(name)
        defined.update(filter(None, n.output))
    for o in graph.output:
        read(o.name)
    return free


def _subplan(ctx: ImportContext, graph, where: str, formal: list[ValueInfo],
             free: list[str]) -> tuple[OnnxPlan, list[str]]:
    """The sub-graph as a nested plan, converted like the model's graph: the `free` names it
    reads from the enclosing scopes are constants where they are constant there (folded into
    it), else inputs after the `formal` ones; returns it and the plan names of those inputs."""
    if ctx.depth >= MAX_IF_DEPTH:
        raise UnsupportedError(f"If or Loop nested more than {MAX_IF_DEPTH} deep")
    if len(graph.sparse_initializer):
        raise UnsupportedError(f"{where}: sparse initializers are not supported")
    onnx = _onnx()
    inner = ImportContext(ctx.value_types, ctx.opsets)
    inner.depth, inner.fold_budget = ctx.depth + 1, ctx.fold_budget
    captured, outer = [], []
    for name in free:
        source = ctx.scope.get(name, name)
        value = ctx.const(source)
        if value is not None:
            inner.set_const(name, value)
        else:
            dt = ctx.dtype(source)
            captured.append(ValueInfo(name, None if dt is None else str(np.dtype(dt)), None))
            outer.append(source)
    for t in graph.initializer:
        inner.set_const(t.name, _to_array(t))
        inner.fold_budget += inner.constants[t.name].size
    inputs = formal + captured
    inner.reserve(v.name for v in inputs)
    inner.reserve(n for node in graph.node for n in list(node.input) + list(node.output))
    for index, proto in enumerate(graph.node):
        # supported (_unsupported_nodes looked into the sub-graphs): a default-domain op
        since = onnx.defs.get_schema(proto.op_type, ctx.opsets[""], "").since_version
        view = NodeView(proto, index, since)
        view.name = f"{where}/{view.name}"
        _convert_node(inner, view)
    ctx.fold_budget = inner.fold_budget
    outputs = [_output_info(vi, inner, merged=True) for vi in graph.output]
    _drop_zero_states(inner.nodes, inner.constants)
    nodes, constants = _prune(inner.nodes, inner.constants, [v.name for v in outputs])
    return OnnxPlan(inputs, outputs, nodes, constants), outer


def _output_info(vi, ctx: ImportContext, merged: bool = False) -> ValueInfo:
    """A graph output as declared, its dtype or shape inferred where the declaration lacks it;
    `merged`: each size the declaration leaves open inferred too, as ONNX Runtime's graph has it
    (it gives a Loop's empty scan output that shape)."""
    dt, shape, _ = _value_info(vi)
    if dt is None:
        dt = ctx.dtype(vi.name)
    inferred = ctx.value_types.get(vi.name, (None, None))[1]
    if shape is None:
        shape = inferred
    elif merged and inferred is not None and len(inferred) == len(shape):
        shape = [d if isinstance(d, int) or not isinstance(i, int) else i
                 for d, i in zip(shape, inferred)]
    return ValueInfo(vi.name, None if dt is None else str(np.dtype(dt)), shape)


@converter("Loop", 1, 11, 13, 16, 19, 21, 23, 24, 25)
def _loop(ctx: ImportContext, node: NodeView) -> None:
    """A Loop node whose body is a nested plan (control_flow runs it as ONNX Runtime does)."""
    body = node.attrs["body"]
    trip, cond, *initial = node.inputs + [""] * (2 - len(node.inputs))
    n = len(initial)
    formal = []
    for vi in body.input:
        dt, _, _ = _value_info(vi)
        formal.append(ValueInfo(vi.name, None if dt is None else str(np.dtype(dt)), None))
    plan, outer = _subplan(ctx, body, f"{node.name}/body", formal, _free_names(body))
    untyped = [v.name for v in plan.output_infos[1 + n:] if v.dtype is None]
    if untyped:
        raise FormatError(f"its body's scan output(s) {untyped} have no known type")
    ctx.emit(LOOP, [trip, cond, *initial, *outer], node.outputs, {"carried": n},
             foldable=False, graphs={"body": plan})


def _run_time_branch(ctx: ImportContext, node: NodeView, label: str, graph, inputs: list) -> dict:
    """The branch as one kernel call over `inputs` (names it reads are appended), as
    kernels.CONDITIONAL takes it; UnsupportedError when it is not a single node a kernel runs."""
    captured: list[PlanNode] = []
    before, ctx.capture = ctx.capture, captured
    try:
        sources = _convert_branch(ctx, graph, f"{node.name}/{label}")
    finally:
        ctx.capture = before
    alias: dict[str, str] = {}  # Identity nodes (as an inlined inner If leaves) run nothing
    steps = []
    for step in captured:
        step.inputs = [alias.get(i, i) for i in step.inputs]
        if step.op == "Identity" and len(step.outputs) == 1 and step.outputs[0] and step.inputs[0]:
            alias[step.outputs[0]] = step.inputs[0]
        else:
            steps.append(step)
    captured, sources = steps, [alias.get(s, s) for s in sources]
    if not captured and len(sources) == 1:  # it passes a value on: an outer one or a constant
        captured = [PlanNode("Identity", sources, sources)]
    why = None
    if len(captured) != 1:
        ops = [p.op for p in captured]
        why = f"its {label} runs {len(captured)} nodes {ops}" if captured else \
            f"its {label} passes {len(sources)} values on unchanged"
    elif captured[0].op not in KERNELS or captured[0].op == CONDITIONAL:
        why = f"its {label} runs a {captured[0].op} node (a recurrent layer or a run-time If)"
    elif not all(s in captured[0].outputs for s in sources):
        why = f"its {label} returns values its node does not compute"
    if why is not None:
        raise UnsupportedError(f"an If whose condition is not known at import is supported when "
                               f"its branches are a single supported node each; {why}")
    (step,) = captured

    def index(name: str) -> int:
        if not name:
            return -1
        if name not in inputs:
            inputs.append(name)
        return inputs.index(name)

    return {"op": step.op, "attrs": step.attrs, "inputs": [index(i) for i in step.inputs],
            "n_out": len(step.outputs), "outputs": [step.outputs.index(s) for s in sources]}


# Nodes a model's local functions may inline to: a few bytes of functions that each call the next
# twice make 2**depth nodes (depth 18: 19 s and 0.9 GB in onnx's inliner).
MAX_INLINED_NODES = 100_000
MAX_FUNCTION_NESTING = 100  # functions calling functions (counted by recursion here)


def _check_inlined_size(model) -> None:
    """Refuse a model whose local functions would inline to more than MAX_INLINED_NODES nodes,
    or that call themselves, counted before onnx's inliner builds them."""
    functions = {(f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions}
    sizes: dict[tuple, int] = {}

    def count(nodes, calling: tuple) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type, getattr(node, "overload", ""))
            if key not in functions:
                total += 1
            elif key in calling:
                raise UnsupportedError(f"local function {key[1]!r} (domain {key[0]!r}) calls "
                                       f"itself; ONNX functions cannot recurse")
            elif len(calling) >= MAX_FUNCTION_NESTING:
                raise UnsupportedError(f"the model's local functions call each other more than "
                                       f"{MAX_FUNCTION_NESTING} deep")
            else:
                if key not in sizes:
                    sizes[key] = count(functions[key].node, calling + (key,))
                total += sizes[key]
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    total += count(sub.node, calling)
            if total > MAX_INLINED_NODES:
                raise UnsupportedError(f"the model's local functions inline to more than "
                                       f"{MAX_INLINED_NODES} nodes")
        return total

    count(model.graph.node, ())


def convert_model(model) -> OnnxPlan:
    onnx = _onnx()
    if model.functions:
        _check_inlined_size(model)
        import onnx.inliner  # not imported by `import onnx`

        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception:  # noqa: BLE001 - left for the unsupported-op report
            pass
    # before anything that reads the nodes in their order: the support check, whose operator
    # versions follow it, the structure check and shape inference
    model = node_order.topologically_sorted(model)
    graph = model.graph
    if len(graph.sparse_initializer):
        raise UnsupportedError("sparse initializers are not supported")
    opsets = _opsets(model)
    newest = onnx.defs.onnx_opset_version()
    if opsets.get("", 0) > newest:
        raise UnsupportedError(f"the model imports opset {opsets['']}; the installed onnx knows "
                               f"opsets up to {newest}")
    problems, versions = _unsupported_nodes(model, opsets)
    if problems:
        raise UnsupportedError(f"the model uses {len(problems)} node(s) fastrnn cannot run:\n  "
                               + "\n  ".join(problems))
    external = _external_refs(model)
    if external:
        raise FormatError(f"tensor(s) {external[:5]} refer to external data that was not loaded; "
                          f"pass the model's path so the data beside it is read")
    _check_structure(graph, [vi.name for vi in graph.input])
    views = [NodeView(proto, index, version)
             for index, (proto, version) in enumerate(zip(graph.node, versions))]
    _check_einsum_equations(graph)
    value_types = _infer(model)

    ctx = ImportContext(value_types, opsets)
    init_names = set()
    for t in graph.initializer:
        ctx.set_const(t.name, _to_array(t))
        ctx.fold_budget += ctx.constants[t.name].size
        init_names.add(t.name)
    inputs = []
    for vi in graph.input:
        if vi.name in init_names:
            continue  # an initializer listed as input (IR < 4 style): a constant here
        dt, shape, elem = _value_info(vi)
        if dt is None:
            raise UnsupportedError(f"graph input {vi.name!r} has type "
                                   f"{onnx_type_name(elem) if elem else 'non-tensor'}, fastrnn "
                                   f"supports numeric tensors only")
        inputs.append(ValueInfo(vi.name, str(dt), shape))
    ctx.reserve(v.name for v in inputs)
    ctx.reserve(n for node in graph.node for n in list(node.input) + list(node.output))

    for node in views:
        _convert_node(ctx, node)
    ctx.current = None

    outputs = [_output_info(vi, ctx) for vi in graph.output]

    _drop_zero_states(ctx.nodes, ctx.constants)
    nodes, constants = _prune(ctx.nodes, ctx.constants, [v.name for v in outputs])
    source = {
        "producer_name": model.producer_name, "producer_version": model.producer_version,
        "ir_version": int(model.ir_version), "opset": opsets.get("", 0),
        "graph_name": graph.name,
    }
    return OnnxPlan(inputs, outputs, nodes, constants, source)


# ops whose first output is all zeros when their first input is
_ZERO_PRESERVING = {"Expand", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Identity",
                    "Cast", "CastLike", "Flatten", "Tile", "Gather", "Split"}


def _drop_zero_states(nodes: list, constants: dict) -> None:
    """Initial states that are all zeros (the exporters build them from the input's shape with
    Shape / Gather / Concat / ConstantOfShape / Expand / Slice) become absent inputs: the recurrent
    op then starts from zeros itself, and pruning drops the subgraph that built them."""
    zero = {name for name, arr in constants.items()
            if arr.dtype.kind in "fiub" and arr.size and not np.any(arr)}
    for node in nodes:
        first = node.inputs[0] if node.inputs else ""
        if node.op == "ConstantOfShape" and len(node.inputs) > 1 and node.inputs[1] in zero:
            zero.add(node.outputs[0])
        elif node.op in _ZERO_PRESERVING and first in zero:
            zero.update(o for o in (node.outputs if node.op == "Split" else node.outputs[:1]) if o)
        elif node.op == "Concat" and node.inputs and all(i in zero for i in node.inputs):
            zero.add(node.outputs[0])
        elif node.op == recurrent_node.OP:
            for slot in (2, 3):  # initial_h, initial_c
                if node.inputs[slot] in zero:
                    node.inputs[slot] = ""


def _prune(nodes: list, constants: dict, outputs: list[str]) -> tuple[list, dict]:
    """Drop nodes and constants no graph output depends on."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o and o in needed for o in node.outputs):
            keep.append(node)
            needed.update(i for i in node.inputs if i)
            if node.op == recurrent_node.OP and node.attrs.get("params"):
                for entry in node.attrs["params"]:
                    needed.update(n for n in entry.values() if n)
    keep.reverse()
    return keep, {k: v for k, v in constants.items() if k in needed}


def from_onnx(src) -> OnnxPlan:
    """Convert an ONNX model (path, bytes or onnx.ModelProto) into a runnable fastrnn plan.

    The result has onnxruntime's session interface: run(output_names, feeds), get_inputs(),
    get_outputs(); fastrnn.save() writes it, and it loads and runs without onnx installed.
    """
    return convert_model(load_model(src))
