"""CPU LoRA delta (Numba): the adapters of one projection, their A and B stacked, added to its output; twin in
kernels/ref.py (lora_delta).

    u[r, j] = coef[r, key[j]] * scale[j] * (A[j] . x[r])          # rank columns j of every adapter, stacked
    y[r, lo[j]:hi[j]] += u[r, j] * Bt[j, lo[j]:hi[j]]              # each column writes its part's output rows

The down product (`down_rows`) and the up product (`up_rows` over whole output rows, `up_tile` over one tile of
the matmul's TILE outputs) are the pieces every kernel calls. A decode-sized quantized matmul runs them inside its
own call (matmul.py `_mm_q_lora`: the down product beside x's quantization, each tile's up product as the tile
is written, from a copy of B^T laid out by tiles), so a projection with adapters is one call; `lora_add` and
`lora_add_rows` add the delta to an output computed apart (prefill batches, float weights, projections kept as
separate parts). The dot product is one function compiled on its own (`_dot`: its vectorised order is fixed
there), and the up product adds column by column in order (a multiply, then an add), so a row's bits are the same
in every kernel and batch. A row whose coefficients are all zero (a request with no adapter) skips its dot
products and its columns. Beside a quantized base, A and B are kept in float16 (CpuLora).
"""

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from minirs.kernels.cpu.qdot import TILE

ROWS = 8  # rows per block of the parallel kernel


@intrinsic
def widen(typingctx, v):
    """An adapter weight as float32: a float32 as it is, a uint16 as the IEEE half it holds (vcvtph2ps: Numba has
    no float16 type on the CPU)."""
    if v == types.float32:
        return types.float32(v), lambda context, builder, sig, args: args[0]
    if v == types.uint16:
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(v), codegen
    return None


@intrinsic
def _prefetch(typingctx, arr, offset):
    """Ask for the cache line at byte `offset` of arr's data (a hint: no fault past the end)."""
    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        p = builder.gep(builder.bitcast(a.data, i8p), [args[1]])
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(arr, types.int64), codegen


@njit(cache=True, inline="always")
def prefetch_span(arr, start, nbytes):
    """Prefetch nbytes of arr's data from byte `start`, a cache line at a time: the adapter's rows are read once a
    step, from DRAM, in pieces too short for the hardware prefetcher to get ahead of."""
    for off in range(start, start + nbytes, 64):
        _prefetch(arr, off)


@intrinsic
def _up_tile_cols(typingctx, y, r, o0, u, tiles, k0, j0, j1):
    """y[r, o0:o0 + TILE] += u[r, j] * widen(tiles[k0 + j - j0]) for j = j0 .. j1 - 1 in order, skipping the columns
    whose u[r, j] is 0: per element a multiply, then an add, as the scalar loops round, with the TILE values of y
    held in vector registers from the first column to the last (added in memory column after column, each add
    waited for the previous store: 2.9 ns a column against ~1)."""
    half = tiles.dtype == types.uint16

    def codegen(context, builder, sig, args):
        ya, ua, ta = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 3, 4))
        i64, i32 = ir.IntType(64), ir.IntType(32)
        ys, us = (cgutils.unpack_tuple(builder, a.strides, 2)[0] for a in (ya, ua))
        ts = cgutils.unpack_tuple(builder, ta.strides, 2)[0]
        i8p = ir.IntType(8).as_pointer()
        at = lambda arr, off: builder.gep(builder.bitcast(arr.data, i8p), [off])  # noqa: E731
        vf = ir.VectorType(ir.FloatType(), TILE)
        py = builder.bitcast(at(ya, builder.add(builder.mul(args[1], ys), builder.mul(args[2], ir.Constant(i64, 4)))),
                             vf.as_pointer())
        pu = builder.bitcast(at(ua, builder.mul(args[1], us)), ir.FloatType().as_pointer())
        acc = cgutils.alloca_once_value(builder, builder.load(py, align=4))
        with cgutils.for_range_slice(builder, args[6], args[7], ir.Constant(i64, 1)) as (j, _):
            uj = builder.load(builder.gep(pu, [j]))
            pt = at(ta, builder.mul(builder.add(args[5], builder.sub(j, args[6])), ts))
            if half:
                vh = ir.VectorType(ir.IntType(16), TILE)
                b = builder.fpext(builder.bitcast(builder.load(builder.bitcast(pt, vh.as_pointer()), align=2),
                                                  ir.VectorType(ir.HalfType(), TILE)), vf)
            else:
                b = builder.load(builder.bitcast(pt, vf.as_pointer()), align=4)
            splat = builder.insert_element(ir.Constant(vf, ir.Undefined), uj, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, ir.Constant(vf, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, TILE), [0] * TILE))
            old = builder.load(acc)
            new = builder.fadd(old, builder.fmul(splat, b))
            builder.store(builder.select(builder.fcmp_unordered("!=", uj, ir.Constant(ir.FloatType(), 0.0)), new, old),
                          acc)
        builder.store(builder.load(acc), py, align=4)
        return context.get_dummy_value()
    return types.none(y, types.int64, types.int64, u, tiles, types.int64, types.int64, types.int64), codegen


