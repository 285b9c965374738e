"""The benchmark cases of issue 5 (and a few shapes beyond its grid) and the hardware floor each one
is measured against.

Floor model
-----------
At batch 1, with the input projection hoisted into one GEMM before the time loop, every step is a
matrix-vector product with the recurrent weights R (gates*H x H, fp32): 2 FLOP per 4 bytes, so a
step cannot run faster than R can be read from the cache level it lives in. Per case:

    memory  = sum_l (steps * |R_l| + |W_l|) / (threads * bandwidth of level_l)
              (W_l read once by the hoisted GEMM; the layers run one after another)
    level_l = the smallest cache level that holds |R_l|: split evenly over the case's threads
              for a private level (L1, L2: each core keeps its own slice), whole for a shared
              one (L3); else DRAM. A bidirectional layer's directions may run one after
              another (one thread) or each on a core of its own (two): a core then holds one
              direction's half of R_l at least, and its split is over max(threads, 2)
    memory  = sum_l (|W_l| + |R_l|) / (threads * bandwidth of the level holding all of them)
              (a streaming step: every layer each step, nothing to hoist)
    compute = FLOPs / (threads * single-core product rate),  FLOPs = 2 * steps * N * #weights
              (|R_l| and |W_l| count every direction; an LSTM projection's P x H matrix is in R_l)
    floor   = max(memory, compute)

The bandwidths and the product rate are measured once per run by `probe()`, not hard-coded, and
always as the best a core reached, so that the floor stays a lower bound: each level's read
bandwidth is the fastest of vectorised numba loops over one stream and over four interleaved streams
(as a matrix-vector product reads them) at several working-set sizes inside the level, each read
from a 64-byte boundary and 16 bytes past one (READ_OFFSETS); the product rate the faster of numpy's
float32 matmul at a few sizes and fastrnn's own register tiles on operands that stay in cache, its
weights 64-byte aligned as a layer's are (numpy's BLAS may not use the core's widest vectors; a
floor from its rate alone was beaten by 75 % on a Zen 5). Scaling them by the thread count assumes
each core reads its own slice at full speed, so the floor is optimistic for L3/DRAM-bound cases. The
memory term governs batch 1; the compute term governs batch 64, where each step is a GEMM.
"""
import functools
import json
import re
import time
from dataclasses import asdict, dataclass, replace

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
STEPS = 100
CHECK_STEPS = 8          # steps a streaming case runs for the cross-engine output check


@dataclass(frozen=True)
class Case:
    mode: str            # "LSTM", "GRU" or "RNN"
    hidden: int
    input: int
    batch: int = 1
    threads: int = 1
    layers: int = 1
    stream: bool = False  # True: one step (T=1) with the state carried between calls
    bidirectional: bool = False
    proj: int = 0        # LSTM proj_size (0: none)
    length: int = STEPS  # T of a sequence case

    @property
    def steps(self) -> int:
        return 1 if self.stream else self.length

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden_out(self) -> int:
        return self.proj or self.hidden

    @property
    def id(self) -> str:
        layers = f"-{self.layers}layer" if self.layers > 1 else ""
        bi = "-bi" if self.bidirectional else ""
        shape = "step" if self.stream else f"b{self.batch}"
        proj = f"-p{self.proj}" if self.proj else ""
        length = f"-T{self.length}" if self.length != STEPS and not self.stream else ""
        return (f"{self.mode.lower()}{layers}{bi}-{shape}-h{self.hidden}{proj}{length}"
                f"-t{self.threads}")

    def layer_inputs(self):
        return [self.input] + [self.directions * self.hidden_out] * (self.layers - 1)

    def layer_weight_bytes(self, itemsize: int = 4) -> list[tuple[int, int]]:
        """(bytes of W_l, bytes of R_l) of each layer, every direction, at `itemsize` bytes a
        weight (fp32: 4); R_l counts what a step reads: with a projection, the gates' R
        (G*H x P) and the projection (P x H)."""
        g, h, p, d = GATES[self.mode], self.hidden, self.hidden_out, self.directions
        step = g * h * p + (p * h if self.proj else 0)
        return [(itemsize * d * g * h * i, itemsize * d * step) for i in self.layer_inputs()]

    def weight_bytes(self, itemsize: int = 4):
        """(bytes of all W_l, bytes of all R_l) at `itemsize` bytes a weight."""
        per_layer = self.layer_weight_bytes(itemsize)
        return sum(w for w, _ in per_layer), sum(r for _, r in per_layer)

    def flops(self) -> int:
        """A multiply-add (2 FLOP) per weight (4 bytes), row and step."""
        return 2 * self.steps * self.batch * sum(self.weight_bytes()) // 4


