"""Bit-level helpers for the Numba kernels: LLVM's bitcast, which Numba has no scalar spelling for."""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def f32_from_bits(typingctx, i):
    """The float32 whose IEEE bits are the low 32 bits of the integer i."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)) if i.bitwidth > 32 else args[0], ir.FloatType())
    return types.float32(i), codegen
