"""Regression fuzz of every file loader: any bytes load, or raise a typed fastrnn error.

Guarantee checked: for mutants of small seed files (torch.save zip and legacy state dicts, a whole
pickled module, safetensors, .frnn files of a layer, a Classifier and an ONNX plan, ONNX models
from torch.onnx.export and onnx.helper), every public entry point of the format (from_torch,
torch_files.load / read_state_dict, inspect_torch; fastrnn.load with and without mmap,
fileformat.inspect; from_onnx of a path and of bytes) either loads the file, and the loaded model
answers one small valid call (an ONNX plan also saves and reloads), or raises a
fastrnn.errors.FastRNNError. Any other exception, a crash, a hang (CASE_TIMEOUT) or a MemoryError
under the worker's MEMORY_LIMIT fails the group, naming seed, mutator, case number and the input
file kept under pytest's tmp dir. Mutators: truncation, byte flips, runs of 0x00 / 0xff / 0x7f /
0x80, inserted / duplicated / deleted chunks, pickle opcode surgery (interesting ints and strings,
allowed and forbidden GLOBAL targets, dropped / doubled / swapped opcodes), zip member surgery and
zip header fields, JSON header mutations (safetensors, .frnn) and ONNX protobuf fields (dims,
dtypes, raw data, external data, op types, attributes, edges, nodes, opsets). Seeds also go to
the other formats' loaders. Pickles that would run code (os.system, eval, a real __reduce__,
INST / OBJ opcodes) are refused with UnsafeFileError, and their marker file never appears.

The cases run in one worker process (this file run as a script), so that a crash or a hang
cannot take pytest down. The seeds are the same bytes on every run and case i of (seed, mutator)
is drawn from random.Random(f"{seed}/{mutator}/{i}"): the test is deterministic. A larger local
run multiplies the cases per group (default 1: about 3,000 cases, ~15 s):
    FASTRNN_FUZZ_CASES=20 python -m pytest tests/test_fuzz_loaders.py
"""
from __future__ import annotations

import copy
import functools
import importlib
import io
import json
import os
import pickle
import pickletools
import random
import struct
import subprocess
import sys
import traceback
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
SCALE = int(os.environ.get("FASTRNN_FUZZ_CASES", "1"))
CASE_TIMEOUT = 60.0  # seconds one case may take in the worker before it counts as a hang
MEMORY_LIMIT = 3 << 30  # RLIMIT_DATA of the worker: past it an allocation raises MemoryError

# seed file -> its format
SEEDS = {
    "lstm_proj.pt": "zip",              # LSTM(3, 4, proj_size=2) state dict
    "gru_bi_legacy.pt": "legacy",       # {"state_dict": bidirectional GRU, "epoch": 3}
    "rnn_module.pt": "zip",             # a whole pickled nn.RNN: refused (UnsafeFileError)
    "rnn_f16.safetensors": "safetensors",  # 2-layer RNN, float16
    "lstm_bi.frnn": "frnn",             # fastrnn.LSTM, 2 layers, bidirectional
    "classifier.frnn": "frnn",          # Vocabulary -> GRU -> Linear(softmax)
    "plan.frnn": "frnn",                # the ONNX plan of gru_helper.onnx
    "lstm_export.onnx": "onnx",         # torch.onnx.export of a batch_first LSTM
    "gru_helper.onnx": "onnx",          # Transpose -> bidirectional GRU -> Transpose -> Reshape
}
GENERIC = ("truncate", "flip", "runs", "splice")
MUTATORS = {
    "zip": GENERIC + ("pickle", "members"),
    "legacy": GENERIC + ("pickle",),
    "safetensors": GENERIC + ("header",),
    "frnn": GENERIC + ("header",),
    "onnx": GENERIC + ("proto",),
}
CASES = {"truncate": 20, "flip": 40, "runs": 30, "splice": 20,  # per seed, times SCALE
         "pickle": 200, "members": 80, "header": 200, "proto": 200}
LOADER = {"zip": "torch", "legacy": "torch", "safetensors": "torch", "frnn": "frnn", "onnx": "onnx"}

INTERESTING_BYTES = (0x00, 0xFF, 0x7F, 0x80)
INTERESTING_INTS = (0, 1, -1, 2, 3, 63, 64, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
                    2**62, 2**63 - 1, 2**63, 2**64, -2**31, -2**63, 10**30)
INTERESTING_STRS = ("", "0", "1", "99", "../../etc/passwd", "/etc/passwd", "x" * 5000, "storage",
                    "cpu", "cuda:0", "weight_ih_l0", "bias_hh_l0", "state_dict", "float16",
                    "\udcff")
# GLOBAL targets: names the restricted unpickler allows (used in the wrong place) and names it
# must refuse
GLOBALS = (("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage"),
           ("torch", "BoolStorage"), ("torch", "QInt8Storage"), ("torch", "UntypedStorage"),
           ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_qtensor"),
           ("torch._tensor", "_rebuild_from_type_v2"), ("collections", "OrderedDict"),
           ("torch", "Size"), ("torch", "device"), ("torch", "float8_e4m3fn"),
           ("numpy.core.multiarray", "_reconstruct"), ("_codecs", "encode"),
           ("builtins", "dict"), ("builtins", "bytearray"), ("builtins", "eval"),
           ("builtins", "getattr"), ("os", "system"), ("posix", "system"),
           ("subprocess", "Popen"), ("torch.nn.modules.rnn", "LSTM"))