def _input_for(hidden):
    return 64 if hidden < 512 else 256


def all_cases() -> list[Case]:
    cases = [Case(mode, h, _input_for(h), threads=t)
             for mode in ("LSTM", "GRU") for h in (64, 128, 256, 512, 1024) for t in (1, 2)]
    cases += [Case("LSTM", 256, 64, layers=2, threads=t) for t in (1, 2)]
    cases += [Case(mode, 256, 64, batch=64, threads=2) for mode in ("LSTM", "GRU")]
    cases += [Case(mode, h, _input_for(h), stream=True)
              for mode in ("LSTM", "GRU") for h in (128, 256, 512)]
    return cases


def extra_cases() -> list[Case]:
    """Shapes beyond issue 5's grid that real models have (`compare.py --extra`): bidirectional
    and stacked bidirectional layers, batches of 3-32, an LSTM projection, Elman RNNs, a long
    sequence, a hidden size that is not a whole number of 32-unit panels."""
    return [Case("LSTM", 128, 64, threads=t, bidirectional=True) for t in (1, 2)] + [
        Case("GRU", 256, 64, threads=2, layers=2, bidirectional=True),
        Case("LSTM", 256, 64, batch=3),
        Case("LSTM", 256, 64, batch=5),
        Case("GRU", 256, 64, batch=5),
        Case("LSTM", 128, 64, batch=6, threads=2),
        Case("GRU", 128, 64, batch=8, threads=1),
        Case("GRU", 128, 64, batch=8, threads=2),
        Case("LSTM", 256, 64, batch=16, threads=2),
        Case("LSTM", 256, 64, proj=128),
        Case("LSTM", 128, 64, length=1000),
        Case("RNN", 256, 64),
        Case("RNN", 256, 64, batch=32, threads=2),
        Case("LSTM", 100, 64),
        Case("LSTM", 100, 64, batch=4),
        Case("LSTM", 100, 64, batch=32, threads=2)]


CASES = {case.id: case for case in all_cases()}
EXTRA_CASES = {case.id: case for case in extra_cases()}
_ID = re.compile(r"(lstm|gru|rnn)(?:-(\d+)layer)?(-bi)?-(?:b(\d+)|(step))-h(\d+)(?:-p(\d+))?"
                 r"(?:-T(\d+))?-t(\d+)")


def by_id(case_id: str) -> Case:
    """The case an id names: one of CASES or EXTRA_CASES, or a shape of theirs at another thread
    count (the runner's --threads makes those)."""
    m = _ID.fullmatch(case_id)
    if not m:
        raise ValueError(f"not a case id: {case_id!r}")
    mode, layers, bi, batch, step, hidden, proj, length, threads = m.groups()
    hidden, proj = int(hidden), int(proj or 0)
    if ((proj and (mode != "lstm" or proj >= hidden)) or (step and (bi or length))
            or int(length or 1) < 1):
        raise ValueError(f"not a case id: {case_id!r} (a projection is an LSTM's, smaller than "
                         f"its hidden size; a streaming step is unidirectional, T = 1; T >= 1)")
    return Case(mode.upper(), hidden, _input_for(hidden), batch=int(batch or 1),
                threads=int(threads), layers=int(layers or 1), stream=step is not None,
                bidirectional=bi is not None, proj=proj, length=int(length or STEPS))


