"""Stacked recurrent nodes of a plan run as one multi-layer call.

onnx-free. Exporters write a stacked RNN (torch's nn.LSTM(num_layers=2), say) as one ONNX RNN / GRU /
LSTM node per layer, joined by the ops that turn a node's Y [T, D, N, H] into the next one's X
[T, N, D*H] (Squeeze of axis 1; Transpose(0, 2, 1, 3) and Reshape(0, 0, -1) for two directions),
with the layers' final states concatenated on axis 0. ``fuse`` finds such chains among the nodes a
schedule runs and puts one node of op OP in the place of each: a fastrnn Stack of the layers'
prepared directions, called once, that gives the chain's outputs (a T = 1 call of a two-layer
export saves a node call, the joins and the concatenations). The results are the same arrays, bit
for bit: the layers run the same kernels on the same values. An input the fused call declines
(another dtype or size) runs the chain's own nodes instead (``Fused.nodes``).
"""
from __future__ import annotations

import numpy as np

from . import recurrent_node

OP = "FusedLayers"


class Fused:
    """A chain's fast call: ``call(ins)`` on the first layer's X gives the values of the fused
    node's outputs, or None."""

    def __init__(self, nodes: list, stack, outputs: list, sources: list):
        from fastrnn.recurrent import canonical

        self.nodes, self.stack = nodes, stack  # the chain's own nodes, in order
        self.outputs = outputs  # the names of the values it gives
        self._sources = sources  # per output: ("y",) or ("h" | "c", first state, stop)
        self.steps: list = []  # the nodes' steps in the schedule that runs it
        first = stack.layers[0][0]
        self._dtype, self._features = first.dtype, first.input_size
        self._directions = len(stack.layers[0])
        self._canonical = canonical

    def __repr__(self) -> str:
        return f"FusedLayers({recurrent_node.describe(self.stack)})"

    def __call__(self, ins: list):
        X = ins[0]
        if type(X) is not np.ndarray or X.ndim != 3 or X.dtype != self._dtype:
            return None
        T, N, I = X.shape
        if I != self._features or T == 0 or N == 0:
            return None
        y, h_n, c_n = self.stack.run(self._canonical(X, self._dtype), None, None, None)
        outs = []
        for source in self._sources:
            if source[0] == "y":
                outs.append(y.reshape(T, N, self._directions, -1).transpose(0, 2, 1, 3))
            else:
                outs.append((h_n if source[0] == "h" else c_n)[source[1]:source[2]])
        return outs


def fuse(nodes: list, wanted: set, constants) -> list:
    """`nodes` (a schedule's, in order) with each chain of two or more fusable recurrent layers
    replaced by a node of op OP (its state: the chain's Fused)."""
    return _Chains(nodes, wanted, constants).fused()


