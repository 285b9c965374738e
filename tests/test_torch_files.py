"""converters.torch_files: torch.save (zip and legacy) and safetensors read without torch or code.

Round trips against torch for dtypes (float16 / bfloat16 / float8 widened), views, strides,
offsets and shared storages; checkpoint wrappers; and the safety contract: a pickle that would run
code is refused with UnsafeFileError naming the global, and the code never runs (checked by a
payload that would create a file); whole pickled modules are refused with a pointer to
state_dict(); truncated or corrupted files give FormatError and nothing else.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

from converters import torch_files as tf
from converters.torch_convert import from_torch
from converters.torch_files.opaque import OpaqueValue
from converters.torch_files.plain_values import _PickledOrderedDict
from converters.torch_files.tensors import _rebuild_tensor_v2
from fastrnn.errors import FastRNNError, FormatError, UnsafeFileError, UnsupportedError

# ------------------------------------------------------------------------------------------------
# a tiny safetensors writer (no dependency); also used by test_torch_converter
# ------------------------------------------------------------------------------------------------
_ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
             "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "bfloat16": "BF16",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "uint16": "U16"}


def _raw(value):
    """(safetensors dtype code, shape, bytes) of a numpy array or a torch tensor."""
    if isinstance(value, np.ndarray):
        arr = np.array(value, order="C")
        return _ST_CODES[arr.dtype.name], list(arr.shape), arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    import torch  # only reached for torch tensors

    t = value.detach().contiguous().cpu()
    code = _ST_CODES[str(t.dtype).replace("torch.", "")]
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return code, list(t.shape), raw


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, value in tensors.items():
        code, shape, raw = _raw(value)
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


# ------------------------------------------------------------------------------------------------
# torch-free behaviour (these run without torch)
# ------------------------------------------------------------------------------------------------
def test_safetensors_round_trip_without_torch(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5).astype(np.float32),
               "h": rng.standard_normal((2, 2)).astype(np.float16), "i": np.arange(6).reshape(2, 3),
               "m": np.array([True, False]), "s": np.array(2.5, dtype=np.float32), "e": np.zeros((0, 3))}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    got = tf.read_state_dict(path)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        want = v.astype(np.float32) if v.dtype == np.float16 else v
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)
    with tf.open_checkpoint(path) as f:
        assert f.kind == "safetensors" and f.metadata == {"format": "pt"}
        ref = f.tensors()["a"]
        assert ref.shape == (3, 4) and ref.dtype == "float64"


def test_bfloat16_and_float8_decoding_without_torch(tmp_path):
    # bf16: the top 16 bits of float32; exact for these values
    vals = np.array([1.0, -2.5, 0.15625, 2.0**100, -0.0, np.inf], dtype=np.float32)
    bf = (vals.view(np.uint32) >> 16).astype(np.uint16)
    e5vals = np.array([1.0, -2.5, 0.15625, 57344.0], dtype=np.float16)  # e5m2 = top byte of f16
    e5m2 = (e5vals.view(np.uint16) >> 8).astype(np.uint8)
    e4m3 = np.array([0x38, 0xC0, 0x01, 0x7E, 0x7F], dtype=np.uint8)  # 1, -2, 2^-9, 448, nan
    path = tmp_path / "bf.safetensors"
    header = {"bf": {"dtype": "BF16", "shape": [6], "data_offsets": [0, 12]},
              "e5": {"dtype": "F8_E5M2", "shape": [4], "data_offsets": [12, 16]},
              "e4": {"dtype": "F8_E4M3", "shape": [5], "data_offsets": [16, 21]}}
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + bf.tobytes() + e5m2.tobytes() + e4m3.tobytes())
    got = tf.read_state_dict(path)
    np.testing.assert_array_equal(got["bf"], vals)
    np.testing.assert_array_equal(got["e5"], e5vals.astype(np.float32))
    np.testing.assert_array_equal(got["e4"][:4], [1.0, -2.0, 2.0**-9, 448.0])
    assert np.isnan(got["e4"][4]) and got["e4"].dtype == np.float32


@pytest.mark.parametrize("header,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "needs 8 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, "truncated"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "bad shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "bad data_offsets"),
    ({"a": [1, 2]}, "not an object"),
    ([1, 2], "not a PyTorch checkpoint"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": 1}, "not an object"),
])
def test_safetensors_bad_headers(tmp_path, header, match):
    head = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 8)
    with pytest.raises(FormatError, match=match):
        tf.read_state_dict(path)


def test_unknown_safetensors_dtype_is_unreadable_only_when_used(tmp_path):
    head = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                       "q": {"dtype": "F4", "shape": [1], "data_offsets": [4, 5]}}).encode()
    path = tmp_path / "q.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 5)
    obj = tf.load(path)
    assert isinstance(obj["q"], tf.UnreadableTensor)
    with pytest.raises(UnsupportedError, match="F4"):
        obj["q"].numpy()


def test_threads_read_one_safetensors_file_at_once(tmp_path):
    """The tensors of one open safetensors file share its file object: read from 4 threads, a
    seek of one between another's seek and read gave that one the wrong tensor's bytes, silently
    (about a fifth of the 1,000 arrays here), or a truncation error."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "t.safetensors"
    write_safetensors(path, {f"t{k}": np.full(1024, k, np.float32) for k in range(200)})
    for _ in range(5):
        with tf.open_checkpoint(path) as f, ThreadPoolExecutor(4) as pool:
            got = list(pool.map(tf.TensorRef.numpy, f.tensors().values()))
        assert all((a == k).all() for k, a in enumerate(got))


def test_not_a_checkpoint(tmp_path):
    for i, data in enumerate([b"", b"hello world", b"(lp0\nI1\na.", b"\x89PNG\r\n\x1a\n" + b"\0" * 40]):
        p = tmp_path / f"x{i}"
        p.write_bytes(data)
        with pytest.raises(FormatError):
            tf.open_checkpoint(p)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    with pytest.raises(FormatError, match="not a torch.save checkpoint"):
        tf.open_checkpoint(plain)


def test_pre_0_4_tar_format_is_named(tmp_path):
    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as t:
        for name in ("storages", "tensors", "pickle"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"\0"))
    with pytest.raises(UnsupportedError, match="tar"):
        from_torch(str(path))


# ------------------------------------------------------------------------------------------------
# malicious pickles: refused before anything runs (no torch needed to build them)
# ------------------------------------------------------------------------------------------------
class Evil:
    """Unpickling this with pickle.loads runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _zip_with_pickle(path, pkl, storages=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for k, v in (storages or {}).items():
            z.writestr(f"archive/data/{k}", v)
        z.writestr("archive/version", "3\n")


class Global:
    """Assembles to the GLOBAL opcode `module.name` (no import, unlike pickling a real object)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """Assembles to `fn(*args)` via REDUCE."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args


class PID:
    """Assembles to a persistent id (BINPERSID)."""

    def __init__(self, pid):
        self.pid = pid


class Build:
    """Assembles to `obj` followed by BUILD with `state` (set attributes / __setstate__)."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class NewObj:
    """Assembles to `cls.__new__(cls, *args)` via NEWOBJ."""

    def __init__(self, cls, *args):
        self.cls, self.args = cls, args


