"""Runtime guarantees: light import, allocation-free streaming, thread safety, thread controls."""
import json
import platform
import subprocess
import sys
import threading
import tracemalloc

import numba
import numpy as np
import pytest

import fastrnn
from fastrnn import recurrent
from fastrnn.errors import ArgumentError, DTypeError, ShapeError, UnsupportedError


def test_import_pulls_in_neither_torch_nor_onnx():
    code = ("import sys, fastrnn, converters; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threading_layer_is_thread_safe():
    layer = fastrnn.LSTM(4, 8, seed=0)
    layer(np.ones((3, 4, 4), np.float32))
    assert fastrnn.threading_layer() in ("omp", "tbb")


def test_set_num_threads_round_trip_and_validation():
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    fastrnn.set_num_threads(before)
    for bad in (0, -1, 10_000, 1.5, "2", True):
        with pytest.raises(ArgumentError):
            fastrnn.set_num_threads(bad)



def test_thread_count_holds_in_every_thread():
    """set_num_threads is the whole process's count: numba's belongs to each thread, and a
    thread pool's worker would otherwise run every core's kernels after set_num_threads(1)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("this machine runs one numba thread: every count is 1")
    from fastrnn import threads

    layer = fastrnn.GRU(8, 128, seed=1)
    x = np.random.default_rng(2).standard_normal((30, 1, 8)).astype(np.float32)
    before = fastrnn.get_num_threads()
    seen = {}

    def work(name):
        seen[name] = (fastrnn.get_num_threads(), threads.workers(), numba.get_num_threads(),
                      layer(x)[0])

    try:
        for count in (1, 2):
            fastrnn.set_num_threads(count)
            want = layer(x)[0]
            worker = threading.Thread(target=work, args=(count,))
            worker.start()
            worker.join()
            got_count, got_workers, numba_count, got = seen[count]
            assert (got_count, got_workers, numba_count) == (count, count, count)
            np.testing.assert_array_equal(got, want)  # the same kernel as the main thread's
    finally:
        fastrnn.set_num_threads(before)


FORK_CHILD = """
import json, multiprocessing, warnings, numpy as np, fastrnn
layer = fastrnn.LSTM(16, 128, seed=3)
x = np.random.default_rng(4).standard_normal((40, 1, 16)).astype(np.float32)
fastrnn.set_num_threads(2)
parallel = layer(x)[0]  # the parent's thread pool is running from here on
def child(queue):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = layer(x)[0]
    queue.put((float(np.abs(out - parallel).max()), [str(w.message) for w in caught]))
context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
process.join(120)
print(process.exitcode, fastrnn.threading_layer())
print(json.dumps(queue.get(timeout=5) if process.exitcode == 0 else None))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_forked_child_runs_after_the_parents_parallel_call():
    """numba kills a child forked after GNU OpenMP started at its first parallel region
    (SIGTERM); fastrnn's calls in such a child run the serial kernels and say so once."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("this machine runs one numba thread: no parallel kernel to fork after")
    run = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    exitcode, layer_name = run.stdout.splitlines()[0].split()
    assert exitcode == "0", run.stdout + run.stderr
    diff, messages = json.loads(run.stdout.splitlines()[1])
    assert diff <= 1e-6
    if layer_name == "omp":
        assert len(messages) == 1 and "forked" in messages[0], messages


NUMPY_DOMAIN = np.lib.tracemalloc_domain


def test_flags_are_taken_by_their_truth_value_or_refused(tmp_path):
    """On/off arguments are taken by truth value as torch takes them (0, None, numpy bools, a
    one-element array); a value without one is an ArgumentError naming the argument."""
    from converters.torch_files import read_state_dict
    from fastrnn import warmup
    from fastrnn.demo import model_path

    torch = pytest.importorskip("torch")
    no_truth = np.array([1, 0])
    vocab = fastrnn.Vocabulary("AB", bos="^", eos="$")
    layer = fastrnn.LSTM(3, 4)
    torch.save(torch.nn.GRU(3, 4).state_dict(), tmp_path / "g.pt")
    fastrnn.save(layer, tmp_path / "l.frnn")
    gen = fastrnn.load(model_path("weather_chars"))
    calls = {
        "bias": lambda v: fastrnn.GRU(3, 4, bias=v),
        "batch_first": lambda v: fastrnn.RNN(3, 4, batch_first=v),
        "bidirectional": lambda v: fastrnn.LSTM(3, 4, bidirectional=v),
        "peepholes": lambda v: fastrnn.LSTM(3, 4, peepholes=v),
        "input_forget": lambda v: fastrnn.LSTM(3, 4, input_forget=v),
        "linear_before_reset": lambda v: fastrnn.GRU(3, 4, linear_before_reset=v),
        "strict": lambda v: layer.load_state_dict(layer.state_dict(), strict=v),
        "bos": lambda v: vocab.encode("AB", bos=v),
        "eos": lambda v: vocab.encode_batch(["AB"], eos=v),
        "join": lambda v: vocab.decode([2, 3], join=v),
        "strip": lambda v: vocab.decode([2, 3], strip=v),
        "mmap": lambda v: fastrnn.load(tmp_path / "l.frnn", mmap=v),
        "greedy": lambda v: gen.generate("Denver", steps=3, greedy=v),
        "unwrap": lambda v: read_state_dict(tmp_path / "g.pt", unwrap=v),
        "float16_weights": lambda v: warmup.plan(float16_weights=v),
    }
    for name, call in calls.items():
        for value in (True, 0, None, np.bool_(True), np.array([1])):
            call(value)
        with pytest.raises(ArgumentError, match=f"^{name} must be True or False"):
            call(no_truth)
    assert fastrnn.Linear(3, 2, bias=np.array([0])).bias is False
    with pytest.raises(ArgumentError, match="bias must be True or False"):
        fastrnn.Linear(3, 2, bias=no_truth)


@pytest.mark.parametrize("make,threads", [
    (lambda: fastrnn.RNN(6, 10, num_layers=2, seed=1), 1),
    (lambda: fastrnn.GRU(6, 10, num_layers=2, seed=1), 1),
    (lambda: fastrnn.LSTM(6, 10, num_layers=2, seed=1), 1),
    (lambda: fastrnn.LSTM(6, 256, num_layers=2, seed=1), 2)])  # hidden units split over threads
def test_stream_step_allocates_no_array_memory(make, threads, monkeypatch):
    from fastrnn.kernels import units

    monkeypatch.setattr(recurrent, "core_l2_bytes", lambda: 1 << 20)  # whatever this CPU's L2
    stream = make().stream(batch_size=3)
    x_t = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        for _ in range(3):  # compile and warm up outside the measurement
            stream.step(x_t)
        # nor a unit split's sync array per step (freed at once, so the snapshots miss it)
        monkeypatch.setattr(units, "sync_array", lambda chunks: pytest.fail("new sync array"))
        tracemalloc.start()
        snapshot_before = tracemalloc.take_snapshot()
        for _ in range(50):
            stream.step(x_t)
        snapshot_after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        fastrnn.set_num_threads(before)
    domain = tracemalloc.DomainFilter(True, NUMPY_DOMAIN)
    grown = [s for s in snapshot_after.filter_traces([domain]).compare_to(
        snapshot_before.filter_traces([domain]), "lineno") if s.count_diff > 0]
    assert not grown, grown
    total = sum(s.size_diff for s in snapshot_after.compare_to(snapshot_before, "filename")
                if s.size_diff > 0)
    assert total < 4096, f"streaming grew Python memory by {total} bytes over 50 steps"


def test_stream_returns_same_buffer_and_state_round_trip():
    layer = fastrnn.LSTM(3, 5, num_layers=2, seed=2)
    stream = layer.stream(2)
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    first = stream.step(x[0])
    assert stream.step(x[1]) is first
    h, c = stream.state
    assert h.shape == (2, 2, 5) and c.shape == (2, 2, 5)
    saved = stream.state
    a = stream.step(x[2]).copy()
    stream.state = saved
    np.testing.assert_array_equal(stream.step(x[2]), a)
    stream.reset()
    assert not stream.state[0].any() and not stream.state[1].any()


def _awkward_copies(x):
    """x as arrays the kernels were not compiled for: read-only, strided, float64, misaligned,
    a list."""
    readonly = x.copy()
    readonly.flags.writeable = False
    strided = np.repeat(x, 2, axis=-1)[..., ::2]
    raw = np.zeros(x.size * 4 + 1, np.uint8)
    misaligned = raw[1:].view(np.float32).reshape(x.shape)
    misaligned[...] = x
    assert not misaligned.flags.aligned and not strided.flags.c_contiguous
    return [readonly, strided, x.astype(np.float64), misaligned, x.tolist()]


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
def test_stream_step_takes_any_input_and_its_own_output(cls):
    """A step reads a canonical float32 input in place and copies any other (same results, and
    no new compilation); the previous step's output fed back as the input (autoregression) is
    read before the step overwrites it."""
    from fastrnn.kernels import engine

    layer = cls(6, 6, num_layers=2, seed=4)
    xs = np.random.default_rng(5).standard_normal((8, 2, 6)).astype(np.float32)
    layer.stream(2).step(xs[0])  # compiled for canonical inputs
    signatures = len(engine.run_stream.signatures)
    plain = _steps_on_any_input(layer, xs)
    assert not plain._x0.any()  # canonical inputs were read in place, never copied in
    assert len(engine.run_stream.signatures) == signatures


def _steps_on_any_input(layer, xs):
    """Steps xs (T, N, I) through one stream fed canonical copies of its outputs and another fed
    its own output buffer (equal results), and xs[1] as every awkward copy through new streams
    (the canonical input's result); returns the first stream."""
    rows = xs.shape[1]
    plain, fed = layer.stream(rows), layer.stream(rows)
    out = fed.step(xs[0])  # the stream's own output buffer
    y = plain.step(xs[0]).copy()
    for _ in range(len(xs) - 1):
        want = plain.step(y).copy()
        assert fed.step(out) is out
        np.testing.assert_array_equal(out, want)
        y = want
    reference = layer.stream(rows).step(xs[1]).copy()
    for awkward in _awkward_copies(xs[1]):
        np.testing.assert_array_equal(layer.stream(rows).step(awkward), reference)
    return plain


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
def test_split_stream_step_takes_any_input_and_its_own_output(cls, monkeypatch):
    """The same on two threads, where each step splits the layer's hidden units (run_units, which
    reads its input from the stream's own buffer): any input is checked and copied in, its own
    output fed back is read before the step overwrites it, and wrong inputs are typed errors."""
    from fastrnn.kernels import units

    if numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None:
        pytest.skip("needs numba's parallel threading layer")
    monkeypatch.setattr(recurrent, "core_l2_bytes", lambda: 1 << 20)  # W + R 1.5-2 MiB split
    layer = cls(256, 256, seed=4)
    called = []
    original = units.run_units
    monkeypatch.setattr(units, "run_units", lambda *a: called.append(1) or original(*a))
    xs = np.random.default_rng(5).standard_normal((8, 1, 256)).astype(np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        plain = _steps_on_any_input(layer, xs)
        with pytest.raises(ShapeError, match=r"\(batch_size, input_size\)"):
            plain.step(xs[1, :, :255])
        with pytest.raises(DTypeError, match="floating point"):
            plain.step(np.ones((1, 256), np.int64))
    finally:
        fastrnn.set_num_threads(before)
    assert len(called) == 2 * 8 + 1 + 5  # every step split: two streams of 8, 1, 5 awkward


def test_call_plans_per_shape_stay_bounded_and_right():
    """A layer works out its calls once per (steps, rows, threads) and keeps at most a bounded
    number of such plans; every shape, new or planned again after a clear, gives the reference
    result (float64 layer against a fresh layer's first call of that shape)."""
    from fastrnn import recurrent

    layer = fastrnn.GRU(3, 20, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
    rng = np.random.default_rng(5)
    shapes = [(steps, rows) for steps in range(1, 14) for rows in (1, 2, 3, 9, 17)]
    assert len(shapes) > recurrent._PLANS_KEPT
    for steps, rows in shapes + shapes[:5]:
        x = rng.standard_normal((steps, rows, 3))
        fresh = fastrnn.GRU(3, 20, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
        for got, want in zip(layer(x), fresh(x)):
            np.testing.assert_array_equal(got, want)
        assert len(layer._stack._plans) <= recurrent._PLANS_KEPT


@pytest.mark.parametrize("threads", [1, 2])
def test_layer_call_takes_any_input_without_new_compilation(threads):
    """Layers run a canonical input in place and a copy of any other, through the kernels'
    compiled functions for the canonical types: the same results, and no new compilation."""
    from fastrnn.kernels import engine, units

    if threads > 1 and (numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None):
        pytest.skip("needs numba's parallel threading layer")
    layer = fastrnn.LSTM(6, 64, num_layers=2, seed=6)
    x = np.random.default_rng(7).standard_normal((50, 1, 6)).astype(np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        want = layer(x)
        kernels = [engine.run_serial, units.run_units]
        counts = [len(k.signatures) for k in kernels]
        for awkward in _awkward_copies(x):
            got = layer(awkward)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1][1], want[1][1])
        assert [len(k.signatures) for k in kernels] == counts
    finally:
        fastrnn.set_num_threads(before)


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.GRU, fastrnn.LSTM])
def test_stream_steps_alternate_their_weight_walk(cls):
    """Steps walk their weight tiles forward and backward in turn (kernels/gemm.py), a stream's
    one-step calls too: the parity kept in the last slot of each layer's scratch flips every
    step."""
    from fastrnn.kernels import engine

    layer = cls(4, 40, num_layers=2, seed=3)
    stream = layer.stream(2)
    _, first_args, rest, _ = stream._calls([d[0] for d in layer._stack.layers])
    layer_args = [first_args] + [args[1:] for _, args in rest]  # (buf, meta, ...) of each layer
    x_t = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for step in range(4):
        stream.step(x_t)
        for buf, meta, *_ in layer_args:
            assert buf[meta[engine.S_SCRATCH] + meta[engine.S_SIZE] - 1] == (step + 1) % 2


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
def test_stream_follows_load_state_dict(cls):
    """After layer.load_state_dict a stream's next step (through a `step` taken before the load
    too) runs the new weights from the state it has, as a layer call from that state does."""
    layer = cls(4, 6, num_layers=2, seed=0)
    stream = layer.stream(3)
    step = stream.step
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((5, 3, 4)).astype(np.float32)
    for x_t in xs[:3]:
        step(x_t)
    state = stream.state
    new = {k: v * 0.7 + 0.01 for k, v in layer.state_dict().items()}
    layer.load_state_dict(new)
    got = np.stack([step(x_t).copy() for x_t in xs[3:]])
    expected = cls(4, 6, num_layers=2).load_state_dict(new)(xs[3:], state)[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU])
def test_stream_copies_are_streams_of_their_own(cls):
    """copy.copy, deepcopy and pickle give a stream with buffers of its own, from the same state:
    stepping the copy leaves the original where it was (deepcopy's and pickle's on a copy of the
    layer)."""
    import copy
    import pickle
    layer = cls(4, 6, num_layers=2, seed=0)
    stream = layer.stream(2)
    xs = np.random.default_rng(2).standard_normal((4, 2, 4)).astype(np.float32)
    for x_t in xs[:2]:
        stream.step(x_t)
    state = stream.state
    expected = layer(xs[2:], state)[0]
    copies = [(copy.copy(stream), True), (copy.deepcopy(stream), False),
              (pickle.loads(pickle.dumps(stream)), False)]
    for copied, same_layer in copies:
        assert (copied.layer is layer) == same_layer and copied.batch_size == 2
        got = np.stack([copied.step(x_t).copy() for x_t in xs[2:]])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        for now, before in zip(_parts(stream.state), _parts(state)):
            np.testing.assert_array_equal(now, before)


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


def test_stream_errors():
    with pytest.raises(UnsupportedError, match="bidirectional"):
        fastrnn.GRU(3, 4, bidirectional=True).stream()
    stream = fastrnn.GRU(3, 4).stream(2)
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        stream.step(np.zeros((1, 3), np.float32))
    with pytest.raises(ShapeError):
        stream.state = np.zeros((1, 2, 5), np.float32)
    with pytest.raises(ArgumentError):
        fastrnn.GRU(3, 4).stream(0)
    with pytest.raises(ArgumentError):
        fastrnn.GRU(3, 4).stream(2**40)  # refused before its buffer is allocated
    with pytest.raises(ArgumentError, match="2\\^40"):
        fastrnn.GRU(2**11, 1).stream(2**31)  # rows allowed, but 2^42 elements in all


# (batch, hidden): serial kernels; batch rows split over threads; hidden units split at batch 1.
@pytest.mark.parametrize("batch,hidden", [(1, 16), (5, 128), (1, 256)])
def test_concurrent_calls_match_serial(batch, hidden):
    layer = fastrnn.LSTM(8, hidden, num_layers=2, bidirectional=True, seed=3)
    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal((20, batch, 8)).astype(np.float32) for _ in range(6)]
    expected = [layer(x)[0] for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = layer(inputs[i])[0]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def _one_and_two_threads(layer, x, lengths=None):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("this machine runs one numba thread: there is no parallel kernel to compare")
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        serial = layer(x, lengths=lengths)
        fastrnn.set_num_threads(2)
        parallel = layer(x, lengths=lengths)
    finally:
        fastrnn.set_num_threads(before)
    return serial, parallel


@pytest.mark.parametrize("batch,hidden", [(5, 128), (1, 256)])
def test_parallel_kernels_match_one_thread(batch, hidden):
    layer = fastrnn.GRU(6, hidden, num_layers=2, seed=7)
    x = np.random.default_rng(8).standard_normal((15, batch, 6)).astype(np.float32)
    serial, parallel = _one_and_two_threads(layer, x)
    # Row blocks change how rows are tiled in the products, so the float32 sums may round
    # differently; the results agree to float32 rounding, not bit for bit.
    np.testing.assert_allclose(serial[0], parallel[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(serial[1], parallel[1], rtol=0, atol=1e-6)


def test_streams_in_threads_are_independent():
    layer = fastrnn.GRU(4, 12, num_layers=2, seed=5)
    rng = np.random.default_rng(6)
    seqs = [rng.standard_normal((30, 1, 4)).astype(np.float32) for _ in range(4)]
    expected = [layer(x)[0][:, 0] for x in seqs]
    got = [None] * 4

    def work(i):
        stream = layer.stream(1)
        got[i] = np.stack([stream.step(seqs[i][t]).copy()[0] for t in range(30)])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-6)


# A stream's step on two threads runs each layer as a one-step layer call would: its hidden units
# split over the threads (one row and large weights, run_units), or its rows (8+: run_parallel,
# and for LSTM / RNN from 16 rows the fused product, run_fused); a small layer stays on one thread.
STREAM_SPLITS = [
    (lambda: fastrnn.LSTM(16, 256, num_layers=2, seed=21), 1, "run_units"),
    (lambda: fastrnn.GRU(16, 224, dtype=np.float64, seed=21), 2, "run_units"),
    (lambda: fastrnn.GRU(16, 320, linear_before_reset=False, seed=21), 1, "run_units"),
    (lambda: fastrnn.LSTM(16, 512, proj_size=128, seed=21), 1, "run_units"),
    (lambda: fastrnn.RNN(16, 192, num_layers=2, seed=21), 8, "run_parallel"),
    (lambda: fastrnn.LSTM(16, 128, seed=21), 16, "run_fused"),
    (lambda: fastrnn.GRU(16, 64, seed=21), 1, None),
]


@pytest.mark.parametrize("make,rows,kernel", STREAM_SPLITS)
def test_streams_on_two_threads_match_one_thread(make, rows, kernel, monkeypatch):
    """Steps, a change of the thread count between steps and a load_state_dict between steps
    give the one-thread stream's results; the split steps run the layer call's kernel."""
    from fastrnn.kernels import engine, fused, units

    if numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None:
        pytest.skip("needs numba's parallel threading layer")
    monkeypatch.setattr(recurrent, "core_l2_bytes", lambda: 1 << 20)  # each layer overflows it
    layer = make()
    rng = np.random.default_rng(22)
    x = rng.standard_normal((9, rows, 16)).astype(layer.dtype)
    reloaded = {k: v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype)
                for k, v in layer.state_dict().items()}

    def run(counts):
        layer.load_state_dict(make().state_dict())
        stream = layer.stream(rows)
        outputs = []
        for t, count in enumerate(counts):
            if t == 6:
                layer.load_state_dict(reloaded)
            fastrnn.set_num_threads(count)
            outputs.append(np.array(stream.step(x[t]), copy=True))
        return np.stack(outputs), stream.state

    before = fastrnn.get_num_threads()
    try:
        serial = run([1] * 9)
        called = []
        for module, name in ((units, "run_units"), (engine, "run_parallel"), (fused, "run_fused")):
            original = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, o=original, n=name: called.append(n) or o(*a))
        split = run([2, 2, 2, 1, 2, 2, 2, 2, 2])
    finally:
        fastrnn.set_num_threads(before)
    assert set(called) == ({kernel} if kernel else set())
    assert len(called) == (8 * layer.num_layers if kernel else 0)
    atol = 1e-12 if layer.dtype == np.float64 else 1e-6
    np.testing.assert_allclose(split[0], serial[0], rtol=0, atol=atol)
    for got, want in zip(*(s[1] if isinstance(s[1], tuple) else (s[1],) for s in (split, serial))):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_one_step_splits_only_weights_that_fill_most_of_a_core_l2(monkeypatch):
    """A step whose W and R take at most 7/8 of one core's L2 runs on one thread (halving an
    L2-rate step does not pay for the parallel region); a sequence over the same weights splits
    by its own rule (1 MiB of recurrent weights over the call)."""
    from fastrnn.recurrent import SERIAL, UNITS
    from fastrnn.stream import _directions

    def params(layer):
        return _directions(layer._stack)[0]

    lstm = params(fastrnn.LSTM(64, 256, seed=1))  # W + R: 1.25 MiB, R 1 MiB
    gru = params(fastrnn.GRU(64, 256, seed=1))  # 960 KiB, R 768 KiB
    small = params(fastrnn.LSTM(64, 192, seed=1))  # 768 KiB, R 576 KiB
    for l2, steps in ((1 << 20, [(UNITS, 2), (UNITS, 2), (SERIAL, 1)]),
                      (2 << 20, [(SERIAL, 1), (SERIAL, 1), (SERIAL, 1)])):
        monkeypatch.setattr(recurrent, "core_l2_bytes", lambda l2=l2: l2)
        assert [p.route(1, 1, 2) for p in (lstm, gru, small)] == steps
        assert [p.route(100, 1, 2) for p in (lstm, gru, small)] == [(UNITS, 2)] * 3
        assert lstm.route(1, 1, 1) == (SERIAL, 1)


