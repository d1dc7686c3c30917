"""CPU mixture-of-experts router (Numba): top-k experts of each token and their softmax weights."""

import math

import numpy as np
from numba import njit


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
