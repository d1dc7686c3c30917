"""Rotary position embeddings (RoPE) and what surrounds them between the q/k/v projections and attention.

    launch_rope(x, pos, inv_freq, neox, stream)      # x (n, h, d) rotated in place by pos[t] * inv_freq
    launch_attn_inputs(...)                          # biases, q/k RMSNorm, RoPE, k/v cache writes: one kernel

attn_put is the same preparation as a GEMV epilogue: the fused q/k/v GEMVs (mmvq, mma) call it per output row
for the llama family (adjacent-pair RoPE, no biases, no q/k norms), so decode needs no attn_inputs kernel at all.
The angle is rope_cos_sin's everywhere, so the three paths rotate alike.
"""

import math

import numpy as np
from numba import cuda, float32, float64

from minirs.kernels.cuda.attention import ATT_DMAX
from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels

TWO_PI = 2 * math.pi
PREP_WARPS = 4  # warps per block in attn_inputs (a warp per (token, head))
ATT_MAXE = 8  # head_dim / 32 at most (attn_inputs: a warp per head, d / 32 elements per lane)
# attn_put's arguments ep = (pos, slots, inv_freq, k cache, v cache, nk) in a kernel signature
EP_SIG = "int64[::1], int64[::1], float64[::1], float16[:, :, :, ::1], float16[:, :, :, ::1], int32"


def rope_cos_sin(p, f):
    """cos and sin of the RoPE angle p * f as float32: the product and its reduction modulo 2 pi in float64
    (positions reach 10^5), the trigonometry in float32 on the reduced angle (float64 sin/cos of large angles
    are slow software routines)."""
    ang = float64(p) * f
    ang -= TWO_PI * math.floor(ang / TWO_PI)
    a = float32(ang)
    return math.cos(a), math.sin(a)


def attn_put(qo, t, r, v, vp, ep):
    """The fused q/k/v projection's epilogue for row r of token t (v; vp: its RoPE partner row r ^ 1): q rows
    (r < h * d = qo.shape[1]) are rotated and written to qo, k rows rotated and written to the key cache, v rows
    to the value cache, at row pos[t] % L of slot slots[t] (as rope.attn_inputs does for adjacent-pair RoPE
    without biases or q/k norms). ep = (pos, slots, inv_freq, k cache, v cache, nk = hkv * d)."""
    pos, slots, inv_freq, kc, vc, nk = ep
    nq = qo.shape[1]
    d = kc.shape[3]
    p = pos[t]
    if r < nq + nk:  # q or k: rotate the pair (2i, 2i + 1), i < len(inv_freq)
        c = (r if r < nq else r - nq) % d
        if c < 2 * inv_freq.shape[0]:
            cs, sn = rope_cos_sin(p, inv_freq[c >> 1])
            if (c & 1) == 0:
                v = v * cs - vp * sn
            else:
                v = vp * sn + v * cs
    if r < nq:
        qo[t, r] = v
    elif r < nq + nk:
        kc[slots[t], (r - nq) // d, p % kc.shape[2], (r - nq) % d] = v
    else:
        vc[slots[t], (r - nq - nk) // d, p % vc.shape[2], (r - nq - nk) % d] = v


def rope_(x, pos, inv_freq, neox):
    """Rotate, in place, the first 2*len(inv_freq) dims of each head of x (n, h, d) by pos[t] * inv_freq.

    A thread per (token, head, pair); the angle as rope_cos_sin computes it. (The model's forward
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


_A3, _A4 = "[:, :, ::1]", "[:, :, :, ::1]"
SIGS = {
    rope_: [f"void(float32{_A3}, int64[::1], float64[::1], boolean)"],
    attn_inputs: [f"void(float32[:, :], float32[:, :], float32[:, :], float32[::1], float32[::1], float32[::1], "
                  f"boolean, float32[::1], float32[::1], boolean, float32, int64[::1], float64[::1], boolean, "
                  f"float16{_A4}, float16{_A4}, int64[::1], float32{_A3})"],
}
for _f in (rope_cos_sin, attn_put):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


def launch_rope(x, pos, inv_freq, neox: bool, stream) -> None:
    """x (n, h, d) rotated in place: the first 2 * len(inv_freq) dims of each head by pos[t] * inv_freq (pos: int64
    on the device)."""
    n, h, _ = x.shape
    total = n * h * inv_freq.shape[0]
    K["rope_"][max(1, -(-total // 256)), 256, stream](x, pos, inv_freq, bool(neox))


def launch_attn_inputs(q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots, qo, dummy, stream) -> None:
    """attn_inputs: q, k, v (n, h*d), (n, hkv*d) x2 (possibly views of one qkv output) -> q rotated into qo
    (n, h, d), k and v into the caches. biases = (qb, kb, vb) or (None, ..), norms = (q_norm, k_norm) or None;
    dummy stands for the absent ones. pos, slots: int64 on the device."""
    n, h, hkv = qo.shape[0], qo.shape[1], kc.shape[1]
    has_bias = biases[0] is not None
    qb, kb, vb = biases if has_bias else (dummy, dummy, dummy)
    has_norm = norms is not None
    qn, kn = norms if has_norm else (dummy, dummy)
    warps = n * (h + hkv)
    K["attn_inputs"][max(1, -(-warps // PREP_WARPS)), 32 * PREP_WARPS, stream](
        q, k, v, qb, kb, vb, has_bias, qn, kn, has_norm, np.float32(eps), pos, inv_freq, bool(neox), kc, vc, slots,
        qo)