def test_cache_levels_read_from_sysfs_or_a_fallback(monkeypatch, tmp_path):
    from fastrnn import cpu_caches

    for index, (level, kind, size, cpus) in enumerate([(1, "Data", "48K", "0"),
                                                       (1, "Instruction", "32K", "0"),
                                                       (2, "Unified", "2048K", "0"),
                                                       (3, "Unified", "32M", "0-7,16-23")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size),
                            ("shared_cpu_list", cpus)):
            (d / name).write_text(f"{value}\n")
    monkeypatch.setattr(cpu_caches.glob, "glob", lambda pattern: [str(tmp_path / "index0"),
                        str(tmp_path / "index1"), str(tmp_path / "index2"), str(tmp_path / "index3")])
    assert cpu_caches.cache_levels() == [dict(name="L1", size=48 << 10, private=True),
                                         dict(name="L2", size=2 << 20, private=True),
                                         dict(name="L3", size=32 << 20, private=False)]
    monkeypatch.setattr(cpu_caches.glob, "glob", lambda pattern: [])
    assert [level["name"] for level in cpu_caches.cache_levels()] == ["L1", "L2", "L3"]
    assert cpu_caches.core_l2_bytes() > 0


# Batches under 8 rows split each step's hidden units over threads (run_units), and bidirectional
# layers run their two directions at once (run_directions): every cell and variant (projection and
# GRU lbr=0 take a second stage per step), H that is not a whole number of panels, both directions
# and uneven lengths (zero included) must give the one-thread results.
SMALL_BATCH_LAYERS = [
    lambda bi: fastrnn.RNN(64, 70, num_layers=2, bidirectional=bi, dtype=np.float64, seed=9),
    lambda bi: fastrnn.GRU(64, 70, num_layers=2, bidirectional=bi, dtype=np.float64, seed=9),
    lambda bi: fastrnn.GRU(64, 64, bidirectional=bi, linear_before_reset=False, dtype=np.float64,
                           seed=9),
    lambda bi: fastrnn.LSTM(64, 70, num_layers=2, bidirectional=bi, dtype=np.float64, seed=9),
    lambda bi: fastrnn.LSTM(64, 96, proj_size=40, bidirectional=bi, peepholes=True,
                            dtype=np.float64, seed=9),
]


