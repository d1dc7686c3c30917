"""Attention over the float16 ring-buffer KV cache, and the cache writes.

    launch_kv_write(kc, vc, slots, pos, k, v, stream)      # k, v (n, hkv, d) -> the caches, at row pos % L
    launch_attention(q, kc, vc, slots, pos, ...)            # decode and short prefill: the `attention` kernel
    attention_gemm(q, kc, vc, slots, pos, pos_dev, ...)     # long prefill: cuBLAS Q K^T, softmax_masked_, P V

Decode splits a long context over several blocks per (token, head) (flash-decoding); the last block to finish
combines them (attn_finish, attn_combine). With `quant` the output is also written in the GEMV form of the
output projection (quantize.gemv_input). ref.attention is the NumPy twin. CudaBackend.attention picks the path.
"""

import math

import numpy as np
from numba import cuda, float32, int32

from minirs.kernels.cuda.blas import bmm_f32
from minirs.kernels.cuda.intrinsics import ld_half2, ld_volatile, wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.norm import _block_sum
from minirs.kernels.cuda.quantize import FORM_SIG as _Q
from minirs.kernels.cuda.quantize import GEMV_MAX_N, gemv_input

ATT_WARPS = 16  # most warps per block in attention (launch_attention picks: decode `warps`, prefill 4-8)
ATT_CHUNK = 32  # fewest keys per block in split (flash-decoding) attention
ATT_DECODE_WARPS = 4  # warps per block of decode attention (bench/gpu_check.py: 4 beat 8 and 16 at ctx 128-4096)
ATT_SPLITS = 32  # most blocks per (token, head) in split attention (attn_combine takes one chunk per lane)
ATT_GRID = 1024  # blocks a batched decode attention aims for when rows need not be batch-invariant
ATT_DMAX = 256  # the largest head_dim
ATT_MAXP = ATT_DMAX // 64  # pairs of head dims per lane


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
SIGS = {
    kv_write: [f"void(float16{_A4}, float16{_A4}, int64[::1], int64[::1], float32{_A3}, float32{_A3})"],
    attention: [f"void(float32{_A3}, float16{_A4}, float16{_A4}, int64[::1], int64[::1], int64, float32, float32, "
                f"int64, float32{_A3}, float32{_A3}, float32{_A4}, int32{_A2}, float32{_A3}, boolean, {_Q})"],
    softmax_masked_: [f"void(float32{_A2}, int64[::1], int64, int64, int64, int64, float32, float32)"],
}
for _f in (attn_finish, attn_combine, _block_max):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


