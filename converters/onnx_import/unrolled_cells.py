"""Recurrent layers that an exporter wrote out step by step, run by fastrnn's kernel in one call.

onnx-free. torch.onnx.export(dynamo=True) has no RNN node for nn.RNN: it unrolls the layer over the
export's sequence length. L = X @ W_ih^T + b_ih is computed for all steps at once, then each step
reads u_t = Squeeze(Slice(L, t, t + 1)) and makes h_t = tanh(h_{t-1} @ W_hh^T + b_hh + u_t) (relu
likewise; the reverse direction reads a flipped L), and the h_t are concatenated. tf2onnx writes a
Keras layer built with unroll=True so too, but splits X into one piece per step and projects each
piece in its step (u_t = Squeeze(Split(X)_t) @ W + b), and both torch exporters a Python loop over
nn.RNNCell / GRUCell / LSTMCell as a Gemm of x_t and one of h per step. ``fuse`` finds such chains
among the nodes a schedule runs and puts one node of op OP in the place of each: a one-direction
Stack that runs the chain's steps in one kernel call and gives every h_t (an LSTM's last c), and a
Concat of them in time order, as views of its output.

A chain is found, not read off a pattern:
- it is a run of MatMul (or Gemm) nodes that multiply one constant matrix R [H, G*H] (G = 1, 2, 3
  or 4; the same values, under one name or a copy per step) by the state the step before made; the
  nodes that compute the next state from one state (they depend on it, and the next state depends
  on them), with those that prepare the step's input (a Split of it), are the first step, and each
  later step must be the same nodes (ops, attributes, constants) on the state before it and, for
  an LSTM, the c it made, reading one value from outside: a slice of the same L at the next (or
  previous) time index, or such a slice of X times the same constant W (plus b);
- the step is then checked on random inputs against a cell's float64 step (to 1e-4): for G = 1
  act(u + h @ R + b), act tanh, relu or sigmoid, for states of rank 2 and 3 (the shapes it gives
  recorded per rank); for G = 3 or 4 a GRU (its reset applied after the product, as PyTorch's and
  Keras's default reset_after=True: one product of h per step) or LSTM step, its gates squashed
  by sigmoid or Keras's hard_sigmoid and its cell's input and output by tanh or relu, in
  PyTorch's or Keras's gate order; b the step's constant vectors or none; for
  G = 2 a GRU that resets h before its product (Keras's reset_after=False: h times R for z and r,
  r * h times one more constant [H, H] in the step), without a recurrent bias. A step that matches
  none leaves the nodes as they are.
An export without an initial state folds the first step's product with zeros away (a constant C = 0
@ R + b in place of h @ R + b): where the chain's initial states are made so from the slice before
its first, and match the cell's step from zeros on random inputs, that step joins the chain, which
then starts from zeros (for the batch size C fixes, if it fixes one). A first step that reads one
tensor as both h and c (Keras's zeros) carries c from it. The input projection runs in the kernel
when L is X @ W (+ b) of a constant W; otherwise the kernel reads L through an identity projection.
An input the call does not take (another dtype, rank or batch, a sequence too short for the chain's
indices) runs the chain's own nodes.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
from typing import NamedTuple

import numpy as np

from . import cell_probes, unrolled_pairs
from .kernels import element_limit
from .loop_cells import activation_candidates
from .unrolled_layer import UnrolledLayer

OP = "UnrolledCell"
_MIN_STEPS = 2
_PROBE_ROWS = 3
_FLIP_END = -(1 << 62)  # a Slice end at or below this runs to the front of any axis
_ACTIVATIONS = {"Tanh": "tanh", "Relu": "relu", "Sigmoid": "sigmoid"}
_INPUT = "\0step input"  # the key of the step's input in a replay's names (no value's name)


class _NotAChain(Exception):
    pass


class _StepInput(NamedTuple):
    """What a step reads from outside the chain: step `index` of `source` along axis 0 (made by
    `nodes`), of rank `rank`; `pieces`: for a Split into one piece per step, their number (the
    length the source must have), else None; `projection`: (what names the product, W, b or
    None) where each step projects it as `slice @ W + b`, or None where the source is projected
    already."""
    source: str
    index: int
    nodes: list
    rank: int
    pieces: int | None
    projection: tuple | None

    def kind(self) -> tuple:
        """What steps of one chain share: all but the index and the nodes."""
        return (self.source, self.rank, self.pieces,
                None if self.projection is None else self.projection[0])


class _Template(NamedTuple):
    """One step as found, for the others to match (see _Finder._step)."""
    nodes: list  # (node, per input its role), in the order they are matched
    state: str  # the new state: the first output of the last node that depends on the state
    carried: list  # the values carried in besides the state (an LSTM's c)
    deferred: frozenset  # outputs of the nodes that prepare the step's input (a Split of it):
    # matched from the nodes that read them, which come first


def _require(condition: bool) -> None:
    if not condition:
        raise _NotAChain


def fuse(nodes: list, wanted: set, constants) -> list:
    """`nodes` (a schedule's, in order) with each unrolled recurrent chain of at least two steps
    replaced by a node of op OP (its state: the chain's UnrolledLayer, or an UnrolledPair for a
    forward and a backward chain over one input)."""
    finder = _Finder(nodes, wanted, constants)
    fused = finder.fused_nodes()
    if not fused:
        return nodes
    pairs = unrolled_pairs.paired(fused, finder.users, wanted, finder.position, OP)
    # a pair whose chains read each other's values cannot run as one call: each runs alone
    return ordered(nodes, pairs) or ordered(nodes, fused) or nodes


class _Chain:
    """One chain as found: per step its nodes, its new state and the slice of L it reads."""

    def __init__(self, h0: str, R: np.ndarray, carried: list):
        self.h0, self.R = h0, R  # the initial state (None: zeros), the recurrent matrix (h @ R)
        self.carried_in = carried  # the other carried values' initial values (an LSTM's c)
        self.zero_start = None  # see UnrolledLayer
        self.steps: list[list] = []
        self.states: list[str] = []  # the state after each step
        self.carried: list[list] = []  # the other carried values after each step
        self.slices: list[_StepInput] = []  # per step


class _Finder:
    def __init__(self, nodes: list, wanted: set, constants):
        self.nodes, self.wanted, self.constants = nodes, wanted, constants
        self.position = {id(node): i for i, node in enumerate(nodes)}
        self.producer: dict[str, object] = {}
        self.users: dict[str, list] = {}
        self._keys: dict[int, tuple] = {}  # id of a constant -> (it, its _value_key)
        for node in nodes:
            for name in filter(None, node.outputs):
                self.producer[name] = node
            for name in filter(None, node.inputs):
                self.users.setdefault(name, []).append(node)

    def fused_nodes(self) -> list:
        """[(the fused node, the ids of the nodes it replaces, its place)] for every chain."""
        groups: dict[tuple, list] = {}  # products by their constant matrix's value
        for node in self.nodes:
            product = _product(node, self.constants)
            if product is not None and product[1].shape[1] in (  # RNN, GRU (reset before:
                    product[1].shape[0] * G for G in (1, 2, 3, 4)):  # h by z's and r's), LSTM
                groups.setdefault(self._product_key(node), []).append(node)
        self.tried: set[int] = set()
        self.claimed: set[int] = set()  # the nodes the chains found so far replace
        fused = []
        for matmuls in groups.values():
            if len(matmuls) < _MIN_STEPS:
                continue
            for first in matmuls:
                if id(first) in self.tried:
                    continue
                try:
                    with element_limit(1 << 20):
                        found = self._fused(first, matmuls)
                except Exception:  # noqa: BLE001 - _NotAChain, or a step the probes cannot run:
                    continue       # the nodes run as they are
                fused.append(found)
                self.claimed.update(found[1])
        return fused

    def _product_key(self, node, added: str = "") -> tuple:
        """A key equal for products of equal constants (exporters copy a weight per step: the
        legacy exporter's Identity nodes, folded at import, give each step a constant of its
        own): the op, transB and the values of its constant inputs (and of `added`)."""
        names = node.inputs[1:] + [added]
        return (node.op, node.attrs.get("transB", 0)) + tuple(map(self._value_key, names))

    def _value_key(self, name: str) -> tuple | None:
        array = self.constants.get(name) if name else None
        if array is None:
            return None
        key = self._keys.get(id(array))  # the array itself kept: its id is not reused
        if key is None:
            digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16)
            key = self._keys[id(array)] = (array, (array.shape, array.dtype.str,
                                                    digest.digest()))
        return key[1]

    # ------------------------------------------------------------------ finding the chain
    def _fused(self, first, matmuls: list) -> tuple:
        h0, R, _ = _product(first, self.constants)
        nxt = self._next_matmul(first, matmuls)
        template = self._step(h0, nxt.inputs[0])
        template, carried_out = self._carried_out(template, h0, nxt, matmuls)
        carried = template.carried
        chain = _Chain(h0, R, carried)
        state, delta = h0, None
        while True:  # the steps that follow, each reading L at the next index (or the previous)
            step = self._replay(template, state, carried, carried_out)
            if step is None:
                break
            nodes, new_state, carried, sliced = step
            if chain.slices:
                last = chain.slices[-1]
                if sliced.kind() != last.kind() or sliced.index - last.index not in (
                        (1, -1) if delta is None else (delta,)):
                    break
                delta = sliced.index - last.index
            chain.steps.append(nodes)
            chain.states.append(new_state)
            chain.carried.append(carried)
            chain.slices.append(sliced)
            state = new_state
        _require(len(chain.steps) >= _MIN_STEPS)
        # a chain that fails from here fails from any of its later steps too: not tried again
        self.tried.update(id(nd) for step in chain.steps for nd in step)
        if R.shape[1] == R.shape[0] and not chain.carried_in:
            cell = self._cell(template, R)
        else:
            reset_after = R.shape[1] != 2 * R.shape[0]  # else (r * h) by R_h in the step
            if not reset_after:
                chain.R = R = np.concatenate([R, self._reset_product(template, R)], axis=1)
            cell = self._gated_cell(template, R, chain, carried_out, reset_after)
        self._folded_first_step(chain, cell, delta)
        return self._build(chain, cell, delta)

    def _carried_out(self, template: _Template, h0: str, nxt, matmuls: list) -> tuple:
        """(the template, where it reads h0 in place of another carried value; per value the
        step carries besides its state (an LSTM's c), the template's value that the next step
        reads in its place), found by aligning the step after `nxt` with the template. A value
        the first step reads as h0 where the next one reads another (Keras starts h and c from
        one zeros tensor) is carried, starting from h0."""
        try:
            after = self._next_matmul(nxt, matmuls)
        except _NotAChain:  # no third step to align with: nothing carried but the state
            _require(not template.carried)
            return template, []
        following = self._step(nxt.inputs[0], after.inputs[0])
        if len(following.nodes) != len(template.nodes) or any(
                nd.op != nd1.op or len(nd.inputs) != len(nd1.inputs)
                for (nd, _), (nd1, _) in zip(template.nodes, following.nodes)):
            _require(not template.carried)  # the steps differ: the chain ends after the first
            return template, []
        made = {o for nd, _ in template.nodes for o in nd.outputs if o}
        carried, out, nodes = list(template.carried), [None] * len(template.carried), []
        for (nd, roles), (nd1, roles1) in zip(template.nodes, following.nodes):
            roles = list(roles)
            for j, (role, role1, name) in enumerate(zip(roles, roles1, nd1.inputs)):
                if role[0] == "h" and role1[0] != "h":  # h0 also starts another carried value
                    _require(name in made)
                    if name not in out:
                        carried.append(h0)
                        out.append(name)
                    roles[j] = ("carry", out.index(name))
                elif role[0] == "carry":
                    _require(name in made and out[role[1]] in (None, name))
                    out[role[1]] = name
            nodes.append((nd, roles))
        _require(None not in out and len(carried) <= 1)
        return template._replace(nodes=nodes, carried=carried), out

    def _next_matmul(self, first, matmuls: list):
        """The first MatMul of the group after `first` whose state depends on `first`'s."""
        later = {id(m) for m in matmuls}
        start = self.producer.get(first.inputs[0])
        depends = {first.inputs[0]}
        for node in self.nodes[self.position[id(start)] + 1 if start is not None else 0:]:
            if not any(i in depends for i in node.inputs):
                continue
            if node is not first and id(node) in later and node.inputs[0] in depends:
                return node
            depends.update(filter(None, node.outputs))
        raise _NotAChain

    def _step(self, h0: str, h1: str) -> _Template:
        """The template step: the nodes that depend on h0 and that h1 depends on, in order, then
        those that prepare its input from the step's slice (a Split of it, not depending on
        h0), each as (node, per input: ("h",) | ("value", template output) | ("const", name) |
        ("u",): the step's input | ("carry", k): the k-th value carried in besides h0 |
        ("absent",))."""
        start = self.producer.get(h0)
        floor = self.position[id(start)] if start is not None else -1
        depends: dict[str, bool] = {h0: True}

        def on_path(name: str) -> bool:  # iterative: depends on h0, through nodes after floor
            stack = [name]
            while stack:
                top = stack[-1]
                if top in depends:
                    stack.pop()
                    continue
                node = self.producer.get(top)
                if node is None or self.position[id(node)] <= floor:
                    depends[top] = False
                    stack.pop()
                    continue
                pending = [i for i in node.inputs if i and i not in depends]
                if pending:
                    stack.extend(pending)
                    continue
                result = any(depends[i] for i in node.inputs if i)
                for out in filter(None, node.outputs):
                    depends[out] = result
                stack.pop()
            return depends[name]

        _require(on_path(h1))
        nodes = sorted({id(self.producer[v]): self.producer[v] for v, d in depends.items()
                        if d and v != h0}.values(), key=lambda nd: self.position[id(nd)])
        _require(nodes and h1 in nodes[-1].outputs and nodes[-1].outputs.index(h1) == 0)
        prepared, inputs = {}, set()
        made = {o for nd in nodes for o in nd.outputs if o}
        for name in [i for nd in nodes for i in nd.inputs if i]:
            if name in made or name == h0 or name in self.constants or \
                    self._is_step_input(name):
                continue
            found, leaf = self._computed_from_one_value(name, 4, None)
            if found is not None:
                prepared.update((id(nd), nd) for nd in found)
                inputs.add(leaf)
        prep = sorted(prepared.values(), key=lambda nd: self.position[id(nd)])
        made.update(o for nd in prep for o in nd.outputs if o)
        template, carried = [], []
        for nd in nodes + prep:
            roles = []
            for name in nd.inputs:
                if not name:
                    roles.append(("absent",))
                elif name == h0:
                    roles.append(("h",))
                elif name in made:
                    roles.append(("value", name))
                elif name in self.constants:
                    roles.append(("const", name))
                elif self._is_step_input(name):
                    roles.append(("u",))
                    inputs.add(name)
                else:
                    if name not in carried:
                        carried.append(name)
                    roles.append(("carry", carried.index(name)))
            template.append((nd, roles))
        _require(len(inputs) == 1)  # a step reads one value from outside: its input's slice
        template = self._in_canonical_order(template, len(nodes))
        return _Template(template, h1, carried,
                         frozenset(o for nd in prep for o in nd.outputs if o))

    def _in_canonical_order(self, entries: list, main: int) -> list:
        """`entries` ((node, roles): first the step's `main` nodes, in an order that computes what
        each reads before it, then those that prepare its input) with each of the two parts in
        an order that depends only on what the nodes compute, so that steps the exporter wrote
        in different orders (tf2onnx's order of a step's independent nodes varies) line up:
        each next the one, of those whose inputs are computed, with the least digest of its op,
        its attributes and, recursively, what it reads."""
        producer = {name: k for k, (nd, _) in enumerate(entries) for name in nd.outputs if name}
        digests: dict[int, bytes] = {}
        # each part comes in an order that computes what it reads first, and the input's
        # preparation reads nothing of the rest: so each node's inputs are digested before it
        for k in list(range(main, len(entries))) + list(range(main)):
            nd, roles = entries[k]
            reads = []
            for name, role in zip(nd.inputs, roles):
                if role[0] == "value" and name in producer:
                    reads.append((digests[producer[name]],
                                  entries[producer[name]][0].outputs.index(name)))
                elif role[0] == "const":
                    reads.append(("const", self._value_key(name)))
                elif role[0] in ("h", "carry"):  # alike: a first step may read h as c
                    reads.append(("state",))
                else:  # the step input, or absent
                    reads.append(role)
            digests[k] = hashlib.blake2b(repr((nd.op, sorted(nd.attrs.items()), reads)).encode(),
                                         digest_size=16).digest()
        ordered = []
        for part in (range(main), range(main, len(entries))):
            inside = {name: k for name, k in producer.items() if k in part}
            waiting = {k: len({inside[name] for name in entries[k][0].inputs if name in inside})
                       for k in part}
            readers: dict[int, set] = {}
            for k in part:
                for name in entries[k][0].inputs:
                    if name in inside:
                        readers.setdefault(inside[name], set()).add(k)
            ready = [(digests[k], k) for k, count in waiting.items() if not count]
            heapq.heapify(ready)
            while ready:
                _, k = heapq.heappop(ready)
                ordered.append(entries[k])
                for r in readers.get(k, ()):
                    waiting[r] -= 1
                    if not waiting[r]:
                        heapq.heappush(ready, (digests[r], r))
        _require(len(ordered) == len(entries))
        return ordered

    def _is_step_input(self, name: str) -> bool:
        try:
            self._step_input(name)
            return True
        except _NotAChain:
            return False

    def _replay(self, template: _Template, h: str, carried: list, carried_out: list):
        """The template's nodes on state `h` and the `carried` values: (this step's nodes, its new
        state, its new carried values, the slice it reads), or None where no such step follows."""
        mapped = {}
        nodes, sliced = [], None
        for tnode, roles in template.nodes:
            if tnode.outputs[0] in template.deferred:  # what its readers read
                made = {self.producer.get(mapped.get(o)) for o in tnode.outputs if o in mapped}
                candidates = [nd for nd in made if nd is not None]
                if len(candidates) != 1:
                    return None
            else:
                candidates = self.users.get(next(
                    mapped[r[1]] if r[0] == "value" else h for r in roles
                    if r[0] == "h" or (r[0] == "value" and r[1] in mapped)), ())
            found = None
            for cand in candidates:
                if cand.op != tnode.op or cand.attrs != tnode.attrs or \
                        len(cand.inputs) != len(roles) or len(cand.outputs) != len(tnode.outputs):
                    continue
                this = self._match(cand, roles, mapped, h, carried, template.deferred)
                if this is not None:
                    if found is not None:  # two such nodes: not one step
                        return None
                    found = (cand, this)
            if found is None:
                return None
            cand, (this, provisional) = found
            if any(mapped.get(t, c) != c for t, c in zip(tnode.outputs, cand.outputs)):
                return None
            if this is not True:
                sliced = this
            nodes.append(cand)
            mapped.update(provisional)
            mapped.update(zip(tnode.outputs, cand.outputs))
        new_state = mapped[template.state]
        new_carried = [mapped[name] for name in carried_out]
        # a step's values other than what it carries are its own (else the chain ends before it)
        inside = {id(nd) for nd in nodes}
        for nd in nodes:
            for out in filter(None, nd.outputs):
                if out != new_state and out not in new_carried and (out in self.wanted or any(
                        id(u) not in inside for u in self.users.get(out, ()))):
                    return None
        return nodes, new_state, new_carried, sliced

    def _match(self, cand, roles: list, mapped: dict, h: str, carried: list, deferred):
        """Whether `cand` reads what the template node reads: (True, or the step input it reads
        for the "u" role; the names it gives the `deferred` values it reads), or None."""
        sliced, provisional = True, {}
        for name, role in zip(cand.inputs, roles):
            kind = role[0]
            if kind == "absent":
                ok = not name
            elif kind == "h":
                ok = name == h
            elif kind == "carry":
                ok = name == carried[role[1]]
            elif kind == "value" and role[1] not in mapped and role[1] in deferred:
                ok = provisional.setdefault(role[1], name) == name
            elif kind == "value":
                ok = mapped.get(role[1]) == name
            elif kind == "const":
                ok = name == role[1] or (name in self.constants and _same(
                    self.constants[name], self.constants[role[1]]))
            elif _INPUT in mapped:  # the step input other nodes of the step read
                ok = mapped[_INPUT] == name
            else:
                try:
                    sliced = self._step_input(name) if name not in self.constants else None
                except _NotAChain:
                    sliced = None
                ok = sliced is not None and provisional.setdefault(_INPUT, name) == name
            if not ok:
                return None
        return sliced, provisional

    def _ints(self, name: str):
        value = self.constants.get(name) if name else None
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu" or value.ndim > 1:
            return None
        return [int(v) for v in value.reshape(-1)]

    def _step_input(self, name: str) -> _StepInput:
        """`name` as a _StepInput: a time slice of L (`_time_slice`), or such a slice of X times
        a constant W (plus a constant b), as a layer written without its projection up front has
        it (Keras's unroll=True)."""
        try:
            return self._time_slice(name)
        except _NotAChain:
            pass
        projected = self._projected(name)
        _require(projected is not None)
        taken, operand, W, bias, key = projected
        sliced = self._time_slice(operand)
        return sliced._replace(nodes=sliced.nodes + taken, projection=(key, W, bias))

    def _projected(self, name: str):
        """(the nodes, the operand, W, b [n] or None, a key equal for equal constants) where
        `name` is operand @ W (+ b) of constants W and b: a MatMul or Gemm (_product), maybe
        followed by an Add of a constant vector; else None."""
        node, added = self.producer.get(name), None
        if node is None:
            return None
        taken = [node]
        if node.op == "Add" and len(node.inputs) == 2:
            for a, b in (node.inputs, node.inputs[::-1]):
                if b in self.constants and a in self.producer and \
                        self.producer[a].op in ("MatMul", "Gemm"):
                    node, added = self.producer[a], b
                    taken.append(node)
                    break
        product = _product(node, self.constants)
        if product is None or product[0] in self.constants:
            return None
        operand, W, bias = product
        if added is not None:
            extra = self.constants[added]
            if extra.dtype != W.dtype or extra.size != W.shape[1] or \
                    extra.shape[:-1] != (1,) * (extra.ndim - 1):
                return None
            bias = extra if bias is None else bias.reshape(-1) + extra.reshape(-1)
        return (taken, operand, W, None if bias is None else bias.reshape(-1),
                self._product_key(node, added or ""))

    def _time_slice(self, name: str) -> _StepInput:
        """`name` where it is step t of L along axis 0: Squeeze(Slice(L, [t], [t + 1], [0]), [0]),
        Gather(L, t), Slice(L, [t], [t + 1], [0]) alone (t >= 0), or output t of a Split of L
        into one piece per step (squeezed or not)."""
        node = self.producer.get(name)
        _require(node is not None)
        taken, rank = [node], 3
        if node.op == "Gather":
            _require(node.attrs.get("axis", 0) == 0 and len(node.inputs) == 2)
            index = self.constants.get(node.inputs[1])
            _require(isinstance(index, np.ndarray) and index.ndim == 0 and
                     index.dtype.kind in "iu" and int(index) >= 0)
            return _StepInput(node.inputs[0], int(index), taken, 2, None, None)
        if node.op == "Squeeze":
            _require(len(node.inputs) == 2 and self._ints(node.inputs[1]) == [0])
            name = node.inputs[0]
            node = self.producer.get(name)
            _require(node is not None)
            taken.append(node)
            rank = 2
        if node.op == "Split":
            pieces = len(node.outputs)
            split = self._ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
            _require(node.attrs.get("axis", 0) == 0 and split in (None, [1] * pieces) and
                     node.attrs.get("num_outputs", pieces) == pieces)
            return _StepInput(node.inputs[0], node.outputs.index(name), taken, rank, pieces, None)
        _require(node.op == "Slice" and 3 <= len(node.inputs) <= 5)
        starts, ends = self._ints(node.inputs[1]), self._ints(node.inputs[2])
        axes = self._ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else [0]
        steps = self._ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else [1]
        _require(starts is not None and len(starts) == 1 and starts[0] >= 0 and
                 ends == [starts[0] + 1] and axes == [0] and steps == [1])
        return _StepInput(node.inputs[0], starts[0], taken, rank, None, None)

    # ------------------------------------------------------------------ the cell
    def _run_template(self, template: _Template, h, u, c=None) -> dict:
        """The values the template's nodes make from state h, step input u and carried c, run
        in an order that computes what each reads before it."""
        from .plan import execute_node

        values = {}
        with np.errstate(all="ignore"):
            for nd, roles in sorted(template.nodes, key=lambda e: self.position[id(e[0])]):
                given = {"absent": None, "h": h, "u": u, "carry": c}
                ins = [given[r[0]] if r[0] in given else values[r[1]] if r[0] == "value"
                       else self.constants[r[1]] for r in roles]
                values.update(zip(nd.outputs, execute_node(nd, ins)))
        return values

    def _cell(self, template: _Template, R: np.ndarray) -> dict:
        """The Elman cell the template computes, act(u + h @ R + b) for act tanh, relu or
        sigmoid and b the step's constant vectors, checked on random states of rank 2 and 3:
        {mode, activations, bias, ranks: the state's rank -> the new state's rank, ...}."""
        H = R.shape[0]
        ops = {nd.op for nd, _ in template.nodes}
        acts = [name for op, name in _ACTIVATIONS.items() if op in ops]
        _require(acts)
        vectors = [self.constants[r[1]] for nd, roles in template.nodes if nd.op == "Add"
                   for r in roles if r[0] == "const"]
        vectors += [p[2] for p in (_product(nd, self.constants) for nd, _ in template.nodes
                                   if nd.op == "Gemm") if p is not None and p[2] is not None]
        _require(all(np.size(v) == H for v in vectors))
        bias = sum(np.asarray(v, np.float64).reshape(H) for v in vectors) if vectors else None
        u_name = next(name for nd, roles in template.nodes for name, r in zip(nd.inputs, roles)
                      if r[0] == "u")
        u_rank = self._step_input(u_name).rank
        rng = np.random.default_rng(20261127)
        R64 = R.astype(np.float64)
        results: dict[int, list] = {}  # per rank of the state the template takes: what fits
        for rank in (2, 3):
            shape = (_PROBE_ROWS, H) if rank == 2 else (1, _PROBE_ROWS, H)
            fits = list(acts)
            for scale in cell_probes.SCALES:
                h = cell_probes.inputs(rng, shape, scale, R.dtype, "state")
                u = cell_probes.inputs(rng, (_PROBE_ROWS, H) if u_rank == 2
                                       else (1, _PROBE_ROWS, H), scale, R.dtype, "x")
                try:
                    values = self._run_template(template, h, u)
                except Exception:  # noqa: BLE001 - not a state of this rank
                    fits = None
                    break
                h64, u64 = h.astype(np.float64), u.astype(np.float64)
                pre = u64 + h64 @ R64
                terms = np.abs(u64) + np.abs(h64) @ np.abs(R64)
                if bias is not None:
                    pre, terms = pre + bias, terms + np.abs(bias)
                got = values[template.state]
                fits = [act for act in fits if cell_probes.agrees(got, _activate(act, pre),
                                                                  terms)]
            if fits is not None:
                results[rank] = fits
        for act in acts:
            ranks = {r: max(r, u_rank) for r, fits in results.items() if act in fits}
            ranks = {r: out for r, out in ranks.items() if out in ranks}  # each step's the same
            if ranks:
                return {"mode": "RNN", "activations": [(act, 0.0, 0.0)], "bias": bias,
                        "ranks": ranks, "order": "torch", "linear_before_reset": 0}
        raise _NotAChain

    def _reset_product(self, template: _Template, R: np.ndarray) -> np.ndarray:
        """R_h [H, H] of a GRU step that resets h before its product (Keras's reset_after=False,
        ONNX's linear_before_reset=0), where R [H, 2H] gives h's products for z and r: the one
        constant [H, H] matrix the template multiplies a value of its own by."""
        H = R.shape[0]
        found = [product[1] for product in (_product(nd, self.constants) for nd, roles in
                                            template.nodes if roles and roles[0][0] == "value")
                 if product is not None and product[1].shape == (H, H)]
        _require(len(found) == 1 and found[0].dtype == R.dtype)
        return found[0]

    def _gated_cell(self, template: _Template, R: np.ndarray, chain: _Chain, carried_out: list,
                    reset_after: bool):
        """A GRU or LSTM step (R [H, G*H], PyTorch's or Keras's gate order; sigmoid or Keras's
        hard_sigmoid for the gates, tanh or relu for the cell's input and output; a GRU's reset
        after the product (R's gates multiply h) or before it (R's last H columns multiply
        r * h, and no recurrent bias); the recurrent bias the step's constant [G*H] vectors or
        none), checked on random inputs against the float64 reference step, as _cell's
        description (states of rank 2 only)."""
        H = R.shape[0]
        G = R.shape[1] // H
        mode = {3: "GRU", 4: "LSTM"}.get(G) if R.shape[1] == G * H else None
        _require(mode is not None and len(chain.carried_in) == (mode == "LSTM"))
        u_name = next(name for nd, roles in template.nodes for name, r in zip(nd.inputs, roles)
                      if r[0] == "u")
        _require(self._step_input(u_name).rank == 2)
        # (scalars added are a hard_sigmoid's offsets, which the probes check)
        vectors = [self.constants[r[1]] for nd, roles in template.nodes if nd.op == "Add"
                   for r in roles if r[0] == "const" and np.size(self.constants[r[1]]) != 1]
        vectors += [p[2] for p in (_product(nd, self.constants) for nd, _ in template.nodes
                                   if nd.op == "Gemm") if p is not None and p[2] is not None]
        _require(all(np.size(v) == G * H for v in vectors))
        biases = [None] + ([sum(np.asarray(v, np.float64).reshape(-1) for v in vectors)]
                           if vectors else [])
        squashes, outs = activation_candidates({nd.op for nd, _ in template.nodes})
        rng = np.random.default_rng(20261127)
        probes = []
        R_abs = np.abs(R.astype(np.float64))
        for scale in cell_probes.SCALES:
            h = cell_probes.inputs(rng, (_PROBE_ROWS, H), scale, R.dtype, "state")
            c = cell_probes.inputs(rng, (_PROBE_ROWS, H), scale, R.dtype, "state")
            u = cell_probes.inputs(rng, (_PROBE_ROWS, G * H), scale, R.dtype, "x")
            values = self._run_template(template, h, u, c)
            got = [np.asarray(values[template.state])]
            got += [np.asarray(values[name]) for name in carried_out]
            _require(all(g.shape == (_PROBE_ROWS, H) for g in got))
            terms = np.abs(u.astype(np.float64)) + np.abs(h.astype(np.float64)) @ R_abs
            probes.append((h, c, u, got, terms))
        _require(reset_after or (mode == "GRU" and len(biases) == 1))
        for order, bias, squash, out in itertools.product(
                ("torch", "keras") if mode == "GRU" else ("torch",), biases, squashes, outs):
            cell = {"mode": mode, "activations": [squash] + [out] * (G - 2), "bias": bias,
                    "ranks": {2: 2}, "order": order,
                    "linear_before_reset": int(mode == "GRU" and reset_after)}
            if all(cell_probes.steps_agree(
                    got, _cell_step(cell, R, u, h, c if mode == "LSTM" else None),
                    terms if bias is None else terms + np.abs(bias), G,
                    cell_probes.gated_state(G, h, c))
                   for h, c, u, got, terms in probes):
                return cell
        raise _NotAChain

    def _folded_first_step(self, chain: _Chain, cell: dict, delta: int) -> None:
        """Where the chain's initial state (and an LSTM's c) is its step from zero states with
        the product folded away (an export without an initial state: a constant C = 0 @ R + b
        in place of h @ R + b), that step joins the chain, which then starts from zeros (for
        the batch size C fixes, if it fixes one)."""
        from .plan import execute_node

        first = chain.slices[0]
        targets = [chain.h0] + chain.carried_in
        found, leaves = {}, set()
        for target in targets:
            nodes, leaf = self._computed_from_one_value(target, len(chain.steps[0]) + 2,
                                                        first.kind())
            if nodes is None:
                return
            found.update((id(nd), nd) for nd in nodes)
            leaves.add(leaf)
        if len(leaves) != 1:
            return
        leaf = leaves.pop()
        nodes = sorted(found.values(), key=lambda nd: self.position[id(nd)])
        sliced = self._step_input(leaf)
        if sliced.index != first.index - delta:
            return
        inside = {id(nd) for nd in nodes}
        if any(out in self.wanted or any(id(u) not in inside for u in self.users.get(out, ()))
               for nd in nodes for out in nd.outputs if out and out not in targets):
            return
        R = chain.R
        H, width, dtype = R.shape[0], R.shape[1], R.dtype
        rng = np.random.default_rng(20261127)

        def fits(rows: int):  # the states' rank where the nodes make the step of `rows` rows
            u = rng.standard_normal((rows, width) if sliced.rank == 2 else (1, rows, width))
            values = {leaf: u.astype(dtype)}
            try:
                with np.errstate(all="ignore"):
                    for nd in nodes:
                        values.update(zip(nd.outputs, execute_node(nd, [
                            None if not i else values[i] if i in values else self.constants[i]
                            for i in nd.inputs])))
            except Exception:  # noqa: BLE001 - not a step of this batch size
                return None
            got = [np.asarray(values[t]) for t in targets]
            if any(g.shape not in ((rows, H), (1, rows, H)) or g.dtype != dtype or
                   g.ndim != got[0].ndim for g in got):
                return None
            zeros = np.zeros((rows, H))
            u = u.reshape(rows, width)
            want = _cell_step(cell, R, u, zeros, zeros)
            gates = width // H
            terms = np.abs(u) if cell["bias"] is None else np.abs(u) + np.abs(cell["bias"])
            fitting = cell_probes.steps_agree([g.reshape(rows, H) for g in got], want, terms,
                                              gates, cell_probes.gated_state(gates, zeros, zeros))
            return got[0].ndim if fitting else None

        rows, found_ranks = None, {fits(3), fits(5)}
        if len(found_ranks) != 1 or None in found_ranks:  # a batch size its constants fix
            fixed = {v.shape[-2] for nd in nodes for v in map(self.constants.get, nd.inputs)
                     if isinstance(v, np.ndarray) and v.ndim >= 2}
            found_ranks = set()
            for rows in sorted(fixed):
                found_ranks = {fits(rows)} - {None}
                if found_ranks:
                    break
        rank = found_ranks.pop() if len(found_ranks) == 1 else None
        if rank is None or cell["ranks"].get(rank) != rank:  # its states are the chain's kind
            return
        chain.steps.insert(0, nodes)
        chain.states.insert(0, chain.h0)
        chain.carried.insert(0, list(chain.carried_in))
        chain.slices.insert(0, sliced)
        chain.h0, chain.carried_in, chain.zero_start = None, [], (rank, rows)

    def _computed_from_one_value(self, name: str, limit: int, kind: tuple) -> tuple:
        """(the nodes, in order, that compute `name` from constants and one step input of this
        `kind` (see _StepInput; None: any), that input), or (None, None) where more than `limit`
        nodes or another value take part."""
        nodes, leaves, seen, pending = [], [], set(), [name]
        while pending:
            value = pending.pop()
            if value in seen or value in self.constants:
                continue
            seen.add(value)
            node = self.producer.get(value)
            if node is None:
                return None, None
            try:
                if kind in (None, self._step_input(value).kind()):
                    leaves.append(value)
                    continue
            except _NotAChain:
                pass
            nodes.append(node)
            if len(nodes) > limit:
                return None, None
            pending.extend(i for i in node.inputs if i)
        if len(leaves) != 1:
            return None, None
        return sorted(nodes, key=lambda nd: self.position[id(nd)]), leaves[0]

    # ------------------------------------------------------------------ the fused node
    def _build(self, chain: _Chain, cell: tuple, delta: int) -> tuple:
        from .plan import PlanNode

        n = len(chain.steps)
        removed = [nd for step in chain.steps for nd in step]
        gone = {id(nd) for nd in removed}
        first = chain.slices[0]
        source = first.source
        slicers = [nd for s in chain.slices for nd in s.nodes]
        self._take_if_only_read(slicers, removed, gone)
        flipped = False
        flip = self.producer.get(source)
        if flip is not None and self._is_flip(flip):
            flipped = True
            self._take_if_only_read([flip], removed, gone)
            source = flip.inputs[0]
        if first.projection is not None:  # each step projects its own slice of X
            X, (_, W, b_ih) = source, first.projection
            W = W.T
        else:
            X, W, b_ih = self._projection(source, removed, gone)
        states = chain.states
        reverse = (delta < 0) != flipped
        in_time = [states[k] for k in (reversed(range(n)) if reverse else range(n))]
        outputs, sources = [], []
        joined = self._joining(in_time)
        if joined is not None and self._reaches(
                joined[0].inputs[:joined[3]] + joined[0].inputs[joined[3] + n:], gone):
            joined = None  # its other inputs come from the chain's steps: they run as nodes
        if joined is not None:
            concat, unsqueezes, axis, start = joined
            removed.append(concat)
            gone.add(id(concat))
            self._take_if_only_read(unsqueezes, removed, gone)
            outputs.append(concat.outputs[0])
            around = (concat.inputs[:start], concat.inputs[start + n:])
            sources.append(["y", axis] + list(around))  # inputs' names; slots once known
        for k, name in enumerate(states):
            if name in self.wanted or any(id(u) not in gone for u in self.users.get(name, ())):
                outputs.append(name)
                sources.append(("h", k))
        for name in chain.carried[-1]:  # the last c (the kernel gives no other)
            if name in self.wanted or any(id(u) not in gone for u in self.users.get(name, ())):
                outputs.append(name)
                sources.append(("c",))
        # every value the chain's nodes give that anything else reads is one of the outputs
        for nd in removed:
            for out in filter(None, nd.outputs):
                if out not in outputs and (out in self.wanted or any(
                        id(u) not in gone for u in self.users.get(out, ()))):
                    raise _NotAChain
        stack = self._stack(W, b_ih, chain, cell, reverse)
        removed.sort(key=lambda nd: self.position[id(nd)])
        made = {o for nd in removed for o in nd.outputs if o}
        inputs = [X] + ([chain.h0] if chain.h0 is not None else []) + chain.carried_in
        for nd in removed:
            for name in nd.inputs:
                if name and name not in made and name not in self.constants and name not in inputs:
                    inputs.append(name)
        for k, source in enumerate(sources):
            if source[0] == "y":  # the Concat's other inputs: computed before the chain's node
                _require(not made.intersection(source[2] + source[3]))
                inputs += [name for name in source[2] + source[3] if name not in inputs]
                sources[k] = ("y", source[1], [inputs.index(name) for name in source[2]],
                              [inputs.index(name) for name in source[3]])
        layer = UnrolledLayer(removed, stack, n, first.index, reverse, flipped, sources,
                              cell["ranks"], chain.zero_start, first.pieces)
        node = PlanNode(OP, inputs, outputs, name=f"unrolled {chain.steps[0][0].name}")
        node.state = layer
        return node, gone, max(self.position[id(nd)] for nd in removed)

    def _reaches(self, names: list, gone: set) -> bool:
        """Whether any of `names` is computed from what the nodes in `gone` compute."""
        floor = min(self.position[i] for i in map(id, self.nodes) if i in gone)
        pending, seen = list(names), set()
        while pending:
            node = self.producer.get(pending.pop())
            if node is None or id(node) in seen or self.position[id(node)] < floor:
                continue
            if id(node) in gone:
                return True
            seen.add(id(node))
            pending.extend(i for i in node.inputs if i)
        return False

    def _take_if_only_read(self, candidates: list, removed: list, gone: set) -> None:
        """Add each of `candidates` (last reader first) whose outputs only removed nodes read."""
        for nd in sorted(candidates, key=lambda nd: -self.position[id(nd)]):
            if id(nd) in gone or id(nd) in self.claimed:
                continue
            if all(out not in self.wanted and all(id(u) in gone for u in self.users.get(out, ()))
                   for out in filter(None, nd.outputs)):
                removed.append(nd)
                gone.add(id(nd))

    def _is_flip(self, node) -> bool:
        """A Slice that reverses axis 0 whole: starts -1, ends before the front, step -1."""
        if node.op != "Slice" or len(node.inputs) != 5:
            return False
        starts, ends = self._ints(node.inputs[1]), self._ints(node.inputs[2])
        axes, steps = self._ints(node.inputs[3]), self._ints(node.inputs[4])
        return starts == [-1] and ends is not None and len(ends) == 1 and \
            ends[0] <= _FLIP_END and axes == [0] and steps == [-1]

    def _projection(self, L: str, removed: list, gone: set) -> tuple:
        """(the layer's input, W [G*H, I], b_ih or None): X, W and b where L is X @ W.T (+ b)
        of constants W and b (its nodes removed where only the chain reads them), else L
        itself, through the identity."""
        projected = self._projected(L)
        if projected is None:
            return L, None, None
        taken, X, W, bias, _ = projected
        self._take_if_only_read(taken, removed, gone)
        return X, W.T, bias

    def _joining(self, in_time: list):
        """(a Concat of the chain's states in time order, the Unsqueezes between them, the axis
        they stack on or None, where they start among its inputs) where one reads them all in
        a row: on axis 0 as they are, or each unsqueezed on axis 0 or 1 and concatenated on
        that axis (torch.stack, Keras's return_sequences; other values before and after them,
        such as a first step of the loop that is not in the chain); None where none does."""
        n = len(in_time)
        for concat in self.users.get(in_time[0], ()):
            if concat.op == "Concat" and concat.attrs.get("axis") == 0 and concat.outputs[0] \
                    and id(concat) not in self.claimed:
                start = concat.inputs.index(in_time[0])
                if concat.inputs[start:start + n] == in_time:
                    return concat, [], None, start
        for first in self.users.get(in_time[0], ()):
            axes = self._ints(first.inputs[1]) if first.op == "Unsqueeze" and \
                len(first.inputs) == 2 else None
            if axes not in ([0], [1]):
                continue
            for concat in self.users.get(first.outputs[0], ()):
                if concat.op != "Concat" or concat.attrs.get("axis") != axes[0] or \
                        not concat.outputs[0] or id(concat) in self.claimed:
                    continue
                start = concat.inputs.index(first.outputs[0])
                unsqueezes = [self.producer.get(name) for name in concat.inputs[start:start + n]]
                if len(unsqueezes) == n and all(
                        u is not None and u.op == "Unsqueeze" and len(u.inputs) == 2 and
                        u.inputs[0] == state and self._ints(u.inputs[1]) == axes
                        for u, state in zip(unsqueezes, in_time)):
                    return concat, unsqueezes, axes[0], start
        return None

    def _stack(self, W, b_ih, chain: _Chain, cell: dict, reverse: bool):
        """The chain's layer: W [G*H, I] (None: the identity), b_ih, R and the cell's bias in
        its gate order, as a one-direction Stack."""
        from fastrnn.gates import reorder_gates

        from .recurrent_node import make_stack

        R, mode, order, bias = chain.R, cell["mode"], cell["order"], cell["bias"]
        rows, dtype = R.shape[1], R.dtype
        if W is None:
            W = np.eye(rows, dtype=dtype)
        _require(W.shape[0] == rows and W.dtype == dtype)

        def torch_order(a):
            return None if a is None else np.array(
                reorder_gates(np.asarray(a), mode, order, "torch"), dtype, copy=True)
        params = [{"w_ih": torch_order(W), "w_hh": torch_order(R.T), "b_ih": torch_order(b_ih),
                   "b_hh": torch_order(bias), "peephole": None}]
        attrs = {"mode": mode, "reverse": [reverse], "clip": None,
                 "activations": [[list(a) for a in cell["activations"]]],
                 "linear_before_reset": cell["linear_before_reset"], "input_forget": 0,
                 "dtype": str(dtype)}
        return make_stack(attrs, params)


def _product(node, constants):
    """(the operand, the constant matrix it is multiplied by as `operand @ matrix`, the constant
    added (Gemm's C, or None)) where `node` is MatMul(a, W) or Gemm(a, B, C) of constants
    (alpha = beta = 1, A not transposed), else None."""
    if node.op == "MatMul" and len(node.inputs) == 2:
        matrix, bias = constants.get(node.inputs[1]), None
    elif node.op == "Gemm" and 2 <= len(node.inputs) <= 3 and not node.attrs.get("transA", 0) \
            and node.attrs.get("alpha", 1.0) == 1.0 and node.attrs.get("beta", 1.0) == 1.0:
        matrix = constants.get(node.inputs[1])
        bias = constants.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 2 and node.inputs[2] and bias is None:
            return None
        if isinstance(matrix, np.ndarray) and matrix.ndim == 2 and node.attrs.get("transB", 0):
            matrix = matrix.T
    else:
        return None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or \
            matrix.dtype not in (np.float32, np.float64):
        return None
    if bias is not None and (bias.dtype != matrix.dtype or bias.size != matrix.shape[1]
                             or bias.shape[:-1] != (1,) * (bias.ndim - 1)):
        return None
    return node.inputs[0], matrix, bias


def _cell_step(cell: dict, R: np.ndarray, u, h, c) -> list:
    """The cell's step in float64 from the step's input u (the input projected, [N, G*H]) and
    states h, c [N, H], R [H, G*H] as the graph multiplies h by it: [h'] or [h', c']."""
    from fastrnn.gates import reorder_gates

    from .loop_cells import reference_step

    mode, R = cell["mode"], np.asarray(R, np.float64)
    u, h = np.asarray(u, np.float64), np.asarray(h, np.float64)
    bias = cell["bias"]
    if mode == "RNN":
        return [_activate(cell["activations"][0][0], u + h @ R + (0 if bias is None else bias))]
    order, G = cell["order"], R.shape[1] // R.shape[0]
    R_onnx = reorder_gates(R.T, mode, order, "onnx")
    B = np.zeros(2 * R.shape[1])
    if bias is not None:
        B[R.shape[1]:] = reorder_gates(bias, mode, order, "onnx")
    spec = {"G": G, "H": R.shape[0], "activations": cell["activations"],
            "linear_before_reset": cell["linear_before_reset"]}
    gx = reorder_gates(u, mode, order, "onnx", axis=1)
    return reference_step(spec, R_onnx, B, (gx, h @ R_onnx.T), h,
                          None if c is None else np.asarray(c, np.float64))


def _same(a, b) -> bool:
    return a is b or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and
                      a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))


