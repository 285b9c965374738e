"""Registry of ONNX op converters, keyed by (op_type, since_version) (onnx2torch style).

A converter turns one ONNX node of one operator version into plan nodes. The importer resolves a
node's version with ``onnx.defs.get_schema(op_type, max_inclusive_version=opset).since_version``
and looks up ``(op_type, since_version)``; a missing entry makes the node unsupported, and the
error names the versions that are supported (``supported_versions``).
"""
from __future__ import annotations

from typing import Callable

CONVERTERS: dict[tuple[str, int], Callable] = {}


def converter(op_type: str, *versions: int):
    """Register ``fn(ctx, node)`` for ``op_type`` at each ONNX since_version in ``versions``."""
    if not versions:
        raise ValueError(f"converter for {op_type} needs at least one version")

    def deco(fn: Callable) -> Callable:
        for v in versions:
            key = (op_type, int(v))
            if key in CONVERTERS:
                raise ValueError(f"converter for {op_type} version {v} registered twice")
            CONVERTERS[key] = fn
        return fn
    return deco


def lookup(op_type: str, version: int) -> Callable | None:
    return CONVERTERS.get((op_type, int(version)))


def supported_versions(op_type: str) -> list[int]:
    return sorted(v for op, v in CONVERTERS if op == op_type)


def supported_ops() -> dict[str, list[int]]:
    """op_type -> sorted since_versions, for docs and error messages."""
    table: dict[str, list[int]] = {}
    for op, v in CONVERTERS:
        table.setdefault(op, []).append(v)
    return {op: sorted(vs) for op, vs in sorted(table.items())}