class _Assembler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _global(self, obj):
        self.write(b"c" + f"{obj.module}\n{obj.name}\n".encode())

    def _call(self, obj):
        self.save(obj.fn)
        self.save(obj.args)
        self.write(pickle.REDUCE)

    def _pid(self, obj):
        self.save(obj.pid)
        self.write(pickle.BINPERSID)

    def _build(self, obj):
        self.save(obj.obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def _newobj(self, obj):
        self.save(obj.cls)
        self.save(obj.args)
        self.write(pickle.NEWOBJ)

    dispatch[Build] = _build
    dispatch[NewObj] = _newobj
    dispatch[Global] = _global
    dispatch[Call] = _call
    dispatch[PID] = _pid


def assemble(obj):
    buf = io.BytesIO()
    _Assembler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _global_pickle(module, name, args=("x",)):
    return assemble({"w": Call(Global(module, name), *args)})


def test_evil_payload_really_runs_under_plain_pickle(tmp_path):
    """The control: the payload used below does create the file when unpickled normally."""
    marker = tmp_path / "pwned_control"
    code = f"import pickle; pickle.loads({pickle.dumps(Evil(marker), protocol=2)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("container", ["zip", "raw_pickle", "raw_pickle_p5"])
def test_code_execution_payload_is_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"evil": Evil(marker), "weight_ih_l0": np.zeros((4, 3), np.float32)}
    path = tmp_path / "evil.pt"
    if container == "zip":
        _zip_with_pickle(path, pickle.dumps(payload, protocol=2))
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2 if container == "raw_pickle" else 5))
    for reader in (from_torch, tf.load, tf.read_state_dict, tf.open_checkpoint):
        with pytest.raises(UnsafeFileError) as err:
            reader(str(path))
        assert "system" in str(err.value) and ("posix" in str(err.value) or "nt." in str(err.value))
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("__builtin__", "eval"), ("os", "system"), ("subprocess", "Popen"), ("copyreg", "_reconstructor"),
    ("torch", "load"), ("torch.serialization", "load"), ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("numpy", "load"), ("numpy.core.multiarray", "frombuffer"), ("pickle", "loads"),
    ("collections", "namedtuple"), ("functools", "partial"), ("webbrowser", "open"),
])
def test_disallowed_globals_are_named(tmp_path, module, name):
    path = tmp_path / "g.pt"
    _zip_with_pickle(path, _global_pickle(module, name))
    with pytest.raises(UnsafeFileError) as err:
        tf.open_checkpoint(path)
    shown = {"__builtin__": "builtins"}.get(module, module)
    assert f"'{shown}.{name}'" in str(err.value)