def _activate(name: str, x):
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    return 0.5 * np.tanh(0.5 * x) + 0.5  # sigmoid (exp(-x) overflows at cell_probes.SCALES)


def ordered(nodes: list, fused: list) -> list | None:
    """The schedule's nodes with each chain's nodes replaced by its fused node, in an order that
    computes every value before it is read, as close to the old one as that allows (a fused node
    where its chain's last node was); None where no order does (a fused node reads what another
    gives and gives what that reads)."""
    gone = set().union(*(ids for _, ids, _ in fused))
    entries = [(i, node) for i, node in enumerate(nodes) if id(node) not in gone]
    entries += [(place, node) for node, _, place in fused]
    producer = {name: k for k, (_, node) in enumerate(entries) for name in node.outputs if name}
    waiting = [0] * len(entries)
    readers: dict[int, list] = {}
    for k, (_, node) in enumerate(entries):
        sources = {producer[name] for name in node.inputs if name in producer} - {k}
        waiting[k] = len(sources)
        for s in sources:
            readers.setdefault(s, []).append(k)
    ready = [(place, k) for k, (place, _) in enumerate(entries) if not waiting[k]]
    heapq.heapify(ready)
    result = []
    while ready:
        _, k = heapq.heappop(ready)
        result.append(entries[k][1])
        for r in readers.get(k, ()):
            waiting[r] -= 1
            if not waiting[r]:
                heapq.heappush(ready, (entries[r][0], r))
    return result if len(result) == len(entries) else None