def launch_kv_write(kc, vc, slots, pos, k, v, stream) -> None:
    """k, v (n, hkv, d) contiguous float32 -> the caches at row pos[t] % L of slot slots[t] (int64 on the device)."""
    K["kv_write"][max(1, -(-k.size // 256)), 256, stream](kc, vc, slots, pos, k, v)


def launch_attention(q, kc, vc, slots, pos, window, scale, softcap, out, quant, form, stream, chunk, warps,
                     batched, counts) -> None:
    """out (n, h, d) = attention of q (n, h, d) contiguous over the caches, slots and pos int64 on the device.
    quant: also write out's GEMV form into form = (xq, xd, xs, xh, half) (stand-ins when not). chunk: fewest keys
    per block of decode attention; warps: its warps per block; batched: a batch whose rows need not be
    batch-invariant (fewer, fuller blocks); counts(n, h): the split blocks' zeroed counters (CudaBackend._count).

    Prefill (n > GEMV_MAX_N) and contexts that fit one block take a block per (token, head) over all its keys;
    decode (flash-decoding) takes blocks over chunks of the context, and the last block of each (token, head)
    combines the chunks."""
    import cupy as cp
    n, h, d = q.shape
    keys = min(kc.shape[2], window) if window > 0 else kc.shape[2]  # the most keys one token can see
    splits = min(-(-keys // chunk), ATT_SPLITS)  # each block sizes its chunk at run time
    if batched:  # rows need not be batch-invariant: fewer, fuller blocks for a batch (16 tokens x 32 heads x 32
        # splits, mostly finding no keys in a short context, cost 38 us at 64 keys)
        splits = max(1, min(splits, -(-ATT_GRID // (n * h))))
    args = (q, kc, vc, slots, pos, int(window), np.float32(scale), np.float32(softcap))
    if n > GEMV_MAX_N or splits == 1:
        dummy = cp.empty((1, 1, 1), cp.float32)
        nw = max(8 if n * h < 1024 else 4, -(-d // 32))  # (gemv_input: a thread per head dim)
        K["attention"][(h, 1, n), 32 * nw, stream](*args, kc.shape[2], dummy, dummy, dummy.reshape(1, 1, 1, 1),
                                                   counts(1, 1), out, quant, *form)
    else:
        pm = cp.empty((n, h, splits), cp.float32)
        pl = cp.empty((n, h, splits), cp.float32)
        po = cp.empty((n, h, splits, d), cp.float32)
        K["attention"][(h, splits, n), 32 * max(warps, -(-d // 32)), stream](
            *args, chunk, pm, pl, po, counts(n, h), out, quant, *form)


def attention_gemm(q, kc, vc, slots, pos, pos_dev, window, scale, softcap, stream, capturable=False):
    """Prefill attention through cuBLAS (fp32): per sequence slot, scores = Q K^T for all its query rows
    against its keys, a masked softmax kernel (causal, window, soft-cap), then P V. GQA: the g query heads
    of a kv head are stacked as rows of one matrix. None when a slot's keys have wrapped around its ring
    buffer (the attention kernel handles that). slots, pos: host arrays; pos_dev: pos on the
    device (uploaded once per forward, read by every layer)."""
    import cupy as cp
    n, h, d = q.shape
    hkv, L = kc.shape[1], kc.shape[2]
    g = h // hkv
    out = cp.empty((n, h, d), cp.float32)
    slots, pos = np.asarray(slots).reshape(-1), np.asarray(pos).reshape(-1)
    for s in np.unique(slots):
        rows = np.nonzero(slots == s)[0]
        p = pos[rows]
        k0 = max(0, int(p.min()) - window + 1) if window > 0 else 0
        m = int(p.max()) + 1 - k0
        if k0 + m > L:
            return None
        keys = cp.ascontiguousarray(kc[int(s), :, k0:k0 + m], dtype=cp.float32)  # (hkv, m, d)
        vals = cp.ascontiguousarray(vc[int(s), :, k0:k0 + m], dtype=cp.float32)
        step = max(1, (256 << 20) // (4 * h * m))  # query rows per round: scores stay under 256 MiB
        for c0 in range(0, len(rows), step):
            r = rows[c0:c0 + step]
            nq = len(r)
            block = r[-1] - r[0] + 1 == nq  # consecutive rows: slices, not gathers
            qr = q[r[0]:r[0] + nq] if block else q[cp.asarray(r)]
            qs = qr.reshape(nq, hkv, g, d).transpose(1, 2, 0, 3).reshape(hkv, g * nq, d)
            if capturable:  # CuPy's cuBLAS calls cannot be captured; ours can (blas.py)
                sc = cp.empty((hkv, g * nq, m), cp.float32)
                bmm_f32(qs, keys, sc, True)
            else:
                sc = cp.matmul(qs, keys.transpose(0, 2, 1))  # (hkv, g * nq, m)
            qpos, q0 = (pos_dev, int(r[0])) if block else (cp.asarray(p[c0:c0 + nq]), 0)
            K["softmax_masked_"][hkv * g * nq, 128, stream](sc.reshape(-1, m), qpos, q0, nq, k0, int(window),
                                                             np.float32(scale), np.float32(softcap))
            if capturable:
                o = cp.empty((hkv, g * nq, d), cp.float32)
                bmm_f32(sc, vals, o, False)
            else:
                o = cp.matmul(sc, vals)
            o = o.reshape(hkv, g, nq, d).transpose(2, 0, 1, 3).reshape(nq, h, d)
            if block:
                out[r[0]:r[0] + nq] = o
            else:
                out[cp.asarray(r)] = o
    return out
