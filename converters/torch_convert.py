"""PyTorch -> fastrnn: nn.RNN / nn.GRU / nn.LSTM modules, state dicts and checkpoint files.

``from_torch`` reads the weights (a module's parameters, a Mapping of name -> tensor/ndarray, or a
file read by ``converters.torch_files`` without torch and without unpickling code), infers the
architecture from the tensor names and shapes, and returns the equivalent fastrnn layer.
torch is imported only when the source is a torch module.

Name table (PyTorch's, per layer k and direction suffix "" / "_reverse"; G gates, H hidden,
P projection, D directions):

===================  ===============================  ==========================================
name                 shape                            tells
===================  ===============================  ==========================================
weight_ih_l{k}       (G*H, I) for k=0, (G*H, D*H_out)  input size
weight_hh_l{k}       (G*H, H_out)                     H (no projection), G = rows / H -> cell
bias_ih_l{k}         (G*H,)                           bias=True (with bias_hh)
bias_hh_l{k}         (G*H,)
weight_hr_l{k}       (P, H)                           LSTM proj_size=P, H
===================  ===============================  ==========================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastrnn.errors import (ArgumentError, DTypeError, FastRNNError, FormatError, ShapeError,
                            UnsupportedError)
from fastrnn.validation import SUPPORTED_DTYPES, as_flag, read_dtype

from .torch_files import (WRAPPER_KEYS, UnreadableTensor, flatten_tensors, is_tensor_like,
                          open_checkpoint)
from .torch_files.brief import brief_list, brief_name

__all__ = ["from_torch", "convert_file", "inspect_torch", "find_recurrent_groups", "infer_architecture"]

PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
# a layer number: ASCII digits only (\d takes any Unicode digit), and few enough for int()
_LAYER = r"[0-9]{1,9}"
_PARAM_RE = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    rf"_l(?P<layer>{_LAYER})(?P<rev>_reverse)?$"
)
_CELL_RE = re.compile(r"^(?:.*\.)?(weight_ih|weight_hh)$")
MODES = {1: "RNN", 3: "GRU", 4: "LSTM"}
_TORCH_MODES = {"RNN_TANH": ("RNN", "tanh"), "RNN_RELU": ("RNN", "relu"), "GRU": ("GRU", None),
                "LSTM": ("LSTM", None)}


# ----------------------------------------------------------------------------------------------
# tensors of any origin
# ----------------------------------------------------------------------------------------------
def _is_torch_object(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def _dtype_name(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return x.dtype.name
    d = x.dtype
    return str(d).replace("torch.", "") if _is_torch_object(x) else str(d)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A float array from a numpy array, a TensorRef or a torch tensor; halves widened to float32."""
    try:
        if isinstance(x, np.ndarray):
            arr = x
        elif isinstance(x, UnreadableTensor):
            raise UnsupportedError(f"{name}: {x.reason}")
        elif hasattr(x, "numpy") and not _is_torch_object(x):
            arr = x.numpy()
        elif _is_torch_object(x):
            t = x.detach()
            if t.is_floating_point() and _dtype_name(t) not in ("float32", "float64"):
                t = t.float()
            if getattr(t, "is_quantized", False) or getattr(t, "is_sparse", False):
                raise UnsupportedError(f"{name}: quantized or sparse tensors are not supported")
            arr = t.cpu().numpy()
        else:
            arr = np.asarray(x)
    except FastRNNError:
        raise
    except Exception as exc:
        raise UnsupportedError(f"{name}: cannot read this tensor as numpy ({exc})") from exc
    if arr.dtype.kind != "f":
        raise DTypeError(f"{name} has dtype {arr.dtype}; recurrent weights must be floating point")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    return arr