def at_threads(cases, counts) -> list[Case]:
    """Each case's shape at each thread count of `counts`, without repeats, in the cases' order."""
    out = {}
    for case in cases:
        for t in counts:
            c = replace(case, threads=t)
            out.setdefault(c.id, c)
    return list(out.values())


def select(patterns, pool: dict) -> list[Case]:
    """Cases of `pool` (CASES or EXTRA_CASES) whose id contains any of the patterns (shell
    wildcards allowed); all of them when there are none."""
    from fnmatch import fnmatch
    pool = list(pool.values())
    if not patterns:
        return pool
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    return [c for c in pool if any(fnmatch(c.id, g) for g in globs)]


# ----- the floor -----

def cache_levels() -> list[dict]:
    """cpu0's data cache levels (fastrnn.cpu_caches), imported on use: the peers' processes
    import this module and should not load fastrnn."""
    from fastrnn.cpu_caches import cache_levels as read

    return read()


# Byte offsets from a 64-byte boundary at which the probe reads each size: where an array starts
# moves a core's read rate (a Zen 5: 24 KiB from L1 at ~500 GB/s aligned, ~270 at 16-48 bytes
# past; 256 KiB from L2 at ~200 aligned, ~245 past), and numpy's allocations start anywhere, so
# the figures changed from run to run. The probe keeps the faster.
READ_OFFSETS = (0, 16)


