"""RMSNorm and LayerNorm over the rows of x (n, d), with `_q` variants that also write their output in the form
the GEMVs after them read (quantize.gemv_input), so the q/k/v or gate/up matmul needs no conversion kernel.

    launch_rmsnorm(x, w, eps, out, form, stream)         # form: (xq, xd, xs, xh, half) for rmsnorm_q, or None
    launch_layernorm(x, w, b, eps, out, form, stream)

The NumPy twins are ref.rmsnorm and ref.layernorm.
"""

import math

import numpy as np
from numba import cuda, float32

from minirs.errors import ModelError
from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.quantize import FORM_SIG as _Q
from minirs.kernels.cuda.quantize import gemv_input

RMS_MAXE = 8  # elements per thread in rmsnorm: rows up to 8 * 1024
NORM_WARPS = 8  # warps per block of rmsnorm_q: a block normalises 2 * 32 * NORM_WARPS elements of a row
NORM_LOADS = 16  # loads in flight per thread in rmsnorm_q's sum of squares


def _load_row(x, i, v):
    """v[u] = x[i, tid + u * blockDim] (0 past the row), all RMS_MAXE loads issued before any is used (a loop
    that waits for each load costs ~0.7 us per round); returns sum(x[i]^2) over the whole block."""
    d = x.shape[1]
    tid = cuda.threadIdx.x
    for u in range(RMS_MAXE):
        j = tid + u * cuda.blockDim.x
        v[u] = x[i, j] if j < d else float32(0.0)
    ss = float32(0.0)
    for u in range(RMS_MAXE):
        ss += v[u] * v[u]
    for o in (16, 8, 4, 2, 1):
        ss += cuda.shfl_xor_sync(0xFFFFFFFF, ss, o)
    part = cuda.shared.array(32, float32)
    if (tid & 31) == 0:
        part[tid >> 5] = ss
    cuda.syncthreads()
    total = part[tid & 31] if (tid & 31) < (cuda.blockDim.x >> 5) else float32(0.0)
    for o in (16, 8, 4, 2, 1):  # the warps' partial sums, summed by every warp (a fixed order)
        total += cuda.shfl_xor_sync(0xFFFFFFFF, total, o)
    return total


def _load_w(w, wv):
    """wv[u] = w[tid + u * blockDim] (0 past the row): the weights, loaded alongside x (before the block's sum
    of squares, which would otherwise stand between the two rounds of loads)."""
    for u in range(RMS_MAXE):
        j = cuda.threadIdx.x + u * cuda.blockDim.x
        wv[u] = w[j] if j < w.shape[0] else float32(0.0)


def rmsnorm(x, w, eps, out):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w   for each row i of x (n, d).  One block per row, at most
    RMS_MAXE elements per thread held in registers (one round of loads, no second read of x)."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    d = x.shape[1]
    v = cuda.local.array(RMS_MAXE, float32)
    wv = cuda.local.array(RMS_MAXE, float32)
    _load_w(w, wv)
    r = float32(1.0) / math.sqrt(_load_row(x, i, v) / float32(d) + eps)
    for u in range(RMS_MAXE):
        j = cuda.threadIdx.x + u * cuda.blockDim.x
        if j < d:
            out[i, j] = v[u] * r * wv[u]


