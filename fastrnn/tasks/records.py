"""A task model's saved record: its chain of stages as meta and tensors, its vocabularies."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..heads import stage_from_config
from ..layers import layer_from_config
from ..vocab import Vocabulary


def stages_record(prefix: str, inp, rnns, heads, tensors: dict) -> dict:
    """The chain's meta; its tensors go into ``tensors``, named under ``prefix``."""
    meta = {"input": None if inp is None else inp.config(),
            "rnns": [r.config() for r in rnns], "heads": [h.config() for h in heads]}
    if inp is not None:
        for k, v in inp.state_dict().items():
            tensors[f"{prefix}input.{k}"] = v
    for i, r in enumerate(rnns):
        for k, v in r.state_dict().items():
            tensors[f"{prefix}rnn.{i}.{k}"] = v
    for i, h in enumerate(heads):
        for k, v in h.state_dict().items():
            tensors[f"{prefix}head.{i}.{k}"] = v
    return meta


def _sub(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_stages(meta: dict, tensors: Mapping, prefix: str = "") -> list:
    """The stages of a saved record (a malformed one: fileformat.load's FormatError)."""
    stages = []
    if meta["input"] is not None:
        stages.append(stage_from_config(meta["input"], _sub(tensors, f"{prefix}input.")))
    for i, cfg in enumerate(meta["rnns"]):
        stages.append(layer_from_config(cfg, _sub(tensors, f"{prefix}rnn.{i}.")))
    for i, cfg in enumerate(meta["heads"]):
        stages.append(stage_from_config(cfg, _sub(tensors, f"{prefix}head.{i}.")))
    return stages


def vocab_meta(v: Vocabulary | None):
    return None if v is None else v.to_meta()


def load_vocab(m) -> Vocabulary | None:
    return None if m is None else Vocabulary.from_meta(m)
