"""float16 weight storage (`weight_dtype="float16"`): the products read the weight matrices as
float16 and widen them exactly, so a float16 layer must equal a float32 layer whose weight
matrices were rounded to float16, on every kernel path; its distance from full precision is the
documented accuracy cost."""
import numba
import numpy as np
import pytest

import fastrnn
from fastrnn.errors import ArgumentError

MATRICES = ("weight_ih", "weight_hh", "weight_hr")

LAYERS = {
    "rnn": lambda: fastrnn.RNN(24, 70, num_layers=2, seed=1),
    "gru": lambda: fastrnn.GRU(24, 70, bidirectional=True, seed=2),
    "gru-lbr0": lambda: fastrnn.GRU(24, 64, linear_before_reset=False, seed=3),
    "lstm": lambda: fastrnn.LSTM(24, 70, num_layers=2, bidirectional=True, seed=4),
    "lstm-proj-peep": lambda: fastrnn.LSTM(24, 96, proj_size=40, peepholes=True, seed=5),
}


def _rounded(layer):
    """The float32 layer with its weight matrices rounded to float16 (biases untouched)."""
    weights = {name: value.astype(np.float16).astype(np.float32)
               if name.startswith(MATRICES) else value
               for name, value in layer.state_dict().items()}
    return fastrnn.layer_from_config(layer.config()).load_state_dict(weights)


def _run(layer, x, threads, stream=False):
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        if stream:
            s = layer.stream(x.shape[1])
            return np.stack([s.step(x_t).copy() for x_t in x])
        return layer(x)[0]
    finally:
        fastrnn.set_num_threads(before)


# batch 1 (serial, units split or both directions at once), batch 16 (fused or rows split),
# one thread and two, and the stream
PATHS = [(1, 1, False), (1, 2, False), (16, 2, False), (16, 1, False), (2, 1, True)]
CASES = [(name, *path) for name in LAYERS for path in PATHS
         if not (path[2] and name in ("gru", "lstm"))]  # bidirectional layers do not stream


@pytest.mark.parametrize("name,batch,threads,stream", CASES)
def test_float16_layer_equals_float32_with_rounded_weights(name, batch, threads, stream):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two numba threads")
    layer = LAYERS[name]()
    x = np.random.default_rng(batch).standard_normal((60, batch, 24)).astype(np.float32)
    half = layer.with_weight_dtype("float16")
    assert half.weight_dtype == np.float16
    got = _run(half, x, threads, stream)
    want = _run(_rounded(layer), x, threads, stream)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_float16_accuracy_cost_is_small():
    """The number the README quotes: float16 weights against full float32 after 100 steps."""
    layer = fastrnn.LSTM(64, 256, seed=7)
    x = np.random.default_rng(8).standard_normal((100, 1, 64)).astype(np.float32)
    full = layer(x)[0]
    half = layer.with_weight_dtype("float16")(x)[0]
    assert np.abs(half - full).max() < 5e-3


def test_float16_layer_keeps_full_weights_and_round_trips(tmp_path):
    layer = LAYERS["lstm-proj-peep"]()
    half = layer.with_weight_dtype(np.float16)
    for key, value in layer.state_dict().items():  # the full-precision weights are kept
        np.testing.assert_array_equal(half.state_dict()[key], value)
    path = tmp_path / "half.frnn"
    fastrnn.save(half, path)
    loaded = fastrnn.load(path)
    assert loaded.weight_dtype == np.float16 and loaded.config() == half.config()
    x = np.random.default_rng(9).standard_normal((20, 2, 24)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x)[0], half(x)[0])
    back = half.with_weight_dtype(None)
    assert back.weight_dtype == np.float32
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])


@pytest.mark.parametrize("make,weight_dtype,match", [
    (lambda: fastrnn.GRU(3, 4, dtype=np.float64), "float16", "not available for float64"),
    (lambda: fastrnn.GRU(3, 4), "int8", "not available"),
    (lambda: fastrnn.GRU(3, 4), "not-a-dtype", "weight_dtype must be"),
])
def test_unsupported_weight_dtypes_are_refused(make, weight_dtype, match):
    with pytest.raises(ArgumentError, match=match):
        make().with_weight_dtype(weight_dtype)


def test_a_refused_load_leaves_a_float16_layer_as_it_was():
    """Packing refuses weights beyond float16's range after every array was checked; the layer
    must keep its parameters (state_dict used to report the refused ones while calls ran the
    old weights)."""
    layer = fastrnn.RNN(3, 4, seed=0).with_weight_dtype("float16")
    before = layer.state_dict()
    x = np.ones((2, 1, 3), np.float32)
    out = layer(x)[0]
    with pytest.raises(ArgumentError, match="within"):
        layer.load_state_dict(dict(before, weight_hh_l0=np.full((4, 4), 1e6)))
    after = layer.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    np.testing.assert_array_equal(layer(x)[0], out)


def test_weights_beyond_float16_range_are_refused():
    layer = fastrnn.RNN(3, 4, seed=0)
    weights = layer.state_dict()
    weights["weight_hh_l0"][0, 0] = 1e5
    layer.load_state_dict(weights)
    with pytest.raises(ArgumentError, match="within"):
        layer.with_weight_dtype("float16")
