"""Greedy sampling on the GPU: the index of each row's largest logit (the first on ties, as np.argmax).

    ids = argmax(logits, stream)     # logits (n, V) float32 -> ids (n,) int64 on the device

Two kernels: argmax_part splits each row into slices of ARGMAX_SPAN logits (a block each, so a row is read by many
SMs at once), argmax_pick picks among the slices' winners.

Extreme values, against the host's greedy draw (sample_token: np.argmax of finite_logits, +inf clamped to LIMIT):
- +inf is the largest value: the first +inf wins, the host's id;
- a NaN is never larger than anything (every comparison with it is false), so it is skipped: a row with a NaN gets
  the first of its largest other logits, and a row of NaN and -inf only gets 0, as a row of -inf only does
  (np.argmax's answer for that). The host raises LogitsError for both rows instead, but a device argmax has no
  way to refuse a row: the engine's all-greedy step (ModelRunner, mode "argmax") takes the id as it is. Greedy
  rows of a step that also samples go through sample.py (top_k = 1), which leaves such rows to the host (-1),
  and the host raises.
"""

import math

from numba import cuda, float32, int64

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels

ARGMAX_THREADS = 256  # threads of argmax_part, each ARGMAX_LOADS logits of its slice
ARGMAX_LOADS = 8
ARGMAX_SPAN = ARGMAX_THREADS * ARGMAX_LOADS  # logits per argmax_part block


def _block_argmax(best, bi):
    """The block's largest best and, among equal ones, the lowest bi (each thread's candidate), for thread 0."""
    tid = cuda.threadIdx.x
    for o in (16, 8, 4, 2, 1):
        ov = cuda.shfl_xor_sync(0xFFFFFFFF, best, o)
        oi = cuda.shfl_xor_sync(0xFFFFFFFF, bi, o)
        if ov > best or (ov == best and oi < bi):
            best, bi = ov, oi
    sv = cuda.shared.array(32, float32)
    si = cuda.shared.array(32, int64)
    if (tid & 31) == 0:
        sv[tid >> 5] = best
        si[tid >> 5] = bi
    cuda.syncthreads()
    if tid == 0:
        for w in range(1, cuda.blockDim.x >> 5):
            if sv[w] > best or (sv[w] == best and si[w] < bi):
                best, bi = sv[w], si[w]
    return best, bi


def argmax_part(x, pv, pi):
    """Slice s = blockIdx.y of row i of x (ARGMAX_SPAN logits): its largest value pv[i, s] and the first index
    pi[i, s] holding it. ARGMAX_LOADS loads in flight per thread, in index order (the first of equals stays)."""
    wait_prior_kernel()
    i, s = cuda.blockIdx.x, cuda.blockIdx.y
    tid = cuda.threadIdx.x
    V = x.shape[1]
    base = s * ARGMAX_SPAN + tid
    vals = cuda.local.array(ARGMAX_LOADS, float32)
    for u in range(ARGMAX_LOADS):
        vals[u] = x[i, min(base + u * ARGMAX_THREADS, V - 1)]
    best = float32(-math.inf)
    bi = int64(s * ARGMAX_SPAN)  # a slice of -inf only: its first index (np.argmax's answer for it)
    for u in range(ARGMAX_LOADS):
        j = base + u * ARGMAX_THREADS
        if j < V and vals[u] > best:
            best, bi = vals[u], int64(j)
    best, bi = _block_argmax(best, bi)
    if tid == 0:
        pv[i, s] = best
        pi[i, s] = bi


def argmax_pick(pv, pi, out):
    """out[i] = argmax over row i's slices (argmax_part): the first index on ties, as np.argmax."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    best = float32(-math.inf)
    bi = int64(1 << 62)
    for s in range(cuda.threadIdx.x, pv.shape[1], cuda.blockDim.x):
        if pv[i, s] > best or (pv[i, s] == best and pi[i, s] < bi):
            best, bi = pv[i, s], pi[i, s]
    best, bi = _block_argmax(best, bi)
    if cuda.threadIdx.x == 0:
        out[i] = bi


_A2 = "[:, ::1]"
SIGS = {
    argmax_part: [f"void(float32{_A2}, float32{_A2}, int64{_A2})"],
    argmax_pick: [f"void(float32{_A2}, int64{_A2}, int64[::1])"],
}
_block_argmax = cuda.jit(device=True, inline=True)(_block_argmax)
K = kernels(SIGS)


def argmax(logits, stream):
    """Greedy token ids (n,) int64 on the device for logits (n, V) float32."""
    import cupy as cp
    n, V = logits.shape
    S = -(-V // ARGMAX_SPAN)  # slices, each a block: the row is read by many SMs at once
    pv, pi, out = cp.empty((n, S), cp.float32), cp.empty((n, S), cp.int64), cp.empty(n, cp.int64)
    K["argmax_part"][(n, S), ARGMAX_THREADS, stream](logits, pv, pi)
    K["argmax_pick"][n, 256, stream](pv, pi, out)
    return out
