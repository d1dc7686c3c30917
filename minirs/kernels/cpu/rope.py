"""CPU rotary position embedding (Numba), in place; twin: kernels/ref.py rope."""

import math

from numba import njit


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
