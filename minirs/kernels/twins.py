"""The twins backend: the model run end to end on the NumPy twins (kernels/ref.py) and NumPy's own matmul.

    model = load_model(path, backend=TwinsBackend())      # needs float32 copies of the weights (4 bytes each)

It is the CPU backend with every Numba kernel replaced by its plain-NumPy statement, and the quantized weights
decoded once to float32 at load time (formats.quants.dequantize, bit-exact with gguf), so a matmul is one BLAS call.
Nothing here compiles. That is what it is for: on a machine's first run the Numba kernels need up to half a minute to
compile, and a small model answers on the twins meanwhile (minirs.warmup hands the engine the compiled model when
the compile is done). A quantized weight meets x quantized to int8 per 32 inputs, as in the CPU kernels (the same
integers: qdot.quantize_rows_ref is bit-identical with the kernel), so both backends differ only by float32 rounding
(tests/test_twins.py checks logits and greedy tokens on the real SmolLM2).

Memory is the price: four bytes per weight (0.6 GB for SmolLM2-135M, 1.1 GB for Gemma-3-270M), so minirs.warmup
uses it only for models whose float32 copy fits its budget.
"""

import numpy as np

from minirs.formats import Tensor
from minirs.formats.quants import dequantize
from minirs.kernels import ref
from minirs.kernels.backend import Act, LoraStack, values
from minirs.kernels.cpu.backend import CpuBackend
from minirs.kernels.cpu.matmul import int8_roundtrip


class Dequantized(np.ndarray):
    """The float32 copy of quantized weights: the matmul twins quantize x for it, as the CPU kernels do."""


def _as_kernels_see(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x as the CPU matmul kernels meet it: int8 per 32 inputs for quantized weights, itself for float ones."""
    x = np.asarray(x, np.float32)
    if not isinstance(w, Dequantized):
        return x
    return int8_roundtrip(x.reshape(-1, x.shape[-1])).astype(np.float32).reshape(x.shape)


def float32_bytes(tensors) -> int:
    """What the twins backend's copies of these weights take: four bytes per element."""
    return sum(4 * int(np.prod(t.shape)) for t in tensors)


class TwinsBackend(CpuBackend):
    name = "twins"
    numba_threads = False  # NumPy's BLAS has threads of its own

    # --- weights: decoded once to float32 ---
    def matrix(self, t: Tensor) -> np.ndarray:
        return self._dense(t)  # (n_out, n_in)

    def expert_matrix(self, t: Tensor) -> np.ndarray:
        return self._dense(t)  # (E, n_out, n_in)

    @staticmethod
    def _dense(t: Tensor) -> np.ndarray:
        w = np.ascontiguousarray(dequantize(t), dtype=np.float32)
        return w if t.qtype in ("F32", "F16", "BF16") else w.view(Dequantized)

    # --- ops: the twins ---
    def embed(self, w: np.ndarray, ids, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(w[np.asarray(ids, dtype=np.int64)])  # (n, dim), a copy
        if scale != 1.0:
            x *= np.float32(scale)
        return x

    def rmsnorm(self, x, w, eps: float, gemv: bool = True) -> Act:
        return Act(ref.rmsnorm(values(x), w, eps))

    def layernorm(self, x, w, b, eps: float) -> Act:
        return Act(ref.layernorm(values(x), w, b, eps))

    def lora_stack(self, a, bt, key, scale, lo, hi, base=None) -> LoraStack:
        f32, i64 = (lambda v: np.ascontiguousarray(v, np.float32)), (lambda v: np.ascontiguousarray(v, np.int64))
        return LoraStack(f32(a), f32(bt), i64(key), f32(scale), i64(lo), i64(hi))

    def lora_add_(self, y, x, lora, coef) -> None:
        y += ref.lora_delta(np.asarray(values(x), np.float32), lora.a, lora.bt, lora.key, lora.scale, coef)

    def matmul(self, w: np.ndarray, x, lora=None) -> np.ndarray:
        # y[t, r] = sum_k W[r, k] * x[t, k]  (+ the LoRA delta)
        y = np.asarray(np.ascontiguousarray(_as_kernels_see(w, values(x))) @ w.T)
        if lora is not None:
            self.lora_add_(y, x, *lora)
        return y

    qkv_post = CpuBackend.qkv_post_composed  # the op-by-op statements, on the twins below
    gated_split = CpuBackend.gated_split_composed

    def rope_(self, x, pos, inv_freq, neox: bool) -> None:
        x[...] = ref.rope(x, np.asarray(pos), inv_freq, neox)

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        """Position p of slot s lives at row p % L of the ring (kv_cache.py)."""
        rows = np.asarray(pos) % kc.shape[2]
        kc[np.asarray(slots), :, rows] = k
        vc[np.asarray(slots), :, rows] = v

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap) -> Act:
        out = ref.attention(q, kc, vc, np.asarray(slots), np.asarray(pos), window, scale, softcap)
        return Act(out.reshape(q.shape[0], -1))

    def gated_act(self, gate, up, activation_name: str) -> Act:
        return Act(ref.gated_act(gate, up, activation_name))

    def act(self, x, activation_name: str) -> Act:
        return Act(ref.act(values(x), activation_name))

    def topk_softmax(self, logits, k: int):
        return ref.topk_softmax(np.asarray(logits), k)

    def matmul_id(self, experts: np.ndarray, x, ids) -> np.ndarray:
        return ref.matmul_id(experts, _as_kernels_see(experts, values(x)), np.asarray(ids))
