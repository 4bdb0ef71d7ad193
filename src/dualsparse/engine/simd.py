"""16-wide float32 SIMD values for the numba kernels (LLVM ``<16 x float>``).

:data:`f32x16` is a numba type held in a vector register; :func:`vload`, :func:`vstore` and
:func:`vmadd` move it from and to float32 arrays and accumulate into it, :func:`axpy16` updates
16 floats of an array in place. They exist because LLVM cannot vectorise these updates by
itself in numba code: with a literal trip count of 16 it unrolls the loop into scalar code (it
cannot prove that the output and weight arrays do not overlap), and an accumulator kept in an
array is re-loaded and re-stored at every step. ``vmadd`` and ``axpy16`` compute ``acc + w *
x`` fused (one rounding, ``llvm.fma``: half the floating-point instructions of a multiply
and an add, 5-40% faster register-panel products on an Intel Xeon, docs/engine.md), and the
scalar kernels update with :func:`fma32`, so every kernel returns the same floats when it
adds in the same order. No bounds checks: callers guarantee the ranges.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_V16 = ir.VectorType(ir.FloatType(), 16)


class F32x16Type(types.Type):
    """Sixteen float32 lanes in one SIMD register."""

    def __init__(self) -> None:
        super().__init__(name="F32x16")


f32x16 = F32x16Type()


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _V16)


def _ptr(context, builder, arrty, arr, offset):
    a = context.make_array(arrty)(context, builder, arr)
    return builder.bitcast(builder.gep(a.data, [offset]), _V16.as_pointer())


def _splat(builder, x):
    lane = builder.insert_element(ir.Constant(_V16, ir.Undefined), x,
                                  ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lane, ir.Constant(_V16, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))


@intrinsic
def vload(typingctx, arr, offset):
    """``arr[offset:offset + 16]`` (1-D float32) as an :data:`f32x16`."""
    def codegen(context, builder, signature, args):
        return builder.load(_ptr(context, builder, signature.args[0], *args), align=4)

    return f32x16(arr, types.int64), codegen


@intrinsic
def vstore(typingctx, arr, offset, value):
    """``arr[offset:offset + 16] = value``."""
    def codegen(context, builder, signature, args):
        builder.store(args[2], _ptr(context, builder, signature.args[0], args[0], args[1]),
                      align=4)
        return context.get_dummy_value()

    return types.void(arr, types.int64, f32x16), codegen


def _fma(builder, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``; float or ``<16 x float>``)."""
    name = "llvm.fma.v16f32" if a.type == _V16 else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(fn, [a, b, c])


@intrinsic
def vmadd(typingctx, acc, arr, offset, x):
    """``acc + arr[offset:offset + 16] * x``, fused (one rounding)."""
    def codegen(context, builder, signature, args):
        acc_v, arr_v, off, xv = args
        w = builder.load(_ptr(context, builder, signature.args[1], arr_v, off), align=4)
        return _fma(builder, w, _splat(builder, xv), acc_v)

    return f32x16(f32x16, arr, types.int64, types.float32), codegen


@intrinsic
def axpy16(typingctx, out, out_offset, data, data_offset, x):
    """``out[o:o + 16] += data[d:d + 16] * x`` in place (one SIMD fused multiply-add)."""
    def codegen(context, builder, signature, args):
        out_v, o_off, data_v, d_off, xv = args
        op = _ptr(context, builder, signature.args[0], out_v, o_off)
        w = builder.load(_ptr(context, builder, signature.args[2], data_v, d_off), align=4)
        res = _fma(builder, w, _splat(builder, xv), builder.load(op, align=4))
        builder.store(res, op, align=4)
        return context.get_dummy_value()

    return types.void(out, types.int64, data, types.int64, types.float32), codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """``a * b + c`` for float32 scalars, rounded once: the scalar kernels' update, so that
    they return the floats of the SIMD ones adding in the same order."""
    def codegen(context, builder, signature, args):
        return _fma(builder, *args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def prefetch(typingctx, arr, offset):
    """Hint the CPU to bring the cache line of ``arr[offset]`` into L1 (``llvm.prefetch``,
    read, high locality); no effect on results, no fault on any address."""
    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, types.int64), codegen


__all__ = ["F32x16Type", "axpy16", "f32x16", "fma32", "prefetch", "vload", "vmadd", "vstore"]
