"""PyTorch-compatible recurrent layers (RNN, GRU, LSTM) on numpy arrays.

Parameters live in PyTorch's names, shapes and gate order (the canonical layout); they are packed
for the kernels once, whenever they are set. Calls follow torch's shapes and return structure.
"""
import threading
from typing import Mapping

import numpy as np

from . import activations as acts
from .errors import ArgumentError, DTypeError, ShapeError
from .gates import NUM_GATES
from .recurrent import DirectionParams, Stack, canonical
from .stream import Stream, weights_changed
from .validation import (MAX_LAYERS, NO_INIT, as_array, as_flag, build_from_config, check_clip,
                         check_dtype, check_elements, check_seed, check_weight_dtype,
                         positive_int, real_array)

SUFFIXES = ("", "_reverse")
# Taken to set a layer's parameters: a load that another thread's load overtook is packed again
# on top of it, so that partial loads (strict=False) from several threads all land.
_LOADING = threading.Lock()


class RecurrentLayer:
    """Shared machinery of RNN, GRU and LSTM; use the subclasses."""

    mode = ""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, proj_size=0, dtype=np.float32, *, activations=None,
                 activation_alpha=None, activation_beta=None, clip=None,
                 linear_before_reset=True, peepholes=False, input_forget=False, seed=None,
                 weight_dtype=None):
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.proj_size = positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size and self.proj_size:
            raise ArgumentError(f"proj_size must be smaller than hidden_size ({self.hidden_size}), "
                                f"got {self.proj_size}")
        self.bias = as_flag(bias, "bias")
        self.batch_first = as_flag(batch_first, "batch_first")
        self.bidirectional = as_flag(bidirectional, "bidirectional")
        self.dtype = check_dtype(dtype)
        self.weight_dtype = check_weight_dtype(weight_dtype, self.dtype)
        self.clip = check_clip(clip)
        self.linear_before_reset = as_flag(linear_before_reset, "linear_before_reset")
        self.peepholes = as_flag(peepholes, "peepholes")
        self.input_forget = as_flag(input_forget, "input_forget")
        self._check_size()
        self.activations = acts.parse(self.mode, activations, activation_alpha, activation_beta,
                                      self.num_directions)
        self._params: dict[str, np.ndarray] = {}
        self._reset_parameters(seed)

    # ----- structure -----
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden_out(self) -> int:
        return self.proj_size or self.hidden_size

    def _check_size(self) -> None:
        """Refuse sizes whose parameters could never be allocated or a stack that could never be
        built, before anything is allocated (a file's config claims them too): numpy's own
        errors for arrays past 2^63 bytes are untyped, and 2^62 layers never finish."""
        if self.num_layers > MAX_LAYERS:
            raise ArgumentError(f"num_layers must be at most {MAX_LAYERS}, got {self.num_layers}")
        g, h, p, d = NUM_GATES[self.mode], self.hidden_size, self.proj_size, self.num_directions
        out = self.hidden_out
        per_layer = g * h * out + 2 * g * h * self.bias + p * h + 3 * h * self.peepholes
        count = d * (g * h * self.input_size + (self.num_layers - 1) * g * h * d * out
                     + self.num_layers * per_layer)
        check_elements(f"the parameters of {self.mode}(input_size={self.input_size}, hidden_size="
                       f"{h}, num_layers={self.num_layers}, proj_size={p})", count)

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.hidden_out

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's PyTorch name and shape, in PyTorch's order."""
        gh = NUM_GATES[self.mode] * self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            for suffix in SUFFIXES[:self.num_directions]:
                tag = f"l{layer}{suffix}"
                shapes[f"weight_ih_{tag}"] = (gh, self._layer_input_size(layer))
                shapes[f"weight_hh_{tag}"] = (gh, self.hidden_out)
                if self.bias:
                    shapes[f"bias_ih_{tag}"] = (gh,)
                    shapes[f"bias_hh_{tag}"] = (gh,)
                if self.proj_size:
                    shapes[f"weight_hr_{tag}"] = (self.proj_size, self.hidden_size)
                if self.peepholes:
                    shapes[f"weight_ph_{tag}"] = (3 * self.hidden_size,)
        return shapes

    def _reset_parameters(self, seed) -> None:
        """PyTorch's initialisation: every parameter uniform in ±1/sqrt(hidden_size)."""
        if seed is NO_INIT:
            return
        rng = np.random.default_rng(check_seed(seed))
        bound = 1.0 / np.sqrt(self.hidden_size)
        self.load_state_dict({name: rng.uniform(-bound, bound, shape)
                              for name, shape in self.parameter_shapes().items()})

    # ----- parameters -----
    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> "RecurrentLayer":
        """Set parameters from PyTorch-named arrays; casts to the layer dtype and repacks."""
        strict = as_flag(strict, "strict")
        if not isinstance(state, Mapping):
            raise ArgumentError(f"load_state_dict takes a dict of arrays, got "
                                f"{type(state).__name__}")
        needed = 2 * self.num_layers * self.num_directions  # weight_ih and weight_hh of each
        if (strict or not self._params) and len(state) < needed:
            # before parameter_shapes(), whose size a file's config sets
            raise ArgumentError(f"{self.num_layers} layer(s) of {self.num_directions} "
                                f"direction(s) need at least {needed} parameters, got {len(state)}")
        shapes = self.parameter_shapes()
        unknown = sorted(set(state) - set(shapes), key=repr)  # keys of any types
        missing = sorted(set(shapes) - set(state))
        if unknown and strict:
            raise ArgumentError(f"unexpected parameters {unknown}; expected {list(shapes)}")
        if missing and (strict or not self._params):
            raise ArgumentError(f"missing parameters {missing}")
        given = {name: np.array(real_array(state[name], f"parameter {name}", shape),
                                dtype=self.dtype, copy=True)
                 for name, shape in shapes.items() if name in state}
        while True:  # until no other thread's load lands between reading and setting _params
            base = self._params
            new = {**base, **given}
            # packed before anything is set: packing can still refuse (float16 weights beyond
            # float16's range), and a refused load leaves the layer as it was
            stack = Stack([[self._pack(new, layer, d) for d in range(self.num_directions)]
                           for layer in range(self.num_layers)])
            with _LOADING:
                if self._params is base:
                    self._params, self._stack = new, stack
                    weights_changed(self)
                    return self

    def _pack(self, p: dict, layer: int, direction: int) -> DirectionParams:
        tag = f"l{layer}{SUFFIXES[direction]}"
        extra = {}
        if self.mode == "LSTM":
            extra = dict(w_hr=p.get(f"weight_hr_{tag}"), peephole=p.get(f"weight_ph_{tag}"),
                         input_forget=self.input_forget)
        return DirectionParams(
            self.mode, p[f"weight_ih_{tag}"], p[f"weight_hh_{tag}"], p.get(f"bias_ih_{tag}"),
            p.get(f"bias_hh_{tag}"), reverse=direction == 1,
            activations=self.activations[direction], clip=self.clip,
            linear_before_reset=self.linear_before_reset, dtype=self.dtype,
            weight_dtype=self.weight_dtype, **extra)

    # ----- configuration -----
    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict (with "mode"); see layer_from_config."""
        cfg = dict(mode=self.mode, input_size=self.input_size, hidden_size=self.hidden_size,
                   num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   bidirectional=self.bidirectional, dtype=self.dtype.name,
                   weight_dtype=self.weight_dtype.name, clip=self.clip,
                   activations=[n for direction in self.activations for n, _, _ in direction],
                   activation_alpha=[a for direction in self.activations
                                     for n, a, _ in direction if n in acts.TAKES_ALPHA],
                   activation_beta=[b for direction in self.activations
                                    for n, _, b in direction if n in acts.TAKES_BETA])
        cfg.update(self._extra_config())
        return cfg

    def _extra_config(self) -> dict:
        return {}

    def with_weight_dtype(self, weight_dtype) -> "RecurrentLayer":
        """A copy of this layer whose weight matrices are stored in `weight_dtype`: 'float16'
        halves the bytes a step streams (float32 layers; biases, peepholes, state and arithmetic
        stay float32), the layer's dtype gives back full precision."""
        config = dict(self.config(), weight_dtype=check_weight_dtype(weight_dtype, self.dtype).name)
        return layer_from_config(config, self.state_dict())

    def to_record(self):
        return "layer", {"config": self.config()}, self.state_dict()

    def __repr__(self) -> str:
        cfg = self.config()
        skip = {"mode", "activations", "activation_alpha", "activation_beta"}
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k not in skip)
        return f"fastrnn.{self.mode}({args})"

    # ----- calls -----
    def __call__(self, x, hx=None, lengths=None):
        x, batched = self._check_input(x)
        if lengths is not None and not batched:
            lengths = as_array(lengths, "lengths").reshape(-1)
        h0 = c0 = None
        if hx is not None:
            h0, c0 = self._split_state(hx, x.shape[1], batched)
        out, h_n, c_n = self._stack.run(x, h0, c0, lengths)
        if not batched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        elif self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _check_input(self, x):
        # the common call first: a (T, N, I) array that the kernels can read as it is
        if (type(x) is np.ndarray and x.dtype is self.dtype and x.ndim == 3
                and not self.batch_first and x.shape[2] == self.input_size and x.size
                and x.flags.carray):
            return x, True
        x = as_array(x, "input")
        if x.dtype.kind != "f":
            raise DTypeError(f"input must be a floating-point array, got dtype {x.dtype}")
        if x.ndim not in (2, 3):
            raise ShapeError(f"input must be 3-D ({'N, T' if self.batch_first else 'T, N'}, "
                             f"{self.input_size}) or unbatched 2-D (T, {self.input_size}); "
                             f"got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ShapeError(f"input has {x.shape[-1]} features, expected input_size="
                             f"{self.input_size} (shape {x.shape})")
        batched = x.ndim == 3
        if not batched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ShapeError(f"input must have at least one step and one batch row, got shape "
                             f"{x.shape} (as T, N, I)")
        return canonical(x, self.dtype), batched

    def _state_shapes(self, rows: int):
        stacked = self.num_layers * self.num_directions
        return (stacked, rows, self.hidden_out), (stacked, rows, self.hidden_size)

    def _split_state(self, hx, rows: int, batched: bool):
        """(h0, c0) as (L*D, N, H_out) / (L*D, N, H) arrays (c0 None for RNN and GRU)."""
        h_shape, c_shape = self._state_shapes(rows)
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 \
                    or hx[0] is None or hx[1] is None:
                raise ArgumentError("LSTM initial state must be a tuple (h0, c0) of two arrays "
                                    "(torch's rule too: no None for either)")
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        return (_state_array("h0", h0, h_shape, batched),
                None if c0 is None else _state_array("c0", c0, c_shape, batched))

    def stream(self, batch_size: int = 1):
        """A step-by-step stream with preallocated state (unidirectional stacks only)."""
        return Stream(self, batch_size)


