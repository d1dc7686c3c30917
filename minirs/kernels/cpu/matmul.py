"""CPU quantized matmul: y = x @ W.T computed on the quantized blocks (cpu/weights.py's families), with Numba.

    y = qmatmul(w, x)                      # x (n, n_in) float32 -> y (n, n_out) float32
    y_ref = qmatmul_ref(tensor, x)         # the NumPy twin: x @ dequantize(W).T

The same kernel serves decode (n = 1) and prefill (n = hundreds): each tile's weights are decoded once per call,
group by group, into an L1 buffer that every row of x then reads, and each output row is computed in one fixed
order whatever n is, so rows are bit-identical alone or batched (see "Kernels" below). No BLAS is involved.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from minirs.formats.model_file import Tensor
from minirs.kernels.cpu.weights import QMatrix

# ---------------------------------------------------------------------------------------------------------------
# Kernels. All quantized arrays are row-interleaved in tiles of L rows: a[t, k, l] is item k of row t*L + l, so
# the innermost loop runs over L rows at once (contiguous, SIMD-friendly: no per-block horizontal sums).
#
# One kernel per family serves every n (decode and prefill alike), and every row of y is *batch-invariant*: its
# bits depend only on its own row of x and on W, never on n or on the other rows. Per tile (prange) and per group
# g of gs inputs, the group's integers are decoded once into a small float32 buffer w (gs, L) that stays in L1
# (exact: integers < 2^24), then every token i runs, in this fixed order, for each output row r:
#
#     s = 0;  for j = 0 .. gs-1:  s = fma(w[j, r], x[i, gs*g + j], s)      (one sequential FMA chain)
#     acc[i, r] = fma(d[r, g], s, acc[i, r]);  then  acc[i, r] = fma(m[r, g], xs[i, g], acc[i, r])  if W has m
#
# with acc[i, r] = 0 before group 0, and xs[i, g] = x[i, gs*g] + ... + x[i, gs*g + gs-1] summed left to right.
# Tokens are processed four, then two per pass over w (each weight load feeds 4 or 2 FMAs), the odd one alone: all run
# the same chain. The kernels are compiled *without* fastmath and every FMA is the explicit llvm.fma intrinsic,
# so LLVM may vectorise over rows (independent lanes) but can neither reassociate nor contract anything: the
# per-row order above is exactly what runs, for any n, any thread count and any vector width. No BLAS anywhere
# (its results depend on the batch size, and its thread pool fights Numba's on small machines).
# A single token (decode) goes to _mv_q4 / _mv_q8 (below), which run exactly these operations in another loop order.
# ---------------------------------------------------------------------------------------------------------------

@intrinsic
def _fma(typingctx, a, b, c):
    """fma(a, b, c) = a * b + c with a single rounding (llvm.fma.f32), float32 in and out."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fma, args)

    return sig, codegen


@njit(cache=True, inline="always")
def _chain2(w, xa, xb, k0, sa, sb):
    # sa[l] = sum_j w[j, l] * xa[k0 + j] as one sequential FMA chain over j (sb alike for xb); 4 j's per pass
    L = w.shape[1]
    for l in range(L):
        sa[l] = 0
        sb[l] = 0
    for j in range(0, w.shape[0], 4):
        a0, a1, a2, a3 = xa[k0 + j], xa[k0 + j + 1], xa[k0 + j + 2], xa[k0 + j + 3]
        b0, b1, b2, b3 = xb[k0 + j], xb[k0 + j + 1], xb[k0 + j + 2], xb[k0 + j + 3]
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for l in range(L):
            sa[l] = _fma(w3[l], a3, _fma(w2[l], a2, _fma(w1[l], a1, _fma(w0[l], a0, sa[l]))))
            sb[l] = _fma(w3[l], b3, _fma(w2[l], b2, _fma(w1[l], b1, _fma(w0[l], b0, sb[l]))))


