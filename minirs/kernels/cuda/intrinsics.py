"""Inline-PTX intrinsics that Numba CUDA lacks: dp4a (4 int8 MACs), mma_f16 (a float16 tensor-core tile product),
h2sub / h2fma (float16 pairs packed in a uint32), cp_async (a global -> shared copy that needs no registers,
between raw addresses from addr_of / shared_addr; cp_async_commit / cp_async_wait0 / _wait1), ld_volatile (a
float32 load from L2, for the last-block pattern), ld_half2 (two float16 in one 4-byte load), prefetch_l2 (a
bulk prefetch into L2), prefetch_line (one cache line into L1 or L2) and wait_prior_kernel (programmatic dependent
launch). Under the CUDA simulator they are plain-Python twins, except mma_f16 (a warp-wide instruction) and the
raw-address ones, which raise there."""

import os

import numpy as np
from llvmlite import ir
from numba import float32, types
from numba.cuda import cgutils

from minirs.kernels.cuda.launch import dependent_launch

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

    def prefetch_line(ary, idx, level):
        pass

    def mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        raise RuntimeError("mma_f16 is a warp-wide tensor-core instruction: the CUDA simulator, which runs lanes "
                           "one by one and has no warp shuffles, cannot run it (mma.py's kernels need a GPU)")

    def _pair(v):
        return np.array([int(v) & 0xFFFFFFFF], np.uint32).view(np.float16)

    def _packed(h):
        return int(np.asarray(h, np.float16).view(np.uint32)[0])

    def h2sub(a, b):
        return _packed(_pair(a) - _pair(b))

    def h2fma(a, b, c):  # one rounding, as fma.rn.f16x2
        return _packed((_pair(a).astype(np.float64) * _pair(b) + _pair(c)).astype(np.float16))

    def _no_addresses(*args):
        raise RuntimeError("raw device addresses (addr_of, shared_addr, cp_async) do not exist in the CUDA "
                           "simulator, which runs Python (mma.py's kernels need a GPU)")

    addr_of = shared_addr = cp_async = _no_addresses

    def wait_prior_kernel():
        pass

    def cp_async_commit():
        pass

    def cp_async_wait0():
        pass

    def cp_async_wait1():
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

    def _ptr(context, builder, aryty, idxty, ary, idx):
        """The LLVM pointer to ary[idx] (idx a tuple of integers)."""
        arr = context.make_array(aryty)(context, builder, ary)
        ix = [context.cast(builder, v, t, types.intp)
              for v, t in zip(cgutils.unpack_tuple(builder, idx, aryty.ndim), idxty)]
        return cgutils.get_item_pointer(context, builder, aryty, arr, ix, wraparound=False)

    def _item_ptr(context, builder, sig, args):
        """The LLVM pointer to ary[idx] for an intrinsic called as f(ary, idx)."""
        return _ptr(context, builder, *sig.args, *args)

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


    @intrinsic
    def prefetch_line(typingctx, ary, idx, level):
        """Start fetching the cache line that holds ary[idx] into L1 (level the literal 1) or L2 (2): PTX prefetch,
        a hint that nothing waits for. L1 is not kept coherent with other SMs' writes: L1 only for data no
        kernel writes (weights)."""
        if not isinstance(ary, types.Array) or not isinstance(level, types.IntegerLiteral) or \
                level.literal_value not in (1, 2):
            return None
        text = f"prefetch.L{level.literal_value} [$0];"

        def codegen(context, builder, sig, args):
            addr = builder.ptrtoint(_ptr(context, builder, sig.args[0], sig.args[1], args[0], args[1]),
                                    ir.IntType(64))
            builder.asm(ir.FunctionType(ir.VoidType(), [ir.IntType(64)]), text, "l", [addr], side_effect=True)
            return context.get_dummy_value()
        return types.void(ary, idx, level), codegen

    @intrinsic
    def mma_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """This lane's four float32 results (d0..d3) of the warp-wide D = A (16 x 16 float16) @ B (16 x 8 float16)
        + C on the tensor cores: PTX mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, every lane of the warp
        together; a* and b* are uint32 words of two float16 each (the lower k in the low half). Lane 4g + c holds
        (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"): a0 = A[g, 2c..2c+1],
        a1 = A[g+8, 2c..], a2 = A[g, 2c+8..2c+9], a3 = A[g+8, 2c+8..]; b0 = B[2c..2c+1, g], b1 = B[2c+8..2c+9, g];
        c0, c1 = C[g, 2c], C[g, 2c+1], c2, c3 = C[g+8, 2c], C[g+8, 2c+1], and gets D at the places of C. Products
        are exact and summed in float32."""
        ret = types.UniTuple(types.float32, 4)

        def codegen(context, builder, sig, args):
            i32, f32 = ir.IntType(32), ir.FloatType()
            vals = [context.cast(builder, v, t, types.uint32) for v, t in zip(args[:6], sig.args[:6])]
            vals += [context.cast(builder, v, t, types.float32) for v, t in zip(args[6:], sig.args[6:])]
            fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
            res = builder.asm(fnty, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0,$1,$2,$3}, {$4,$5,$6,$7}, "
                              "{$8,$9}, {$10,$11,$12,$13};", "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", vals, side_effect=True)
            return context.make_tuple(builder, ret, [builder.extract_value(res, i) for i in range(4)])
        return ret(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3), codegen

    def _u32_asm(text):
        """The codegen of an intrinsic f(a, b, ...) -> uint32: one PTX instruction on uint32 registers."""
        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            vals = [context.cast(builder, v, t, types.uint32) for v, t in zip(args, sig.args)]
            return builder.asm(ir.FunctionType(i32, [i32] * len(vals)), text, ",".join(["=r"] + ["r"] * len(vals)),
                               vals, side_effect=False)
        return codegen

    @intrinsic
    def h2sub(typingctx, a, b):
        """The float16 pairs of a minus those of b (uint32 words of two float16), rounded to nearest: sub.f16x2."""
        return types.uint32(a, b), _u32_asm("sub.rn.f16x2 $0, $1, $2;")

    @intrinsic
    def h2fma(typingctx, a, b, c):
        """a * b + c on float16 pairs packed in uint32 words, one rounding each: fma.rn.f16x2."""
        return types.uint32(a, b, c), _u32_asm("fma.rn.f16x2 $0, $1, $2, $3;")

    @intrinsic
    def addr_of(typingctx, ary, idx):
        """The address of ary[idx] as an int64 (generic address space): for address arithmetic done once, outside
        a loop, and cp_async."""
        def codegen(context, builder, sig, args):
            return builder.ptrtoint(_item_ptr(context, builder, sig, args), ir.IntType(64))
        return types.int64(ary, idx), codegen

    @intrinsic
    def shared_addr(typingctx, ary, idx):
        """The shared-window address of ary[idx] (ary a shared array) as an int64: cvta.to.shared."""
        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            a = builder.ptrtoint(_item_ptr(context, builder, sig, args), i64)
            return builder.asm(ir.FunctionType(i64, [i64]), "cvta.to.shared.u64 $0, $1;", "=l,l", [a],
                               side_effect=False)
        return types.int64(ary, idx), codegen

    @intrinsic
    def cp_async(typingctx, dst, src, nbytes):
        """Copy nbytes (a literal 4, 8 or 16) from the global address src (addr_of) to the shared address dst
        (shared_addr), both nbytes-aligned, without passing through registers (PTX cp.async, sm_80+; 16 bytes
        bypass L1). The copy lands later: cp_async_commit closes a group of copies, cp_async_wait0 / _wait1 wait
        until at most 0 / 1 of this thread's groups are in flight, and a barrier then shows the data to the other
        threads."""
        if not isinstance(nbytes, types.IntegerLiteral) or nbytes.literal_value not in (4, 8, 16):
            return None
        n = nbytes.literal_value
        cache = "cg" if n == 16 else "ca"

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            d, s = (context.cast(builder, v, t, types.int64) for v, t in zip(args[:2], sig.args[:2]))
            builder.asm(ir.FunctionType(ir.VoidType(), [i64, i64]),
                        "{ .reg .u32 b; .reg .u64 g; cvt.u32.u64 b, $0; cvta.to.global.u64 g, $1; "
                        f"cp.async.{cache}.shared.global [b], [g], {n}; }}", "l,l", [d, s], side_effect=True)
            return context.get_dummy_value()
        return types.void(dst, src, nbytes), codegen

    def _asm_void(text):
        @intrinsic
        def f(typingctx):
            def codegen(context, builder, sig, args):
                builder.asm(ir.FunctionType(ir.VoidType(), []), text, "~{memory}", [], side_effect=True)
                return context.get_dummy_value()
            return types.void(), codegen
        return f

    @intrinsic
    def wait_prior_kernel(typingctx):
        """Programmatic dependent launch (PDL, sm_90+; launch.dependent_launch): wait until the kernel before
        this one in the stream has finished and its writes are visible (griddepcontrol.wait), then let the kernel
        after this one start launching (griddepcontrol.launch_dependents). Every kernel calls it before it touches
        device memory (only weight prefetches may come first), so a kernel's blocks are placed on the SMs and start
        while the kernel before it still runs, and nothing is read or written before the data is there: ~0.5 us
        per kernel of a CUDA graph on the H100 (BENCHMARKS.md). Nothing is emitted where dependent launch is off
        (no sm_90): kernels then run one after the other as ordinary launches do."""
        def codegen(context, builder, sig, args):
            if dependent_launch():
                builder.asm(ir.FunctionType(ir.VoidType(), []),
                            "griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;", "~{memory}", [],
                            side_effect=True)
            return context.get_dummy_value()
        return types.void(), codegen

    cp_async_commit = _asm_void("cp.async.commit_group;")
    cp_async_wait0 = _asm_void("cp.async.wait_group 0;")
    cp_async_wait1 = _asm_void("cp.async.wait_group 1;")
