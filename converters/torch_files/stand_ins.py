"""Inert stand-ins for the torch (and numpy) types a pickle names: dtypes, storage classes,
tensor types. Data, never callable."""

from __future__ import annotations

from typing import Any

from fastrnn.errors import FormatError


class _TorchName:
    """A name of torch's that a pickle passes as data (``torch.<name>``); inert, not callable."""

    __slots__ = ("name",)
    what = "a torch name"

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: Any) -> None:
        raise FormatError(f"pickle tried to set state on {self.what}")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _DType(_TorchName):
    """A torch dtype named in a pickle (``torch.float16``)."""

    __slots__ = ()
    what = "a torch dtype"


class _StorageType:
    """A torch storage class named in a pickle (``torch.FloatStorage``); inert data, not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        raise FormatError("pickle tried to set state on a torch storage type")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TypeMarker:
    """torch.Tensor / torch.nn.Parameter named in a pickle: accepted only as _rebuild_from_type_v2's type."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: Any) -> None:
        raise FormatError(f"pickle tried to set state on {self.name}")

    def __repr__(self) -> str:
        return self.name


class _QScheme(_TorchName):
    """A torch quantization scheme named in a pickle (``torch.per_tensor_affine``, in the arguments
    of a quantized tensor's _rebuild_qtensor)."""

    __slots__ = ()
    what = "a torch qscheme"