@njit(cache=True, inline="always")
def _chain4(w, xa, xb, xc, xd, k0, sa, sb, sc, sd):
    # _chain2 for four tokens: each weight load feeds four FMA chains, each chain exactly _chain1's
    L = w.shape[1]
    for l in range(L):
        sa[l] = 0
        sb[l] = 0
        sc[l] = 0
        sd[l] = 0
    for j in range(0, w.shape[0], 4):
        a0, a1, a2, a3 = xa[k0 + j], xa[k0 + j + 1], xa[k0 + j + 2], xa[k0 + j + 3]
        b0, b1, b2, b3 = xb[k0 + j], xb[k0 + j + 1], xb[k0 + j + 2], xb[k0 + j + 3]
        c0, c1, c2, c3 = xc[k0 + j], xc[k0 + j + 1], xc[k0 + j + 2], xc[k0 + j + 3]
        d0, d1, d2, d3 = xd[k0 + j], xd[k0 + j + 1], xd[k0 + j + 2], xd[k0 + j + 3]
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for l in range(L):
            sa[l] = _fma(w3[l], a3, _fma(w2[l], a2, _fma(w1[l], a1, _fma(w0[l], a0, sa[l]))))
            sb[l] = _fma(w3[l], b3, _fma(w2[l], b2, _fma(w1[l], b1, _fma(w0[l], b0, sb[l]))))
            sc[l] = _fma(w3[l], c3, _fma(w2[l], c2, _fma(w1[l], c1, _fma(w0[l], c0, sc[l]))))
            sd[l] = _fma(w3[l], d3, _fma(w2[l], d2, _fma(w1[l], d1, _fma(w0[l], d0, sd[l]))))


@njit(cache=True, inline="always")
def _chain1(w, xa, k0, sa):
    # _chain2 for a single token: the same FMA chain, so a row's bits do not depend on it being paired or not
    L = w.shape[1]
    for l in range(L):
        sa[l] = 0
    for j in range(0, w.shape[0], 4):
        a0, a1, a2, a3 = xa[k0 + j], xa[k0 + j + 1], xa[k0 + j + 2], xa[k0 + j + 3]
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for l in range(L):
            sa[l] = _fma(w3[l], a3, _fma(w2[l], a2, _fma(w1[l], a1, _fma(w0[l], a0, sa[l]))))


@njit(cache=True, inline="always")
def _scale(acc, s, dg, mg, xs_i, g):
    # acc[l] = fma(d[l], s[l], acc[l]), then acc[l] = fma(m[l], xs_i[g], acc[l]) when the type has offsets
    for l in range(acc.shape[0]):
        acc[l] = _fma(dg[l], s[l], acc[l])
    if mg.shape[0]:
        xsg = xs_i[g]
        for l in range(acc.shape[0]):
            acc[l] = _fma(mg[l], xsg, acc[l])


@njit(cache=True, inline="always")
def _group(w, x, k0, dg, mg, xs, g, acc, s):
    # acc[i] += group g's contribution for every token i (w: the group's decoded integers, (gs, L))
    n = x.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        _chain4(w, x[i], x[i + 1], x[i + 2], x[i + 3], k0, s[0], s[1], s[2], s[3])
        for u in range(4):
            _scale(acc[i + u], s[u], dg, mg, xs[i + u], g)
    for i in range(n4, n - 1, 2):
        _chain2(w, x[i], x[i + 1], k0, s[0], s[1])
        _scale(acc[i], s[0], dg, mg, xs[i], g)
        _scale(acc[i + 1], s[1], dg, mg, xs[i + 1], g)
    if n % 2:
        _chain1(w, x[n - 1], k0, s[0])
        _scale(acc[n - 1], s[0], dg, mg, xs[n - 1], g)


@njit(cache=True, inline="always")
def _store(acc, y, r0):
    # y[i, r0 + l] = acc[i, l] for the rows that exist (the last tile is zero-padded)
    for i in range(acc.shape[0]):
        for l in range(min(acc.shape[1], y.shape[1] - r0)):
            y[i, r0 + l] = acc[i, l]


@njit(cache=True, parallel=True, nogil=True)
def _mm_q4(q, d, m, off, x, xs, y):
    # y[i, r] = sum_g d[r, g] * sum_j (nib[r, 32g + j] - off) * x[i, 32g + j] (+ m[r, g] * xs[i, g])
    n_tiles, _, L = q.shape
    fo = np.float32(off)
    no_m = np.zeros(0, np.float32)
    for t in prange(n_tiles):
        w = np.empty((32, L), np.float32)
        s = np.empty((4, L), np.float32)
        acc = np.zeros((x.shape[0], L), np.float32)
        for g in range(d.shape[1]):
            for j in range(16):  # byte j of the group: lo nibble = element j, hi nibble = element j + 16
                qk, lo, hi = q[t, 16 * g + j], w[j], w[j + 16]
                for l in range(L):  # split in float32 (16 lanes; Numba's integers are int64): exact for b < 256
                    b = np.float32(qk[l])
                    h = np.floor(b * np.float32(0.0625))
                    lo[l] = _fma(np.float32(-16.0), h, b) - fo
                    hi[l] = h - fo
            _group(w, x, 32 * g, d[t, g], m[t, g] if m.shape[0] else no_m, xs, g, acc, s)
        _store(acc, y, t * L)


@njit(cache=True, parallel=True, nogil=True)
def _mm_q8(q, d, m, x, xs, y):
    # y[i, r] = sum_g d[r, g] * sum_j q[r, gs*g + j] * x[i, gs*g + j] (+ m[r, g] * xs[i, g])
    n_tiles, n_in, L = q.shape
    gs = n_in // d.shape[1]
    no_m = np.zeros(0, np.float32)
    for t in prange(n_tiles):
        w = np.empty((gs, L), np.float32)
        s = np.empty((4, L), np.float32)
        acc = np.zeros((x.shape[0], L), np.float32)
        for g in range(d.shape[1]):
            for j in range(gs):
                qk, wj = q[t, gs * g + j], w[j]
                for l in range(L):
                    wj[l] = np.float32(qk[l])
            _group(w, x, gs * g, d[t, g], m[t, g] if m.shape[0] else no_m, xs, g, acc, s)
        _store(acc, y, t * L)


@njit(cache=True, parallel=True, nogil=True)
def _mm_float(raw, kind, x, y):
    # y[i, r] = sum_k W[r, k] * x[i, k]; raw rows (n_out, n_in) of float32 (kind 0), or uint16 bits of f16 (kind 1)
    # or bf16 (kind 2), converted in groups of 32 inputs for L = 64 rows at a time (Numba has no float16); the
    # order is the quantized kernels' with d = 1 and no m. x is zero-padded to whole groups (x.shape[1] >= n_in)
    # and the missing weights of a last partial group read as 0, so fma(0, 0, s) leaves s unchanged.
    n_out = raw.shape[0]
    L = 64
    ones = np.ones(L, np.float32)
    no_m = np.zeros(0, np.float32)
    no_xs = np.zeros((x.shape[0], 0), np.float32)
    for t in prange(-(-n_out // L)):
        w = np.zeros((32, L), np.float32)
        wb = w.view(np.uint32)
        s = np.empty((4, L), np.float32)
        acc = np.zeros((x.shape[0], L), np.float32)
        for g in range(x.shape[1] // 32):
            for l in range(min(L, n_out - t * L)):
                row = raw[t * L + l, 32 * g:32 * g + 32]
                w[row.shape[0]:, l] = 0
                for j in range(row.shape[0]):
                    if kind == 0:
                        w[j, l] = row[j]
                    elif kind == 2:
                        wb[j, l] = np.uint32(row[j]) << np.uint32(16)
                    else:
                        w[j, l] = _f16_to_f32(np.uint32(row[j]))
            _group(w, x, 32 * g, ones, no_m, no_xs, g, acc, s)
        _store(acc, y, t * L)


# Single-token decode (n = 1) is bound by FMA latency, not bandwidth, if each lane runs its chain alone: the
# kernels below run the very same per-row operations as _mm_q4 / _mm_q8 (one sequential chain per group, then
# fma(d, s, acc) and fma(m, xs, acc)), so their rows are bit-identical with the batched kernels', but they give
# each vector iteration four rows of the tile (l, l + Q, l + 2Q, l + 3Q with Q = L/4) whose chains interleave,
# keep each group's 32 inputs of x in registers and read the integers straight from q (no L1 buffer).

def _nibble(shift):
    @intrinsic
    def nib(typingctx, v):
        """float32((v >> shift) & 15) for a uint8 v, in 8-bit integer ops (Numba's own widen to int64)."""
        def codegen(context, builder, signature, args):
            i8 = ir.IntType(8)
            r = builder.and_(builder.lshr(args[0], ir.Constant(i8, shift)), ir.Constant(i8, 15))
            return builder.uitofp(r, ir.FloatType())

        return types.float32(types.uint8), codegen

    return nib


_lo4, _hi4 = _nibble(0), _nibble(4)


@njit(cache=True, inline="always")
def _read_q4(qt, k, h, l, fo):
    # element of nibble h (0: lo, 1: hi) of byte k of row l, minus the offset
    return (_hi4(qt[k, l]) if h else _lo4(qt[k, l])) - fo


@njit(cache=True, inline="always")
def _read_q8(qt, k, h, l, fo):
    return np.float32(qt[k, l])


@njit(cache=True, inline="always")
def _chain8(read, qt, k, h, fo, xi, k0, l, Q, s0, s1, s2, s3):
    # continue the chains of rows l + cQ (c = 0..3) over 8 inputs: weight read(qt, k + j, h, ...) times x[k0 + j]
    # (8, not 16: LLVM must unroll this loop fully before it vectorises the loop over l around it)
    for j in range(8):
        xj = xi[k0 + j]
        s0 = _fma(read(qt, k + j, h, l, fo), xj, s0)
        s1 = _fma(read(qt, k + j, h, l + Q, fo), xj, s1)
        s2 = _fma(read(qt, k + j, h, l + 2 * Q, fo), xj, s2)
        s3 = _fma(read(qt, k + j, h, l + 3 * Q, fo), xj, s3)
    return s0, s1, s2, s3


@njit(cache=True, inline="always")
def _chain16(read, qt, k, h, fo, xi, k0, l, Q, s0, s1, s2, s3):
    s0, s1, s2, s3 = _chain8(read, qt, k, h, fo, xi, k0, l, Q, s0, s1, s2, s3)
    return _chain8(read, qt, k + 8, h, fo, xi, k0 + 8, l, Q, s0, s1, s2, s3)


@njit(cache=True, inline="always")
def _scale4(a, l, Q, dg, mg, xsg, has_m, s0, s1, s2, s3):
    # a[16c + l] (row l + cQ) = fma(d, s_c, a), then fma(m, xs, a): _scale's operations
    a[l] = _fma(dg[l], s0, a[l])
    a[16 + l] = _fma(dg[l + Q], s1, a[16 + l])
    a[32 + l] = _fma(dg[l + 2 * Q], s2, a[32 + l])
    a[48 + l] = _fma(dg[l + 3 * Q], s3, a[48 + l])
    if has_m:
        a[l] = _fma(mg[l], xsg, a[l])
        a[16 + l] = _fma(mg[l + Q], xsg, a[16 + l])
        a[32 + l] = _fma(mg[l + 2 * Q], xsg, a[32 + l])
        a[48 + l] = _fma(mg[l + 3 * Q], xsg, a[48 + l])


@njit(cache=True, inline="always")
def _mv_tile(read, qt, dt, mt, xi, xsi, y, r0, fo, gs, has_m):
    # y[0, r0 + l] for one tile, x a single token. gs (16 or 32 for q8, 0 for q4 nibbles), fo and has_m are
    # literals at every call site, so that LLVM folds them. a (64,) holds the four quarters at constant offsets 16c
    # (Q <= 16), which lets LLVM prove the stores independent and vectorise over l with few runtime checks.
    Q = qt.shape[1] // 4
    a = np.zeros(64, np.float32)
    p = np.empty(64, np.float32)
    for g in range(dt.shape[0]):
        dg, mg = dt[g], mt[g] if has_m else dt[g]
        xsg = xsi[g] if has_m else np.float32(0.0)
        z = np.float32(0.0)
        if gs == 0:  # q4: byte 16g + j: lo nibble = input 32g + j, hi nibble = input 32g + 16 + j
            for l in range(Q):
                s0, s1, s2, s3 = _chain16(read, qt, 16 * g, 0, fo, xi, 32 * g, l, Q, z, z, z, z)
                s0, s1, s2, s3 = _chain16(read, qt, 16 * g, 1, fo, xi, 32 * g + 16, l, Q, s0, s1, s2, s3)
                _scale4(a, l, Q, dg, mg, xsg, has_m, s0, s1, s2, s3)
        elif gs == 16:
            for l in range(Q):
                s0, s1, s2, s3 = _chain16(read, qt, 16 * g, 0, fo, xi, 16 * g, l, Q, z, z, z, z)
                _scale4(a, l, Q, dg, mg, xsg, has_m, s0, s1, s2, s3)
        else:  # 32 int8 rows: two loops of 16 (LLVM gives up on 128 distinct row pointers), the chains kept in p
            for l in range(Q):
                s0, s1, s2, s3 = _chain16(read, qt, 32 * g, 0, fo, xi, 32 * g, l, Q, z, z, z, z)
                p[l], p[16 + l], p[32 + l], p[48 + l] = s0, s1, s2, s3
            for l in range(Q):
                s0, s1, s2, s3 = _chain16(read, qt, 32 * g + 16, 0, fo, xi, 32 * g + 16, l, Q,
                                          p[l], p[16 + l], p[32 + l], p[48 + l])
                _scale4(a, l, Q, dg, mg, xsg, has_m, s0, s1, s2, s3)
    for c in range(4):
        for l in range(min(Q, y.shape[1] - r0 - c * Q)):
            y[0, r0 + c * Q + l] = a[16 * c + l]


@njit(cache=True, parallel=True, nogil=True)
def _mv_q4(q, d, m, off, x, y):
    # _mm_q4 for one token (Q4_0: off 8 and no m; Q4_1, Q4_K: off 0 and m); the group sums of x are made here,
    # which saves a call
    L = q.shape[2]
    xs = _group_sums(x, d.shape[1]) if m.shape[0] else np.zeros((1, 0), np.float32)
    for t in prange(q.shape[0]):
        if off:
            _mv_tile(_read_q4, q[t], d[t], d[t], x[0], xs[0], y, t * L, np.float32(8.0), 0, False)
        else:
            _mv_tile(_read_q4, q[t], d[t], m[t], x[0], xs[0], y, t * L, np.float32(0.0), 0, True)


@njit(cache=True, parallel=True, nogil=True)
def _mv_q8(q, d, m, x, y):
    # _mm_q8 for one token
    L = q.shape[2]
    xs = _group_sums(x, d.shape[1]) if m.shape[0] else np.zeros((1, 0), np.float32)
    gs = q.shape[1] // d.shape[1]
    for t in prange(q.shape[0]):
        mt = m[t] if m.shape[0] else d[t]
        if gs == 16 and m.shape[0]:
            _mv_tile(_read_q8, q[t], d[t], mt, x[0], xs[0], y, t * L, np.float32(0.0), 16, True)
        elif gs == 16:
            _mv_tile(_read_q8, q[t], d[t], mt, x[0], xs[0], y, t * L, np.float32(0.0), 16, False)
        elif m.shape[0]:
            _mv_tile(_read_q8, q[t], d[t], mt, x[0], xs[0], y, t * L, np.float32(0.0), 32, True)
        else:
            _mv_tile(_read_q8, q[t], d[t], mt, x[0], xs[0], y, t * L, np.float32(0.0), 32, False)


_F16_SCALE = np.array([2.0 ** -24] + [2.0 ** (e - 25) for e in range(1, 31)] + [np.inf], np.float32)


@njit(cache=True, inline="always")
def _f16_to_f32(b):
    # IEEE half bits -> float32, exactly: (1024 + mantissa) * 2^(e - 25), subnormals mantissa * 2^-24
    e = (b >> np.uint32(10)) & np.uint32(31)
    mant = b & np.uint32(1023)
    r = np.float32(mant + (np.uint32(1024) if e else np.uint32(0))) * _F16_SCALE[e]
    if e == 31 and mant:
        r = np.float32(np.nan)
    return -r if b & np.uint32(0x8000) else r




@njit(cache=True, nogil=True)
def _group_sums(x, n_groups):
    # xs[i, g] = x[i, gs*g] + x[i, gs*g + 1] + ... summed left to right (a fixed order, unlike np.sum)
    n, n_in = x.shape
    gs = n_in // n_groups
    xs = np.zeros((n, n_groups), np.float32)
    for i in range(n):
        for g in range(n_groups):
            a = np.float32(0.0)
            for j in range(gs * g, gs * g + gs):
                a += x[i, j]
            xs[i, g] = a
    return xs



_FLOAT_KIND = {"F32": 0, "F16": 1, "BF16": 2}


def qmatmul(w: QMatrix, x: np.ndarray) -> np.ndarray:
    """y = x @ W.T   x: (n, n_in) float32 -> (n, n_out) float32; row i of y depends only on x[i] and W (bits too)."""
    if x.ndim != 2 or x.shape[1] != w.n_in:
        raise ValueError(f"qmatmul: x has shape {x.shape}, expected (n, {w.n_in}) for a {w.qtype} matrix "
                         f"({w.n_out}, {w.n_in})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty((x.shape[0], w.n_out), np.float32)
    if w.family == "float":
        if w.n_in % 32:  # any row length is legal for float weights: pad x to whole groups of 32
            x = np.concatenate([x, np.zeros((x.shape[0], -w.n_in % 32), np.float32)], axis=1)
        _mm_float(w.q, _FLOAT_KIND[w.qtype], x, y)
        return y
    if x.shape[0] == 1 and w.q.shape[2] in (32, 64):  # decode: same bits as the batched kernels, faster
        if w.family == "q4":
            _mv_q4(w.q, w.d, w.m, w.off, x, y)
        else:
            _mv_q8(w.q, w.d, w.m, x, y)
        return y
    xs = _group_sums(x, w.d.shape[1]) if w.m.shape[0] else np.zeros((x.shape[0], 0), np.float32)
    if w.family == "q4":
        _mm_q4(w.q, w.d, w.m, w.off, x, xs, y)
    else:
        _mm_q8(w.q, w.d, w.m, x, xs, y)
    return y



def qmatmul_ref(t, x: np.ndarray, qtype: str | None = None) -> np.ndarray:
    """The NumPy twin: x @ dequantize(W).T, for a Tensor, or for raw (n_out, row_bytes) uint8 rows plus qtype."""
    import gguf
    raw, qtype = (t.rows(), t.qtype) if isinstance(t, Tensor) else (t, qtype)
    return x @ gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).T


def set_threads(n: int) -> None:
    """Threads for the prange kernels (default: all cores)."""
    numba.set_num_threads(n)
