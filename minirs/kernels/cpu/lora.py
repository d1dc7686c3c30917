"""CPU LoRA delta (Numba): the adapters of one projection, their A and B stacked, added to its output; twin in
kernels/ref.py (lora_delta).

    u[r, j] = coef[r, key[j]] * scale[j] * (A[j] . x[r])          # rank columns j of every adapter, stacked
    y[r, lo[j]:hi[j]] += u[r, j] * Bt[j, lo[j]:hi[j]]              # each column writes its part's output rows

A row whose coefficients are all zero (a request with no adapter) costs one pass over its keys. Decode-sized
batches run serially (waking the thread pool costs more); prefill batches spread rows over the threads.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _row(x, a, bt, key, scale, lo, hi, coef, y, r, u):
    xr = x[r]
    for j in range(a.shape[0]):
        c = coef[r, key[j]]
        if c == 0.0:
            u[j] = 0.0
            continue
        aj = a[j]
        acc = np.float32(0.0)
        for k in range(xr.shape[0]):
            acc += aj[k] * xr[k]
        u[j] = acc * c * scale[j]
    for j in range(a.shape[0]):
        uj = u[j]
        if uj != 0.0:  # slices of a known length: LLVM vectorises this loop (bounds read in the loop it did not)
            start, n = lo[j], hi[j] - lo[j]
            yv, bv = y[r, start:start + n], bt[j, start:start + n]
            for o in range(n):
                yv[o] += uj * bv[o]


@njit(cache=True, fastmath=True, nogil=True)
def lora_add(x, a, bt, key, scale, lo, hi, coef, y):
    """y += the LoRA delta of x (n, n_in) for the stacked adapters (a (R, n_in), bt (R, n_out)), see above."""
    u = np.empty(a.shape[0], np.float32)
    for r in range(x.shape[0]):
        _row(x, a, bt, key, scale, lo, hi, coef, y, r, u)
    return y


@njit(cache=True, fastmath=True, parallel=True, nogil=True)
def lora_add_rows(x, a, bt, key, scale, lo, hi, coef, y):
    """lora_add with the rows spread over the threads (the same per-row math)."""
    for r in prange(x.shape[0]):
        u = np.empty(a.shape[0], np.float32)
        _row(x, a, bt, key, scale, lo, hi, coef, y, r, u)
    return y
