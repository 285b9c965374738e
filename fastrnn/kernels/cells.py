"""The LSTM and GRU (linear_before_reset) cell updates with the default activations over a range
of units, for the kernels.

For float32 they are written as LLVM IR (numba intrinsics). numba compiles an update as one loop
per gate (a single loop over all of the update's streams gets runtime alias checks that LLVM
gives up on, and stays scalar), each with its own set-up, and the loops are short: a unit-split
block on two threads updates 32 units, two vectors. The IR computes every gate of a vector of
units, then the new state, in one loop body, and leaves out what a layer does not use: the clamp
when there is no clip, an LSTM's peephole terms when it has none (o then no longer waits for
c'). Measured alone, an LSTM update took 103-120 cycles per 16 units in numba's loops, 98-100 in
the IR with clamp and peepholes, ~80 without; in the layers, two threads: GRU H = 64 61 -> 55 us,
LSTM H = 64 73 -> 71 us, one thread 1-3 % faster. Units past the last whole vector run the same
body on scalars. float64 keeps numba's loops (libm's tanh).
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import errors
from numba.extending import intrinsic, overload

from . import activations as acts
from ._jit import FASTMATH, inline
from .simd import counted_loop

_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_LANES = 16  # float32 lanes of a 64-byte vector (two ymm where the target has no zmm)


def lstm_cell(g, xr, cr, peep, out, gs, j0, j1, clip, peepholes):
    """For units j in [j0, j1), with gate k's pre-activation a_k = g[k*gs + j] + xr[k*gs + j]:
        i = sigmoid(a_0 + peep[0, j] c), f = sigmoid(a_1 + peep[1, j] c), c' = f c + i tanh(a_2),
        o = sigmoid(a_3 + peep[2, j] c'), cr[j] = c', out[j] = o tanh(c')
    every pre-activation clamped to +-clip. Without `peepholes` peep holds zeros and those terms
    are left out (0 * c would be NaN for an infinite c). g may be overwritten. (Implemented by
    the overloads below, in jitted code.)"""
    raise NotImplementedError


def gru_cell(g, xr, hp, hd, gs, j0, j1, clip):
    """GRU with linear_before_reset, for units j in [j0, j1): g holds the recurrent product
    (gates r, z, n at k*gs + j, n's including Rbh), xr the input projection:
        r = sigmoid(g_r + x_r), z = sigmoid(g_z + x_z), n = tanh(x_n + r g_n),
        hd[j] = (1 - z) n + z hp[j]
    every pre-activation clamped to +-clip. g may be overwritten."""
    raise NotImplementedError


@overload(lstm_cell, inline="always", fastmath=set(FASTMATH))
def _ov_lstm_cell(g, xr, cr, peep, out, gs, j0, j1, clip, peepholes):
    if g.dtype == types.float32:
        def ir_cell(g, xr, cr, peep, out, gs, j0, j1, clip, peepholes):
            _lstm_ir(g, xr, peep, peep.shape[1], cr, out, gs, j0, j1 - j0, clip, peepholes)
        return ir_cell

    def loops(g, xr, cr, peep, out, gs, j0, j1, clip, peepholes):
        n = j1 - j0
        gi = g[j0:j1]
        gf = g[gs + j0:gs + j1]
        c = cr[j0:j1]
        if peepholes:
            _sigmoid_gate(gi, xr[j0:j1], peep[0, j0:j1], c, n, clip)
            _sigmoid_gate(gf, xr[gs + j0:gs + j1], peep[1, j0:j1], c, n, clip)
        else:  # no 0 * c terms: an infinite c would make them NaN
            sigmoid_rows(gi, xr[j0:j1], n, clip)
            sigmoid_rows(gf, xr[gs + j0:gs + j1], n, clip)
        gg = g[2 * gs + j0:2 * gs + j1]
        xg = xr[2 * gs + j0:2 * gs + j1]
        for j in range(n):
            c[j] = gf[j] * c[j] + gi[j] * acts.fast_tanh(acts.clamp(gg[j] + xg[j], clip))
        go = g[3 * gs + j0:3 * gs + j1]
        xo = xr[3 * gs + j0:3 * gs + j1]
        po = peep[2, j0:j1]
        h = out[j0:j1]
        for j in range(n):
            pre = go[j] + xo[j]
            if peepholes:
                pre += po[j] * c[j]
            h[j] = acts.fast_sigmoid(acts.clamp(pre, clip)) * acts.fast_tanh(c[j])
    return loops


@overload(gru_cell, inline="always", fastmath=set(FASTMATH))
def _ov_gru_cell(g, xr, hp, hd, gs, j0, j1, clip):
    if g.dtype == types.float32:
        def ir_cell(g, xr, hp, hd, gs, j0, j1, clip):
            _gru_ir(g, xr, hp, hd, gs, j0, j1 - j0, clip)
        return ir_cell

    def loops(g, xr, hp, hd, gs, j0, j1, clip):
        one = acts.typed(1.0, g)
        r = g[j0:j1]
        z = g[gs + j0:gs + j1]
        sigmoid_rows(r, xr[j0:j1], j1 - j0, clip)
        sigmoid_rows(z, xr[gs + j0:gs + j1], j1 - j0, clip)
        gn = g[2 * gs + j0:2 * gs + j1]
        xn = xr[2 * gs + j0:2 * gs + j1]
        hps = hp[j0:j1]
        hds = hd[j0:j1]
        for j in range(hds.size):
            n = acts.fast_tanh(acts.clamp(xn[j] + r[j] * gn[j], clip))
            hds[j] = (one - z[j]) * n + z[j] * hps[j]
    return loops


@inline
def sigmoid_rows(g, xr, n, clip):
    """g[j] = sigmoid(g[j] + xr[j]) for j < n."""
    for j in range(n):
        g[j] = acts.fast_sigmoid(acts.clamp(g[j] + xr[j], clip))


@inline
def _sigmoid_gate(g, xr, peep, cp, n, clip):
    """g[j] = sigmoid(g[j] + xr[j] + peep[j] * cp[j]) for j < n."""
    for j in range(n):
        g[j] = acts.fast_sigmoid(acts.clamp(g[j] + xr[j] + peep[j] * cp[j], clip))


# ----- the IR -----

def _check_f32(arrays, clip, name):
    if any(not isinstance(a, types.Array) or a.layout != "C" or a.dtype != types.float32
           for a in arrays) or clip != types.float32:
        raise errors.TypingError(f"{name}'s IR needs C-contiguous float32 arrays and clip")


@intrinsic
def _lstm_ir(typingctx, g, xr, peep, pstride, c, out, gs, j0, n, clip, peepholes):
    """lstm_cell for float32 over units [j0, j0 + n): g, xr rows of gates (gate k at k*gs), peep
    (3, pstride), c and out rows; C-contiguous, the caller keeps every index in bounds."""
    _check_f32((g, xr, peep, c, out), clip, "lstm_cell")
    sig = types.void(g, xr, peep, pstride, c, out, gs, j0, n, clip, peepholes)

    def codegen(context, builder, sig, args):
        g_p, x_p, p_p, c_p, o_p = _data(context, builder, sig, args)
        b = builder
        _, _, _, pstride, _, _, gs, j0, n, clip, peepholes = args
        pstride, gs, j0, n = (_as_i64(b, v) for v in (pstride, gs, j0, n))

        def body(m, u, peep, clamp):
            def at(ptr, k):
                return m.load(b.gep(ptr, [b.add(u, b.mul(_i64(k), gs))]))
            ci = m.load(b.gep(c_p, [u]))
            pre = [m.add(at(g_p, k), at(x_p, k)) for k in range(4)]
            if peep:
                for k in range(2):
                    pre[k] = m.fma(m.load(b.gep(p_p, [b.add(u, b.mul(_i64(k), pstride))])),
                                   ci, pre[k])
            i, f = (m.sigmoid(clamp(m, a)) for a in pre[:2])
            cn = m.fma(f, ci, m.mul(i, m.tanh(clamp(m, pre[2]))))
            if peep:
                po = m.load(b.gep(p_p, [b.add(u, b.mul(_i64(2), pstride))]))
                pre[3] = m.fma(po, cn, pre[3])
            o = m.sigmoid(clamp(m, pre[3]))
            m.store(cn, b.gep(c_p, [u]))
            m.store(m.mul(o, m.tanh(cn)), b.gep(o_p, [u]))

        flags = (b.icmp_unsigned("!=", peepholes, ir.Constant(peepholes.type, 0)),
                 _clips(b, clip))
        _variants(b, flags, lambda peep, clips: _loops(
            b, j0, n, lambda m, u: body(m, u, peep, _clamp_to(clip) if clips else _no_clamp)))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _gru_ir(typingctx, g, xr, hp, hd, gs, j0, n, clip):
    """gru_cell for float32 over units [j0, j0 + n); as _lstm_ir."""
    _check_f32((g, xr, hp, hd), clip, "gru_cell")
    sig = types.void(g, xr, hp, hd, gs, j0, n, clip)

    def codegen(context, builder, sig, args):
        g_p, x_p, hp_p, hd_p = _data(context, builder, sig, args)
        b = builder
        _, _, _, _, gs, j0, n, clip = args
        gs, j0, n = (_as_i64(b, v) for v in (gs, j0, n))

        def body(m, u, clamp):
            def at(ptr, k):
                return m.load(b.gep(ptr, [b.add(u, b.mul(_i64(k), gs))]))
            r = m.sigmoid(clamp(m, m.add(at(g_p, 0), at(x_p, 0))))
            z = m.sigmoid(clamp(m, m.add(at(g_p, 1), at(x_p, 1))))
            cand = m.tanh(clamp(m, m.fma(r, at(g_p, 2), at(x_p, 2))))
            h = m.load(b.gep(hp_p, [u]))
            m.store(m.fma(m.sub(m.const(1.0), z), cand, m.mul(z, h)), b.gep(hd_p, [u]))

        _variants(b, (_clips(b, clip),), lambda clips: _loops(
            b, j0, n, lambda m, u: body(m, u, _clamp_to(clip) if clips else _no_clamp)))
        return context.get_dummy_value()
    return sig, codegen


def _data(context, builder, sig, args):
    return [context.make_array(ty)(context, builder, v).data
            for ty, v in zip(sig.args, args) if isinstance(ty, types.Array)]


def _as_i64(b, v):
    return v if v.type == _I64 else b.sext(v, _I64)


def _i64(v):
    return ir.Constant(_I64, v)


def _clips(b, clip):
    """Whether the clip is finite (the pre-activations need clamping)."""
    return b.fcmp_ordered("<", clip, ir.Constant(_F32, math.inf))


def _clamp_to(clip):
    def clamp(m, x):
        return m.clamp(x, m.splat(m.b.fneg(clip)), m.splat(clip))
    return clamp


def _no_clamp(m, x):
    return x


def _variants(b, flags, emit):
    """emit(*bools) under the branch where the i1 values `flags` equal those bools, for every
    combination: each variant's loops are compiled without the others' tests."""
    def branch(chosen):
        if len(chosen) == len(flags):
            emit(*chosen)
            return
        with b.if_else(flags[len(chosen)]) as (then, otherwise):
            with then:
                branch(chosen + (True,))
            with otherwise:
                branch(chosen + (False,))
    branch(())


def _loops(b, j0, n, body):
    """body(m, u) for the units u in [j0, j0 + n): whole vectors, then scalars."""
    whole = b.mul(b.sdiv(n, _i64(_LANES)), _i64(_LANES))
    for lo, hi, lanes in ((_i64(0), whole, _LANES), (whole, n, 1)):
        def step(j, accs, lanes=lanes):
            body(_Math(b, lanes), b.add(j0, j))
            return accs
        counted_loop(b, lo, hi, lanes, {}, step)


class _Math:
    """float32 arithmetic on `lanes`-wide vectors (1: scalars), as activations.py computes it."""

    def __init__(self, builder, lanes):
        self.b = builder
        self.lanes = lanes
        self.ty = _F32 if lanes == 1 else ir.VectorType(_F32, lanes)

    def _call(self, intrinsic, *args):
        """The llvm.* float intrinsic `intrinsic` on this width's vectors (or scalars)."""
        name = f"{intrinsic}.f32" if self.lanes == 1 else f"{intrinsic}.v{self.lanes}f32"
        module = self.b.module
        fn = module.globals.get(name) or ir.Function(
            module, ir.FunctionType(self.ty, [self.ty] * len(args)), name)
        return self.b.call(fn, list(args))

    def const(self, value):
        value = float(np.float32(value))
        return ir.Constant(self.ty, value if self.lanes == 1 else [value] * self.lanes)

    def splat(self, scalar):
        if self.lanes == 1:
            return scalar
        b = self.b
        i32 = ir.IntType(32)
        v = b.insert_element(ir.Constant(self.ty, ir.Undefined), scalar, ir.Constant(i32, 0))
        return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, self.lanes),
                                                 [0] * self.lanes))

    def load(self, ptr):
        return self.b.load(self.b.bitcast(ptr, self.ty.as_pointer()), align=4)

    def store(self, value, ptr):
        self.b.store(value, self.b.bitcast(ptr, self.ty.as_pointer()), align=4)

    def add(self, x, y):
        return self.b.fadd(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y)

    def fma(self, x, y, z):
        """x * y + z"""
        return self._call("llvm.fmuladd", x, y, z)

    def clamp(self, x, lo, hi):
        """min(max(x, lo), hi), NaN staying NaN (as activations.clamp)."""
        b = self.b
        x = b.select(b.fcmp_ordered("<", x, lo), lo, x)
        return b.select(b.fcmp_ordered(">", x, hi), hi, x)

    def tanh(self, x):
        """activations.fast_tanh: the 13/6 rational, exactly +-1 from T_CLAMP on."""
        x2 = self.mul(x, x)
        p = self.fma(x2, self.const(acts.TANH_P[0]), self.const(acts.TANH_P[1]))
        for a in acts.TANH_P[2:]:
            p = self.fma(x2, p, self.const(a))
        q = self.fma(x2, self.const(acts.TANH_Q[0]), self.const(acts.TANH_Q[1]))
        for a in acts.TANH_Q[2:]:
            q = self.fma(x2, q, self.const(a))
        b = self.b
        saturated = b.fcmp_ordered(">=", self._call("llvm.fabs", x), self.const(acts.T_CLAMP))
        return b.select(saturated, self._call("llvm.copysign", self.const(1.0), x),
                        b.fdiv(self.mul(x, p), q))

    def sigmoid(self, x):
        """activations.fast_sigmoid: 0.5 tanh(x / 2) + 0.5."""
        half = self.const(0.5)
        return self.fma(half, self.tanh(self.mul(half, x)), half)
