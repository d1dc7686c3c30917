"""Moving a prefill's keys and values from one KV slot to another named on the device (a graph input).

    launch_kv_move(kc, vc, src, dst, n, stream)     # kc[dst[0], :, :n] = kc[src, :, :n]; vc alike

A captured prefill runs in the engine's spare slot, whose index the graph was recorded with, then moves the rows
to the sequence's own slot, which changes from replay to replay (runner.py). A thread per (head, position, pair of
head-dim values): the rows are contiguous, so each warp reads and writes 128 consecutive bytes.
"""

from numba import cuda

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels

THREADS = 256


def kv_move(kc, vc, src, dst, n):
    """Rows 0..n-1 of slot src -> slot dst[0], every head, keys and values (float16 caches)."""
    wait_prior_kernel()
    hkv, d = kc.shape[1], kc.shape[3]
    i = cuda.grid(1)
    if i >= hkv * n * d:
        return
    e = i % d
    t = (i // d) % n
    h = i // (d * n)
    s = dst[0]
    kc[s, h, t, e] = kc[src, h, t, e]
    vc[s, h, t, e] = vc[src, h, t, e]


SIGS = {kv_move: ["void(float16[:, :, :, ::1], float16[:, :, :, ::1], int64, int64[::1], int64)"]}
K = kernels(SIGS)


def launch_kv_move(kc, vc, src: int, dst, n: int, stream) -> None:
    """kc[dst[0], :, :n] = kc[src, :, :n] and vc alike; dst a one-element int64 device array."""
    total = kc.shape[1] * n * kc.shape[3]
    K["kv_move"][(total + THREADS - 1) // THREADS, THREADS, stream](kc, vc, src, dst, n)
