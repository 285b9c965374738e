"""ONNX graphs -> fastrnn execution plans (a drop-in for onnxruntime.InferenceSession).

``from_onnx`` imports onnx only when called; the plan it returns (``plan.OnnxPlan``) is onnx-free,
and importing this package registers the ``onnx_plan`` kind with fastrnn.load, so a saved plan loads
and runs with numpy and fastrnn alone.
"""
from fastrnn.fileformat import register_kind


def from_onnx(src):
    """Convert an ONNX model (path with external data beside it, bytes, or onnx.ModelProto).

    Returns an OnnxPlan with onnxruntime's session interface: ``run(output_names, input_feed)``,
    ``get_inputs()``, ``get_outputs()``; ``fastrnn.save(plan, path)`` writes it.
    """
    from .importer import from_onnx as _from_onnx

    return _from_onnx(src)


def _load_plan(meta, tensors):
    from .plan import load_plan

    return load_plan(meta, tensors)


register_kind("onnx_plan", _load_plan)

__all__ = ["from_onnx"]
