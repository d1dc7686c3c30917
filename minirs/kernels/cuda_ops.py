"""Numba CUDA kernels for everything but the quantized matmul: RMSNorm, LayerNorm, RoPE, activations, biases,
KV writes, attention, MoE routing and combining, and greedy sampling. Each has a NumPy twin in kernels/ref.py (argmax: np.argmax); tests compare them.
The `_q` variants also write their output in the form the GEMVs after them read (cuda_matmul.gemv_input: the
int8 form of quantize_x for dp4a, float16 for the tensor cores), so the matmuls after a norm, the activation or
attention need no conversion kernel of their own.

Positions, slots and token ids are read from device arrays, never passed as scalars, so that a captured CUDA
graph of a decode step stays right as they change between replays.
"""

import math

from numba import cuda, float32, int32, int64

from minirs.kernels.cuda_intrinsics import ld_half2, ld_volatile, prefetch_l2, wait_prior_kernel
from minirs.kernels.cuda_launch import kernels
from minirs.kernels.cuda_matmul import gemv_input, rope_cos_sin

ATT_WARPS = 16  # most warps per block in attention (CudaBackend.attention picks: decode att_warps, prefill 4-8)
ATT_CHUNK = 32  # fewest keys per block in split (flash-decoding) attention
ATT_DECODE_WARPS = 4  # warps per block of decode attention (bench/gpu_check.py: 4 beat 8 and 16 at ctx 128-4096)
ATT_SPLITS = 32  # most blocks per (token, head) in split attention (attn_combine takes one chunk per lane)
ATT_GRID = 1024  # blocks a batched decode attention aims for when rows need not be batch-invariant
RMS_MAXE = 8  # elements per thread in rmsnorm: rows up to 8 * 1024
NORM_WARPS = 8  # warps per block of rmsnorm_q: a block normalises 2 * 32 * NORM_WARPS elements of a row
NORM_LOADS = 16  # loads in flight per thread in rmsnorm_q's sum of squares
ATT_MAXE = 8  # head_dim / 32 at most (attn_inputs: a warp per head, d / 32 elements per lane)
ATT_DMAX = 256  # the largest head_dim
ATT_MAXP = ATT_DMAX // 64  # pairs of head dims per lane
ARGMAX_THREADS = 256  # threads of argmax_part, each ARGMAX_LOADS logits of its slice
ARGMAX_LOADS = 8
ARGMAX_SPAN = ARGMAX_THREADS * ARGMAX_LOADS  # logits per argmax_part block


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
    """rmsnorm, and out also quantized to int8 per 32-block for the GEMVs (cuda_matmul.quantize_x's format), so
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


def rope_(x, pos, inv_freq, neox):
    """Rotate, in place, the first 2*len(inv_freq) dims of each head of x (n, h, d) by pos[t] * inv_freq.

    A thread per (token, head, pair); the angle as cuda_matmul.rope_cos_sin computes it. (The model's forward
    uses attn_inputs, which does this with the rest of the q/k preparation; this and kv_write remain as the
    separate ops.)
    """
    wait_prior_kernel()
    n, h, d = x.shape
    half = inv_freq.shape[0]
    e = cuda.grid(1)
    if e >= n * h * half:
        return
    i = e % half
    th = e // half
    head = th % h
    t = th // h
    c, s = rope_cos_sin(pos[t], inv_freq[i])
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
    wait_prior_kernel()
    n, f = gate.shape
    e = cuda.grid(1)
    if e >= n * f:
        return
    i, j = e // f, e % f
    out[i, j] = _act(gate[i, j], gelu) * up[i, j]


def gated_act_q(gate, up, gelu, out, xq, xd, xs, xh, half):
    """gated_act, and out quantized per 32-block for the down-projection GEMV.  f % 32 == 0; a warp per 32-block.
    gate and up may be column views of one fused (n, 2f) gate_up output."""
    wait_prior_kernel()
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
    gemv_input(v, t, b, xq, xd, xs, xh, half)


def kv_write(k_cache, v_cache, slots, pos, k, v):
    """k_cache[slots[t], :, pos[t] % L, :] = k[t] (and v alike), float32 -> float16.  A thread per element of k."""
    wait_prior_kernel()
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


def attention(q, k_cache, v_cache, slots, pos, window, scale, softcap, chunk, pm, pl, out, count, fin, quant, xq, xd,
              xs, xh, half):
    """Causal GQA over ring-buffer caches (ref.attention states the math).  q: (n, h, d) float32; caches f16.

    Block (head, s, t) takes span = max(chunk, ceil(range / S)) keys lo + s*span .. of token t's range
    [lo, pos[t]] (flash-decoding: a decode step spreads a long context over up to S = gridDim.y blocks; a short
    one takes fewer, and the blocks past it return at once). Warp w of its nw <= ATT_WARPS warps takes keys
    4w..4w+3, then 4(w + nw).., ... of the chunk (four keys' loads in flight at once) with an online softmax;
    lane l holds head dims 2(l + 32i) and the one after (one 4-byte load per pair, in registers; lanes past d
    idle), and the warps are merged at the end. When one block holds the whole range it writes the attention
    output to fin (n, h, d) itself (and, with quant, its int8 form for the output projection's GEMV). Otherwise
    each of the `used` blocks writes its chunk's unnormalised sum to out (n, h, S, d), its max score to pm and
    its sum of exp(score - max) to pl, and the last of them to finish combines the chunks into fin (attn_finish:
    count[t, head] counts the finished blocks).
    """
    wait_prior_kernel()
    d = q.shape[2]
    h, h_kv, L = int32(q.shape[1]), int32(k_cache.shape[1]), int32(k_cache.shape[2])  # 32-bit index math
    head, sp, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
    kv = head // (h // h_kv)
    s = slots[t]
    p = int32(pos[t])
    lo = max(int32(0), p - int32(window) + 1) if window > 0 else int32(0)
    span = max(int32(chunk), (p + 1 - lo + cuda.gridDim.y - 1) // cuda.gridDim.y)  # keys per block, >= chunk
    used = (p + 1 - lo + span - 1) // span  # blocks that get keys: every block of a (t, head) computes the same
    if sp >= used:
        return
    start = lo + sp * span
    stop = min(p + 1, start + span)
    warp = cuda.threadIdx.x >> 5
    lane = cuda.threadIdx.x & 31
    nw = cuda.blockDim.x >> 5
    qa = cuda.local.array(ATT_MAXP, float32)  # lane's dims 2 * (lane + 32 i) (qa, oa) and the one after (qb, ob)
    qb = cuda.local.array(ATT_MAXP, float32)
    oa = cuda.local.array(ATT_MAXP, float32)
    ob = cuda.local.array(ATT_MAXP, float32)
    for i in range(ATT_MAXP):
        c = 2 * (lane + 32 * i)
        if c < d:
            qa[i] = q[t, head, c] * scale
            qb[i] = q[t, head, c + 1] * scale
            oa[i] = 0.0
            ob[i] = 0.0
    mx = float32(-math.inf)
    lsum = float32(0.0)
    for j in range(start + 4 * warp, stop, 4 * nw):  # 4 keys at a time: their loads are all in flight together
        r0 = j % L
        r1 = (j + 1) % L if j + 1 < stop else r0  # keys past the range read a valid row and get weight 0
        r2 = (j + 2) % L if j + 2 < stop else r0
        r3 = (j + 3) % L if j + 3 < stop else r0
        s0 = s1 = s2 = s3 = float32(0.0)
        for i in range(ATT_MAXP):
            c = 2 * (lane + 32 * i)
            if c < d:  # a pair of halves per load
                k0, k1 = ld_half2(k_cache, (s, kv, r0, c))
                s0 += qa[i] * k0 + qb[i] * k1
                k0, k1 = ld_half2(k_cache, (s, kv, r1, c))
                s1 += qa[i] * k0 + qb[i] * k1
                k0, k1 = ld_half2(k_cache, (s, kv, r2, c))
                s2 += qa[i] * k0 + qb[i] * k1
                k0, k1 = ld_half2(k_cache, (s, kv, r3, c))
                s3 += qa[i] * k0 + qb[i] * k1
        for off in (16, 8, 4, 2, 1):
            s0 += cuda.shfl_xor_sync(0xFFFFFFFF, s0, off)
            s1 += cuda.shfl_xor_sync(0xFFFFFFFF, s1, off)
            s2 += cuda.shfl_xor_sync(0xFFFFFFFF, s2, off)
            s3 += cuda.shfl_xor_sync(0xFFFFFFFF, s3, off)
        if softcap > 0:
            s0 = softcap * math.tanh(s0 / softcap)
            s1 = softcap * math.tanh(s1 / softcap)
            s2 = softcap * math.tanh(s2 / softcap)
            s3 = softcap * math.tanh(s3 / softcap)
        s1 = s1 if j + 1 < stop else float32(-math.inf)
        s2 = s2 if j + 2 < stop else float32(-math.inf)
        s3 = s3 if j + 3 < stop else float32(-math.inf)
        mnew = max(max(mx, s0), max(max(s1, s2), s3))
        corr = math.exp(mx - mnew)
        p0, p1, p2, p3 = math.exp(s0 - mnew), math.exp(s1 - mnew), math.exp(s2 - mnew), math.exp(s3 - mnew)
        lsum = lsum * corr + ((p0 + p1) + (p2 + p3))
        for i in range(ATT_MAXP):
            c = 2 * (lane + 32 * i)
            if c < d:
                v0a, v0b = ld_half2(v_cache, (s, kv, r0, c))
                v1a, v1b = ld_half2(v_cache, (s, kv, r1, c))
                v2a, v2b = ld_half2(v_cache, (s, kv, r2, c))
                v3a, v3b = ld_half2(v_cache, (s, kv, r3, c))
                oa[i] = oa[i] * corr + ((p0 * v0a + p1 * v1a) + (p2 * v2a + p3 * v3a))
                ob[i] = ob[i] * corr + ((p0 * v0b + p1 * v1b) + (p2 * v2b + p3 * v3b))
        mx = mnew
    sm_m = cuda.shared.array(ATT_WARPS, float32)
    sm_l = cuda.shared.array(ATT_WARPS, float32)
    sm_o = cuda.shared.array((ATT_WARPS, ATT_DMAX), float32)
    if lane == 0:
        sm_m[warp] = mx
        sm_l[warp] = lsum
    for i in range(ATT_MAXP):
        c = 2 * (lane + 32 * i)
        if c < d:
            sm_o[warp, c] = oa[i]
            sm_o[warp, c + 1] = ob[i]
    cuda.syncthreads()
    big = sm_m[0]
    for w in range(1, nw):
        big = max(big, sm_m[w])
    total = float32(0.0)
    for w in range(nw):
        if sm_l[w] > 0:  # a warp that got no key has max -inf
            total += sm_l[w] * math.exp(sm_m[w] - big)
    for c in range(cuda.threadIdx.x, d, cuda.blockDim.x):  # (one pass when quant: blockDim >= d, d % 32 == 0)
        acc = float32(0.0)
        for w in range(nw):
            if sm_l[w] > 0:
                acc += sm_o[w, c] * math.exp(sm_m[w] - big)
        if used == 1:
            fin[t, head, c] = acc / total
            if quant:
                gemv_input(acc / total, t, head * (d >> 5) + (c >> 5), xq, xd, xs, xh, half)
        else:
            out[t, head, sp, c] = acc
    if used > 1:
        if cuda.threadIdx.x == 0:
            pm[t, head, sp] = big
            pl[t, head, sp] = total
        attn_finish(pm, pl, out, count, fin, quant, xq, xd, xs, xh, half, t, head, used)


def attn_finish(pm, pl, po, count, fin, quant, xq, xd, xs, xh, half, t, head, used):
    """A split-attention block's last step: publish its partial results (threadfence), count itself done for
    (t, head), and if it is the last of the `used` blocks, reset the count and combine them (attn_combine)."""
    cuda.threadfence()
    cuda.syncthreads()
    last = cuda.shared.array(1, int32)
    if cuda.threadIdx.x == 0:
        last[0] = int32(cuda.atomic.add(count, (t, head), 1) == used - 1)
    cuda.syncthreads()
    if last[0] == 1:
        if cuda.threadIdx.x == 0:
            count[t, head] = 0
        attn_combine(pm, pl, po, fin, quant, xq, xd, xs, xh, half, t, head, used)


def attn_combine(pm, pl, po, out, quant, xq, xd, xs, xh, half, t, head, S):
    """out[t, head] = sum_s exp(pm_s - M) po_s / sum_s exp(pm_s - M) pl_s over the first S <= ATT_SPLITS chunks s of
    split attention (M = max_s pm_s); with quant, out is also quantized per 32-block for the output-projection
    GEMV (row t of xq is out[t] flattened over heads; d % 32 == 0). Run by a whole block of >= max(d, 32)
    threads: the first warp turns the chunks' maxima into weights (one chunk per lane) in shared memory, then
    thread c sums po[.., c] over the chunks (independent loads, no shuffles in the loop). The partials were
    written by other blocks of this kernel: read with ld_volatile."""
    d = po.shape[3]
    c = cuda.threadIdx.x
    wts = cuda.shared.array(ATT_SPLITS, float32)
    tot = cuda.shared.array(1, float32)
    if c < 32:
        m = ld_volatile(pm, (t, head, c)) if c < S else float32(-math.inf)
        big = m
        for o in (16, 8, 4, 2, 1):
            big = max(big, cuda.shfl_xor_sync(0xFFFFFFFF, big, o))
        lc = ld_volatile(pl, (t, head, c)) if c < S else float32(0.0)
        e = float32(0.0)
        if c < S and lc > 0:
            e = math.exp(m - big)
        total = lc * e
        for o in (16, 8, 4, 2, 1):
            total += cuda.shfl_xor_sync(0xFFFFFFFF, total, o)
        wts[c] = e  # 0 past S
        if c == 0:
            tot[0] = total
    cuda.syncthreads()
    v = float32(0.0)
    if c < d:
        part = cuda.local.array(ATT_SPLITS, float32)
        for k in range(ATT_SPLITS):  # a constant trip count: unrolled, every load issued before the sum uses it
            part[k] = ld_volatile(po, (t, head, k, c)) if k < S else float32(0.0)
        acc = float32(0.0)
        for k in range(ATT_SPLITS):
            acc += part[k] * wts[k]
        v = acc / tot[0]
        out[t, head, c] = v
    if quant and c < d:  # whole warps: d % 32 == 0 when quant
        gemv_input(v, t, head * (d >> 5) + (c >> 5), xq, xd, xs, xh, half)


def prefetch(spans):
    """Start fetching each span (address, bytes) of spans (k, 2) int64 into the L2 cache (16-byte aligned, multiples
    of 16 bytes): a thread per span, each a bulk prefetch that nothing waits for."""
    wait_prior_kernel()
    i = cuda.grid(1)
    if i < spans.shape[0]:
        prefetch_l2(spans[i, 0], int32(spans[i, 1]))


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


def add_bias_(x, b):
    """x[i, j] += b[j], in place.  A thread per element."""
    wait_prior_kernel()
    n, f = x.shape
    e = cuda.grid(1)
    if e < n * f:
        x[e // f, e % f] += b[e % f]


def act(x, gelu, out):
    """out = act(x), act = SiLU, or tanh-GELU when gelu (the non-gated MLP).  A thread per element."""
    wait_prior_kernel()
    n, f = x.shape
    e = cuda.grid(1)
    if e < n * f:
        out[e // f, e % f] = _act(x[e // f, e % f], gelu)


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


PREP_WARPS = 4  # warps per block in attn_inputs (a warp per (token, head))


def attn_inputs(q2, k2, v2, qb, kb, vb, has_bias, qn, kn, has_norm, eps, pos, inv_freq, neox, kc, vc, slots, qo):
    """Everything between the q/k/v projections and attention, in one pass: add the biases, RMS-normalise each
    q and k head (qk_norm), rotate q and k (RoPE), write q to qo (n, h, d) and k, v to the caches (float16) at row
    pos[t] % L of slot slots[t].  q2 (n, h*d), k2 and v2 (n, hkv*d) may be column views of one fused qkv output.

    A warp per (token, head) for the h query heads then the hkv key/value heads; the head goes through the warp's
    row of shared memory, since RoPE pairs elements that other lanes hold.  The twin is CpuBackend.attn_inputs
    (the separate ops of kernels/ref.py).
    """
    wait_prior_kernel()
    n, h, d = qo.shape
    hkv = kc.shape[1]
    gw = (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) >> 5
    lane = cuda.threadIdx.x & 31
    t = gw // (h + hkv)
    if t >= n:
        return
    hd = gw - t * (h + hkv)
    is_q = hd < h
    kvh = hd - h
    row = cuda.shared.array((PREP_WARPS, ATT_DMAX), float32)
    w = cuda.threadIdx.x >> 5
    vals = cuda.local.array(ATT_MAXE, float32)
    vv = cuda.local.array(ATT_MAXE, float32)
    for i in range(ATT_MAXE):  # every load of this lane first (a constant trip count: unrolled)
        c = lane + 32 * i
        if c < d:
            if is_q:
                vals[i] = q2[t, hd * d + c] + (qb[hd * d + c] if has_bias else float32(0.0))
                vv[i] = float32(0.0)
            else:
                vals[i] = k2[t, kvh * d + c] + (kb[kvh * d + c] if has_bias else float32(0.0))
                vv[i] = v2[t, kvh * d + c] + (vb[kvh * d + c] if has_bias else float32(0.0))
    ss = float32(0.0)
    for i in range(ATT_MAXE):
        c = lane + 32 * i
        if c < d:
            row[w, c] = vals[i]
            ss += vals[i] * vals[i]
    if has_norm:
        for o in (16, 8, 4, 2, 1):
            ss += cuda.shfl_xor_sync(0xFFFFFFFF, ss, o)
        r = float32(1.0) / math.sqrt(ss / float32(d) + eps)
        for c in range(lane, d, 32):
            row[w, c] = row[w, c] * r * (qn[c] if is_q else kn[c])
    cuda.syncwarp()
    p = pos[t]
    half = inv_freq.shape[0]
    for i in range(lane, half, 32):
        cs, sn = rope_cos_sin(p, inv_freq[i])
        i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
        a, b = row[w, i0], row[w, i1]
        row[w, i0] = a * cs - b * sn
        row[w, i1] = a * sn + b * cs
    cuda.syncwarp()
    if is_q:
        for c in range(lane, d, 32):
            qo[t, hd, c] = row[w, c]
    else:
        sl = slots[t]
        rr = p % kc.shape[2]
        for i in range(ATT_MAXE):
            c = lane + 32 * i
            if c < d:
                kc[sl, kvh, rr, c] = row[w, c]
                vc[sl, kvh, rr, c] = vv[i]


def _block_max(s):
    """Max of s over the whole block (as _block_sum)."""
    for o in (16, 8, 4, 2, 1):
        s = max(s, cuda.shfl_xor_sync(0xFFFFFFFF, s, o))
    part = cuda.shared.array(32, float32)
    cuda.syncthreads()
    if (cuda.threadIdx.x & 31) == 0:
        part[cuda.threadIdx.x >> 5] = s
    cuda.syncthreads()
    lane = cuda.threadIdx.x & 31
    m = part[lane] if lane < (cuda.blockDim.x >> 5) else float32(-math.inf)
    for o in (16, 8, 4, 2, 1):
        m = max(m, cuda.shfl_xor_sync(0xFFFFFFFF, m, o))
    return m


def softmax_masked_(s, qpos, q0, nq, k0, window, scale, softcap):
    """Prefill attention's softmax, in place: row r of s (R, m) holds the raw scores q.k of the token at position
    qpos[q0 + r % nq] against the keys at positions k0 .. k0 + m - 1; it becomes softmax(softcap(scale * s)) over
    the keys the token sees (position <= its own, and within the window), 0 elsewhere.  One block per row."""
    wait_prior_kernel()
    r = cuda.blockIdx.x
    m = s.shape[1]
    p = qpos[q0 + r % nq]
    lo = max(k0, p - window + 1) if window > 0 else k0
    mx = float32(-math.inf)
    for j in range(cuda.threadIdx.x, m, cuda.blockDim.x):
        v = s[r, j] * scale
        if softcap > 0:
            v = softcap * math.tanh(v / softcap)
        if lo <= k0 + j <= p:
            mx = max(mx, v)
        s[r, j] = v
    mx = _block_max(mx)
    tot = float32(0.0)
    for j in range(cuda.threadIdx.x, m, cuda.blockDim.x):
        e = math.exp(s[r, j] - mx) if lo <= k0 + j <= p else float32(0.0)
        s[r, j] = e
        tot += e
    inv = float32(1.0) / _block_sum(tot)
    for j in range(cuda.threadIdx.x, m, cuda.blockDim.x):
        s[r, j] *= inv


_A2, _A3, _A4 = "[:, ::1]", "[:, :, ::1]", "[:, :, :, ::1]"
_Q = f"int8{_A2}, float32{_A2}, int32{_A2}, float16{_A2}, boolean"  # xq, xd, xs, xh, half (gemv_input)
SIGS = {
    rmsnorm: [f"void(float32{_A2}, float32[::1], float32, float32{_A2})"],
    rmsnorm_q: [f"void(float32{_A2}, float32[::1], float32, float32{_A2}, {_Q})"],
    rope_: [f"void(float32{_A3}, int64[::1], float64[::1], boolean)"],
    gated_act: [f"void(float32[:, :], float32[:, :], boolean, float32{_A2})"],
    gated_act_q: [f"void(float32[:, :], float32[:, :], boolean, float32{_A2}, {_Q})"],
    kv_write: [f"void(float16{_A4}, float16{_A4}, int64[::1], int64[::1], float32{_A3}, float32{_A3})"],
    attention: [f"void(float32{_A3}, float16{_A4}, float16{_A4}, int64[::1], int64[::1], int64, float32, float32, "
                f"int64, float32{_A3}, float32{_A3}, float32{_A4}, int32{_A2}, float32{_A3}, boolean, {_Q})"],
    argmax_part: [f"void(float32{_A2}, float32{_A2}, int64{_A2})"],
    argmax_pick: [f"void(float32{_A2}, int64{_A2}, int64[::1])"],
    prefetch: [f"void(int64{_A2})"],
    layernorm: [f"void(float32{_A2}, float32[::1], float32[::1], float32, float32{_A2})"],
    layernorm_q: [f"void(float32{_A2}, float32[::1], float32[::1], float32, float32{_A2}, {_Q})"],
    add_bias_: [f"void(float32{_A2}, float32[::1])"],
    act: [f"void(float32{_A2}, boolean, float32{_A2})"],
    topk_softmax: [f"void(float32{_A2}, int64{_A2}, float32{_A2})"],
    moe_sum: [f"void(float32{_A3}, float32{_A2}, float32{_A2})"],
    attn_inputs: [f"void(float32[:, :], float32[:, :], float32[:, :], float32[::1], float32[::1], float32[::1], "
                  f"boolean, float32[::1], float32[::1], boolean, float32, int64[::1], float64[::1], boolean, "
                  f"float16{_A4}, float16{_A4}, int64[::1], float32{_A3})"],
    softmax_masked_: [f"void(float32{_A2}, int64[::1], int64, int64, int64, int64, float32, float32)"],
}
_load_row = cuda.jit(device=True, inline=True)(_load_row)
_load_w = cuda.jit(device=True, inline=True)(_load_w)
_act = cuda.jit(device=True, inline=True)(_act)
_block_sum = cuda.jit(device=True, inline=True)(_block_sum)
_block_argmax = cuda.jit(device=True, inline=True)(_block_argmax)
_ln_row = cuda.jit(device=True, inline=True)(_ln_row)
_block_max = cuda.jit(device=True, inline=True)(_block_max)
attn_finish = cuda.jit(device=True, inline=True)(attn_finish)
attn_combine = cuda.jit(device=True, inline=True)(attn_combine)
K = kernels(SIGS)  # compiled at first launch on a GPU (cuda_launch.kernels)
