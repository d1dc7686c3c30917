"""The CPU backend: NumPy memory, Numba kernels. The model code calls only these methods.

Weights stay quantized (views into the file's memory map, re-laid out where the matmul kernels want it);
activations are float32. The CUDA backend offers the same methods over GPU memory. The Numba kernels release the
GIL (nogil), so the engine thread computes while other Python threads (the CLI printing a stream, API callers)
run; concurrent parallel kernels from several threads need a thread-safe Numba threading layer (omp or tbb,
the default where available).
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

    def stack_matrices(self, parts: list) -> None:
        """No stacked projections on the CPU: measured slower (the fused outputs come back as strided column
        views; BENCHMARKS.md), so q/k/v and gate/up stay separate matrices."""
        return None

    def prefetch(self, mats: list) -> None:
        """A hint for the GPU's L2 cache (CudaBackend.prefetch): nothing to do on the CPU."""

    def array(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    # --- ops ---
    def matmul(self, w, x: np.ndarray) -> np.ndarray:
        """y = x @ W.T   x: (n, n_in) -> (n, n_out)"""
        from minirs.kernels.cpu_matmul import qmatmul
        return qmatmul(w, np.ascontiguousarray(x, dtype=np.float32))

    def matmul_add_(self, w, x: np.ndarray, out: np.ndarray) -> None:
        """out += x @ W.T (an output projection into the residual stream)"""
        out += self.matmul(w, x)

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
        # large batches (prefill) spread rows over the threads; a decode step is cheaper than waking them
        kernel = cpu_ops.gated_act_rows if gate.shape[0] >= 16 else cpu_ops.gated_act
        return kernel(gate, up, activation == "gelu", np.empty_like(gate))

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        cpu_ops.kv_write(kc, vc, slots, pos, k, v)

    def attn_inputs(self, q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots) -> np.ndarray:
        """From the q/k/v projections (n, h*d), (n, hkv*d) x2 to attention: add the biases, RMS-normalise each q
        and k head (norms = (q_norm, k_norm) or None), rotate q and k, write k and v to the cache. Returns q as
        (n, h, d). (The CUDA backend does all this in one kernel.)"""
        n, d = q.shape[0], kc.shape[3]
        q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
        if biases[0] is not None:
            for a, b in zip((q, k, v), biases):
                self.add_bias_(a, b)
        q, k, v = q.reshape(n, -1, d), k.reshape(n, -1, d), v.reshape(n, -1, d)
        if norms is not None:
            q, k = self.rmsnorm(q, norms[0], eps), self.rmsnorm(k, norms[1], eps)
        self.rope_(q, pos, inv_freq, neox)
        self.rope_(k, pos, inv_freq, neox)
        self.kv_write(kc, vc, slots, pos, k, v)
        return q

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap) -> np.ndarray:
        return cpu_ops.attention(q, kc, vc, slots, pos, window, scale, softcap, np.empty_like(q))

    # --- ops of the families that differ from llama (phi2: LayerNorm, biases, plain MLP; mixtral: MoE) ---
    def layernorm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
        shape = x.shape
        x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
        return cpu_ops.layernorm(x2, w, b, eps, np.empty_like(x2)).reshape(shape)

    def add_bias_(self, x: np.ndarray, b: np.ndarray) -> None:
        """x[i] += b for every row i (linear-layer biases)"""
        x += b

    def act(self, x: np.ndarray, activation: str) -> np.ndarray:
        return cpu_ops.act(x, activation == "gelu", np.empty_like(x))

    def expert_matrix(self, t: Tensor):
        """The stacked expert weights (E, n_out, n_in) of one MoE layer: one quantized matrix per expert."""
        from minirs.kernels.cpu_matmul import QMatrix
        n_exp, n_out, n_in = t.shape
        rows = t.rows()  # (E * n_out, row_bytes): expert e owns rows e*n_out .. (e+1)*n_out
        return [QMatrix.from_tensor(Tensor(f"{t.name}[{e}]", t.qtype, (n_out, n_in),
                                           rows[e * n_out:(e + 1) * n_out].reshape(-1)))
                for e in range(n_exp)]

    def topk_softmax(self, logits: np.ndarray, k: int):
        """Router: (n, E) logits -> ids (n, k) of the top-k experts and their softmax weights (n, k)."""
        n = logits.shape[0]
        return cpu_ops.topk_softmax(np.ascontiguousarray(logits), k, np.empty((n, k), np.int64),
                                    np.empty((n, k), np.float32))

    def matmul_id(self, experts, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """y[t, j] = x[t] (or x[t, j]) @ W[ids[t, j]].T: each expert runs once on the rows routed to it."""
        from minirs.kernels.cpu_matmul import qmatmul
        n, k = ids.shape
        y = np.empty((n, k, experts[0].n_out), np.float32)
        flat = ids.reshape(-1)
        for e in np.unique(flat):
            sel = np.nonzero(flat == e)[0]  # flat (t, j) positions
            xs = x[sel // k] if x.ndim == 2 else x.reshape(n * k, -1)[sel]
            y.reshape(n * k, -1)[sel] = qmatmul(experts[e], np.ascontiguousarray(xs, dtype=np.float32))
        return y

    def moe_sum(self, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """out[t] = sum_j weights[t, j] * y[t, j]"""
        return np.einsum("nkd,nk->nd", y, weights)
