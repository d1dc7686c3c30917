"""CPU attention (Numba): KV cache writes and causal (optionally windowed, soft-capped) attention over the ring
buffers of kv_cache.py; twins in kernels/ref.py."""

import math

import numpy as np
from numba import njit, prange

from minirs.kernels.cpu.activation import exp32


@njit(cache=True, nogil=True)
def kv_write(k_cache, v_cache, slots, pos, k, v):
    """Store k, v (n, h_kv, d) of each token at row pos % L of its slot's ring buffer (n_slots, h_kv, L, d)."""
    L = k_cache.shape[2]
    for t in range(k.shape[0]):  # plain loops: the slice assignment they replace took 3.7 s to compile
        r, s = pos[t] % L, slots[t]
        for hh in range(k.shape[1]):
            for e in range(k.shape[2]):
                k_cache[s, hh, r, e] = k[t, hh, e]
                v_cache[s, hh, r, e] = v[t, hh, e]


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
            scores[jj] = exp32(scores[jj] - best)
        for jj in range(m):
            total += scores[jj]
        inv = np.float32(1.0) / total
        o = np.zeros(d, dtype=np.float32)
        for jj in range(m):
            wgt = scores[jj] * inv
            vr = vals[(lo + jj) % L]
            for c in range(d):
                o[c] += wgt * vr[c]
        out[t, head, :] = o
    return out
