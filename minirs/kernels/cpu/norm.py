"""CPU norms (Numba): RMSNorm and LayerNorm over the rows of x (n, d); twins in kernels/ref.py."""

import math

from numba import njit


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
