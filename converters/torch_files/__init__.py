"""Read PyTorch checkpoint files without torch and without running code from them.

Formats: the ``torch.save`` zip format (``<name>/data.pkl`` + ``<name>/data/<key>`` storages), the
legacy non-zip ``torch.save`` format (``_use_new_zipfile_serialization=False``) and ``.safetensors``.
Pickles are read by a restricted unpickler whose ``find_class`` admits only the globals in
``ALLOWED_GLOBALS`` (tensor rebuilding, storage and dtype names, ``collections.OrderedDict``, plain
containers, numeric numpy scalars/arrays); every other global is refused with ``UnsafeFileError``
before anything can be called. The pickle never sees a real torch or numpy callable: each allowed
name maps to a small function of this package that only builds data.

Tensors come back lazily as ``TensorRef`` (``.shape``, ``.dtype``, ``.numpy()``) while the file is
open, so a large training checkpoint is only read where a tensor is used; ``load()`` and
``read_state_dict()`` materialize everything as numpy arrays. float16, bfloat16 and float8
(e4m3fn, e5m2) are widened to float32.

A hostile file fails fast with a typed error: sizes it states are checked against its real size
before anything is allocated, its tensors together may name at most a small multiple of it
(MAX_VIEW_RATIO), the Python objects its pickle makes are counted as they are made, at most
MAX_MADE_BYTES plus MAX_MADE_RATIO times the pickle's size (3 GiB at most), structures it shares
through pickle memo references are walked within a bound (MAX_SHARED_VISITS), and zip records must
be stored uncompressed, as torch.save writes them.
"""

from .allowed import ALLOWED_GLOBALS
from .checkpoint import open_checkpoint
from .flatten import flatten_tensors, is_tensor_like
from .legacy_format import LEGACY_MAGIC, LEGACY_PROTOCOL
from .state_dict import WRAPPER_KEYS, load, read_state_dict, unwrap_state_dict
from .tensors import TensorRef, UnreadableTensor
from .torch_file import TorchFile

__all__ = [
    "TensorRef",
    "UnreadableTensor",
    "TorchFile",
    "open_checkpoint",
    "load",
    "read_state_dict",
    "flatten_tensors",
    "unwrap_state_dict",
    "is_tensor_like",
    "ALLOWED_GLOBALS",
    "WRAPPER_KEYS",
    "LEGACY_MAGIC",
    "LEGACY_PROTOCOL",
]
