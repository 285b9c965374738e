"""PyTorch checkpoint readers (moved here whole; the next commit splits tensors.py into modules)."""
from .tensors import *  # noqa: F401,F403
from .tensors import LEGACY_MAGIC, LEGACY_PROTOCOL, _PickledOrderedDict, _rebuild_tensor_v2  # noqa: F401
