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


@functools.lru_cache(maxsize=None)
def tile(mr: int, ncols: int):
    """An intrinsic tile(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo,
    cstride) computing, for r < mr and j < ncols (a multiple of PANEL):
        out[out_off + r*ldo + C(j)] = bias[bias_off + C(j)] + sum_k a[a_off + r*lda + k] * B(k, j)
    where B(k, j) = b[b_off + (j // PANEL)*pstride + k*PANEL + j % PANEL] and
    C(j) = (j // PANEL)*cstride + j % PANEL: the tile's panels are pstride apart in b and cstride
    columns apart in out and bias (consecutive panels: pstride = k_len*PANEL, cstride = PANEL;
    the same block of units of every gate: both strides one gate further). Every array is
    C-contiguous (offsets are flat element offsets); the caller keeps every index in bounds."""
    if ncols % PANEL:
        raise ValueError(f"tile width {ncols} is not a multiple of {PANEL}")

    @intrinsic
    def _tile(typingctx, a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
              ldo, cstride):
        arrays = (a, b, bias, out)
        if any(not isinstance(t, types.Array) or t.layout != "C" for t in arrays):
            raise errors.TypingError("tile needs C-contiguous arrays")
        if len({t.dtype for t in arrays}) != 1 or a.dtype not in (types.float32, types.float64):
            raise errors.TypingError("tile needs float32 or float64 arrays of one dtype")
        sig = types.void(a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off,
                         ldo, cstride)
        return sig, functools.partial(_codegen, mr, ncols)

    return _tile


def _codegen(mr, ncols, context, builder, sig, args):
    (a, a_off, lda, b, b_off, pstride, k_len, bias, bias_off, out, out_off, ldo, cstride) = args
    dtype = sig.args[0].dtype
    width = dtype.bitwidth // 8
    lanes = 64 // width
    nvec = ncols // lanes
    per_panel = PANEL // lanes
    vty = ir.VectorType(context.get_value_type(dtype), lanes)
    vptr = vty.as_pointer()
    fma = _fmuladd(builder.module, vty, "f64" if width == 8 else "f32")

    def i64(v):
        return v if v.type == _I64 else builder.sext(v, _I64)

    def base(arr, aty, off):
        return builder.gep(context.make_array(aty)(context, builder, arr).data, [i64(off)])

    def const(n):
        return ir.Constant(_I64, n)

    def vload(ptr):
        return builder.load(builder.bitcast(ptr, vptr), align=width)

    a_p, b_p = base(a, sig.args[0], a_off), base(b, sig.args[3], b_off)
    bias_p, out_p = base(bias, sig.args[7], bias_off), base(out, sig.args[9], out_off)
    lda, pstride, k_len, ldo, cstride = (i64(v) for v in (lda, pstride, k_len, ldo, cstride))

    def offsets(stride):  # vector j of a row: panel j // per_panel, lane (j % per_panel) * lanes
        return [builder.add(builder.mul(const(j // per_panel), stride),
                            const((j % per_panel) * lanes)) for j in range(nvec)]

    vec_offsets = offsets(pstride)
    col_offsets = offsets(cstride)
    row_offsets = [builder.mul(const(r), lda) for r in range(mr)]
    init = [vload(builder.gep(bias_p, [off])) for off in col_offsets]

    entry = builder.block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed(">", k_len, const(0)), loop, done)

    builder.position_at_end(loop)
    k = builder.phi(_I64)
    acc = [[builder.phi(vty) for _ in range(nvec)] for _ in range(mr)]
    b_row = builder.gep(b_p, [builder.mul(k, const(PANEL))])
    b_vecs = [vload(builder.gep(b_row, [off])) for off in vec_offsets]
    zero_mask = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
    new = []
    for r in range(mr):
        scalar = builder.load(builder.gep(a_p, [builder.add(row_offsets[r], k)]))
        splat = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(splat, splat, zero_mask)
        new.append([builder.call(fma, [splat, b_vecs[j], acc[r][j]]) for j in range(nvec)])
    k_next = builder.add(k, const(1))
    latch = builder.block
    builder.cbranch(builder.icmp_signed("<", k_next, k_len), loop, done)
    k.add_incoming(const(0), entry)
    k.add_incoming(k_next, latch)
    for r in range(mr):
        for j in range(nvec):
            acc[r][j].add_incoming(init[j], entry)
            acc[r][j].add_incoming(new[r][j], latch)

    builder.position_at_end(done)
    finals = []
    for r in range(mr):  # every phi first: LLVM requires them at the top of the block
        row = []
        for j in range(nvec):
            phi = builder.phi(vty)
            phi.add_incoming(init[j], entry)
            phi.add_incoming(new[r][j], latch)
            row.append(phi)
        finals.append(row)
    for r in range(mr):
        out_row = builder.gep(out_p, [builder.mul(const(r), ldo)])
        for j in range(nvec):
            builder.store(finals[r][j], builder.bitcast(builder.gep(out_row, [col_offsets[j]]),
                                                        vptr), align=width)
    return context.get_dummy_value()


def _fmuladd(module, vty, suffix):
    name = f"llvm.fmuladd.v{vty.count}{suffix}"
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(vty, [vty, vty, vty]), name)
    return fn
