"""The CPU backend and its Numba kernels, one file per op family; kernels/ref.py holds their NumPy twins.

| file | holds |
| --- | --- |
| backend.py | CpuBackend: kernels/backend.py's interface over the files below |
| weights.py | QMatrix: GGML blocks re-laid out at load time into the matmul's two families |
| matmul.py | qmatmul: the batch-invariant quantized and float matmul kernels |
| dequant.py | embedding_rows: whole rows decoded bit-exactly (token embeddings) |
| norm.py, rope.py, activation.py, attention.py, moe.py | the other ops of the transformer |
"""

from minirs.kernels.cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
