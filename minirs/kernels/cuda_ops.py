"""Numba CUDA kernels for everything but the quantized matmul: RMSNorm, LayerNorm, RoPE, activations, biases,
KV writes, attention, MoE routing and combining, and greedy sampling. Each has a NumPy twin in kernels/ref.py (argmax: np.argmax); tests compare them.
The `_q` variants also write their output in the int8 form the GEMVs read (cuda_matmul.quantize_x), so the
matmuls after a norm, the activation or attention need no quantize kernel of their own.

Positions, slots and token ids are read from device arrays, never passed as scalars, so that a captured CUDA
graph of a decode step stays right as they change between replays.
"""

import math
import os

from numba import cuda, float32, float64, int64

from minirs.kernels.cuda_matmul import quant32

ATT_WARPS = 8  # most warps per block in attention (decode uses 8, prefill 4: see CudaBackend.attention)
ATT_CHUNK = 32  # keys per block in split (flash-decoding) attention
RMS_MAXE = 8  # elements per thread in rmsnorm: rows up to 8 * 1024
ATT_MAXE = 8  # head_dim / 32 at most: head_dim <= 256
ATT_DMAX = 256
ARGMAX_THREADS = 1024


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
    total = float32(0.0)
    for k in range(cuda.blockDim.x >> 5):
        total += part[k]
    return total