@njit(cache=True, fastmath=True)
def _dot(w, x):
    # sum_k w[k] x[k]: compiled once, not inlined by Numba, so every caller runs the same vectorised order
    s = np.float32(0.0)
    for k in range(x.shape[0]):
        s += widen(w[k]) * x[k]
    return s


@njit(cache=True, inline="always")
def _axpy(a, b, y, n):
    # y[o] += a * b[o] for o < n, b and y 1-D views (indices from 0: LLVM vectorises the loop)
    for o in range(n):
        y[o] += a * widen(b[o])


@njit(cache=True, inline="always")
def down_rows(x, a, key, scale, coef, u, r0, r1, j0, j1):
    """u[r, j] = coef[r, key[j]] * scale[j] * (A[j] . x[r]) for rows r0..r1-1 and columns j0..j1-1, column by
    column: A[j] stays in L1 while the rows use it."""
    row = a.shape[1] * a.itemsize
    for j in range(j0, j1):
        prefetch_span(a, (j + 2) * row, row)
        for r in range(r0, r1):
            c = coef[r, key[j]]
            u[r, j] = 0.0 if c == 0.0 else _dot(a[j], x[r]) * c * scale[j]


@njit(cache=True, inline="always")
def up_rows(u, bt, lo, hi, y, r0, r1):
    """y[r, lo[j]:hi[j]] += u[r, j] * Bt[j, lo[j]:hi[j]] for rows r0..r1-1, column by column in order (Bt[j]
    stays in L1 while the rows use it)."""
    for j in range(bt.shape[0]):
        s, n = lo[j], hi[j] - lo[j]
        bj = bt[j, s:]
        for r in range(r0, r1):
            uj = u[r, j]
            if uj != 0.0:
                _axpy(uj, bj, y[r, s:], n)


@njit(cache=True, inline="always")
def up_tile(u, tiles, lo, hi, tj, y, n, t):
    """up_rows for rows 0..n-1 and the TILE outputs of tile t alone (the same per-element operations in the same
    order), from CpuLora's tiled B^T: a tile's columns are one contiguous read, right after the previous tile's.
    No slices here: a slice counts a reference with an atomic add on an array the other threads use too."""
    o0 = t * TILE
    j0, j1, k0 = tj[t, 0], tj[t, 1], tj[t, 2]
    if tj[t, 3]:  # every column of the tile's range covers it whole
        for r in range(n):
            _up_tile_cols(y, r, o0, u, tiles, k0, j0, j1)
        return
    for j in range(j0, j1):
        s, e = max(lo[j], o0), min(hi[j], o0 + TILE)
        for r in range(n):
            uj = u[r, j]
            if uj != 0.0:
                for o in range(s - o0, e - o0):
                    y[r, np.uint64(o0 + o)] += uj * widen(tiles[k0 + j - j0, np.uint64(o)])


