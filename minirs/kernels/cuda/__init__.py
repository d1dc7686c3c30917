"""The CUDA backend: Numba CUDA kernels over CuPy memory, one file per op family (as llama.cpp's ggml-cuda/).

Each family file owns its kernels, their signatures (SIGS, compiled by K = launch.kernels(SIGS) and checked to
PTX by tests/test_cuda_compile.py) and the launchers that size the grid and launch them on a stream.

| file          | what it holds                                                                                  |
| ------------- | ---------------------------------------------------------------------------------------------- |
| backend.py    | CudaBackend: kernels/backend.py's interface on the GPU, through the launchers                   |
| graph.py      | StepGraph: a step, handed in as a function, captured in a CUDA graph and replayed               |
| launch.py     | FastKernel / LazyKernel / kernels(SIGS): launching compiled kernels cheaply, PDL                 |
| intrinsics.py | inline PTX: dp4a, mma.sync, cp.async, prefetch, griddepcontrol (wait_prior_kernel)               |
| weights.py    | GMatrix, GExperts: GGML blocks re-laid out into the GPU weight families                          |
| quantize.py   | the GEMVs' input forms: int8 per 32-block (quantize_x), float16 (half_x); gemv_input; GEMV_MAX_N |
| norm.py       | rmsnorm, layernorm and their `_q` variants that also write the next GEMV's input form            |
| rope.py       | RoPE, attn_inputs (biases, q/k norm, RoPE, KV write) and attn_put, the q/k/v GEMV epilogue       |
| activation.py | gated activation (SiLU / GELU), plain activation, bias add                                       |
| attention.py  | KV cache writes, split (flash-decoding) attention, the cuBLAS prefill attention                  |
| matmul.py     | gmatmul, gmatmul_qkv_rope: which GEMV or GEMM runs for a shape; the weight-family table          |
| mmvq.py       | the quantized GEMVs on dp4a (and their expert form)                                             |
| mma.py        | the quantized GEMVs on the float16 tensor cores, for batches                                     |
| mmv_float.py  | the GEMVs of float16 / float32 weights                                                           |
| dequant.py    | weights to float16 (the prefill GEMM's input) and embedding rows to float32                      |
| blas.py       | gemm_nt: cublasGemmEx through ctypes (the prefill GEMM)                                          |
| moe.py        | MoE routing (topk_softmax), the expert matmul gmatmul_id, moe_sum                                |
| argmax.py     | greedy sampling: argmax over the vocabulary                                                      |
| sample.py     | temperature / top-k / top-p / min-p sampling on the GPU                                          |
| prefetch.py   | weight prefetch into L2 on a side stream                                                         |
| numerics.py   | GpuNumericsCpu: the CPU backend with the GPU's roundings (a test oracle; no CUDA)                 |

Importing this package imports nothing; CuPy is imported by backend.py and graph.py, and inside the launchers.
"""