# ----------------------------------------------------------------------------------------------
# weights a state dict stores as weight_norm / spectral_norm parts
# ----------------------------------------------------------------------------------------------
# an RNN's weight_ih_l0 ... weight_hr_l1_reverse, or a Linear's / an Embedding's weight and bias
_PARAM_NAME = rf"(?:weight|bias)(?:_(?:ih|hh|hr)_l{_LAYER}(?:_reverse)?)?"
# torch.nn.utils.parametrizations: parametrizations.<name>.original0/1 (weight_norm: g, v) or
# .original, .0._u, .0._v (spectral_norm)
_PARAMETRIZED_RE = re.compile(rf"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>{_PARAM_NAME})"
                              r"\.(?P<part>original[01]?|0\._[uv])$")
# the older torch.nn.utils.weight_norm (<name>_g, <name>_v) and spectral_norm (_orig, _u, _v)
_HOOKED_RE = re.compile(rf"^(?P<prefix>(?:.*\.)?)(?P<name>{_PARAM_NAME})_(?P<part>g|v|orig|u)$")
# stored part -> its role, in the parametrizations naming and in the hook-based one
_WEIGHT_NORM_PARTS = ({"original0": "g", "original1": "v"}, {"g": "g", "v": "v"})
_SPECTRAL_NORM_PARTS = ({"original": "w", "0._u": "u", "0._v": "v"},
                        {"orig": "w", "u": "u", "v": "v"})


