"""Denormals off for the duration of a kernel, as LLVM IR (numba has no access to the FP mode).

A recurrent state that decays towards zero passes through the denormal range, where x86 cores may
take a microcode assist per operation (Intel: ~100+ cycles). Kernels call `denormals_off()` on
entry, on the calling thread and in each parallel chunk, and `restore_fp_mode(saved)` on exit:
MXCSR's flush-to-zero and denormals-are-zero bits are set only while fastrnn computes, so numpy
and everything else on the thread keep IEEE behaviour. Results differ from IEEE arithmetic only
below the dtype's smallest normal number (1.2e-38 in float32, 2.2e-308 in float64). Elsewhere
than x86 both are no-ops.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .atomics import IS_X86

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_FTZ_DAZ = 0x8040  # MXCSR bit 15 flush-to-zero, bit 6 denormals-are-zero


def _mxcsr_call(builder, name, slot):
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [_I8P]), name)
    builder.call(fn, [builder.bitcast(slot, _I8P)])


@intrinsic
def denormals_off(typingctx):
    """Set flush-to-zero and denormals-are-zero on this thread; returns the previous mode."""
    def codegen(context, builder, sig, args):
        if not IS_X86:
            return ir.Constant(ir.IntType(64), 0)
        slot = cgutils.alloca_once(builder, _I32)  # in the entry block: no growth in loops
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        saved = builder.load(slot)
        builder.store(builder.or_(saved, ir.Constant(_I32, _FTZ_DAZ)), slot)
        _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return builder.zext(saved, ir.IntType(64))
    return types.int64(), codegen


@intrinsic
def restore_fp_mode(typingctx, saved):
    """Put back the mode denormals_off returned."""
    if not isinstance(saved, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        if IS_X86:
            slot = cgutils.alloca_once(builder, _I32)
            builder.store(builder.trunc(args[0], _I32), slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()
    return types.void(saved), codegen