INTERESTING_JSON = (0, 1, -1, 2, 63, 64, 2**31, 2**63, 2**64, 10**20, -2**63, 1.5, 1e308, True,
                    False, None, "", "float64", "float16", "int8", "bool", "F64", "BF16", "LSTM",
                    "GRU", "relu", "layer", "onnx_plan", [], [0], [1, 1], [2**62, 4], {},
                    {"a": 1}, "x" * 1000)


# ------------------------------------------------------------------------------------------------
# seeds
# ------------------------------------------------------------------------------------------------
def _torch_bytes(obj, legacy=False):
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    data = buf.getvalue()
    return _canonical_legacy(data) if legacy else data


def _legacy_parts(data):
    """The five pickles of a legacy torch.save file and the raw storage bytes after them."""
    parts, pos = [], 0
    for _ in range(5):
        end = pos + 1 + max(p for _, _, p in pickletools.genops(data[pos:]))
        parts.append(data[pos:end])
        pos = end
    return parts, data[pos:]


def _canonical_legacy(data):
    """torch names legacy storages by their addresses and writes them sorted by name: rename
    them 0, 1, ... (same lengths) in order of first use, and write them in that order."""
    parts, tail = _legacy_parts(data)
    keys = pickle.loads(parts[4])  # a list of str written by torch.save above
    blobs, pos = {}, 0
    for key in keys:  # each storage: int64 element count, then float32 elements
        end = pos + 8 + 4 * struct.unpack_from("<q", tail, pos)[0]
        blobs[key], pos = tail[pos:end], end
    assert pos == len(tail) and b"FloatStorage" in parts[3]
    order = sorted(keys, key=lambda k: parts[3].index(k.encode()))
    for i, key in enumerate(order):
        parts[3] = parts[3].replace(key.encode(), f"{i:0{len(key)}d}".encode())
    parts[4] = pickle.dumps([f"{i:0{len(k)}d}" for i, k in enumerate(order)], protocol=2)
    return b"".join(parts) + b"".join(blobs[k] for k in order)


def _safetensors_bytes(tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": {"torch.float16": "F16"}.get(str(t.dtype), "F32"),
                        "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    return _safetensors_join(header, b"".join(blobs))


def _gru_onnx_bytes():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"W": (2, 12, 3), "R": (2, 12, 4), "B": (2, 24)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), n)
             for n, s in weights.items()]
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape"))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "B"], ["Y", "Y_h"], hidden_size=4,
                              direction="bidirectional", linear_before_reset=1),
             helper.make_node("Transpose", ["Y"], ["Yt"], perm=[2, 0, 1, 3]),
             helper.make_node("Reshape", ["Yt", "shape"], ["y"])]
    graph = helper.make_graph(
        nodes, "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [2, "N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 7
    return model.SerializeToString()


def _lstm_export_bytes():
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.LSTM(3, 4, batch_first=True), (torch.zeros(2, 5, 3),), buf,
                          dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N", 1: "T"}})
    return buf.getvalue()


def _frnn_bytes(obj, folder):
    import fastrnn

    path = folder / "seed.frnn"
    fastrnn.save(obj, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Seed name -> bytes (deterministic: fixed torch and fastrnn seeds)."""
    import torch

    import converters
    import fastrnn

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("seeds")
    lstm, gru = torch.nn.LSTM(3, 4, proj_size=2), torch.nn.GRU(3, 4, bidirectional=True)
    rnn = torch.nn.RNN(3, 4, num_layers=2)
    gru_onnx = _gru_onnx_bytes()
    classifier = fastrnn.Classifier(fastrnn.Vocabulary("ACGT"),
                                    fastrnn.GRU(4, 5, batch_first=True, seed=2),
                                    fastrnn.Linear(5, 2, activation="softmax", seed=3))
    out = {
        "lstm_proj.pt": _torch_bytes(lstm.state_dict()),
        "gru_bi_legacy.pt": _torch_bytes({"state_dict": gru.state_dict(), "epoch": 3}, legacy=True),
        "rnn_module.pt": _torch_bytes(rnn),
        "rnn_f16.safetensors": _safetensors_bytes({k: v.half() for k, v in rnn.state_dict().items()}),
        "lstm_bi.frnn": _frnn_bytes(fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1),
                                    folder),
        "classifier.frnn": _frnn_bytes(classifier, folder),
        "plan.frnn": _frnn_bytes(converters.from_onnx(gru_onnx), folder),
        "lstm_export.onnx": _lstm_export_bytes(),
        "gru_helper.onnx": gru_onnx,
    }
    assert set(out) == set(SEEDS)
    return out


# ------------------------------------------------------------------------------------------------
# generic byte mutators
# ------------------------------------------------------------------------------------------------
def _truncate(data, rng):
    n = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 64)),
                    len(data) - 1 - rng.randrange(min(len(data), 64))])
    return data[:n], f"truncate to {n} of {len(data)} bytes"


def _flip(data, rng):
    b, desc = bytearray(data), []
    for _ in range(rng.choice((1, 1, 2, 4))):
        i = rng.randrange(len(b))
        old = b[i]
        b[i] = rng.choice((old ^ (1 << rng.randrange(8)), rng.randrange(256), (old + 1) & 0xFF,
                           (old - 1) & 0xFF))
        desc.append(f"{i}:{old:02x}->{b[i]:02x}")
    return bytes(b), "flip " + ",".join(desc)


def _runs(data, rng):
    value, size = rng.choice(INTERESTING_BYTES), rng.choice((1, 2, 4, 8, 16))
    i = rng.randrange(len(data))
    return data[:i] + bytes([value]) * size + data[i + size:], f"{size} x {value:#04x} at {i}"


def _splice(data, rng):
    i = rng.randrange(len(data))
    size = rng.choice((1, 4, 8, 64, 512))
    how = rng.choice(("insert", "duplicate", "delete"))
    if how == "insert":
        chunk = bytes(rng.randrange(256) for _ in range(size))
        return data[:i] + chunk + data[i:], f"insert {size} random bytes at {i}"
    if how == "duplicate":
        return data[:i] + data[i:i + size] + data[i:], f"duplicate {size} bytes at {i}"
    return data[:i] + data[i + size:], f"delete {size} bytes at {i}"


# ------------------------------------------------------------------------------------------------
# pickle opcode surgery (torch zip data.pkl, legacy pickles)
# ------------------------------------------------------------------------------------------------
def _tokens(pkl):
    """[(opcode name, argument, start, end)] of one pickle."""
    items = list(pickletools.genops(pkl))
    ends = [pos for _, _, pos in items[1:]] + [len(pkl)]
    return [(op.name, arg, pos, end) for (op, arg, pos), end in zip(items, ends)]


def _enc_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _enc_str(s):
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def _mutate_pickle(pkl, rng):
    toks = _tokens(pkl)
    if len(toks) < 2:
        return pkl, "nothing left to mutate"
    ints = [t for t in toks if t[0] in ("BININT", "BININT1", "BININT2", "LONG1")]
    strs = [t for t in toks if t[0] in ("BINUNICODE", "SHORT_BINUNICODE")]
    globs = [t for t in toks if t[0] == "GLOBAL"]
    how = rng.choice(("int", "int", "int", "str", "global", "drop", "dup", "swap"))
    if how == "int" and ints:
        name, cur, start, end = rng.choice(ints)
        v = rng.choice(INTERESTING_INTS + (cur + 1, cur - 1, 2 * cur, -cur))
        return pkl[:start] + _enc_int(v) + pkl[end:], f"int at {start}: {cur} -> {v}"
    if how == "str" and strs:
        name, cur, start, end = rng.choice(strs)
        v = rng.choice(INTERESTING_STRS)
        return pkl[:start] + _enc_str(v) + pkl[end:], f"str at {start}: {cur!r:.30} -> {v!r:.20}"
    if how == "global" and globs:
        name, cur, start, end = rng.choice(globs)
        module, attr = rng.choice(GLOBALS)
        new = b"c" + f"{module}\n{attr}\n".encode()
        return pkl[:start] + new + pkl[end:], f"global at {start}: {cur} -> {module}.{attr}"
    name, cur, start, end = rng.choice(toks[:-1])
    if how == "dup":
        return pkl[:end] + pkl[start:end] + pkl[end:], f"duplicate {name} at {start}"
    if how == "swap":
        name2, _, _, end2 = toks[toks.index((name, cur, start, end)) + 1]
        return (pkl[:start] + pkl[end:end2] + pkl[start:end] + pkl[end2:],
                f"swap {name} at {start} with {name2}")
    return pkl[:start] + pkl[end:], f"drop {name} at {start}"


def _zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _rezip(members, compression=zipfile.ZIP_STORED):
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(out, "w", compression) as z:
            for name, body in members:  # a fixed time stamp: the same bytes on every run
                z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), body, compression)
    return out.getvalue()


def _mutate_pickle_often(pkl, rng):
    """One to three token mutations in a row."""
    descs = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        pkl, desc = _mutate_pickle(pkl, rng)
        descs.append(desc)
    return pkl, "; ".join(descs)


def _pickle_zip(data, rng):
    members = _zip_members(data)
    i = next(k for k, (name, _) in enumerate(members) if name.endswith("/data.pkl"))
    pkl, desc = _mutate_pickle_often(members[i][1], rng)
    members[i] = (members[i][0], pkl)
    return _rezip(members), desc


def _pickle_legacy(data, rng):
    parts, tail = _legacy_parts(data)
    i = rng.choice((0, 1, 2, 3, 3, 3, 3, 4))
    parts[i], desc = _mutate_pickle_often(parts[i], rng)
    return b"".join(parts) + tail, f"pickle {i}: {desc}"


# the fields of zip records (offset in the record, struct format) a mutation may rewrite
ZIP_FIELDS = {b"PK\x01\x02": ((10, "<H"), (16, "<I"), (20, "<I"), (24, "<I"), (28, "<H"),
                              (30, "<H"), (42, "<I")),
              b"PK\x03\x04": ((8, "<H"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H")),
              b"PK\x05\x06": ((8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<H"))}


def _zip_field(data, rng):
    records = [(sig, i) for sig in ZIP_FIELDS for i in range(len(data)) if data.startswith(sig, i)]
    sig, at = rng.choice(records)
    offset, fmt = rng.choice(ZIP_FIELDS[sig])
    top = 2 ** (8 * struct.calcsize(fmt)) - 1
    cur = struct.unpack_from(fmt, data, at + offset)[0]
    v = rng.choice((0, 1, top, cur + 1, cur - 1, 2 * cur, len(data), 1000 * len(data))) & top
    b = bytearray(data)
    struct.pack_into(fmt, b, at + offset, v)
    return bytes(b), f"zip record {sig[2:]!r} at {at} field +{offset}: {cur} -> {v}"


def _members(data, rng):
    """Zip member surgery: records dropped, doubled, resized, renamed, compressed; header fields."""
    members = _zip_members(data)
    how = rng.choice(("drop", "double", "resize", "byteorder", "rename", "extra", "deflate",
                      "field", "field"))
    i = rng.randrange(len(members))
    name, body = members[i]
    if how == "field":
        return _zip_field(data, rng)
    if how == "deflate":
        return _rezip(members, zipfile.ZIP_DEFLATED), "every record deflated"
    if how == "drop":
        del members[i]
    elif how == "double":
        members.insert(i, (name, body[: len(body) // 2]))
    elif how == "resize":
        members[i] = (name, rng.choice((b"", body[:-1], body + b"\0" * 4, body * 2)))
    elif how == "byteorder":
        name = next(n for n, _ in members if n.endswith("/byteorder"))
        i = [n for n, _ in members].index(name)
        members[i] = (name, rng.choice((b"", b"big", b"BIG", b"little\n", b"middle")))
    elif how == "rename":
        new = rng.choice((name + "x", name.replace("archive/", ""), "../" + name,
                          name.replace("/data/", "/data/0"), "archive/data/99"))
        members[i] = (new, body)
        return _rezip(members), f"rename {name} -> {new}"
    else:
        members.append((f"{name.split('/')[0]}/data/{len(members)}", bytes(range(256))))
    return _rezip(members), f"{how} {name}"


# ------------------------------------------------------------------------------------------------
# JSON headers (safetensors, .frnn)
# ------------------------------------------------------------------------------------------------
def _safetensors_split(data):
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _safetensors_join(header, payload):
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + payload


def _frnn_split(data):
    n = struct.unpack_from("<Q", data, 8)[0]
    return json.loads(data[16:16 + n]), data[-(-(16 + n) // 64) * 64:]


def _frnn_join(header, payload):
    size = header.get("data_nbytes") if isinstance(header, dict) else None
    if type(size) is int and len(payload) < size <= len(payload) + (1 << 16):
        payload += bytes(i % 127 for i in range(size - len(payload)))  # room for grown tensors
    blob = json.dumps(header).encode()
    start = -(-(16 + len(blob)) // 64) * 64
    return b"FRNN" + struct.pack("<IQ", 1, len(blob)) + blob.ljust(start - 16, b"\0") + payload


def _json_paths(obj, path=()):
    if path:
        yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _json_paths(v, path + (k,))


def _json_get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _tensor_entries(header):
    """The per-tensor dicts of a header: the .frnn "tensors" list or the safetensors values."""
    entries = header.get("tensors", header)
    entries = entries.values() if isinstance(entries, dict) else entries if isinstance(entries, list) else []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("shape"), list)]


def _mutate_json(header, rng):
    h = copy.deepcopy(header)
    entries = _tensor_entries(h)
    how = rng.choice(("set", "set", "set", "delete", "reshape", "swap"))
    if how == "reshape" and entries:
        e = rng.choice(entries)
        old, shape = list(e["shape"]), e["shape"]
        if shape and all(type(d) is int for d in shape):
            k = rng.randrange(len(shape))
            shape[k] = rng.choice((1, 2 * shape[k], shape[k] + 1, 0, 64))
        else:
            shape.append(2)
        return h, f"shape of {e.get('name', '?')} {old} -> {shape}"
    if how == "swap" and len(entries) > 1:
        a, b = rng.sample(entries, 2)
        key = rng.choice(("name", "offset", "data_offsets", "dtype"))
        if key in a and key in b:
            a[key], b[key] = b[key], a[key]
            return h, f"swap {key} of two tensors"
    path = rng.choice(list(_json_paths(h)))
    parent = _json_get(h, path[:-1])
    if how == "delete":
        del parent[path[-1]]
        return h, f"delete {path}"
    parent[path[-1]] = v = rng.choice(INTERESTING_JSON)
    return h, f"set {path} = {str(v):.30}"


def _mutate_json_often(header, rng):
    """One or two JSON mutations in a row (the second only while the header is still a dict)."""
    header, desc = _mutate_json(header, rng)
    if rng.random() < 0.3 and isinstance(header, dict) and header:
        header, more = _mutate_json(header, rng)
        desc += "; " + more
    return header, desc


def _header_safetensors(data, rng):
    header, payload = _safetensors_split(data)
    header, desc = _mutate_json_often(header, rng)
    return _safetensors_join(header, payload), desc


def _header_frnn(data, rng):
    header, payload = _frnn_split(data)
    header, desc = _mutate_json_often(header, rng)
    return _frnn_join(header, payload), desc


# ------------------------------------------------------------------------------------------------
# ONNX protobuf fields
# ------------------------------------------------------------------------------------------------
ONNX_OPS = ("RNN", "GRU", "LSTM", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat",
            "Gather", "Slice", "Expand", "Tile", "ConstantOfShape", "Range", "Add", "MatMul",
            "Loop", "Scan", "If", "Dropout", "Constant", "Shape", "Cast", "NoSuchOp", "")
ONNX_DIMS = (0, 1, -1, 2, 3, 5, 2**31 - 1, 2**31, 2**62, 2**63 - 1, -2**63)
ONNX_FLOATS = (0.0, -1.0, 1e30, float("inf"), float("-inf"), float("nan"))
ONNX_STRINGS = (b"", b"forward", b"reverse", b"bidirectional", b"sideways", b"Relu", b"Tanh",
                b"Sigmoid", b"HardSigmoid", b"NoSuch", b"x" * 1000)
ATTR_NAMES = ("hidden_size", "direction", "activations", "clip", "axis", "axes", "perm", "layout",
              "linear_before_reset", "input_forget", "value", "to", "bogus")


def _mutate_attribute(node, rng):
    from onnx import AttributeProto

    a = rng.choice(node.attribute)
    how = rng.choice(("value", "value", "value", "type", "delete", "rename"))
    if how == "delete":
        node.attribute.remove(a)
        return f"delete attribute {a.name} of {node.op_type}"
    if how == "rename":
        old, a.name = a.name, rng.choice(ATTR_NAMES)
        return f"rename attribute {old} of {node.op_type} to {a.name}"
    if how == "type":
        a.type = rng.choice(list(AttributeProto.AttributeType.values()))
        return f"attribute {a.name} of {node.op_type} type -> {a.type}"
    if a.ints:
        a.ints[rng.randrange(len(a.ints))] = rng.choice(ONNX_DIMS)
    elif a.type == AttributeProto.INT:
        a.i = rng.choice(ONNX_DIMS)
    elif a.type == AttributeProto.FLOAT:
        a.f = rng.choice(ONNX_FLOATS)
    elif a.type == AttributeProto.STRING:
        a.s = rng.choice(ONNX_STRINGS)
    elif a.strings:
        a.strings[rng.randrange(len(a.strings))] = rng.choice(ONNX_STRINGS)
    elif a.type == AttributeProto.TENSOR and a.t.dims:
        a.t.dims[rng.randrange(len(a.t.dims))] = rng.choice(ONNX_DIMS)
    else:
        a.ints.append(rng.choice(ONNX_DIMS))
    return f"attribute {a.name} of {node.op_type} value changed"


def _mutate_onnx_model(m, rng):
    """Change one field of model m in place; returns a description."""
    from onnx import TensorProto

    g = m.graph
    how = rng.choice(("dims", "dims", "dtype", "data", "external", "op", "domain", "attr", "attr",
                      "attr", "edge", "edge", "nodes", "graph_io", "opset", "ir"))
    inits = list(g.initializer)
    node = rng.choice(g.node)
    if how == "dims":
        t = rng.choice(inits)
        k = rng.randrange(len(t.dims) + 1)
        if k == len(t.dims):
            t.dims.append(rng.choice(ONNX_DIMS))
        else:
            t.dims[k] = rng.choice(ONNX_DIMS)
        return f"initializer {t.name} dims -> {list(t.dims)}"
    if how == "dtype":
        t = rng.choice(inits)
        t.data_type = rng.choice(list(TensorProto.DataType.values()) + [99])
        return f"initializer {t.name} data_type -> {t.data_type}"
    if how == "data":
        t = rng.choice(inits)
        raw = t.raw_data
        t.raw_data = rng.choice((b"", raw[:-1], raw[: len(raw) // 2], raw + b"\0" * 8, raw * 2))
        return f"initializer {t.name} raw_data {len(raw)} -> {len(t.raw_data)} bytes"
    if how == "external":
        t = rng.choice(inits)
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
        del t.external_data[:]
        location = rng.choice(("/etc/passwd", "../../../../etc/passwd", "missing.bin",
                               "weights.bin", ".", ""))
        for key, value in (("location", location), ("offset", str(rng.choice((0, 8, -8, 2**62)))),
                           ("length", str(rng.choice((16, 4096, 2**40))))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return f"initializer {t.name} external -> {location}"
    if how == "op":
        old, node.op_type = node.op_type, rng.choice(ONNX_OPS)
        return f"node {old} -> {node.op_type}"
    if how == "domain":
        node.domain = rng.choice(("ai.onnx", "com.microsoft", "ai.onnx.ml", "custom"))
        return f"node {node.op_type} domain -> {node.domain}"
    if how == "attr" and node.attribute:
        return _mutate_attribute(node, rng)
    if how == "edge":
        values = [v.name for v in g.input] + [t.name for t in inits] + [o for n in g.node
                                                                        for o in n.output]
        edges = node.input if node.input and rng.random() < 0.6 else node.output
        new = rng.choice(values + ["", "undefined"])
        if edges and rng.random() < 0.8:
            k = rng.randrange(len(edges))
            old, edges[k] = edges[k], new
            return f"{node.op_type} edge {old!r} -> {new!r}"
        edges.append(new)
        return f"{node.op_type} gets extra edge {new!r}"
    if how == "nodes":
        k = rng.randrange(len(g.node))
        if rng.random() < 0.5:
            del g.node[k]
            return f"delete node {k}"
        g.node.insert(k, copy.deepcopy(g.node[k]))
        return f"duplicate node {k}"
    if how == "graph_io":
        v = rng.choice(list(g.input) + list(g.output))
        t = v.type.tensor_type
        if t.shape.dim and rng.random() < 0.6:
            d = rng.choice(t.shape.dim)
            if rng.random() < 0.5:
                d.dim_value = rng.choice(ONNX_DIMS[:9])
            else:
                d.dim_param = rng.choice(("N", "T", ""))
            return f"graph value {v.name} dims -> {[x.dim_value or x.dim_param for x in t.shape.dim]}"
        t.elem_type = rng.choice(list(TensorProto.DataType.values()))
        return f"graph value {v.name} elem_type -> {t.elem_type}"
    if how == "opset":
        m.opset_import[0].version = rng.choice((1, 6, 7, 9, 13, 17, 21, 22, 99, -1))
        return f"opset -> {m.opset_import[0].version}"
    m.ir_version = rng.choice((0, 1, 3, 4, 11, 12, 100))
    return f"ir_version -> {m.ir_version}"


def _proto(data, rng):
    import onnx

    m = onnx.ModelProto.FromString(data)
    descs = [_mutate_onnx_model(m, rng) for _ in range(rng.choice((1, 1, 2)))]
    return m.SerializeToString(), "; ".join(descs)


def _mutator(fmt, name):
    special = {"pickle": {"zip": _pickle_zip, "legacy": _pickle_legacy}.get(fmt),
               "members": _members, "proto": _proto,
               "header": {"safetensors": _header_safetensors, "frnn": _header_frnn}.get(fmt)}
    generic = {"truncate": _truncate, "flip": _flip, "runs": _runs, "splice": _splice}
    return generic.get(name) or special[name]


def fuzz_cases(seed, fmt, data, mutator):
    """[(label, mutated bytes)] of one group, the same on every run."""
    mutate = _mutator(fmt, mutator)
    out = []
    for i in range(CASES[mutator] * SCALE):
        blob, desc = mutate(data, random.Random(f"{seed}/{mutator}/{i}"))
        out.append((f"{seed} / {mutator} #{i} ({desc})", blob))
    return out


# ------------------------------------------------------------------------------------------------
# the worker: loads files through every public entry point, answers one JSON line per case
# ------------------------------------------------------------------------------------------------
def _exercise(obj, scratch):
    """One small valid call of a loaded model (typed errors allowed: the caller catches)."""
    import fastrnn

    if isinstance(obj, fastrnn.RecurrentLayer):
        x = np.full((3, 2, obj.input_size), 0.5, obj.dtype)
        obj(x.transpose(1, 0, 2) if obj.batch_first else x)
    elif isinstance(obj, fastrnn.Sequential):
        shape = (2, 3) if obj.batch_first else (3, 2)
        if obj.input is None:
            x = np.full(shape + (obj.rnns[0].input_size,), 0.5, obj.rnns[0].dtype)
        else:
            x = np.arange(6).reshape(shape) % obj.input.size
        obj(x, lengths=[3, 2])
    elif isinstance(obj, fastrnn.Generator):
        obj.generate_ids(np.array([1]) % obj.vocab_size, steps=3, greedy=True)
    elif isinstance(obj, fastrnn.Seq2Seq):
        obj.greedy_ids(np.array([1, 2]) % obj.source.size, max_len=3)
    elif hasattr(obj, "get_inputs"):  # an ONNX plan: run it, save it, run the reloaded plan
        feed = _onnx_feed(obj)
        if feed is not None:
            obj.run(None, feed)
        fastrnn.save(obj, scratch)
        reloaded = fastrnn.load(scratch)
        if feed is not None:
            reloaded.run(None, feed)


ONNX_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(float16)": np.float16}


def _onnx_feed(plan):
    """Inputs of the declared dtypes and fixed sizes (symbolic sizes 2), or None if too large."""
    feed = {}
    for arg in plan.get_inputs():
        shape = [d if type(d) is int else 2 for d in arg.shape]
        if any(d < 0 for d in shape) or np.prod(shape, dtype=float) > 1e5:
            return None
        feed[arg.name] = np.ones(shape, ONNX_TYPES.get(arg.type, np.float32))
    return feed


def _entry_points(loader, path):
    import converters
    import fastrnn
    from converters import torch_files
    from converters.torch_convert import inspect_torch

    scratch = path + ".saved.frnn"
    if loader == "torch":
        return {"from_torch": lambda: _exercise(converters.from_torch(path), scratch),
                "torch_files.load": lambda: torch_files.load(path),
                "torch_files.read_state_dict": lambda: torch_files.read_state_dict(path),
                "inspect_torch": lambda: inspect_torch(path)}
    if loader == "frnn":
        return {"fastrnn.load": lambda: _exercise(fastrnn.load(path), scratch),
                "fastrnn.load(mmap=False)": lambda: fastrnn.load(path, mmap=False),
                "fileformat.inspect": lambda: fastrnn.fileformat.inspect(path)}
    return {"from_onnx(path)": lambda: _exercise(converters.from_onnx(path), scratch),
            "from_onnx(bytes)": lambda: converters.from_onnx(Path(path).read_bytes())}


def _attempt(fn):
    """["ok"], ["typed", "Class: message"] or ["other", "Class: message at where"]."""
    from fastrnn.errors import FastRNNError

    try:
        fn()
        return ["ok"]
    except FastRNNError as e:
        return ["typed", f"{type(e).__name__}: {str(e)[:200]}"]
    except Exception as e:  # noqa: BLE001 - what the fuzz test exists to find
        frames = traceback.extract_tb(e.__traceback__)[-4:][::-1]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
        return ["other", f"{type(e).__name__}: {str(e)[:200]} at {where}"]


def _worker():
    import faulthandler
    import resource

    # converters registers the onnx_plan kind; from_onnx imports onnx: both before the limit
    for module in ("fastrnn", "converters", "converters.torch_convert", "onnx"):
        importlib.import_module(module)
    faulthandler.enable()  # a crash prints the Python stack to stderr
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, hard))
    answers = os.fdopen(os.dup(1), "w")  # the parent reads these; what loaders print goes to stderr
    os.dup2(2, 1)
    print("ready", file=answers, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        apis = _entry_points(req["loader"], req["path"])
        result = {api: _attempt(fn) for api, fn in apis.items()}
        Path(req["path"] + ".saved.frnn").unlink(missing_ok=True)
        print(json.dumps(result), file=answers, flush=True)


class Worker(WorkerProcess):
    """One case at a time, a hang or a crash reported and the worker restarted."""

    def __init__(self, log_path):
        super().__init__(__file__, log_path)

    def check(self, loader, path):
        """{entry point: outcome} for one file, or a string saying how the worker failed."""
        line = self.readline(CASE_TIMEOUT) if self.send({"loader": loader, "path": str(path)}) \
            else ""
        if line:
            return json.loads(line)
        return self.restart(line, CASE_TIMEOUT)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker") / "stderr.log")
    yield w
    w.close()


def _untyped(result):
    """Problems of one fuzz case: anything but loading or a typed error."""
    if isinstance(result, str):
        return [result]
    return [f"{api}: {outcome[1]}" for api, outcome in result.items() if outcome[0] == "other"]


def _unexpected(result, allowed):
    """Problems of one case whose every entry point must end in one of `allowed` ("ok" or an
    error class name)."""
    if isinstance(result, str):
        return [result]
    return [f"{api}: {' '.join(outcome)}" for api, outcome in result.items()
            if (outcome[1].split(":")[0] if len(outcome) > 1 else "ok") not in allowed]


def _run_cases(worker, folder, loader, suffix, cases, problems_of):
    """Check each (label, bytes) case; failing inputs are kept in folder, the others deleted."""
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 16)  # external data beside models
    failures = []
    for n, (label, blob) in enumerate(cases):
        path = folder / f"case{n}{suffix}"
        path.write_bytes(blob)
        problems = problems_of(worker.check(loader, path))
        if problems:
            failures.append(f"{label} [{path}]:\n    " + "\n    ".join(problems))
        else:
            path.unlink()
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:10])


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", list(SEEDS))
def test_seed_loads(worker, seeds, tmp_path, seed):
    """Each seed loads through every entry point (the whole module is refused): mutations start
    from a file the loaders accept, so they reach past the first check."""
    allowed = ("UnsafeFileError",) if seed == "rnn_module.pt" else ("ok",)
    _run_cases(worker, tmp_path, LOADER[SEEDS[seed]], Path(seed).suffix, [(seed, seeds[seed])],
               functools.partial(_unexpected, allowed=allowed))


@pytest.mark.parametrize("seed", list(SEEDS))
def test_seed_given_to_the_other_loaders(worker, seeds, tmp_path, seed):
    """A file given to another format's loader (.frnn to from_torch, a zip to from_onnx, ...)."""
    for loader in sorted(set(LOADER.values()) - {LOADER[SEEDS[seed]]}):
        cases = [(f"{seed} given to the {loader} loaders", seeds[seed])]
        _run_cases(worker, tmp_path, loader, Path(seed).suffix, cases, _untyped)


GROUPS = [(seed, mutator) for seed, fmt in SEEDS.items() for mutator in MUTATORS[fmt]]


@pytest.mark.parametrize("seed,mutator", GROUPS, ids=[f"{s}-{m}" for s, m in GROUPS])
def test_mutated_files_load_or_raise_typed_errors(worker, seeds, tmp_path, seed, mutator):
    fmt = SEEDS[seed]
    cases = fuzz_cases(seed, fmt, seeds[seed], mutator)
    _run_cases(worker, tmp_path, LOADER[fmt], Path(seed).suffix, cases, _untyped)


# ------------------------------------------------------------------------------------------------
# code-execution payloads
# ------------------------------------------------------------------------------------------------
class _Evil:
    """Pickles to a real os.system call (what torch.save of a malicious object writes)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Op(bytes):
    """A pickle fragment that pushes one value (embedded as is by _call)."""


def _global(module, name):
    return _Op(b"c" + f"{module}\n{name}\n".encode())


def _value(x):
    """A fragment as is, or x pickled with protocol 2 without memo opcodes."""
    if isinstance(x, _Op):
        return x
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.fast = True  # no memo: fragments are concatenated
    pickler.dump(x)
    return buf.getvalue()[2:-1]


def _call(fn, *args):
    """fn(*args) by REDUCE: fn a fragment, args fragments or plain values."""
    return _Op(fn + b"(" + b"".join(map(_value, args)) + b"tR")


def _items(key, value):
    """The list [(key, value)], value a fragment."""
    return _Op(b"]((" + _value(key) + value + b"te")


def _payloads(folder):
    """name -> (marker file, pickle bytes that create the marker when unpickled by pickle.loads)."""
    out = {}
    for i, (name, make) in enumerate(PAYLOADS.items()):
        marker = folder / f"MARKER_{i}"
        out[name] = marker, make(f"touch {marker}", f"open({str(marker)!r}, 'w').close()")
    return out


def _pickle(op):
    return b"\x80\x02" + op + b"."


PAYLOADS = {  # name -> (shell command, python code) -> pickle
    "os.system": lambda sh, py: _pickle(_call(_global("os", "system"), sh)),
    "posix.system": lambda sh, py: _pickle(_call(_global("posix", "system"), sh)),
    "builtins.eval": lambda sh, py: _pickle(_call(_global("builtins", "eval"), py)),
    "builtins.exec": lambda sh, py: _pickle(_call(_global("builtins", "exec"), py)),
    "subprocess.call": lambda sh, py: _pickle(_call(_global("subprocess", "call"), sh.split())),
    "getattr(__import__('os'), 'system')": lambda sh, py: _pickle(_call(_call(
        _global("builtins", "getattr"), _call(_global("builtins", "__import__"), "os"), "system"), sh)),
    "os.system inside an allowed call": lambda sh, py: _pickle(_call(
        _global("collections", "OrderedDict"), _items("weight", _call(_global("os", "system"), sh)))),
    "INST opcode": lambda sh, py: b"(S" + repr(sh).encode() + b"\nios\nsystem\n.",
    "OBJ opcode": lambda sh, py: b"(cos\nsystem\nS" + repr(sh).encode() + b"\no.",
    "__reduce__, protocol 0": lambda sh, py: pickle.dumps(_Evil(sh), protocol=0),
    "__reduce__, protocol 2": lambda sh, py: pickle.dumps(_Evil(sh), protocol=2),
    "__reduce__, protocol 5": lambda sh, py: pickle.dumps(_Evil(sh), protocol=5),
    "__reduce__ in a state dict": lambda sh, py: pickle.dumps(
        {"weight_ih_l0": np.zeros((4, 3), np.float32), "extra": _Evil(sh)}, protocol=2),
}


def _container(kind, pkl):
    """The payload as a torch zip's data.pkl, a legacy file's object pickle, or the whole file."""
    if kind == "zip":
        return _rezip([("archive/data.pkl", pkl), ("archive/byteorder", b"little"),
                       ("archive/version", b"3\n")])
    if kind == "legacy":
        head = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
        return b"".join(pickle.dumps(x, protocol=2) for x in head) + pkl + pickle.dumps([], 2)
    return pkl


def test_payloads_run_under_plain_pickle(tmp_path):
    """The control: unpickled by pickle.loads, every payload creates its marker file."""
    payloads = _payloads(tmp_path)
    for i, (_, pkl) in enumerate(payloads.values()):
        (tmp_path / f"{i}.pkl").write_bytes(pkl)
    code = ("import pickle, sys\nfor p in sys.argv[1:]:\n    try:\n"
            "        pickle.loads(open(p, 'rb').read())\n    except Exception:\n        pass")
    subprocess.run([sys.executable, "-c", code, *(f"{i}.pkl" for i in range(len(payloads)))],
                   cwd=tmp_path, timeout=300, capture_output=True)
    missing = [name for name, (marker, _) in payloads.items() if not marker.exists()]
    assert not missing, f"payloads that did not run under plain pickle: {missing}"


@pytest.mark.parametrize("container", ["zip", "legacy", "raw"])
def test_code_execution_payloads_are_refused(worker, tmp_path, container):
    """Every torch entry point refuses each payload with UnsafeFileError (a protocol 0 pickle
    as the whole file is not taken for a checkpoint: FormatError), and no marker file appears."""
    payloads = _payloads(tmp_path)
    cases = [(f"{name} in {container}", _container(container, pkl))
             for name, (_, pkl) in payloads.items()]
    allowed = ("UnsafeFileError", "FormatError") if container == "raw" else ("UnsafeFileError",)
    _run_cases(worker, tmp_path, "torch", ".pt", cases, functools.partial(_unexpected, allowed=allowed))
    executed = [name for name, (marker, _) in payloads.items() if marker.exists()]
    assert not executed, f"payloads that ran code: {executed}"


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
