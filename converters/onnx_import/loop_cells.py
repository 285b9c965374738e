"""A Loop whose body is one step of a recurrent cell, run by fastrnn's kernel instead of node by node.

onnx-free. tf2onnx leaves a Keras layer it cannot rewrite into an ONNX RNN / GRU / LSTM node (Keras 3
GRU, GRU(reset_after=False), SimpleRNN, LSTM with hard_sigmoid, any layer fed a mask) as a Loop over
the Keras cell: each iteration reads x_t = Gather(X, t) (and a mask's m_t), computes the new state
from it and the carried state, counts t on and tests t < T. ``recognise`` finds such a body and
what it computes, and answers the Loop's fast path: the whole sequence in one kernel call.

What the body computes is not read off its node pattern (exporters vary it) but found and checked:
- its nodes split into the invariant ones (weights and what is computed from them alone, evaluated
  once here), the control ones (the counters and the condition, elementwise on scalars) and the
  cell ones (from x_t, m_t and the carried states only); a node mixing control and cell values,
  or reading anything else, leaves the Loop as it is;
- the cell is guessed from the invariant matrices' shapes (kernel [I, G*H], recurrent kernel
  [H, G*H], biases) with Keras's gate orders and activations, and each carried state's role (h,
  c, with a mask the last output), and each guess is checked against the body itself on random
  inputs at several scales (cell_probes): the first whose step matches the body's (float64
  reference against the body's values to within their rounding; with a mask, the new states in
  the rows it takes and the old ones in the others) is the cell. A body that matches none stays
  a Loop.
At run time the control nodes run once over the vector of all iterations, which gives the trip
count; a sequence that ends somewhere the kernel cannot take (no iteration, an index out of X,
a time counter that starts outside X) returns None, and the Loop runs node by node instead.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from fastrnn.gates import reorder_gates

from . import cell_probes, recurrent_node
from .kernels import element_limit

# ops the control part may use: elementwise, so that one call over every iteration's values
# gives each iteration's result
_ELEMENTWISE = {"Cast", "CastLike", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal",
                "And", "Or", "Not", "Xor", "Add", "Sub", "Mul", "Identity", "Min", "Max"}
_NOT_PURE = ("Random", "Bernoulli", "Multinomial")
_GATES = {1: "RNN", 3: "GRU", 4: "LSTM"}
_PROBE_ROWS = 3
_COUNTS_KEPT = 64  # trip counts remembered per Loop (one per sequence length, typically)
_ELEMENTS_AT_LEAST = 1 << 20  # the element limit of what the analysis computes, at least
# a body is a file's: however many matrices it holds, the guesses checked are bounded (a Keras
# cell's body matches within its first 40 guesses or so)
_MAX_GUESSES = 4096
_MAX_CANDIDATES = 8  # matrices of one role (kernel, recurrent kernel, bias vector) looked at


def recognise(node, outer_constants) -> "LoopedCell | None":
    """The Loop plan node's fast path, or None when its body is not a recognised cell step."""
    # the analysis runs the body's nodes as a plan is built or loaded (a saved plan is a file from
    # anywhere): no tensor it makes may be much larger than the values the Loop is given
    given = list(node.graphs["body"].constants.values()) + [
        outer_constants[name] for name in node.inputs if name in outer_constants]
    limit = max([_ELEMENTS_AT_LEAST] + [2 * np.size(value) for value in given])
    try:
        with element_limit(limit):
            return _Analysis(node, outer_constants).result()
    except Exception:  # noqa: BLE001 - _NotACell, or a body the analysis cannot evaluate: the
        return None    # Loop runs node by node, and reports any error of its own when it runs


class _NotACell(Exception):
    pass


def _require(condition: bool) -> None:
    if not condition:
        raise _NotACell


