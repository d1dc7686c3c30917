"""Launching compiled Numba CUDA kernels on CuPy arrays without Numba's per-call overhead.

`kernel[grid, block, stream](*args)` on a Numba dispatcher types every argument and wraps every CuPy array in a
Numba device array before it launches: ~50 us per array argument on the GPU machine (GPU.md), so a prefill
forward of ~300 launches spent most of its time in Python. Decode steps replay CUDA graphs and never pay it;
prefill runs eagerly.

`FastKernel` wraps a dispatcher compiled with explicit signatures. The first launch with a given argument
"shape" (dtype, ndim and contiguity of each array, Python type of each scalar) finds the compiled overload that
Numba would run and remembers it; later launches build the kernel's parameter list directly (an array is Numba's
(meminfo, parent, size, itemsize, data, *shape, *strides), as Numba's own `_Kernel._prepare_args` builds it) and
launch through the same `cuda.core.launch`. Anything it does not recognise (a Numba device array, a type with no
matching overload) goes through the dispatcher as usual, so the result is always the same kernel on the same
data.

On sm_90+ every fast launch asks for programmatic dependent launch (dependent_launch): the kernel may start while
the previous one in the stream still runs, and waits for it inside (intrinsics.wait_prior_kernel).
"""

import ctypes
import functools
import os

from numba.cuda import types

try:  # the pieces of numba-cuda's own launch path (numba/cuda/dispatcher.py)
    from numba.cuda._compat import CUDA_CORE_GE_1_0

    from cuda.core import LaunchConfig, launch
    FAST = True
except ImportError:  # another numba-cuda layout: the dispatcher's path only
    FAST = False

_CTYPES = {types.int64: ctypes.c_int64, types.int32: ctypes.c_int32, types.uint32: ctypes.c_uint32,
           types.uint64: ctypes.c_uint64, types.float32: ctypes.c_float, types.float64: ctypes.c_double}


def _key(a):
    """What decides the overload: (dtype, ndim, C-contiguous) for an array, the Python type of a scalar."""
    dt = getattr(a, "dtype", None)
    if dt is not None and hasattr(a, "data") and hasattr(a.data, "ptr"):  # a CuPy array
        return dt.char, a.ndim, a.flags.c_contiguous
    return type(a)


def _fits(sig, arg) -> bool:
    """Would Numba run the overload of type `sig` for the value arg (typed `arg`)?"""
    if isinstance(sig, types.Array):
        return isinstance(arg, types.Array) and sig.dtype == arg.dtype and sig.ndim == arg.ndim and \
            (sig.layout == "A" or sig.layout == arg.layout)
    if sig == types.boolean:
        return arg == types.boolean
    if isinstance(sig, types.Integer):
        return isinstance(arg, types.Integer) and arg != types.boolean
    if isinstance(sig, types.Float):
        return isinstance(arg, (types.Float, types.Integer))
    return False


class FastKernel:
    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self._plans = {}  # argument key -> (compiled kernel, its argument types), or None: the dispatcher's path

    def __getitem__(self, config):
        grid, block, stream = config
        return lambda *args: self.launch(grid, block, stream, args)

    def _plan(self, args):
        if not FAST:
            return None
        try:
            argtypes = [self.dispatcher.typeof_pyval(a) for a in args]
        except Exception:  # noqa: BLE001 - a value Numba types only through its own path
            return None
        for sig, kernel in self.dispatcher.overloads.items():
            if len(sig) == len(argtypes) and all(_fits(s, a) for s, a in zip(sig, argtypes)):
                if all(not isinstance(s, types.Array) or _key(a) != type(a) for s, a in zip(sig, args)) and \
                        all(isinstance(s, types.Array) or s == types.boolean or s in _CTYPES for s in sig):
                    return kernel, tuple(sig)
                return None
        return None

    def launch(self, grid, block, stream, args):
        key = tuple(_key(a) for a in args)
        plan = self._plans.get(key, False)
        if plan is False:
            plan = self._plans[key] = self._plan(args)
        if plan is None or not stream:  # the direct launch needs a stream object; 0: the default stream
            self.dispatcher[grid, block, stream](*args)
            return
        kernel, sig = plan
        params = []
        for ty, v in zip(sig, args):
            if isinstance(ty, types.Array):
                params += (0, 0, v.size, v.itemsize, v.data.ptr, *v.shape, *v.strides)
            elif ty == types.boolean:
                params.append(bool(v))
            else:
                params.append(_CTYPES[ty](v))
        launch(stream, _config(grid, block, dependent_launch()), kernel._codelibrary.get_cufunc().kernel, *params)


def _config(grid, block, pdl: bool):
    kw = {"is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch": False}
    if pdl:
        kw["programmatic_stream_serialization"] = True
    return LaunchConfig(grid=grid, block=block, shmem_size=0, **kw)


@functools.cache
def dependent_launch() -> bool:
    """Launch kernels with programmatic dependent launch (PDL): a kernel may start while the one before it in the
    stream still runs, and waits for it inside (intrinsics.wait_prior_kernel, which every kernel calls
    first). On for GPUs of compute capability 9.0+ with a cuda.core that can ask for it; MINIRS_PDL=0 turns it
    off. With no GPU (compile_ptx for sm_90, the CI check) the kernels are compiled with it."""
    if os.environ.get("MINIRS_PDL", "1") == "0" or not FAST:
        return False
    try:
        _config(1, 1, True)
    except TypeError:  # a cuda.core without the option
        return False
    from numba import cuda
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and cuda.is_available():
        return cuda.get_current_device().compute_capability >= (9, 0)
    return True


class LazyKernel:
    """A kernel compiled for its signatures at its first launch, then launched as a FastKernel. Kernels come in
    many variants (block shapes, weight flavours) of which a model uses a few; compiling only those keeps start-up
    short. The decode graph captures a step only after running it once eagerly, so nothing compiles in a capture."""

    def __init__(self, fn, sigs):
        self.fn, self.sigs, self.fast = fn, sigs, None

    @property
    def compiled(self) -> FastKernel:
        if self.fast is None:
            from numba import cuda
            self.fast = FastKernel(cuda.jit(self.sigs)(self.fn))
        return self.fast

    def __getitem__(self, config):
        return self.compiled[config]


def kernels(sigs: dict) -> dict:
    """{name: kernel} for {python function: signatures}: on a GPU, LazyKernels; under the simulator (or with no
    GPU) Numba's lazily typed kernels, compiled for whatever arguments come."""
    import os

    from numba import cuda
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and cuda.is_available():
        return {f.__name__: LazyKernel(f, s) for f, s in sigs.items()}
    return {f.__name__: cuda.jit(f) for f in sigs}
