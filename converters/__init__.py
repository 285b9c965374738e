"""Foreign formats -> fastrnn objects. Each converter imports its framework (torch, onnx) lazily."""
from .onnx_import import from_onnx  # onnx itself is imported only when from_onnx is called
from .torch_composite import seq2seq_from_torch
from .torch_convert import from_torch

__all__ = ["from_torch", "from_onnx", "seq2seq_from_torch"]
