"""Device check: every parallel path at 1..16 threads against one thread (sequences and streams)."""
import sys
import time

import numpy as np

import fastrnn

COUNTS = [int(c) for c in sys.argv[1:]] or [2, 3, 4, 5, 8, 12, 16]
rng = np.random.default_rng(0)
f64 = np.float64

LAYERS = [  # (name, make, batch, lengths or None)
    ("lstm h1024 b1", lambda: fastrnn.LSTM(64, 1024, seed=1), 1, None),
    ("gru h512 b1 2layer", lambda: fastrnn.GRU(64, 512, num_layers=2, seed=1), 1, None),
    ("gru h320 lbr0 b1", lambda: fastrnn.GRU(64, 320, linear_before_reset=False, seed=1), 1, None),
    ("lstm h512 proj128 peep b1", lambda: fastrnn.LSTM(64, 512, proj_size=128, peepholes=True, seed=1), 1, None),
    ("rnn h70 2layer bi f64 b3", lambda: fastrnn.RNN(64, 70, num_layers=2, bidirectional=True, dtype=f64, seed=1), 3, [100, 0, 57]),
    ("lstm h96 proj40 bi f64 b3", lambda: fastrnn.LSTM(64, 96, proj_size=40, bidirectional=True, dtype=f64, seed=1), 3, [33, 100, 1]),
    ("gru h70 2layer bi f64 b1", lambda: fastrnn.GRU(64, 70, num_layers=2, bidirectional=True, dtype=f64, seed=1), 1, [83]),
    ("lstm h256 b64", lambda: fastrnn.LSTM(64, 256, seed=1), 64, None),
    ("gru h256 b64 varlen", lambda: fastrnn.GRU(64, 256, seed=1), 64, "rand"),
    ("rnn h192 b8", lambda: fastrnn.RNN(64, 192, num_layers=2, seed=1), 8, None),
    ("lstm h128 b16 bi", lambda: fastrnn.LSTM(64, 128, bidirectional=True, seed=1), 16, None),
    ("lstm h256 f16w b1", lambda: fastrnn.LSTM(64, 256, seed=1, weight_dtype=np.float16), 1, None),
]
STREAMS = [  # (name, make, rows)
    ("lstm h1024", lambda: fastrnn.LSTM(64, 1024, seed=2), 1),
    ("lstm h256 2layer", lambda: fastrnn.LSTM(16, 256, num_layers=2, seed=2), 1),
    ("gru h224 f64 b2", lambda: fastrnn.GRU(16, 224, dtype=f64, seed=2), 2),
    ("gru h320 lbr0", lambda: fastrnn.GRU(16, 320, linear_before_reset=False, seed=2), 1),
    ("lstm h512 proj128", lambda: fastrnn.LSTM(16, 512, proj_size=128, seed=2), 1),
    ("rnn h192 2layer b8", lambda: fastrnn.RNN(16, 192, num_layers=2, seed=2), 8),
    ("lstm h128 b16", lambda: fastrnn.LSTM(16, 128, seed=2), 16),
    ("lstm h512 b64", lambda: fastrnn.LSTM(16, 512, seed=2), 64),
]


def finals(out):
    h = out[1]
    return h if isinstance(h, tuple) else (h,)


def diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, f64) - np.asarray(y, f64)))) for x, y in zip(a, b))


bad = 0
t0 = time.time()
print("threads available", fastrnn.get_num_threads(), "layer", fastrnn.threading_layer())
import os
for name, make, batch, lengths in ([] if os.environ.get('SKIP_SEQ') else LAYERS):
    layer = make()
    dtype = layer.dtype
    x = rng.standard_normal((100, batch, 64)).astype(dtype)
    if lengths == "rand":
        lengths = rng.integers(0, 101, batch)
    lengths = None if lengths is None else np.asarray(lengths)
    fastrnn.set_num_threads(1)
    ref = layer(x, lengths=lengths)
    row = []
    for n in COUNTS:
        fastrnn.set_num_threads(n)
        got = layer(x, lengths=lengths)
        d = diff((ref[0],) + finals(ref), (got[0],) + finals(got))
        tol = 1e-12 if dtype == f64 else 1e-5
        bad += d > tol
        row.append(f"{n}:{d:.1e}{'' if d <= tol else '!!'}")
    print(f"seq  {name:28s}", " ".join(row), f"t={time.time() - t0:.0f}s", flush=True)

for name, make, rows in STREAMS:
    layer = make()
    x = rng.standard_normal((12, rows, 16 if layer.input_size == 16 else 64)).astype(layer.dtype)

    def run(counts):
        s = layer.stream(rows)
        outs = []
        for t, n in enumerate(counts):
            fastrnn.set_num_threads(n)
            outs.append(np.array(s.step(x[t]), copy=True))
        return np.stack(outs)

    ref = run([1] * 12)
    row = []
    for n in COUNTS:
        got = run([n] * 4 + [1] + [n] * 3 + [3, 16 if n < 16 else 2, n, n])
        d = diff([ref], [got])
        tol = 1e-12 if layer.dtype == f64 else 1e-5
        bad += d > tol
        row.append(f"{n}:{d:.1e}{'' if d <= tol else '!!'}")
    print(f"step {name:28s}", " ".join(row), f"t={time.time() - t0:.0f}s", flush=True)
print("MISMATCHES", bad)
