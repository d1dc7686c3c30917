"""The decode step captured in a CUDA graph: its inputs (token ids, slots, positions, sampling parameters) in fixed
device buffers that a replay reads, its output fetched through page-locked host memory. CudaBackend.decode_step
keeps one DecodeGraph per (model, cache, batch size, kind of output).
"""

import cupy as cp
import cupyx
import numpy as np


def _undecided_rows(logits, ids: np.ndarray, stream) -> np.ndarray:
    """The rows of device logits whose sampled id is -1 (the host draws them), on the host; no device work when
    the GPU decided every row."""
    undecided = ids < 0
    if not undecided.any():
        return np.empty((0, logits.shape[1]), np.float32)
    return cp.asnumpy(logits[cp.asarray(undecided)], stream=stream)


def _copy_async(dst, src, stream) -> None:
    """dst = src between a page-locked host array and a contiguous device array (either way), queued on stream: one
    runtime call (CuPy's set/get cost ~10 us of host time per step, the GPU idle meanwhile)."""
    rt = cp.cuda.runtime
    if isinstance(dst, cp.ndarray):
        rt.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, rt.memcpyHostToDevice, stream.ptr)
    else:
        rt.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes, rt.memcpyDeviceToHost, stream.ptr)


class DecodeGraph:
    """A decode step of a fixed batch size captured in a CUDA graph, its inputs and output in fixed buffers. Its
    result: logits (n, vocab), or ids (n,) if greedy, or if sampled (ids (n,), the logits of the rows with id -1)."""

    def __init__(self, backend, model, cache, n: int, greedy: bool, sampled: bool = False):
        self.be, self.model, self.cache, self.n = backend, model, cache, n
        self.greedy, self.sampled = greedy, sampled
        self.inputs = cp.zeros((3, n), cp.int64)  # the graph reads ids, slots and positions from these rows
        self.tok, self.slots, self.pos = self.inputs
        self.prm = cp.zeros((n, 5), cp.float64)  # and the sampling parameters (sample.pack)
        self.staged = cupyx.empty_pinned((3, n), np.int64)  # page-locked host copies: one async copy each way
        self.staged_prm = cupyx.empty_pinned((n, 5), np.float64)
        self.result = None
        self.pool = cp.cuda.MemoryPool()  # intermediates of the graph live here and nowhere else
        self.graph = None
        self.out = None
        self.logits = None  # a sampled step's logits, for the rows the GPU leaves to the host

    def _load(self, tokens, slots, pos, prm):
        self.staged[0], self.staged[1], self.staged[2] = tokens, slots, pos
        _copy_async(self.inputs, self.staged, self.be.stream)
        if self.sampled:
            self.staged_prm[...] = prm
            _copy_async(self.prm, self.staged_prm, self.be.stream)

    def _fetch(self, out) -> np.ndarray:
        """out copied to the host (through a page-locked buffer) once the stream is done."""
        out = cp.ascontiguousarray(out)
        if self.result is None or self.result.shape != out.shape:
            self.result = cupyx.empty_pinned(out.shape, out.dtype)
        _copy_async(self.result, out, self.be.stream)
        self.be.stream.synchronize()
        return self.result.copy()

    def _forward(self):
        logits = self.model.forward(self.tok, self.slots, self.pos, self.cache)
        self.be.join_side()
        if self.sampled:
            self.logits = logits
            return self.be.sample_ids(logits, self.prm)
        return self.be.argmax(logits) if self.greedy else logits

    def _result(self, out):
        res = self._fetch(out)
        if not self.sampled:
            return res
        return res, _undecided_rows(self.logits, res, self.be.stream)

    def first(self, tokens, slots, pos, prm=None):
        """Run the step eagerly (compiles, fills the pool, gives this step's result), then capture it."""
        self._load(tokens, slots, pos, prm)
        s = self.be.stream
        with cp.cuda.using_allocator(self.pool.malloc):
            out = self._forward()
            result = self._result(out)
            del out
            self.logits = None
            # the replay recomputes the same step: it writes the same K/V rows, so capturing now is harmless
            s.begin_capture()
            try:
                self.out = self._forward()
            finally:
                self.graph = s.end_capture()
        if hasattr(self.graph, "upload"):
            self.graph.upload(s)
        return result

    def replay(self, tokens, slots, pos, prm=None):
        self._load(tokens, slots, pos, prm)
        self.graph.launch(self.be.stream)
        return self._result(self.out)
