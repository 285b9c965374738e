"""Step-by-step inference over a unidirectional stack, with every buffer allocated up front."""
import threading
import weakref
from typing import Callable

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError, UnsupportedError
from .kernels import units
from .kernels._jit import compiled_for
from .recurrent import aligned
from .threads import workers
from .validation import as_array, check_elements


class Stream:
    """Runs one time step per `step` call, carrying h (and c) between calls.

    `step(x_t)` returns a view of a preallocated (N, H_out) buffer that the next step overwrites;
    copy it to keep it. Streams are independent of each other and of the layer's own calls, so
    several can run on one model from different threads; one stream is one sequence's state, to
    be stepped by one thread at a time (unchecked: two at once mix their steps). A stream follows
    its layer's weights: after `layer.load_state_dict` its next step uses the new ones, from the
    state it has (a step under way when another thread loads runs the old ones in every layer).
    On several threads (`set_num_threads`, read at every step) a step splits each layer over
    them as a one-step layer call would (large weights by hidden units, batches of 8+ rows by
    rows); other layers step on one thread.
    """

    step: Callable[[np.ndarray], np.ndarray]  # x_t (N, I) -> (N, H_out); built per stream

    def __init__(self, layer, batch_size: int = 1):
        if layer.bidirectional:
            raise UnsupportedError(
                "a bidirectional layer cannot stream: its reverse direction needs the whole "
                "sequence; call the layer on the full sequence instead")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= _MAX_BATCH:
            raise ArgumentError(f"batch_size must be an int in [1, {_MAX_BATCH}], got "
                                f"{batch_size!r}")
        self.layer = layer
        self.batch_size = rows = int(batch_size)
        stack = layer._stack
        directions = _directions(stack)
        layers, inputs = layer.num_layers, layer.input_size
        hout, hid = layer.hidden_out, layer.hidden_size
        lstm = layer.mode == "LSTM"
        # Every array a step touches lies in one buffer (so that a step passes few arrays, see
        # kernels/engine.run_stream), each starting on a 64-byte line: the input, every layer's
        # h and c, every layer's step output (the next layer's input) and scratch.
        offsets = []
        total = 0
        for size in ([rows * inputs, layers * rows * hout, layers * rows * hid if lstm else 0]
                     + [rows * hout] * layers + [p.scratch_size(1, rows) for p in directions]):
            offsets.append(total)
            total += -(-size // 16) * 16
        check_elements(f"a stream of {rows} rows", total)
        x_at, h_at, c_at = offsets[:3]
        y_at, scratch_at = offsets[3:3 + layers], offsets[3 + layers:]
        buf = aligned(total, layer.dtype)
        self._x0 = buf[x_at:x_at + rows * inputs].reshape(rows, inputs)
        self._h = buf[h_at:h_at + layers * rows * hout].reshape(layers, rows, hout)
        self._c = buf[c_at:c_at + layers * rows * hid].reshape(layers, rows, hid) if lstm else None
        self._result = buf[y_at[-1]:y_at[-1] + rows * hout].reshape(rows, hout)
        self._buf = buf
        self._layer_inputs = [buf[at:at + rows * hout].reshape(rows, hout) for at in y_at[:-1]]
        self._offsets = [(h_at + k * rows * hout, c_at + k * rows * hid, y_at[k], scratch_at[k])
                         for k in range(layers)]
        # what a layer call's kernels take, for the steps that split a layer over threads: 3-D
        # inputs and outputs of one step, lengths of one step, each layer's scratch
        self._inputs3 = [a.reshape(1, rows, -1) for a in [self._x0] + self._layer_inputs]
        self._outputs3 = [buf[at:at + rows * hout].reshape(1, rows, hout) for at in y_at]
        self._scratch = [buf[at:at + p.scratch_size(1, rows)]
                         for at, p in zip(scratch_at, directions)]
        self._lengths = np.ones(rows, np.int64)
        splits = any(_splits(p, rows) for p in directions)
        self.step, self._rebind = self._stepper(self._calls(directions), splits)
        with _FOLLOWING:
            _STREAMS.setdefault(layer, weakref.WeakSet()).add(self)
            if layer._stack is not stack:  # loaded while this stream was being built
                self._weights_changed()

    def _calls(self, directions):
        """(first layer's compiled kernel, its arguments after the input, [(compiled kernel,
        arguments) of each further layer], _SplitSteps) for these DirectionParams of the layer:
        the one-thread steps, and the steps on several threads."""
        calls = [p.stream_call(self._buf, self.batch_size, *offsets)
                 for p, offsets in zip(directions, self._offsets)]
        (first, args), rest = calls[0], calls[1:]
        first = compiled_for(first, (self._x0, *args))
        rest = [(compiled_for(kernel, (x, *args)), (x, *args))
                for x, (kernel, args) in zip(self._layer_inputs, rest)]
        c = directions[0].dummy_c if self._c is None else self._c
        state = (self._lengths, self._h, c)
        split = _SplitSteps(directions, [(first, (self._x0, *args))] + rest, [
            (x, *state, y, scratch)
            for x, y, scratch in zip(self._inputs3, self._outputs3, self._scratch)])
        return first, args, rest, split

    def _weights_changed(self) -> None:
        """Called by the layer's load_state_dict: the next step runs the new weights."""
        self._rebind(self._calls(_directions(self.layer._stack)))

    def _stepper(self, calls, splits: bool):
        """The stream's `step` function, a closure over everything a step reads (a step's
        Python is ~0.25 us this way, ~0.4 us as a method reading its attributes), and the
        function that rebinds it to new `_calls`. Neither holds a reference to the stream, so
        that a stream is freed as soon as it is dropped. `splits`: some layer's one-step call
        splits over threads (_splits); the step then asks for the thread count first."""
        x0, result = self._x0, self._result
        dtype, shape = x0.dtype, x0.shape
        ndarray = np.ndarray

        def rebind(new_calls) -> None:
            nonlocal calls
            calls = new_calls

        def step(x_t) -> np.ndarray:
            """x_t (N, I) -> (N, H_out) for this step; the state advances by one step."""
            # one read of the calls: a step rebound by another thread's load_state_dict runs the
            # old weights or the new ones in every layer, never some of each
            first, (buf, meta, wbuf, wpk, fcfg), rest, _ = calls
            # The first layer reads x_t itself when it is what its kernel was compiled for (the
            # layer's dtype, C-contiguous, aligned, writeable: 'carray'), else a checked copy.
            # x_t may be the previous step's output: a step reads its input before writing.
            if not (type(x_t) is ndarray and x_t.dtype is dtype and x_t.shape == shape
                    and x_t.flags.carray):
                x_t = _copied(x_t, x0)
            first(x_t, buf, meta, wbuf, wpk, fcfg)
            for kernel, args in rest:
                kernel(*args)
            return result

        def split_step(x_t) -> np.ndarray:
            """step, with each layer split over the threads where a one-step layer call would
            be (a layer call's kernels read their input from the stream's own buffer)."""
            count = workers()
            if count < 2:
                return step(x_t)
            layers = calls[3].calls(count)
            _copied(x_t, x0)
            for call, args in layers:
                call(*args)
            return result
        return (split_step if splits else step), rebind

    def __reduce__(self):
        """Copied and pickled as its layer, batch size and state: a copy is a stream of its own,
        with buffers of its own (copy.copy's on the same layer, deepcopy's on a copy of it)."""
        return _restored, (self.layer, self.batch_size, self.state)

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
        arrays = [as_array(v, f"state {name}") for name, _, v in targets]
        for (name, target, _), arr in zip(targets, arrays):  # check all before changing any
            if arr.dtype.kind not in "fiu":
                raise DTypeError(f"state {name} must be real, got dtype {arr.dtype}")
            if arr.shape != target.shape:
                raise ShapeError(f"state {name} must have shape {target.shape}, got {arr.shape}")
        for (_, target, _), arr in zip(targets, arrays):
            target[...] = arr


def _restored(layer, batch_size: int, state) -> Stream:
    stream = Stream(layer, batch_size)
    stream.state = state
    return stream


# Each layer's live streams, for weights_changed. Kept here rather than on the layer, where a
# copy of the layer would carry (and then rebind) the original's streams. _FOLLOWING guards it:
# streams are built (and registered) in some threads while a load_state_dict in another walks
# them.
_STREAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FOLLOWING = threading.Lock()


def weights_changed(layer) -> None:
    """Rebind the layer's streams to its new weights (its load_state_dict calls this)."""
    with _FOLLOWING:
        for stream in list(_STREAMS.get(layer, ())):
            stream._weights_changed()


# Rows of a stream: its buffer is allocated up front, so a size is refused before numpy would
# fail on it (2**31 rows of one float is 8 GiB).
_MAX_BATCH = 1 << 31


def _directions(stack):
    """A unidirectional stack's DirectionParams, one per layer."""
    return [directions[0] for directions in stack.layers]


def _splits(params, rows: int) -> bool:
    """Whether a one-step call of this direction over `rows` rows splits over threads with
    enough of them (DirectionParams.route: large weights, or batches of 8+ rows)."""
    return params.route(1, rows, _MANY_THREADS)[1] > 1


_MANY_THREADS = 1 << 10


class _SplitSteps:
    """A stream's step on several threads: each layer as the layer's own one-step call runs it
    (DirectionParams.bind over views of the stream's buffer: the work split over threads by
    hidden units or by rows) where that splits, else through its one-thread stream kernel. The
    calls are planned once per thread count. Holds no reference to the stream."""

    def __init__(self, directions, serial, call_args):
        self._directions = directions
        self._serial = serial  # [(compiled stream kernel, its arguments)] of each layer
        self._call_args = call_args  # [(x, lengths, hs, cs, y, scratch)] of each layer's call
        self._plans = {}

    def calls(self, count: int):
        """[(call, arguments)] of each layer for a step on `count` threads."""
        plan = self._plans.get(count)
        if plan is None:
            plan = self._plans[count] = [self._planned(k, count)
                                         for k in range(len(self._directions))]
        return plan

    def _planned(self, layer: int, count: int):
        params = self._directions[layer]
        rows = self._call_args[layer][0].shape[1]
        route = params.route(1, rows, count)
        if route[1] < 2:
            return self._serial[layer]
        sync = units.sync_array(route[1])  # the steps' own: nothing allocated per step
        return params.bind(route, rows, layer, 0, sync), self._call_args[layer]


def _copied(x_t, x0):
    """x_t checked and copied into x0, the stream's own input buffer."""
    if type(x_t) is np.ndarray and x_t.dtype is x0.dtype and x_t.shape == x0.shape:
        x0[...] = x_t  # the common input, without the general checks (0.5 against 0.2 us)
        return x0
    x_t = as_array(x_t, "step input")
    if x_t.shape != x0.shape:
        raise ShapeError(f"step input must have shape {x0.shape} "
                         f"(batch_size, input_size), got {x_t.shape}")
    if x_t.dtype.kind != "f":
        raise DTypeError(f"step input must be floating point, got dtype {x_t.dtype}")
    x0[...] = x_t
    return x0
