"""Keras Bidirectional layers that tf2onnx leaves as two Loops over the cell: the forward and the
backward Loop as one fused node, so that the kernel runs both directions in one call (at once,
one thread each, where the Stack runs a layer's directions so).

onnx-free. tf2onnx writes a Bidirectional layer it cannot rewrite (a masked one, Keras 3's GRU:
see loop_cells) as a Loop over X and a Loop over ReverseSequence(X) of every entry's whole
length, with a mask a reversed mask too. ``fuse`` finds each such pair of Loops that loop_cells
recognised and puts one node of op OP in the place of the two. Its call runs a Stack of the
forward cell and the backward cell as a reverse direction over X: a reverse direction's state
at step t is the backward Loop's at its iteration T - 1 - t. With a mask, each row's taken
steps run moved to the front (``LoopedCell.shifted``), the same for both directions (the
backward Loop takes the same steps, reversed), and the reverse direction over the first
`length` of them is the backward Loop's run reversed within that length. Anything else (a run
over part of X, reversals of other lengths, inputs either Loop declines) runs the two Loops as
they are.
"""
from __future__ import annotations

import numpy as np

from . import recurrent_node
from .control_flow import LOOP
from .loop_cells import LoopedCell
from .unrolled_cells import ordered

OP = "LoopedPair"


def fuse(nodes: list) -> list:
    """`nodes` (a schedule's, in order) with each forward and backward Loop of a Bidirectional
    layer replaced by a node of op OP (its state: their LoopedPair)."""
    loops = [node for node in nodes
             if node.op == LOOP and isinstance(node.state, LoopedCell)]
    if len(loops) < 2:
        return nodes
    producer = {name: node for node in nodes for name in node.outputs if name}
    position = {id(node): k for k, node in enumerate(nodes)}
    entries, paired = [], set()
    for backward in loops:
        found = _forward_of(backward, loops, producer, paired)
        if found is None:
            continue
        forward, lens = found
        paired.update((id(forward), id(backward)))
        entries.append((_pair_node(forward, backward, lens), {id(forward), id(backward)},
                        max(position[id(forward)], position[id(backward)])))
    # a pair where one Loop reads what the other gives cannot run as one call
    return (ordered(nodes, entries) or nodes) if entries else nodes


def _forward_of(backward, loops: list, producer: dict, paired: set):
    """(the Loop whose X (and mask) `backward` reads reversed, the names of the reversals'
    lengths) where it is one of the same cell, else None."""
    cell = backward.state
    reversal = _whole_reversal(producer.get(backward.inputs[cell.x_slot]))
    if reversal is None or id(backward) in paired:
        return None
    for forward in loops:
        other = forward.state
        if forward is backward or id(forward) in paired or \
                forward.inputs[other.x_slot] != reversal.inputs[0] or \
                _pairing_key(other) != _pairing_key(cell):
            continue
        lens = [reversal.inputs[1]]
        if cell.masked:
            mask_reversal = _whole_reversal(producer.get(backward.inputs[cell.mask_slot]))
            if mask_reversal is None or \
                    mask_reversal.inputs[0] != forward.inputs[other.mask_slot]:
                continue
            lens.append(mask_reversal.inputs[1])
        return forward, lens
    return None


def _whole_reversal(node):
    """`node` where it is a ReverseSequence over axis 0 of a time-major tensor (whether it
    reverses whole sequences is checked on its lengths at run time)."""
    if node is None or node.op != "ReverseSequence" or len(node.inputs) != 2 or \
            node.attrs.get("time_axis", 0) != 0 or node.attrs.get("batch_axis", 1) != 1:
        return None
    return node


def _pairing_key(cell: LoopedCell) -> tuple:
    """What a forward and a backward Loop's cells must share to run as one two-direction layer."""
    return (cell.mode, cell.input_size, cell.hidden_size, str(cell.dtype),
            cell.linear_before_reset, cell.masked, cell.mask_trailing)


