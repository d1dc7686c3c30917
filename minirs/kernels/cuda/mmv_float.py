"""The GEMVs of float16 / float32 weights (F16, BF16 widened, F32): y = x @ W.T for 1 to GEMV_MAX_N tokens, x in
float32, and their expert (mul_mat_id) form. A block owns R = 4 rows, its NW warps split K (as mmvq's).

    launch_gemv_float(w, x, y, add, stream)
    launch_gemv_id_float(w, ids, xdiv, x, y, stream)
"""

import math

from numba import cuda, float32

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.mmvq import NW, R, _expert_rows, _put, _rows4
from minirs.kernels.cuda.weights import GMatrix


def _store4(y, t, r0, n_out, a0, a1, a2, a3, add):
    """Sum each of 4 row accumulators over the warp, then over the block's NW warps (split K); thread i < R
    writes (or adds to) row r0 + i if it exists."""
    for o in (16, 8, 4, 2, 1):
        a0 += cuda.shfl_xor_sync(0xFFFFFFFF, a0, o)
        a1 += cuda.shfl_xor_sync(0xFFFFFFFF, a1, o)
        a2 += cuda.shfl_xor_sync(0xFFFFFFFF, a2, o)
        a3 += cuda.shfl_xor_sync(0xFFFFFFFF, a3, o)
    part = cuda.shared.array((NW, R), float32)
    warp = cuda.threadIdx.x >> 5
    if (cuda.threadIdx.x & 31) == 0:
        part[warp, 0] = a0
        part[warp, 1] = a1
        part[warp, 2] = a2
        part[warp, 3] = a3
    cuda.syncthreads()
    i = cuda.threadIdx.x
    if i < R and r0 + i < n_out:
        acc = float32(0.0)
        for w in range(NW):
            acc += part[w, i]
        _put(y, t, r0 + i, acc, add)


def gemv_float(w, x, y, add):
    """y[t, r] (+)= sum_k w[r, k] * x[t, k] for float16 / float32 weights, float32 x."""
    wait_prior_kernel()
    n_out, n_in = w.shape
    t = cuda.blockIdx.y
    r0 = cuda.blockIdx.x * R
    ra, rb, rc, rd = _rows4(0, r0, n_out)
    a0 = a1 = a2 = a3 = float32(0.0)
    for k in range(cuda.threadIdx.x, n_in, 32 * NW):
        xv = x[t, k]
        a0 += float32(w[ra, k]) * xv
        a1 += float32(w[rb, k]) * xv
        a2 += float32(w[rc, k]) * xv
        a3 += float32(w[rd, k]) * xv
    _store4(y, t, r0, n_out, a0, a1, a2, a3, add)


def gemv_id_float(w, ids, xdiv, x, y):
    """gemv_id_q45 for float16 / float32 experts and float32 x."""
    wait_prior_kernel()
    n_out = y.shape[1]
    p, r0, ra, rb, rc, rd = _expert_rows(ids, n_out)
    tx = p // xdiv
    a0 = a1 = a2 = a3 = float32(0.0)
    for k in range(cuda.threadIdx.x, w.shape[1], 32 * NW):
        xv = x[tx, k]
        a0 += float32(w[ra, k]) * xv
        a1 += float32(w[rb, k]) * xv
        a2 += float32(w[rc, k]) * xv
        a3 += float32(w[rd, k]) * xv
    _store4(y, p, r0, n_out, a0, a1, a2, a3, False)


_A = "[:, ::1]"
SIGS = {
    gemv_float: [f"void({w}{_A}, float32{_A}, float32{_A}, boolean)" for w in ("float16", "float32")],
    gemv_id_float: [f"void({w}{_A}, int64{_A}, int64, float32{_A}, float32{_A})" for w in ("float16", "float32")],
}
_store4 = cuda.jit(device=True, inline=True)(_store4)
K = kernels(SIGS)


def launch_gemv_float(w: GMatrix, x, y, add: bool, stream) -> None:
    """y (n, n_out) (+)= x @ W.T for x (n, n_in) float32."""
    K["gemv_float"][(math.ceil(w.n_out / R), x.shape[0]), 32 * NW, stream](w.q, x, y, add)


def launch_gemv_id_float(w: GMatrix, ids, xdiv: int, x, y, stream) -> None:
    """The expert GEMV of mmvq.launch_gemv_id for float weights and float32 x."""
    K["gemv_id_float"][(math.ceil(y.shape[1] / R), y.shape[0]), 32 * NW, stream](w.q, ids, xdiv, x, y)