def test_allowed_names_cannot_be_abused(tmp_path):
    path = tmp_path / "a.pt"
    # _rebuild_from_type_v2 may only call tensor rebuild functions
    _zip_with_pickle(path, assemble({"w": Call(Global("torch._tensor", "_rebuild_from_type_v2"),
                                               Global("torch", "Size"), Global("torch", "Tensor"),
                                               ((1,),), {})}))
    with pytest.raises(UnsafeFileError, match="_rebuild_from_type_v2"):
        tf.open_checkpoint(path)
    # storage, dtype, type and qscheme names are data, not callables
    for mod, name in (("torch", "FloatStorage"), ("torch", "float32"), ("torch", "Tensor"),
                      ("torch", "per_tensor_affine")):
        _zip_with_pickle(path, _global_pickle(mod, name, args=(3,)))
        with pytest.raises(FormatError):
            tf.open_checkpoint(path)
    # numpy object arrays / dtypes are refused
    _zip_with_pickle(path, pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(UnsafeFileError, match="dtype"):
        tf.open_checkpoint(path)
    # plain numeric numpy arrays and scalars are data
    _zip_with_pickle(path, pickle.dumps({"a": np.arange(6.0).reshape(2, 3).T, "s": np.float64(2.5),
                                         "b": np.arange(3, dtype=">i4")}, protocol=2))
    obj = tf.load(path)
    np.testing.assert_array_equal(obj["a"], np.arange(6.0).reshape(2, 3).T)
    np.testing.assert_array_equal(obj["b"], [0, 1, 2])
    assert obj["s"] == 2.5


@pytest.mark.parametrize("target", [
    Global("torch._utils", "_rebuild_tensor_v2"), Global("collections", "OrderedDict"),
    Global("numpy", "dtype"), Call(Global("builtins", "set")), Global("torch", "float32"),
])
def test_pickle_cannot_set_state_on_allowed_objects(tmp_path, target):
    path = tmp_path / "b.pt"
    before = _rebuild_tensor_v2.__defaults__
    _zip_with_pickle(path, assemble({"w": Build(target, (None, {"__defaults__": (1, 2, 3)}))}))
    with pytest.raises(FormatError):  # UnsafeFileError, or the data class's own refusal
        tf.open_checkpoint(path)
    assert _rebuild_tensor_v2.__defaults__ == before
    assert "__defaults__" not in vars(_PickledOrderedDict)


def test_class_instantiating_opcodes_are_refused(tmp_path):
    path = tmp_path / "n.pt"
    _zip_with_pickle(path, assemble({"w": NewObj(Global("collections", "OrderedDict"))}))
    with pytest.raises(UnsafeFileError, match="class-instantiating"):
        tf.open_checkpoint(path)


def test_checkpoint_stand_ins_are_inert_data(tmp_path):
    """The classes a training checkpoint keeps beside its weights (omegaconf, pathlib, argparse
    Namespace, Lightning's AttributeDict: converters/torch_files/opaque.py) are never imported:
    what a pickle builds from them is data, even under a name that would be code; such data
    cannot be called, and the class stand-ins take no state."""
    path = tmp_path / "o.pt"
    _zip_with_pickle(path, assemble({
        "x": Call(Global("omegaconf", "os.system"), "echo pwned"),
        "cfg": Build(NewObj(Global("omegaconf.dictconfig", "DictConfig")),
                     {"_content": {"lr": 0.1}, "_parent": None}),
        "hp": NewObj(Global("lightning.fabric.utilities.data", "AttributeDict")),
        "counts": Call(Global("collections", "defaultdict"), Global("builtins", "int")),
    }))
    obj = tf.load(path)
    assert isinstance(obj["x"], OpaqueValue) and obj["x"].args == ("echo pwned",)
    assert obj["x"].name == "omegaconf.os.system" and "not loaded" in repr(obj["x"])
    assert obj["cfg"].state == {"_content": {"lr": 0.1}, "_parent": None}
    assert obj["hp"] == {} and type(obj["hp"]) is dict and obj["counts"] == {}
    for bad in (Call(Call(Global("pathlib", "PurePosixPath"), "/x"), "y"),
                Build(Global("omegaconf.dictconfig", "DictConfig"), {"__call__": 1}),
                Build(Global("lightning.fabric.utilities.data", "AttributeDict"), {"a": 1}),
                NewObj(Global("argparse", "ArgumentParser"))):
        _zip_with_pickle(path, assemble({"w": bad}))
        with pytest.raises(FormatError):
            tf.open_checkpoint(path)


def _numpy_arrays():
    """Arrays numpy pickles each way: contiguous ones through _frombuffer at protocol 5 (order
    C, F, or K for a transposed C array), the others through _reconstruct."""
    base = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7
    return {"c": base.astype(np.float32), "f": np.asfortranarray(base),
            "k": base.transpose(1, 0, 2), "big_endian": np.arange(5, dtype=">i4"),
            "scalar": np.array(2.5), "bool": base > 1,
            "u64": np.array([2**64 - 1, 2**53 + 1], np.uint64),
            "f16": base[0].astype(np.float16), "strided": base[:, ::2, 1::2],
            "empty": np.zeros((2, 0), np.float32)}  # its data b"" is bytes() at protocol 2


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_arrays_are_data_at_every_pickle_protocol(tmp_path, protocol):
    """numpy pickles a contiguous array at protocol 5 through numpy._core.numeric._frombuffer,
    which was refused as unsafe."""
    arrays = _numpy_arrays()
    path = tmp_path / "np.pt"
    _zip_with_pickle(path, pickle.dumps(arrays, protocol=protocol))
    got = tf.load(path)
    for name, want in arrays.items():
        want_dtype = np.float32 if want.dtype == np.float16 else want.dtype.newbyteorder("=")
        assert got[name].dtype == want_dtype and got[name].flags.c_contiguous, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def _frombuffer(*args, module="numpy._core.numeric"):
    return Call(Global(module, "_frombuffer"), *args)


def test_numpy_frombuffer_is_checked_like_reconstruct(tmp_path):
    path = tmp_path / "fb.pt"
    f8 = np.dtype("<f8")
    _zip_with_pickle(path, assemble({"a": _frombuffer(struct.pack("<2d", 1, 2), f8, (2, 1), "C"),
                                     "b": _frombuffer(struct.pack("<2d", 1, 2), f8, (2,), "C",
                                                      module="numpy.core.numeric")}))
    got = tf.load(path)
    np.testing.assert_array_equal(got["a"], [[1.0], [2.0]])
    np.testing.assert_array_equal(got["b"], [1.0, 2.0])
    for protocol in (2, 5):
        _zip_with_pickle(path, pickle.dumps({"e": np.zeros((2, 0), np.float32), "b": b""},
                                            protocol=protocol))
        assert tf.load(path)["e"].shape == (2, 0) and tf.load(path)["b"] == b""
    _zip_with_pickle(path, assemble({"b": Call(Global("builtins", "bytes"), 3)}))
    with pytest.raises(FormatError, match="only bytes"):
        tf.load(path)
    for args, error, match in [
        ((bytes(8), np.dtype(object), (1,), "C"), UnsafeFileError, "dtype"),
        ((bytes(8), np.dtype([("x", "<f8")]), (1,), "C"), UnsafeFileError, "dtype"),
        (([1.0], f8, (1,), "C"), UnsafeFileError, "numeric bytes"),
        ((bytes(7), f8, (1,), "C"), FormatError, "wrong size"),
        ((bytes(8), f8, ("1",), "C"), FormatError, "shape"),
        ((bytes(8), f8, (-1, -1), "C"), FormatError, "shape"),  # numpy's own ValueError
        ((b"", f8, (2**32, 2**32, 0), "C"), FormatError, "shape"),  # numpy cannot address it
        ((b"", f8, (2**32, 2**32), "C"), FormatError, "shape"),  # int64 product wrapped to 0
        ((bytes(8), f8, (1,), "X"), FormatError, "order"),
        ((bytes(8), f8, (1,), "K"), FormatError, "order"),
        ((bytes(8), f8, (1,), "C", (0,)), FormatError, "order"),
        ((bytes(16), f8, (2, 1), "K", (0, 0)), FormatError, "permutation"),
        ((bytes(16), f8, (2, 1), "K", (0, 1, 2)), FormatError, "permutation"),
    ]:
        _zip_with_pickle(path, assemble({"w": _frombuffer(*args)}))
        with pytest.raises(error, match=match):
            tf.load(path)


def _tensor_pickle(pid, offset=0, size=(2,), stride=(1,)):
    return assemble({"w": Call(Global("torch._utils", "_rebuild_tensor_v2"), PID(pid), offset,
                               size, stride, False, Call(Global("collections", "OrderedDict")))})


@pytest.mark.parametrize("pid,geometry,match", [
    (("storage", "F", "0", "cpu", 4), dict(offset=1, size=(3,)), None),  # fine: [1, 2, 3]
    (("storage", "F", "0", "cpu", 4), dict(offset=2, size=(3,)), "past the end"),
    (("storage", "F", "0", "cpu", 4), dict(size=(2, 2), stride=(3, 1)), "past the end"),
    (("storage", "F", "0", "cpu", 4), dict(size=(2,), stride=(-1,)), "negative"),
    (("storage", "F", "0", "cpu", 4), dict(size=(1 << 40,), stride=(0,)), "needs"),
    (("storage", "F", "0", "cpu", 4), dict(size=(2,), stride=(1, 1)), "geometry"),
    (("storage", "F", "9", "cpu", 4), {}, "missing"),
    (("storage", "F", "0", "cpu", 8), {}, "expected 32"),
    (("nope",), {}, "persistent id"),
    (("storage", "FloatStorage", "0", "cpu", 4), {}, "bad storage reference"),
])
def test_bad_persistent_ids_and_geometry(tmp_path, pid, geometry, match):
    path = tmp_path / "p.pt"
    pid = tuple(Global("torch", "FloatStorage") if v == "F" else v for v in pid)
    _zip_with_pickle(path, _tensor_pickle(pid, **geometry),
                     {"0": np.arange(4, dtype=np.float32).tobytes()})
    if match is None:
        np.testing.assert_array_equal(tf.load(path)["w"], [1, 2, 3])
        return
    with pytest.raises(FormatError, match=match):
        tf.load(path)


# ------------------------------------------------------------------------------------------------
# hostile files: each is refused promptly with a typed error, without a size-driven allocation
# ------------------------------------------------------------------------------------------------
FS = Global("torch", "FloatStorage")
F32 = np.arange(4, dtype="<f4").tobytes()


def _dag(depth, leaf):
    """A list nested `depth` deep whose two items are one list: pickled with memo references, it
    takes a few bytes per level and describes 2**depth paths."""
    node = leaf
    for _ in range(depth):
        node = [node, node]
    return node


def _legacy_file(path, pkl, storages):
    """A legacy torch.save file with object pickle `pkl`; storages: (key, float32 bytes) in order."""
    with open(path, "wb") as f:
        for part in (tf.LEGACY_MAGIC, tf.LEGACY_PROTOCOL, {"little_endian": True}):
            f.write(pickle.dumps(part, protocol=2))
        f.write(pkl)
        f.write(pickle.dumps([k for k, _ in storages], protocol=2))
        for _, data in storages:
            f.write(struct.pack("<q", len(data) // 4) + data)


def _patch_central_directory(path, name, **fields):
    """Overwrite 32-bit fields (compress_size, file_size) of `name`'s central directory entry."""
    data = bytearray(path.read_bytes())
    at = {"compress_size": 20, "file_size": 24}
    i = data.index(b"PK\x01\x02")
    while data[i + 46:i + 46 + len(name)] != name.encode():
        i = data.index(b"PK\x01\x02", i + 4)
    for field, value in fields.items():
        struct.pack_into("<I", data, i + at[field], value)
    path.write_bytes(bytes(data))


def test_shared_containers_are_walked_within_a_bound(tmp_path):
    """D1: a container reused through memo references is walked at each place it appears, up to a
    bound; load() keeps it shared (as torch.load does) instead of copying every path."""
    path = tmp_path / "dag.pt"
    _zip_with_pickle(path, pickle.dumps({"w": np.zeros(2, np.float32), "opt": _dag(18, np.ones(1))},
                                        protocol=2))
    with pytest.raises(FormatError, match="reuses its containers"):
        tf.read_state_dict(path, unwrap=False)
    got = tf.load(path)
    assert got["opt"][0] is got["opt"][1]
    # without tensors a shared structure is walked once; a state dict stored twice reads twice
    sd = {"rnn.weight": np.arange(3.0), "rnn.bias": np.ones(2)}
    _zip_with_pickle(path, pickle.dumps({"model": sd, "ema": sd, "hp": _dag(40, 0)}, protocol=2))
    assert sorted(tf.read_state_dict(path, unwrap=False)) == [
        "ema.rnn.bias", "ema.rnn.weight", "model.rnn.bias", "model.rnn.weight"]


@pytest.mark.parametrize("obj", [
    {"d": Call(Global("torch", "device"), _dag(18, "x"))},
    {"s": Call(Global("torch", "Size"), _dag(18, "x"))},
    {"p": PID(_dag(18, "x"))},
    {"t": Call(Global("torch._utils", "_rebuild_tensor_v2"), PID(("storage", FS, "0", "cpu", 4)), 0,
               _dag(18, 1), (1,), False, None)},
])
def test_error_messages_show_file_content_briefly(tmp_path, obj):
    """D2: a message built from a structure the pickle shares stays short (repr would walk 2**18
    paths, or 2**40 at depth 40, and hang)."""
    path = tmp_path / "m.pt"
    _zip_with_pickle(path, assemble(obj), {"0": F32})
    with pytest.raises(FormatError) as err:
        tf.load(path)
    assert len(str(err.value)) < 1000


def test_special_files_are_refused(tmp_path):
    """D3: a directory or a FIFO (open() would block until a writer comes) is not a checkpoint."""
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(FormatError, match="not a regular file"):
        tf.open_checkpoint(tmp_path / "dir.pt")
    if not hasattr(os, "mkfifo"):
        return
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer with data waiting, so that a reader would not block
    try:
        os.write(fd, bytes(600))
        with pytest.raises(FormatError, match="not a regular file"):
            tf.open_checkpoint(fifo)
    finally:
        os.close(fd)


@pytest.mark.parametrize("opcode", [pickle.BYTEARRAY8, pickle.BINBYTES8, pickle.BINUNICODE8])
def test_pickle_length_fields_allocate_nothing_past_the_input(tmp_path, opcode):
    """D4: BYTEARRAY8 allocated its claimed length (64 MiB here, 3 GiB in the fuzz case) before
    reading; every length-prefixed opcode now costs at most the bytes there."""
    import tracemalloc

    path = tmp_path / "b.pt"
    _zip_with_pickle(path, b"\x80\x05" + opcode + struct.pack("<Q", 64 << 20) + b"0123456789.")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            tf.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    _zip_with_pickle(path, pickle.dumps({"b": bytearray(b"xy")}, protocol=5))
    assert tf.load(path) == {"b": bytearray(b"xy")}


@pytest.mark.parametrize("count,numel,size,stride", [
    (2, 1, (1 << 26,), (0,)),  # two 256 MiB stride-0 tensors over one float
    (300, 1 << 18, (1 << 18,), (1,)),  # 300 views of one 1 MiB storage
])
def test_tensors_cannot_name_much_more_data_than_the_file_holds(tmp_path, count, numel, size, stride):
    """D5: each such tensor costs its full size when read; their total is capped per file."""
    path = tmp_path / "x.pt"
    pid = ("storage", FS, "0", "cpu", numel)
    tensors = {f"t{i}": Call(Global("torch._utils", "_rebuild_tensor_v2"), PID(pid), 0, size, stride,
                             False, Call(Global("collections", "OrderedDict"))) for i in range(count)}
    _zip_with_pickle(path, assemble(tensors), {"0": bytes(4 * numel)})
    with pytest.raises(FormatError, match="bytes in all"):
        tf.open_checkpoint(path)


_OVER_CALL_BUDGET = "bytes of call arguments, containers and sets in all"
_ITEMS = list(range(50_000))  # ~150 KB of pickle, 400 KB as a list
_ARRAY_STATE = (1, (50_000,), np.dtype("u1"), False, bytes(50_000))


def _refused_peak(read, path, match):
    """(the peak of memory Python allocated while read(path) was refused with a FormatError
    matching `match`, that error)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=match) as err:
            read(path)
        return tracemalloc.get_traced_memory()[1], err.value
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("calls", [
    [Call(Global("builtins", "list"), _ITEMS) for _ in range(1000)],
    [Call(Global("torch", "Size"), _ITEMS) for _ in range(1000)],
    [Build(Call(Global("numpy.core.multiarray", "_reconstruct"), Global("numpy", "ndarray"), (0,),
                b"b"), _ARRAY_STATE) for _ in range(4000)],
], ids=["list", "torch.Size", "numpy"])
def test_calls_cannot_copy_much_more_than_the_pickle_holds(tmp_path, calls):
    """A call's argument that the pickle passes again through a memo reference costs it a few
    bytes, and the call may copy it: 1,000 copies of one list made 400 MB from a 150 KB file (and
    hundreds of GB from a MB), 4,000 numpy arrays from one array's state 200 MB. The arguments of
    all calls together are capped by the pickle's size."""
    path = tmp_path / "c.pt"
    _zip_with_pickle(path, assemble(calls))
    assert _refused_peak(tf.load, path, _OVER_CALL_BUDGET)[0] < 32 << 20
    _zip_with_pickle(path, assemble(calls[:2]))
    assert len(tf.load(path)) == 2


@pytest.mark.parametrize("call,arg", [
    ("list", "x" * (1 << 19)), ("tuple", "\u03b1" * (1 << 16)),
    ("set", list(range(1 << 16, (1 << 16) + 50_000))),
])
def test_calls_that_build_containers_are_charged_what_they_build(tmp_path, call, arg):
    """list(s) was charged len(s) bytes of arguments but makes a pointer (8 bytes) for each
    character, and a new str for each outside latin-1 (84 bytes); set(x) a table entry for each
    item (over 32 bytes), charged 8: reused through memo references, a 16 MB file made 1 GB. Here
    20 such calls made 42 MB, 118 MB and 17 MB from files of 0.5 MB, 128 KB and 250 KB. A plain
    set of 100,000 ints, which a pickle makes with set(list), still loads."""
    path = tmp_path / "c.pt"
    _zip_with_pickle(path, assemble([Call(Global("builtins", call), arg) for _ in range(20)]))
    assert _refused_peak(tf.load, path, _OVER_CALL_BUDGET)[0] < 8 << 20
    _zip_with_pickle(path, pickle.dumps(set(range(100_000)), protocol=2))
    assert len(tf.load(path)) == 100_000


_PAIRS = [(i, None) for i in range(300, 983)]  # a dict of these 683 has just doubled its table
_MEMBERS = list(range(300, 1529))  # a set of these 1,229 has just quadrupled its table


@pytest.mark.parametrize("module,name,args,count", [
    ("builtins", "dict", (_PAIRS,), 1000),
    ("collections", "OrderedDict", (_PAIRS,), 1000),
    ("builtins", "set", (_MEMBERS,), 1000),
    ("builtins", "frozenset", (_MEMBERS[:512],), 1000),
    ("builtins", "set", (), 20_000),
    ("collections", "OrderedDict", (), 20_000),
], ids=["dict", "OrderedDict", "set", "frozenset", "set()", "OrderedDict()"])
def test_containers_built_of_one_shared_argument_take_at_most_the_budget(
        tmp_path, monkeypatch, module, name, args, count):
    """A call that builds a dict or set was charged the least its table takes (32 bytes an item,
    80 in an OrderedDict), but a table that has just grown takes up to 107: dict(pairs) again and
    again of one shared list of 90,000 pairs made 15 MB from a 630 KB pickle, and set() or
    OrderedDict() of no argument was charged nothing: against a budget of 2 MiB, these calls
    made 2.9 to 6.8 MiB (all 20,000 of set() and OrderedDict()). Each is now charged what it
    takes: beside the pickle itself, they make the budget and one container more."""
    from converters.torch_files import unpickler

    monkeypatch.setattr(unpickler, "MAX_ARGUMENT_RATIO", 0)
    monkeypatch.setattr(unpickler, "MAX_ARGUMENT_BYTES", 2 << 20)
    path = tmp_path / "c.pt"
    pkl = assemble([Call(Global(module, name), *args) for _ in range(count)])
    _zip_with_pickle(path, pkl)
    beside = 2 * len(pkl) + (300 << 10)  # the pickle's bytes, its stack, the shared argument
    assert _refused_peak(tf.load, path, _OVER_CALL_BUDGET)[0] < (2 << 20) + beside


@pytest.mark.parametrize("opcodes,count", [
    (pickle.EMPTY_SET, 200_000), (pickle.MARK + pickle.FROZENSET, 100_000),
], ids=["EMPTY_SET", "FROZENSET"])
def test_empty_sets_are_charged_what_they_take(tmp_path, opcodes, count):
    """EMPTY_SET makes a set of 216 bytes of one byte of pickle (MARK FROZENSET of two): 200 KB of
    them made 45 MB and 23 MB. Sets the opcodes make count against the calls' budget; real sets
    at protocol 4 still load."""
    path = tmp_path / "s.pt"
    _zip_with_pickle(path, b"\x80\x04" + pickle.MARK + opcodes * count + pickle.LIST + pickle.STOP)
    assert _refused_peak(tf.load, path, _OVER_CALL_BUDGET)[0] < 8 << 20
    sets = [set(), frozenset(), set(range(100_000)), frozenset(range(1000))]
    _zip_with_pickle(path, pickle.dumps(sets, protocol=4))
    assert tf.load(path) == sets


def test_long_names_in_reader_messages_show_their_length(tmp_path):
    """A 10,000-character name (a pickle global, a safetensors entry) shows in a message as its
    first and last characters and its length."""
    path = tmp_path / "g.pt"
    _zip_with_pickle(path, _global_pickle("os", "x" * 10_000))
    with pytest.raises(UnsafeFileError, match=r"pickle global 'os\.x+\.\.\.\(10003 chars\)"):
        tf.load(path)
    path = tmp_path / "s.safetensors"
    head = json.dumps({"w" * 10_000: {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})
    path.write_bytes(struct.pack("<Q", len(head)) + head.encode() + F32)
    with pytest.raises(FormatError, match=r"'w+\.\.\.\(10000 chars\)\.\.\.w+' has bad sha") as err:
        tf.load(path)
    assert len(str(err.value)) < len(str(path)) + 250


def test_zip_directory_sizes_are_checked_against_the_file(tmp_path):
    """D7: a central directory claiming a 3 GiB record (read allocated it), or a data.pkl whose
    stored size disagrees with its size (read 1 GiB, then loaded), is refused when opened."""
    path = tmp_path / "z.pt"
    _zip_with_pickle(path, _tensor_pickle(("storage", FS, "0", "cpu", 3 << 28), size=(4,)), {"0": F32})
    _patch_central_directory(path, "archive/data/0", compress_size=3 << 30, file_size=3 << 30)
    with pytest.raises(FormatError, match="corrupt zip directory: record 'archive/data/0' claims"):
        tf.open_checkpoint(path)
    _zip_with_pickle(path, _tensor_pickle(("storage", FS, "0", "cpu", 4)), {"0": F32})
    _patch_central_directory(path, "archive/data.pkl", compress_size=2**32 - 2)
    with pytest.raises(FormatError, match="corrupt zip directory"):
        tf.open_checkpoint(path)


@pytest.mark.parametrize("compressed", ["archive/data/0", "archive/data.pkl"])
def test_compressed_records_are_refused(tmp_path, compressed):
    """D8: torch.save never compresses; a deflated storage made 2 GiB from a 2 MB file."""
    path = tmp_path / "c.pt"
    records = {"archive/data.pkl": _tensor_pickle(("storage", FS, "0", "cpu", 1 << 18)),
               "archive/data/0": bytes(1 << 20)}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records.items():
            z.writestr(name, data, zipfile.ZIP_DEFLATED if name == compressed else zipfile.ZIP_STORED)
    with pytest.raises(UnsupportedError, match="compressed"):
        tf.open_checkpoint(path)


@pytest.mark.parametrize("geometry", [
    dict(size=(0, 2**62), stride=(1, 1)), dict(size=(0, 2**64), stride=(1, 1)),
    dict(size=(1,) * 65, stride=(1,) * 65), dict(size=(1, 4), stride=(2**62, 1)),
])
def test_tensor_geometry_numpy_cannot_make(tmp_path, geometry):
    """D9: ValueError / OverflowError from numpy before; now FormatError when the file is read."""
    path = tmp_path / "g.pt"
    _zip_with_pickle(path, _tensor_pickle(("storage", FS, "0", "cpu", 4), **geometry), {"0": F32})
    with pytest.raises(FormatError, match="out of range"):
        tf.read_state_dict(path)


def test_legacy_negative_view_offset(tmp_path):
    """D9: a legacy storage view at offset -4 read before its storage (ValueError)."""
    path = tmp_path / "v.pt"
    _legacy_file(path, _tensor_pickle(("storage", FS, "k", "cpu", 4, ("v", -4, 4)), size=(4,)),
                 [("k", F32)])
    with pytest.raises(FormatError, match="bad storage view"):
        tf.read_state_dict(path)
    _legacy_file(path, _tensor_pickle(("storage", FS, "k", "cpu", 4, ("v", 1, 3)), size=(3,)),
                 [("k", F32)])
    np.testing.assert_array_equal(tf.read_state_dict(path)["w"], [1, 2, 3])


@pytest.mark.parametrize("head", [
    '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "x": ' + "[" * 100000
    + "]" * 100000 + "}",
    json.dumps({"w": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}}),
    json.dumps({"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}),
    json.dumps({"w": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}),
], ids=["nested", "2**64", "0x2**64", "65-dims"])
def test_safetensors_headers_python_cannot_take(tmp_path, head):
    """D10: RecursionError from a deeply nested header, OverflowError from a 2**64 dimension."""
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head.encode() + F32)
    with pytest.raises(FormatError):
        tf.read_state_dict(path)


@pytest.mark.parametrize("obj", [
    {"rnn.weight_ih_l0": np.zeros(2), "rnn": {"weight_ih_l0": np.ones(2)}},
    {0: np.zeros(2), "0": np.ones(2)},
])
def test_two_tensors_with_one_name_are_refused(tmp_path, obj):
    """D11: the last of two tensors flattened to one name silently won."""
    with pytest.raises(FormatError, match="names two tensors"):
        tf.flatten_tensors(obj)
    path = tmp_path / "n.pt"
    _zip_with_pickle(path, pickle.dumps(obj, protocol=2))
    with pytest.raises(FormatError, match="names two tensors"):
        tf.read_state_dict(path)


def _long_key_nest(key, depth, leaf):
    """{key: {key: ... {key: leaf}}} `depth` deep, the key one memo entry: 3 bytes a level."""
    body = leaf
    for _ in range(depth - 1):
        body = pickle.EMPTY_DICT + b"h\xff" + body + pickle.SETITEM
    return b"\x80\x02}" + _binunicode(key) + b"q\xff" + body + b"s."


def test_a_long_key_at_every_level_is_refused_before_its_name_is_built(tmp_path, monkeypatch):
    """A long key reused (memo references) at each of 100 levels names a tensor of depth x key
    length characters: 6 MiB keys took 27 s and 1.4 GB to build that name, one level at a time,
    before MAX_NAME_CHARS refused it, and a nesting error built it too. Here 64 KiB keys against a
    1 MiB budget: the refusals build no name, and a name within the budget is joined once."""
    from converters.torch_files import flatten

    monkeypatch.setattr(flatten, "MAX_NAME_CHARS", 1 << 20)
    key, leaf = "k" * (64 << 10), pickle.dumps(np.zeros(1), protocol=2)[2:-1]
    path = tmp_path / "k.pt"
    for depth, leaf_, match in [(100, leaf, "names take more than"), (110, b"N", "nests deeper")]:
        _zip_with_pickle(path, _long_key_nest(key, depth, leaf_))
        peak, err = _refused_peak(tf.read_state_dict, path, match)
        assert peak < 2 << 20 and len(str(err)) < 1000
    _zip_with_pickle(path, _long_key_nest(key, 15, leaf))
    assert list(tf.read_state_dict(path)) == [".".join([key] * 15)]


def test_ambiguous_records_are_refused(tmp_path):
    """D12: duplicate names (the last won), overlapping data, a storage record longer than its
    dtype says (FloatStorage read as HalfStorage reinterpreted the bytes)."""
    path = tmp_path / "d.safetensors"
    for head, match in [
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
         '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "names 'w' twice"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), "share bytes"),
    ]:
        path.write_bytes(struct.pack("<Q", len(head)) + head.encode() + F32)
        with pytest.raises(FormatError, match=match):
            tf.read_state_dict(path)
    path = tmp_path / "d.pt"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _zip_with_pickle(path, _tensor_pickle(("storage", FS, "0", "cpu", 4)), {"0": F32})
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("archive/data/0", F32[::-1])
    with pytest.raises(FormatError, match="two records named 'archive/data/0'"):
        tf.open_checkpoint(path)
    _zip_with_pickle(path, _tensor_pickle(("storage", Global("torch", "HalfStorage"), "0", "cpu", 4)),
                     {"0": F32})
    with pytest.raises(FormatError, match="holds 16 bytes, expected 8"):
        tf.open_checkpoint(path)
    _legacy_file(path, _tensor_pickle(("storage", FS, "k", "cpu", 4, None)),
                 [("k", F32), ("k", F32[::-1])])
    with pytest.raises(FormatError, match="twice"):
        tf.open_checkpoint(path)


def _tuple_dag_key_pickle(depth):
    """{t: 1} where t nests `depth` pairs of one tuple (memo references): hashing t takes 2**depth
    steps, and Python caches no tuple hash."""
    body = b"K\x00q\x000"
    for i in range(1, depth + 1):
        body += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + pickle.TUPLE2 + b"q" + bytes([i])
        body += b"0" if i < depth else b""
    return b"\x80\x02}" + body + b"K\x01s."


def test_dict_keys_and_set_members_must_hash_cheaply(tmp_path):
    """A pickle of a few hundred bytes made a key that hashes for hours (depth 40; 20 here)."""
    path = tmp_path / "k.pt"
    flat = b"\x80\x02(" + b"K\x07" * 1000 + b"tq\x00" + b"}(" + b"h\x00K\x01" * 100 + b"u."
    for pkl in (_tuple_dag_key_pickle(20), flat,
                assemble({"s": Call(Global("builtins", "frozenset"), [(0, (1,))])}),
                pickle.dumps({frozenset(range(65)): 1}, protocol=4),
                pickle.dumps({(1, frozenset({2})): 1}, protocol=2)):
        _zip_with_pickle(path, pkl)
        with pytest.raises(FormatError, match="dict key or set member"):
            tf.load(path)
    ok = {(1, "a"): 2, "s": frozenset({(1, 2)}), 7: {3, 4}, frozenset({"a", 1}): 3}
    _zip_with_pickle(path, pickle.dumps(ok, protocol=4))
    assert tf.load(path) == ok


def _binunicode(text):
    return pickle.BINUNICODE + struct.pack("<I", len(text)) + text.encode()


def test_equal_strings_are_one_object(tmp_path):
    """A dict key or set member equal to one already there but another object is compared with it
    in full. Two equal 4 MiB strings reused through 300,000 memo references of 2-4 bytes took ~40 s
    to read (minutes for tens of MB); with equal strings made one object as they are read, 0.3 s."""
    length, count = 4 << 20, 150_000
    a, b = _binunicode("k" * length) + b"q\x01" + pickle.POP, _binunicode("k" * length) + b"q\x02" + pickle.POP
    pkl = (b"\x80\x04" + a + b
           + pickle.EMPTY_DICT + pickle.MARK + b"h\x01K\x00" + b"h\x02K\x00" * count + pickle.SETITEMS
           + pickle.EMPTY_SET + pickle.MARK + b"h\x01" + b"h\x02" * count + pickle.ADDITEMS
           + pickle.MARK + b"h\x01h\x02" + pickle.LIST + pickle.TUPLE3 + pickle.STOP)
    path = tmp_path / "s.pt"
    _zip_with_pickle(path, pkl)
    d, s, pair = tf.load(path)
    assert d == {"k" * length: 0} and s == {"k" * length} and pair == ["k" * length] * 2
    assert pair[0] is pair[1]



_M = sys.hash_info.modulus  # 2**61 - 1


def _colliding_ints(n, r=7):
    """n ints of 62 to 70 bits that all hash to r: an int hashes to itself mod 2**61 - 1."""
    return [r + k * _M for k in range(1, n + 1)]


def _colliding_pairs(n):
    """n (a, b) pairs of int64s with one tuple hash. Python's tuple hash (xxHash-like, 3.8+) folds
    the items' hashes in turn, acc = rotl(acc + h * P2, 31) * P1, so for each a there is one b
    whose hash lands every pair on the same acc (an int64 about half the time)."""
    p1, p2, p5, mask = 11400714785074694791, 14029467366897019727, 2870177450012600261, 2**64 - 1
    out, a = [], 0
    while len(out) < n:
        acc = p5 + (hash(a) & mask) * p2 & mask
        acc = ((acc << 31 | acc >> 33) & mask) * p1 & mask
        hb = (12345 - acc) * pow(p2, -1, 2**64) & mask  # b's hash, unsigned
        if hb < _M:
            out.append((a, hb))
        elif hb > 2**64 - _M and hb < mask - 1:  # -_M < b < -2: hash(b) == b
            out.append((a, hb - 2**64))
        a += 1
    assert len({hash(t) for t in out}) == 1
    return out


def _flood_pickles(keys):
    """keys into one dict or set, each way a pickle can fill one."""
    pairs = [(k, 0) for k in keys]
    body = b"".join(pickle.dumps(k, protocol=2)[2:-1] + b"K\x00" for k in keys)
    dict_call = pickle.dumps(pairs[:-1], protocol=2)[2:-1]
    return {
        "SETITEMS": pickle.dumps(dict(pairs), protocol=2),
        "SETITEM": pickle.dumps(dict(pairs), protocol=0),
        "ADDITEMS": pickle.dumps(set(keys), protocol=4),
        "FROZENSET": pickle.dumps(frozenset(keys), protocol=4),
        "DICT": b"(" + body + b"d.",
        "set()": pickle.dumps(set(keys), protocol=2),
        "frozenset()": pickle.dumps(frozenset(keys), protocol=2),
        "dict()": assemble(Call(Global("builtins", "dict"), pairs)),
        "OrderedDict()": assemble(Call(Global("collections", "OrderedDict"), pairs)),
        # a dict() call's keys are counted when SETITEM adds another
        "dict() + SETITEM": (b"\x80\x02c__builtin__\ndict\n" + dict_call + b"\x85R"
                             + pickle.dumps(keys[-1], protocol=2)[2:-1] + b"K\x00s."),
    }


@pytest.mark.parametrize("keys", [_colliding_ints, _colliding_pairs], ids=["ints", "pairs"])
def test_hash_floods_are_refused(tmp_path, keys):
    """Keys sharing a hash make each insertion compare with all of them (quadratic). Keys of
    int64 pairs took 15 s in a 350 KB file, 49 s in 600 KB; at most 64 of one hash now."""
    path = tmp_path / "f.pt"
    ok, flood = keys(64), keys(65)
    for how, pkl in _flood_pickles(ok).items():
        _zip_with_pickle(path, pkl)
        got = tf.load(path)
        assert set(got) == set(ok) and len(got) == 64, how
    for how, pkl in _flood_pickles(flood).items():
        _zip_with_pickle(path, pkl)
        with pytest.raises(FormatError, match="64 keys with the same hash") as exc:
            tf.load(path)
        assert any(repr(k) in str(exc.value) for k in flood), how
    # the bound is per hash value and per container: many groups of 64, and 64 in each of two;
    # ints below 2**60 are their own hashes and uncounted
    groups = [k + g for g in range(5) for k in _colliding_ints(64, r=1000)] + list(range(2000))
    _zip_with_pickle(path, pickle.dumps([dict.fromkeys(groups, 0), set(ok), set(ok)], protocol=4))
    d, s, s2 = tf.load(path)
    assert len(d) == 2320 and s == s2 == set(ok)


def test_a_large_hash_flood_is_refused_quickly(tmp_path):
    """32,000 int64-pair keys of one hash, 600 KB: 49 s to read before the bound, now at once."""
    keys = _colliding_pairs(32_000)
    buf = io.BytesIO()
    buf.write(b"\x80\x02}")
    for i in range(0, len(keys), 1000):
        buf.write(b"(" + b"".join(pickle.dumps(k, protocol=2)[2:-1] + b"K\x00"
                                  for k in keys[i:i + 1000]) + b"u")
    buf.write(b".")
    path = tmp_path / "flood.pt"
    _zip_with_pickle(path, buf.getvalue())
    assert os.path.getsize(path) > 500_000
    t = time.perf_counter()
    with pytest.raises(FormatError, match="same hash"):
        tf.load(path)
    assert time.perf_counter() - t < 5


def _probe_path(x, log2_size, n):
    """The first n distinct slots CPython's dict probes for hash x in a table of 2**log2_size."""
    mask, perturb, i, out, seen = (1 << log2_size) - 1, x, x & ((1 << log2_size) - 1), [], set()
    while len(out) < n:
        if i not in seen:
            seen.add(i)
            out.append(i)
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask
    return out


def test_a_key_is_set_once(tmp_path):
    """Keys of distinct hashes can fill one key's probe path (each small int lands at its own
    slot), so that each lookup of that key walks all of them: 100,000 of them then 20,000 more
    settings of the key, 730 KB, took 10 s. Python's pickler writes each key once."""
    path = tmp_path / "d.pt"
    for pkl in (b"\x80\x02}(K\x05K\x00K\x05K\x01u.", b"\x80\x04\x8f(K\x05K\x05\x90.",
                b"\x80\x02}(\x8a\x09" + b"\x01" * 9 + b"q\x00K\x00h\x00K\x01u.",  # a 72-bit int
                assemble(Call(Global("builtins", "dict"), [((1, 2), 0), ((1.0, 2), 1)])),
                assemble(Call(Global("builtins", "set"), [3, 3.0]))):
        _zip_with_pickle(path, pkl)
        with pytest.raises(FormatError, match="set twice"):
            tf.load(path)
    _zip_with_pickle(path, b"\x80\x02}(X\x01\x00\x00\x00aK\x00X\x01\x00\x00\x00aK\x01u.")
    assert tf.load(path) == {"a": 1}  # a str key's hash is random: no path to fill
    x, n = 12345 + (1 << 40), 100_000
    body = b"".join(b"J" + struct.pack("<i", y) + b"K\x00" for y in _probe_path(x, 18, n))
    again = b"(" + b"h\x00K\x00" * 1000 + b"u"
    pkl = (b"\x80\x02}(" + body + b"u" + pickle.dumps(x, protocol=2)[2:-1] + b"q\x00K\x00s"
           + again * 20 + b".")
    _zip_with_pickle(path, pkl)
    t = time.perf_counter()
    with pytest.raises(FormatError, match="set twice"):
        tf.load(path)
    assert time.perf_counter() - t < 3


def _probe_run_keys(log2_size, seed=0):
    """Small ints of distinct hashes that make CPython 3.11's dict walk one run of slots at every
    insertion. The first ones grow the table to 2**log2_size and land each at its own slot,
    along the cycle i -> 5 * i + 1 that every probe sequence ends on once its perturbation is
    spent; each of the others probes only occupied slots until it reaches that cycle inside the
    run, walks to the run's end and lengthens it."""
    size = 1 << log2_size
    mask, place, cycle, c = size - 1, [0] * size, [0] * size, 12345 & (size - 1)
    for j in range(size):
        cycle[j], place[c], c = c, j, (5 * c + 1) & mask
    run = size // 3 + 1
    keys, chosen, rng = cycle[:run], set(), random.Random(seed)
    while len(keys) < 2 * size // 3:
        z = rng.randrange(size, size << 3)
        i, p = z & mask, z
        while place[i] < run and z not in chosen:
            p >>= 5
            if not p:
                if run - place[i] >= run // 2:
                    keys.append(z)
                    chosen.add(z)
                    run += 1
                break
            i = (5 * i + p + 1) & mask
    return keys


def test_filling_dicts_may_take_a_bounded_share_of_the_read(tmp_path, monkeypatch):
    """Distinct hashes, each key once, and still quadratic: 43,690 keys placed along one probe run
    (a 260 KB pickle) took 2.4 s to read where plain keys take 0.1 s. Insertions may take at most
    MAX_INSERT_RATIO times the rest of the read, after MAX_INSERT_SECONDS (here 0: the file is
    small). These 21,845 keys take ~15 times the rest; the plain ones a quarter."""
    from converters.torch_files import plain_values

    monkeypatch.setattr(plain_values, "MAX_INSERT_SECONDS", 0.0)
    path = tmp_path / "r.pt"
    keys = _probe_run_keys(15)
    assert len({hash(k) for k in keys}) == len(keys) and max(keys) < 2**18
    for plain in (range(len(keys)), [k * 7919 for k in range(len(keys))]):
        _zip_with_pickle(path, pickle.dumps(dict.fromkeys(plain, 0), protocol=2))
        assert len(tf.load(path)) == len(keys)
    _zip_with_pickle(path, pickle.dumps(dict.fromkeys(keys, 0), protocol=2))
    with pytest.raises(FormatError, match="filling dicts and sets took"):
        tf.load(path)


def test_memo_indices_cannot_flood_the_memo(tmp_path):
    """PUT's index is any decimal int, and the memo is a dict: 7 + k * (2**61 - 1) share a hash
    (16,000 PUTs, 460 KB: 3 s, quadratic). Indices are bounded by LONG_BINPUT's 2**32. Distinct
    indices filling one index's probe path made each fetch of it walk them all (100,000 indices,
    20,000 fetches, 820 KB: 9 s); the memo is keyed by a secret permutation of the indices."""
    path = tmp_path / "m.pt"
    _zip_with_pickle(path, b"(I1\np4294967295\n0g4294967295\nl.")
    assert tf.load(path) == [1]
    for i in (2**32, 7 + _M):
        _zip_with_pickle(path, b"(I1\np%d\nl." % i)
        with pytest.raises(FormatError, match="memo index"):
            tf.load(path)
    _zip_with_pickle(path, b"(I1\np0\n0g-1\nl.")
    with pytest.raises(FormatError):
        tf.load(path)
    x = 12345 + (1 << 30)
    fill = b"".join(b"Nr" + struct.pack("<I", i) + b"0" for i in _probe_path(x, 18, 100_000))
    fetch = b"j" + struct.pack("<I", x) + b"0"
    _zip_with_pickle(path, b"\x80\x02" + fill + b"Nr" + struct.pack("<I", x) + b"0" + fetch * 20_000
                     + b"N.")
    t = time.perf_counter()
    assert tf.load(path) is None
    assert time.perf_counter() - t < 3


def test_memo_keys_are_secret_per_reader():
    """The memo's keys cannot be predicted from a file, whatever PYTHONHASHSEED says: each reader
    draws its own permutation of the indices (a bijection: no two indices share a key)."""
    from converters.torch_files.unpickler import _Memo

    first, second = _Memo(), _Memo()
    indices = list(range(5000)) + [2**32 - 1 - i for i in range(5000)]
    for i in indices:
        first[i] = second[i] = i
    assert len(first) == len(second) == len(indices)
    assert all(first[i] == i for i in indices)
    assert set(first) != set(second) and not set(first) & set(indices)
    for bad in (-1, 2**32, 2**70):
        with pytest.raises(KeyError):
            first[bad]


def test_items_go_only_into_dicts_and_sets(tmp_path):
    path = tmp_path / "i.pt"
    for pkl, match in ((b"\x80\x02](K\x00K\x01u.", "sets items of a list"),
                       (b"\x80\x02](K\x00\x90.", "adds members to a list"),
                       (b"\x80\x02}(K\x00u.", "key without a value"),
                       (b"\x80\x02(K\x00K\x01K\x02d.", "key without a value"),
                       (b"\x80\x02((" + b"K\x00" * 65 + b"tK\x00d.", "dict key or set member")):
        _zip_with_pickle(path, pkl)
        with pytest.raises(FormatError, match=match):
            tf.load(path)


# ------------------------------------------------------------------------------------------------
# against real torch files
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="checking files written by torch.save needs torch")


def _tensors(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = {
        "f64": base, "f32": base.float(), "f16": base.half(), "bf16": base.bfloat16(),
        "f8e4": base.float().to(torch.float8_e4m3fn), "f8e5": base.float().to(torch.float8_e5m2),
        "transposed": base.float().t(), "view_offset": base.float()[1:, 2:5],
        "strided": base.float()[::2, ::3], "expanded": base.float()[0:1].expand(3, 6),
        "scalar": base[0, 0].clone(), "empty": torch.zeros(0, 3), "i64": torch.arange(5),
        "i8": torch.arange(-3, 3, dtype=torch.int8), "u8": torch.arange(4, dtype=torch.uint8),
        "bool": base > 0, "u16": torch.tensor([1, 60000]).to(torch.uint16),
        "param": torch.nn.Parameter(base.float()),
    }
    t["shared_a"] = base.float()
    t["shared_b"] = t["shared_a"][2]  # a view of the same storage
    return t


def _want(torch, v):
    v = v.detach()
    if v.is_floating_point() and v.dtype not in (torch.float32, torch.float64):
        v = v.float()
    if v.dtype == torch.uint16:
        v = v.to(torch.int64)
    return v.contiguous().numpy()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_torch_written_files_round_trip(torch, tmp_path, fmt):
    tensors = _tensors(torch)
    path = tmp_path / f"t.{fmt}"
    if fmt == "safetensors":
        tensors = {k: v for k, v in tensors.items() if k not in ("shared_b", "expanded", "param")}
        write_safetensors(path, tensors)
    else:
        torch.save(tensors, path, _use_new_zipfile_serialization=fmt == "zip")
    got = tf.load(path)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        want = _want(torch, v)
        assert got[k].shape == want.shape, k
        assert got[k].dtype == want.dtype or k == "u16", (k, got[k].dtype, want.dtype)
        np.testing.assert_array_equal(got[k].astype(want.dtype), want, err_msg=k)
        assert got[k].flags.c_contiguous and got[k].flags.writeable


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_protocols(torch, tmp_path, protocol, zip_format):
    sd = torch.nn.GRU(2, 3, num_layers=2).state_dict()
    path = tmp_path / "p.pt"
    torch.save({"state_dict": sd, "hp": {"s": {1, 2}, "b": b"x" * 300}}, path,
               pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    got = tf.load(path)
    assert got["hp"] == {"s": {1, 2}, "b": b"x" * 300}
    for k, v in sd.items():
        np.testing.assert_array_equal(got["state_dict"][k], v.numpy())


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_numpy_arrays_in_torch_saved_checkpoints(torch, tmp_path, protocol, zip_format):
    sd = torch.nn.GRU(2, 3).state_dict()
    arrays = _numpy_arrays()
    path = tmp_path / "np.pt"
    torch.save({"rnn": sd, "stats": arrays}, path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=zip_format)
    got = tf.load(path)["stats"]
    for name, want in arrays.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    layer = from_torch(str(path), prefix="rnn")
    for k, v in sd.items():
        np.testing.assert_array_equal(layer.state_dict()[k], v.numpy())


def test_torch_objects_in_checkpoints(torch, tmp_path):
    obj = {"size": torch.Size([2, 3]), "dtype": torch.float16, "device": torch.device("cpu"),
           "bytes": b"\x00\xff", "set": {1, 2}, "tuple": (1, "a", None, 2.5), "nested": [[{"x": 1}]],
           "ordered": __import__("collections").OrderedDict(a=1)}
    path = tmp_path / "o.pt"
    torch.save(obj, path)
    got = tf.load(path)
    assert got["size"] == (2, 3) and got["device"] == "cpu" and got["bytes"] == b"\x00\xff"
    assert got["set"] == {1, 2} and got["tuple"] == (1, "a", None, 2.5) and got["nested"] == [[{"x": 1}]]
    assert repr(got["dtype"]) == "torch.float16" and dict(got["ordered"]) == {"a": 1}


def test_state_dict_metadata_and_wrappers(torch, tmp_path):
    m = torch.nn.GRU(3, 4, num_layers=2)
    sd = m.state_dict()  # an OrderedDict carrying _metadata
    for i, ckpt in enumerate([sd, {"state_dict": sd, "epoch": 1}, {"model": {"state_dict": sd}},
                              {"epoch": 2, "model_state_dict": sd, "optimizer_state_dict": {}}]):
        path = tmp_path / f"w{i}.pt"
        torch.save(ckpt, path)
        got = tf.read_state_dict(path)
        assert list(got) == list(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k], v.numpy())
    assert set(tf.read_state_dict(tmp_path / "w1.pt", unwrap=False)) == {f"state_dict.{k}" for k in sd}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_checkpoints_with_int_keys_load(torch, tmp_path, zip_format):
    """Optimizer state is keyed by ints (parameter indices), vocabularies and tables by ints or
    tuples: none of it comes near the bound on keys sharing a hash."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2)
    opt = torch.optim.Adam(lstm.parameters(), lr=1e-3)
    lstm(torch.randn(5, 2, 3))[0].sum().backward()
    opt.step()
    extra = {"vocab": {i: f"w{i}" for i in range(20_000)}, "neg": {-i: i for i in range(1000)},
             "pairs": {(i, -i): i for i in range(5000)}, "floats": {i / 7: i for i in range(5000)},
             "ids": set(range(-1000, 20_000)), "frozen": frozenset(range(3000))}
    ckpt = {"model": lstm.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "extra": extra}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    got = tf.load(path)
    want = opt.state_dict()
    assert sorted(got["optimizer"]["state"]) == sorted(want["state"]) == list(range(8))
    for i, st in want["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(got["optimizer"]["state"][i][k], v.numpy())
    assert got["optimizer"]["param_groups"][0]["params"] == list(range(8))
    assert got["extra"] == extra and got["epoch"] == 1
    sd = tf.read_state_dict(path)
    assert list(sd) == list(lstm.state_dict())
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy())
    flat = tf.read_state_dict(path, unwrap=False)
    np.testing.assert_array_equal(flat["optimizer.state.3.exp_avg"], want["state"][3]["exp_avg"].numpy())


def test_big_endian_zip(torch, tmp_path):
    sd = torch.nn.LSTM(2, 3).state_dict()
    little = tmp_path / "little.pt"
    torch.save(sd, little)
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info.filename, data)
    got = tf.read_state_dict(big)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v.numpy())


def test_quantized_tensors_beside_float_weights(torch, tmp_path):
    """A quantized tensor beside float weights had the whole file refused (UnsafeFileError: the
    qscheme, torch.per_tensor_affine or per_channel_affine, that torch writes into
    _rebuild_qtensor's arguments was no allowed global). The float weights read; the quantized
    tensors fail only when read."""
    rnn, x = torch.nn.GRU(3, 4), torch.randn(5, 3)
    path = tmp_path / "q.pt"
    torch.save({"rnn": rnn.state_dict(),
                "q": torch.quantize_per_tensor(x, 0.1, 0, torch.qint8),
                "qc": torch.quantize_per_channel(x, torch.full((5,), 0.1),
                                                 torch.zeros(5, dtype=torch.long), 0, torch.qint8)},
               path)
    with tf.open_checkpoint(path) as f:
        refs = f.tensors()
        for k, v in rnn.state_dict().items():
            np.testing.assert_array_equal(refs[f"rnn.{k}"].numpy(), v.numpy())
        for k in ("q", "qc"):
            with pytest.raises(UnsupportedError, match="quantized"):
                refs[k].numpy()
    assert from_torch(str(path), prefix="rnn.").mode == "GRU"


class TinyNet:  # pickled as a whole object below; never importable by the reader
    pass


def test_whole_module_pickles_are_refused(torch, tmp_path):
    marker = tmp_path / "pwned"
    for i, (obj, legacy) in enumerate([(torch.nn.LSTM(2, 3), False), (torch.nn.LSTM(2, 3), True),
                                       (torch.nn.Sequential(torch.nn.GRU(2, 3)), False)]):
        path = tmp_path / f"m{i}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeFileError) as err:
            from_torch(str(path))
        msg = str(err.value)
        assert "nn.Module" in msg and "state_dict()" in msg and "torch.nn.modules" in msg
    path = tmp_path / "custom.pt"
    torch.save({"net": TinyNet(), "evil": Evil(marker)}, path)
    with pytest.raises(UnsafeFileError) as err:
        from_torch(str(path))
    assert "TinyNet" in str(err.value) and "state_dict()" in str(err.value)
    assert not marker.exists()


def test_legacy_evil_payload(torch, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy_evil.pt"
    torch.save({"w": torch.zeros(2), "evil": Evil(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="system"):
        from_torch(str(path))
    assert not marker.exists()


def test_torchscript_archive_is_named(torch, tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.LSTM(2, 3)), str(path))
    with pytest.raises(UnsupportedError, match="TorchScript"):
        from_torch(str(path))


def _checkpoint_files(torch, tmp_path):
    m = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    files = {}
    for fmt in ("zip", "legacy", "safetensors"):
        path = tmp_path / f"c.{fmt}"
        if fmt == "safetensors":
            write_safetensors(path, dict(m.state_dict()))
        else:
            torch.save({"state_dict": m.state_dict(), "epoch": 4}, path,
                       _use_new_zipfile_serialization=fmt == "zip")
        files[fmt] = path.read_bytes()
    return files


def test_a_zip_version_zipfile_cannot_read_is_a_format_error(torch, tmp_path):
    """zipfile raises NotImplementedError for a 'version needed to extract' it lacks."""
    data = bytearray(_checkpoint_files(torch, tmp_path)["zip"])
    central = data.index(b"PK\x01\x02")
    data[central + 6:central + 8] = struct.pack("<H", 0x7F)  # version needed: 12.7
    path = tmp_path / "future_zip.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="zip file version"):
        from_torch(str(path))


def test_truncated_files_give_format_error(torch, tmp_path):
    for fmt, data in _checkpoint_files(torch, tmp_path).items():
        cuts = sorted(set(np.linspace(0, len(data) - 1, 60).astype(int)) | {1, 7, 8, 9, len(data) - 1})
        for cut in cuts:
            path = tmp_path / f"cut_{fmt}"
            path.write_bytes(data[:cut])
            with pytest.raises(FormatError):
                from_torch(str(path))


def test_corrupted_files_never_crash(torch, tmp_path):
    rng = np.random.default_rng(0)
    for fmt, data in _checkpoint_files(torch, tmp_path).items():
        for trial in range(80):
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 4))):
                buf[pos] = int(rng.integers(0, 256))
            path = tmp_path / f"bad_{fmt}"
            path.write_bytes(bytes(buf))
            for reader in (from_torch, tf.load):
                try:
                    reader(str(path))
                except FastRNNError:
                    pass


def test_reading_is_lazy(torch, tmp_path):
    """A checkpoint's other tensors are never read: a corrupt optimizer storage does not matter."""
    m = torch.nn.GRU(2, 3)
    path = tmp_path / "lazy.pt"
    torch.save({"model": m.state_dict(), "optimizer": {"big": torch.zeros(1000)}}, path)
    with tf.open_checkpoint(path) as f:
        refs = f.tensors()
        assert refs["optimizer.big"].shape == (1000,) and refs["optimizer.big"].dtype == "float32"
        assert isinstance(refs["optimizer.big"], tf.TensorRef)
    assert from_torch(str(path)).mode == "GRU"