class _Chains:
    def __init__(self, nodes: list, wanted: set, constants):
        self.nodes, self.wanted, self.constants = nodes, wanted, constants
        self.users: dict[str, list] = {}
        for node in nodes:
            for name in filter(None, node.inputs):
                self.users.setdefault(name, []).append(node)

    def fused(self) -> list:
        result, taken = [], set()
        for node in self.nodes:
            if id(node) in taken:
                continue
            chain = self._chain(node)
            fused = None if chain is None else self._fused(chain)
            if fused is None:
                result.append(node)
                continue
            taken.update(id(n) for n in fused.nodes)
            result.append(self._as_node(fused))
        return result

    def _only_reader(self, name: str):
        """The one node that reads `name`, where it is not also wanted."""
        readers = self.users.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.wanted else None

    def _ints(self, node, index: int, attr: str | None):
        """Input `index` of `node` as a list of ints where it is a constant 1-D integer array (or,
        before it became an input, its attribute `attr`), else None."""
        if attr is not None and attr in node.attrs:
            return list(node.attrs[attr])
        value = self.constants.get(node.inputs[index]) if len(node.inputs) > index else None
        if value is None or value.dtype.kind not in "iu" or value.ndim != 1:
            return None
        return [int(v) for v in value]

    def _chain(self, first) -> list | None:
        """[layer, its joins, layer, ...] from `first`, or None where no layer follows it."""
        if not _fusable(first):
            return None
        chain, layer = [first], first
        while True:
            joins = self._joins(layer)
            if joins is None:
                return chain if len(chain) > 1 else None
            chain += joins
            layer = joins[-1]

    def _joins(self, layer) -> list | None:
        """The join nodes from `layer`'s Y to the next layer, then that layer; None where Y has
        other readers, is wanted, or reaches no layer that runs with `layer`."""
        nxt = self._only_reader(layer.outputs[0])
        if nxt is None:
            return None
        if len(layer.attrs["reverse"]) == 1:
            if nxt.op != "Squeeze" or self._ints(nxt, 1, "axes") != [1]:
                return None
            joins = [nxt]
        else:
            if nxt.op != "Transpose" or nxt.attrs.get("perm") != [0, 2, 1, 3]:
                return None
            reshape = self._only_reader(nxt.outputs[0])
            if reshape is None or reshape.op != "Reshape" or reshape.attrs.get("allowzero", 0) \
                    or self._ints(reshape, 1, None) != [0, 0, -1]:
                return None
            joins = [nxt, reshape]
        following = self._only_reader(joins[-1].outputs[0])
        if following is None or not _fusable(following) or \
                following.inputs[0] != joins[-1].outputs[0] or \
                any(following.attrs.get(k) != layer.attrs.get(k) for k in ("mode", "dtype", "reverse")):
            return None
        return joins + [following]

    def _fused(self, chain: list) -> Fused | None:
        """The chain's Fused: its outputs what anything after it reads (or the schedule wants) of
        the last layer's Y and of every layer's final states; where one Concat on axis 0 of all
        the layers' h (or c) is their only reader, its output instead, and it joins the chain."""
        from fastrnn.errors import FastRNNError
        from fastrnn.recurrent import Stack

        layers = [n for n in chain if n.op == recurrent_node.OP]
        D = len(layers[0].attrs["reverse"])
        try:
            stack = Stack([n.state.layers[0] for n in layers])
        except FastRNNError:  # sizes that do not chain (the layers would fail on their own)
            return None
        nodes, outputs, sources = list(chain), [], []
        for k, state in ((1, "h"), (2, "c")):
            names = [n.outputs[k] if len(n.outputs) > k else "" for n in layers]
            concat = self._concatenation(names)
            if concat is not None:
                nodes.append(concat)
                outputs.append(concat.outputs[0])
                sources.append((state, 0, len(layers) * D))
                continue
            for i, name in enumerate(names):
                if name and (name in self.wanted or self.users.get(name)):
                    outputs.append(name)
                    sources.append((state, i * D, (i + 1) * D))
        last = layers[-1].outputs[0]
        if last and (last in self.wanted or self.users.get(last)):
            outputs.append(last)
            sources.append(("y",))
        return Fused(nodes, stack, outputs, sources)

    def _concatenation(self, names: list):
        """The Concat on axis 0 of exactly `names`, in order, where it is their only reader."""
        if not all(names):
            return None
        concat = self._only_reader(names[0])
        if concat is None or concat.op != "Concat" or concat.attrs.get("axis") != 0 or \
                concat.inputs != names or any(self._only_reader(n) is not concat for n in names):
            return None
        return concat

    @staticmethod
    def _as_node(fused: Fused):
        from .plan import PlanNode

        node = PlanNode(OP, [fused.nodes[0].inputs[0]], fused.outputs,
                        name="+".join(n.name for n in fused.nodes if n.op == recurrent_node.OP))
        node.state = fused
        return node


def _fusable(node) -> bool:
    """A recurrent node with static weights, time-major, that starts from zero states and runs
    every row to the end (what a fused stack's call does)."""
    return (node.op == recurrent_node.OP and node.state is not None
            and not node.attrs.get("layout", 0) and not any(node.inputs[1:]))
