"""The calls that run unrolled recurrent chains (found by ``unrolled_cells``) on the kernel.

onnx-free. An UnrolledLayer holds one chain's one-direction Stack and how its outputs come from the
kernel's: each state a step of y, an LSTM's last c, a Concat of the states (with values around
them) from y as a whole. An UnrolledPair runs a forward and a backward chain over the same input
(a bidirectional layer) as one two-direction call, whose directions run at once where the Stack
runs them so. Each answers None for an input it does not take, and the chains' own nodes run
instead.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class _Accepted(NamedTuple):
    """What a chain's call takes from its inputs: the first step of X it reads, the batch size,
    the rank of its states and its initial states as (1, N, H), or None for zeros."""
    start: int
    rows: int
    rank: int
    h0: np.ndarray | None
    c0: np.ndarray | None


class UnrolledLayer:
    """A chain's fast call: ``call(ins)`` on the fused node's inputs gives the values of its
    outputs, or None for the chain's own nodes (``nodes``, run as ``steps``) to run."""

    def __init__(self, nodes: list, stack, n: int, first_index: int, reverse: bool, flipped: bool,
                 sources: list, out_ranks: dict, zero_start: tuple | None, pieces: int | None):
        from fastrnn.recurrent import canonical

        self.nodes, self.stack, self.n = nodes, stack, n
        self.steps: list = []  # the nodes' steps in the schedule that runs it
        first = stack.layers[0][0]
        self.dtype, self.input_size, self.hidden_size = first.dtype, first.input_size, first.hidden_size
        self.reverse = reverse
        self._first, self._flipped = first_index, flipped
        self.sources = sources  # per output: ("h", step), ("c",) or ("y", how the states join)
        self._out_ranks = out_ranks  # the initial state's rank -> the states' rank
        # a chain from a zero state (no initial state input): (the states' rank, the batch size
        # its folded first step takes, or None for any)
        self._zero_start = zero_start
        self._pieces = pieces  # the only length of X the chain's Split gives one step a piece
        self.mode = first.mode
        self._canonical = canonical

    def __repr__(self) -> str:
        params = self.stack.layers[0][0]
        if self.mode == "RNN":
            cell = f", activation={params.activations[0][0]!r}"
        else:  # the activations where they are not the defaults
            acts = [tuple(a) for a in params.activations]
            default = [("sigmoid", 0.0, 0.0)] + [("tanh", 0.0, 0.0)] * (len(acts) - 1)
            cell = "" if acts == default else f", activations={acts}"
            if self.mode == "GRU":
                cell += f", linear_before_reset={int(params.linear_before_reset)}"
        return (f"UnrolledLayer({self.mode}, input_size={self.input_size}, hidden_size="
                f"{self.hidden_size}, steps={self.n}{cell}"
                f"{', reverse' if self.reverse else ''})")

    def __call__(self, ins: list):
        taken = self.accepted(ins)
        if taken is None:
            return None
        X = ins[0][taken.start:taken.start + self.n]
        y, _, c_n = self.stack.run(self._canonical(X, self.dtype), taken.h0, taken.c0, None)
        return self.outputs(ins, taken, y, None if c_n is None else c_n[0])

    @property
    def state_ranks(self) -> set:
        """The ranks of the states the chain gives (for the initial states it takes)."""
        return {self._zero_start[0]} if self._zero_start is not None else set(
            self._out_ranks.values())

    def accepted(self, ins: list) -> _Accepted | None:
        """What the call takes from `ins`, or None where it does not take them."""
        X = ins[0]
        if type(X) is not np.ndarray or X.ndim != 3 or X.dtype != self.dtype or \
                X.shape[2] != self.input_size or X.shape[1] == 0:
            return None
        T, N = X.shape[:2]
        if self._pieces is not None and T != self._pieces:
            return None
        if self._zero_start is not None:
            rank, rows = self._zero_start
            if rows is not None and N != rows:
                return None
            h0 = None
        else:
            h0 = ins[1]
            rank = self._out_ranks.get(getattr(h0, "ndim", None))
            if rank is None or type(h0) is not np.ndarray or h0.dtype != self.dtype or \
                    h0.shape[-2:] != (N, self.hidden_size) or h0.size != N * self.hidden_size:
                return None
            h0 = h0.reshape(1, N, self.hidden_size)
        c0 = None
        if self.mode == "LSTM" and self._zero_start is None:  # its c after h0 in the inputs
            c0 = ins[2]
            if type(c0) is not np.ndarray or c0.dtype != self.dtype or \
                    c0.shape != (N, self.hidden_size):
                return None
            c0 = c0.reshape(1, N, self.hidden_size)
        # the window of X the chain's slices read, in X's time order
        first = T - 1 - self._first if self._flipped else self._first
        start = first - self.n + 1 if self.reverse else first
        if start < 0 or start + self.n > T:
            return None
        return _Accepted(start, N, rank, h0, c0)

    def outputs(self, ins: list, taken: _Accepted, y: np.ndarray, c_n,
                left_out: int | None = None) -> list | None:
        """The chain's outputs from the kernel's y (n, N, H), in time order, and last c (N, H)
        (None but for LSTM), but for the source at `left_out`; None where a Concat around the
        states does not take its values."""
        outs = []
        state = (1, taken.rows, self.hidden_size) if taken.rank == 3 else \
            (taken.rows, self.hidden_size)
        for k, source in enumerate(self.sources):
            if k == left_out:
                continue
            if source[0] == "c":
                outs.append(c_n)
                continue
            if source[0] == "y":  # the states in time order, concatenated or stacked
                _, axis, before, after = source
                outs.append(_joined(y, self.n, state, axis))
                if before or after:  # values the Concat has around the states
                    try:
                        outs[-1] = np.concatenate([ins[i] for i in before] + [outs[-1]] +
                                                  [ins[i] for i in after], axis=axis or 0)
                    except (ValueError, TypeError):  # the Concat's own run reports it
                        return None
                continue
            t = self.n - 1 - source[1] if self.reverse else source[1]
            outs.append(y[t].reshape(state))
        return outs


