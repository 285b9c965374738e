"""Register-tile micro-kernels written as LLVM IR (numba intrinsics), for the products in gemm.py.

numba cannot express "keep these 8 vectors in registers while k runs": its loop vectoriser turns a
dot product into a reduction over k (one horizontal sum per output: half the time at K = 64), and
its SLP vectoriser is off. So the tile is built directly in IR: `mr` rows of A times `ncols`
columns of packed B, accumulators as <64-byte vector> phi nodes, one broadcast of a[r, k] and
`llvm.fmuladd` per vector per k. LLVM lowers the vector type to whatever the target has (zmm on
AVX-512, two ymm on AVX2, NEON quads), so the code stays portable.

B is packed in panels of PANEL columns (gemm.pack_gates): a panel holds K rows of PANEL
consecutive columns, row after row, so each vector of a tile streams contiguously over k.
`tile_ahead` runs a one-row tile and an AHEAD-row, one-vector product of other weights in one
loop over k (steps.py: a step's recurrent product carrying a later block's input projection).
"""
import functools

from llvmlite import ir
from numba import types
from numba.core import errors
from numba.extending import intrinsic

PANEL = 32
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _vector_registers() -> tuple[int, int]:
    """The target's vector registers: (how many, bytes each). 32 zmm with AVX-512, 16 ymm with
    AVX/AVX2, 32 NEON quads, 16 xmm otherwise."""
    import llvmlite.binding as llvm
    import numba

    # NUMBA_CPU_NAME=generic (a portable cache) sets the features to "": not the host's
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features:
        return 32, 64
    if "+avx" in features:
        return 16, 32
    if llvm.get_process_triple().startswith(("aarch64", "arm64")):
        return 32, 16
    return 16, 16


def _cpu_name() -> str:
    """The CPU numba compiles for: NUMBA_CPU_NAME where set, else the host's (LLVM's name)."""
    import llvmlite.binding as llvm
    import numba

    return numba.config.CPU_NAME or llvm.get_host_cpu_name()


REGISTERS = _vector_registers()
# How many 64-byte vectors the register file holds (32 with AVX-512, 8 with AVX2 or NEON).
VECTOR_BUDGET = REGISTERS[0] * REGISTERS[1] // 64
# Whether one-row steps carry a later block's input projection (tile_ahead) by default. Its 16
# accumulators beside the product's need 32 vector registers. Cores that run 512-bit
# multiply-adds at full width (Zen 5) project the whole input up front at ~260 GFLOP/s a core,
# which cost less than carrying it: one thread 0-15 % faster, two threads within 3 % either way.
CARRY_PROJECTION = VECTOR_BUDGET >= 32 and _cpu_name() not in {"znver5"}


def _fits(rows, nvec, registers):
    """Whether a pass of `rows` rows by `nvec` 64-byte vectors keeps its accumulators in
    registers: rows * nvec of them, plus the nvec weight vectors when several rows share each
    load (one row folds its load into the FMA), plus a broadcast and a spare."""
    count, width = registers
    return 64 // width * (rows * nvec + (nvec if rows > 1 else 0)) + 2 <= count


def _row_tile(registers):
    """Rows of the tallest tile the multi-row products use: the most rows that share each
    weight vector in one pass, at most 8 (AVX-512: 8 rows by a panel in one pass; AVX2: 6 rows,
    12 ymm accumulators, where 8-row tiles ran as four passes of 8 accumulators each: a
    batch-64 LSTM step's product 77 -> 88 GFLOP/s on one Zen 3 core)."""
    rows = 8
    while rows > 1 and not _fits(rows, 1, registers):
        rows -= 1
    return rows


ROW_TILE = _row_tile(REGISTERS)


@functools.lru_cache(maxsize=None)
def tile(mr: int, ncols: int, registers: tuple[int, int] = REGISTERS):
    """An intrinsic tile(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo,
    cstride) computing, for r < mr and j < ncols (a multiple of PANEL):
        out[out_off + r*ldo + C(j)] = bias[bias_off + C(j)] + sum_k a[a_off + r*lda + k] * B(k, j)
    where B(k, j) = b[b_off + (j // PANEL)*pstride + k*PANEL + j % PANEL] and
    C(j) = (j // PANEL)*cstride + j % PANEL: the tile's panels are pstride apart in b and cstride
    columns apart in out and bias (consecutive panels: pstride = k_len*PANEL, cstride = PANEL;
    the same block of units of every gate: both strides one gate further). Every array is
    C-contiguous (offsets are flat element offsets); the caller keeps every index in bounds.
    Weights b are of a's dtype, or, for float32, IEEE float16 bit patterns in a uint16 array
    (numba has no float16 arrays), widened as they load: half the bytes per weight streamed.

    A tile whose accumulators would not fit the target's `registers` (count, bytes; see _passes)
    runs as several passes over k, each on a block of rows and vectors that fits: spilling
    accumulators to the stack costs more than streaming B twice."""
    if ncols % PANEL:
        raise ValueError(f"tile width {ncols} is not a multiple of {PANEL}")

    @intrinsic
    def _tile(typingctx, a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
              ldo, cstride):
        _check_operands(a, b, bias, out)
        sig = types.void(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
                         ldo, cstride)
        return sig, functools.partial(_codegen, mr, ncols, registers)

    return _tile