def rmsnorm_q(x, w, eps, out, xq, xd, xs, xh, half):
    """rmsnorm, and out also quantized to int8 per 32-block for the GEMVs (quantize.quantize_x's format), so
    the q/k/v (or gate/up) GEMVs that read it need no quantize kernel of their own.  d % 32 == 0.

    Decode has a handful of rows, so a row is spread over blocks (i, s) of NORM_WARPS warps (one SM per row was
    issue-bound): every block sums the squares of the whole row (in the same order, so all blocks agree), then
    normalises and quantizes its slice, 32-blocks 2 * (NORM_WARPS * s + warp) and the one after."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    d = x.shape[1]
    nb = d >> 5
    lane = cuda.threadIdx.x & 31
    b0 = 2 * (NORM_WARPS * cuda.blockIdx.y + (cuda.threadIdx.x >> 5))
    j0 = 32 * b0 + lane
    x0 = x[i, j0] if b0 < nb else float32(0.0)  # this warp's two 32-blocks, loaded before the long sum
    w0 = w[j0] if b0 < nb else float32(0.0)
    x1 = x[i, j0 + 32] if b0 + 1 < nb else float32(0.0)
    w1 = w[j0 + 32] if b0 + 1 < nb else float32(0.0)
    ss = float32(0.0)
    vals = cuda.local.array(NORM_LOADS, float32)
    for base in range(0, d, NORM_LOADS * cuda.blockDim.x):  # rounds of NORM_LOADS loads in flight per thread
        for u in range(NORM_LOADS):
            j = base + cuda.threadIdx.x + u * cuda.blockDim.x
            vals[u] = x[i, j] if j < d else float32(0.0)
        for u in range(NORM_LOADS):
            ss += vals[u] * vals[u]
    r = float32(1.0) / math.sqrt(_block_sum(ss) / float32(d) + eps)
    if b0 < nb:
        y = x0 * r * w0
        out[i, j0] = y
        gemv_input(y, i, b0, xq, xd, xs, xh, half)
    if b0 + 1 < nb:
        y = x1 * r * w1
        out[i, j0 + 32] = y
        gemv_input(y, i, b0 + 1, xq, xd, xs, xh, half)


def _block_sum(s):
    """Sum of s over the whole block (blockDim a multiple of 32, at most 1024); every thread gets the total."""
    for o in (16, 8, 4, 2, 1):
        s += cuda.shfl_xor_sync(0xFFFFFFFF, s, o)
    part = cuda.shared.array(32, float32)
    cuda.syncthreads()  # an earlier call's readers of part are done
    if (cuda.threadIdx.x & 31) == 0:
        part[cuda.threadIdx.x >> 5] = s
    cuda.syncthreads()
    lane = cuda.threadIdx.x & 31
    total = part[lane] if lane < (cuda.blockDim.x >> 5) else float32(0.0)
    for o in (16, 8, 4, 2, 1):
        total += cuda.shfl_xor_sync(0xFFFFFFFF, total, o)
    return total


def _ln_row(x, i, eps, v):
    """Load row i of x into v (as _load_row) and return its mean and 1 / sqrt(var + eps) (two passes over the
    registers: the variance of the centred values, not E[x^2] - mean^2)."""
    d = x.shape[1]
    tid = cuda.threadIdx.x
    s = float32(0.0)
    for u in range(RMS_MAXE):
        j = tid + u * cuda.blockDim.x
        v[u] = x[i, j] if j < d else float32(0.0)
        s += v[u]
    mu = _block_sum(s) / float32(d)
    ss = float32(0.0)
    for u in range(RMS_MAXE):
        if tid + u * cuda.blockDim.x < d:
            ss += (v[u] - mu) * (v[u] - mu)
    return mu, float32(1.0) / math.sqrt(_block_sum(ss) / float32(d) + eps)


def layernorm(x, w, b, eps, out):
    """out[i] = (x[i] - mean(x[i])) / sqrt(var(x[i]) + eps) * w + b   for each row i of x (n, d).  One block
    per row, as rmsnorm."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    d = x.shape[1]
    v = cuda.local.array(RMS_MAXE, float32)
    mu, r = _ln_row(x, i, eps, v)
    for u in range(RMS_MAXE):
        j = cuda.threadIdx.x + u * cuda.blockDim.x
        if j < d:
            out[i, j] = (v[u] - mu) * r * w[j] + b[j]


def layernorm_q(x, w, b, eps, out, xq, xd, xs, xh, half):
    """layernorm, and out also quantized to int8 per 32-block for the GEMVs after it (as rmsnorm_q)."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    d = x.shape[1]
    v = cuda.local.array(RMS_MAXE, float32)
    mu, r = _ln_row(x, i, eps, v)
    for u in range(RMS_MAXE):
        j0 = (cuda.threadIdx.x & ~31) + u * cuda.blockDim.x
        if j0 < d:
            j = j0 + (cuda.threadIdx.x & 31)
            y = (v[u] - mu) * r * w[j] + b[j]
            out[i, j] = y
            gemv_input(y, i, j0 >> 5, xq, xd, xs, xh, half)


_A2 = "[:, ::1]"
SIGS = {
    rmsnorm: [f"void(float32{_A2}, float32[::1], float32, float32{_A2})"],
    rmsnorm_q: [f"void(float32{_A2}, float32[::1], float32, float32{_A2}, {_Q})"],
    layernorm: [f"void(float32{_A2}, float32[::1], float32[::1], float32, float32{_A2})"],
    layernorm_q: [f"void(float32{_A2}, float32[::1], float32[::1], float32, float32{_A2}, {_Q})"],
}
for _f in (_load_row, _load_w, _block_sum, _ln_row):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


def _threads(name: str, d: int) -> int:
    """Threads per block of the one-block-per-row norms: ~4 elements per thread, held in registers."""
    threads = min(1024, 32 * max(1, -(-d // 128)))
    if d > threads * RMS_MAXE:
        raise ModelError(f"CUDA {name} handles rows up to {1024 * RMS_MAXE}, got {d}")
    return threads


def launch_rmsnorm(x, w, eps: float, out, form, stream) -> None:
    """out = rmsnorm(x) for x (n, d) contiguous; with form = (xq, xd, xs, xh, half), rmsnorm_q also writes out's
    GEMV form there (d % 32 == 0)."""
    n, d = x.shape
    threads = _threads("rmsnorm", d)
    if form is not None:
        slices = -(-d // (64 * NORM_WARPS))
        K["rmsnorm_q"][(n, slices), 32 * NORM_WARPS, stream](x, w, np.float32(eps), out, *form)
    else:
        K["rmsnorm"][n, threads, stream](x, w, np.float32(eps), out)


def launch_layernorm(x, w, b, eps: float, out, form, stream) -> None:
    """out = layernorm(x) for x (n, d) contiguous; with form, layernorm_q also writes out's GEMV form."""
    n, d = x.shape
    threads = _threads("layernorm", d)
    if form is not None:
        K["layernorm_q"][n, threads, stream](x, w, b, np.float32(eps), out, *form)
    else:
        K["layernorm"][n, threads, stream](x, w, b, np.float32(eps), out)
