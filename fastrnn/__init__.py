"""fastrnn: numba-jitted CPU inference for Elman RNN, GRU and LSTM networks."""
from . import errors, fileformat
from .fileformat import load, save
from .heads import Embedding, Linear, OneHot
from .layers import GRU, LSTM, RNN, RecurrentLayer, layer_from_config
from .stream import Stream
from .tasks import Classifier, Generator, Seq2Seq, Sequential, Tagger
from .threads import get_num_threads, set_num_threads, threading_layer
from .vocab import Vocabulary

__version__ = "0.1.0"


def _load_layer(meta, tensors):
    return layer_from_config(meta["config"], tensors)


fileformat.register_kind("layer", _load_layer)

__all__ = ["RNN", "GRU", "LSTM", "RecurrentLayer", "Stream", "layer_from_config",
           "Vocabulary", "Embedding", "OneHot", "Linear",
           "Sequential", "Classifier", "Tagger", "Generator", "Seq2Seq",
           "save", "load", "set_num_threads", "get_num_threads", "threading_layer", "errors",
           "__version__"]
