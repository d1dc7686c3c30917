"""The GEMVs' forms of their input x: int8 per 32-block for the dp4a GEMVs (mmvq), float16 in fragment order for
the tensor-core GEMVs (mma).

    xq, xd, xs = quantize(x, stream)     # x (n, k) float32 -> int8 codes, per-32 scales, per-16 code sums
    xh = to_half(x, stream)              # x (n, k) float32 -> float16, each 4 elements stored as (x0, x2, x1, x3)

The int8 form is llama.cpp's q8_1 (numerics.quantize_x is the NumPy twin). Kernels whose output feeds a GEMV (the
`_q` norms, the gated activation, attention) write one of these forms themselves through gemv_input, so the
matmul after them needs no conversion kernel of its own.
"""

import math

from numba import cuda, float32, int32
from numba.core.types import float16
from numba.cuda import libdevice

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels

# the kernel signature of a GEMV form as its producers take it (gemv_input): xq, xd, xs, xh, half
FORM_SIG = "int8[:, ::1], float32[:, ::1], int32[:, ::1], float16[:, ::1], boolean"
GEMV_MAX_N = 32  # n <= this: GEMV kernels (graph-capturable, so batched decode too); larger n: dequantize + cuBLAS
HALF_X_THREADS = 256


def quant32(v, t, b, xq, xd, xs):
    """Warp-wide: the 32 lanes hold elements 32*b + lane of row t; write their int8 codes round(v / d) to xq,
    d = max|v| / 127 to xd[t, b] and the sums of the codes of each half to xs[t, 2b], xs[t, 2b + 1]."""
    lane = cuda.threadIdx.x & 31
    a = abs(v)
    for o in (16, 8, 4, 2, 1):
        a = max(a, cuda.shfl_xor_sync(0xFFFFFFFF, a, o))
    d = a / float32(127.0)
    qv = int32(0)
    if a > 0:
        qv = int32(libdevice.rintf(v / d))
    xq[t, 32 * b + lane] = qv
    s = qv
    for o in (8, 4, 2, 1):
        s += cuda.shfl_xor_sync(0xFFFFFFFF, s, o)
    if lane == 0:
        xd[t, b] = d
        xs[t, 2 * b] = s
    if lane == 16:
        xs[t, 2 * b + 1] = s


def half_clamped(v):
    """v as float16, clamped to its range (+-65504) instead of overflowing to inf."""
    return float16(min(max(v, float32(-65504.0)), float32(65504.0)))


def half_pos(j):
    """Where element j of a row goes in the tensor-core GEMV's float16 form (mma.py): each 4 elements stored as
    (x0, x2, x1, x3), the order of an mma fragment."""
    return (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1)


def gemv_input(v, t, b, xq, xd, xs, xh, half):
    """Warp-wide: the 32 lanes hold elements 32*b + lane of row t of a GEMV's input; write them in the form that
    GEMV reads: float16 in fragment order for the tensor cores (half; mma.py), else the int8 form (quant32)."""
    if half:
        xh[t, half_pos(32 * b + (cuda.threadIdx.x & 31))] = half_clamped(v)
    else:
        quant32(v, t, b, xq, xd, xs)


def quantize_x(x, xq, xd, xs):
    """x (n, k) f32 -> xq (n, k) int8 = round(x / d), xd (n, k/32) f32 d = max|x| / 127, xs (n, k/16) int32 sums of xq.

    One warp per 32-block (llama.cpp's q8_1; numerics.quantize_x is the NumPy twin).
    """
    wait_prior_kernel()
    gw = (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) >> 5
    lane = cuda.threadIdx.x & 31
    nb = xd.shape[1]
    t = gw // nb
    b = gw - t * nb
    if t >= x.shape[0]:
        return
    quant32(x[t, 32 * b + lane], t, b, xq, xd, xs)


def half_x(x, xh):
    """xh = x (n, k) in float16, clamped to its range, each 4 elements stored as (x0, x2, x1, x3) (the fragment
    order of gemv_mma's B; half_pos). A thread per element. For inputs whose producer did not write
    this form itself (gemv_input)."""
    wait_prior_kernel()
    i = cuda.grid(1)
    k = x.shape[1]
    if i < x.shape[0] * k:
        t, j = i // k, i % k
        xh[t, half_pos(j)] = half_clamped(x[t, j])


_A = "[:, ::1]"
SIGS = {
    quantize_x: [f"void(float32{_A}, int8{_A}, float32{_A}, int32{_A})"],
    half_x: [f"void(float32[:, :], float16{_A})"],
}
for _f in (quant32, half_clamped, half_pos, gemv_input):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


def quantize(x, stream):
    """x (n, k) float32 -> (xq int8 (n, k), xd (n, k/32), xs (n, k/16)), the int8 form the GEMVs read."""
    import cupy as cp
    n, k = x.shape
    xq = cp.empty((n, k), cp.int8)
    xd = cp.empty((n, k // 32), cp.float32)
    xs = cp.empty((n, k // 16), cp.int32)
    warps = n * (k // 32)
    K["quantize_x"][math.ceil(warps / 8), 256, stream](x, xq, xd, xs)
    return xq, xd, xs


def to_half(x, stream):
    """x (n, k) float32 -> its float16 form (half_x), for a tensor-core GEMV whose input's producer did not write
    it."""
    import cupy as cp
    n, k = x.shape
    xh = cp.empty((n, k), cp.float16)
    K["half_x"][-(-n * k // HALF_X_THREADS), HALF_X_THREADS, stream](x, xh)
    return xh