def _pair_node(forward, backward, lens: list):
    from .plan import PlanNode

    inputs = list(forward.inputs)
    inputs += [name for name in list(backward.inputs) + lens if name not in inputs]
    node = PlanNode(OP, inputs, list(forward.outputs) + list(backward.outputs),
                    name=f"{forward.name} + {backward.name}")
    node.state = LoopedPair([forward, backward], [inputs.index(n) for n in forward.inputs],
                            [inputs.index(n) for n in backward.inputs],
                            [inputs.index(n) for n in lens])
    return node


class LoopedPair:
    """A Bidirectional layer's forward and backward Loop as one call of a two-direction Stack.
    ``call(ins)`` on the fused node's inputs gives the two Loops' outputs (`forward_ins` /
    `backward_ins`: where each finds its inputs among them; `lens_at`: where the reversals'
    lengths are), or None, when the Loops run on their own (``nodes``)."""

    def __init__(self, nodes: list, forward_ins: list, backward_ins: list, lens_at: list):
        from fastrnn.recurrent import canonical

        self.nodes = nodes
        self.steps: list = []  # the nodes' steps in the schedule that runs it
        self.forward, self.backward = (node.state for node in nodes)
        self._ins = (forward_ins, backward_ins)
        self._lens_at = lens_at
        attrs = dict(self.forward.attrs, reverse=[False, True],
                     activations=self.forward.attrs["activations"] +
                     self.backward.attrs["activations"])
        self.stack = recurrent_node.make_stack(attrs, self.forward.params + self.backward.params)
        self._canonical = canonical

    def __repr__(self) -> str:
        return f"LoopedPair({self.forward!r}, {self.backward!r})"

    def __call__(self, ins: list):
        ins_f, ins_b = ([ins[k] for k in where] for where in self._ins)
        got_f, got_b = self.forward.accepted(ins_f), self.backward.accepted(ins_b)
        if got_f is None or got_b is None:
            return None
        X = ins_f[self.forward.x_slot]
        T, N = X.shape[:2]
        if not (got_f.start == got_b.start == 0 and got_f.steps == got_b.steps == T) or \
                (got_f.taken is None) != (got_b.taken is None):
            return None
        for k in self._lens_at:  # the backward Loop's X (and mask) all of X reversed
            lens = ins[k]
            if type(lens) is not np.ndarray or lens.shape != (N,) or \
                    lens.dtype.kind not in "iu" or (lens != T).any():
                return None
        initial = [got_f.initial, got_b.initial]
        h0 = np.stack([states["h"] for states in initial])
        c0 = np.stack([states["c"] for states in initial]) if "c" in got_f.initial else None
        H = self.forward.hidden_size
        if got_f.taken is None:
            y, h_n, c_n = self.stack.run(self._canonical(X, self.forward.dtype), h0, c0, None)
            y_f, y_b = y[:, :, :H], y[::-1, :, H:]
            seqs_f = {role: y_f for role in self.forward.sequences}
            seqs_b = {role: y_b for role in self.backward.sequences}
        else:
            shifted, lengths = self.forward.shifted(X, got_f.taken)
            y, h_n, c_n = self.stack.run(shifted, h0, c0, lengths)
            seqs_f = self.forward.spread(y[:, :, :H], got_f)
            seqs_b = self.backward.spread(y[:, :, H:], got_b, _reversed_within(lengths, T))
        c_f, c_b = (None, None) if c_n is None else (c_n[0], c_n[1])
        return (self.forward.outputs(ins_f, got_f, seqs_f, h_n[0], c_f) +
                self.backward.outputs(ins_b, got_b, seqs_b, h_n[1], c_b))


def _reversed_within(lengths, T: int):
    """[T, N]: per step j and row n, the step of a run reversed within its first lengths[n]
    steps that it reads (lengths[n] - 1 - j there, j after them)."""
    steps = np.arange(T).reshape(T, 1)
    return np.where(steps < lengths, lengths - 1 - steps, steps)
