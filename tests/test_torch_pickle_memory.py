"""converters.torch_files: the Python objects a checkpoint's pickle makes are bounded in all.

Single opcodes make far more than their own bytes (a memo entry 119 bytes of one, an empty dict
72, an int 40 of three), so a crafted pickle of 256 MB made tens of GB. Each opcode is now charged
what it makes against MAX_MADE_BYTES + MAX_MADE_RATIO * the pickle's size: every family below is
refused past the (lowered) budget with a FormatError naming the file, having made no more than the
budget, and still loads below it; real torch checkpoints charge a small part of the default
budget; and the process's peak RSS follows the budget at a realistic scale.
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from converters import torch_files as tf
from converters.torch_files import unpickler
from fastrnn.errors import FormatError

try:
    from tests.test_torch_files import _zip_with_pickle
except ImportError:  # tests/ is on sys.path under pytest's default import mode
    from test_torch_files import _zip_with_pickle

_OVER = "bytes of Python objects"
_CAP = 1 << 20  # the lowered budget of the tests that refuse
P2, P4, P5 = b"\x80\x02", b"\x80\x04", b"\x80\x05"


def _ints(fmt, op, start, n):
    return b"".join(op + struct.pack(fmt, start + i) for i in range(n))


def _strs(n, then=b""):
    return b"".join(b"\x8c\x08" + b"%08x" % i + then for i in range(n))


def _c(module, name):
    return b"c" + module + b"\n" + name + b"\n"


# (id, pickle of n units, n that makes about 4 MiB of objects): each family repeated as a crafted
# file would repeat it, inside a list where it pushes values
_FAMILIES = [
    ("MEMOIZE", lambda n: P4 + b"N" + b"\x94" * n + b".", 32_000),
    ("LONG_BINPUT", lambda n: P2 + b"N" + _ints("<I", b"r", 0, n) + b".", 32_000),
    ("PUT", lambda n: P2 + b"N" + b"".join(b"p%d\n" % i for i in range(n)) + b".", 32_000),
    ("MARK", lambda n: P2 + b"(" * n + b"N.", 48_000),
    ("EMPTY_DICT", lambda n: P2 + b"(" + b"}" * n + b"l.", 48_000),
    ("EMPTY_LIST+MEMOIZE", lambda n: P4 + b"(" + b"]\x94" * n + b"l.", 20_000),
    ("TUPLE1", lambda n: P2 + b"(" + b"N\x85" * n + b"l.", 44_000),
    ("TUPLE3", lambda n: P2 + b"(" + b"NNN\x87" * n + b"l.", 30_000),
    ("MARK+TUPLE", lambda n: P2 + b"(" + b"(Nt" * n + b"l.", 24_000),
    ("NONE", lambda n: P2 + b"(" + b"N" * n + b"l.", 180_000),
    ("BINGET", lambda n: P2 + b"(Nq\x00" + b"h\x00" * n + b"l.", 180_000),
    ("APPEND", lambda n: P2 + b"]" + b"Na" * n + b".", 180_000),
    ("BININT2", lambda n: P2 + b"(" + _ints("<H", b"M", 300, n) + b"l.", 60_000),
    ("BININT", lambda n: P2 + b"(" + _ints("<i", b"J", 70_000, n) + b"l.", 75_000),
    ("LONG1", lambda n: P2 + b"(" + _ints("<q", b"\x8a\x08", 1 << 62, n) + b"l.", 30_000),
    ("BINFLOAT", lambda n: P2 + b"(" + _ints(">d", b"G", 0, n) + b"l.", 75_000),
    ("SHORT_BINUNICODE+MEMOIZE", lambda n: P4 + b"(" + _strs(n, b"\x94") + b"l.", 15_000),
    ("SETITEMS", lambda n: P2 + b"}(" + b"".join(b"J" + struct.pack("<i", i) + b"N"
                                                 for i in range(n)) + b"u.", 20_000),
    ("dicts of one item", lambda n: P2 + b"(" + b"}(K\x01K\x02u" * n + b"l.", 5_000),
    ("ADDITEMS", lambda n: P4 + b"\x8f(" + _ints("<i", b"J", 0, n) + b"\x90.", 20_000),
    ("FROZENSET", lambda n: P4 + b"(" + b"((K\x01\x91" * n + b"l.", 6_000),
    ("GLOBAL", lambda n: P2 + b"(" + _c(b"argparse", b"Namespace") * n + b"l.", 24_000),
    # a long name kept by each stand-in class, passed again and again through memo references
    ("STACK_GLOBAL", lambda n: P4 + b"\x8c\x09omegaconf\x94X" + struct.pack("<I", 10_000)
     + b"x" * 10_000 + b"\x94(" + b"h\x00h\x01\x93" * n + b"l.", 400),
    ("REDUCE", lambda n: P2 + _c(b"argparse", b"Namespace") + b"q\x00)q\x01("
     + b"h\x00h\x01R" * n + b"l.", 16_000),
    ("BUILD", lambda n: P2 + _c(b"collections", b"OrderedDict") + b"q\x00)q\x01}q\x02("
     + b"h\x00h\x01Rh\x02b" * n + b"l.", 6_000),
    ("READONLY_BUFFER", lambda n: P5 + b"\x96" + struct.pack("<Q", 1) + b"x\x94("
     + b"h\x00\x98" * n + b"l.", 16_000),
    # one str whose character past U+FFFF takes 4 bytes for each of its others: refused before
    # it is made (its bytes are charged 5 times, then what the str took)
    ("BINUNICODE", lambda n: P4 + b"X" + struct.pack("<I", 100 * n + 4) + b"a" * 100 * n
     + "\U0001F600".encode() + b".", 4_000),
]


@pytest.mark.parametrize("make,n", [f[1:] for f in _FAMILIES], ids=[f[0] for f in _FAMILIES])
def test_each_opcode_family_is_charged_what_it_makes(tmp_path, monkeypatch, make, n):
    """Before, none of these was charged: 4 MiB of objects of each from pickles of 10 to 700 KB,
    and 256 MB of pickle made 1 to 30 GB (MEMOIZE: 32 MB made 2.9 GiB of RSS). Against a budget of 1 MiB each is refused with a
    FormatError that names the file, and made at most the budget (beside the pickle's own bytes and
    one 64 KiB lump of charges); a tenth of it still loads."""
    monkeypatch.setattr(unpickler, "MAX_MADE_BYTES", _CAP)
    monkeypatch.setattr(unpickler, "MAX_MADE_RATIO", 0)
    path = tmp_path / "m.pt"
    pkl = make(n)
    _zip_with_pickle(path, pkl)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=_OVER) as err:
            tf.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value) and "expected tensors and plain containers" in str(err.value)
    assert peak < _CAP + 2 * len(pkl) + (256 << 10)
    _zip_with_pickle(path, make(n // 10))
    tf.load(path)


def test_global_names_count_as_call_arguments(tmp_path):
    """A stand-in class keeps its full name: STACK_GLOBAL of one 100 KB str passed 2,000 times
    through memo references made 200 MB from a 110 KB pickle. The names count with the calls'
    arguments, against 8 times the pickle's size and 2 MiB."""
    path = tmp_path / "g.pt"
    name = b"X" + struct.pack("<I", 100_000) + b"x" * 100_000
    _zip_with_pickle(path, P4 + b"\x8c\x09omegaconf\x94" + name + b"\x94("
                     + b"h\x00h\x01\x93" * 2000 + b"l.")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="bytes of call arguments"):
            tf.load(path)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    _zip_with_pickle(path, P4 + b"\x8c\x09omegaconf\x94" + name + b"\x94("
                     + b"h\x00h\x01\x93" * 5 + b"l.")
    assert len(tf.load(path)) == 5


