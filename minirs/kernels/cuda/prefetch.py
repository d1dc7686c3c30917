"""Prefetching weights into the L2 cache, on a side stream, ahead of the kernels that read them.

    spans = prefetch_spans(mats, budget)     # once per set of matrices: (address, bytes) pieces, or None
    launch_prefetch(spans, stream)           # a thread per span, each a bulk prefetch that nothing waits for

CudaBackend.prefetch decides when (before attention, which leaves device memory idle) and joins the side stream.
"""

import numpy as np
from numba import cuda, int32

from minirs.kernels.cuda.intrinsics import prefetch_l2, wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.weights import GMatrix

PREFETCH_SPAN = 16384  # bytes per bulk prefetch (a thread each)
PREFETCH_THREADS = 32


def prefetch(spans):
    """Start fetching each span (address, bytes) of spans (k, 2) int64 into the L2 cache (16-byte aligned, multiples
    of 16 bytes): a thread per span, each a bulk prefetch that nothing waits for."""
    wait_prior_kernel()
    i = cuda.grid(1)
    if i < spans.shape[0]:
        prefetch_l2(spans[i, 0], int32(spans[i, 1]))


_A2 = "[:, ::1]"
SIGS = {
    prefetch: [f"void(int64{_A2})"],
}
K = kernels(SIGS)


def prefetch_spans(mats: list, budget: int):
    """The (address, bytes) spans of prefetch, None if mats do not fit in budget bytes: each matrix's arrays cut
    into PREFETCH_SPAN pieces (16-byte multiples: CuPy allocations are 256-byte aligned)."""
    import cupy as cp
    arrays = [a for w in mats if isinstance(w, GMatrix) for a in (w.q, w.d, w.m, w.h)
              if isinstance(a, cp.ndarray) and a.size > 1]
    if not arrays or sum(a.nbytes for a in arrays) > budget:
        return None
    spans = [(a.data.ptr + o, min(PREFETCH_SPAN, a.nbytes // 16 * 16 - o))
             for a in arrays for o in range(0, a.nbytes // 16 * 16, PREFETCH_SPAN)]
    with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):  # outlives any one decode graph
        return cp.asarray(np.array(spans, np.int64).reshape(-1, 2))


def launch_prefetch(spans, stream) -> None:
    """Start fetching spans (k, 2) int64 (prefetch_spans) into L2 on stream."""
    K["prefetch"][max(1, -(-spans.shape[0] // PREFETCH_THREADS)), PREFETCH_THREADS, stream](spans)
