"""Inline-PTX intrinsics that Numba CUDA lacks: dp4a (4 int8 MACs), ld_volatile (a float32 load from L2, for the
last-block pattern), ld_half2 (two float16 in one 4-byte load) and prefetch_l2 (a bulk prefetch into L2). Under
the CUDA simulator they are plain-Python twins."""

import os

from llvmlite import ir
from numba import float32, types
from numba.cuda import cgutils

try:
    from numba.cuda.extending import intrinsic
except ImportError:  # older numba-cuda
    from numba.core.extending import intrinsic

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":  # the simulator runs Python: plain-Python twins
    def dp4a(a, b, c):
        for i in range(4):
            x, y = ((a >> (8 * i)) & 255), ((b >> (8 * i)) & 255)
            c += (x - 256 if x > 127 else x) * (y - 256 if y > 127 else y)
        return c

    def ld_volatile(ary, idx):
        return ary[idx]

    def ld_half2(ary, idx):
        return float32(ary[idx]), float32(ary[idx[:-1] + (idx[-1] + 1,)])

    def prefetch_l2(addr, nbytes):
        pass
else:
    @intrinsic
    def dp4a(typingctx, a, b, c):
        """c + sum_i a.byte[i] * b.byte[i] over the 4 signed bytes of the low 32 bits of a and b (PTX dp4a.s32.s32:
        4 int8 MACs in one instruction). Numba has no intrinsic of its own: this emits the PTX inline."""
        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            vals = [context.cast(builder, v, t, types.int32) for v, t in zip(args, sig.args)]
            return builder.asm(ir.FunctionType(i32, [i32, i32, i32]), "dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r",
                               vals, side_effect=False)
        return types.int32(a, b, c), codegen

    def _item_ptr(context, builder, sig, args):
        """The LLVM pointer to ary[idx] for an intrinsic called as f(ary, idx)."""
        aryty, idxty = sig.args
        arr = context.make_array(aryty)(context, builder, args[0])
        ix = [context.cast(builder, v, t, types.intp)
              for v, t in zip(cgutils.unpack_tuple(builder, args[1], aryty.ndim), idxty)]
        return cgutils.get_item_pointer(context, builder, aryty, arr, ix, wraparound=False)

    @intrinsic
    def ld_volatile(typingctx, ary, idx):
        """ary[idx] (float32) read with ld.volatile: from L2, never from a stale L1 line. For data that other
        blocks of the running kernel wrote and published with a threadfence (CUDA's last-block pattern)."""
        if not isinstance(ary, types.Array) or ary.dtype != types.float32:
            return None

        def codegen(context, builder, sig, args):
            addr = builder.ptrtoint(_item_ptr(context, builder, sig, args), ir.IntType(64))
            return builder.asm(ir.FunctionType(ir.FloatType(), [ir.IntType(64)]), "ld.volatile.f32 $0, [$1];",
                               "=f,l", [addr], side_effect=True)
        return types.float32(ary, idx), codegen

    @intrinsic
    def ld_half2(typingctx, ary, idx):
        """(ary[idx], ary[idx + 1 along the last axis]) of a float16 array, widened to float32, in one 4-byte
        load (idx's last index even, the last axis contiguous: the pair is 4-byte aligned)."""
        if not isinstance(ary, types.Array) or ary.dtype != types.float16:
            return None

        def codegen(context, builder, sig, args):
            ptr = _item_ptr(context, builder, sig, args)
            pair = builder.load(builder.bitcast(ptr, ir.VectorType(ir.HalfType(), 2).as_pointer()), align=4)
            f = [builder.fpext(builder.extract_element(pair, ir.Constant(ir.IntType(32), i)), ir.FloatType())
                 for i in (0, 1)]
            return context.make_tuple(builder, sig.return_type, f)
        return types.UniTuple(types.float32, 2)(ary, idx), codegen


    @intrinsic
    def prefetch_l2(typingctx, addr, nbytes):
        """Start fetching nbytes (a multiple of 16) of device memory from addr (16-byte aligned) into the L2 cache:
        one cp.async.bulk.prefetch.L2 (sm_90). A hint that nothing waits for."""
        def codegen(context, builder, sig, args):
            i64, i32 = ir.IntType(64), ir.IntType(32)
            a = context.cast(builder, args[0], sig.args[0], types.int64)
            n = context.cast(builder, args[1], sig.args[1], types.int32)
            builder.asm(ir.FunctionType(ir.VoidType(), [i64, i32]), "cp.async.bulk.prefetch.L2.global [$0], $1;",
                        "l,r", [a, n], side_effect=True)
            return context.get_dummy_value()
        return types.void(addr, nbytes), codegen
