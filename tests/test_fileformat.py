"""Tests of the .frnn container: bit-exact round trips, strict validation, atomic writes."""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastrnn
import fastrnn.fileformat as ff
from fastrnn.errors import ArgumentError, DTypeError, FormatError, ShapeError

DTYPE_NAMES = list(ff.DTYPES)
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 4)]


def random_array(dtype_name, shape, seed=0):
    """Arbitrary bit patterns (NaNs, denormals, -0.0 included), bools as 0/1."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype_name)
    n = int(np.prod(shape))
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def assert_bit_equal(got, want):
    want = np.asarray(want)
    assert got.dtype == want.dtype.newbyteorder("=")
    assert got.shape == want.shape
    assert got.tobytes() == want.astype(got.dtype).tobytes()


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
def test_round_trip_bit_exact(tmp_path, dtype_name, shape, use_mmap):
    a = random_array(dtype_name, shape)
    p = tmp_path / "m.frnn"
    ff.write_container(p, "test", {"x": 1}, {"a": a, "b": a[..., None] if a.ndim else a})
    kind, meta, tensors = ff.read_container(p, mmap=use_mmap)
    assert (kind, meta, list(tensors)) == ("test", {"x": 1}, ["a", "b"])
    assert_bit_equal(tensors["a"], a)
    assert tensors["a"].flags.writeable is (not use_mmap)
    if tensors["a"].size:
        assert tensors["a"].ctypes.data % ff.ALIGNMENT == 0


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    base = np.random.default_rng(1).standard_normal((6, 8))
    inputs = {
        "strided": base[::2, 1::3],
        "transposed": base.T,
        "fortran": np.asfortranarray(base),
        "negative_stride": base[::-1],
        "big_endian": base.astype(">f4"),
        "big_endian_int": np.arange(5, dtype=">i8"),
        "broadcast": np.broadcast_to(np.arange(3, dtype=np.int32), (4, 3)),
        "scalar": np.float16(2.5),
        "list": [[1, 2], [3, 4]],
    }
    p = tmp_path / "m.frnn"
    ff.write_container(p, "test", {}, inputs)
    for use_mmap in (True, False):
        _, _, got = ff.read_container(p, mmap=use_mmap)
        for name, value in inputs.items():
            assert_bit_equal(got[name], value)
            assert got[name].dtype.isnative


def test_mmap_views_share_the_file_and_empty_container(tmp_path):
    p = tmp_path / "m.frnn"
    ff.write_container(p, "empty", {}, {})
    assert ff.read_container(p) == ("empty", {}, {})
    assert os.path.getsize(p) % ff.ALIGNMENT == 0
    ff.write_container(p, "test", {}, {"w": np.ones((4, 4), np.float32)})
    _, _, t = ff.read_container(p)
    with pytest.raises(ValueError):
        t["w"][0, 0] = 2.0  # read-only view of the mapped file
    # a second write replaces the file atomically; the old mapping stays valid
    ff.write_container(p, "test", {}, {"w": np.zeros((4, 4), np.float32)})
    assert t["w"].sum() == 16
    assert ff.read_container(p)[2]["w"].sum() == 0


def test_file_layout_is_as_documented(tmp_path):
    p = tmp_path / "m.frnn"
    a = np.arange(3, dtype=np.float32)
    ff.write_container(p, "k", {"m": [1, 2]}, {"a": a, "b": np.int8(7)})
    raw = p.read_bytes()
    magic, version, hlen = struct.unpack("<4sIQ", raw[:16])
    assert (magic, version) == (b"FRNN", 1)
    header = json.loads(raw[16:16 + hlen])
    assert header == {"kind": "k", "meta": {"m": [1, 2]}, "data_nbytes": 65, "tensors": [
        {"name": "a", "dtype": "float32", "shape": [3], "offset": 0, "nbytes": 12},
        {"name": "b", "dtype": "int8", "shape": [], "offset": 64, "nbytes": 1}]}
    start = -(-(16 + hlen) // 64) * 64
    assert raw[start:start + 12] == a.tobytes() and raw[start + 64] == 7
    assert len(raw) == start + 65


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
    max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.text(min_size=1),
    meta=st.dictionaries(st.text(), json_values, max_size=4),
    tensors=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.sampled_from(DTYPE_NAMES).flatmap(lambda d: hnp.arrays(
            np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))),
        max_size=5),
    use_mmap=st.booleans())
def test_round_trip_property(tmp_path, kind, meta, tensors, use_mmap):
    p = tmp_path / "prop.frnn"
    ff.write_container(p, kind, meta, tensors)
    got_kind, got_meta, got = ff.read_container(p, mmap=use_mmap)
    assert got_kind == kind and got_meta == meta and list(got) == list(tensors)
    for name, a in tensors.items():
        assert_bit_equal(got[name], a)
    info = ff.inspect(p)
    assert info["parameter_count"] == sum(a.size for a in tensors.values())
    assert info["file_size"] == os.path.getsize(p)


# ------------------------------------------------------------------ writer argument errors
@pytest.mark.parametrize("kind, meta, tensors, err", [
    ("", {}, {}, ArgumentError),
    (3, {}, {}, ArgumentError),
    ("k", [], {}, ArgumentError),
    ("k", {"x": object()}, {}, ArgumentError),
    ("k", {"x": float("nan")}, {}, ArgumentError),
    ("k", {}, [("a", np.zeros(2))], ArgumentError),
    ("k", {}, {"": np.zeros(2)}, ArgumentError),
    ("k", {}, {"a": np.zeros(2, np.complex64)}, DTypeError),
    ("k", {}, {"a": np.zeros(2, np.int16)}, DTypeError),
    ("k", {}, {"a": np.array(["x"])}, DTypeError),
    ("k", {}, {"a": np.array([None])}, DTypeError),
])
def test_write_rejects_bad_arguments(tmp_path, kind, meta, tensors, err):
    with pytest.raises(err):
        ff.write_container(tmp_path / "m.frnn", kind, meta, tensors)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", [None, 5, 3.5, object(), ["m.frnn"], {"p": 1}])
def test_paths_that_are_not_paths_are_typed_errors(tmp_path, path):
    """os.fspath's TypeError for what is not a path becomes ArgumentError; a path the OS
    cannot open still raises OSError, as open() does."""
    layer = fastrnn.GRU(2, 3, seed=0)
    with pytest.raises(ArgumentError, match="path must be"):
        fastrnn.save(layer, path)
    with pytest.raises(ArgumentError, match="path must be"):
        fastrnn.load(path)
    with pytest.raises(ArgumentError, match="path must be"):
        ff.inspect(path)


def test_bytes_paths_save_and_load(tmp_path):
    layer = fastrnn.GRU(2, 3, seed=0)
    path = bytes(tmp_path / "m.frnn")
    fastrnn.save(layer, path)  # used to mix str and bytes in the temporary name: TypeError
    assert fastrnn.load(path).state_dict().keys() == layer.state_dict().keys()
    with pytest.raises(FileNotFoundError):
        fastrnn.load(bytes(tmp_path / "missing.frnn"))


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.Vocabulary, fastrnn.Classifier])
def test_saving_a_class_instead_of_an_object_is_refused(tmp_path, cls):
    with pytest.raises(ArgumentError, match="cannot save"):
        fastrnn.save(cls, tmp_path / "m.frnn")
    assert list(tmp_path.iterdir()) == []


def test_numpy_scalars_in_meta_become_json(tmp_path):
    p = tmp_path / "m.frnn"
    ff.write_container(p, "k", {"clip": np.float32(0.5), "n": np.int64(3)}, {})
    assert ff.read_container(p)[1] == {"clip": 0.5, "n": 3}


# ------------------------------------------------------------------ atomic writes
def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "m.frnn"
    ff.write_container(p, "old", {}, {"w": np.ones(1000, np.float32)})
    before = p.read_bytes()

    real_fdopen = os.fdopen

    class Dying:  # a file that dies after two writes: the temp file is half written
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += 1
            if self.n > 2:
                raise OSError("disk full")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Dying(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="disk full"):
        ff.write_container(p, "new", {}, {"w": np.zeros(1000, np.float32), "v": np.zeros(3)})
    monkeypatch.undo()
    assert p.read_bytes() == before and list(tmp_path.iterdir()) == [p]

    for target in ("fsync", "replace"):
        def boom(*a):
            raise KeyboardInterrupt
        monkeypatch.setattr(os, target, boom)
        with pytest.raises(KeyboardInterrupt):
            ff.write_container(p, "new", {}, {"w": np.zeros(5)})
        monkeypatch.undo()
        assert p.read_bytes() == before and list(tmp_path.iterdir()) == [p]

    q = tmp_path / "never.frnn"
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no")))
    with pytest.raises(OSError):
        ff.write_container(q, "new", {}, {})
    monkeypatch.undo()
    assert not q.exists() and list(tmp_path.iterdir()) == [p]


# ------------------------------------------------------------------ corrupt files
def good_header():
    return {"kind": "k", "meta": {}, "data_nbytes": 88, "tensors": [
        {"name": "a", "dtype": "float32", "shape": [2, 3], "offset": 0, "nbytes": 24},
        {"name": "b", "dtype": "int64", "shape": [3], "offset": 64, "nbytes": 24}]}


def craft(path, header=None, data=None, magic=b"FRNN", version=1, blob=None, hlen=None):
    """Write a file by hand, bypassing the writer's checks."""
    header = good_header() if header is None else header
    blob = json.dumps(header).encode() if blob is None else blob
    head = struct.pack("<4sIQ", magic, version, len(blob) if hlen is None else hlen) + blob
    head += b"\0" * (-len(head) % 64)
    if data is None:
        data = bytes(header.get("data_nbytes", 0)) if isinstance(header, dict) else b""
    path.write_bytes(head + data)
    return path


