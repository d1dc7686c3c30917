"""The CPU backend (kernels/backend.py's interface): NumPy memory, Numba kernels.

Weights stay quantized (re-laid out at load time where the matmul kernels want it, weights.py); activations are
float32, and so is the KV cache (a quantized matmul meets x as 16-bit integers per 32-block, qdot.py). Every
kernel computes each row on its own, so a row's bits never depend on the batch (batch_invariant has nothing to
switch). The Numba kernels release the GIL (nogil), so the
engine thread computes while other Python threads (the CLI printing a stream, API callers) run; concurrent parallel
kernels from several threads need a thread-safe Numba threading layer (omp or tbb, the default where available).
"""

import numpy as np

from minirs.formats import Tensor
from minirs.kernels.backend import Act, Stack, values
from minirs.kernels.cpu import activation, attention, moe, norm, rope
from minirs.kernels.cpu.attn_inputs import attn_inputs
from minirs.kernels.cpu.dequant import embedding_rows
from minirs.kernels.cpu.lora import CpuLora
from minirs.kernels.cpu.matmul import lora_add_, qmatmul
from minirs.kernels.cpu.weights import QMatrix
from minirs.sampling import rows as sampling_rows
from minirs.sampling.mask import mask_logits


_NONE = np.zeros(0, np.float32)  # an absent bias or norm weight, for the Numba kernels


