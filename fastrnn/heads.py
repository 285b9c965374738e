"""Input and output stages around a recurrent stack: Embedding, OneHot and Linear heads.

``Linear`` is the course's output layer ``y = f(W a + b)`` with f one of ``ACTIVATIONS``; it holds
PyTorch's ``nn.Linear`` parameters (``weight`` (out, in), ``bias`` (out,)). ``Embedding`` holds
``nn.Embedding``'s ``weight`` (num_embeddings, embedding_dim). Both check every id and shape in
Python before their numba kernels run, and all three have an ``*_into`` form that writes into
a preallocated array so that streaming loops allocate nothing per step (checked too: a wrong
output array would be written out of bounds; the task loops call the unchecked ``_*_into``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError
from .kernels.heads import linear_forward, sample
from .recurrent import canonical
from .validation import (NO_INIT, as_array, as_flag, as_float, build_from_config, check_dtype,
                         check_elements, check_seed, positive_int)
from .vocab import check_ids

__all__ = ["Embedding", "OneHot", "Linear", "ACTIVATIONS", "sample_token"]

ACTIVATIONS = ("none", "softmax", "log_softmax", "sigmoid", "tanh", "relu")
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
_TOP_K_MAX = 1 << 62  # top_k past the vocabulary keeps every token; the kernel takes an int64


def check_sampling(temperature: float, top_k: int | None, top_p: float | None
                   ) -> tuple[float, int, float]:
    """Validated (temperature, top_k, top_p) as the kernel takes them (0 / 1.0 for 'off')."""
    value = as_float(temperature)
    if value is None or not math.isfinite(value) or value < 0:
        raise ArgumentError(f"temperature must be a finite number >= 0 (0 = greedy), "
                            f"got {temperature!r}")
    if top_k is None:
        top_k = 0
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ArgumentError(f"top_k must be None or an int >= 0 (0 = off), got {top_k!r}")
    if top_p is None:
        top_p = 1.0
    p = as_float(top_p)
    if p is None or not 0 < p <= 1:
        raise ArgumentError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    return value, min(int(top_k), _TOP_K_MAX), p


def usable_logits(row: np.ndarray, scratch: np.ndarray, what: str) -> np.ndarray:
    """The row of logits to choose from when ``row`` (V,) may not be all finite. Callers first
    make one cheap pass: ``row[row.argmax()]`` is finite unless the row holds NaN (numpy's
    argmax stops at the first) or +inf, or is all -inf; a short row's sum is finite only when
    every logit is. Only rows that fail it come here.

    NaN anywhere: ArgumentError (no token can be chosen: the model's weights or state hold
    NaN, or a step overflowed; torch.multinomial refuses such rows too). +inf: those tokens
    are certain, and share the draw alike (``scratch`` holds 0 for them and -inf for the
    others; greedy takes the first, as for tied scores, and top_k / top_p cut among them by
    id). Every logit -inf (every token masked): ArgumentError. Otherwise (-inf next to finite
    logits, or finite ones whose sum overflowed) ``row`` itself: -inf tokens are never drawn.
    ``what`` names the row in the messages ("the logits at generation step 3")."""
    nan = np.isnan(row)
    if nan.any():
        ids = np.flatnonzero(nan)
        shown = ", ".join(str(i) for i in ids[:8]) + (", ..." if ids.size > 8 else "")
        raise ArgumentError(f"{what} hold NaN (at {ids.size} of {row.size} ids: {shown}), so "
                            f"no token can be chosen (weights or a state holding NaN, or a step "
                            f"that overflowed, give NaN logits)")
    top = row == np.inf
    if top.any():
        np.copyto(scratch, np.where(top, 0.0, -np.inf))
        return scratch
    if (row == -np.inf).all():
        raise ArgumentError(f"{what} are all -inf: every token is masked, so no token can be "
                            f"chosen")
    return row


def sample_token(logits, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, rng: Any = None) -> int:
    """One id drawn from a (V,) row of logits (see Generator.generate for the parameters).

    Non-finite logits as in generation: NaN, or every logit -inf, is an ArgumentError; +inf
    logits are certain (one: that id; several: drawn alike among them)."""
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    row = as_array(logits, "logits")
    if row.dtype.kind not in "fiu":
        raise DTypeError(f"logits must be real numbers, got dtype {row.dtype}")
    row = canonical(row, np.dtype(np.float64))  # read-only logits: copied, not compiled for
    if row.ndim != 1 or row.size == 0:
        raise ShapeError(f"logits must be a non-empty 1-D array, got shape {row.shape}")
    rng = np.random.default_rng(check_seed(rng, "rng"))
    if not math.isfinite(row[row.argmax()]):  # argmax stops at a NaN: see usable_logits
        row = usable_logits(row, np.empty_like(row), "the logits")
    return int(sample(row, temperature, top_k, top_p, float(rng.random()),
                      np.empty_like(row), np.empty(row.size, np.int64)))


# ------------------------------------------------------------------------------------ stages
class Embedding:
    """``nn.Embedding``: ids (any shape S) -> (*S, embedding_dim) rows of ``weight``."""

    kind = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: Any = np.float32, *, seed: int | None = None):
        self.num_embeddings = positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        check_elements("an Embedding's weight", self.num_embeddings * self.embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
                    or not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ArgumentError(f"padding_idx must be None or an int in "
                                    f"[-{self.num_embeddings}, {self.num_embeddings}), got "
                                    f"{padding_idx!r}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = check_dtype(dtype)
        if seed is NO_INIT:
            return
        weight = np.random.default_rng(check_seed(seed)).standard_normal(
            (self.num_embeddings, self.embedding_dim))          # torch's init: N(0, 1)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.load_state_dict({"weight": weight})

    @property
    def output_size(self) -> int:
        return self.embedding_dim

    @property
    def size(self) -> int:
        """How many ids this stage accepts."""
        return self.num_embeddings

    def __call__(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.num_embeddings)
        check_elements("an Embedding's output", ids.size * self.embedding_dim)
        return self.weight[ids]

    def lookup_into(self, ids, out: np.ndarray) -> np.ndarray:
        """Rows for ids (N,) into out (N, embedding_dim) of the stage's dtype; allocates nothing."""
        ids = _check_into(self, "lookup_into", ids, out, self.embedding_dim)
        return self._lookup_into(ids, out)

    def _lookup_into(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """lookup_into for int64 ids already checked against out."""
        if ids.shape[0] == 1:  # a generation step's one token: a row copy costs a third of take
            out[0] = self.weight[ids[0]]
            return out
        # np.take's default mode="raise" copies the rows through a temporary as large as out;
        # the ids are in range, so "clip" (which writes out directly) changes none of them
        return np.take(self.weight, ids, axis=0, out=out, mode="clip")

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> "Embedding":
        _expect_names("Embedding", state, ("weight",))
        self.weight = _param("weight", state["weight"], (self.num_embeddings, self.embedding_dim),
                             self.dtype)
        return self

    def config(self) -> dict:
        return {"type": "embedding", "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "padding_idx": self.padding_idx,
                "dtype": self.dtype.name}

    def __repr__(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"fastrnn.Embedding({self.num_embeddings}, {self.embedding_dim}{pad})"


class OneHot:
    """ids (any shape S) -> (*S, size) one-hot rows: the course's input encoding, no parameters."""

    kind = "one_hot"

    def __init__(self, size: int, dtype: Any = np.float32):
        self.size = positive_int("size", size)
        check_elements("a OneHot row", self.size)
        self.dtype = check_dtype(dtype)

    @property
    def output_size(self) -> int:
        return self.size

    def __call__(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.size)
        check_elements("a OneHot's output", ids.size * self.size)
        out = np.zeros(ids.shape + (self.size,), self.dtype)
        np.put_along_axis(out, ids[..., None], 1, axis=-1)
        return out

    def lookup_into(self, ids, out: np.ndarray) -> np.ndarray:
        """One-hot rows for ids (N,) into out (N, size) of the stage's dtype; allocates nothing."""
        ids = _check_into(self, "lookup_into", ids, out, self.size)
        return self._lookup_into(ids, out)

    def _lookup_into(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """lookup_into for int64 ids already checked against out."""
        out.fill(0)
        for row in range(ids.shape[0]):
            out[row, ids[row]] = 1
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> "OneHot":
        _expect_names("OneHot", state, ())
        return self

    def config(self) -> dict:
        return {"type": "one_hot", "size": self.size, "dtype": self.dtype.name}

    def __repr__(self) -> str:
        return f"fastrnn.OneHot({self.size})"


class Linear:
    """``nn.Linear`` followed by an output activation: y = f(x W^T + b) over the last axis.

    activation: "none", "softmax", "log_softmax", "sigmoid", "tanh" or "relu".
    """

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "none", dtype: Any = np.float32, *, seed: int | None = None):
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        check_elements("a Linear's weight", self.in_features * self.out_features)
        self.activation = _activation(activation)
        self.bias = as_flag(bias, "bias")
        self.dtype = check_dtype(dtype)
        if seed is NO_INIT:
            return
        rng = np.random.default_rng(check_seed(seed))
        bound = 1.0 / np.sqrt(self.in_features)                 # torch's init bound
        params = {"weight": rng.uniform(-bound, bound, (self.out_features, self.in_features))}
        if self.bias:
            params["bias"] = rng.uniform(-bound, bound, self.out_features)
        self.load_state_dict(params)

    @property
    def output_size(self) -> int:
        return self.out_features

    def __call__(self, x, activation: str | None = None) -> np.ndarray:
        """x (..., in_features) -> (..., out_features); ``activation`` overrides the head's."""
        x = as_array(x, "Linear input")
        if x.dtype.kind != "f":
            raise DTypeError(f"Linear input must be floating point, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear input must have shape (..., {self.in_features}), "
                             f"got {x.shape}")
        act = self.activation if activation is None else _activation(activation)
        check_elements("a Linear's output", x.size // self.in_features * self.out_features)
        # C-contiguous, aligned and writeable, as the kernel was compiled for: a read-only input
        # (a memory-mapped file, a broadcast) would compile a specialization of its own
        rows = canonical(x.reshape(-1, self.in_features), self.dtype)
        out = np.empty((rows.shape[0], self.out_features), self.dtype)
        self._apply_into(rows, out, act)
        return out.reshape(x.shape[:-1] + (self.out_features,))

    def apply_into(self, x: np.ndarray, out: np.ndarray, activation: str | None = None) -> np.ndarray:
        """x (N, in_features) -> out (N, out_features), both C-contiguous arrays of the head's
        dtype; allocates nothing. ``activation`` overrides the head's."""
        act = self.activation if activation is None else _activation(activation)
        for name, arr, width in (("x", x, self.in_features), ("out", out, self.out_features)):
            if not isinstance(arr, np.ndarray) or arr.dtype != self.dtype \
                    or not arr.flags.c_contiguous:
                raise DTypeError(f"Linear.apply_into needs {name} as a C-contiguous "
                                 f"{self.dtype.name} array, got {_described(arr)}")
            if arr.ndim != 2 or arr.shape[1] != width:
                raise ShapeError(f"Linear.apply_into needs {name} of shape (N, {width}), got "
                                 f"{arr.shape}")
        if out.shape[0] != x.shape[0]:
            raise ShapeError(f"Linear.apply_into needs out with x's {x.shape[0]} rows, got "
                             f"{out.shape[0]}")
        if not out.flags.writeable:
            raise ArgumentError("Linear.apply_into needs a writeable out array")
        if np.shares_memory(x, out):  # the kernel writes a row of out before reading x's
            raise ArgumentError("Linear.apply_into needs out apart from x: they share memory")
        return self._apply_into(x, out, act)

    def _apply_into(self, x: np.ndarray, out: np.ndarray, activation: str | None = None
                    ) -> np.ndarray:
        """apply_into for arrays already checked (the task loops' preallocated buffers)."""
        linear_forward(x, self._wt, self._b, _ACT_CODE[activation or self.activation], out)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> "Linear":
        names = ("weight", "bias") if self.bias else ("weight",)
        _expect_names("Linear", state, names)
        params = {"weight": _param("weight", state["weight"],
                                   (self.out_features, self.in_features), self.dtype)}
        if self.bias:
            params["bias"] = _param("bias", state["bias"], (self.out_features,), self.dtype)
        self._params = params
        self._wt = np.ascontiguousarray(params["weight"].T)
        self._b = params["bias"] if self.bias else np.zeros(self.out_features, self.dtype)
        return self

    @property
    def weight(self) -> np.ndarray:
        return self._params["weight"]

    def config(self) -> dict:
        return {"type": "linear", "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias,
                "activation": self.activation, "dtype": self.dtype.name}

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation != "none" else ""
        return f"fastrnn.Linear({self.in_features}, {self.out_features}, bias={self.bias}{act})"


STAGES = {"embedding": Embedding, "one_hot": OneHot, "linear": Linear}


def stage_from_config(config: Mapping, state: Mapping | None = None) -> Embedding | OneHot | Linear:
    """Rebuild an Embedding / OneHot / Linear from its ``config()``: untrained, or with the
    parameters `state`, checked against the config before anything is allocated."""
    return build_from_config(STAGES, "type", config, state)


def _activation(name) -> str:
    """A Linear activation name, checked (None means "none")."""
    if name is None:
        return "none"
    if not isinstance(name, str) or name not in _ACT_CODE:
        raise ArgumentError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return name


def _described(arr) -> str:
    if not isinstance(arr, np.ndarray):
        return type(arr).__name__
    return f"a {'C-contiguous' if arr.flags.c_contiguous else 'non-contiguous'} {arr.dtype} array"


def _check_into(stage, method: str, ids, out, width: int) -> np.ndarray:
    """The ids (N,) of an input stage's lookup_into, checked with its output (N, width)."""
    what = f"{type(stage).__name__}.{method}"
    ids = check_ids(ids, stage.size, f"{what} ids")
    if ids.ndim != 1:
        raise ShapeError(f"{what} takes ids of shape (N,), got {ids.shape}")
    if not isinstance(out, np.ndarray) or out.dtype != stage.dtype:
        raise DTypeError(f"{what} needs out as a {stage.dtype.name} array, got {_described(out)}")
    if out.shape != (ids.size, width):
        raise ShapeError(f"{what} needs out of shape ({ids.size}, {width}), got {out.shape}")
    if not out.flags.writeable:
        raise ArgumentError(f"{what} needs a writeable out array")
    return ids


def _expect_names(what: str, state: Mapping, names: tuple[str, ...]) -> None:
    if not isinstance(state, Mapping):
        raise ArgumentError(f"{what}.load_state_dict takes a dict, got {type(state).__name__}")
    unknown = sorted(set(state) - set(names), key=repr)  # keys of any types
    missing = sorted(set(names) - set(state))
    if unknown or missing:
        raise ArgumentError(f"{what} parameters must be {list(names)}; missing {missing}, "
                            f"unexpected {unknown}")


def _param(name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    arr = as_array(value, f"parameter {name}")
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"parameter {name} must be real, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeError(f"parameter {name} must have shape {shape}, got {arr.shape}")
    return np.array(arr, dtype=dtype, copy=True)
