"""The allowed-token mask on the GPU: a grammar's packed bitmask applied to a step's logits, in place, before argmax
or the sampler reads them.

    mask_logits(logits, words, stream)   # logits (n, V) float32, words (n, W) uint32: -inf where a bit is 0

Token j of row i stays where (words[i, j >> 5] >> (j & 31)) & 1, else becomes -inf, which argmax never picks
(unless the row is all -inf) and the sampler gives no mass. Rows with no grammar carry all ones. The NumPy twin is
minirs.sampling.mask.mask_logits. One thread per logit, a grid of (ceil(V / MASK_THREADS), n) blocks.
"""

import math

from numba import cuda, float32

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels

MASK_THREADS = 256


def mask_rows(x, words):
    """x[i, j] = -inf where bit j of row i's words is 0 (ids past 32 * W too)."""
    wait_prior_kernel()
    i = cuda.blockIdx.y
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j < x.shape[1]:
        w = j >> 5
        if w >= words.shape[1] or ((words[i, w] >> (j & 31)) & 1) == 0:
            x[i, j] = float32(-math.inf)


SIGS = {mask_rows: ["void(float32[:, ::1], uint32[:, ::1])"]}
K = kernels(SIGS)


def mask_logits(logits, words, stream=0):
    """In place on logits (n, V) float32 (NumPy arrays in the simulator, CuPy on the GPU); returns them."""
    n, V = logits.shape
    K["mask_rows"][(-(-V // MASK_THREADS), n), MASK_THREADS, stream](logits, words)
    return logits