class CpuBackend:
    name = "cpu"
    kv_dtype = np.float32
    graphs = False  # capture() runs the step eagerly each time: there is no launch cost to save
    device_sampling = False  # the logits are on the host already
    numba_threads = True
    prefill_graphs = True  # (no graphs here; a stand-in that claims them records prefill chunks too)

    def batch_invariant(self, exact: bool) -> None:
        """Every CPU kernel is batch-invariant already."""

    def use_in_thread(self) -> None:
        """Nothing to do: NumPy and Numba have no stream."""

    def synchronize(self) -> None:
        """Nothing is queued: every call returns when its work is done."""

    @staticmethod
    def release_memory() -> None:
        """Nothing is pooled: NumPy's memory goes back when the last reference goes."""

    # --- weights and memory ---
    def matrix(self, t: Tensor) -> QMatrix:
        return QMatrix.from_tensor(t)

    def vector(self, t: Tensor) -> np.ndarray:
        from minirs.formats.quants import dequantize
        return np.ascontiguousarray(dequantize(t), dtype=np.float32)

    def expert_matrix(self, t: Tensor) -> list[QMatrix]:
        """One quantized matrix per expert of the stacked (E, n_out, n_in) weights."""
        n_exp, n_out, n_in = t.shape
        rows = t.rows()  # (E * n_out, row_bytes): expert e owns rows e*n_out .. (e+1)*n_out
        return [QMatrix.from_tensor(Tensor(f"{t.name}[{e}]", t.qtype, (n_out, n_in),
                                           rows[e * n_out:(e + 1) * n_out].reshape(-1)))
                for e in range(n_exp)]

    def stack_matrices(self, parts: list) -> QMatrix | Stack:
        """One matrix of the parts' rows where they share a kernel (QMatrix.stacked), else the parts."""
        return QMatrix.stacked(parts) or Stack(tuple(parts))

    def _stacked_matmul(self, w: QMatrix | Stack, h, lora) -> np.ndarray:
        """h times every part, side by side (n, sum of n_out), plus the LoRA delta."""
        if isinstance(w, QMatrix):
            return self.matmul(w, h, lora)
        y = np.concatenate([self.matmul(m, h) for m in w.parts], axis=1)
        if lora is not None:
            self.lora_add_(y, h, *lora)
        return y

    def lora_stack(self, a, bt, key, scale, lo, hi, base=None) -> CpuLora:
        """The stack laid out for the CPU kernels: B^T in tiles of the matmul's 32 output rows, A and B in float16
        beside a quantized base, float32 beside a float one (cpu/lora.py)."""
        parts = base.parts if isinstance(base, Stack) else (base,)
        quantized = all(isinstance(m, QMatrix) and m.family != "float" for m in parts)
        return CpuLora.of(a, bt, key, scale, lo, hi, half=base is not None and quantized)

    def array(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    # --- ops ---
    def embed(self, w: QMatrix, ids, scale: float = 1.0) -> np.ndarray:
        x = embedding_rows(w, np.asarray(ids, dtype=np.int64))
        if scale != 1.0:
            x *= np.float32(scale)
        return x

    def rmsnorm(self, x, w: np.ndarray, eps: float, gemv: bool = True) -> Act:
        shape = x.shape
        x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
        return Act(norm.rmsnorm(x2, w, eps, np.empty_like(x2)).reshape(shape))

    def layernorm(self, x, w: np.ndarray, b: np.ndarray, eps: float) -> Act:
        x2 = np.ascontiguousarray(x)
        return Act(norm.layernorm(x2, w, b, eps, np.empty_like(x2)))

    def matmul(self, w: QMatrix, x, lora=None) -> np.ndarray:
        return qmatmul(w, np.ascontiguousarray(values(x), dtype=np.float32), lora)

    def matmul_add_(self, w: QMatrix, x, out: np.ndarray, lora=None) -> None:
        out += self.matmul(w, x, lora)

    def lora_add_(self, y: np.ndarray, x, lora: CpuLora, coef: np.ndarray) -> None:
        lora_add_(y, values(x), lora, coef)

    def add_(self, x: np.ndarray, y) -> None:
        x += values(y)

    def relu_(self, x: np.ndarray) -> None:
        np.maximum(x, 0, out=x)

    def add_bias_(self, x: np.ndarray, b: np.ndarray) -> None:
        x += b

    def take_rows(self, x: np.ndarray, rows) -> np.ndarray:
        return x[np.asarray(rows)]

    def softcap_(self, x: np.ndarray, cap: float) -> None:
        np.tanh(x / cap, out=x)
        x *= np.float32(cap)

    def qkv_attn_inputs(self, w: Stack, h, q_dim, kv_dim, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots,
                        lora=None):
        qkv = self._stacked_matmul(w, h, lora)
        return self.qkv_post(qkv, q_dim, kv_dim, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots)

    def qkv_post(self, qkv, q_dim, kv_dim, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots):
        """What follows the q|k|v projection, in one Numba call (cpu/attn_inputs.py): q (n, h, hd)."""
        bq, bk, bv = (_NONE,) * 3 if biases[0] is None else biases
        wq, wk = (_NONE,) * 2 if norms is None else norms
        return attn_inputs(np.ascontiguousarray(qkv), q_dim, kv_dim, bq, bk, bv, wq, wk, eps,
                           np.asarray(pos, np.int64), inv_freq, neox, kc, vc, np.asarray(slots, np.int64))

    def qkv_post_composed(self, qkv, q_dim, kv_dim, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots):
        """qkv_post stated op by op with this backend's methods (the twins' and GPU numerics' qkv_post)."""
        n, d = qkv.shape[0], kc.shape[3]
        q, k, v = (np.ascontiguousarray(a) for a in np.split(qkv, [q_dim, q_dim + kv_dim], axis=1))
        if biases[0] is not None:
            for a, b in zip((q, k, v), biases):
                a += b
        q, k, v = q.reshape(n, -1, d), k.reshape(n, -1, d), v.reshape(n, -1, d)
        if norms is not None:
            q, k = self.rmsnorm(q, norms[0], eps).x, self.rmsnorm(k, norms[1], eps).x
        self.rope_(q, pos, inv_freq, neox)
        self.rope_(k, pos, inv_freq, neox)
        self.kv_write(kc, vc, slots, pos, k, v)
        return q

    def rope_(self, x, pos, inv_freq, neox: bool) -> None:
        """Rotate x (n, h, d) in place by its rows' positions (a method: the twins backend states it in NumPy)."""
        rope.rope_(x, pos, inv_freq, neox)

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        """k and v (n, hkv, hd) into the caches at (slots, pos) (a method: the GPU-numerics and NumPy twins state it
        their way)."""
        attention.kv_write(kc, vc, slots, pos, k, v)

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap) -> Act:
        out = attention.attention(q, kc, vc, slots, pos, window, scale, softcap, np.empty_like(q))
        return Act(out.reshape(q.shape[0], -1))

    def gated_ffn(self, w: Stack, h, ffn_dim: int, activation: str, up_bias=None, lora=None) -> Act:
        return self.gated_split(self._stacked_matmul(w, h, lora), ffn_dim, activation, up_bias)

    def gated_split(self, gu, ffn_dim: int, activation_name: str, up_bias=None) -> Act:
        """act(gate) * (up + up_bias) of gate|up (n, 2f): one kernel over the halves where there is no bias."""
        if up_bias is not None:
            return self.gated_split_composed(gu, ffn_dim, activation_name, up_bias)
        kernel = activation.gated_halves_rows if gu.shape[0] >= 16 else activation.gated_halves
        return Act(kernel(np.ascontiguousarray(gu), ffn_dim, activation_name == "gelu",
                          np.empty((gu.shape[0], ffn_dim), np.float32)))

    def gated_split_composed(self, gu, ffn_dim: int, activation_name: str, up_bias=None) -> Act:
        """gated_split stated with this backend's gated_act (the twins' gated_split)."""
        gate, up = np.ascontiguousarray(gu[:, :ffn_dim]), np.ascontiguousarray(gu[:, ffn_dim:])
        if up_bias is not None:
            up += up_bias
        return self.gated_act(gate, up, activation_name)

    def gated_act(self, gate, up, activation_name: str) -> Act:
        # large batches (prefill) spread rows over the threads; a decode step is cheaper than waking them
        kernel = activation.gated_act_rows if gate.shape[0] >= 16 else activation.gated_act
        return Act(kernel(gate, up, activation_name == "gelu", np.empty_like(gate)))

    def act(self, x, activation_name: str) -> Act:
        return Act(activation.act(x, activation_name == "gelu", np.empty_like(x)))

    def topk_softmax(self, logits: np.ndarray, k: int):
        n = logits.shape[0]
        return moe.topk_softmax(np.ascontiguousarray(logits), k, np.empty((n, k), np.int64),
                                np.empty((n, k), np.float32))

    def matmul_id(self, experts: list[QMatrix], x, ids: np.ndarray) -> np.ndarray:
        """Each expert runs once, on the rows routed to it."""
        x = values(x)
        n, k = ids.shape
        y = np.empty((n, k, experts[0].n_out), np.float32)
        flat = ids.reshape(-1)
        for e in np.unique(flat):
            sel = np.nonzero(flat == e)[0]  # flat (t, j) positions
            xs = x[sel // k] if x.ndim == 2 else x.reshape(n * k, -1)[sel]
            y.reshape(n * k, -1)[sel] = qmatmul(experts[e], np.ascontiguousarray(xs, dtype=np.float32))
        return y

    def moe_sum(self, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.einsum("nkd,nk->nd", y, weights)

    def prefetch(self, mats: list) -> None:
        """No cache to warm ahead of time here."""

    # --- sampling: the host draws every row ---
    def mask_logits(self, logits: np.ndarray, words: np.ndarray) -> np.ndarray:
        return mask_logits(logits, words)

    def argmax(self, logits: np.ndarray) -> np.ndarray:
        return np.argmax(logits, axis=-1).astype(np.int64)

    def sample_ids(self, logits: np.ndarray, params) -> np.ndarray:
        return np.full(logits.shape[0], -1, np.int64)  # all undecided: finish_sampling draws them

    def finish_sampling(self, ids: np.ndarray, logits: np.ndarray, params: np.ndarray) -> np.ndarray:
        return sampling_rows.finish(ids, np.asarray(logits)[np.asarray(ids) < 0], params)

    def known_index(self, values) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=np.int64).reshape(-1)

    def move_prefill(self, kc, vc, src: int, dst, n: int) -> None:
        d = int(np.asarray(dst).reshape(-1)[0])
        kc[d, :, :n] = kc[src, :, :n]
        vc[d, :, :n] = vc[src, :, :n]

    def capture(self, fn, finish, inputs: list[np.ndarray]):
        """No graphs on the CPU: the 'captured' step runs fn eagerly on each call."""
        def step(*host_inputs):
            return finish(fn(*host_inputs), *host_inputs)
        return step
