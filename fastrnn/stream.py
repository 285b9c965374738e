"""Step-by-step inference over a unidirectional stack, with every buffer allocated up front."""
import numba
import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError, UnsupportedError


class Stream:
    """Runs one time step per `step` call, carrying h (and c) between calls.

    `step(x_t)` returns a view of a preallocated (N, H_out) buffer that the next step overwrites;
    copy it to keep it. Streams are independent of each other and of the layer's own calls, so
    several can run on one model from different threads.
    """

    def __init__(self, layer, batch_size: int = 1):
        if layer.bidirectional:
            raise UnsupportedError(
                "a bidirectional layer cannot stream: its reverse direction needs the whole "
                "sequence; call the layer on the full sequence instead")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.layer = layer
        self.batch_size = rows = int(batch_size)
        self._directions = [directions[0] for directions in layer._directions]
        dtype = layer.dtype
        layers = layer.num_layers
        self._h = np.zeros((layers, rows, layer.hidden_out), dtype)
        self._c = np.zeros((layers, rows, layer.hidden_size), dtype) if layer.mode == "LSTM" else None
        self._x = np.zeros((1, rows, layer.input_size), dtype)
        # Each layer's step output, shaped (T=1, N, D=1, H_out) as the kernels write it; the next
        # layer reads it as its (1, N, H_out) input.
        self._outputs = [np.zeros((1, rows, 1, layer.hidden_out), dtype) for _ in range(layers)]
        self._lengths = np.ones(rows, dtype=np.int64)
        self._states = [(self._h[k],) if self._c is None else (self._h[k], self._c[k])
                        for k in range(layers)]
        self._scratch = [p.scratch(1, rows) for p in self._directions]
        self._inputs = [self._x] + [out[:, :, 0] for out in self._outputs[:-1]]
        self._result = self._outputs[-1][0, :, 0]
        self._x0 = self._x[0]
        self._step_shape = self._x.shape[1:]
        # Prebuilt kernel calls (serial: a step is far too small for a parallel region).
        calls = [p.serial_call(x, self._lengths, state, y, 0, scratch)
                 for p, x, state, y, scratch in zip(self._directions, self._inputs, self._states,
                                                    self._outputs, self._scratch)]
        self._calls = [(_compiled_for(kernel, args), args) for kernel, args in calls]

    def step(self, x_t) -> np.ndarray:
        """x_t (N, I) -> (N, H_out) for this step; the state advances by one step."""
        if type(x_t) is not np.ndarray:
            x_t = np.asarray(x_t)
        if x_t.shape != self._step_shape:
            raise ShapeError(f"step input must have shape {self._x.shape[1:]} "
                             f"(batch_size, input_size), got {x_t.shape}")
        if x_t.dtype.kind != "f":
            raise DTypeError(f"step input must be floating point, got dtype {x_t.dtype}")
        self._x0[...] = x_t
        for kernel, args in self._calls:
            kernel(*args)
        return self._result

    def reset(self) -> None:
        """Back to the zero initial state."""
        self._h.fill(0)
        if self._c is not None:
            self._c.fill(0)

    @property
    def state(self):
        """Copies of h (L, N, H_out) and, for LSTM, (h, c) with c (L, N, H): torch's h_n / c_n."""
        if self._c is None:
            return self._h.copy()
        return self._h.copy(), self._c.copy()

    @state.setter
    def state(self, value) -> None:
        if self._c is None:
            targets = [("h", self._h, value)]
        else:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ArgumentError("an LSTM stream's state is a tuple (h, c)")
            targets = [("h", self._h, value[0]), ("c", self._c, value[1])]
        arrays = [np.asarray(v) for _, _, v in targets]
        for (name, target, _), arr in zip(targets, arrays):  # check all before changing any
            if arr.dtype.kind not in "fiu":
                raise DTypeError(f"state {name} must be real, got dtype {arr.dtype}")
            if arr.shape != target.shape:
                raise ShapeError(f"state {name} must have shape {target.shape}, got {arr.shape}")
        for (_, target, _), arr in zip(targets, arrays):
            target[...] = arr


def _compiled_for(kernel, args):
    """The kernel's compiled function for exactly these arguments' types. A stream passes the same
    buffers every step, so it can skip numba's per-call type dispatch (~0.2 us of a ~5 us step)."""
    compile_for = getattr(kernel, "compile", None)
    if compile_for is None:  # numba's JIT disabled: a plain Python function
        return kernel
    return compile_for(tuple(numba.typeof(arg) for arg in args))