class _Analysis:
    """The body taken apart: which values are invariant (and their values), which nodes are
    control and which cell, where x_t, the time counter and the states are."""

    def __init__(self, node, outer_constants):
        body = node.graphs["body"]
        self.body = body
        self.body_constants = body.constants
        self.n = n = node.attrs["carried"]
        formal = [v.name for v in body.input_infos]
        outs = [v.name for v in body.output_infos]
        _require(len(formal) >= 2 + n and len(outs) >= 1 + n and len(node.inputs) == len(formal))
        self.outs = outs
        self.counter, self.cond_in = formal[0], formal[1]
        self.carried = formal[2:2 + n]
        self.passthrough = [k for k, name in enumerate(self.carried) if outs[1 + k] == name]
        # the values that stay the same in every iteration: known now (constants), or only
        # when the Loop runs (slot in the Loop node's inputs)
        self.dtypes = {v.name: v.dtype for v in body.input_infos}
        self.invariant = dict(self.body_constants)
        self.runtime: dict[str, int] = {}
        outer_slots = [2 + k for k in self.passthrough] + list(range(2 + n, len(formal)))
        for slot in outer_slots:
            value = outer_constants.get(node.inputs[slot]) if node.inputs[slot] else None
            if value is not None:
                self.invariant[formal[slot]] = value
            else:
                self.runtime[formal[slot]] = slot
        self._split_nodes()

    def _split_nodes(self) -> None:
        from .control_flow import GRAPHS
        from .plan import execute_node

        gathers = [nd for nd in self.body.nodes if nd.op == "Gather" and len(nd.inputs) == 2
                   and nd.inputs[0] in self.runtime and self.runtime[nd.inputs[0]] >= 2 + self.n]
        _require(all(int(nd.attrs.get("axis", 0)) == 0 for nd in gathers))
        masks = [nd for nd in gathers if self.dtypes.get(nd.inputs[0]) == "bool"]
        inputs = [nd for nd in gathers if nd not in masks]
        _require(len(inputs) == 1 and len(masks) <= 1)
        self.gather, self.mask_gather = inputs[0], (masks[0] if masks else None)
        self.x_name, index = self.gather.inputs
        self.x_slot = self.runtime.pop(self.x_name)
        self.mask_slot = None
        if self.mask_gather is not None:
            _require(self.mask_gather.inputs[1] == index)
            self.mask_slot = self.runtime.pop(self.mask_gather.inputs[0])
        if index == self.counter:
            self.time = None
        else:
            _require(index in self.carried)
            self.time = self.carried.index(index)
            self._check_time_step()
        self.states = [k for k in range(self.n) if k not in self.passthrough and k != self.time]
        _require(1 <= len(self.states) <= (3 if self.mask_gather is not None else 2))
        kind = {name: "runtime" for name in self.runtime}  # read by either part
        kind.update({self.counter: "control", self.cond_in: "control"})
        if self.time is not None:
            kind[self.carried[self.time]] = "control"
        kind[self.gather.outputs[0]] = "cell"
        if self.mask_gather is not None:
            kind[self.mask_gather.outputs[0]] = "cell"
        kind.update({self.carried[k]: "cell" for k in self.states})
        self.control, self.cell = [], []
        for nd in self.body.nodes:
            if nd is self.gather or nd is self.mask_gather:
                continue
            _require(nd.op not in GRAPHS and not nd.op.startswith(_NOT_PURE))
            kinds = {kind.get(name, "other") for name in nd.inputs
                     if name and name not in self.invariant}
            if not kinds:  # computed from invariant values alone: once, here
                outs = execute_node(nd, [self.invariant.get(i) if i else None for i in nd.inputs])
                self.invariant.update((name, value)
                                      for name, value in zip(nd.outputs, outs) if name)
                continue
            core = kinds - {"runtime"}
            _require(core <= {"control", "cell"} and len(core) <= 1)
            which = core.pop() if core else "control"
            (self.control if which == "control" else self.cell).append(nd)
            kind.update((name, which) for name in nd.outputs if name)
        for nd in self.control:
            _require(nd.op in _ELEMENTWISE and all(
                np.size(self.invariant[i]) == 1 for i in nd.inputs if i in self.invariant))
        _require(self.outs[0] in self.invariant or kind.get(self.outs[0]) == "control")
        _require(all(kind.get(self.outs[1 + k]) == "cell" for k in self.states))
        # the values from outside the control part reads (scalars at run time), and those the
        # cell reads: Keras's zeros for the outputs at masked steps, zeros at run time too
        read_by = {part: {i for nd in nodes for i in nd.inputs if i in self.runtime}
                   for part, nodes in (("control", self.control), ("cell", self.cell))}
        self.control_runtime = {name: self.runtime[name] for name in sorted(read_by["control"])}
        self.zero_names = sorted(read_by["cell"])
        self.cell_zeros = [self.runtime[name] for name in self.zero_names]
        _require(not self.cell_zeros or self.mask_gather is not None)
        aliases = {nd.outputs[0]: nd.inputs[0] for nd in self.cell
                   if nd.op == "Identity" and nd.outputs and nd.inputs}

        def resolve(name: str) -> str:
            while name in aliases:
                name = aliases[name]
            return name
        state_outs = [resolve(self.outs[1 + k]) for k in self.states]
        self.scans = []  # per scan output, the state (index in self.states) it stacks
        for name in self.outs[1 + self.n:]:
            _require(resolve(name) in state_outs)
            self.scans.append(state_outs.index(resolve(name)))

    def _check_time_step(self) -> None:
        """The time counter's next value is itself plus a scalar 1."""
        name, nxt = self.carried[self.time], self.outs[1 + self.time]
        adds = [nd for nd in self.body.nodes if nxt in nd.outputs]
        _require(len(adds) == 1 and adds[0].op == "Add" and name in adds[0].inputs)
        other = [i for i in adds[0].inputs if i != name]
        _require(len(other) == 1 and other[0] in self.body_constants)
        one = np.asarray(self.body_constants[other[0]])
        _require(one.ndim == 0 and one.dtype.kind in "iu" and int(one) == 1)

    # ------------------------------------------------------------------ the cell
    def result(self) -> "LoopedCell":
        _require(self.dtypes.get(self.x_name) in ("float32", "float64"))
        self.dtype = np.dtype(self.dtypes[self.x_name])
        matrices = [(name, v) for name, v in self.invariant.items()
                    if isinstance(v, np.ndarray) and v.dtype == self.dtype and v.ndim in (1, 2)]
        self.probes: dict[tuple, list | None] = {}  # (I, H) -> probes
        self.reordered: dict[tuple, tuple] = {}  # the guesses' W and R, per pair of matrices
        self.products: dict[tuple, np.ndarray] = {}  # a probe's x @ W.T or h @ R.T (or |.|s)
        self.mask_trailing: dict[tuple, tuple] = {}  # (I, H) -> the mask's shape past [N]
        masked = self.mask_gather is not None
        guesses = _guesses(matrices, len(self.states), masked, {nd.op for nd in self.cell},
                           self._multiplied())
        for spec in itertools.islice(guesses, _MAX_GUESSES):
            if self._matches(spec):
                return LoopedCell(self, spec)
        raise _NotACell

    def _probe(self, I: int, H: int, rng, scale: float) -> tuple:
        """Random x_t and states of `scale` (and a mask that takes some rows and leaves
        others), and the body's new states from them."""
        values = dict(self.invariant)
        x = cell_probes.inputs(rng, (_PROBE_ROWS, I), scale, self.dtype, "x")
        values[self.gather.outputs[0]] = x
        states = [cell_probes.inputs(rng, (_PROBE_ROWS, H), scale, self.dtype, "state")
                  for _ in self.states]
        values.update(zip((self.carried[k] for k in self.states), states))
        values.update((name, np.zeros((_PROBE_ROWS, H), self.dtype)) for name in self.zero_names)
        taken = np.arange(_PROBE_ROWS) % 2 == 0 if self.mask_gather is not None else None
        if taken is None:
            return x, states, taken, self._run_cell(values)
        for trailing in ((1,), ()):  # Keras's mask per step: [N, 1] (or [N])
            values[self.mask_gather.outputs[0]] = taken.reshape((_PROBE_ROWS,) + trailing)
            try:
                out = self._run_cell(dict(values))
            except Exception:  # noqa: BLE001 - not this shape of mask
                continue
            self.mask_trailing[(I, H)] = trailing
            return x, states, taken, out
        raise _NotACell

    def _run_cell(self, values: dict) -> list:
        from .plan import execute_node

        with np.errstate(all="ignore"):
            for nd in self.cell:
                outs = execute_node(nd, [values.get(i) if i else None for i in nd.inputs])
                values.update((name, value) for name, value in zip(nd.outputs, outs) if name)
        return [np.asarray(values[self.outs[1 + k]]) for k in self.states]

    def _matches(self, spec) -> bool:
        """Whether the guess's step gives the body's new states on every probe: the cell's new
        h (and c) where the mask takes the row, the state as it was where it does not, and the
        output state (a masked layer's last output) the new h or as it was."""
        key = (spec["kernel"].shape[0], spec["H"])
        if key not in self.probes:
            rng = np.random.default_rng(20261127)
            try:
                self.probes[key] = [self._probe(*key, rng, scale)
                                    for scale in cell_probes.SCALES]
            except Exception:  # noqa: BLE001 - the body does not take inputs of these sizes
                self.probes[key] = None
        if self.probes[key] is None:
            return False
        W, R, B = _onnx_weights(spec, self.reordered)
        roles = spec["roles"]
        for x, states, taken, body_out in self.probes[key]:
            given = dict(zip(roles, states))
            h = given["h"]
            products = (self._product(x, W), self._product(h, R))
            new = dict(zip(("h", "c"), reference_step(spec, R, B, products, h, given.get("c"))))
            new["out"] = new["zeroed"] = new["h"]
            wants = []
            for role, old in zip(roles, states):
                if role == "zeroed":
                    old = np.zeros_like(old)
                wants.append(new[role] if taken is None
                             else np.where(taken[:, None], new[role], old))
            terms = (self._product(x, W, absolute=True) + self._product(h, R, absolute=True)
                     + np.abs(B[:B.size // 2]) + np.abs(B[B.size // 2:]))
            gated = cell_probes.gated_state(spec["G"], h, given.get("c"))
            if not cell_probes.steps_agree(body_out, wants, terms, spec["G"], gated):
                return False
        return True


    def _multiplied(self) -> dict:
        """Per invariant matrix a MatMul multiplies, what its other operand comes from: "x"
        (x_t), "h" (the carried states), or both."""
        sources = {self.gather.outputs[0]: {"x"}}
        sources.update((self.carried[k], {"h"}) for k in self.states)
        multiplied: dict[str, set] = {}
        for nd in self.cell:
            came = set().union(*(sources.get(i, set()) for i in nd.inputs if i))
            sources.update((o, came) for o in nd.outputs if o)
            if nd.op == "MatMul" and len(nd.inputs) == 2 and nd.inputs[1] in self.invariant:
                multiplied.setdefault(nd.inputs[1], set()).update(sources.get(nd.inputs[0], ()))
        return multiplied

    def _product(self, a, matrix, absolute: bool = False):
        """a @ matrix.T in float64 (|a| @ |matrix|.T when `absolute`), for every guess on the
        same operands once (a and matrix live as long as the analysis: their ids stay theirs)."""
        key = (id(a), id(matrix), absolute)
        if key not in self.products:
            a = a.astype(np.float64)
            self.products[key] = np.abs(a) @ np.abs(matrix.T) if absolute else a @ matrix.T
        return self.products[key]


def _guesses(matrices, state_count: int, masked: bool, ops: set, multiplied: dict):
    """Candidate cells, most likely first: gate count and sizes from the invariant matrices'
    shapes (a matrix the body multiplies x_t by first as the kernel, one it multiplies the state
    by first as the recurrent kernel), activations from the body's ops, and the role of each
    carried state (h, c, and with a mask the last output: kept at masked steps, or zeroed
    there)."""
    squashes, outs = activation_candidates(ops)
    for G in (3, 1, 4):
        names = ("h", "c") if G == 4 else ("h",)
        lasts = ("out", "zeroed") if masked else (None,)
        if len(names) + masked != state_count:
            continue
        recurrent = sorted(((n, m) for n, m in matrices
                            if m.ndim == 2 and m.shape[1] == G * m.shape[0]),
                           key=lambda item: "h" not in multiplied.get(item[0], ()))
        kernels = sorted(((n, m) for n, m in matrices if m.ndim == 2 and m.shape[1] % G == 0),
                         key=lambda item: "x" not in multiplied.get(item[0], ()))
        for (r_name, rk), (k_name, kernel) in itertools.product(recurrent[:_MAX_CANDIDATES],
                                                                 kernels[:4 * _MAX_CANDIDATES]):
            H = rk.shape[0]
            if k_name == r_name or kernel.ndim != 2 or kernel.shape[1] != G * H:
                continue
            roles_each = [r for last in lasts
                          for r in itertools.permutations(names + ((last,) if last else ()))]
            for bias, variant, roles in itertools.product(
                    _biases(matrices, G, H), list(_variants(G, squashes, outs)), roles_each):
                yield dict(G=G, H=H, kernel=kernel, recurrent=rk, bias=bias, roles=roles,
                           **variant)


def activation_candidates(ops: set) -> tuple[list, list]:
    """(the gates' squashing activations, the cell input's and output's) that a Keras cell whose
    step has `ops` may apply, most likely first: sigmoid, and Keras 2's and Keras 3's
    hard_sigmoid (0.2 x + 0.5 and x / 6 + 0.5, clipped to [0, 1]; written with Clip, Min / Max,
    Relu, Div or Mul as well as HardSigmoid); tanh and relu."""
    squashes = [("sigmoid", 0.0, 0.0)] if "Sigmoid" in ops else []
    if ops & {"HardSigmoid", "Clip", "Min", "Max", "Relu", "Div", "Mul"}:
        squashes += [("hardsigmoid", 0.2, 0.5), ("hardsigmoid", 1 / 6, 0.5)]
    outs = ([("tanh", 0.0, 0.0)] if "Tanh" in ops else []) + \
        ([("relu", 0.0, 0.0)] if ops & {"Relu", "Max", "Clip"} else [])
    return squashes, outs


def _biases(matrices, G: int, H: int) -> list:
    """Candidate (input bias, recurrent bias) pairs, either None: a GRU's [2, G*H] (Keras's
    reset_after bias) or two [G*H] vectors (the same bias unstacked); a [G*H] vector (the input
    bias); none."""
    vectors = [m for _, m in matrices if m.shape == (G * H,)][:_MAX_CANDIDATES]
    pairs = []
    if G == 3:
        pairs += [(m[0], m[1]) for _, m in matrices if m.shape == (2, G * H)]
        pairs += list(itertools.permutations(vectors, 2))
    return pairs + [(v, None) for v in vectors] + [(None, None)]


def _variants(G: int, squashes, outs):
    if G == 1:
        for act in outs + squashes[:1]:
            yield {"activations": [act], "linear_before_reset": 0}
    for f, g in itertools.product(squashes, outs):
        if G == 3:
            for lbr in (1, 0):
                yield {"activations": [f, g], "linear_before_reset": lbr}
        elif G == 4:
            yield {"activations": [f, g, g], "linear_before_reset": 0}


def _onnx_weights(spec, reordered: dict | None = None):
    """The guess's Keras matrices as ONNX W [G*H, I], R [G*H, H], B [2*G*H] in float64 (W and
    R kept in `reordered` for the next guess on the same matrices)."""
    mode = _GATES[spec["G"]]
    GH = spec["G"] * spec["H"]
    key = (id(spec["kernel"]), id(spec["recurrent"]), mode)
    W, R = (reordered or {}).get(key) or (
        reorder_gates(spec["kernel"].T.astype(np.float64), mode, "keras", "onnx"),
        reorder_gates(spec["recurrent"].T.astype(np.float64), mode, "keras", "onnx"))
    if reordered is not None:
        reordered[key] = W, R
    B = np.zeros(2 * GH)
    for part, bias in zip((slice(0, GH), slice(GH, 2 * GH)), spec["bias"]):
        if bias is not None:
            B[part] = reorder_gates(np.asarray(bias, np.float64), mode, "keras", "onnx")
    return W, R, B


def _activate(act, x):
    name, alpha, beta = act
    if name == "sigmoid":  # as tanh: exp(-x) overflows at the probes' largest scale
        return 0.5 * np.tanh(0.5 * x) + 0.5
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    return np.clip(alpha * x + beta, 0, 1)  # hardsigmoid


def reference_step(spec, R, B, products, h, c=None):
    """One ONNX step in float64 from x @ W.T and h @ R.T (`products`): the new h (and c)."""
    H, G = spec["H"], spec["G"]
    acts = spec["activations"]
    gx = products[0] + B[:G * H]
    gh = products[1] + B[G * H:]
    h = h.astype(np.float64)
    if G == 1:
        return [_activate(acts[0], gx + gh)]
    if G == 3:
        z = _activate(acts[0], gx[:, :H] + gh[:, :H])
        r = _activate(acts[0], gx[:, H:2 * H] + gh[:, H:2 * H])
        if spec["linear_before_reset"]:
            n = _activate(acts[1], gx[:, 2 * H:] + r * gh[:, 2 * H:])
        else:
            n = _activate(acts[1], gx[:, 2 * H:] + (r * h) @ R[2 * H:].T + B[5 * H:])
        return [(1 - z) * n + z * h]
    g = gx + gh
    i, o, f = (_activate(acts[0], g[:, k * H:(k + 1) * H]) for k in range(3))
    c_new = f * c.astype(np.float64) + i * _activate(acts[1], g[:, 3 * H:])
    return [o * _activate(acts[2], c_new), c_new]


class LoopedCell:
    """The Loop's fast path: called on the Loop node's inputs, it gives the node's outputs, or
    None for the Loop to run node by node."""

    def __init__(self, analysis: _Analysis, spec: dict):
        from fastrnn.recurrent import canonical

        from .plan import execute_node

        a = analysis
        mode = _GATES[spec["G"]]
        self.dtype, self.hidden_size = a.dtype, spec["H"]
        self.input_size = spec["kernel"].shape[0]
        # role -> carried slot of h, c (LSTM) and a masked layer's last output
        self.slots = {role: a.states[i] for i, role in enumerate(spec["roles"])}
        self.scans = [spec["roles"][s] for s in a.scans]  # the role each scan output stacks
        _require("c" not in self.scans)
        # the sequences a masked run spreads back: the scans' and the last output's
        self.sequences = set(self.scans) | ({"out", "zeroed"} & set(self.slots))
        W, R, B = (m[None].astype(self.dtype) for m in _onnx_weights(spec))
        attrs = {"mode": mode, "reverse": [False], "clip": None,
                 "activations": [[list(t) for t in spec["activations"]]],
                 "linear_before_reset": spec["linear_before_reset"], "input_forget": 0,
                 "dtype": str(self.dtype)}
        # kept for a two-direction Stack with the other half of a Keras Bidirectional layer
        self.attrs = attrs
        self.params = recurrent_node.onnx_to_torch_params(mode, W, R, B, None, self.hidden_size)
        self.stack = recurrent_node.make_stack(attrs, self.params)
        self.mode = mode
        self.activations = [tuple(t) for t in spec["activations"]]
        self.linear_before_reset = spec["linear_before_reset"]
        self.masked = a.mask_slot is not None
        self.mask_slot = a.mask_slot
        self.mask_trailing = a.mask_trailing.get((self.input_size, self.hidden_size))
        self._execute, self._canonical = execute_node, canonical
        self.n, self.x_slot, self.time = a.n, a.x_slot, a.time
        self.control = a.control
        # of the invariant values (weights among them), those the control part reads
        read = {i for nd in a.control for i in nd.inputs} | {a.outs[0]}
        if a.time is not None:
            read.add(a.outs[1 + a.time])
        self.invariant = {name: a.invariant[name] for name in read if name in a.invariant}
        self.control_runtime, self.cell_zeros = a.control_runtime, a.cell_zeros
        self.counter, self.cond_in, self.cond_out = a.counter, a.cond_in, a.outs[0]
        self.time_in = None if a.time is None else a.carried[a.time]
        self.time_out = None if a.time is None else a.outs[1 + a.time]
        self._counted: dict[tuple, tuple | None] = {}

    def __repr__(self) -> str:
        gru = f", linear_before_reset={self.linear_before_reset}" if self.mode == "GRU" else ""
        mask = ", masked" if self.masked else ""
        return (f"LoopedCell({self.mode}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, "
                f"activations={self.activations}{gru}{mask})")

    def __call__(self, ins: list):
        got = self.accepted(ins)
        if got is None:
            return None
        xs = ins[self.x_slot][got.start:got.start + got.steps]
        h0 = got.initial["h"][None]
        c0 = got.initial["c"][None] if "c" in got.initial else None
        if got.taken is None:
            y, h_n, c_n = self.stack.run(self._canonical(xs, self.dtype), h0, c0, None)
            seqs = {role: y for role in self.sequences}
        else:
            shifted, lengths = self.shifted(xs, got.taken)
            y, h_n, c_n = self.stack.run(shifted, h0, c0, lengths)
            seqs = self.spread(y, got)
        return self.outputs(ins, got, seqs, h_n[0], None if c_n is None else c_n[0])

    def accepted(self, ins: list) -> "Accepted | None":
        """What a call on the Loop node's inputs `ins` runs, or None where the Loop must run
        node by node."""
        carried = ins[2:2 + self.n]
        X = ins[self.x_slot]
        if type(X) is not np.ndarray or X.ndim != 3 or X.dtype != self.dtype \
                or X.shape[2] != self.input_size or X.shape[1] == 0:
            return None
        N = X.shape[1]
        initial = {role: carried[slot] for role, slot in self.slots.items()}
        if any(type(s) is not np.ndarray or s.shape != (N, self.hidden_size)
               or s.dtype != self.dtype
               for s in initial.values()):
            return None
        for slot in self.cell_zeros:
            zeros = ins[slot]
            if type(zeros) is not np.ndarray or zeros.shape != (N, self.hidden_size) or \
                    zeros.dtype != self.dtype or zeros.any():
                return None
        span = self._span(ins, X.shape[0])
        if span is None:
            return None
        start, steps, time_next = span
        taken = None
        if self.masked:
            taken = self._taken(ins[self.mask_slot], start, steps, N)
            if taken is None:
                return None
            if taken.all():
                taken = None
        return Accepted(start, steps, time_next, taken, initial)

    def outputs(self, ins: list, got: "Accepted", seqs: dict, h_n, c_n) -> list:
        """The Loop's outputs: its carried values after the run (the new h [N, H] `h_n` and c
        `c_n`, the last outputs, the time counter), then its scans (from `seqs`: the sequence
        per role, in the Loop's step order)."""
        outs = list(ins[2:2 + self.n])
        outs[self.slots["h"]] = h_n
        if c_n is not None:
            outs[self.slots["c"]] = c_n
        for role in ("out", "zeroed"):
            if role in self.slots:
                outs[self.slots[role]] = seqs[role][-1]
        if self.time is not None:
            outs[self.time] = got.time_next
        return outs + [seqs[role] for role in self.scans]

    def _span(self, ins: list, T: int):
        """(the first index into X, the number of iterations, the time counter after them), or
        None where the Loop must run node by node."""
        trips, going = ins[0], ins[1]
        t0 = None
        if self.time is not None:
            t0 = ins[2 + self.time]
            if type(t0) is not np.ndarray or t0.ndim != 0 or t0.dtype.kind not in "iu":
                return None
        start = 0 if t0 is None else int(t0)
        if going is not None and not _single_true(going):
            return None
        room, capped = T - start, False  # iterations before the index would leave X
        if trips is not None:
            if type(trips) is not np.ndarray or trips.size != 1 or trips.dtype.kind not in "iu":
                return None
            if int(trips.reshape(-1)[0]) <= room:
                room, capped = int(trips.reshape(-1)[0]), True
        if start < 0 or room <= 0:
            return None
        counted = self._trip_count(ins, room, t0)
        if counted is None:
            return None
        steps, stopped, time_next = counted
        if not stopped and not capped:  # it would go on to an index past X: the Loop says so
            return None
        return start, steps, time_next

    def _taken(self, mask, start: int, steps: int, N: int):
        """The mask's [steps, N] over the iterations, or None where it has another shape or
        dtype (the Loop reports it)."""
        if type(mask) is not np.ndarray or mask.dtype != np.bool_ or \
                mask.shape[1:] != (N,) + self.mask_trailing or mask.shape[0] < start + steps:
            return None
        return mask[start:start + steps].reshape(steps, N)

    def shifted(self, xs, taken) -> tuple:
        """Keras's masked steps: a row's state moves on only at its taken steps (`taken`
        [steps, N]), so each row's taken steps, moved to the front in their order, run as a
        sequence of that length: (that input, the lengths)."""
        rows = np.arange(taken.shape[1])
        order = np.argsort(~taken, axis=0, kind="stable")  # taken steps first, in order
        return self._canonical(xs[order, rows], self.dtype), np.count_nonzero(taken, axis=0)

    def spread(self, y, got: "Accepted", source=None) -> dict:
        """The sequences per role from the run of ``shifted``'s input (y [steps, N, H]; its
        steps at rows `source` [steps, N] of y where given): at each step the states as the
        last taken step up to it left them (as they came in before the first). One gather per
        role, no padded copy of y: each new array of that size costs page faults in a VM."""
        taken = got.taken
        steps, N = taken.shape
        rows = np.arange(N)
        done = np.cumsum(taken, axis=0)  # taken steps up to each step
        k = np.where(done > 0, done - 1, steps)  # `steps`: the incoming state
        seqs = {}
        for role in self.sequences:
            at = np.where(taken, k, steps) if role == "zeroed" else k
            before = at == steps
            at = np.minimum(at, steps - 1)
            seq = y[at if source is None else source[at, rows], rows]
            if before.any():
                t, n = np.nonzero(before)
                seq[t, n] = 0 if role == "zeroed" else got.initial[role][n]
            seqs[role] = seq
        return seqs

    def _trip_count(self, ins: list, room: int, t0):
        """(iterations, whether the condition ended them, the time counter after them), from the
        control nodes run once over the first `room` iterations' values; None when they do not
        give one flag per iteration. Remembered per value of what they read."""
        key = [room] if t0 is None else [room, t0.dtype.str, int(t0)]
        for slot in self.control_runtime.values():
            value = ins[slot]
            if type(value) is not np.ndarray or value.size != 1:
                return None
            key += [value.dtype.str, value.shape, value.tobytes()]
        key = tuple(key)
        known = self._counted.get(key)
        if known is None:
            if len(self._counted) >= _COUNTS_KEPT:
                self._counted.clear()
            known = self._counted[key] = self._count(ins, room, t0)
        if known is None:
            return None
        steps, stopped, time_next = known
        return steps, stopped, None if time_next is None else time_next.copy()

    def _count(self, ins: list, room: int, t0):
        values = dict(self.invariant)
        values.update((name, ins[slot]) for name, slot in self.control_runtime.items())
        values[self.counter] = np.arange(room, dtype=np.int64)
        values[self.cond_in] = np.ones(room, dtype=bool)
        if self.time_in is not None:
            values[self.time_in] = (t0 + np.arange(room)).astype(t0.dtype)
        with np.errstate(all="ignore"):
            for nd in self.control:
                outs = self._execute(nd, [values.get(i) if i else None for i in nd.inputs])
                values.update((name, value) for name, value in zip(nd.outputs, outs) if name)
        cond = np.asarray(values[self.cond_out])
        if cond.dtype != np.bool_ or cond.size not in (1, room) or cond.ndim > 1:
            return None
        stops = np.flatnonzero(~np.broadcast_to(cond.reshape(-1), (room,)))
        steps = int(stops[0]) + 1 if stops.size else room
        time_next = None
        if self.time_out is not None:
            after = np.asarray(values[self.time_out])
            if after.shape != (room,):
                return None
            time_next = np.asarray(after[steps - 1])
        return steps, bool(stops.size), time_next


class Accepted(NamedTuple):
    """A LoopedCell call's run: its iterations X[start:start + steps], the time counter after
    them, the mask's [steps, N] (None where it takes every step) and the initial state per
    role."""
    start: int
    steps: int
    time_next: object
    taken: object
    initial: dict


def _single_true(value) -> bool:
    arr = np.asarray(value)
    return arr.size == 1 and bool(arr.reshape(-1)[0])
