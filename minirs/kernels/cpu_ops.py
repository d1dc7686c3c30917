"""Numba CPU kernels for everything but the quantized matmul: RMSNorm, RoPE, gated activations, attention.

Each one has a NumPy twin in kernels/ref.py with the same arguments; tests compare them on random inputs.
Kernels write into `out` arrays the caller owns, and are compiled once and cached on disk (cache=True).
The element-wise kernels are serial: waking Numba's thread pool costs more than they take at decode sizes.
"""

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, nogil=True)
def rmsnorm(x, w, eps, out):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w   for each row i of x (n, d)."""
    n, d = x.shape
    for i in range(n):
        ss = 0.0
        for j in range(d):
            ss += x[i, j] * x[i, j]
        r = 1.0 / math.sqrt(ss / d + eps)
        for j in range(d):
            out[i, j] = x[i, j] * r * w[j]
    return out


@njit(cache=True, nogil=True)
def rope_(x, pos, inv_freq, neox):
    """Rotate, in place, the first 2*len(inv_freq) dims of each head of x (n, h, d) by pos[t] * inv_freq."""
    n, h, _ = x.shape
    half = inv_freq.shape[0]
    for t in range(n):
        for i in range(half):
            ang = pos[t] * inv_freq[i]
            c, s = math.cos(ang), math.sin(ang)
            i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
            for head in range(h):
                a, b = x[t, head, i0], x[t, head, i1]
                x[t, head, i0] = a * c - b * s
                x[t, head, i1] = a * s + b * c
    return x


@njit(cache=True, fastmath=True, inline="always")
def _gated_row(gate, up, gelu, out, i):
    k = math.sqrt(2.0 / math.pi)
    for j in range(gate.shape[1]):
        g = gate[i, j]
        if gelu:
            a = 0.5 * g * (1.0 + math.tanh(k * (g + 0.044715 * g * g * g)))
        else:
            a = g / (1.0 + math.exp(-g))
        out[i, j] = a * up[i, j]


@njit(cache=True, fastmath=True, nogil=True)
def gated_act(gate, up, gelu, out):
    """out = act(gate) * up, act = SiLU, or tanh-GELU when gelu is True.  gate, up, out: (n, f)."""
    for i in range(gate.shape[0]):
        _gated_row(gate, up, gelu, out, i)
    return out


@njit(cache=True, fastmath=True, parallel=True, nogil=True)
def gated_act_rows(gate, up, gelu, out):
    """gated_act with the rows spread over the threads: for prefill-sized batches (the same per-row math)."""
    for i in prange(gate.shape[0]):
        _gated_row(gate, up, gelu, out, i)
    return out


@njit(cache=True, nogil=True)
def kv_write(k_cache, v_cache, slots, pos, k, v):
    """Store k, v (n, h_kv, d) of each token at row pos % L of its slot's ring buffer (n_slots, h_kv, L, d)."""
    L = k_cache.shape[2]
    for t in range(k.shape[0]):
        r = pos[t] % L
        k_cache[slots[t], :, r, :] = k[t]
        v_cache[slots[t], :, r, :] = v[t]


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def attention(q, k_cache, v_cache, slots, pos, window, scale, softcap, out):
    """Causal GQA over ring-buffer caches; see ref.attention for the math.  q, out: (n, h, d).

    One (token, head) per job; float32 dot products (a float64 accumulator would halve the SIMD width), the
    output summed in a local row. Each job reads only its own token's cache rows, so a row's result does not
    depend on the other rows of the batch.
    """
    n, h, d = q.shape
    h_kv, L = k_cache.shape[1], k_cache.shape[2]
    group = h // h_kv
    scale32 = np.float32(scale)
    for job in prange(n * h):
        t, head = job // h, job % h
        s, kv, p = slots[t], head // group, pos[t]
        lo = max(0, p - window + 1) if window > 0 else 0
        m = p + 1 - lo
        qv = q[t, head]
        keys, vals = k_cache[s, kv], v_cache[s, kv]  # (L, d) rings
        scores = np.empty(m, dtype=np.float32)
        best = np.float32(-np.inf)
        for jj in range(m):
            kr = keys[(lo + jj) % L]
            acc = np.float32(0.0)
            for c in range(d):
                acc += qv[c] * kr[c]
            acc *= scale32
            if softcap > 0:
                acc = np.float32(softcap * math.tanh(acc / softcap))
            scores[jj] = acc
            best = max(best, acc)
        total = np.float32(0.0)
        for jj in range(m):
            e = np.float32(math.exp(scores[jj] - best))
            scores[jj] = e
            total += e
        inv = np.float32(1.0) / total
        o = np.zeros(d, dtype=np.float32)
        for jj in range(m):
            wgt = scores[jj] * inv
            vr = vals[(lo + jj) % L]
            for c in range(d):
                o[c] += wgt * vr[c]
        out[t, head, :] = o
    return out


@njit(cache=True, fastmath=True, nogil=True)
def layernorm(x, w, b, eps, out):
    """out[i] = (x[i] - mean(x[i])) / sqrt(var(x[i]) + eps) * w + b   for each row i of x (n, d)."""
    n, d = x.shape
    for i in range(n):
        mu = 0.0
        for j in range(d):
            mu += x[i, j]
        mu /= d
        var = 0.0
        for j in range(d):
            var += (x[i, j] - mu) * (x[i, j] - mu)
        r = 1.0 / math.sqrt(var / d + eps)
        for j in range(d):
            out[i, j] = (x[i, j] - mu) * r * w[j] + b[j]
    return out


@njit(cache=True, fastmath=True, nogil=True)
def act(x, gelu, out):
    """out = act(x), act = SiLU, or tanh-GELU when gelu is True.  x, out: (n, f)."""
    n, f = x.shape
    k = math.sqrt(2.0 / math.pi)
    for i in range(n):
        for j in range(f):
            g = x[i, j]
            if gelu:
                out[i, j] = 0.5 * g * (1.0 + math.tanh(k * (g + 0.044715 * g * g * g)))
            else:
                out[i, j] = g / (1.0 + math.exp(-g))
    return out


@njit(cache=True, nogil=True)
def topk_softmax(logits, k, ids, weights):
    """ids[t] = the k largest logits[t] (largest first, lowest index on ties), weights[t] = their softmax."""
    n, e = logits.shape
    for t in range(n):
        taken = np.zeros(e, dtype=np.bool_)
        for j in range(k):
            best = -1
            for c in range(e):
                if not taken[c] and (best < 0 or logits[t, c] > logits[t, best]):
                    best = c
            taken[best] = True
            ids[t, j] = best
        top = logits[t, ids[t, 0]]
        total = 0.0
        for j in range(k):
            weights[t, j] = math.exp(logits[t, ids[t, j]] - top)
            total += weights[t, j]
        for j in range(k):
            weights[t, j] /= total
    return ids, weights
