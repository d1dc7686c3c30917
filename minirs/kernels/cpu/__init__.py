"""The CPU backend and its Numba kernels, one file per op family; kernels/ref.py holds their NumPy twins.

| file | holds |
| --- | --- |
| backend.py | CpuBackend: kernels/backend.py's interface over the files below |
| weights.py | QMatrix: GGML blocks re-laid out at load time into the matmul's families (q4, q6, q8) |
| qdot.py | the quantized matmul's core: x as 16-bit integers per 32-block, byte dot products in LLVM IR |
| matmul.py | qmatmul: the batch-invariant quantized and float matmul kernels |
| dequant.py | embedding_rows: whole rows decoded bit-exactly (token embeddings) |
| norm.py, rope.py, activation.py, attention.py, moe.py | the other ops of the transformer |
| attn_inputs.py | what follows the q, k, v projection (biases, q/k norms, RoPE, cache writes) in one call |
| bits.py, lora.py | bit-level intrinsics; the LoRA delta |
| cache.py | Numba's on-disk cache of these kernels dropped when any of these files changed |
"""

from pathlib import Path

from minirs.kernels.cpu.cache import drop_stale

drop_stale(Path(__file__).parent)  # before any kernel is loaded from the cache

from minirs.kernels.cpu.backend import CpuBackend  # noqa: E402

__all__ = ["CpuBackend"]