def aligned_ones(size: int, offset: int = 0):
    """A float32 array of `size` ones whose data starts `offset` bytes (a multiple of 4 below
    64) past a 64-byte boundary."""
    import numpy as np

    from fastrnn.recurrent import aligned

    ones = aligned(size + 16, np.float32)[offset // 4:offset // 4 + size]
    ones.fill(1)
    return ones


def probe() -> dict:
    """Single-core read bandwidth (GB/s) of each cache level and DRAM, and the float32
    multiply-add rate (GFLOP/s, `sgemm_gflops`: the faster of numpy's sgemm and fastrnn's tiles).

    Run it in a process of its own with BLAS limited to one thread (compare.py does).
    """
    import numba
    import numpy as np

    @numba.njit(fastmath=True, error_model="numpy")
    def read_one(a, reps):
        s = np.float32(0)
        for _ in range(reps):
            for i in range(a.size):
                s += a[i]
        return s

    @numba.njit(fastmath=True, error_model="numpy")
    def read_four(a, reps):
        quarter = a.size // 4
        s0 = s1 = s2 = s3 = np.float32(0)
        for _ in range(reps):
            for i in range(quarter):
                s0 += a[i]
                s1 += a[quarter + i]
                s2 += a[2 * quarter + i]
                s3 += a[3 * quarter + i]
        return s0 + s1 + s2 + s3

    def gbps(nbytes):
        rates = []
        for offset in READ_OFFSETS:
            a = aligned_ones(max(nbytes, 4096) // 4, offset)
            reps = max(1, (256 << 20) // a.nbytes)
            rates += [a.nbytes * reps / _best_of(lambda: read(a, reps)) / 1e9
                      for read in (read_one, read_four)]
        return max(rates)

    levels = cache_levels()
    dram = dict(name="DRAM", size=None, private=False)
    below = 0
    for level in levels:  # sizes between the level below and this one
        sizes = [size for size in (below * 2, level["size"] // 4, level["size"] // 2) if size]
        level["gbps"] = max(gbps(size) for size in sizes)
        below = level["size"]
    dram["gbps"] = gbps(4 * levels[-1]["size"])

    def sgemm(n):
        x, y = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
        return 2 * n ** 3 / _best_of(lambda: x @ y) / 1e9

    blas = max(sgemm(n) for n in (256, 512, 1024))
    tiles = max(packed_product_gflops(m, k, n) for m, k, n in ((64, 256, 128), (96, 256, 256)))
    return dict(levels=levels + [dram], sgemm_gflops=max(blas, tiles),
                sgemm_sources=dict(numpy=blas, fastrnn_tiles=tiles))


def packed_product_gflops(m: int, k: int, n: int) -> float:
    """GFLOP/s of fastrnn's register-tiled product (kernels/gemm.py) of an (m, k) by a packed
    (k, n) matrix, both small enough to stay in L1/L2, repeated: the probe's other witness of the
    core's multiply-add rate, since numpy's BLAS does not always use the widest vectors a core
    has (on a Zen 5, OpenBLAS and MKL reached 115-129 GFLOP/s a core where these tiles reach
    ~260, and fastrnn's batch-64 LSTM ran at 175 % of a floor taken from numpy's rate)."""
    import numpy as np

    from fastrnn.kernels.gemm import pack_gates

    products = _packed_products()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k), dtype=np.float32)
    bias = np.zeros(n, np.float32)
    out = aligned_ones(m * n).reshape(m, n)
    bp = aligned_ones(n * k)
    bp[:] = pack_gates(b, 1)  # on a 64-byte boundary, as a layer's packed weights are
    reps = max(1, int(1e9 / (2 * m * k * n)))
    products(a, bp, bias, out, 1)
    if not np.allclose(out, a @ b.T, rtol=1e-4, atol=1e-3):
        raise RuntimeError("fastrnn's packed product disagrees with numpy's")
    return 2 * m * k * n * reps / _best_of(lambda: products(a, bp, bias, out, reps)) / 1e9


@functools.lru_cache(maxsize=None)
def _packed_products():
    """products(a, bp, bias, out, reps): `reps` times out = bias + a @ B through gemm_gates,
    compiled once for every shape the probe times."""
    import numba

    from fastrnn.kernels.gemm import gemm_gates

    @numba.njit(fastmath=True, error_model="numpy")
    def products(a, bp, bias, out, reps):
        for _ in range(reps):
            gemm_gates(a, 0, a.shape[0], a.shape[1], bp, 1, 0, 1, 0, out.shape[1], out.shape[1],
                       bias, out, False)

    return products


def _best_of(fn, runs=7) -> float:
    """The fastest of `runs` timed calls of fn, after one untimed."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floor(case: Case, machine: dict, itemsize: int = 4) -> dict:
    """The case's floor (seconds) and the level its weights live in, from probe()'s figures,
    for weights of `itemsize` bytes (fp32: 4; fastrnn's float16 weights: 2; the arithmetic and
    so the compute term stay float32). A sequence runs its layers one after another (every
    engine compared does), so each layer's weights need to fit a level only while that layer
    runs; a streaming step runs every layer at each step, so the level must hold them all."""
    parts = [case.weight_bytes(itemsize)] if case.stream else case.layer_weight_bytes(itemsize)
    memory, names = 0.0, []
    for w, r in parts:
        level = _level_holding(r + (w if case.stream else 0),
                               max(case.threads, case.directions), machine["levels"])
        moved = w + r if case.stream else case.steps * r + w
        memory += moved / (case.threads * level["gbps"] * 1e9)
        if level["name"] not in names:
            names.append(level["name"])
    compute = case.flops() / (case.threads * machine["sgemm_gflops"] * 1e9)
    return dict(seconds=max(memory, compute), level="+".join(names),
                bound="memory" if memory >= compute else "compute")


def _level_holding(resident: int, threads: int, levels: list[dict]) -> dict:
    """The smallest cache level that holds `resident` bytes (split over the threads where the
    level is private to a core); DRAM (the last) when none does."""
    for lv in levels[:-1]:
        if (resident / threads if lv["private"] else resident) <= lv["size"]:
            return lv
    return levels[-1]


if __name__ == "__main__":
    machine = probe()
    print(json.dumps(machine, indent=1))
    for case in CASES.values():
        f = floor(case, machine)
        print(f"{case.id:26s} {f['seconds'] * 1e6:10.1f} us  {f['level']:4s} {f['bound']}  "
              f"{json.dumps(asdict(case))}")
