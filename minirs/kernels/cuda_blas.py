"""The prefill GEMM: cuBLAS's cublasGemmEx, called directly, float16 in, float32 out.

    gemm_nt(x16, w16, out, accumulate)   # out (n, m) float32 = (or +=) x16 (n, k) @ w16 (m, k).T

Prefill multiplies x by W dequantized to float16 (cuda_matmul.dequant_f16). `cupy.matmul` on two float16 arrays
writes float16, so its product was rounded to float16 and took one more pass to become float32, and one more to
be added into the residual stream. cublasGemmEx takes float16 A and B, accumulates in float32 and writes float32
C, with C = A B + beta C adding in place. So one call does what three passes did, and the product is not rounded.

The call goes through ctypes to the libcublas that CuPy has loaded, on a handle of our own per stream: its
workspace is set once, so cuBLAS allocates nothing in a call, and the stream is set once, so a call makes no
CUDA runtime call of its own. That also lets a call be captured into a CUDA graph, which CuPy's cuBLAS wrappers
refuse during a capture.
"""

import ctypes
import functools

from minirs.errors import DeviceError

_OP_N, _OP_T = 0, 1  # cublasOperation_t
_R_16F, _R_32F = 2, 0  # cudaDataType
_COMPUTE_32F = 68  # cublasComputeType_t: CUBLAS_COMPUTE_32F
_ALGO_DEFAULT = -1  # cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT
WORKSPACE = 32 << 20  # bytes (cuBLAS recommends 32 MiB on Hopper)

_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)
_handles = {}  # CuPy stream pointer -> (handle, workspace array)


@functools.cache
def _lib():
    """The libcublas CuPy uses (found in this process's mappings once CuPy has loaded it), with typed entries."""
    import cupy as cp
    cp.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
    with open("/proc/self/maps") as f:
        paths = sorted({ln.split()[-1] for ln in f if "/libcublas.so" in ln})
    if not paths:
        raise DeviceError("libcublas is not loaded in this process; the CUDA prefill needs cuBLAS")
    lib = ctypes.CDLL(paths[0])
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(p)]
    lib.cublasSetStream_v2.argtypes = [p, p]
    lib.cublasSetWorkspace_v2.argtypes = [p, p, ctypes.c_size_t]
    lib.cublasGemmEx.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise DeviceError(f"cuBLAS {what} failed with status {status}")


def _handle(stream):
    """Our cuBLAS handle for a CuPy stream, its workspace and stream set once."""
    import cupy as cp
    h = _handles.get(stream.ptr)
    if h is None:
        lib, handle = _lib(), ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(handle)), "create")
        with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):  # not a graph's pool: lives on
            ws = cp.empty(WORKSPACE, cp.uint8)
        _check(lib.cublasSetWorkspace_v2(handle, ws.data.ptr, WORKSPACE), "set workspace")
        _check(lib.cublasSetStream_v2(handle, stream.ptr), "set stream")
        h = _handles[stream.ptr] = (handle, ws, stream)  # the stream too: its pointer must not be reused
    return h[0]


def gemm_nt(x16, w16, out, accumulate: bool) -> None:
    """out (n, m) float32 = x16 (n, k) @ w16 (m, k).T, or += with accumulate; float16 inputs, float32
    accumulation, on CuPy's current stream. All three C-contiguous."""
    import cupy as cp
    n, k = x16.shape
    m = w16.shape[0]
    if w16.shape[1] != k or out.shape != (n, m) or x16.dtype != cp.float16 or w16.dtype != cp.float16 or \
            out.dtype != cp.float32 or not all(a.flags.c_contiguous for a in (x16, w16, out)):
        raise ValueError(f"gemm_nt: x {x16.shape} {x16.dtype}, w {w16.shape} {w16.dtype}, out {out.shape} {out.dtype}")
    # row-major out (n, m) is column-major (m, n): out^T = W x^T, W read transposed from its row-major (m, k)
    _check(_lib().cublasGemmEx(_handle(cp.cuda.get_current_stream()), _OP_T, _OP_N, m, n, k, ctypes.byref(_ONE),
                               w16.data.ptr, _R_16F, k, x16.data.ptr, _R_16F, k,
                               ctypes.byref(_ONE if accumulate else _ZERO), out.data.ptr, _R_32F, m,
                               _COMPUTE_32F, _ALGO_DEFAULT), "GemmEx")
