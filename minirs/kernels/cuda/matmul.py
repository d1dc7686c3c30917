"""CUDA quantized matmul: y = x @ W.T on the quantized blocks, the choice of kernel for each shape.

    w = GMatrix.from_tensor(tensor)       # once per weight (weights.py): upload, re-lay the blocks out
    y = gmatmul(w, x, stream)             # x (n, n_in) float32 CuPy -> y (n, n_out) float32 CuPy
    q = gmatmul_qkv_rope(w, x, stream, xform, pos, slots, inv_freq, kc, vc)   # q/k/v projection + RoPE + KV write

Weights keep the families of the CPU matmul (cpu_matmul.py), with f16 group scales so that a Q4_0 matrix takes
exactly its file size on the GPU:

| family | weight element                        | arrays on the GPU (per row)                                  | types               |
| ------ | ------------------------------------- | ------------------------------------------------------------ | ------------------- |
| q4     | d[g] * (q - off) (+ m[g])             | q: n_in/8 uint32, per 32-block 4 words: byte j = el. j, j+16 | Q4_0, Q4_1, Q4_K    |
| q5     | as q4, q += 16 * hbit                 | q as q4; h: one uint32 per 32-block, bit j = element j       | Q5_0, Q5_1, Q5_K    |
| q8     | d[g] * q (+ m[g]), g = 32 or 16       | q: int8 per element (read as int32 words)                    | Q8_0, Q6_K, Q3_K, Q2_K |
| float  | w                                     | float16 (F16) or float32 (F32, BF16 widened)                 | F16, BF16, F32      |

Which kernel runs:
- n <= GEMV_MAX_N, quantized W: a GEMV reading the quantized blocks once. On dp4a with x in int8 (mmvq), or, from
  mma_min_n tokens on (CudaBackend: batches of 2 or more unless the engine asks for row-invariant results), on
  the float16 tensor cores (mma). The op before the GEMV may have written x's form already (xform; gemv_input).
- n <= GEMV_MAX_N, float W: mmv_float.
- larger n (prefill): W dequantized to float16 (dequant.dequant_f16), multiplied with cuBLAS (blas.gemm_nt:
  float16 in, float32 accumulation and out, adding into out in the same call).
Decode has its own kernels because at a few tokens a GEMV that reads the quantized blocks once beats dequantizing
the whole matrix first. The MoE experts' matmul is moe.gmatmul_id.
"""

from minirs.kernels.cuda.blas import gemm_nt
from minirs.kernels.cuda.dequant import dequant_f16
from minirs.kernels.cuda.mma import gemv_mma
from minirs.kernels.cuda.mmv_float import launch_gemv_float
from minirs.kernels.cuda.mmvq import launch_gemv
from minirs.kernels.cuda.quantize import GEMV_MAX_N, quantize
from minirs.kernels.cuda.weights import GMatrix

_NO_EP = []  # the epilogue arguments of a plain GEMV: (1,)-sized dummies, made once


def _no_ep():
    import cupy as cp
    if not _NO_EP:
        i, f, h = cp.zeros(1, cp.int64), cp.zeros(1, cp.float64), cp.zeros((1, 1, 1, 1), cp.float16)
        _NO_EP.append((i, i, f, h, h, 0))
    return _NO_EP[0]


def gmatmul(w: GMatrix, x, stream, xform=None, out=None, mma_min_n: int = 0):
    """y = x @ W.T   x: (n, n_in) float32 -> (n, n_out) float32; with out, out += x @ W.T instead (returns out).

    xform: x in the form its GEMV reads, when the op that produced x already wrote it (gemv_input): the int8 form
    (xq, xd, xs) of quantize, or the tensor cores' float16 array. mma_min_n > 0: quantized GEMVs of at least that
    many tokens run on the tensor cores (mma.py), the others on dp4a."""
    import cupy as cp
    n = x.shape[0]
    add = out is not None
    y = out if add else cp.empty((n, w.n_out), cp.float32)
    if n > GEMV_MAX_N:
        gemm_nt(x.astype(cp.float16), dequant_f16(w, stream), y, add)
    elif w.family == "float":
        launch_gemv_float(w, x, y, add, stream)
    else:
        _gemv(w, x, xform, y, stream, add, _no_ep(), mma_min_n)
    return y


def on_tensor_cores(n: int, n_in: int, mma_min_n: int) -> bool:
    """Whether a quantized GEMV of n tokens over rows of n_in runs on the tensor cores (mma.py, x in float16):
    from mma_min_n tokens on (0: never), for rows of an even number of 32-blocks (its 4- and 8-byte copies of
    scales). The op before the GEMV asks the same, to write the form the GEMV reads."""
    return 0 < mma_min_n <= n and (n_in // 32) % 2 == 0


def _gemv(w: GMatrix, x, xform, y, stream, add: bool, ep, mma_min_n: int = 0) -> None:
    """The quantized GEMV kernel for w's flavour and shape: y (n, rows) (+)= x @ W.T, or with ep the fused
    attention epilogue (gmatmul_qkv_rope). On the tensor cores (mma.gemv_mma: x in float16) where
    on_tensor_cores says so, else on dp4a with x's int8 form. xform: either form if written already (gmatmul); the
    one needed is made here otherwise."""
    n = y.shape[0]
    quant = xform if isinstance(xform, tuple) else None
    if on_tensor_cores(n, w.n_in, mma_min_n):
        gemv_mma(w, x, None if quant is not None else xform, y, stream, add, ep)
        return
    xq, xd, xs = quant if quant is not None else quantize(x, stream)
    launch_gemv(w, xq, xd, xs, y, add, ep, stream)


def gmatmul_qkv_rope(w: GMatrix, x, stream, xform, pos, slots, inv_freq, kc, vc, mma_min_n: int = 0):
    """The fused q/k/v projection for decode (n <= GEMV_MAX_N, w quantized, its rows q (h * d) then k and v
    (hkv * d each)): returns q (n, h * d) rotated, and writes k (rotated) and v into the caches at row pos % L of
    each token's slot. RoPE on adjacent pairs (2i, 2i + 1) only, no biases, no q/k norms: the llama family
    (rope.attn_inputs covers the rest). One kernel instead of the GEMV and attn_inputs. xform: as gmatmul."""
    import cupy as cp
    n = x.shape[0]
    nk = kc.shape[1] * kc.shape[3]
    qo = cp.empty((n, w.n_out - 2 * nk), cp.float32)
    _gemv(w, x, xform, qo, stream, False, (pos, slots, inv_freq, kc, vc, nk), mma_min_n)
    return qo
