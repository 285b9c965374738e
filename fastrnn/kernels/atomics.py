"""Atomic operations on int64 arrays and a spin-wait hint, as LLVM IR (numba has no atomics).

They let the threads of one parallel region hand work to each other without leaving it (see
units.run_units). Every array must be a C-contiguous int64 array; the caller keeps indices in
bounds. Orderings: loads acquire, read-modify-writes acquire-release, so that plain stores made
before a release are visible to a thread whose acquire sees its value.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import errors
from numba.extending import intrinsic

_I64 = ir.IntType(64)
IS_X86 = llvm.get_process_triple().startswith(("x86_64", "i386", "i686"))


def _slot(context, builder, aty, arr, idx):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.gep(data, [idx if idx.type == _I64 else builder.sext(idx, _I64)])


def _check(arr, *ints):
    if not isinstance(arr, types.Array) or arr.dtype != types.int64 or arr.layout != "C":
        raise errors.TypingError("atomics need a C-contiguous int64 array")
    if not all(isinstance(t, types.Integer) for t in ints):
        raise errors.TypingError("atomics take integer indices and values")


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx], read with acquire ordering."""
    _check(arr, idx)

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def atomic_add(typingctx, arr, idx, value):
    """arr[idx] += value atomically; returns the previous value."""
    _check(arr, idx, value)

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        val = args[2] if args[2].type == _I64 else builder.sext(args[2], _I64)
        return builder.atomic_rmw("add", ptr, val, "acq_rel")
    return types.int64(arr, idx, value), codegen


@intrinsic
def atomic_cas(typingctx, arr, idx, expected, new):
    """Set arr[idx] from `expected` to `new` atomically; True for the one caller that did."""
    _check(arr, idx, expected, new)

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        old, value = (v if v.type == _I64 else builder.sext(v, _I64) for v in args[2:])
        pair = builder.cmpxchg(ptr, old, value, "acq_rel", "acquire")
        return builder.extract_value(pair, 1)
    return types.boolean(arr, idx, expected, new), codegen


@intrinsic
def spin_pause(typingctx):
    """A spin-wait hint (x86 `pause`: yields the core's pipeline to its sibling and saves power);
    nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if IS_X86:
            name = "llvm.x86.sse2.pause"
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(ir.VoidType(), []), name)
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen
