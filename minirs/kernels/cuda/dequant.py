"""Dequantizing the GPU weight families (the table in matmul.py): the whole matrix to float16 for the prefill's
cuBLAS GEMM, and chosen rows to float32 for the token embedding.

    w16 = dequant_f16(w, stream)                 # (n_out, n_in) float16
    e = dequant(w, rows, scale, stream)          # rows `rows` of W, times scale, (len(rows), n_in) float32
"""

import math

from numba import cuda, float32, int8, int64
from numba.cuda import libdevice

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.weights import GMatrix

DQ_THREADS = 256


def _h4(v0, v1, v2, v3):
    """Four float32 values rounded to float16 and packed into one int64 (element 0 in the low bits)."""
    return (int64(libdevice.float2half_rn(v0)) & 0xFFFF) | ((int64(libdevice.float2half_rn(v1)) & 0xFFFF) << 16) | \
        ((int64(libdevice.float2half_rn(v2)) & 0xFFFF) << 32) | ((int64(libdevice.float2half_rn(v3)) & 0xFFFF) << 48)


def _thread_word(q):
    """The (row, word) of q that this thread of a one-thread-per-word grid owns (row past the end: no word)."""
    e = cuda.grid(1)
    r = e // q.shape[1]
    return r, e - r * q.shape[1]


def dequant_h_q45(q, h, d, m, off, has_h, has_m, out):
    """out = W as float16 (out read as int64: 4 halves per word) for the q4 / q5 family: the prefill's cuBLAS
    input. A thread per uint32 word of q: its low nibbles are elements 4j..4j+3 of a 32-block and its high
    nibbles 16+4j.., two 8-byte stores; a warp writes 512 consecutive bytes."""
    wait_prior_kernel()
    r, wi = _thread_word(q)
    if r >= q.shape[0]:
        return
    b = wi >> 2
    j = wi & 3
    word = int64(q[r, wi])
    hb = int64(h[r, b] >> (4 * j)) if has_h else int64(0)
    dd = float32(d[r, b])
    mm = float32(m[r, b]) if has_m else float32(0.0)
    v = cuda.local.array(8, float32)
    for k in range(4):
        lo = (word >> (8 * k)) & 15
        hi = (word >> (8 * k + 4)) & 15
        if has_h:
            lo |= ((hb >> k) & 1) << 4
            hi |= ((hb >> (16 + k)) & 1) << 4
        v[k] = dd * float32(lo - off) + mm
        v[4 + k] = dd * float32(hi - off) + mm
    out[r, 8 * b + j] = _h4(v[0], v[1], v[2], v[3])
    out[r, 8 * b + 4 + j] = _h4(v[4], v[5], v[6], v[7])


def dequant_h_q8(q, d, m, g, has_m, out):
    """out = W as float16 (read as int64) for the q8 family (q read as int64: 8 elements per thread, one group)."""
    wait_prior_kernel()
    r, wi = _thread_word(q)
    if r >= q.shape[0]:
        return
    gi = (8 * wi) // g
    dd = float32(d[r, gi])
    mm = float32(m[r, gi]) if has_m else float32(0.0)
    word = q[r, wi]
    v = cuda.local.array(8, float32)
    for k in range(8):
        v[k] = dd * float32(int8(word >> (8 * k))) + mm
    out[r, 2 * wi] = _h4(v[0], v[1], v[2], v[3])
    out[r, 2 * wi + 1] = _h4(v[4], v[5], v[6], v[7])


def dequant_q45(q, h, d, m, off, has_h, has_m, rows, scale, out):
    """out[i, :] = W[rows[i], :] * scale as float32 for the q4 / q5 family (the embedding lookup).  One block per
    output row; a thread per byte of q (elements j and j + 16 of a 32-block)."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    r = rows[i]
    for e in range(cuda.threadIdx.x, 4 * q.shape[1], cuda.blockDim.x):
        b = e >> 4
        j = e & 15
        byte = (q[r, 4 * b + (j >> 2)] >> (8 * (j & 3))) & 255
        lo = byte & 15
        hi = byte >> 4
        if has_h:
            hb = h[r, b]
            lo |= ((hb >> j) & 1) << 4
            hi |= ((hb >> (16 + j)) & 1) << 4
        dd = float32(d[r, b])
        mm = float32(m[r, b]) if has_m else float32(0.0)
        out[i, 32 * b + j] = (dd * float32(lo - off) + mm) * scale
        out[i, 32 * b + 16 + j] = (dd * float32(hi - off) + mm) * scale


def dequant_q8(q, d, m, g, has_m, rows, scale, out):
    """out[i, :] = W[rows[i], :] * scale as float32 for the q8 family (q: int8 elements, groups of g)."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    r = rows[i]
    for e in range(cuda.threadIdx.x, q.shape[1], cuda.blockDim.x):
        gi = e // g
        v = float32(d[r, gi]) * float32(q[r, e])
        if has_m:
            v += float32(m[r, gi])
        out[i, e] = v * scale


def dequant_float(w, rows, scale, out):
    """out[i, :] = w[rows[i], :] * scale."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    r = rows[i]
    for e in range(cuda.threadIdx.x, w.shape[1], cuda.blockDim.x):
        out[i, e] = float32(w[r, e]) * scale


_A = "[:, ::1]"
SIGS = {
    dequant_h_q45: [f"void(uint32{_A}, uint32{_A}, float16{_A}, float16{_A}, int32, boolean, boolean, int64{_A})"],
    dequant_h_q8: [f"void(int64{_A}, float16{_A}, float16{_A}, int32, boolean, int64{_A})"],
    dequant_q45: [f"void(uint32{_A}, uint32{_A}, float16{_A}, float16{_A}, int32, boolean, boolean, int64[::1], "
                  f"float32, float32{_A})"],
    dequant_q8: [f"void(int8{_A}, float16{_A}, float16{_A}, int32, boolean, int64[::1], float32, float32{_A})"],
    dequant_float: [f"void({w}{_A}, int64[::1], float32, float32{_A})" for w in ("float16", "float32")],
}
for _f in (_h4, _thread_word):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


def dequant_f16(w: GMatrix, stream):
    """The whole of W as a float16 (n_out, n_in) array (F16 weights as they are)."""
    import cupy as cp
    if w.family == "float":
        return w.q if w.q.dtype == cp.float16 else w.q.astype(cp.float16)
    out = cp.empty((w.n_out, w.n_in // 4), cp.int64)  # 4 halves per int64
    if w.family == "q45":
        grid = math.ceil(w.q.size / DQ_THREADS)  # a thread per uint32 word
        K["dequant_h_q45"][grid, DQ_THREADS, stream](w.q, w.h, w.d, w.m, w.off, w.has_h, w.has_m, out)
    else:
        q = w.q.view(cp.int64)
        K["dequant_h_q8"][math.ceil(q.size / DQ_THREADS), DQ_THREADS, stream](q, w.d, w.m, w.g, w.has_m, out)
    return out.view(cp.float16)


def dequant(w: GMatrix, rows, scale: float, stream):
    """Rows `rows` (int64 CuPy) of W, times scale, as a float32 (len(rows), n_in) array (embedding lookups)."""
    import cupy as cp
    out = cp.empty((rows.shape[0], w.n_in), cp.float32)
    grid = (rows.shape[0],)
    if w.family == "q45":
        K["dequant_q45"][grid, DQ_THREADS, stream](w.q, w.h, w.d, w.m, w.off, w.has_h, w.has_m, rows, scale, out)
    elif w.family == "q8":
        K["dequant_q8"][grid, DQ_THREADS, stream](w.q, w.d, w.m, w.g, w.has_m, rows, scale, out)
    else:
        K["dequant_float"][grid, DQ_THREADS, stream](w.q, rows, scale, out)
    return out
