"""Register-tile micro-kernels written as LLVM IR (numba intrinsics), for the products in gemm.py.

numba cannot express "keep these 8 vectors in registers while k runs": its loop vectoriser turns a
dot product into a reduction over k (one horizontal sum per output: half the time at K = 64), and
its SLP vectoriser is off. So the tile is built directly in IR: `mr` rows of A times `ncols`
columns of packed B, accumulators as <64-byte vector> phi nodes, one broadcast of a[r, k] and
`llvm.fmuladd` per vector per k. LLVM lowers the vector type to whatever the target has (zmm on
AVX-512, two ymm on AVX2, NEON quads), so the code stays portable.

B is packed in panels of PANEL columns (gemm.pack_gates): a panel holds K rows of PANEL
consecutive columns, row after row, so each vector of a tile streams contiguously over k.
"""
import functools

from llvmlite import ir
from numba import types
from numba.core import errors
from numba.extending import intrinsic

PANEL = 32
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _vector_budget() -> int:
    """How many 64-byte vectors the target's register file holds: 32 zmm with AVX-512, 16 ymm
    (8 such vectors) with AVX/AVX2 and 32 NEON registers (8), 16 xmm (4) otherwise."""
    import llvmlite.binding as llvm
    import numba

    features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features:
        return 32
    if "+avx" in features or llvm.get_process_triple().startswith(("aarch64", "arm64")):
        return 8
    return 4


VECTOR_BUDGET = _vector_budget()


@functools.lru_cache(maxsize=None)
def tile(mr: int, ncols: int, budget: int = VECTOR_BUDGET):
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

    A tile whose accumulators would not fit `budget` 64-byte vector registers (see _passes) runs
    as several passes over k, each on a block of rows and vectors that fits: spilling
    accumulators to the stack costs more than streaming B twice."""
    if ncols % PANEL:
        raise ValueError(f"tile width {ncols} is not a multiple of {PANEL}")

    @intrinsic
    def _tile(typingctx, a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
              ldo, cstride):
        arrays = (a, b, bias, out)
        if any(not isinstance(t, types.Array) or t.layout != "C" for t in arrays):
            raise errors.TypingError("tile needs C-contiguous arrays")
        if len({a.dtype, bias.dtype, out.dtype}) != 1 or a.dtype not in (types.float32,
                                                                        types.float64):
            raise errors.TypingError("tile needs float32 or float64 a, bias and out of one dtype")
        if b.dtype != a.dtype and not (b.dtype == types.uint16 and a.dtype == types.float32):
            raise errors.TypingError("tile's weights are the dtype of a, or float16 bits "
                                     "(uint16) for float32")
        sig = types.void(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
                         ldo, cstride)
        return sig, functools.partial(_codegen, mr, ncols, budget)

    return _tile


def _passes(rows, nvec, budget):
    """Even blocks (rows, vectors) covering rows x nvec that fit the budget: r*v accumulators,
    plus the v B vectors when several rows share them (one row folds each load into its FMA),
    plus a broadcast and a spare."""
    def fits(r, v):
        return r * v + (v if r > 1 else 1) + 2 <= budget

    vecs = nvec
    while vecs > 1 and not fits(1, vecs):
        vecs -= 1
    per = rows
    while per > 1 and not fits(per, vecs):
        per -= 1
    vecs = -(-nvec // -(-nvec // vecs))  # the same number of passes, evened out
    per = -(-rows // -(-rows // per))
    return [(range(r, min(r + per, rows)), range(v, min(v + vecs, nvec)))
            for v in range(0, nvec, vecs) for r in range(0, rows, per)]


def _codegen(mr, ncols, budget, context, builder, sig, args):
    (a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo, cstride) = args
    dtype = sig.args[0].dtype
    width = dtype.bitwidth // 8
    lanes = 64 // width
    nvec = ncols // lanes
    per_panel = PANEL // lanes
    vty = ir.VectorType(context.get_value_type(dtype), lanes)
    vptr = vty.as_pointer()
    half_weights = sig.args[3].dtype == types.uint16
    hty = ir.VectorType(ir.HalfType(), lanes)
    fma = _fmuladd(builder.module, vty, "f64" if width == 8 else "f32")

    def i64(v):
        return v if v.type == _I64 else builder.sext(v, _I64)

    def base(arr, aty, off):
        return builder.gep(context.make_array(aty)(context, builder, arr).data, [i64(off)])

    def const(n):
        return ir.Constant(_I64, n)

    def vload(ptr):
        return builder.load(builder.bitcast(ptr, vptr), align=width)

    def bload(ptr):  # weights: float16 bits widened to float32, or a's dtype as it is
        if half_weights:
            return builder.fpext(builder.load(builder.bitcast(ptr, hty.as_pointer()), align=2),
                                 vty)
        return vload(ptr)

    a_p, b_p = base(a, sig.args[0], a_off), base(b, sig.args[3], b_off)
    bias_p, out_p = base(bias, sig.args[7], bias_off), base(out, sig.args[9], out_off)
    lda, pstride, k_len, ldo, cstride = (i64(v) for v in (lda, pstride, k_len, ldo, cstride))

    def offsets(stride):  # vector j of a row: panel j // per_panel, lane (j % per_panel) * lanes
        return [builder.add(builder.mul(const(j // per_panel), stride),
                            const((j % per_panel) * lanes)) for j in range(nvec)]

    vec_offsets = offsets(pstride)
    col_offsets = offsets(cstride)
    zero_mask = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
    for rows, vecs in _passes(mr, nvec, budget):
        init = {j: vload(builder.gep(bias_p, [col_offsets[j]])) for j in vecs}
        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", k_len, const(0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(_I64)
        acc = {(r, j): builder.phi(vty) for r in rows for j in vecs}
        b_row = builder.gep(b_p, [builder.mul(k, const(PANEL))])
        b_vecs = {j: bload(builder.gep(b_row, [vec_offsets[j]])) for j in vecs}
        new = {}
        for r in rows:
            a_at = builder.add(builder.mul(const(r), lda), k)
            scalar = builder.load(builder.gep(a_p, [a_at]))
            splat = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar,
                                           ir.Constant(_I32, 0))
            splat = builder.shuffle_vector(splat, splat, zero_mask)
            for j in vecs:
                new[r, j] = builder.call(fma, [splat, b_vecs[j], acc[r, j]])
        k_next = builder.add(k, const(1))
        latch = builder.block
        builder.cbranch(builder.icmp_signed("<", k_next, k_len), loop, done)
        k.add_incoming(const(0), entry)
        k.add_incoming(k_next, latch)
        for (r, j), phi in acc.items():
            phi.add_incoming(init[j], entry)
            phi.add_incoming(new[r, j], latch)

        builder.position_at_end(done)
        finals = {}
        for (r, j) in acc:  # every phi first: LLVM requires them at the top of the block
            finals[r, j] = builder.phi(vty)
            finals[r, j].add_incoming(init[j], entry)
            finals[r, j].add_incoming(new[r, j], latch)
        for (r, j), value in finals.items():
            out_row = builder.gep(out_p, [builder.mul(const(r), ldo)])
            builder.store(value, builder.bitcast(builder.gep(out_row, [col_offsets[j]]), vptr),
                          align=width)
    return context.get_dummy_value()


def _fmuladd(module, vty, suffix):
    name = f"llvm.fmuladd.v{vty.count}{suffix}"
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(vty, [vty, vty, vty]), name)
    return fn