def _state_array(name, value, shape, batched):
    arr = real_array(value, name, shape if batched else (shape[0], shape[2]))
    return arr if batched else arr[:, None, :]


class RNN(RecurrentLayer):
    """Elman RNN: h' = f(W x + R h + b), f = tanh or relu (or any ONNX activation)."""

    mode = "RNN"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, bidirectional=False, dtype=np.float32, *, activations=None,
                 activation_alpha=None, activation_beta=None, clip=None, seed=None,
                 weight_dtype=None):
        if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
            raise ArgumentError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        if activations is None:
            activations = [nonlinearity]
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         0, dtype, activations=activations, activation_alpha=activation_alpha,
                         activation_beta=activation_beta, clip=clip, seed=seed,
                         weight_dtype=weight_dtype)

    @property
    def nonlinearity(self) -> str:
        """The forward direction's activation name ("tanh" or "relu" for PyTorch models)."""
        return self.activations[0][0][0]


class GRU(RecurrentLayer):
    """GRU; linear_before_reset=True is PyTorch's cell, False is ONNX's default."""

    mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, dtype=np.float32, *, linear_before_reset=True,
                 activations=None, activation_alpha=None, activation_beta=None, clip=None,
                 seed=None, weight_dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         0, dtype, activations=activations, activation_alpha=activation_alpha,
                         activation_beta=activation_beta, clip=clip,
                         linear_before_reset=linear_before_reset, seed=seed,
                         weight_dtype=weight_dtype)

    def _extra_config(self) -> dict:
        return {"linear_before_reset": self.linear_before_reset}


class LSTM(RecurrentLayer):
    """LSTM with PyTorch's proj_size and ONNX's peepholes, input_forget and clip."""

    mode = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, proj_size=0, dtype=np.float32, *, peepholes=False,
                 input_forget=False, activations=None, activation_alpha=None,
                 activation_beta=None, clip=None, seed=None, weight_dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         proj_size, dtype, activations=activations,
                         activation_alpha=activation_alpha, activation_beta=activation_beta,
                         clip=clip, peepholes=peepholes, input_forget=input_forget, seed=seed,
                         weight_dtype=weight_dtype)

    def _extra_config(self) -> dict:
        return {"proj_size": self.proj_size, "peepholes": self.peepholes,
                "input_forget": self.input_forget}


LAYERS = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}


def layer_from_config(config: Mapping, state: Mapping | None = None) -> RecurrentLayer:
    """Build a layer from `layer.config()`: untrained, or with the parameters `state` (a
    state_dict), which are checked against the config before anything is allocated."""
    return build_from_config(LAYERS, "mode", config, state)
