"""The CUDA backend's rounding, on the CPU: a test oracle for whole-model GPU runs.

The GPU differs from the float32 CPU path in three roundings, by design: the GEMVs (n <= GEMV_MAX_N) read x
quantized to int8 per 32-block (llama.cpp's q8_1: ~5e-3 relative error per matmul), the cuBLAS path (larger n)
reads x and W as float16 (and sums and writes float32), and the KV cache is float16. The twin rounds x and the
KV cache that way; it keeps W exact on the cuBLAS path, and it rounds x to int8 also for the batches of 2 to
GEMV_MAX_N tokens that the GPU, unless asked for row-invariant results, runs on the tensor cores with x as
float16 (the larger of the two errors). A random-weight model can amplify those errors a
hundredfold on some tokens (its logits are near-uniform and its layers chaotic), so GPU-vs-CPU logits alone
cannot tell such a token from a bug. `GpuNumericsCpu` is the CPU backend with the same roundings. It cannot
match the GPU value for value: int8 rounding is chaotic (a 1e-7 difference flips one code somewhere, one flip
moves a matmul by ~1e-3, which flips many more), so each run is a fresh draw of the int8 error (measured on an
H100: GPU-vs-twin distance equals GPU-vs-CPU and twin-vs-CPU, 3e-2 SmolLM2, 0.1-0.4 Gemma-3 decode steps). What
it gives is the size of the error by design: a GPU bug shows as a GPU-vs-CPU distance well above the twin's.
No CuPy here; it runs anywhere.
"""

import numpy as np

from minirs.kernels.backend import values
from minirs.kernels.cpu import CpuBackend

GEMV_MAX_N = 32  # as quantize.GEMV_MAX_N


def quantize_x(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The twin of quantize.quantize_x: x (n, k) -> xq (n, k) int8 = rint(x / d), d (n, k/32) = max|x| / 127
    per 32-block (float32 math, round half to even), xs (n, k/16) int32 sums of xq per 16."""
    n, k = x.shape
    xb = np.asarray(x, np.float32).reshape(n, k // 32, 32)
    d = np.abs(xb).max(-1) / np.float32(127.0)
    safe = np.where(d > 0, d, np.float32(1.0))[..., None]
    xq = np.where(d[..., None] > 0, np.rint(xb / safe), 0).astype(np.int8)
    xs = xq.reshape(n, k // 16, 16).sum(-1, dtype=np.int32)
    return xq.reshape(n, k), d.astype(np.float32), xs


def dequantize_x(xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
    n, k = xq.shape
    return (xq.reshape(n, k // 32, 32).astype(np.float32) * xd[..., None]).reshape(n, k)


class GpuNumericsCpu(CpuBackend):
    """CpuBackend whose matmuls and KV cache round as the CUDA backend's do (module docstring)."""

    @staticmethod
    def _round_x(w, x: np.ndarray, n: int) -> np.ndarray:
        """x as the GPU matmul of a batch of n tokens reads it: int8 per 32-block (GEMV) or float16 (cuBLAS)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if w.family == "float":
            return x
        if n <= GEMV_MAX_N and x.shape[-1] % 32 == 0:
            x2 = x.reshape(-1, x.shape[-1])
            return dequantize_x(*quantize_x(x2)[:2]).reshape(x.shape)
        return x.astype(np.float16).astype(np.float32)

    def matmul(self, w, x, lora=None) -> np.ndarray:
        x = values(x)
        y = super().matmul(w, self._round_x(w, x, x.shape[0]))
        if lora is not None:  # the GPU's delta reads x in float32
            self.lora_add_(y, x, *lora)
        return y

    def matmul_id(self, experts, x, ids: np.ndarray) -> np.ndarray:
        return super().matmul_id(experts, self._round_x(experts[0], values(x), ids.shape[0]), ids)

    qkv_post = CpuBackend.qkv_post_composed  # so that the cache writes go through kv_write below

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        f16 = lambda a: np.ascontiguousarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
        super().kv_write(kc, vc, slots, pos, f16(k), f16(v))
