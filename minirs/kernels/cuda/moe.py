"""Mixture of experts: routing (top-k of the router's logits, softmax over them), the expert GEMVs' dispatch, and
the weighted sum of the experts' outputs.

    ids, wts = launch_topk_softmax(logits, k, stream)   # (n, E) -> (n, k) int64 expert ids, float32 weights
    y = gmatmul_id(ex, x, ids, stream)                  # y[t, j] = x[t] @ W[ids[t, j]].T   (n, K, n_out)
    out = launch_moe_sum(y, wts, stream)                # out[t] = sum_j wts[t, j] * y[t, j]

The expert ids stay on the device for decode (graph-capturable); prefill brings them to the host and multiplies
each expert's rows with cuBLAS, as the CPU backend does.
"""

import math

import numpy as np
from numba import cuda, float32

from minirs.kernels.cuda.blas import gemm_nt
from minirs.kernels.cuda.dequant import dequant_f16
from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.mmv_float import launch_gemv_id_float
from minirs.kernels.cuda.mmvq import launch_gemv_id
from minirs.kernels.cuda.quantize import GEMV_MAX_N, quantize
from minirs.kernels.cuda.weights import GExperts


def topk_softmax(logits, ids, weights):
    """MoE routing: ids[t] = the k = ids.shape[1] largest logits[t] (largest first, lowest index on ties, as the
    CPU's), weights[t] = their softmax over those k.  A thread per token; pick j is the largest logit ordered
    after pick j - 1 by (value descending, index ascending), so no 'taken' array is needed."""
    wait_prior_kernel()
    t = cuda.grid(1)
    n, n_exp = logits.shape
    if t >= n:
        return
    k = ids.shape[1]
    pv = float32(math.inf)
    pi = -1
    for j in range(k):
        best = -1
        bv = float32(-math.inf)
        for c in range(n_exp):
            lc = logits[t, c]
            if (lc < pv or (lc == pv and c > pi)) and (best < 0 or lc > bv):
                best, bv = c, lc
        ids[t, j] = best
        weights[t, j] = bv
        pv, pi = bv, best
    top = weights[t, 0]
    total = float32(0.0)
    for j in range(k):
        e = math.exp(weights[t, j] - top)
        weights[t, j] = e
        total += e
    for j in range(k):
        weights[t, j] /= total


def moe_sum(y, weights, out):
    """out[t, c] = sum_j weights[t, j] * y[t, j, c]   y (n, k, d).  A thread per element of out."""
    wait_prior_kernel()
    n, k, d = y.shape
    e = cuda.grid(1)
    if e >= n * d:
        return
    t, c = e // d, e % d
    acc = float32(0.0)
    for j in range(k):
        acc += weights[t, j] * y[t, j, c]
    out[t, c] = acc


_A2, _A3 = "[:, ::1]", "[:, :, ::1]"
SIGS = {
    topk_softmax: [f"void(float32{_A2}, int64{_A2}, float32{_A2})"],
    moe_sum: [f"void(float32{_A3}, float32{_A2}, float32{_A2})"],
}
K = kernels(SIGS)


def launch_topk_softmax(logits, k: int, stream):
    """Router: logits (n, E) float32 contiguous -> ids (n, k) int64 of the top-k experts and their softmax weights
    (n, k) float32."""
    import cupy as cp
    n = logits.shape[0]
    ids, weights = cp.empty((n, k), cp.int64), cp.empty((n, k), cp.float32)
    K["topk_softmax"][max(1, -(-n // 64)), 64, stream](logits, ids, weights)
    return ids, weights


def launch_moe_sum(y, weights, stream):
    """out (n, d) = sum_j weights[t, j] * y[t, j]   y (n, k, d) and weights (n, k) contiguous."""
    import cupy as cp
    out = cp.empty((y.shape[0], y.shape[2]), cp.float32)
    K["moe_sum"][max(1, -(-out.size // 256)), 256, stream](y, weights, out)
    return out


def gmatmul_id(ex: GExperts, x, ids, stream, xquant=None):
    """y[t, j] = x[t] (x (n, n_in)) or x[t, j] (x (n, K, n_in)) @ W[ids[t, j]].T -> y (n, K, n_out) float32.

    n <= GEMV_MAX_N: one expert-GEMV launch over every (token, slot) pair, ids read on the GPU (graph-capturable).
    Larger n (prefill): the ids come to the host, and each expert used multiplies the rows routed to it (its rows
    dequantized to float16, cuBLAS), as the CPU backend does.
    """
    import cupy as cp
    n, kk = ids.shape
    x2 = x.reshape(-1, x.shape[-1])  # (n or n * K, n_in)
    xdiv = kk if x.ndim == 2 else 1  # pair p reads x2 row p // xdiv
    w, n_out = ex.w, ex.n_out
    y = cp.empty((n * kk, n_out), cp.float32)
    if n <= GEMV_MAX_N:
        if w.family == "float":
            launch_gemv_id_float(w, ids, xdiv, x2, y, stream)
            return y.reshape(n, kk, n_out)
        xq, xd, xs = xquant if xquant is not None else quantize(x2, stream)
        launch_gemv_id(w, ids, xdiv, xq, xd, xs, y, stream)
        return y.reshape(n, kk, n_out)
    cp.cuda.get_current_stream().synchronize()
    flat = cp.asnumpy(ids).reshape(-1)
    for e in np.unique(flat):
        sel = np.nonzero(flat == e)[0]  # flat (t, j) pairs routed to expert e
        ye = cp.empty((len(sel), n_out), cp.float32)
        gemm_nt(x2[cp.asarray(sel // xdiv)].astype(cp.float16), dequant_f16(ex.expert(int(e)), stream), ye, False)
        y[cp.asarray(sel)] = ye
    return y.reshape(n, kk, n_out)
