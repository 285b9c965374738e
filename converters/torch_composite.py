"""PyTorch composite models (embedding + recurrent stack + linear head) -> fastrnn task models.

A composite model is named by its parts, as attribute paths of the module or prefixes of its state
dict::

    class Net(nn.Module):            # emb = nn.Embedding, lstm = nn.LSTM, fc = nn.Linear
        ...
    clf = from_torch_composite(net, embedding="emb", rnn="lstm", head="fc", pool="last")
    gen = from_torch_composite(sd, embedding="emb", rnn="lstm", head="fc", task="generator",
                               vocab=vocab)
    s2s = seq2seq_from_torch(sd, source="src_emb", encoder="enc", target="tgt_emb",
                             decoder="dec", head="out", target_vocab=tv)

``src`` is a module, a state dict (Mapping of name -> tensor / ndarray; nested checkpoints and a
"module." prefix are fine) or a .pt/.pth/.safetensors path (read without torch, no pickled code
run, only the named parts' tensors read). The recurrent parts go through
``converters.from_torch(..., prefix=...)``. Activations are not parameters and so are not in a
state dict: give the heads' output activations with ``head_activation`` (one name, or a list with
one per head). Nor is nn.Embedding's max_norm: it is applied from a module only.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastrnn.errors import ArgumentError, DTypeError, FastRNNError, UnsupportedError

from .torch_convert import from_flat, from_torch, only_wrappers_before, resolve_reparametrizations
from .torch_files.brief import brief_list, brief_name

__all__ = ["from_torch_composite", "seq2seq_from_torch", "TASKS"]

TASKS = ("classifier", "tagger", "generator", "sequential")


def _is_module(src: Any) -> bool:
    return hasattr(src, "named_modules") and hasattr(src, "state_dict")


def _to_array(value: Any, name: str) -> np.ndarray:
    try:
        if type(value).__module__.split(".")[0] == "torch":
            value = value.detach().cpu()
            if value.is_floating_point() and str(value.dtype) not in ("torch.float32",
                                                                      "torch.float64"):
                value = value.float()
            return value.numpy()
        if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
            return np.asarray(value.numpy())
        return np.asarray(value)
    except FastRNNError as exc:  # a checkpoint's tensor that fastrnn cannot read says why
        raise type(exc)(f"{name}: {exc}") from exc
    except Exception as exc:
        raise UnsupportedError(f"{name}: cannot read this tensor as numpy ({exc})") from exc


class _Source:
    """Flat name -> tensor view of a module, a state dict or a checkpoint file; a context manager
    that keeps a file open while its tensors are read, each only when a part uses it."""

    def __init__(self, src: Any):
        from .torch_files import flatten_tensors, open_checkpoint
        self.module = src if _is_module(src) else None
        self._file = None
        if self.module is not None:
            self.flat = dict(src.state_dict())
            self.what = f"module {type(src).__name__}"
        elif isinstance(src, (str, os.PathLike)):
            self._file = open_checkpoint(os.fspath(src))
            try:
                self.flat = self._file.tensors()  # TensorRef: shape and dtype, data on .numpy()
            except BaseException:
                self._file.close()
                raise
            self.what = os.fspath(src)
        elif isinstance(src, Mapping):
            self.flat = flatten_tensors(src)
            self.what = "state dict"
        else:
            raise ArgumentError(f"expected a torch module, a state dict or a checkpoint path, got "
                                f"{type(src).__name__}")
        self.flat = resolve_reparametrizations(self.flat)  # weight_norm / spectral_norm parts

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()

    def key(self, part: str, param: str) -> str:
        """The flat key of ``{part}.{param}``; a unique key ending in ".{part}.{param}" also
        matches (for "module." prefixes and nested checkpoints)."""
        exact = f"{part}.{param}"
        if exact in self.flat:
            return exact
        hits = [k for k in self.flat if k.endswith("." + exact)]
        if len(hits) > 1:  # "enc.weight" is "model.enc.weight" rather than "model.ema.enc.weight"
            hits = [k for k in hits if only_wrappers_before(k, exact)] or hits
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise ArgumentError(f"{exact!r} matches several tensors in {self.what}: "
                                f"[{brief_list(hits)}]; give a longer name")
        near = sorted(k for k in self.flat if k.rsplit(".", 1)[0].endswith(part))
        seen = (f"under {part!r} there are [{brief_list(near)}]" if near else
                f"its parts are [{brief_list(sorted({k.split('.')[0] for k in self.flat}))}]")
        raise ArgumentError(f"no tensor {exact!r} in {self.what}; {seen}")

    def beside(self, key: str, param: str) -> str | None:
        """The key of ``param`` in the part that holds ``key`` (its bias beside its weight), if
        there is one: never another part's that a suffix match would find."""
        sibling = key.rsplit(".", 1)[0] + "." + param
        return sibling if sibling in self.flat else None

    def array(self, key: str) -> np.ndarray:
        arr = _to_array(self.flat[key], brief_name(key))
        if arr.dtype.kind != "f":
            raise DTypeError(f"{brief_name(key)} has dtype {arr.dtype}; weights must be floating "
                             "point")
        return arr

    def submodule(self, path: str):
        """The module at attribute path ``path``, also behind a wrapper (DataParallel's
        "module.", ...); None for a state dict or a file."""
        if self.module is None:
            return None
        path = path.rstrip(".")  # a recurrent part may be named as its prefix, "rnn."
        modules = dict(self.module.named_modules())
        if path in modules:
            return modules[path]
        hits = [m for name, m in modules.items() if only_wrappers_before(name, path)]
        return hits[0] if len(hits) == 1 else None