def _joined(y: np.ndarray, n: int, state: tuple, axis: int | None) -> np.ndarray:
    """The states y (n, N, H) joined as one Concat does: on axis 0 as they are (`axis` None), or
    each unsqueezed on `axis` (0 or 1) first. y itself where that is its shape (an array the
    call made, which a plan then gives as an output without copying it)."""
    if axis is None:
        joined = (n * state[0],) + state[1:]
        return y if y.shape == joined else y.reshape(joined)
    return np.moveaxis(y.reshape((n,) + state), 0, axis)


class UnrolledPair:
    """A forward and a backward chain over the same X as one call of a two-direction Stack.
    ``call(ins)`` on the fused node's inputs gives the two chains' outputs (`forward_ins` /
    `backward_ins`: where each finds its inputs among them). Where a Concat joins the two
    chains' joined states on their last axis (for some rank of states the chains give), read
    by nothing else, the call gives that Concat's value in place of theirs, last: the kernel's
    y itself, joined as the chains join their states (`joined`: 0 where the forward chain's
    states come first in it, else 1; the index of the joined states among each chain's
    sources; the Concat's axis). Where the chains read different windows of X (an input longer
    than the export's), or give states of other ranks or of a rank whose last axis the Concat
    does not join, each runs on its own.
    """

    def __init__(self, nodes: list, forward: UnrolledLayer, backward: UnrolledLayer,
                 forward_ins: list, backward_ins: list, joined: tuple | None):
        from fastrnn.recurrent import Stack, canonical

        self.nodes = nodes
        self.steps: list = []  # the nodes' steps in the schedule that runs it
        self.forward, self.backward = forward, backward
        self._ins = (forward_ins, backward_ins)
        self._joined = joined
        backward_first = joined is not None and joined[0] == 1
        self._slots = (1, 0) if backward_first else (0, 1)  # each chain's slot in the Stack
        chains = (backward, forward) if backward_first else (forward, backward)
        self.stack = Stack([[chain.stack.layers[0][0] for chain in chains]])
        # the source of each chain that the joining Concat takes, which the call leaves out
        self._left_out = (None, None) if joined is None else joined[1:3]
        self._canonical = canonical

    def __repr__(self) -> str:
        return f"UnrolledPair({self.forward!r}, {self.backward!r})"

    def __call__(self, ins: list):
        ins_f, ins_b = ([ins[k] for k in where] for where in self._ins)
        taken_f, taken_b = self.forward.accepted(ins_f), self.backward.accepted(ins_b)
        if taken_f is None or taken_b is None:
            return None
        if taken_f.start != taken_b.start or taken_f.rows != taken_b.rows or \
                taken_f.rank != taken_b.rank or not self._joins_last_axis(taken_f.rank):
            return self._each_alone(ins_f, ins_b)
        n, H, dtype = self.forward.n, self.forward.hidden_size, self.forward.dtype
        h0 = _initial((taken_f.h0, taken_b.h0), self._slots, taken_f.rows, H, dtype)
        c0 = _initial((taken_f.c0, taken_b.c0), self._slots, taken_f.rows, H, dtype)
        X = ins_f[0][taken_f.start:taken_f.start + n]
        y, _, c_n = self.stack.run(self._canonical(X, dtype), h0, c0, None)
        outs = []
        for chain, chain_ins, taken, d, left_out in zip(
                (self.forward, self.backward), (ins_f, ins_b), (taken_f, taken_b), self._slots,
                self._left_out):
            got = chain.outputs(chain_ins, taken, y[:, :, d * H:(d + 1) * H],
                                None if c_n is None else c_n[d], left_out)
            if got is None:
                return None
            outs += got
        if self._joined is not None:
            state = (1, taken_f.rows, 2 * H) if taken_f.rank == 3 else (taken_f.rows, 2 * H)
            outs.append(_joined(y, n, state, self.forward.sources[self._left_out[0]][1]))
        return outs

    def _joins_last_axis(self, rank: int) -> bool:
        """Whether the joining Concat (if any) joins the last axis of states of `rank`."""
        if self._joined is None:
            return True
        ndim = rank + (self.forward.sources[self._joined[1]][1] is not None)
        return self._joined[3] in (-1, ndim - 1)

    def _each_alone(self, ins_f: list, ins_b: list) -> list | None:
        """Both chains' outputs from a call each, the joining Concat's value made of theirs."""
        outs_f, outs_b = self.forward(ins_f), self.backward(ins_b)
        if outs_f is None or outs_b is None or self._joined is None:
            return None if outs_f is None or outs_b is None else outs_f + outs_b
        first, at_f, at_b, axis = self._joined
        parts = [outs_f.pop(at_f), outs_b.pop(at_b)]
        try:
            joined = np.concatenate(parts[::-1] if first else parts, axis=axis)
        except (ValueError, TypeError):  # the Concat's own run reports it
            return None
        return outs_f + outs_b + [joined]


def _initial(states: tuple, slots: tuple, rows: int, hidden_size: int, dtype):
    """The forward and backward chains' initial states (1, N, H) or None (zeros) as the Stack's
    (2, N, H) (`slots`: each one's), None where both start from zeros."""
    if states[0] is None and states[1] is None:
        return None
    result = np.zeros((2, rows, hidden_size), dtype)
    for state, d in zip(states, slots):
        if state is not None:
            result[d] = state[0]
    return result
