"""Each engine set up on one case, from the same seeded PyTorch module (same weights everywhere).

An engine adapter provides two primitives on numpy arrays in torch's (T, N, I) layout:
`sequence(x) -> y` (zero initial state) and `stream() -> (step, reset)` where `step(x_t)` runs one
time step with the state carried from the previous call (x_t is (1, N, I)) and `reset()` zeroes it.
`setup()` turns them into the timed unit of a case and the output used for the cross-engine check.
"""
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Callable

import numpy as np

from .cases import CHECK_STEPS, Case

SEED = 0

# modules each engine needs; the weights come from torch when it is installed
REQUIRES = {"fastrnn": ("fastrnn",), "fastrnn-f16": ("fastrnn",),
            "onnxruntime": ("onnxruntime", "onnx", "torch"), "torch": ("torch",)}
ENGINES = tuple(REQUIRES)
# fastrnn-f16 (the opt-in float16 weights) runs weights rounded to float16, not the same ones as
# the peers, so it is asked for by name; it never counts as a peer
DEFAULT_ENGINES = ("fastrnn", "onnxruntime", "torch")
OURS = ("fastrnn", "fastrnn-f16")
WEIGHT_ITEMSIZE = {"fastrnn-f16": 2}   # bytes a weight streams (4 for every other engine)


def is_peer(engine: str) -> bool:
    return engine not in OURS


def missing(engine: str) -> list[str]:
    """The modules `engine` needs that are not installed."""
    return [m for m in REQUIRES[engine] if find_spec(m) is None]


@dataclass
class Bench:
    run: Callable[[], object]          # the timed unit: one forward call, or one streaming step
    output: Callable[[], np.ndarray]   # last output row from a fresh state, for the check


def case_input(case: Case) -> np.ndarray:
    steps = CHECK_STEPS if case.stream else case.steps
    rng = np.random.default_rng(SEED)
    return rng.standard_normal((steps, case.batch, case.input)).astype(np.float32)


def torch_module(case: Case):
    """The case's reference module: seeded, in eval mode, gradients off."""
    import torch
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)     # the torch engine sets its own count; exporting stays quiet
    torch.manual_seed(SEED)
    return getattr(torch.nn, case.mode)(case.input, case.hidden, case.layers,
                                        bidirectional=case.bidirectional,
                                        **_projection(case)).eval()


def _projection(case: Case) -> dict:
    return {"proj_size": case.proj} if case.proj else {}


def reference_weights(case: Case) -> dict:
    """The torch module's state dict as numpy, or fastrnn's own seeded init without torch."""
    if find_spec("torch") is None:
        import fastrnn
        return getattr(fastrnn, case.mode)(case.input, case.hidden, case.layers,
                                           bidirectional=case.bidirectional, seed=SEED,
                                           **_projection(case)).state_dict()
    return {k: v.numpy() for k, v in torch_module(case).state_dict().items()}


# ----- the adapters -----

class FastRNN:
    def __init__(self, case: Case):
        import fastrnn
        fastrnn.set_num_threads(case.threads)
        self.layer = getattr(fastrnn, case.mode)(case.input, case.hidden, case.layers,
                                                 bidirectional=case.bidirectional,
                                                 **_projection(case))
        self.layer.load_state_dict(reference_weights(case))
        self.batch = case.batch

    def sequence(self, x):
        return self.layer(x)[0]

    def stream(self):
        s = self.layer.stream(self.batch)
        return (lambda x_t: s.step(x_t[0])), s.reset


class FastRNNHalf(FastRNN):
    """fastrnn with its weight matrices stored as float16 (`with_weight_dtype`)."""

    def __init__(self, case: Case):
        super().__init__(case)
        self.layer = self.layer.with_weight_dtype("float16")


class Torch:
    def __init__(self, case: Case):
        import torch
        self.torch, self.module = torch, torch_module(case)
        torch.set_num_threads(case.threads)

    def sequence(self, x):
        return self.module(self.torch.from_numpy(x))[0].numpy()

    def stream(self):
        state = [None]

        def step(x_t):
            y, state[0] = self.module(self.torch.from_numpy(x_t), state[0])
            return y.numpy()
        return step, lambda: state.__setitem__(0, None)


class OnnxRuntime:
    """ORT on the module exported with the legacy (TorchScript) exporter; streaming models take
    the state as inputs (h0, c0) and return it as outputs (hn, cn), which are fed back."""

    def __init__(self, case: Case):
        import onnxruntime as ort
        import torch
        if case.proj:
            raise NotImplementedError("ONNX's LSTM operator has no projection (proj_size)")
        self.case, self.lstm = case, case.mode == "LSTM"
        module = torch_module(case)
        x = torch.from_numpy(case_input(case)[:1 if case.stream else None])
        names = ["h0", "c0"] if self.lstm else ["h0"]
        state = [torch.zeros(case.layers, case.batch, case.hidden) for _ in names]
        args = (x, tuple(state) if self.lstm else state[0]) if case.stream else (x,)
        options = ort.SessionOptions()
        options.intra_op_num_threads = case.threads
        options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")        # the exporter's batch-size advice
            path = os.path.join(tmp, "model.onnx")
            torch.onnx.export(module, args, path, dynamo=False,
                              input_names=["x"] + (names if case.stream else []),
                              output_names=["y", "hn", "cn"][:len(names) + 1])
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.state_names = names
        self.zeros = {n: s.numpy() for n, s in zip(names, state)}

    def sequence(self, x):
        return self.session.run(["y"], {"x": x})[0]

    def stream(self):
        feed = dict(self.zeros)

        def step(x_t):
            feed["x"] = x_t
            y, *state = self.session.run(None, feed)
            feed.update(zip(self.state_names, state))
            return y
        return step, lambda: feed.update(self.zeros)


ADAPTERS = {"fastrnn": FastRNN, "fastrnn-f16": FastRNNHalf, "onnxruntime": OnnxRuntime,
            "torch": Torch}


def setup(engine: str, case: Case) -> Bench:
    impl = ADAPTERS[engine](case)
    x = case_input(case)
    if not case.stream:
        return Bench(lambda: impl.sequence(x), lambda: np.asarray(impl.sequence(x))[-1].ravel())
    step, reset = impl.stream()
    x_t = x[:1]

    def output():
        reset()
        for t in range(len(x)):
            y = step(x[t:t + 1])
        return np.array(y).ravel()
    output()        # leaves a non-zero state behind for the timed steps
    return Bench(lambda: step(x_t), output)