def edit(change):
    h = good_header()
    change(h)
    return h


def test_crafted_good_file_reads(tmp_path):
    _, _, t = ff.read_container(craft(tmp_path / "ok.frnn"))
    assert t["a"].shape == (2, 3) and t["b"].dtype == np.int64


CORRUPT = {
    "unsupported version": (dict(version=2), r"version 2; this fastrnn reads version\(s\) 1"),
    "version zero": (dict(version=0), "version 0"),
    "header length beyond file": (dict(hlen=10**6), "header length 1000000 runs past the end"),
    "header length huge": (dict(hlen=2**64 - 1), "runs past the end"),
    "bad json": (dict(blob=b'{"kind": "k", '), "not valid UTF-8 JSON"),
    "bad utf8": (dict(blob=b'{"kind": "\xff"}'), "not valid UTF-8 JSON"),
    "json not object": (dict(blob=b"[1, 2]"), "must be a JSON object, found list"),
    "nan literal": (dict(blob=b'{"kind": NaN}'), "NaN"),
    "duplicate json key": (dict(blob=b'{"kind": "a", "kind": "b"}'), "key 'kind' twice"),
    "missing key": (dict(header=edit(lambda h: h.pop("tensors"))), r"missing the key\(s\) \['tensors'\]"),
    "unknown key": (dict(header=edit(lambda h: h.update(extra=1))), r"unknown key\(s\) \['extra'\]"),
    "empty kind": (dict(header=edit(lambda h: h.update(kind=""))), "'kind' must be a non-empty string"),
    "meta not object": (dict(header=edit(lambda h: h.update(meta=[]))), "'meta' must be a JSON object"),
    "tensors not list": (dict(header=edit(lambda h: h.update(tensors={}))), "'tensors' must be a JSON list"),
    "bad data_nbytes": (dict(header=edit(lambda h: h.update(data_nbytes=-1)), data=b""), "data_nbytes"),
    "tensor entry missing key": (dict(header=edit(lambda h: h["tensors"][1].pop("dtype"))),
                                 r"tensor entry 1 is missing the key\(s\) \['dtype'\]"),
    "tensor entry not object": (dict(header=edit(lambda h: h["tensors"].append(3))), "tensor entry 2 must be"),
    "tensor bad name": (dict(header=edit(lambda h: h["tensors"][0].update(name=5))), "tensor entry 0 has name 5"),
    "unknown dtype": (dict(header=edit(lambda h: h["tensors"][0].update(dtype="complex64"))),
                      "unknown dtype 'complex64'; allowed: float16"),
    "duplicate names": (dict(header=edit(lambda h: h["tensors"][1].update(name="a"))), "'a' appears twice"),
    "negative offset": (dict(header=edit(lambda h: h["tensors"][0].update(offset=-64))), "offset -64"),
    "unaligned offset": (dict(header=edit(lambda h: h["tensors"][1].update(offset=32))), "multiple of 64"),
    "offset not int": (dict(header=edit(lambda h: h["tensors"][1].update(offset=64.0))), "offset 64.0"),
    "overlap": (dict(header=edit(lambda h: h["tensors"][1].update(offset=0))), "'a' and 'b' overlap"),
    "offset out of range": (dict(header=edit(lambda h: h["tensors"][1].update(offset=128))),
                            r"occupies bytes \[128, 152\) of a data section of 88"),
    "negative dim": (dict(header=edit(lambda h: h["tensors"][0].update(shape=[-2, -3]))), "shape"),
    "bool dim": (dict(header=edit(lambda h: h["tensors"][0].update(shape=[True, 6]))), "shape"),
    "shape not list": (dict(header=edit(lambda h: h["tensors"][0].update(shape=6))), "shape"),
    "shape/nbytes mismatch": (dict(header=edit(lambda h: h["tensors"][0].update(shape=[2, 4]))),
                              r"nbytes 24, but float32 of shape \(2, 4\) needs 32"),
    "huge shape": (dict(header=edit(lambda h: h["tensors"][0].update(shape=[2**40, 2**40]))),
                   "beyond what an array can have"),
    "large shape": (dict(header=edit(lambda h: h["tensors"][0].update(shape=[2**30, 2**30]))), "needs"),
    "empty but huge shape": (dict(header=edit(lambda h: h["tensors"][0].update(
        shape=[0, 2**70], nbytes=0))), "beyond what an array can have"),
    "empty with sizes numpy cannot address": (dict(header=edit(lambda h: h["tensors"][0].update(
        shape=[2**32, 2**32, 0], nbytes=0))), "beyond what an array can have"),
    "too many dims": (dict(header=edit(lambda h: h["tensors"][0].update(
        shape=[1] * 65, nbytes=4))), "at most 32"),
    "dtype not a string": (dict(header=edit(lambda h: h["tensors"][0].update(dtype=["float32"]))),
                           "unknown dtype"),
    "integer past Python's digits": (dict(blob=b'{"kind": "k", "x": ' + b"9" * 5000 + b"}"),
                                     "not valid UTF-8 JSON"),
    "number past the float range": (dict(blob=b'{"kind": "k", "x": -1e999}'), "-1e999, beyond the float"),
    "truncated data": (dict(data=bytes(80)), "truncated: the header says the file is .* it is"),
    "trailing bytes": (dict(data=bytes(100)), "has trailing bytes"),
}


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_raise_format_error(tmp_path, case, use_mmap):
    kwargs, message = CORRUPT[case]
    p = craft(tmp_path / "bad.frnn", **kwargs)
    with pytest.raises(FormatError, match=message):
        ff.read_container(p, mmap=use_mmap)
    with pytest.raises(FormatError, match=message):
        ff.inspect(p)