@njit(cache=True, nogil=True)
def lora_add(x, a, bt, key, scale, lo, hi, tiles, tj, coef, y):
    """y += the LoRA delta of x (n, n_in) for the stacked adapters (CpuLora's arrays), see above."""
    n = x.shape[0]
    u = np.empty((n, a.shape[0]), np.float32)
    down_rows(x, a, key, scale, coef, u, 0, n, 0, a.shape[0])
    up_rows(u, bt, lo, hi, y, 0, n)
    return y


@njit(cache=True, parallel=True, nogil=True)
def lora_add_rows(x, a, bt, key, scale, lo, hi, tiles, tj, coef, y):
    """lora_add with blocks of ROWS rows spread over the threads (the same per-row math)."""
    n = x.shape[0]
    u = np.empty((n, a.shape[0]), np.float32)
    for b in prange((n + ROWS - 1) // ROWS):
        r0, r1 = b * ROWS, min(n, b * ROWS + ROWS)
        down_rows(x, a, key, scale, coef, u, r0, r1, 0, a.shape[0])
        up_rows(u, bt, lo, hi, y, r0, r1)
    return y


class CpuLora(NamedTuple):
    """A LoraStack for these kernels: LoraStack's arrays, plus B^T again by tiles of TILE outputs for the matmul's
    epilogue: `tiles` (rows, TILE) holds, tile after tile, the TILE outputs of the columns j0 .. j1-1 that reach
    the tile (no others: a stack's parts cover disjoint outputs, so a tile of q reads q's columns alone), and
    tj[t] = (j0, j1, the row of `tiles` where tile t's start, 1 if each of them covers the whole tile). The
    epilogue then reads B^T as one stream, which the hardware prefetcher follows; laid out (tiles, R, TILE) with
    the columns of the other parts between, its pieces were 1 KB with gaps, and a rank-16 gate|up of SmolLM2 read
    them at ~6 GB/s (its delta +18 us a call, now +8). A and B^T are float32, or IEEE half bits (uint16) with
    `half`: decode reads the adapter from memory at every step, and half the bytes is most of its cost beside a
    quantized base (whose own rounding is far coarser than half's 2^-11)."""
    a: np.ndarray
    bt: np.ndarray
    key: np.ndarray
    scale: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    tiles: np.ndarray
    tj: np.ndarray

    @classmethod
    def of(cls, a, bt, key, scale, lo, hi, half: bool = False) -> "CpuLora":
        """half: store A and B^T as float16 where every value fits its range (else float32)."""
        R, n_out = bt.shape
        tiles = -(-n_out // TILE)
        padded = np.zeros((R, tiles * TILE), np.float32)
        padded[:, :n_out] = bt
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        tj = np.zeros((tiles, 4), np.int64)
        parts = []  # tile t's columns j0 .. j1-1, TILE outputs each, one after the other
        k = 0
        for t in range(tiles):
            js = np.nonzero((lo < (t + 1) * TILE) & (hi > t * TILE))[0]
            if js.size:
                j0, j1 = js[0], js[-1] + 1
                whole = j1 - j0 == js.size and bool(np.all((lo[js] <= t * TILE) & (hi[js] >= (t + 1) * TILE)))
                tj[t] = j0, j1, k, whole
                parts.append(padded[j0:j1, t * TILE:(t + 1) * TILE])
                k += j1 - j0
        tiled = np.concatenate(parts) if parts else np.zeros((0, TILE), np.float32)
        f32 = lambda v: np.ascontiguousarray(v, np.float32)  # noqa: E731
        a, bt, tiled = f32(a), f32(bt), f32(tiled)
        if half and max(np.abs(a).max(initial=0), np.abs(bt).max(initial=0)) < np.finfo(np.float16).max:
            a, bt, tiled = (v.astype(np.float16).view(np.uint16) for v in (a, bt, tiled))
        return cls(a, bt, np.ascontiguousarray(key, np.int64), f32(scale), lo, hi, tiled, tj)
