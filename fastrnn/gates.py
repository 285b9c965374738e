"""Gate orders of the stacked weight blocks: the only place that reorders gates between formats.

fastrnn stores every parameter in PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n), the
canonical layout; converters call `reorder_gates` to come from any other format.
"""
import numpy as np

from .errors import ArgumentError, ShapeError

NUM_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}

# Each format's gate sequence, named with PyTorch's letters (ONNX's "c"/"h" is torch's "g"/"n").
GATE_ORDERS = {
    ("LSTM", "torch"): "ifgo",
    ("LSTM", "onnx"): "iofg",
    ("LSTM", "keras"): "ifgo",
    ("GRU", "torch"): "rzn",
    ("GRU", "onnx"): "zrn",
    ("GRU", "keras"): "zrn",
    ("RNN", "torch"): "n",
    ("RNN", "onnx"): "n",
    ("RNN", "keras"): "n",
}

# LSTM peephole blocks: ONNX P is i, o, f; fastrnn keeps i, f, o.
PEEPHOLE_ORDERS = {"onnx": "iof", "torch": "ifo"}


def _permute_blocks(array, src: str, dst: str, axis: int) -> np.ndarray:
    array = np.asarray(array)
    count = len(src)
    if array.shape[axis] % count:
        raise ShapeError(
            f"axis {axis} of length {array.shape[axis]} does not split into {count} gate blocks"
        )
    blocks = np.split(array, count, axis=axis)
    return np.concatenate([blocks[src.index(gate)] for gate in dst], axis=axis)


def reorder_gates(array, mode: str, src: str = "onnx", dst: str = "torch", axis: int = 0):
    """Reorder the gate blocks of `array` along `axis` from format `src` to format `dst`."""
    try:
        src_order = GATE_ORDERS[(mode, src)]
        dst_order = GATE_ORDERS[(mode, dst)]
    except KeyError:
        raise ArgumentError(
            f"no gate order for mode={mode!r} between {src!r} and {dst!r}; "
            f"known modes {sorted(NUM_GATES)}, formats ['keras', 'onnx', 'torch']"
        ) from None
    return _permute_blocks(array, src_order, dst_order, axis)


def onnx_peephole_to_torch(peephole, axis: int = 0) -> np.ndarray:
    """ONNX P blocks (i, o, f) -> fastrnn's peephole order (i, f, o)."""
    return _permute_blocks(peephole, PEEPHOLE_ORDERS["onnx"], PEEPHOLE_ORDERS["torch"], axis)