@pytest.mark.parametrize("content, message", [
    (b"", "too short"),
    (b"FRN", "too short"),
    (b"GGUF\x03\x00\x00\x00" + bytes(8), r"starts with b'GGUF', expected magic b'FRNN'"),
    (b"PK\x03\x04" + bytes(60), "PyTorch"),
    (b"\x08\x07\x12", r"starts with b'\\x08\\x07\\x12'"),
])
def test_wrong_magic_and_short_files(tmp_path, content, message):
    p = tmp_path / "x.frnn"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=message):
        ff.read_container(p)


def test_not_a_file(tmp_path):
    with pytest.raises(FormatError, match="is not a file"):
        ff.read_container(tmp_path)
    with pytest.raises(FormatError, match="is not a file"):
        ff.inspect(tmp_path)
    with pytest.raises(FileNotFoundError):
        ff.read_container(tmp_path / "missing.frnn")


def written_file(tmp_path):
    p = tmp_path / "full.frnn"
    ff.write_container(p, "k", {"a": [1, 2, 3]}, {
        "w": random_array("float32", (4, 5)), "e": np.zeros((0, 3)), "s": np.int64(3),
        "b": random_array("bool", (7,))})
    return p


def test_truncation_at_every_offset_raises_format_error(tmp_path):
    raw = written_file(tmp_path).read_bytes()
    p = tmp_path / "cut.frnn"
    for n in range(len(raw)):
        p.write_bytes(raw[:n])
        for reader in (ff.read_container, lambda q: ff.read_container(q, mmap=False), ff.inspect):
            with pytest.raises(FormatError):
                reader(p)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_never_crashes(tmp_path, data):
    raw = bytearray(written_file(tmp_path).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.frnn"
    p.write_bytes(bytes(raw))
    for use_mmap in (True, False):
        try:
            ff.read_container(p, mmap=use_mmap)
        except FormatError:
            pass


# ------------------------------------------------------------------ save / load / registry / inspect
class Box:
    def __init__(self, w, scale):
        self.w, self.scale = w, scale

    def to_record(self):
        return "test_box", {"scale": self.scale}, {"w": self.w}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(ff, "_LOADERS", dict(ff._LOADERS))
    ff.register_kind("test_box", lambda meta, t: Box(t["w"], meta["scale"]))


def test_save_load_dispatches_on_kind(tmp_path, registry):
    p = tmp_path / "box.frnn"
    ff.save(Box(np.arange(6.0).reshape(2, 3), 1.5), p)
    for use_mmap in (True, False):
        b = ff.load(p, mmap=use_mmap)
        assert isinstance(b, Box) and b.scale == 1.5
        assert_bit_equal(b.w, np.arange(6.0).reshape(2, 3))
    assert "test_box" in ff.known_kinds()


def test_load_unknown_kind_names_it_and_known_kinds(tmp_path, registry):
    p = tmp_path / "x.frnn"
    ff.write_container(p, "mystery", {}, {})
    with pytest.raises(FormatError, match=r"kind 'mystery'.*known kinds: \[.*'test_box'"):
        ff.load(p)


def test_save_rejects_unsavable_objects(tmp_path, registry):
    with pytest.raises(ArgumentError, match="no to_record"):
        ff.save(np.zeros(3), tmp_path / "x.frnn")

    class Bad:
        def to_record(self):
            return {"w": 1}
    with pytest.raises(ArgumentError, match=r"must return \(kind, meta, tensors\)"):
        ff.save(Bad(), tmp_path / "x.frnn")
    with pytest.raises(ArgumentError):
        ff.register_kind("", lambda m, t: None)
    with pytest.raises(ArgumentError):
        ff.register_kind("k", "not callable")


def test_inspect(tmp_path):
    p = written_file(tmp_path)
    info = ff.inspect(p)
    assert info["kind"] == "k" and info["meta"] == {"a": [1, 2, 3]}
    assert info["format_version"] == ff.FORMAT_VERSION
    assert info["file_size"] == os.path.getsize(p)
    assert info["parameter_count"] == 20 + 0 + 1 + 7
    assert [(t["name"], t["dtype"], t["shape"]) for t in info["tensors"]] == [
        ("w", "float32", (4, 5)), ("e", "float64", (0, 3)), ("s", "int64", ()), ("b", "bool", (7,))]


# ------------------------------------------------------------------ real layers
LAYER_CASES = [
    ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ("RNN", dict(dtype=np.float64, bias=False, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(linear_before_reset=False, clip=3.0, dtype=np.float64)),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("LSTM", dict(peepholes=True, input_forget=True, batch_first=True)),
    ("LSTM", dict(activations=["hardsigmoid", "tanh", "tanh"], activation_alpha=[0.3],
                  activation_beta=[0.4])),
]


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("mode, kwargs", LAYER_CASES)
def test_layer_save_load_round_trip(tmp_path, mode, kwargs, use_mmap):
    layer = getattr(fastrnn, mode)(5, 4, seed=0, **kwargs)
    p = tmp_path / "layer.frnn"
    fastrnn.save(layer, p)
    back = fastrnn.load(p, mmap=use_mmap)
    assert type(back) is type(layer) and back.config() == layer.config()
    sd, sd2 = layer.state_dict(), back.state_dict()
    assert list(sd) == list(sd2)
    for name in sd:
        assert_bit_equal(sd2[name], sd[name])
    x = np.random.default_rng(1).standard_normal((6, 3, 5))  # (T, N, I).astype(layer.dtype)
    lengths = np.array([6, 0, 4])
    if layer.batch_first:
        x = x.transpose(1, 0, 2).copy()
    for got, want in zip(_flat(back(x, lengths=lengths)), _flat(layer(x, lengths=lengths))):
        assert_bit_equal(got, want)


def _flat(out):
    y, state = out
    return [y, *state] if isinstance(state, tuple) else [y, state]


# ------------------------------------------------------------------ records that lie about sizes
def _rewritten(tmp_path, obj, edit):
    """obj saved, its (kind, meta, tensors) passed through edit, written back as a valid file."""
    p = tmp_path / "orig.frnn"
    fastrnn.save(obj, p)
    kind, meta, tensors = ff.read_container(p, mmap=False)
    out = tmp_path / "edited.frnn"
    ff.write_container(out, kind, *edit(meta, tensors))
    return out


def _config(**changes):
    return lambda meta, tensors: ({"config": dict(meta["config"], **changes)}, tensors)


@pytest.mark.parametrize("edit, error, message", [
    # each would have allocated (or looped over) what the config claims before the check
    (_config(num_layers=2**15), ArgumentError, "need at least"),
    (_config(num_layers=3), ArgumentError, "missing parameters"),
    (_config(hidden_size=2**18), ShapeError, "weight_ih_l0 must have shape"),
    (_config(input_size=2**30), ShapeError, "weight_ih_l0 must have shape"),
    # sizes no layer can have are refused before the tensors are looked at
    (_config(num_layers=2**62), ArgumentError, "num_layers must be at most"),
    (_config(hidden_size=2**31), ArgumentError, "2\\^40"),
    (_config(input_size=2**40), ArgumentError, "2\\^40"),
    (_config(hidden_size="4"), ArgumentError, "hidden_size must be an int"),
    (_config(dtype="(2,3"), DTypeError, "float32 or float64"),  # numpy's SyntaxError
    (_config(weight_dtype="f4,,f4"), ArgumentError, "weight_dtype"),
    (lambda meta, t: ({"config": None}, t), ArgumentError, "config must be a dict"),
    (lambda meta, t: ({"config": ["LSTM"]}, t), ArgumentError, "config must be a dict"),
    (lambda meta, t: ({"config": dict(meta["config"], mode=["LSTM"])}, t), ArgumentError,
     "mode must be one of"),
    (lambda meta, t: ({}, t), FormatError, r"malformed 'layer' record \(KeyError"),
    (lambda meta, t: (meta, {k: v for k, v in t.items() if "l1" not in k}), ArgumentError,
     "need at least|missing"),
])
def test_a_layer_record_that_lies_is_refused_before_allocating(tmp_path, edit, error, message):
    layer = fastrnn.LSTM(5, 4, num_layers=2, seed=0)
    with pytest.raises(error, match=message):
        fastrnn.load(_rewritten(tmp_path, layer, edit))


def test_a_task_record_that_lies_is_refused_before_allocating(tmp_path):
    model = fastrnn.Classifier(fastrnn.Embedding(10, 3, seed=0), fastrnn.GRU(3, 4, seed=0),
                               fastrnn.Linear(4, 2, seed=0))

    def claim(stage, key, value):
        def edit(meta, tensors):
            meta = json.loads(json.dumps(meta))
            stages = meta["stages"]
            target = stages["input"] if stage == "input" else stages[stage][0]
            target[key] = value
            return meta, tensors
        return edit

    for edit, message in [(claim("input", "num_embeddings", 2**36), "weight must have shape"),
                          (claim("heads", "in_features", 2**36), "weight must have shape"),
                          (claim("rnns", "num_layers", 2**15), "need at least"),
                          (claim("rnns", "hidden_size", 2**18), "must have shape"),
                          (claim("input", "num_embeddings", 2**40), "2\\^40"),
                          (claim("heads", "in_features", 2**40), "2\\^40"),
                          (claim("rnns", "num_layers", 2**40), "at most"),
                          (claim("rnns", "hidden_size", 2**35), "2\\^40")]:
        with pytest.raises((ShapeError, ArgumentError), match=message):
            fastrnn.load(_rewritten(tmp_path, model, edit))


def test_loading_does_not_draw_a_random_initialisation(tmp_path, monkeypatch):
    """The parameters come from the file: the untrained layer's random ones are never made."""
    p = tmp_path / "m.frnn"
    fastrnn.save(fastrnn.Sequential(fastrnn.Embedding(10, 3, seed=0), fastrnn.LSTM(3, 4, seed=0),
                                    fastrnn.Linear(4, 2, seed=0)), p)

    def refuse(*args, **kwargs):
        raise AssertionError("a random initialisation was drawn while loading")
    monkeypatch.setattr(np.random, "default_rng", refuse)
    model = fastrnn.load(p)
    assert model.predict(np.array([[1], [2], [3]])).shape == (1,)  # (T=3, N=1) ids


_ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                       st.sampled_from([0, 1, 2, 3, 5, 2**31, 2**62]),
                       st.floats(allow_nan=False, allow_infinity=False),
                       st.sampled_from(["LSTM", "GRU", "RNN", "tanh", "float64", "float16", "",
                                        "(2,3", "(-1,)f4", "f4,,f4"]),
                       st.lists(st.sampled_from(["tanh", "sigmoid", "relu", 1, None]), max_size=7))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(sorted(fastrnn.LSTM(5, 4).config())), _ANY_VALUE,
                               min_size=1, max_size=3))
