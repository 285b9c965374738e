"""The pickle globals a checkpoint may name, each mapped to a function or stand-in of this package
that only builds data."""

from __future__ import annotations

from typing import Any

from .dtypes import _DTYPE_ALIASES, _DTYPES, _OTHER_DTYPES, _STORAGE_DTYPES
from .numpy_values import (_numpy_frombuffer, _numpy_reconstruct, _numpy_scalar,
                           _NumpyDType)
from .plain_values import (_codecs_encode, _container, _empty_bytes, _PickledOrderedDict,
                           _torch_device, _torch_size)
from .stand_ins import _DType, _QScheme, _StorageType, _TypeMarker
from .tensors import (_rebuild_device_tensor_from_cpu_tensor, _rebuild_from_type_v2, _rebuild_parameter,
                      _rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _unreadable)


def _build_allowed() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._utils._rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor,
        "torch._utils._rebuild_qtensor": _unreadable("quantized"),
        "torch._utils._rebuild_sparse_tensor": _unreadable("sparse"),
        "torch._utils._rebuild_sparse_csr_tensor": _unreadable("sparse"),
        "torch._utils._rebuild_meta_tensor_no_storage": _unreadable("meta (data-less)"),
        "torch._utils._rebuild_nested_tensor": _unreadable("nested"),
        "torch._utils._rebuild_wrapper_subclass": _unreadable("tensor-subclass"),
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.serialization._get_layout": _unreadable("non-strided layout"),
        "torch.Tensor": _TypeMarker("torch.Tensor"),
        "torch._tensor.Tensor": _TypeMarker("torch.Tensor"),
        "torch.nn.parameter.Parameter": _TypeMarker("torch.nn.Parameter"),
        "torch.nn.Parameter": _TypeMarker("torch.nn.Parameter"),
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "collections.OrderedDict": _container(_PickledOrderedDict),
        "builtins.set": _container(set),
        "builtins.frozenset": _container(frozenset),
        "builtins.list": _container(list),
        "builtins.tuple": _container(tuple),
        "builtins.dict": _container(dict),
        "builtins.bytearray": _container(bytearray),
        "_codecs.encode": _codecs_encode,
        "builtins.bytes": _empty_bytes,
    }
    for name in list(_DTYPES) + list(_OTHER_DTYPES):
        allowed[f"torch.{name}"] = _DType(name)
    for alias, name in _DTYPE_ALIASES.items():
        allowed[f"torch.{alias}"] = _DType(name)
    for name in ("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric",
                 "per_channel_symmetric", "per_channel_affine_float_qparams"):
        allowed[f"torch.{name}"] = _QScheme(name)
    for sname, dtype in _STORAGE_DTYPES.items():
        for mod in ("torch", "torch.cuda", "torch.storage"):
            allowed[f"{mod}.{sname}"] = _StorageType(sname, dtype)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{mod}._reconstruct"] = _numpy_reconstruct
        allowed[f"{mod}.scalar"] = _numpy_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[f"{mod}._frombuffer"] = _numpy_frombuffer
    allowed["numpy.ndarray"] = _TypeMarker("numpy.ndarray")
    allowed["numpy.dtype"] = _NumpyDType
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _build_allowed()
