"""CPU LoRA delta (Numba): the adapters of one projection, their A and B stacked, added to its output; twin in
kernels/ref.py (lora_delta).

    u[r, j] = coef[r, key[j]] * scale[j] * (A[j] . x[r])          # rank columns j of every adapter, stacked
    y[r, lo[j]:hi[j]] += u[r, j] * Bt[j, lo[j]:hi[j]]              # each column writes its part's output rows

A row whose coefficients are all zero (a request with no adapter) costs one pass over its keys. Decode-sized
batches run serially (waking the thread pool costs more); prefill batches spread rows over the threads.
"""

import numpy as np
from numba import njit, prange

ROWS = 8  # rows per block of the parallel kernel


@njit(cache=True, fastmath=True, inline="always")
def _block(x, a, bt, key, scale, lo, hi, coef, y, r0, r1, u):
    # rows r0..r1-1, column-major: each A row and B^T row stays in L1 while the block's rows use it; a row's
    # arithmetic is the same in any block, so its bits never depend on the batch
    for j in range(a.shape[0]):
        aj = a[j]
        for r in range(r0, r1):
            c = coef[r, key[j]]
            if c == 0.0:
                u[r - r0, j] = 0.0
                continue
            xr = x[r]
            acc = np.float32(0.0)
            for k in range(xr.shape[0]):
                acc += aj[k] * xr[k]
            u[r - r0, j] = acc * c * scale[j]
    for j in range(a.shape[0]):
        start, n = lo[j], hi[j] - lo[j]
        bv = bt[j, start:start + n]
        for r in range(r0, r1):
            uj = u[r - r0, j]
            if uj != 0.0:  # slices of a known length: LLVM vectorises this loop (bounds read in the loop it did not)
                yv = y[r, start:start + n]
                for o in range(n):
                    yv[o] += uj * bv[o]


@njit(cache=True, fastmath=True, nogil=True)
def lora_add(x, a, bt, key, scale, lo, hi, coef, y):
    """y += the LoRA delta of x (n, n_in) for the stacked adapters (a (R, n_in), bt (R, n_out)), see above."""
    _block(x, a, bt, key, scale, lo, hi, coef, y, 0, x.shape[0], np.empty((x.shape[0], a.shape[0]), np.float32))
    return y


@njit(cache=True, fastmath=True, parallel=True, nogil=True)
def lora_add_rows(x, a, bt, key, scale, lo, hi, coef, y):
    """lora_add with blocks of ROWS rows spread over the threads (the same per-row math)."""
    n = x.shape[0]
    for b in prange((n + ROWS - 1) // ROWS):
        r0 = b * ROWS
        r1 = min(n, r0 + ROWS)
        _block(x, a, bt, key, scale, lo, hi, coef, y, r0, r1, np.empty((r1 - r0, a.shape[0]), np.float32))
    return y