def test_any_layer_config_loads_or_fails_typed(tmp_path, changes):
    """Whatever values a file's layer config holds, loading (and running what loads) raises
    nothing but fastrnn's errors, and never allocates from an unchecked size."""
    layer = fastrnn.LSTM(5, 4, num_layers=2, bidirectional=True, seed=0)
    try:
        path = _rewritten(tmp_path, layer, _config(**changes))
    except fastrnn.errors.FastRNNError:
        return  # not even writable (e.g. a value JSON cannot hold)
    try:
        back = fastrnn.load(path)
    except fastrnn.errors.FastRNNError:
        return
    x = np.random.default_rng(0).standard_normal((3, 2, back.input_size))
    back(x if not back.batch_first else x.transpose(1, 0, 2))


def test_write_container_refuses_ragged_tensors_and_too_deep_meta(tmp_path):
    path = tmp_path / "x.frnn"
    with pytest.raises(ShapeError, match="tensor 'a' must be a rectangular array"):
        ff.write_container(path, "k", {}, {"a": [[1.0], [2.0, 3.0]]})   # numpy's ValueError
    deep = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ArgumentError, match="JSON-serializable"):      # json's RecursionError
        ff.write_container(path, "k", {"deep": deep}, {})
    assert not path.exists() and not list(tmp_path.iterdir())