def rmsnorm(x, w, eps, out):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w   for each row i of x (n, d).  One block per row, at most
    RMS_MAXE elements per thread held in registers (one round of loads, no second read of x)."""
    i = cuda.blockIdx.x
    d = x.shape[1]
    v = cuda.local.array(RMS_MAXE, float32)
    r = float32(1.0) / math.sqrt(_load_row(x, i, v) / float32(d) + eps)
    for u in range(RMS_MAXE):
        j = cuda.threadIdx.x + u * cuda.blockDim.x
        if j < d:
            out[i, j] = v[u] * r * w[j]


def rmsnorm_q(x, w, eps, out, xq, xd, xs):
    """rmsnorm, and out also quantized to int8 per 32-block for the GEMVs (cuda_matmul.quantize_x's format), so
    the q/k/v (or gate/up) GEMVs that read it need no quantize kernel of their own.  d % 32 == 0 and blockDim a
    multiple of 32: the 32 lanes of a warp hold one 32-block per u."""
    i = cuda.blockIdx.x
    d = x.shape[1]
    v = cuda.local.array(RMS_MAXE, float32)
    r = float32(1.0) / math.sqrt(_load_row(x, i, v) / float32(d) + eps)
    for u in range(RMS_MAXE):
        j0 = (cuda.threadIdx.x & ~31) + u * cuda.blockDim.x  # the warp's 32-block
        if j0 < d:
            j = j0 + (cuda.threadIdx.x & 31)
            y = v[u] * r * w[j]
            out[i, j] = y
            quant32(y, i, j0 >> 5, xq, xd, xs)


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


def _act(g, gelu):
    if gelu:
        return float32(0.5) * g * (float32(1.0) + math.tanh(float32(0.7978845608028654) * (g + float32(0.044715) * g * g * g)))
    return g / (float32(1.0) + math.exp(-g))


def gated_act(gate, up, gelu, out):
    """out = act(gate) * up, act = SiLU, or tanh-GELU when gelu.  gate, up, out: (n, f); a thread per element."""
    n, f = gate.shape
    e = cuda.grid(1)
    if e >= n * f:
        return
    i, j = e // f, e % f
    out[i, j] = _act(gate[i, j], gelu) * up[i, j]


def gated_act_q(gate, up, gelu, out, xq, xd, xs):
    """gated_act, and out quantized per 32-block for the down-projection GEMV.  f % 32 == 0; a warp per 32-block."""
    n, f = gate.shape
    nb = f >> 5
    gw = cuda.grid(1) >> 5
    t = gw // nb
    if t >= n:
        return
    b = gw - t * nb
    j = 32 * b + (cuda.threadIdx.x & 31)
    v = _act(gate[t, j], gelu) * up[t, j]
    out[t, j] = v
    quant32(v, t, b, xq, xd, xs)


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


def attention(q, k_cache, v_cache, slots, pos, window, scale, softcap, chunk, pm, pl, out):
    """Causal GQA over ring-buffer caches (ref.attention states the math).  q: (n, h, d) float32; caches f16.

    Block (t*h + head, s) takes the keys lo + s*chunk .. of token t's range [lo, pos[t]] (flash-decoding: a
    decode step spreads a long context over many blocks). Warp w of its nw <= ATT_WARPS warps takes keys
    w, w + nw, ... of the chunk with an online softmax, lanes split the head dims (d / 32 each, in registers), and
    the warps are merged at the end (head_dim < 32 or not a multiple of 32: the lanes past d idle). out: (n, h, S, d), S = gridDim.y. With S == 1 out is the attention output;
    otherwise out holds each chunk's unnormalised sum, pm its max score and pl its sum of exp(score - max), and
    attn_reduce combines them.
    """
    n, h, d = q.shape
    h_kv, L = k_cache.shape[1], k_cache.shape[2]
    job = cuda.blockIdx.x
    sp = cuda.blockIdx.y
    split = cuda.gridDim.y > 1
    t = job // h
    head = job % h
    kv = head // (h // h_kv)
    s = slots[t]
    p = pos[t]
    lo = max(0, p - window + 1) if window > 0 else 0
    start = lo + sp * chunk
    stop = min(p + 1, start + chunk)
    if start >= stop:  # nothing of this token's range in this chunk (the grid covers the longest range)
        for c in range(cuda.threadIdx.x, d, cuda.blockDim.x):
            out[t, head, sp, c] = 0.0
        if cuda.threadIdx.x == 0:
            pm[t, head, sp] = -math.inf
            pl[t, head, sp] = 0.0
        return
    warp = cuda.threadIdx.x >> 5
    lane = cuda.threadIdx.x & 31
    nw = cuda.blockDim.x >> 5
    qv = cuda.local.array(ATT_MAXE, float32)
    o = cuda.local.array(ATT_MAXE, float32)
    for i in range(ATT_MAXE):
        if lane + 32 * i < d:
            qv[i] = q[t, head, lane + 32 * i] * scale
            o[i] = 0.0
    mx = float32(-math.inf)
    lsum = float32(0.0)
    for j in range(start + warp, stop, nw):
        r = j % L
        sc = float32(0.0)
        for i in range(ATT_MAXE):
            if lane + 32 * i < d:
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
            if lane + 32 * i < d:
                o[i] = o[i] * corr + pe * float32(v_cache[s, kv, r, lane + 32 * i])
        mx = mnew
    sm_m = cuda.shared.array(ATT_WARPS, float32)
    sm_l = cuda.shared.array(ATT_WARPS, float32)
    sm_o = cuda.shared.array((ATT_WARPS, ATT_DMAX), float32)
    if lane == 0:
        sm_m[warp] = mx
        sm_l[warp] = lsum
    for i in range(ATT_MAXE):
        if lane + 32 * i < d:
            sm_o[warp, lane + 32 * i] = o[i]
    cuda.syncthreads()
    big = sm_m[0]
    for w in range(1, nw):
        big = max(big, sm_m[w])
    total = float32(0.0)
    for w in range(nw):
        if sm_l[w] > 0:  # a warp that got no key has max -inf
            total += sm_l[w] * math.exp(sm_m[w] - big)
    for c in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        acc = float32(0.0)
        for w in range(nw):
            if sm_l[w] > 0:
                acc += sm_o[w, c] * math.exp(sm_m[w] - big)
        out[t, head, sp, c] = acc if split else acc / total
    if split and cuda.threadIdx.x == 0:
        pm[t, head, sp] = big
        pl[t, head, sp] = total


def attn_reduce(pm, pl, po, out, quant, xq, xd, xs):
    """out[t, head] = sum_s exp(pm_s - M) po_s / sum_s exp(pm_s - M) pl_s over the chunks s of split attention
    (M = max_s pm_s); with quant, out is also quantized per 32-block for the output-projection GEMV (row t of
    xq is out[t] flattened over heads; d % 32 == 0).  A block of d threads per (token, head)."""
    n, h, S, d = po.shape
    job = cuda.blockIdx.x
    t = job // h
    head = job % h
    c = cuda.threadIdx.x
    big = float32(-math.inf)
    for s in range(S):
        big = max(big, pm[t, head, s])
    total = float32(0.0)
    acc = float32(0.0)
    for s in range(S):
        if pl[t, head, s] > 0:
            e = math.exp(pm[t, head, s] - big)
            total += pl[t, head, s] * e
            acc += po[t, head, s, c] * e
    v = acc / total
    out[t, head, c] = v
    if quant:
        quant32(v, t, head * (d >> 5) + (c >> 5), xq, xd, xs)


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


def _block_sum(s):
    """Sum of s over the whole block (blockDim a multiple of 32, at most 1024); every thread gets the total."""
    for o in (16, 8, 4, 2, 1):
        s += cuda.shfl_xor_sync(0xFFFFFFFF, s, o)
    part = cuda.shared.array(32, float32)
    cuda.syncthreads()  # an earlier call's readers of part are done
    if (cuda.threadIdx.x & 31) == 0:
        part[cuda.threadIdx.x >> 5] = s
    cuda.syncthreads()
    total = float32(0.0)
    for k in range(cuda.blockDim.x >> 5):
        total += part[k]
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
    i = cuda.blockIdx.x
    d = x.shape[1]
    v = cuda.local.array(RMS_MAXE, float32)
    mu, r = _ln_row(x, i, eps, v)
    for u in range(RMS_MAXE):
        j = cuda.threadIdx.x + u * cuda.blockDim.x
        if j < d:
            out[i, j] = (v[u] - mu) * r * w[j] + b[j]


def layernorm_q(x, w, b, eps, out, xq, xd, xs):
    """layernorm, and out also quantized to int8 per 32-block for the GEMVs after it (as rmsnorm_q)."""
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
            quant32(y, i, j0 >> 5, xq, xd, xs)


def add_bias_(x, b):
    """x[i, j] += b[j], in place.  A thread per element."""
    n, f = x.shape
    e = cuda.grid(1)
    if e < n * f:
        x[e // f, e % f] += b[e % f]


def act(x, gelu, out):
    """out = act(x), act = SiLU, or tanh-GELU when gelu (the non-gated MLP).  A thread per element."""
    n, f = x.shape
    e = cuda.grid(1)
    if e < n * f:
        out[e // f, e % f] = _act(x[e // f, e % f], gelu)


def topk_softmax(logits, ids, weights):
    """MoE routing: ids[t] = the k = ids.shape[1] largest logits[t] (largest first, lowest index on ties, as the
    CPU's), weights[t] = their softmax over those k.  A thread per token; pick j is the largest logit ordered
    after pick j - 1 by (value descending, index ascending), so no 'taken' array is needed."""
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
    n, k, d = y.shape
    e = cuda.grid(1)
    if e >= n * d:
        return
    t, c = e // d, e % d
    acc = float32(0.0)
    for j in range(k):
        acc += weights[t, j] * y[t, j, c]
    out[t, c] = acc


_A2, _A3, _A4 = "[:, ::1]", "[:, :, ::1]", "[:, :, :, ::1]"
_Q = f"int8{_A2}, float32{_A2}, int32{_A2}"  # xq, xd, xs of cuda_matmul.quantize_x
SIGS = {
    rmsnorm: [f"void(float32{_A2}, float32[::1], float32, float32{_A2})"],
    rmsnorm_q: [f"void(float32{_A2}, float32[::1], float32, float32{_A2}, {_Q})"],
    rope_: [f"void(float32{_A3}, int64[::1], float64[::1], boolean)"],
    gated_act: [f"void(float32{_A2}, float32{_A2}, boolean, float32{_A2})"],
    gated_act_q: [f"void(float32{_A2}, float32{_A2}, boolean, float32{_A2}, {_Q})"],
    kv_write: [f"void(float16{_A4}, float16{_A4}, int64[::1], int64[::1], float32{_A3}, float32{_A3})"],
    attention: [f"void(float32{_A3}, float16{_A4}, float16{_A4}, int64[::1], int64[::1], int64, float32, float32, "
                f"int64, float32{_A3}, float32{_A3}, float32{_A4})"],
    attn_reduce: [f"void(float32{_A3}, float32{_A3}, float32{_A4}, float32{_A3}, boolean, {_Q})"],
    argmax_rows: [f"void(float32{_A2}, int64[::1])"],
    layernorm: [f"void(float32{_A2}, float32[::1], float32[::1], float32, float32{_A2})"],
    layernorm_q: [f"void(float32{_A2}, float32[::1], float32[::1], float32, float32{_A2}, {_Q})"],
    add_bias_: [f"void(float32{_A2}, float32[::1])"],
    act: [f"void(float32{_A2}, boolean, float32{_A2})"],
    topk_softmax: [f"void(float32{_A2}, int64{_A2}, float32{_A2})"],
    moe_sum: [f"void(float32{_A3}, float32{_A2}, float32{_A2})"],
}
_load_row = cuda.jit(device=True, inline=True)(_load_row)
_act = cuda.jit(device=True, inline=True)(_act)
_block_sum = cuda.jit(device=True, inline=True)(_block_sum)
_ln_row = cuda.jit(device=True, inline=True)(_ln_row)
# Eager where a GPU is present; lazy otherwise (the simulator, or importing for compile_ptx with no GPU).
_EAGER = os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and cuda.is_available()
K = {f.__name__: cuda.jit(sigs)(f) if _EAGER else cuda.jit(f) for f, sigs in SIGS.items()}