@pytest.mark.parametrize("make", SMALL_BATCH_LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_batch_parallel_kernels_match_one_thread(make, bidirectional, batch):
    layer = make(bidirectional)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((100, batch, 64))
    lengths = np.array([100, 0, 57][:batch]) if batch > 1 else np.array([83])
    serial, parallel = _one_and_two_threads(layer, x, lengths)
    np.testing.assert_allclose(serial[0], parallel[0], rtol=0, atol=1e-12)
    # final state: h_n, or (h_n, c_n) (h_n and c_n differ in width with a projection)
    final_serial = serial[1] if isinstance(serial[1], tuple) else (serial[1],)
    final_parallel = parallel[1] if isinstance(parallel[1], tuple) else (parallel[1],)
    for want, got in zip(final_serial, final_parallel, strict=True):
        np.testing.assert_allclose(want, got, rtol=0, atol=1e-12)


def test_small_batch_parallel_kernels_are_the_ones_tested(monkeypatch):
    """The test above reaches run_units and run_directions (not the serial kernel)."""
    from fastrnn.kernels import engine, units

    if numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None:
        pytest.skip("needs numba's parallel threading layer")
    called = []

    def spy(module, name):
        original = getattr(module, name)

        def call(*args):
            called.append(name)
            return original(*args)
        return call

    for module, name in ((units, "run_units"), (engine, "run_directions")):
        monkeypatch.setattr(module, name, spy(module, name))
    x = np.random.default_rng(1).standard_normal((100, 1, 64))
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        SMALL_BATCH_LAYERS[3](False)(x)
        SMALL_BATCH_LAYERS[3](True)(x)
    finally:
        fastrnn.set_num_threads(before)
    assert called == ["run_units", "run_units", "run_directions", "run_directions"]


# run_units hands out blocks by claiming, so it must finish with the right answer however many
# threads the region really gets: more blocks than threads, or one thread running every block;
# with two stages per step (projection) over two rows, with the one-row early start, and with
# float32 blocks that carry their input projection (whichever thread works a block carries it).
UNIT_SPLIT_CASES = [
    (lambda: fastrnn.LSTM(16, 96, proj_size=40, dtype=np.float64, seed=13), [40, 23]),
    (lambda: fastrnn.LSTM(16, 96, dtype=np.float64, seed=13), [37]),
    (lambda: fastrnn.GRU(16, 80, dtype=np.float64, seed=13), [40]),
    # blocks above EARLY_START_MAX_BYTES: one-row blocks without the early start
    (lambda: fastrnn.LSTM(16, 192, dtype=np.float64, seed=13), [33]),
    (lambda: fastrnn.LSTM(16, 256, seed=13), [37]),
]


@pytest.mark.parametrize("chunks,threads", [(3, 2), (2, 1), (3, 1)])
@pytest.mark.parametrize("case", range(len(UNIT_SPLIT_CASES)))
def test_unit_split_survives_fewer_threads_than_blocks(chunks, threads, case):
    from fastrnn.kernels import units
    from fastrnn.recurrent import aligned, check_lengths

    if numba.config.NUMBA_NUM_THREADS < threads or fastrnn.threading_layer() is None:
        pytest.skip("needs numba's parallel threading layer")
    make, lengths = UNIT_SPLIT_CASES[case]
    layer = make()
    params = layer._stack.layers[0][0]
    rows = len(lengths)
    dtype = layer.dtype
    x = np.random.default_rng(14).standard_normal((40, rows, 16)).astype(dtype)
    lengths = check_lengths(np.array(lengths), rows, 40)
    want = layer(x, lengths=lengths)
    h = np.zeros((1, rows, layer.hidden_out), dtype)
    c = np.zeros((1, rows, layer.hidden_size), dtype) if layer.mode == "LSTM" else None
    state = (h,) if c is None else (h, c)
    y = np.zeros((40, rows, layer.hidden_out), dtype)
    wbuf, wpk, cfg, fcfg, scratch = params.own_args(aligned(params.scratch_size(40, rows), dtype))
    args = (x, wbuf, wpk, cfg, fcfg, lengths, h, params.dummy_c if c is None else c, 0, y, 0,
            scratch)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        units.run_units(*args, units.sync_array(chunks), chunks)
    finally:
        fastrnn.set_num_threads(before)
    np.testing.assert_allclose(y, want[0], rtol=0, atol=1e-12)
    final = want[1] if isinstance(want[1], tuple) else (want[1],)
    for expected, got in zip(final, state, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# Batches of 8+ rows per thread take the fused [x_t, h] product (LSTM without projection, RNN),
# split over threads when the work is large enough; uneven lengths and both directions included.
@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM])
def test_fused_kernel_on_two_threads_matches_one_thread(cls):
    layer = cls(16, 128, bidirectional=True, dtype=np.float64, seed=11)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((30, 24, 16))
    lengths = rng.integers(0, 31, 24)
    lengths[0] = 30
    serial, parallel = _one_and_two_threads(layer, x, lengths)
    np.testing.assert_allclose(serial[0], parallel[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(serial[1]), np.asarray(parallel[1]), rtol=0, atol=1e-12)


# The fused product runs only where it keeps every thread the row split would use busy: with 8-15
# rows on two threads it would run one thread, so the row split (4+ rows a thread) runs instead.
@pytest.mark.parametrize("threads,rows,hidden,expected", [
    (1, 12, 256, "run_fused_serial"), (2, 12, 256, "run_parallel"), (2, 16, 256, "run_fused"),
    (2, 4, 256, "run_units"), (1, 3, 100, "run_serial"), (2, 12, 100, "run_parallel")])
def test_batch_kernel_choice(monkeypatch, threads, rows, hidden, expected):
    from fastrnn.kernels import engine, fused, units

    if threads > 1 and (numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None):
        pytest.skip("needs numba's parallel threading layer")
    called = []
    for module, name in ((engine, "run_serial"), (engine, "run_parallel"), (units, "run_units"),
                         (fused, "run_fused"), (fused, "run_fused_serial")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *args, _name=name, _run=original: (called.append(_name),
                                                                      _run(*args)))
    x = np.random.default_rng(14).standard_normal((20, rows, 16))
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        got = fastrnn.LSTM(16, hidden, dtype=np.float64, seed=13)(x)
        fastrnn.set_num_threads(1)
        monkeypatch.undo()  # a layer binds its kernels on its first call of a shape: a new one
        want = fastrnn.LSTM(16, hidden, dtype=np.float64, seed=13)(x)
    finally:
        fastrnn.set_num_threads(before)
    assert called == [expected]
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)