def _dtype(arr: np.ndarray, dtype: Any) -> Any:
    if dtype is not None:
        return dtype
    return np.float64 if arr.dtype == np.float64 else np.float32


def _renormalised(weight: np.ndarray, max_norm: float, norm_type: float) -> np.ndarray:
    """The rows as nn.Embedding(max_norm=...) looks them up: torch's embedding_renorm_ scales a
    row whose norm_type-norm exceeds max_norm by max_norm / (norm + 1e-7), in place, at its first
    lookup (a scaled row is then within max_norm and stays as it is); done here to every row."""
    norms = np.linalg.norm(weight.astype(np.float64), ord=norm_type, axis=1)
    scale = np.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
    return weight * scale.astype(weight.dtype)[:, None]


def _embedding(s: _Source, name: str, dtype: Any):
    from fastrnn.heads import stage_from_config
    key = s.key(name, "weight")
    w = s.array(key)
    if w.ndim != 2:
        raise ArgumentError(f"{name}.weight must be 2-D (num_embeddings, embedding_dim), "
                            f"got shape {w.shape}")
    mod = s.submodule(key.rsplit(".", 1)[0])  # where the weight is, prefixes and all
    if getattr(mod, "max_norm", None) is not None:
        w = _renormalised(w, float(mod.max_norm), float(mod.norm_type))
    pad = getattr(mod, "padding_idx", None)
    config = dict(type="embedding", num_embeddings=w.shape[0], embedding_dim=w.shape[1],
                  padding_idx=pad, dtype=_dtype(w, dtype))
    return stage_from_config(config, {"weight": w})  # no random initialisation to overwrite


def _linear(s: _Source, name: str, activation: str, dtype: Any):
    from fastrnn.heads import stage_from_config
    key = s.key(name, "weight")
    w = s.array(key)
    if w.ndim != 2:
        raise ArgumentError(f"{name}.weight must be 2-D (out_features, in_features), got shape "
                            f"{w.shape}")
    bias_key = s.beside(key, "bias")
    state = {"weight": w} if bias_key is None else {"weight": w, "bias": s.array(bias_key)}
    config = dict(type="linear", in_features=w.shape[1], out_features=w.shape[0],
                  bias=bias_key is not None, activation=activation, dtype=_dtype(w, dtype))
    return stage_from_config(config, state)


def _recurrent(s: _Source, name: str, hints: dict):
    mod = s.submodule(name)
    if mod is not None:
        return from_torch(mod, **hints)
    # the flat view as it is: re-flattening would drop its computed (reparametrized) weights
    return from_flat(s.flat, s.what, name if name.endswith(".") else name + ".", **hints)


