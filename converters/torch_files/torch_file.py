"""An open checkpoint, whatever its format."""

from __future__ import annotations

from typing import Any

from .flatten import flatten_tensors


class TorchFile:
    """An open checkpoint: ``obj`` is the unpickled top-level object, tensors as TensorRef."""

    def __init__(self, path: str, kind: str, obj: Any, handle: Any = None) -> None:
        self.path = path
        self.kind = kind  # "torch-zip" | "torch-legacy" | "safetensors"
        self.obj = obj
        self._handle = handle
        self.metadata: dict[str, str] = {}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "TorchFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def tensors(self) -> dict[str, Any]:
        """Every tensor in the file, by dotted path (``state_dict.rnn.weight_ih_l0``)."""
        return flatten_tensors(self.obj)


class _Closer:
    """Closes the handles under a TorchFile: a ZipFile or memory map, then the file."""

    def __init__(self, *handles: Any) -> None:
        self._handles = handles

    def close(self) -> None:
        for h in self._handles:
            try:
                h.close()
            except Exception:
                pass