class _Reparametrized:
    """A weight torch computes from the parts a state dict stores: weight_norm's g * v / ||v||
    (the norm over the axes where g has size 1) or spectral_norm's w / (u . w v) with the stored
    power-iteration vectors, as an eval-mode module computes it. Read on ``numpy()``."""

    def __init__(self, kind: str, parts: dict[str, Any], keys: dict[str, str]) -> None:
        self.kind = kind  # "weight_norm" | "spectral_norm"
        self.parts = parts  # role ("g", "v" / "w", "u", "v") -> tensor
        self.keys = keys  # role -> its name in the state dict, for messages
        main = parts["v"] if kind == "weight_norm" else parts["w"]
        self.shape = _shape(main)
        self.dtype = _dtype_name(main)

    def numpy(self) -> np.ndarray:
        arrays = {role: _to_numpy(t, brief_name(self.keys[role]))
                  for role, t in self.parts.items()}
        out_dtype = np.result_type(*arrays.values())
        a = {role: x.astype(np.float64) for role, x in arrays.items()}
        if self.kind == "weight_norm":
            return self._weight_norm(a["g"], a["v"]).astype(out_dtype)
        return self._spectral_norm(a["w"], a["u"], a["v"]).astype(out_dtype)

    def _weight_norm(self, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        if g.ndim == 0:  # weight_norm(dim=None): one norm over the whole tensor
            return v * (g / np.linalg.norm(v))
        if g.ndim != v.ndim or any(n not in (1, m) for n, m in zip(g.shape, v.shape)):
            g_key, v_key = brief_name(self.keys["g"]), brief_name(self.keys["v"])
            raise ShapeError(f"{g_key} has shape {g.shape}, which does not fit {v_key} of shape "
                             f"{v.shape} as weight_norm's magnitude")
        axes = tuple(i for i, n in enumerate(g.shape) if n == 1)
        return v * (g / np.sqrt(np.sum(v * v, axis=axes, keepdims=True)))

    def _spectral_norm(self, w: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if w.ndim != 2 or u.shape != (w.shape[0],) or v.shape != (w.shape[1],):
            w_key, u_key, v_key = (brief_name(self.keys[role]) for role in "wuv")
            raise ShapeError(f"spectral_norm parts {w_key} {w.shape}, {u_key} {u.shape}, {v_key} "
                             f"{v.shape}: expected a matrix (R, C) with u of length R and v of "
                             "length C")
        return w / float(u @ (w @ v))


def _reparametrized(kind: str, roles: Mapping[str, str], parts: Mapping[str, str],
                    flat: Mapping[str, Any]) -> _Reparametrized | None:
    """The weight that exactly these stored parts (part name -> key) make, if they are ``roles``."""
    if set(parts) != set(roles):
        return None
    return _Reparametrized(kind, {roles[p]: flat[k] for p, k in parts.items()},
                           {roles[p]: k for p, k in parts.items()})


def resolve_reparametrizations(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` with each weight stored as weight_norm / spectral_norm parts (both the
    torch.nn.utils.parametrizations and the older hook-based naming) under its plain name.

    Parts that form no complete, known set stay as they are (and are refused as unknown tensors
    next to the recurrent weights)."""
    found: dict[tuple[str, str, bool], dict[str, str]] = {}
    for key, value in flat.items():
        m = _PARAMETRIZED_RE.match(str(key)) or _HOOKED_RE.match(str(key))
        if m and is_tensor_like(value):
            slot = (m.group("prefix"), m.group("name"), m.re is _PARAMETRIZED_RE)
            found.setdefault(slot, {})[m.group("part")] = key
    out = dict(flat)
    for (prefix, name, parametrized), parts in found.items():
        if prefix + name in flat:
            continue  # both the weight and its parts: ambiguous, left to be refused
        naming = 0 if parametrized else 1
        weight = (_reparametrized("weight_norm", _WEIGHT_NORM_PARTS[naming], parts, flat)
                  or _reparametrized("spectral_norm", _SPECTRAL_NORM_PARTS[naming], parts, flat))
        if weight is not None:
            for key in parts.values():
                del out[key]
            out[prefix + name] = weight
    return out


# ----------------------------------------------------------------------------------------------
# groups of recurrent weights in a flat name -> tensor dict
# ----------------------------------------------------------------------------------------------
def find_recurrent_groups(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{prefix: {"weight_ih_l0": tensor, ...}}`` for every prefix holding torch RNN weight names."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        m = _PARAM_RE.match(str(key))
        if m and (is_tensor_like(value) or isinstance(value, _Reparametrized)):
            groups.setdefault(m.group("prefix"), {})[str(key)[len(m.group("prefix")):]] = value
    return groups


# what wrappers put before a model's own names: checkpoint keys ({"state_dict": ...}, Lightning's
# "model."), DataParallel / DistributedDataParallel's "module.", torch.compile's "_orig_mod."
_WRAPPER_SEGMENTS = frozenset(WRAPPER_KEYS) | {"_orig_mod"}


def only_wrappers_before(name: str, tail: str) -> bool:
    """Whether ``name`` is ``tail`` behind nothing but wrapper segments ("module.", ...)."""
    if not name.endswith(tail):
        return False
    head = name[: len(name) - len(tail)]
    return head == "" or (head.endswith(".") and
                          all(seg in _WRAPPER_SEGMENTS for seg in head[:-1].split(".")))


def _describe_prefix(p: str) -> str:
    return repr(brief_name(p)) if p else "'' (top level)"


def _select_group(groups: Mapping[str, Any], prefix: str | None, what: str) -> str:
    found = brief_list(sorted(groups), show=_describe_prefix)
    if prefix is None:
        if len(groups) == 1:
            return next(iter(groups))
        raise ArgumentError(
            f"{what} holds {len(groups)} groups of recurrent weights, under the prefixes {found}; "
            "pick one with prefix=... (the CLI's --prefix)"
        )
    if not isinstance(prefix, str):
        raise ArgumentError(f"prefix must be a str, got {type(prefix).__name__}")
    p = prefix if prefix == "" or prefix.endswith(".") else prefix + "."
    if p in groups:
        return p
    # a suffix match lets "rnn." find "module.rnn." (DDP) or "state_dict.model.rnn." (Lightning)
    matches = [g for g in groups if p and g.endswith("." + p)]
    if len(matches) > 1:  # "enc." is "model.enc." rather than "model.ema.enc."
        matches = [g for g in matches if only_wrappers_before(g, p)] or matches
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ArgumentError(
            f"prefix {prefix!r} matches several groups of recurrent weights in {what}: "
            f"{brief_list(sorted(matches))}; give a longer prefix"
        )
    raise ArgumentError(
        f"no recurrent weights under prefix {prefix!r} in {what}; prefixes found: {found}"
    )


def _check_neighbours(flat: Mapping[str, Any], prefix: str, what: str) -> None:
    """Tensors beside the chosen group's weights that torch's RNN modules never hold are errors."""
    unknown, parametrized = [], []
    for key, value in flat.items():
        key = str(key)
        if not key.startswith(prefix) or not is_tensor_like(value):
            continue
        rest = key[len(prefix):]
        if rest.startswith("parametrizations."):
            parametrized.append(key)
        elif "." not in rest and not _PARAM_RE.match(rest):
            unknown.append(key)
    if parametrized:
        raise UnsupportedError(
            f"{what}: weights under {_describe_prefix(prefix)} carry a parametrization fastrnn "
            f"cannot compute from a state dict ({brief_name(parametrized[0])}, ...; weight_norm "
            "and spectral_norm are computed); remove the parametrization before saving "
            "(torch.nn.utils.parametrize.remove_parametrizations) or convert the module itself"
        )
    if unknown:
        hint = ""
        if any(k.endswith(("_g", "_v", "_u", "_orig")) for k in unknown):
            hint = ("; names ending _g/_v (torch.nn.utils.weight_norm) or _orig/_u/_v "
                    "(torch.nn.utils.spectral_norm) are converted only as complete sets of one "
                    "weight's parts: call remove_weight_norm / remove_spectral_norm before "
                    "saving, or convert the module itself")
        raise FormatError(
            f"{what}: unknown tensors [{brief_list(unknown)}] next to the recurrent weights under "
            f"{_describe_prefix(prefix)}; torch's RNN/GRU/LSTM hold only "
            f"{', '.join(k + '_l{k}[_reverse]' for k in PARAM_KINDS)}{hint}"
        )


def infer_architecture(params: Mapping[str, Any], where: str = "state dict") -> dict[str, Any]:
    """Cell, sizes, layers, directions, bias and projection from names and shapes; validates all.

    ``params`` maps unprefixed torch names (``weight_ih_l0``) to anything with ``.shape``.
    """
    slots: dict[tuple[int, int], dict[str, Any]] = {}
    for name, value in params.items():
        m = _PARAM_RE.match(name)
        if not m or m.group("prefix"):
            raise FormatError(f"{where}: unknown parameter {brief_name(name)!r}")
        slots.setdefault((int(m.group("layer")), 1 if m.group("rev") else 0), {})[m.group("kind")] = value
    if not slots:
        raise FormatError(f"{where}: no recurrent weights")
    layers = sorted({k for k, _ in slots})
    num_layers = len(layers)
    if layers != list(range(num_layers)):
        raise FormatError(f"{where}: layers are numbered [{brief_list(layers)}], expected "
                          f"0..{num_layers - 1}")
    dirs = 2 if any(d for _, d in slots) else 1

    def key(kind: str, layer: int, d: int) -> str:
        return f"{kind}_l{layer}{'_reverse' if d else ''}"

    first = slots.get((0, 0), {})
    bias = "bias_ih" in first or "bias_hh" in first
    proj = "weight_hr" in first
    expected_kinds = {"weight_ih", "weight_hh"} | ({"bias_ih", "bias_hh"} if bias else set()) | (
        {"weight_hr"} if proj else set())
    missing = [key(k, layer, d) for layer in range(num_layers) for d in range(dirs)
               for k in PARAM_KINDS if k in expected_kinds and k not in slots.get((layer, d), {})]
    extra = [key(k, layer, d) for (layer, d), s in sorted(slots.items()) for k in s
             if k not in expected_kinds]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing [{brief_list(missing)}]")
        if extra:
            parts.append(f"inconsistent extra [{brief_list(extra)}] (layer 0 forward has "
                         f"{sorted(expected_kinds)})")
        raise FormatError(f"{where}: incomplete recurrent weights: {'; '.join(parts)}")
    for (layer, d), s in sorted(slots.items()):  # the reader knows why; a shape check would not
        for kind, value in s.items():
            if isinstance(value, UnreadableTensor):
                raise UnsupportedError(f"{where}: {key(kind, layer, d)}: {value.reason}")

    for (layer, d), s in slots.items():
        for kind, value in s.items():
            nd = len(_shape(value))
            want = 1 if kind.startswith("bias") else 2
            if nd != want:
                raise ShapeError(f"{where}: {key(kind, layer, d)} is {nd}-D with shape "
                                 f"{_shape(value)}, expected {want}-D")
    rows, cols = _shape(first["weight_hh"])
    if proj:
        proj_size, hidden = _shape(first["weight_hr"])
        if cols != proj_size:
            raise ShapeError(f"{where}: weight_hh_l0 has {cols} columns but weight_hr_l0 projects to "
                             f"{proj_size}; they must agree")
    else:
        proj_size, hidden = 0, cols
    if hidden == 0 or rows % hidden:
        raise ShapeError(f"{where}: weight_hh_l0 has shape {(rows, cols)}: its rows must be G*H for "
                         f"hidden size H={hidden} and G gates (1 RNN, 3 GRU, 4 LSTM)")
    gates = rows // hidden
    if gates not in MODES:
        raise ShapeError(f"{where}: weight_hh_l0 has {rows} rows = {gates} x hidden size {hidden}; "
                         "expected 1 (RNN), 3 (GRU) or 4 (LSTM) gate blocks")
    mode = MODES[gates]
    if proj and mode != "LSTM":
        raise ShapeError(f"{where}: weight_hr (projection) exists only for LSTM, but weight_hh_l0 "
                         f"has {gates} gate block(s) ({mode})")
    if proj and proj_size >= hidden:
        raise ShapeError(f"{where}: weight_hr_l0 has shape {(proj_size, hidden)}; proj_size must be "
                         f"smaller than hidden_size")
    input_size = _shape(first["weight_ih"])[1]
    if input_size == 0:
        raise ShapeError(f"{where}: weight_ih_l0 has shape {_shape(first['weight_ih'])}: input size 0")
    h_out = proj_size or hidden
    gh = gates * hidden
    for layer in range(num_layers):
        for d in range(dirs):
            want = {"weight_ih": (gh, input_size if layer == 0 else dirs * h_out),
                    "weight_hh": (gh, h_out), "bias_ih": (gh,), "bias_hh": (gh,),
                    "weight_hr": (proj_size, hidden)}
            for kind, value in slots[(layer, d)].items():
                if _shape(value) != want[kind]:
                    raise ShapeError(
                        f"{where}: {key(kind, layer, d)} has shape {_shape(value)}, expected "
                        f"{want[kind]} for a {mode} with input_size={input_size}, hidden_size="
                        f"{hidden}{f', proj_size={proj_size}' if proj else ''}, "
                        f"{'bidirectional' if dirs == 2 else 'unidirectional'}"
                    )
    dtypes = sorted({_dtype_name(v) for s in slots.values() for v in s.values()})
    return dict(mode=mode, input_size=input_size, hidden_size=hidden, num_layers=num_layers,
                bias=bias, bidirectional=dirs == 2, proj_size=proj_size, source_dtypes=dtypes)


# ----------------------------------------------------------------------------------------------
# building the fastrnn layer
# ----------------------------------------------------------------------------------------------
def _resolve_dtype(dtype: Any, arrays: Mapping[str, np.ndarray]) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float64) if any(a.dtype == np.float64 for a in arrays.values()) \
            else np.dtype(np.float32)
    dt = read_dtype(dtype)
    if dt is None or dt not in SUPPORTED_DTYPES:
        raise ArgumentError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _resolve_nonlinearity(mode: str, hint: Any, recorded: str | None) -> str | None:
    if hint is not None:
        if not isinstance(hint, str) or hint.lower() not in ("tanh", "relu"):
            raise ArgumentError(f"nonlinearity must be 'tanh' or 'relu', got {hint!r}")
        hint = hint.lower()
        if mode != "RNN":
            raise ArgumentError(f"nonlinearity={hint!r} applies to RNN only; these weights are a {mode}")
        if recorded is not None and hint != recorded:
            raise ArgumentError(f"nonlinearity={hint!r} contradicts the module's {recorded!r}")
        return hint
    if mode != "RNN":
        return None
    return recorded or "tanh"


def _build(params: Mapping[str, Any], where: str, *, nonlinearity: Any, batch_first: Any,
           dtype: Any, recorded_nonlinearity: str | None = None,
           recorded_batch_first: bool | None = None):
    import fastrnn

    arch = infer_architecture(params, where)
    mode = arch["mode"]
    nl = _resolve_nonlinearity(mode, nonlinearity, recorded_nonlinearity)
    # None: as recorded (a module's own setting; False for a state dict)
    bf = as_flag(batch_first, "batch_first") if batch_first is not None \
        else bool(recorded_batch_first)
    arrays = {name: _to_numpy(value, f"{where}: {name}") for name, value in params.items()}
    dt = _resolve_dtype(dtype, arrays)
    config = dict(mode=mode, input_size=arch["input_size"], hidden_size=arch["hidden_size"],
                  num_layers=arch["num_layers"], bias=arch["bias"], batch_first=bf,
                  bidirectional=arch["bidirectional"], dtype=dt)
    if mode == "RNN":
        config["nonlinearity"] = nl
    elif mode == "LSTM":
        config["proj_size"] = arch["proj_size"]
    return fastrnn.layer_from_config(config, arrays)  # no random initialisation to overwrite


_QUANTIZED_ADVICE = ("fastrnn converts float weights: convert the float model (before "
                     "torch.ao.quantization.quantize_dynamic), or its state_dict()")


def _refuse_quantized_state_dict(flat: Mapping[str, Any], what: str) -> None:
    packed = sorted(k for k in map(str, flat) if "._all_weight_values." in "." + k)
    if packed:
        raise UnsupportedError(
            f"{what} holds {brief_name(packed[0])!r}, the packed weights of a quantized recurrent "
            f"module (torch.ao.nn.quantized.dynamic.LSTM / GRU); {_QUANTIZED_ADVICE}")


def _is_quantized_rnn(module: Any) -> bool:
    kind = type(module)
    return kind.__name__ in ("LSTM", "GRU") and kind.__module__.startswith(
        ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.quantizable"))


def _refuse_quantized(module: Any, where: str) -> None:
    if _is_quantized_rnn(module):
        kind = type(module)
        raise UnsupportedError(f"{where} is a {kind.__module__}.{kind.__name__}, a quantized "
                               f"recurrent module; {_QUANTIZED_ADVICE}")


def from_flat(flat: Mapping[str, Any], what: str, prefix: str | None, **hints: Any):
    """The layer from a flat name -> tensor view of a state dict (``what`` names it in messages);
    prefix and hints as from_torch."""
    flat = resolve_reparametrizations(flat)
    groups = find_recurrent_groups(flat)
    if not groups:
        _refuse_quantized_state_dict(flat, what)
        cells = sorted(k for k in flat if _CELL_RE.match(str(k)))
        if cells:
            raise UnsupportedError(
                f"{what} holds {brief_name(cells[0])!r}, the naming of nn.RNNCell/GRUCell/"
                "LSTMCell; fastrnn converts nn.RNN/GRU/LSTM layers (weight_ih_l0, weight_hh_l0, "
                "...)"
            )
        shown = brief_list(sorted(map(str, flat)), most=10, show=brief_name)
        raise FormatError(
            f"{what} holds no torch RNN/GRU/LSTM weights (names like 'weight_ih_l0'); "
            f"tensors found: {shown or 'none'}"
        )
    chosen = _select_group(groups, prefix, what)
    _check_neighbours(flat, chosen, what)
    where = f"{what}, prefix {brief_name(chosen)!r}" if chosen else what
    return _build(groups[chosen], where, **hints)


def _from_module(module: Any, prefix: str | None, **hints: Any):
    try:
        import torch  # only reached for torch modules
    except ImportError as exc:
        raise ArgumentError(f"from_torch got a {type(module).__name__}, which looks like a torch "
                            "module, but torch cannot be imported") from exc

    if not isinstance(module, torch.nn.Module):
        raise ArgumentError(f"from_torch got a {type(module).__name__}, expected a torch.nn.Module")
    _refuse_quantized(module, type(module).__name__)
    if isinstance(module, torch.nn.RNNBase):
        if prefix not in (None, ""):
            raise ArgumentError(f"prefix={prefix!r} given, but the module is itself a "
                                f"{type(module).__name__}")
        rnn, where = module, type(module).__name__
    else:
        found = {(name + "."): m for name, m in module.named_modules()
                 if (isinstance(m, torch.nn.RNNBase) or _is_quantized_rnn(m)) and name}
        if not found:
            raise ArgumentError(f"{type(module).__name__} contains no nn.RNN / nn.GRU / nn.LSTM")
        chosen = _select_group(found, prefix, f"module {type(module).__name__}")
        rnn, where = found[chosen], f"{type(module).__name__}.{chosen[:-1]}"
        _refuse_quantized(rnn, where)
    if rnn.mode not in _TORCH_MODES:
        raise UnsupportedError(f"{where}: torch RNN mode {rnn.mode!r} is not supported")
    _, recorded_nl = _TORCH_MODES[rnn.mode]
    names = [f"{kind}_l{layer}{sfx}" for layer in range(rnn.num_layers)
             for sfx in ("", "_reverse")[: 2 if rnn.bidirectional else 1]
             for kind in PARAM_KINDS
             if (rnn.bias or not kind.startswith("bias")) and (rnn.proj_size or kind != "weight_hr")]
    params = _effective_weights(rnn, names)
    return _build(params, where, recorded_nonlinearity=recorded_nl,
                  recorded_batch_first=bool(rnn.batch_first), **hints)


def _effective_weights(rnn: Any, names: list[str]) -> dict[str, Any]:
    """The weights an eval-mode forward of ``rnn`` uses, without changing the module.

    getattr, not state_dict(), so that parametrizations resolve to their values; evaluated in
    eval mode, where spectral_norm uses its stored vectors instead of stepping them. The older
    hook-based weight_norm / spectral_norm set the attribute only in a forward pre-hook, so it
    can be stale (spectral_norm's is the raw weight until the first forward): theirs are computed.
    """
    import torch
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    computed = {}
    was_training = rnn.training
    rnn.eval()
    try:
        with torch.no_grad():
            for hook in rnn._forward_pre_hooks.values():
                if isinstance(hook, WeightNorm):
                    computed[hook.name] = hook.compute_weight(rnn)
                elif isinstance(hook, SpectralNorm):
                    computed[hook.name] = hook.compute_weight(rnn, do_power_iteration=False)
            return {name: computed[name] if name in computed else getattr(rnn, name)
                    for name in names}
    finally:
        rnn.train(was_training)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def from_torch(src: Any, *, nonlinearity: str | None = None, batch_first: bool | None = None,
               prefix: str | None = None, dtype: Any = None, embedding: str | None = None,
               rnn: str | None = None, head: str | None = None, **composite: Any):
    """The fastrnn layer equivalent to a PyTorch RNN / GRU / LSTM.

    src: an ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (or a module containing one), a state dict (Mapping
    of name -> torch tensor / ndarray, nested checkpoint dicts allowed), or a path to a
    ``torch.save`` (.pt/.pth/.ckpt, zip or legacy) or ``.safetensors`` file. Files are read
    without torch and never run pickled code. Weights a state dict stores as weight_norm /
    spectral_norm parts are computed as an eval-mode module computes them.

    Hints fill in what a state dict does not record: ``nonlinearity`` ("tanh" default, or "relu";
    RNN only), ``batch_first`` (default False; for a module, overrides its own setting),
    ``prefix`` (which recurrent group, e.g. "encoder.rnn."; a suffix of the stored prefix is
    enough, so "rnn." finds "module.rnn."), ``dtype`` (float32/float64; default float64 when the
    weights are float64, else float32: float16/bfloat16 are widened).

    Naming parts of a composite model (``embedding=``, ``rnn=``, ``head=`` and the options of
    ``converters.torch_composite.from_torch_composite``) converts the whole embedding -> recurrent
    stack -> linear head model into a fastrnn.Sequential instead.
    """
    if embedding is not None or rnn is not None or head is not None or composite:
        if prefix is not None:
            raise ArgumentError(
                f"prefix={prefix!r} picks the one recurrent group to convert; a composite model "
                "(embedding=, rnn=, head=, ...) names each part by its own path instead, e.g. "
                "rnn='encoder.rnn': give prefix or the composite arguments, not both")
        from .torch_composite import from_torch_composite
        return from_torch_composite(src, embedding=embedding, rnn=rnn, head=head,
                                    nonlinearity=nonlinearity, batch_first=batch_first,
                                    dtype=dtype, **composite)
    hints = dict(nonlinearity=nonlinearity, batch_first=batch_first, dtype=dtype)
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        with open_checkpoint(path) as f:
            return from_flat(f.tensors(), path, prefix, **hints)
    if isinstance(src, Mapping):
        return from_flat(flatten_tensors(src), "state dict", prefix, **hints)
    if _is_torch_object(src) or hasattr(src, "named_modules"):
        return _from_module(src, prefix, **hints)
    raise ArgumentError(
        f"from_torch expects a torch.nn.RNN/GRU/LSTM module, a state dict (Mapping) or a file "
        f"path; got {type(src).__name__}"
    )


def convert_file(src_path: str | os.PathLike, out_path: str | os.PathLike, **hints: Any):
    """Convert a checkpoint file to a fastrnn model file; returns the layer. Hints as from_torch."""
    import fastrnn

    layer = from_torch(src_path, **hints)
    fastrnn.save(layer, out_path)
    return layer


def inspect_torch(src: Any) -> list[dict[str, Any]]:
    """Every recurrent group in a checkpoint file or state dict, with its inferred architecture.

    Reads only the file's structure, not the tensor data. A group whose weights do not form a
    valid layer has an "error" entry instead of the architecture.
    """
    def describe(flat: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        groups = find_recurrent_groups(resolve_reparametrizations(flat))
        for prefix, params in sorted(groups.items()):
            entry: dict[str, Any] = {"prefix": prefix}
            try:
                entry.update(infer_architecture(params, repr(brief_name(prefix))))
                entry["num_parameters"] = int(sum(
                    int(np.prod(_shape(v), dtype=np.int64)) for v in params.values()))
            except FastRNNError as exc:
                entry["error"] = str(exc)
            out.append(entry)
        return out

    if isinstance(src, (str, os.PathLike)):
        with open_checkpoint(src) as f:
            return describe(f.tensors())
    if isinstance(src, Mapping):
        return describe(flatten_tensors(src))
    raise ArgumentError(f"inspect_torch expects a file path or a state dict, got {type(src).__name__}")

