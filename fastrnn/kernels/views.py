"""C-contiguous views of part of a flat buffer, as LLVM IR.

numba's reshape calls a C helper (numba_attempt_nocopy_reshape) and checks the sizes each time; a
kernel call lays out its scratch and weights as seven such views: ~0.25 us of every call, 6 % of a
~4 us streaming step. `carve` builds the view's descriptor directly. The caller keeps the view
inside the buffer.
"""
from numba import types
from numba.core import cgutils, errors
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


@intrinsic
def carve(typingctx, buf, start, shape):
    """buf[start:start + prod(shape)] as a C-contiguous array of `shape` (a tuple of ints);
    buf is a C-contiguous array (read flat)."""
    if not isinstance(buf, types.Array) or buf.layout != "C":
        raise errors.TypingError("carve needs a C-contiguous array")
    if not isinstance(start, types.Integer) or not isinstance(shape, types.BaseTuple) \
            or not all(isinstance(t, types.Integer) for t in shape):
        raise errors.TypingError("carve takes an integer start and a tuple of integer sizes")
    out_type = types.Array(buf.dtype, len(shape), "C")

    def codegen(context, builder, sig, args):
        buf_type, start_type, shape_type = sig.args
        src = context.make_array(buf_type)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        sizes = [context.cast(builder, builder.extract_value(args[2], k), shape_type[k],
                              types.intp) for k in range(len(shape_type))]
        first = context.cast(builder, args[1], start_type, types.intp)
        itemsize = context.get_abi_sizeof(context.get_data_type(buf_type.dtype))
        strides = []
        step = intp(itemsize)
        for size in reversed(sizes):
            strides.insert(0, step)
            step = builder.mul(step, size)
        out = context.make_array(out_type)(context, builder)
        context.populate_array(out, data=builder.gep(src.data, [first]),
                               shape=cgutils.pack_array(builder, sizes),
                               strides=cgutils.pack_array(builder, strides),
                               itemsize=intp(itemsize), meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, out_type, out._getvalue())
    return out_type(buf, start, shape), codegen