def test_the_budget_grows_with_the_pickle(tmp_path, monkeypatch):
    """MAX_MADE_RATIO bytes of objects for each byte of pickle, beside MAX_MADE_BYTES: 80,000
    memo entries (10 MB charged) from 80 KB are refused in a pickle of 180 KB (a budget of 2.5
    MB), and read in one of 1.3 MB (11.3 MB), padded with PROTO opcodes (which make nothing)."""
    monkeypatch.setattr(unpickler, "MAX_MADE_BYTES", _CAP)
    path = tmp_path / "m.pt"
    for pad, fits in ((50_000, False), (600_000, True)):
        pkl = P4 + b"N" + b"\x94" * 80_000 + P4 * pad + b"."
        _zip_with_pickle(path, pkl)
        if fits:
            assert tf.load(path) is None
        else:
            with pytest.raises(FormatError, match=f"makes more than {_CAP + 8 * len(pkl)} "):
                tf.load(path)


def test_the_pickles_of_a_legacy_file_share_one_budget(tmp_path, monkeypatch):
    """A legacy file is five pickles whose values live together (its sys_info beside its object):
    each made 60% of the budget, and together they are refused."""
    monkeypatch.setattr(unpickler, "MAX_MADE_BYTES", _CAP)
    monkeypatch.setattr(unpickler, "MAX_MADE_RATIO", 0)
    dicts = P2 + b"(" + b"}" * 7000 + b"l."  # 600 KiB charged
    path = tmp_path / "l.pt"
    with open(path, "wb") as f:
        for part in (tf.LEGACY_MAGIC, tf.LEGACY_PROTOCOL):
            f.write(pickle.dumps(part, protocol=2))
        f.write(dicts + dicts + pickle.dumps([], protocol=2))  # sys_info, the object, no storage
    with pytest.raises(FormatError, match=_OVER):
        tf.load(path)
    path.write_bytes(path.read_bytes().replace(dicts, pickle.dumps({}, protocol=2), 1))
    assert len(tf.load(path)) == 7000


