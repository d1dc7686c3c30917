"""A step captured in a CUDA graph, from outside the model: the caller hands in a function and the graph helper
records and replays it (as gpt-fast wraps decode_one_token); no kernel module knows what the function runs.

    step = StepGraph(backend, fn, finish, [np.zeros((3, n), np.int64), ...])
    host_result = step(host_inputs...)          # first call: eager run (compiles), then capture; later: replay

The inputs live in fixed device buffers that the graph reads (a call copies the new values in through page-locked
host memory, one async copy each); intermediates come from the graph's own memory pool, so no other code is
handed memory the graph still writes. `finish(outputs, *host inputs)` turns the device outputs into host values
right after each run, before anything can reuse their memory.
"""

import cupy as cp
import cupyx
import numpy as np


def copy_async(dst, src, stream) -> None:
    """dst = src between a page-locked host array and a contiguous device array (either way), queued on stream: one
    runtime call (CuPy's set/get cost ~10 us of host time per step, the GPU idle meanwhile)."""
    rt = cp.cuda.runtime
    if isinstance(dst, cp.ndarray):
        rt.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, rt.memcpyHostToDevice, stream.ptr)
    else:
        rt.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes, rt.memcpyDeviceToHost, stream.ptr)


class StepGraph:
    """fn(*device inputs) -> device outputs, recorded once in a CUDA graph on the backend's stream and replayed."""

    def __init__(self, backend, fn, finish, inputs: list[np.ndarray]):
        self.be, self.fn, self.finish = backend, fn, finish
        self.inputs = [cp.zeros(a.shape, a.dtype) for a in inputs]  # what the graph reads
        self.staged = [cupyx.empty_pinned(a.shape, a.dtype) for a in inputs]
        self.pool = cp.cuda.MemoryPool()  # intermediates of the graph live here and nowhere else
        self.graph = None
        self.out = None

    def __call__(self, *host_inputs):
        for staged, dev, a in zip(self.staged, self.inputs, host_inputs):
            staged[...] = a
            copy_async(dev, staged, self.be.stream)
        if self.graph is None:
            return self._first(host_inputs)
        self.graph.launch(self.be.stream)
        return self.finish(self.out, *host_inputs)

    def replay(self) -> None:
        """Run the captured step again on the device alone (benchmarks: no copies, no host work)."""
        self.graph.launch(self.be.stream)

    def _run(self):
        out = self.fn(*self.inputs)
        self.be.join_side()  # a captured graph must join every stream it forked
        return out

    def _first(self, host_inputs):
        """Run the step eagerly (compiles, fills the pool, gives this call's result), then capture it: the replay
        recomputes the same step, writing the same KV rows, so capturing right after is harmless."""
        s = self.be.stream
        with cp.cuda.using_allocator(self.pool.malloc):
            out = self._run()
            result = self.finish(out, *host_inputs)
            del out
            s.begin_capture()
            try:
                self.out = self._run()
            except BaseException:  # end the capture, keep no partial graph, and let the caller see why
                s.end_capture()
                self.be.forget_side()
                raise
            self.graph = s.end_capture()
        if hasattr(self.graph, "upload"):  # CuPy versions without it upload at the first launch
            self.graph.upload(s)
        return result
