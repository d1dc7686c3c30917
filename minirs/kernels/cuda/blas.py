"""The prefill GEMM: cuBLAS's cublasGemmEx, called directly, float16 in, float32 out.

    gemm_nt(x16, w16, out, accumulate)   # out (n, m) float32 = (or +=) x16 (n, k) @ w16 (m, k).T
    bmm_f32(a, b, out, b_transposed)     # out (B, M, N) = a @ b (or b^T), float32: the prefill attention

Prefill multiplies x by W dequantized to float16 (dequant.dequant_f16). `cupy.matmul` on two float16 arrays
writes float16, so its product was rounded to float16 and took one more pass to become float32, and one more to
be added into the residual stream. cublasGemmEx takes float16 A and B, accumulates in float32 and writes float32
C, with C = A B + beta C adding in place. So one call does what three passes did, and the product is not rounded.

The call goes through ctypes to the libcublas that CuPy has loaded, on a handle of our own per stream: its
workspace is set once, so cuBLAS allocates nothing in a call, and the stream is set once, so a call makes no
CUDA runtime call of its own. That also lets a call be captured into a CUDA graph, which CuPy's cuBLAS wrappers
refuse during a capture. The handle and its workspace live as long as the stream (a backend's, one per loaded
model): they hang on the stream object and the handle is destroyed when the stream is collected.
"""

import ctypes
import functools
import weakref

from minirs.errors import DeviceError

_OP_N, _OP_T = 0, 1  # cublasOperation_t
_R_16F, _R_32F = 2, 0  # cudaDataType
_COMPUTE_32F = 68  # cublasComputeType_t: CUBLAS_COMPUTE_32F
_ALGO_DEFAULT = -1  # cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT
WORKSPACE = 32 << 20  # bytes (cuBLAS recommends 32 MiB on Hopper)

_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


@functools.cache
def _lib():
    """The libcublas CuPy uses (found in this process's mappings once CuPy has loaded it), with typed entries."""
    import cupy as cp
    cp.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
    try:
        with open("/proc/self/maps") as f:  # Linux: the files mapped into this process
            paths = sorted({ln.split()[-1] for ln in f if "/libcublas.so" in ln})
    except OSError as e:
        raise DeviceError(f"cannot find the libcublas CuPy loaded ({e}); the CUDA prefill needs it") from None
    if len(paths) != 1:
        raise DeviceError(f"expected one libcublas in this process, found {paths or 'none'}")
    lib = ctypes.CDLL(paths[0])
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(p)]
    lib.cublasDestroy_v2.argtypes = [p]
    lib.cublasSetStream_v2.argtypes = [p, p]
    lib.cublasSetWorkspace_v2.argtypes = [p, p, ctypes.c_size_t]
    lib.cublasGemmEx.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
    return lib


@functools.cache
def _batched():
    """cublasGemmStridedBatchedEx, typed (looked up apart, so gemm_nt never depends on it)."""
    p, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    fn = _lib().cublasGemmStridedBatchedEx
    fn.argtypes = [p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll, p, p, i, i, ll, i, i, i]
    return fn


def _check(status: int, what: str) -> None:
    if status != 0:
        raise DeviceError(f"cuBLAS {what} failed with status {status}")


def _handle(stream):
    """Our cuBLAS handle for a CuPy stream, made at the stream's first GEMM with its workspace and stream set."""
    import cupy as cp
    h = getattr(stream, "_minirs_cublas", None)
    if h is None:
        if stream.is_capturing():
            raise DeviceError("the first prefill GEMM on a stream ran inside a CUDA graph capture; it must run eagerly "
                              "first (it creates the cuBLAS handle and its workspace)")
        lib, handle = _lib(), ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(handle)), "create")
        with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):  # not a graph's pool: lives on
            ws = cp.empty(WORKSPACE, cp.uint8)
        _check(lib.cublasSetWorkspace_v2(handle, ws.data.ptr, WORKSPACE), "set workspace")
        _check(lib.cublasSetStream_v2(handle, stream.ptr), "set stream")
        h = stream._minirs_cublas = (handle, ws)
        weakref.finalize(stream, _destroy, handle)
    return h[0]


def _destroy(handle) -> None:
    """Release a handle whose stream is being collected (its stream first: that one may already be gone)."""
    lib = _lib()
    lib.cublasSetStream_v2(handle, None)
    lib.cublasDestroy_v2(handle)


def gemm_nt(x16, w16, out, accumulate: bool) -> None:
    """out (n, m) float32 = x16 (n, k) @ w16 (m, k).T, or += with accumulate; float16 inputs, float32
    accumulation, on CuPy's current stream. All three C-contiguous."""
    import cupy as cp
    n, k = x16.shape
    m = w16.shape[0]
    args = {"x": (x16, (n, k), cp.float16), "w": (w16, (m, k), cp.float16), "out": (out, (n, m), cp.float32)}
    for name, (a, shape, dtype) in args.items():
        if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"gemm_nt: {name} is {a.shape} {a.dtype}{'' if a.flags.c_contiguous else ' strided'}, "
                             f"needs {shape} {cp.dtype(dtype).name} C-contiguous")
    # row-major out (n, m) is column-major (m, n): out^T = W x^T, W read transposed from its row-major (m, k)
    _check(_lib().cublasGemmEx(_handle(cp.cuda.get_current_stream()), _OP_T, _OP_N, m, n, k, ctypes.byref(_ONE),
                               w16.data.ptr, _R_16F, k, x16.data.ptr, _R_16F, k,
                               ctypes.byref(_ONE if accumulate else _ZERO), out.data.ptr, _R_32F, m,
                               _COMPUTE_32F, _ALGO_DEFAULT), "GemmEx")


def bmm_f32(a, b, out, b_transposed: bool) -> None:
    """out (B, M, N) = a (B, M, K) @ (b (B, N, K) transposed if b_transposed, else b (B, K, N)), float32 in and
    out, full float32 arithmetic (no TF32: CuPy's float32 matmul rounds the same), one strided batched call on
    CuPy's current stream, capturable into a graph as gemm_nt is. The prefill attention's two products (cuda/
    attention.py attention_gemm)."""
    import cupy as cp
    B, M, K = a.shape
    N = b.shape[1] if b_transposed else b.shape[2]
    want = {"a": (a, (B, M, K)), "b": (b, (B, N, K) if b_transposed else (B, K, N)), "out": (out, (B, M, N))}
    for name, (x, shape) in want.items():
        if x.shape != shape or x.dtype != cp.float32 or not x.flags.c_contiguous:
            raise ValueError(f"bmm_f32: {name} is {x.shape} {x.dtype}{'' if x.flags.c_contiguous else ' strided'}, "
                             f"needs {shape} float32 C-contiguous")
    # row-major out (M, N) is column-major out^T (N, M) = op(b) (N, K) @ a^T (K, M), a^T being a read as it is
    _check(_batched()(
        _handle(cp.cuda.get_current_stream()), _OP_T if b_transposed else _OP_N, _OP_N, N, M, K, ctypes.byref(_ONE),
        b.data.ptr, _R_32F, K if b_transposed else N, N * K, a.data.ptr, _R_32F, K, M * K, ctypes.byref(_ZERO),
        out.data.ptr, _R_32F, N, M * N, B, _COMPUTE_32F, _ALGO_DEFAULT), "GemmStridedBatchedEx")