# ------------------------------------------------------------------------------------------------
# real checkpoints charge a small part of the default budget
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="checking files written by torch.save needs torch")


def _charged(monkeypatch):
    """The bytes each read of a pickle charged, as it ends."""
    charged = []
    load = unpickler._RestrictedUnpickler.load

    def counted(self):
        try:
            return load(self)
        finally:
            charged.append(self._made)

    monkeypatch.setattr(unpickler._RestrictedUnpickler, "load", counted)
    return charged


def _pickle_size(path):
    import zipfile

    if not zipfile.is_zipfile(path):
        return os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        return next(i.file_size for i in z.infolist() if i.filename.endswith("data.pkl"))


@pytest.mark.parametrize("protocol,zip_format", [(2, True), (4, True), (2, False)],
                         ids=["zip-2", "zip-4", "legacy-2"])
def test_real_checkpoints_charge_a_small_part_of_the_budget(torch, tmp_path, monkeypatch,
                                                            protocol, zip_format):
    """A state dict of 1,000 tensors and a training checkpoint (model, Adam state, scheduler,
    history lists, numpy arrays, a vocabulary) charge 24 to 74 bytes a byte of pickle (a tensor
    4.6 KB), 5 and 21 MB: a fiftieth of the default budget at most."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(500)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    sd = model.state_dict()
    ckpt = {"epoch": 3, "state_dict": sd, "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [{"last_epoch": 3, "base_lrs": [1e-3], "_last_lr": [1e-4]}],
            "history": {"loss": [i / 7 for i in range(20_000)], "step": list(range(20_000))},
            "stats": np.arange(3000, dtype=np.float32).reshape(30, 100),
            "vocab": {f"w{i}": i for i in range(5000)}}
    for obj in (sd, ckpt):
        path = tmp_path / "c.pt"
        torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
        charged = _charged(monkeypatch)
        got = tf.load(path)
        made = charged[-1]  # a legacy file's pickles share one count
        assert made < (unpickler.MAX_MADE_BYTES + unpickler.MAX_MADE_RATIO * _pickle_size(path)) / 50
        assert made < 80 * _pickle_size(path)
        state = got if obj is sd else got["state_dict"]
        np.testing.assert_array_equal(state["499.weight"], sd["499.weight"].numpy())
        monkeypatch.undo()
    assert got["history"]["loss"][7] == 1.0 and got["vocab"]["w4999"] == 4999
    assert len(got["optimizer_states"][0]["state"]) == 1000
    np.testing.assert_array_equal(got["stats"], ckpt["stats"])


# ------------------------------------------------------------------------------------------------
# the process's memory at a realistic scale
# ------------------------------------------------------------------------------------------------
_RSS_SCRIPT = r"""
import sys
from converters.torch_files import unpickler
from fastrnn.errors import FormatError

unpickler.MAX_MADE_BYTES, unpickler.MAX_MADE_RATIO = 64 << 20, 0


def rss():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]) << 10, int(fields["VmHWM"].split()[0]) << 10


data = b"\x80\x04N" + b"\x94" * int(sys.argv[1]) + b"."
try:
    with open("/proc/self/clear_refs", "w") as f:  # the peak from here on (Linux 4.0+)
        f.write("5")
except OSError:
    pass
before = rss()[0]
try:
    unpickler._unpickle(data, "m.pkl")
    refused = False
except FormatError:
    refused = True
print(refused, rss()[1] - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/self/status")
def test_peak_rss_follows_the_budget():
    """2,000,000 memo entries from a 2 MB pickle make 190 MB (91 bytes of RSS a byte); against a
    budget of 64 MiB the reader is refused having grown by at most that, and 300,000 entries
    (36 MB) load: the charge for them (51 MB) is within twice what they take."""
    def run(n):
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n)], capture_output=True,
                             text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                             timeout=60, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    refused, grown = run(2_000_000)
    assert refused and grown < (64 << 20) + (16 << 20)
    refused, grown = run(400_000)
    assert not refused and grown > 400_000 * 128 / 2