def _check_operands(a, b, bias, out):
    if any(not isinstance(t, types.Array) or t.layout != "C" for t in (a, b, bias, out)):
        raise errors.TypingError("tile needs C-contiguous arrays")
    if len({a.dtype, bias.dtype, out.dtype}) != 1 or a.dtype not in (types.float32,
                                                                    types.float64):
        raise errors.TypingError("tile needs float32 or float64 a, bias and out of one dtype")
    if b.dtype != a.dtype and not (b.dtype == types.uint16 and a.dtype == types.float32):
        raise errors.TypingError("tile's weights are the dtype of a, or float16 bits "
                                 "(uint16) for float32")


def _passes(rows, nvec, registers):
    """Even blocks (rows, vectors) covering rows x nvec, each fitting the registers (_fits):
    the fewest passes over k, then the most vectors a pass (the most rows on a tie)."""
    shapes = [(r, v) for r in range(1, rows + 1) for v in range(1, nvec + 1)
              if _fits(r, v, registers)] or [(1, 1)]
    per, vecs = min(shapes, key=lambda rv: (-(-rows // rv[0]) * -(-nvec // rv[1]), -rv[1], -rv[0]))
    vecs = -(-nvec // -(-nvec // vecs))  # the same number of passes, evened out
    per = -(-rows // -(-rows // per))
    return [(range(r, min(r + per, rows)), range(v, min(v + vecs, nvec)))
            for v in range(0, nvec, vecs) for r in range(0, rows, per)]


def streams_once(rows, ncols, registers=REGISTERS):
    """Whether a float32 tile(rows, ncols) reads each weight once: every one of its passes over
    k covers all the rows (passes that split the vectors instead read the rows of a again, from
    L1). float64 tiles have twice the vectors and may split rows where float32 ones do not."""
    return all(len(r) == rows for r, _ in _passes(rows, ncols // 16, registers))


class _Emitter:
    """IR building blocks for tiles of one dtype: flat-offset pointers into arrays, vector loads
    (weights widened from float16 bits when they are uint16), splats and counted loops whose
    accumulators are phi nodes."""

    def __init__(self, context, builder, dtype):
        self.context, self.builder = context, builder
        self.width = dtype.bitwidth // 8
        self.lanes = 64 // self.width
        self.vty = ir.VectorType(context.get_value_type(dtype), self.lanes)
        self.fma = _fmuladd(builder.module, self.vty, "f64" if self.width == 8 else "f32")
        self._zero_mask = ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes)

    def i64(self, v):
        return v if v.type == _I64 else self.builder.sext(v, _I64)

    @staticmethod
    def const(n):
        return ir.Constant(_I64, n)

    def base(self, arr, aty, off):
        data = self.context.make_array(aty)(self.context, self.builder, arr).data
        return self.builder.gep(data, [self.i64(off)])

    def at(self, ptr, *offsets):
        return self.builder.gep(ptr, [self._sum(offsets)])

    def _sum(self, terms):
        total = terms[0]
        for term in terms[1:]:
            total = self.builder.add(total, term)
        return total

    def mul(self, a, b):
        return self.builder.mul(a, b)

    def vload(self, ptr):
        return self.builder.load(self.builder.bitcast(ptr, self.vty.as_pointer()), align=self.width)

    def wload(self, ptr, half):
        """A vector of weights: float16 bits widened to float32, or the dtype as it is."""
        if half:
            hty = ir.VectorType(ir.HalfType(), self.lanes)
            bits = self.builder.load(self.builder.bitcast(ptr, hty.as_pointer()), align=2)
            return self.builder.fpext(bits, self.vty)
        return self.vload(ptr)

    def vstore(self, value, ptr):
        self.builder.store(value, self.builder.bitcast(ptr, self.vty.as_pointer()),
                           align=self.width)

    def splat(self, ptr):
        b = self.builder
        v = b.insert_element(ir.Constant(self.vty, ir.Undefined), b.load(ptr), ir.Constant(_I32, 0))
        return b.shuffle_vector(v, v, self._zero_mask)

    def loop(self, lo, hi, accs, body):
        """for k in [lo, hi): accs = body(k, accs), accs a dict of vectors; returns the final
        accs (the initial ones when the range is empty)."""
        return counted_loop(self.builder, lo, hi, 1, accs, body)


def counted_loop(b, lo, hi, step, accs, body):
    """IR for `for k in range(lo, hi, step): accs = body(k, accs)` (i64 bounds, hi - lo a
    multiple of step), accs a dict of values carried as phi nodes; returns the final accs (the
    initial ones when the range is empty)."""
    entry = b.block
    block = b.append_basic_block("loop")
    done = b.append_basic_block("loop.done")
    b.cbranch(b.icmp_signed("<", lo, hi), block, done)
    b.position_at_end(block)
    k = b.phi(_I64)
    phis = {key: b.phi(value.type) for key, value in accs.items()}
    new = body(k, phis)
    k_next = b.add(k, ir.Constant(_I64, step))
    latch = b.block
    b.cbranch(b.icmp_signed("<", k_next, hi), block, done)
    k.add_incoming(lo, entry)
    k.add_incoming(k_next, latch)
    for key, phi in phis.items():
        phi.add_incoming(accs[key], entry)
        phi.add_incoming(new[key], latch)
    b.position_at_end(done)
    finals = {}
    for key, value in accs.items():  # every phi first: LLVM requires them at the top of the block
        finals[key] = b.phi(value.type)
        finals[key].add_incoming(value, entry)
        finals[key].add_incoming(new[key], latch)
    return finals


def _codegen(mr, ncols, registers, context, builder, sig, args):
    (a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo, cstride) = args
    em = _Emitter(context, builder, sig.args[0].dtype)
    half = sig.args[3].dtype == types.uint16
    a_p, b_p = em.base(a, sig.args[0], a_off), em.base(b, sig.args[3], b_off)
    bias_p, out_p = em.base(bias, sig.args[7], bias_off), em.base(out, sig.args[9], out_off)
    lda, pstride, k_len, ldo, cstride = (em.i64(v) for v in (lda, pstride, k_len, ldo, cstride))
    vec_offsets = _vector_offsets(em, ncols // em.lanes, pstride)
    col_offsets = _vector_offsets(em, ncols // em.lanes, cstride)
    for rows, vecs in _passes(mr, ncols // em.lanes, registers):
        bias_vecs = {j: em.vload(em.at(bias_p, col_offsets[j])) for j in vecs}
        init = {(r, j): bias_vecs[j] for r in rows for j in vecs}

        def step(k, acc):
            b_row = em.at(b_p, em.mul(k, em.const(PANEL)))
            b_vecs = {j: em.wload(em.at(b_row, vec_offsets[j]), half) for j in vecs}
            new = {}
            for r in rows:
                splat = em.splat(em.at(a_p, em.mul(em.const(r), lda), k))
                for j in vecs:
                    new[r, j] = builder.call(em.fma, [splat, b_vecs[j], acc[r, j]])
            return new

        for (r, j), value in em.loop(em.const(0), k_len, init, step).items():
            em.vstore(value, em.at(out_p, em.mul(em.const(r), ldo), col_offsets[j]))
    return context.get_dummy_value()


def _vector_offsets(em, nvec, stride):
    """Flat offset of vector j of a row: panel j // per_panel (`stride` apart), lane
    (j % per_panel) * lanes."""
    per_panel = PANEL // em.lanes
    return [em.builder.add(em.mul(em.const(j // per_panel), stride),
                           em.const((j % per_panel) * em.lanes)) for j in range(nvec)]


AHEAD = 8


@functools.lru_cache(maxsize=None)
def tile_ahead(ncols: int):
    """An intrinsic tile_ahead(a, a_off, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
    cstride, x, x_off, ldx, w, w_off, kx, xbias, xbias_off, xp, xp_off, ldxp): tile(1, ncols)'s
    one-row product (lda and ldo unused) and, in the same loop over k, the product of AHEAD rows
    of x with one vector of weight columns (a vector: 64 bytes of a's dtype):
        xp[xp_off + r*ldxp + v] = xbias[xbias_off + v] + sum_{k < kx} x[x_off + r*ldx + k]
                                  * w[w_off + k*PANEL + v]          for r < AHEAD, v < lanes
    (w packed in panels as b; ldx and ldxp may be negative). A batch-1 recurrent step reads one
    weight per multiply-add, so it waits on the cache and leaves the FMA units half idle; the
    AHEAD-row product reuses each weight vector AHEAD times and fills them: the input projection
    of later steps rides along with this step's recurrent product.
    Sums run over k in the same order as tile's, so both products equal tile's to the bit."""
    if ncols % PANEL:
        raise ValueError(f"tile width {ncols} is not a multiple of {PANEL}")

    @intrinsic
    def _tile_ahead(typingctx, a, a_off, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
                    cstride, x, x_off, ldx, w, w_off, kx, xbias, xbias_off, xp, xp_off, ldxp):
        _check_operands(a, b, bias, out)
        _check_operands(x, w, xbias, xp)
        if x.dtype != a.dtype or w.dtype != b.dtype:
            raise errors.TypingError("tile_ahead's two products need the same dtypes")
        sig = types.void(a, a_off, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
                         cstride, x, x_off, ldx, w, w_off, kx, xbias, xbias_off, xp, xp_off, ldxp)
        return sig, functools.partial(_ahead_codegen, ncols)

    return _tile_ahead


def _ahead_codegen(ncols, context, builder, sig, args):
    (a, a_off, b, b_off, pstride, k_len, bias, bias_off, out, out_off, cstride,
     x, x_off, ldx, w, w_off, kx, xbias, xbias_off, xp, xp_off, ldxp) = args
    em = _Emitter(context, builder, sig.args[0].dtype)
    half = sig.args[2].dtype == types.uint16
    a_p, b_p = em.base(a, sig.args[0], a_off), em.base(b, sig.args[2], b_off)
    bias_p, out_p = em.base(bias, sig.args[6], bias_off), em.base(out, sig.args[8], out_off)
    x_p, w_p = em.base(x, sig.args[11], x_off), em.base(w, sig.args[14], w_off)
    xbias_p, xp_p = em.base(xbias, sig.args[17], xbias_off), em.base(xp, sig.args[19], xp_off)
    pstride, k_len, cstride, ldx, kx, ldxp = (em.i64(v) for v in
                                              (pstride, k_len, cstride, ldx, kx, ldxp))
    nvec = ncols // em.lanes
    vec_offsets = _vector_offsets(em, nvec, pstride)
    col_offsets = _vector_offsets(em, nvec, cstride)
    acc = {("h", j): em.vload(em.at(bias_p, col_offsets[j])) for j in range(nvec)}
    x_bias = em.vload(xbias_p)
    acc.update({("x", r): x_bias for r in range(AHEAD)})

    def recurrent(k, acc, new):
        b_row = em.at(b_p, em.mul(k, em.const(PANEL)))
        splat = em.splat(em.at(a_p, k))
        for j in range(nvec):
            weights = em.wload(em.at(b_row, vec_offsets[j]), half)
            new["h", j] = builder.call(em.fma, [splat, weights, acc["h", j]])

    def ahead(k, acc, new):
        weights = em.wload(em.at(w_p, em.mul(k, em.const(PANEL))), half)
        for r in range(AHEAD):
            splat = em.splat(em.at(x_p, em.mul(em.const(r), ldx), k))
            new["x", r] = builder.call(em.fma, [splat, weights, acc["x", r]])

    def parts(*fns):
        def body(k, acc):
            new = {}
            for fn in fns:
                fn(k, acc, new)
            return new
        return body

    def only(kind, values):
        return {key: v for key, v in values.items() if key[0] == kind}

    joint = builder.select(builder.icmp_signed("<", k_len, kx), k_len, kx)
    zero = em.const(0)
    joint = builder.select(builder.icmp_signed("<", joint, zero), zero, joint)
    acc = em.loop(zero, joint, acc, parts(recurrent, ahead))
    finals = em.loop(joint, k_len, only("h", acc), parts(recurrent))
    finals.update(em.loop(joint, kx, only("x", acc), parts(ahead)))
    for j in range(nvec):
        em.vstore(finals["h", j], em.at(out_p, col_offsets[j]))
    for r in range(AHEAD):
        em.vstore(finals["x", r], em.at(xp_p, em.mul(em.const(r), ldxp)))
    return context.get_dummy_value()


def _fmuladd(module, vty, suffix):
    name = f"llvm.fmuladd.v{vty.count}{suffix}"
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(vty, [vty, vty, vty]), name)
    return fn
