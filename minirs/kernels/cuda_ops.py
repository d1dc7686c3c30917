"""Numba CUDA kernels for everything but the quantized matmul: RMSNorm, RoPE, gated activations, KV writes,
attention and greedy sampling. Each has a NumPy twin in kernels/ref.py (argmax: np.argmax); tests compare them.

Positions, slots and token ids are read from device arrays, never passed as scalars, so that a captured CUDA
graph of a decode step stays right as they change between replays.
"""

import math
import os

from numba import cuda, float32, float64, int64

RMS_THREADS = 256
ATT_WARPS = 8  # most warps per (token, head) block in attention (decode uses 8, prefill 4: see CudaBackend.attention)
ATT_MAXE = 8  # head_dim / 32 at most: head_dim <= 256
ATT_DMAX = 256
ARGMAX_THREADS = 1024


def rmsnorm(x, w, eps, out):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w   for each row i of x (n, d).  One block per row."""
    i = cuda.blockIdx.x
    d = x.shape[1]
    tid = cuda.threadIdx.x
    part = cuda.shared.array(32, float32)
    ss = float32(0.0)
    for j in range(tid, d, cuda.blockDim.x):
        v = x[i, j]
        ss += v * v
    for o in (16, 8, 4, 2, 1):
        ss += cuda.shfl_xor_sync(0xFFFFFFFF, ss, o)
    if (tid & 31) == 0:
        part[tid >> 5] = ss
    cuda.syncthreads()
    total = float32(0.0)
    for k in range(cuda.blockDim.x >> 5):
        total += part[k]
    r = float32(1.0) / math.sqrt(total / d + eps)
    for j in range(tid, d, cuda.blockDim.x):
        out[i, j] = x[i, j] * r * w[j]


def rope_(x, pos, inv_freq, neox):
    """Rotate, in place, the first 2*len(inv_freq) dims of each head of x (n, h, d) by pos[t] * inv_freq.

    A thread per (token, head, pair); the angle and its cos/sin in float64 (positions reach 10^5).
    """
    n, h, d = x.shape
    half = inv_freq.shape[0]
    e = cuda.grid(1)
    if e >= n * h * half:
        return
    i = e % half
    th = e // half
    head = th % h
    t = th // h
    ang = float64(pos[t]) * inv_freq[i]
    c, s = float32(math.cos(ang)), float32(math.sin(ang))
    i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
    a, b = x[t, head, i0], x[t, head, i1]
    x[t, head, i0] = a * c - b * s
    x[t, head, i1] = a * s + b * c


def gated_act(gate, up, gelu, out):
    """out = act(gate) * up, act = SiLU, or tanh-GELU when gelu.  gate, up, out: (n, f); a thread per element."""
    n, f = gate.shape
    e = cuda.grid(1)
    if e >= n * f:
        return
    i, j = e // f, e % f
    g = gate[i, j]
    if gelu:
        a = float32(0.5) * g * (float32(1.0) + math.tanh(float32(0.7978845608028654) * (g + float32(0.044715) * g * g * g)))
    else:
        a = g / (float32(1.0) + math.exp(-g))
    out[i, j] = a * up[i, j]


def kv_write(k_cache, v_cache, slots, pos, k, v):
    """k_cache[slots[t], :, pos[t] % L, :] = k[t] (and v alike), float32 -> float16.  A thread per element of k."""
    n, hkv, d = k.shape
    L = k_cache.shape[2]
    e = cuda.grid(1)
    if e >= n * hkv * d:
        return
    c = e % d
    th = e // d
    head = th % hkv
    t = th // hkv
    r = pos[t] % L
    k_cache[slots[t], head, r, c] = k[t, head, c]
    v_cache[slots[t], head, r, c] = v[t, head, c]


def attention(q, k_cache, v_cache, slots, pos, window, scale, softcap, out):
    """Causal GQA over ring-buffer caches (ref.attention states the math).  q, out: (n, h, d) float32; caches f16.

    One block per (token, head) of nw <= ATT_WARPS warps; warp w takes keys lo + w, lo + w + nw, ... with an
    online softmax, lanes split the head dims (d / 32 each, in registers), and the warps' partial sums are merged at the end.
    """
    n, h, d = q.shape
    h_kv, L = k_cache.shape[1], k_cache.shape[2]
    job = cuda.blockIdx.x
    t = job // h
    head = job % h
    kv = head // (h // h_kv)
    s = slots[t]
    p = pos[t]
    lo = max(0, p - window + 1) if window > 0 else 0
    warp = cuda.threadIdx.x >> 5
    lane = cuda.threadIdx.x & 31
    nw = cuda.blockDim.x >> 5
    per = d >> 5
    qv = cuda.local.array(ATT_MAXE, float32)
    o = cuda.local.array(ATT_MAXE, float32)
    for i in range(ATT_MAXE):
        if i < per:
            qv[i] = q[t, head, lane + 32 * i] * scale
            o[i] = 0.0
    mx = float32(-math.inf)
    lsum = float32(0.0)
    for j in range(lo + warp, p + 1, nw):
        r = j % L
        sc = float32(0.0)
        for i in range(ATT_MAXE):
            if i < per:
                sc += qv[i] * float32(k_cache[s, kv, r, lane + 32 * i])
        for off in (16, 8, 4, 2, 1):
            sc += cuda.shfl_xor_sync(0xFFFFFFFF, sc, off)
        if softcap > 0:
            sc = softcap * math.tanh(sc / softcap)
        mnew = max(mx, sc)
        corr = math.exp(mx - mnew)
        pe = math.exp(sc - mnew)
        lsum = lsum * corr + pe
        for i in range(ATT_MAXE):
            if i < per:
                o[i] = o[i] * corr + pe * float32(v_cache[s, kv, r, lane + 32 * i])
        mx = mnew
    sm_m = cuda.shared.array(ATT_WARPS, float32)
    sm_l = cuda.shared.array(ATT_WARPS, float32)
    sm_o = cuda.shared.array((ATT_WARPS, ATT_DMAX), float32)
    if lane == 0:
        sm_m[warp] = mx
        sm_l[warp] = lsum
    for i in range(ATT_MAXE):
        if i < per:
            sm_o[warp, lane + 32 * i] = o[i]
    cuda.syncthreads()
    big = sm_m[0]
    for w in range(1, nw):
        big = max(big, sm_m[w])
    total = float32(0.0)
    for w in range(nw):
        total += sm_l[w] * math.exp(sm_m[w] - big)
    for c in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        acc = float32(0.0)
        for w in range(nw):
            acc += sm_o[w, c] * math.exp(sm_m[w] - big)
        out[t, head, c] = acc / total


def argmax_rows(x, out):
    """out[i] = argmax_j x[i, j], the first index on ties (as np.argmax).  One block per row."""
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    best = float32(-math.inf)
    bi = x.shape[1]
    for j in range(tid, x.shape[1], cuda.blockDim.x):
        v = x[i, j]
        if v > best:
            best, bi = v, j
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
        out[i] = bi


_A2, _A3, _A4 = "[:, ::1]", "[:, :, ::1]", "[:, :, :, ::1]"
SIGS = {
    rmsnorm: [f"void(float32{_A2}, float32[::1], float32, float32{_A2})"],
    rope_: [f"void(float32{_A3}, int64[::1], float64[::1], boolean)"],
    gated_act: [f"void(float32{_A2}, float32{_A2}, boolean, float32{_A2})"],
    kv_write: [f"void(float16{_A4}, float16{_A4}, int64[::1], int64[::1], float32{_A3}, float32{_A3})"],
    attention: [f"void(float32{_A3}, float16{_A4}, float16{_A4}, int64[::1], int64[::1], int64, float32, float32, "
                f"float32{_A3})"],
    argmax_rows: [f"void(float32{_A2}, int64[::1])"],
}
# Eager where a GPU is present; lazy otherwise (the simulator, or importing for compile_ptx with no GPU).
_EAGER = os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and cuda.is_available()
K = {f.__name__: cuda.jit(sigs)(f) if _EAGER else cuda.jit(f) for f, sigs in SIGS.items()}
