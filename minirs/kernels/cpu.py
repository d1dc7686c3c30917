"""The CPU backend: NumPy memory, Numba kernels. The model code calls only these methods.

Weights stay quantized (views into the file's memory map, re-laid out where the matmul kernels want it);
activations are float32. The CUDA backend offers the same methods over GPU memory.
"""

import numpy as np

from minirs.formats import Tensor
from minirs.kernels import cpu_ops


class CpuBackend:
    name = "cpu"
    kv_dtype = np.float32

    # --- weights ---
    def matrix(self, t: Tensor):
        """A weight matrix, kept quantized, ready for matmul / embed."""
        from minirs.kernels.cpu_matmul import QMatrix
        return QMatrix.from_tensor(t)

    def vector(self, t: Tensor) -> np.ndarray:
        """A small 1-D weight (norms, biases) as float32."""
        from minirs.formats.quants import dequantize
        return np.ascontiguousarray(dequantize(t), dtype=np.float32)

    def array(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    # --- ops ---
    def matmul(self, w, x: np.ndarray) -> np.ndarray:
        """y = x @ W.T   x: (n, n_in) -> (n, n_out)"""
        from minirs.kernels.cpu_matmul import qmatmul
        return qmatmul(w, np.ascontiguousarray(x, dtype=np.float32))

    def embed(self, w, ids: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """x[i] = W[ids[i]] * scale"""
        from minirs.kernels.cpu_matmul import embedding_rows
        x = embedding_rows(w, np.asarray(ids, dtype=np.int64))
        if scale != 1.0:
            x *= np.float32(scale)
        return x

    def add_(self, x: np.ndarray, y: np.ndarray) -> None:
        """x += y (the residual add)"""
        x += y

    def take_rows(self, x: np.ndarray, rows) -> np.ndarray:
        return x[np.asarray(rows)]

    def softcap_(self, x: np.ndarray, cap: float) -> None:
        """x = cap * tanh(x / cap), in place"""
        np.tanh(x / cap, out=x)
        x *= np.float32(cap)

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        shape = x.shape
        x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
        return cpu_ops.rmsnorm(x2, w, eps, np.empty_like(x2)).reshape(shape)

    def rope_(self, x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, neox: bool) -> None:
        cpu_ops.rope_(x, pos, inv_freq, neox)

    def gated_act(self, gate: np.ndarray, up: np.ndarray, activation: str) -> np.ndarray:
        return cpu_ops.gated_act(gate, up, activation == "gelu", np.empty_like(gate))

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        cpu_ops.kv_write(kc, vc, slots, pos, k, v)

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap) -> np.ndarray:
        return cpu_ops.attention(q, kc, vc, slots, pos, window, scale, softcap, np.empty_like(q))