def _names(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ArgumentError(f"{what} must be a name or a list of names, got {value!r}")


def _activations(head_activation: Any, count: int) -> list[str]:
    if isinstance(head_activation, str) or head_activation is None:
        return ["none"] * (count - 1) + [head_activation or "none"] if count else []
    if isinstance(head_activation, bytes) or not isinstance(head_activation, Sequence):
        raise ArgumentError(f"head_activation must be an activation name (for the last head) or "
                            f"a list of one per head, got {head_activation!r}")
    acts = list(head_activation)
    if len(acts) != count:
        raise ArgumentError(f"head_activation lists {len(acts)} activations for {count} heads")
    return acts


def _input_stage(s: _Source, embedding: str | None, vocab: Any, one_hot: int | None, dtype):
    from fastrnn import OneHot
    if embedding is not None:
        return _embedding(s, embedding, dtype)
    if vocab is not None:
        return vocab
    if one_hot is not None:
        return OneHot(one_hot, dtype=dtype or np.float32)
    return None


def from_torch_composite(src: Any, *, rnn: str | Sequence[str], embedding: str | None = None,
                         head: str | Sequence[str] | None = None,
                         head_activation: str | Sequence[str] = "none",
                         task: str = "classifier", pool: str | None = "last",
                         vocab: Any = None, one_hot: int | None = None,
                         labels: Sequence[str] | None = None, stop: Any = None,
                         nonlinearity: str | None = None, batch_first: bool | None = None,
                         dtype: Any = None, info: Mapping | None = None):
    """A fastrnn Classifier / Tagger / Sequential / Generator from a composite torch model.

    rnn: the recurrent part(s), chained; embedding: the nn.Embedding (None: the input is one-hot
    rows of ``vocab`` (or ``one_hot`` ids), or float features when neither is given);
    head: the nn.Linear part(s), chained, with ``head_activation``; task: "classifier" (pool:
    "last", "mean", "max"), "tagger" (per step), "sequential" (uses ``pool`` as given, None =
    per step) or "generator". Hints for the recurrent parts (nonlinearity, batch_first, dtype)
    as converters.from_torch.
    """
    import fastrnn
    if task not in TASKS:
        raise ArgumentError(f"task must be one of {TASKS}, got {task!r}")
    rnns = _names(rnn, "rnn")
    if not rnns:
        raise ArgumentError("rnn= must name the recurrent part (e.g. rnn='lstm')")
    heads = _names(head, "head")
    acts = _activations(head_activation, len(heads))
    hints = dict(nonlinearity=nonlinearity, batch_first=batch_first, dtype=dtype)
    with _Source(src) as s:
        inp = _input_stage(s, embedding, vocab, one_hot, dtype)
        stages = [] if inp is None else [inp]
        stages += [_recurrent(s, name, hints) for name in rnns]
        stages += [_linear(s, name, act, dtype) for name, act in zip(heads, acts)]
    v = vocab if isinstance(vocab, fastrnn.Vocabulary) else None
    if task == "generator":
        return fastrnn.Generator(*stages, vocab=v, stop=stop, info=info)
    if task == "tagger":
        return fastrnn.Tagger(*stages, vocab=v, labels=labels, info=info)
    if task == "classifier":
        return fastrnn.Classifier(*stages, pool=pool, vocab=v, labels=labels, info=info)
    return fastrnn.Sequential(*stages, pool=pool, vocab=v, labels=labels, info=info)


def seq2seq_from_torch(src: Any, *, encoder: str, decoder: str, head: str | Sequence[str],
                       source: str | None = None, target: str | None = None,
                       head_activation: str | Sequence[str] = "none",
                       source_vocab: Any = None, target_vocab: Any = None,
                       bos: int | None = None, eos: int | None = None, bridge: str = "concat",
                       nonlinearity: str | None = None, batch_first: bool | None = None,
                       dtype: Any = None, info: Mapping | None = None):
    """A fastrnn Seq2Seq from a torch encoder-decoder: ``source`` / ``target`` name the two
    nn.Embedding parts (None: one-hot rows of ``source_vocab`` / ``target_vocab``), ``encoder``
    and ``decoder`` the recurrent parts, ``head`` the nn.Linear part(s) scoring target tokens."""
    import fastrnn
    hints = dict(nonlinearity=nonlinearity, batch_first=batch_first, dtype=dtype)
    heads = _names(head, "head")
    acts = _activations(head_activation, len(heads))
    with _Source(src) as s:
        src_stage = _input_stage(s, source, source_vocab, None, dtype)
        tgt_stage = _input_stage(s, target, target_vocab, None, dtype)
        if src_stage is None or tgt_stage is None:
            raise ArgumentError("name the source and target embeddings (source=, target=) or give "
                                "source_vocab= / target_vocab= for one-hot inputs")
        enc, dec = _recurrent(s, encoder, hints), _recurrent(s, decoder, hints)
        out = [_linear(s, name, act, dtype) for name, act in zip(heads, acts)]
    sv = source_vocab if isinstance(source_vocab, fastrnn.Vocabulary) else None
    tv = target_vocab if isinstance(target_vocab, fastrnn.Vocabulary) else None
    return fastrnn.Seq2Seq(source=src_stage, encoder=enc, target=tgt_stage, decoder=dec, head=out,
                           source_vocab=sv, target_vocab=tv, bos=bos, eos=eos, bridge=bridge,
                           info=info)