# A state decaying towards zero passes through the denormal range, where x86 cores can take a
# slow microcode assist per operation: kernels flush denormals to zero while they run (x86
# MXCSR FTZ/DAZ), and only while they run.
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"),
                    reason="FTZ/DAZ are x86 modes")
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_flush_denormals_and_restore_the_fp_mode(threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two numba threads")
    hidden = 256
    layer = fastrnn.RNN(8, hidden, nonlinearity="relu", bias=False)
    weights = layer.state_dict()
    weights["weight_hh_l0"] = np.eye(hidden, dtype=np.float32) * np.float32(0.5)
    weights["weight_ih_l0"] = np.zeros_like(weights["weight_ih_l0"])
    layer.load_state_dict(weights)
    x = np.zeros((200, 1, 8), np.float32)
    h0 = np.ones((1, 1, hidden), np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        y, _ = layer(x, h0)
    finally:
        fastrnn.set_num_threads(before)
    tiny = np.finfo(np.float32).tiny
    assert y[125, 0, 0] == np.float32(2.0 ** -126)  # the last normal value: exact halving so far
    assert not ((y > 0) & (y < tiny)).any()  # then zero, never denormal
    assert (y[130:] == 0).all()
    # the thread's own arithmetic is IEEE again afterwards
    assert np.float32(tiny) * np.float32(0.5) > 0


@pytest.mark.parametrize("cls,kwargs,rows,hidden", [
    (fastrnn.RNN, {}, 1, 100), (fastrnn.GRU, {}, 1, 100), (fastrnn.LSTM, {}, 1, 100),
    (fastrnn.LSTM, {}, 3, 100), (fastrnn.LSTM, {}, 3, 128),
    (fastrnn.GRU, {"linear_before_reset": False}, 1, 100),
    (fastrnn.LSTM, {"proj_size": 40}, 2, 100), (fastrnn.LSTM, {"weight_dtype": "float16"}, 1, 100)])
def test_walking_order_never_changes_results(cls, kwargs, rows, hidden):
    """Serial steps and calls alternate the order in which they walk the weight tiles (gemm.py),
    and a stream's every other step projects its input after the recurrent product (steps.serial);
    every output still sums in one order, so calls that start on either parity, and a stream's
    one-step calls, give the same bits: gates laid flat (H = 100, layout.C_FLAT: LSTM's 13
    panels) or in panels of each gate (H = 128, an LSTM projection, GRU linear_before_reset=0)."""
    layer = cls(24, hidden, seed=3, **kwargs)  # 4+ panels of units: the order matters
    x = np.random.default_rng(4).standard_normal((7, rows, 24)).astype(np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        first = layer(x)
        layer(x[:3])  # an odd number of steps flips the next call's starting parity
        second = layer(x)
    finally:
        fastrnn.set_num_threads(before)
    stream = layer.stream(rows)
    steps = [np.array(stream.step(x[t]), copy=True) for t in range(7)]
    for got in (second[0], np.stack(steps)):
        np.testing.assert_array_equal(got, first[0])


@pytest.mark.parametrize("make,rows", [
    (lambda: fastrnn.LSTM(24, 256, seed=3), 1), (lambda: fastrnn.GRU(24, 320, seed=3), 1),
    (lambda: fastrnn.GRU(24, 256, linear_before_reset=False, seed=3), 2),
    (lambda: fastrnn.LSTM(24, 256, proj_size=100, seed=3), 3)])
def test_split_stream_steps_walk_both_ways_to_the_same_bits(make, rows, monkeypatch):
    """A stream's steps split over threads (run_units, blocks too large to start early) alternate
    their walking order as one-thread steps do: every other step's blocks run the recurrent
    product backward, then project their own input (none projected up front). Every output is
    the one-thread call's, to the bit: one row and several, LSTM projection, GRU lbr=0."""
    from fastrnn.kernels import units

    if numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None:
        pytest.skip("needs numba's parallel threading layer")
    monkeypatch.setattr(recurrent, "core_l2_bytes", lambda: 1 << 16)
    layer = make()
    x = np.random.default_rng(4).standard_normal((7, rows, 24)).astype(np.float32)
    called = []
    original = units.run_units
    monkeypatch.setattr(units, "run_units", lambda *a: called.append(a) or original(*a))
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        want = layer(x)[0]
        fastrnn.set_num_threads(2)
        stream = layer.stream(rows)
        got = np.stack([np.array(stream.step(x[t]), copy=True) for t in range(7)])
    finally:
        fastrnn.set_num_threads(before)
    assert len(called) == 7
    np.testing.assert_array_equal(got, want)


# Which float32 layers carry their input projection inside the steps: input plus recurrent weights
# up to 8 MiB (LSTM H = 512, I = 256: 6 MiB; H = 1024: 20 MiB), not GRU linear_before_reset=0
# (its n gate waits for r * h), not float64.
@pytest.mark.parametrize("make,ahead", [
    (lambda: fastrnn.LSTM(256, 512), True), (lambda: fastrnn.GRU(256, 512), True),
    (lambda: fastrnn.LSTM(64, 64), True), (lambda: fastrnn.LSTM(256, 1024), False),
    (lambda: fastrnn.GRU(256, 512, linear_before_reset=False), False),
    (lambda: fastrnn.LSTM(64, 64, dtype=np.float64), False)])
def test_which_layers_project_ahead(make, ahead):
    from fastrnn.kernels import layout
    from fastrnn.kernels.simd import CARRY_PROJECTION

    # only where the target pays for it (32 vector registers, not a Zen 5)
    assert make()._stack.layers[0][0]._cfg[layout.C_AHEAD] == (ahead and CARRY_PROJECTION)


@pytest.mark.parametrize("cls,kwargs", [(fastrnn.LSTM, {}), (fastrnn.GRU, {}),
                                        (fastrnn.LSTM, {"proj_size": 24}),
                                        (fastrnn.LSTM, {"weight_dtype": "float16"})])
def test_projecting_ahead_equals_projecting_first(cls, kwargs):
    """One-row serial calls carry the input projection of later steps inside the recurrent steps
    (steps.ahead_slot); every output equals, to the bit, the projection done before the first
    step: lengths below, at and between whole blocks, both directions, two layers."""
    # H = 96, whole panels: a layer whose gates would be laid flat never carries (C_FLAT)
    layer = cls(20, 96, num_layers=2, bidirectional=True, seed=5, **kwargs)
    _assert_ahead_equals_first(layer, threads=1, step_counts=(1, 7, 8, 15, 16, 17, 24, 41))


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU])
def test_unit_split_projecting_ahead_equals_projecting_first(monkeypatch, cls):
    """On two threads, blocks of units too large to start early (H = 256: 512 KiB of weights a
    block for LSTM) carry their own columns of the projection; bitwise equal to projecting first,
    over lengths below, at and between whole blocks of steps, two layers."""
    from fastrnn.kernels import units

    if numba.config.NUMBA_NUM_THREADS < 2 or fastrnn.threading_layer() is None:
        pytest.skip("needs numba's parallel threading layer")
    called = []
    run_units = units.run_units
    monkeypatch.setattr(units, "run_units", lambda *a: (called.append(1), run_units(*a)))
    layer = cls(20, 256, num_layers=2, seed=7)
    _assert_ahead_equals_first(layer, threads=2, step_counts=(1, 7, 16, 17, 41))
    assert called  # the unit split ran


def _assert_ahead_equals_first(layer, threads, step_counts):
    """Every output and final state of `layer` (input width 20, one row) with the projection
    carried equals, to the bit, the one with it done before the first step. Targets without 32
    vector registers, and Zen 5, do not carry it by default (test_which_layers_project_ahead);
    the test switches it on there too, so that the kernels' carrying path is checked on every
    target."""
    from fastrnn.kernels import layout
    from fastrnn.kernels.simd import CARRY_PROJECTION

    directions = [d for pair in layer._stack.layers for d in pair]
    default = [d._cfg[layout.C_AHEAD] for d in directions]
    assert all(flag == CARRY_PROJECTION for flag in default)
    rng = np.random.default_rng(6)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        for steps in step_counts:
            x = rng.standard_normal((steps, 1, 20)).astype(np.float32)
            for length in sorted({steps, max(steps - 5, 0), steps // 2}):
                runs = []
                for flag in (1, 0):
                    for d in directions:
                        d._cfg[layout.C_AHEAD] = flag
                    out, state = layer(x, lengths=[length])
                    runs.append([out, *(state if isinstance(state, tuple) else (state,))])
                for got, want in zip(*runs):
                    np.testing.assert_array_equal(got, want)
    finally:
        fastrnn.set_num_threads(before)
        for d, flag in zip(directions, default):
            d._cfg[layout.C_AHEAD] = flag


def test_a_dropped_stream_is_freed_at_once():
    """A stream's step holds no reference back to the stream (no cycle for the garbage collector
    to find later): its buffers go as soon as the last reference does."""
    import gc
    import weakref

    stream = fastrnn.LSTM(4, 8, num_layers=2, seed=0).stream(2)
    stream.step(np.ones((2, 4), np.float32))
    gone = weakref.ref(stream)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del stream
        assert gone() is None
    finally:
        if was_enabled:
            gc.enable()


def test_compiled_for_finds_a_kernel_once_per_argument_types():
    """compiled_for keys its lookups on what numba.typeof reads of each argument (class, dtype,
    rank, layout, writeability, alignment): every kind of array gets the compiled function of its
    own numba type, and a second lookup of the same types does not ask the dispatcher again."""
    import numba

    from fastrnn.kernels._jit import compiled_for

    @numba.njit
    def first(a, b):
        return a.ravel()[0] + b

    base = np.arange(24.0)
    read_only = np.arange(6.0)
    read_only.flags.writeable = False
    unaligned = np.zeros(8 * 6 + 1, np.uint8)[1:].view(np.float64)
    arrays = [base, base.reshape(4, 6), base.reshape(4, 6).T, base[::2], base.astype(np.float32),
              read_only, unaligned, np.zeros((2, 3, 4))]
    scalars = [1, 2**63, np.float64(0.5), np.int32(3)]
    for a in arrays:
        for b in scalars:
            expected = first.compile(tuple(numba.typeof(v) for v in (a, b)))
            assert compiled_for(first, (a, b)) is expected
    asked = []
    ask = first.compile
    first.compile = lambda sig: asked.append(sig) or ask(sig)
    try:
        assert compiled_for(first, (np.ones(5), 7)) is compiled_for(first, (base, 1))
    finally:
        del first.compile
    assert asked == []
