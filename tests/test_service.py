"""fastrnn inside a long-running, multi-threaded service: layers, heads, streams and task models
called from many Python threads at once, weights loaded while others call, interrupted calls."""
import ctypes
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from fastrnn import recurrent, stream as stream_module
from fastrnn.demo import load_model


@pytest.fixture
def fast_switching():
    """Python threads switching every microsecond: races that need a switch at one bytecode show
    within a second or two."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _run_beside(stop, targets, seconds, body=lambda: time.sleep(0.01)):
    """Each of `targets` in a thread of its own while this thread repeats `body` for `seconds`;
    then `stop` is set and the threads joined."""
    workers = [threading.Thread(target=t) for t in targets]
    for w in workers:
        w.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        body()
    stop.set()
    for w in workers:
        w.join()


def _layers():
    # kernel paths: serial, fused batches (LSTM, 8+ rows), rows split (GRU, 16 rows), unit split
    # and both directions at once (two threads), projection
    return [fastrnn.LSTM(6, 16, num_layers=2, seed=0),
            fastrnn.GRU(6, 40, num_layers=2, bidirectional=True, seed=1),
            fastrnn.RNN(6, 24, seed=2),
            fastrnn.LSTM(6, 96, seed=3),
            fastrnn.LSTM(6, 32, num_layers=2, proj_size=8, seed=4)]


def _cases(layers, count, seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        layer = layers[i % len(layers)]
        steps, rows = int(rng.integers(1, 30)), int(rng.choice([1, 2, 3, 9, 16]))
        x = rng.standard_normal((steps, rows, 6)).astype(np.float32)
        lengths = rng.integers(0, steps + 1, rows) if i % 3 == 0 else None
        hx = None
        if i % 4 == 1:
            shape = (layer.num_layers * layer.num_directions, rows)
            h = rng.standard_normal(shape + (layer.hidden_out,)).astype(np.float32)
            c = rng.standard_normal(shape + (layer.hidden_size,)).astype(np.float32)
            hx = (h, c) if layer.mode == "LSTM" else h
        cases.append((layer, x, hx, lengths))
    return cases


def _called(case):
    layer, x, hx, lengths = case
    out, state = layer(x, hx, lengths=lengths)
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_layer_calls_equal_calls_one_at_a_time(threads, monkeypatch):
    # more shapes than a stack keeps plans for: plans are dropped while other threads use theirs
    monkeypatch.setattr(recurrent, "_PLANS_KEPT", 8)
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        cases = _cases(_layers(), 160)
        expected = [_called(case) for case in cases]
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(_called, cases))
    finally:
        fastrnn.set_num_threads(before)
    for i, (want, have) in enumerate(zip(expected, got)):
        for a, b in zip(want, have):
            assert np.array_equal(a, b), f"case {i} differs when called concurrently"


def test_concurrent_task_models_equal_calls_one_at_a_time():
    classifier, generator = load_model("dna_motif"), load_model("weather_chars")
    translator = load_model("date_format")
    jobs = []
    for i in range(16):
        texts = ["ACGTTATAAAGGCTACGATCGA", "GGGCCCATATATATGCGC", "CCGA"]
        jobs += [(classifier, texts[:1 + i % 3]),
                 (generator, ("Denver", "Boston", "Miami")[i % 3], i),
                 (translator, ["5 March 2021", "07.11.1962"][:1 + i % 2])]
    jobs.append((translator, "Feb 29 2024", 3))

    def run(job):
        model, *args = job
        if model is classifier:
            return classifier(args[0]).tolist()
        if model is generator:
            return generator.generate(args[0], 20, seed=args[1])
        return translator.translate(*args[:1], beam=args[1] if len(args) > 1 else 1)

    expected = [run(job) for job in jobs]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(run, jobs)) == expected


def _two_weights(layer_type, seed_a, seed_b, **kw):
    layer = layer_type(**kw, seed=seed_a)
    return layer, layer.state_dict(), layer_type(**kw, seed=seed_b).state_dict()


def test_stream_steps_run_old_or_new_weights_never_a_mix(fast_switching):
    layer, first, second = _two_weights(fastrnn.GRU, 0, 1, input_size=4, hidden_size=16,
                                        num_layers=3)
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((3, 1, 16)).astype(np.float32)

    def one_step():
        s = layer.stream(1)
        s.state = h0
        return s.step(x).copy()

    layer.load_state_dict(first)
    want = [one_step()]
    layer.load_state_dict(second)
    want.append(one_step())
    stop, mixed, steps = threading.Event(), [], [0]

    def stepper():
        s = layer.stream(1)
        while not stop.is_set():
            s.state = h0
            y = s.step(x)
            steps[0] += 1
            if not any(np.array_equal(y, w) for w in want):
                mixed.append(y.copy())

    def loads():
        layer.load_state_dict(first)
        layer.load_state_dict(second)

    _run_beside(stop, [stepper, stepper], 2, loads)
    assert steps[0] > 100
    assert not mixed, f"{len(mixed)} of {steps[0]} steps ran some layers' old weights"


def test_layer_calls_during_loads_run_old_or_new_weights(fast_switching):
    layer, first, second = _two_weights(fastrnn.LSTM, 0, 1, input_size=4, hidden_size=16,
                                        num_layers=2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((6, 2, 4)).astype(np.float32)
    want = [fastrnn.LSTM(4, 16, num_layers=2, bidirectional=True, seed=s)(x)[0] for s in (0, 1)]
    stop, mixed, errors = threading.Event(), [], []

    def caller():
        while not stop.is_set():
            try:
                y = layer(x)[0]
            except Exception as e:
                errors.append(e)
                return
            if not any(np.array_equal(y, w) for w in want):
                mixed.append(y)

    def loads():
        layer.load_state_dict(first)
        layer.with_weight_dtype("float16")
        layer.load_state_dict(second)

    _run_beside(stop, [caller, caller], 1, loads)
    assert not errors and not mixed


def test_load_state_dict_while_other_threads_build_streams(fast_switching):
    layer, first, second = _two_weights(fastrnn.LSTM, 0, 1, input_size=4, hidden_size=8)
    live = [layer.stream(1) for _ in range(50)]  # a load walks these while others are added
    stop, errors = threading.Event(), []

    def builder():
        while not stop.is_set():
            layer.stream(1)

    def loader():
        try:
            while not stop.is_set():
                layer.load_state_dict(first)
                layer.load_state_dict(second)
        except Exception as e:  # the defect: "Set changed size during iteration"
            errors.append(e)
            stop.set()

    _run_beside(stop, [builder, builder, loader], 1.5)
    assert not errors
    layer.load_state_dict(second)
    x = np.ones((1, 4), np.float32)
    want = layer.stream(1).step(x)
    assert all(np.array_equal(s.step(x), want) for s in live)


def test_stream_built_during_a_load_follows_the_new_weights(monkeypatch):
    layer, first, second = _two_weights(fastrnn.GRU, 0, 1, input_size=4, hidden_size=8,
                                        num_layers=2)
    x = np.ones((1, 4), np.float32)
    layer.load_state_dict(second)
    want = layer.stream(1).step(x).copy()
    layer.load_state_dict(first)
    build = stream_module.Stream._calls
    loaded = []

    def calls_then_another_thread_loads(self, directions):
        calls = build(self, directions)
        if not loaded:  # as another thread's load_state_dict landing mid-build would
            loaded.append(layer.load_state_dict(second))
        return calls

    monkeypatch.setattr(stream_module.Stream, "_calls", calls_then_another_thread_loads)
    s = layer.stream(1)
    assert loaded
    assert np.array_equal(s.step(x), want)


class _Interrupt(Exception):
    pass


def test_layer_interrupted_in_another_thread_stays_usable():
    layer = fastrnn.LSTM(6, 32, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 3, 6)).astype(np.float32)
    want = layer(x)[0].copy()
    interrupted, wrong, finishing = [0], [0], threading.Event()

    def worker():
        for _ in range(3000):
            try:
                if not np.array_equal(layer(x)[0], want):
                    wrong[0] += 1
            except _Interrupt:
                interrupted[0] += 1
        finishing.set()
        try:
            time.sleep(0.05)  # where the last exception sent lands
        except _Interrupt:
            pass

    t = threading.Thread(target=worker)
    t.start()
    while not finishing.is_set():  # an exception raised into the thread wherever it is
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                   ctypes.py_object(_Interrupt))
        time.sleep(0.001)
    t.join()
    assert interrupted[0] and not wrong[0]
    assert np.array_equal(layer(x)[0], want)


def test_generator_logits_are_the_calling_threads_latest_step():
    generator = load_model("weather_chars")

    def generation(prompt):
        scores = []
        for _ in generator.stream_ids(prompt, 25, greedy=True, stop=False):
            scores.append(generator.logits.copy())
            time.sleep(0.0005)  # another request's step lands here
        return scores

    prompts = ["Denver", "Boston", "Miami", "Seattle"]
    expected = [generation(p) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(generation, prompts))
    for prompt, want, have in zip(prompts, expected, got):
        assert all(np.array_equal(a, b) for a, b in zip(want, have)), prompt
    # two generations interleaved in one thread, as an asyncio server streams its responses
    first, second = (generator.stream_ids(p, 25, greedy=True, stop=False) for p in prompts[:2])
    for step, _ in enumerate(first):
        assert np.array_equal(generator.logits, expected[0][step])
        next(second)
        assert np.array_equal(generator.logits, expected[1][step])


def test_partial_loads_from_two_threads_both_land(monkeypatch):
    layer = fastrnn.LSTM(4, 8, num_layers=2, seed=0)
    ones_ih, ones_hh = np.ones((32, 4)), np.ones((32, 8))
    pack = fastrnn.LSTM._pack
    overtaken = []

    def pack_while_another_thread_loads(self, params, index, direction):
        if not overtaken:  # the other thread's load lands while this one packs
            overtaken.append(True)
            other = threading.Thread(target=layer.load_state_dict,
                                     args=({"weight_hh_l1": ones_hh},), kwargs={"strict": False})
            other.start()
            other.join()
        return pack(self, params, index, direction)

    monkeypatch.setattr(fastrnn.LSTM, "_pack", pack_while_another_thread_loads)
    layer.load_state_dict({"weight_ih_l0": ones_ih}, strict=False)
    monkeypatch.undo()
    params = layer.state_dict()
    assert np.array_equal(params["weight_ih_l0"], ones_ih)
    assert np.array_equal(params["weight_hh_l1"], ones_hh)
    x = np.ones((3, 1, 4), np.float32)
    assert np.array_equal(layer(x)[0], fastrnn.LSTM(4, 8, num_layers=2, seed=0)
                          .load_state_dict(params)(x)[0])
