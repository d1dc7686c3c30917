"""The LoRA delta on the GPU: the adapters of one projection, A and B stacked over adapters and parts, added to its
output in two thin products; twin in ref.py (lora_delta), layout in kernels/backend.py (LoraStack).

    launch_lora_add(y, x, a, bt, key, scale, lo, hi, coef, u, stream)

    lora_down:  u[r, j] = coef[r, key[j]] * scale[j] * (A[j] . x[r])        a block per (row, rank column)
    lora_up:    y[r, o] += sum_j u[r, j] * Bt[j, o]  over the j with lo[j] <= o < hi[j]   a block per 32 outputs

Every row carries its own coefficients (zero for a request without that adapter), so a batch mixing adapters and
rows without any is two launches, whatever the mix; a zero coefficient skips its dot product and its column.
Both kernels read only their arguments' shapes before wait_prior_kernel (dependent launch), and run inside the
decode graph: coef is one of the graph's inputs.
"""

from numba import cuda, float32

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels

DOWN_THREADS = 256  # threads of a lora_down block (a power of two)
UP_OUT = 32  # outputs of a lora_up block: a warp's consecutive o (coalesced rows of Bt)
UP_GROUPS = 8  # ... times the groups that split the rank columns between them
UP_THREADS = 256  # = UP_OUT * UP_GROUPS (a literal: Numba sizes shared arrays from one global constant)


def lora_down(x, a, key, scale, coef, u):
    """u (n, R) = (x A^T) * coef[:, key] * scale: a block per (row, column), each thread four independent loads
    per pass over n_in, then a tree sum in shared memory."""
    wait_prior_kernel()
    n, k = x.shape
    R = a.shape[0]
    b, t = cuda.blockIdx.x, cuda.threadIdx.x
    r, j = b // R, b % R
    c = coef[r, key[j]]
    if c == 0.0:  # the whole block leaves together: no barrier is left waiting
        if t == 0:
            u[r, j] = 0.0
        return
    part = cuda.shared.array(DOWN_THREADS, float32)
    a0 = a1 = a2 = a3 = float32(0.0)
    D = DOWN_THREADS
    i = t
    while i + 3 * D < k:
        a0 += a[j, i] * x[r, i]
        a1 += a[j, i + D] * x[r, i + D]
        a2 += a[j, i + 2 * D] * x[r, i + 2 * D]
        a3 += a[j, i + 3 * D] * x[r, i + 3 * D]
        i += 4 * D
    while i < k:
        a0 += a[j, i] * x[r, i]
        i += D
    part[t] = (a0 + a1) + (a2 + a3)
    cuda.syncthreads()
    step = D // 2
    while step > 0:
        if t < step:
            part[t] += part[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        u[r, j] = part[0] * c * scale[j]


def lora_up(u, bt, lo, hi, y):
    """y (n, n_out) += u Bt over each column's output rows: a block per (row, UP_OUT outputs); thread (g, l) sums
    the columns j = g, g + UP_GROUPS, ... for output l (consecutive l: coalesced reads of Bt's rows), and the
    groups' sums meet in shared memory."""
    wait_prior_kernel()
    n, n_out = y.shape
    tiles = (n_out + UP_OUT - 1) // UP_OUT
    r, tile = cuda.blockIdx.x // tiles, cuda.blockIdx.x % tiles
    t = cuda.threadIdx.x
    g, lane = t // UP_OUT, t % UP_OUT
    o = tile * UP_OUT + lane
    acc = float32(0.0)
    if o < n_out:
        for j in range(g, bt.shape[0], UP_GROUPS):
            uj = u[r, j]
            if uj != 0.0 and lo[j] <= o and o < hi[j]:
                acc += uj * bt[j, o]
    part = cuda.shared.array(UP_THREADS, float32)
    part[t] = acc
    cuda.syncthreads()
    if g == 0 and o < n_out:
        for q in range(1, UP_GROUPS):
            acc += part[q * UP_OUT + lane]
        y[r, o] += acc


_A2 = "[:, ::1]"
SIGS = {
    lora_down: [f"void(float32{_A2}, float32{_A2}, int64[::1], float32[::1], float32{_A2}, float32{_A2})"],
    lora_up: [f"void(float32{_A2}, float32{_A2}, int64[::1], int64[::1], float32{_A2})"],
}
K = kernels(SIGS)


def launch_lora_add(y, x, a, bt, key, scale, lo, hi, coef, u, stream) -> None:
    """y (n, n_out) += the LoRA delta of x (n, n_in); u (n, R) float32 is scratch for the rank products. y is a
    whole output (the q|k|v or gate|up of a stacked GEMV before it is split, or the residual stream)."""
    n, R = x.shape[0], a.shape[0]
    K["lora_down"][n * R, DOWN_THREADS, stream](x, a, key, scale, coef, u)
    tiles = (y.shape[1] + UP_OUT - 1) // UP_OUT
    K["lora_up"][n * tiles, UP_THREADS, stream](u, bt, lo, hi, y)
