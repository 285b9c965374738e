"""The call that runs an unrolled recurrent chain (found by ``unrolled_cells``) on the kernel.

onnx-free. An UnrolledLayer holds the chain's one-direction Stack and how its outputs come from the
kernel's: each state a step of y, an LSTM's last c, a Concat of the states (with values around
them) from y as a whole. It answers None for an input it does not take, and the chain's own nodes
run instead.
"""
from __future__ import annotations

import numpy as np


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
        self._first, self._reverse, self._flipped = first_index, reverse, flipped
        self._sources = sources  # per output: ("h", step) or ("y", how the states are joined)
        self._out_ranks = out_ranks  # the initial state's rank -> the states' rank
        # a chain from a zero state (no initial state input): (the states' rank, the batch size
        # its folded first step takes, or None for any)
        self._zero_start = zero_start
        self._pieces = pieces  # the only length of X the chain's Split gives one step a piece
        self._mode = first.mode
        self._canonical = canonical

    def __repr__(self) -> str:
        act = self.stack.layers[0][0].activations[0][0]
        act = f", activation={act!r}" if self._mode == "RNN" else ""
        return (f"UnrolledLayer({self._mode}, input_size={self.input_size}, hidden_size="
                f"{self.hidden_size}, steps={self.n}{act}"
                f"{', reverse' if self._reverse else ''})")

    def __call__(self, ins: list):
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
        if self._mode == "LSTM" and self._zero_start is None:  # its c after h0 in the inputs
            c0 = ins[2]
            if type(c0) is not np.ndarray or c0.dtype != self.dtype or \
                    c0.shape != (N, self.hidden_size):
                return None
            c0 = c0.reshape(1, N, self.hidden_size)
        # the window of X the chain's slices read, in X's time order
        first = T - 1 - self._first if self._flipped else self._first
        start = first - self.n + 1 if self._reverse else first
        if start < 0 or start + self.n > T:
            return None
        y, _, c_n = self.stack.run(self._canonical(X[start:start + self.n], self.dtype), h0, c0,
                                   None)
        outs = []
        state = (1, N, self.hidden_size) if rank == 3 else (N, self.hidden_size)
        for source in self._sources:
            if source[0] == "c":
                outs.append(c_n[0])
                continue
            if source[0] == "y":  # the states in time order, concatenated or stacked
                _, axis, before, after = source
                states = y.reshape((self.n,) + state)
                states = states.reshape((self.n * state[0],) + state[1:]) if axis is None \
                    else np.moveaxis(states, 0, axis)
                if before or after:  # values the Concat has around the states
                    try:
                        states = np.concatenate([ins[k] for k in before] + [states] +
                                                [ins[k] for k in after], axis=axis or 0)
                    except (ValueError, TypeError):  # the Concat's own run reports it
                        return None
                outs.append(states)
                continue
            t = self.n - 1 - source[1] if self._reverse else source[1]
            outs.append(y[t].reshape(state))
        return outs
