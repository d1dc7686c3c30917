"""The CUDA backend: CuPy memory, Numba CUDA kernels, and the decode step captured in a CUDA graph.

The model code (models/llama.py) calls the same methods as on the CPU (kernels/cpu.py). Weights go to the GPU
still quantized (weights.GMatrix); activations are float32, the KV cache float16. Every kernel runs on the
backend's one non-default stream: Numba kernels through `numba.cuda.external_stream`, CuPy ops with that
stream made current, so a whole forward can be captured.

Decode: `decode_step(model, cache, tokens, slots, pos)` runs a forward whose token ids, slots and positions
live in device buffers; the first call for a batch size runs it eagerly and captures it into a CUDA graph (the
scheduler pads its decode batches to a few sizes, scheduler.GRAPH_BUCKETS, so a handful of graphs serve all), later
calls copy the new ids/slots/positions in and replay it (~1.4 us per kernel instead of ~30-50 us per Python
launch, GPU.md). Intermediates of a captured step come from the graph's own memory pool, so no other code can
be handed that memory while the graph still writes it. Greedy decoding also takes the argmax on the GPU, and
sampled decoding draws on the GPU (sample.py), so only token ids come back.

This package (minirs/kernels/cuda/) is the only place that imports CuPy and numba.cuda.
"""

import os

os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")  # no stream syncs inside graph capture

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from minirs.errors import ModelError  # noqa: E402
from minirs.formats import Tensor  # noqa: E402
from minirs.kernels.cuda import sample as gpu_sample  # noqa: E402
from minirs.kernels.cuda.activation import launch_act, launch_add_bias, launch_gated_act  # noqa: E402
from minirs.kernels.cuda.argmax import argmax  # noqa: E402
from minirs.kernels.cuda.attention import (  # noqa: E402
    ATT_CHUNK,
    ATT_DECODE_WARPS,
    ATT_DMAX,
    attention_gemm,
    launch_attention,
    launch_kv_write,
)
from minirs.kernels.cuda.dequant import dequant  # noqa: E402
from minirs.kernels.cuda.graph import DecodeGraph, _undecided_rows  # noqa: E402
from minirs.kernels.cuda.matmul import gmatmul, gmatmul_qkv_rope, on_tensor_cores  # noqa: E402
from minirs.kernels.cuda.moe import gmatmul_id, launch_moe_sum, launch_topk_softmax  # noqa: E402
from minirs.kernels.cuda.norm import launch_layernorm, launch_rmsnorm  # noqa: E402
from minirs.kernels.cuda.prefetch import launch_prefetch, prefetch_spans  # noqa: E402
from minirs.kernels.cuda.quantize import GEMV_MAX_N  # noqa: E402
from minirs.kernels.cuda.rope import launch_attn_inputs, launch_rope  # noqa: E402
from minirs.kernels.cuda.weights import GExperts, GMatrix  # noqa: E402

for _cfg in ("numba.cuda.core.config", "numba.core.config"):  # the env var is read when the config loads,
    try:  # which may have happened before this module
        __import__(_cfg, fromlist=["x"]).CUDA_ARRAY_INTERFACE_SYNC = 0
    except Exception:  # noqa: BLE001
        pass

MMA_MIN_N = 2  # quantized GEMVs of this many tokens or more run on the tensor cores (unless batch_invariant)


class CudaBackend:
    name = "cuda"
    kv_dtype = np.float16

    def __init__(self, device: int = 0):
        cp.cuda.Device(device).use()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.stream.use()  # CuPy ops of this thread go to our stream
        self.nbs = cuda.external_stream(self.stream.ptr)
        self._idx = {}  # id(host index array) -> (host array, device copy), so one forward uploads each once
        self._graphs = {}  # (id(model), id(cache), n, greedy, sampled) -> DecodeGraph
        self._xquant = None  # (array, ptr, size, form): the GEMV form of the last fused-op output (_new_form)
        self._dummy = cp.zeros(1, cp.float32)  # stands for absent optional vectors (biases, norms) in kernels
        self._counts = {}  # (n, h) -> split attention's block counters (_count)
        self.att_chunk = ATT_CHUNK  # fewest keys per block of decode attention (bench/gpu_check.py sweeps it)
        self.att_warps = ATT_DECODE_WARPS  # warps per block of decode attention (<= ATT_WARPS)
        self.mma_min_n = MMA_MIN_N  # GEMVs of at least this many tokens run on the tensor cores; 0: none (exact)
        self._no_quant = self._new_quant(1, 32)  # stands for the int8 output of kernels told not to write one
        self._no_half = cp.empty((1, 4), cp.float16)  # and for their float16 one
        l2 = cp.cuda.Device(device).attributes.get("L2CacheSize", 0)
        self.prefetch_bytes = int(os.environ.get("MINIRS_PREFETCH_BYTES", l2 // 2))  # per prefetch call (0: off)
        self._spans = {}  # tuple of matrix ids -> (matrices, spans array): prefetch's tables
        self.side = cp.cuda.Stream(non_blocking=True)  # prefetch runs here, beside the kernels of self.stream
        self._side_nbs = cuda.external_stream(self.side.ptr)
        self._side_busy = None  # the event of the side stream's last work, until the main stream joins it

    def use_in_thread(self) -> None:
        """Make this backend's stream CuPy's current one in the calling thread (CuPy's current stream is per
        thread; a thread that did not call this would run CuPy ops on the default stream, unordered with ours)."""
        self.stream.use()

    # --- the GEMVs' forms of their inputs (int8 or float16), produced by the op before them ---
    def _stash(self, x, form) -> None:
        """Remember that x (by its memory) has the GEMV form `form` (_new_form), for the matmuls that read x next."""
        self._xquant = (x, x.data.ptr, x.size, form)

    def _quant_of(self, x):
        s = self._xquant
        return s[3] if s is not None and s[1] == x.data.ptr and s[2] == x.size else None

    def _new_quant(self, n: int, k: int):
        return cp.empty((n, k), cp.int8), cp.empty((n, k // 32), cp.float32), cp.empty((n, k // 16), cp.int32)

    def _new_form(self, n: int, k: int):
        """Where a fused op writes its output's GEMV form (quantize.gemv_input): (the kernel's arguments
        xq, xd, xs, xh, half; what to stash). float16 when the next GEMVs run on the tensor cores (mma.py), else
        the int8 form."""
        if on_tensor_cores(n, k, self.mma_min_n):
            xh = cp.empty((n, k), cp.float16)
            return (*self._no_quant, xh, True), xh
        xq = self._new_quant(n, k)
        return (*xq, self._no_half, False), xq

    def batch_invariant(self, exact: bool) -> None:
        """exact: every quantized GEMV on dp4a, whose rows are bit-identical whatever the batch (the scheduler's
        row_invariant mode); else batches of MMA_MIN_N or more tokens on the tensor cores (mma.py: 2.3-4.2x faster
        at 16 tokens, and a row's last bits differ from the same row computed alone on dp4a), and a batch's decode
        attention splits each context over fewer blocks (about ATT_GRID in all)."""
        self.mma_min_n = 0 if exact else MMA_MIN_N

    def _fuse_quant(self, n: int, k: int) -> bool:
        return n <= GEMV_MAX_N and k % 32 == 0

    # --- weights ---
    def matrix(self, t: Tensor) -> GMatrix:
        """A weight matrix, kept quantized on the GPU."""
        return GMatrix.from_tensor(t)

    def vector(self, t: Tensor):
        from minirs.formats.quants import dequantize
        return cp.asarray(np.ascontiguousarray(dequantize(t), dtype=np.float32))

    def array(self, a: np.ndarray):
        return cp.ascontiguousarray(cp.asarray(a))

    def zeros(self, shape, dtype=np.float32):
        return cp.zeros(shape, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return cp.asnumpy(a, stream=self.stream) if isinstance(a, cp.ndarray) else np.asarray(a)

    def _ix(self, a):
        """Index arrays (ids, slots, positions) as int64 device arrays; device arrays pass through."""
        if isinstance(a, cp.ndarray):
            return a if a.dtype == cp.int64 else a.astype(cp.int64)
        hit = self._idx.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
        dev = cp.asarray(np.ascontiguousarray(a, dtype=np.int64).reshape(-1))
        if len(self._idx) > 8:
            self._idx.clear()
        self._idx[id(a)] = (a, dev)
        return dev

    # --- ops ---
    def stack_matrices(self, parts: list) -> GMatrix | None:
        """One matrix of the parts' rows (q, k, v -> qkv; gate, up -> gate_up): one GEMV instead of several. None
        when their layouts differ."""
        return GMatrix.stack(parts)

    def matmul(self, w: GMatrix, x):
        """y = x @ W.T   x: (n, n_in) -> (n, n_out) float32"""
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        q = self._quant_of(x) if w.family != "float" else None
        return gmatmul(w, x, self.nbs, q, mma_min_n=self.mma_min_n)

    def matmul_add_(self, w: GMatrix, x, out) -> None:
        """out += x @ W.T (an output projection into the residual stream: the GEMVs add as they write)."""
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        q = self._quant_of(x) if w.family != "float" else None
        self._xquant = None
        gmatmul(w, x, self.nbs, q, out=out, mma_min_n=self.mma_min_n)

    def embed(self, w: GMatrix, ids, scale: float = 1.0):
        """x[i] = W[ids[i]] * scale"""
        return dequant(w, self._ix(ids), float(scale), self.nbs)

    def add_(self, x, y) -> None:
        self._xquant = None
        x += y

    def take_rows(self, x, rows):
        return cp.ascontiguousarray(x[self._ix(np.asarray(rows))])

    def softcap_(self, x, cap: float) -> None:
        self._xquant = None
        cp.tanh(x / np.float32(cap), out=x)
        x *= np.float32(cap)

    def rmsnorm(self, x, w, eps: float):
        shape = x.shape
        x2 = cp.ascontiguousarray(x).reshape(-1, shape[-1])
        out = cp.empty_like(x2)
        n, d = x2.shape
        if x.ndim == 2 and self._fuse_quant(n, d):  # its output feeds GEMVs: write their form too
            args, form = self._new_form(n, d)
            launch_rmsnorm(x2, w, eps, out, args, self.nbs)
            self._stash(out, form)
        else:
            launch_rmsnorm(x2, w, eps, out, None, self.nbs)
        return out.reshape(shape)

    def rope_(self, x, pos, inv_freq, neox: bool) -> None:
        self._xquant = None
        launch_rope(x, self._ix(pos), inv_freq, neox, self.nbs)

    def gated_act(self, gate, up, activation: str):
        """act(gate) * up; gate and up may be column views of one fused gate_up output."""
        n, f = gate.shape
        out = cp.empty((n, f), cp.float32)
        if self._fuse_quant(n, f):  # its output feeds the down-projection GEMV
            args, form = self._new_form(n, f)
            launch_gated_act(gate, up, activation == "gelu", out, args, self.nbs)
            self._stash(out, form)
        else:
            launch_gated_act(gate, up, activation == "gelu", out, None, self.nbs)
        return out

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        k = cp.ascontiguousarray(k)
        v = cp.ascontiguousarray(v)
        launch_kv_write(kc, vc, self._ix(slots), self._ix(pos), k, v, self.nbs)

    def attn_inputs(self, q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots):
        """Biases, per-head q/k RMSNorm (norms = (q_norm, k_norm) or None), RoPE, and the k/v cache writes, in one
        kernel (rope.attn_inputs). q, k, v: (n, h*d), (n, hkv*d) x2, possibly views of one qkv output.
        Returns q as (n, h, d)."""
        self._xquant = None
        n, d = q.shape[0], kc.shape[3]
        h = q.shape[1] // d
        if d > ATT_DMAX:
            raise ModelError(f"CUDA attention handles head_dim up to {ATT_DMAX}, got {d}")
        qo = cp.empty((n, h, d), cp.float32)
        launch_attn_inputs(q, k, v, biases, norms, eps, self._ix(pos), inv_freq, neox, kc, vc, self._ix(slots), qo,
                           self._dummy, self.nbs)
        return qo

    def qkv_attn_inputs(self, w: GMatrix, h, q_dim: int, kv_dim: int, biases, norms, eps, pos, inv_freq, neox,
                        kc, vc, slots):
        """The stacked q/k/v projection of h (stack_matrices) followed by attn_inputs; returns q as (n, heads, d).
        Decode batches of the llama family (RoPE on adjacent pairs, no biases, no q/k norms) run it as one GEMV
        whose epilogue rotates q and k and writes k and v to the caches (matmul.gmatmul_qkv_rope)."""
        n, d = h.shape[0], kc.shape[3]
        if n <= GEMV_MAX_N and w.family != "float" and not neox and biases[0] is None and norms is None:
            x = cp.ascontiguousarray(h, dtype=cp.float32)
            qo = gmatmul_qkv_rope(w, x, self.nbs, self._quant_of(x), self._ix(pos), self._ix(slots), inv_freq, kc, vc,
                                  self.mma_min_n)
            self._xquant = None
            return qo.reshape(n, q_dim // d, d)
        qkv = self.matmul(w, h)
        q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        return self.attn_inputs(q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots)

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap):
        """Causal GQA of q (n, h, d) over the caches (attention.py): prefill with host slots and positions through
        cuBLAS (attention_gemm) unless a slot's keys wrapped around its ring buffer, else the attention kernel,
        whose output also comes in the output projection's GEMV form for decode."""
        n, h, d = q.shape
        if d > ATT_DMAX or d % 2:
            raise ModelError(f"CUDA attention handles even head_dim up to {ATT_DMAX}, got {d}")
        q = cp.ascontiguousarray(q)
        if n > GEMV_MAX_N and not isinstance(slots, cp.ndarray) and not isinstance(pos, cp.ndarray):
            out = attention_gemm(q, kc, vc, slots, pos, self._ix(pos), window, scale, softcap, self.nbs)
            if out is not None:
                return out
        sl, ps = self._ix(slots), self._ix(pos)
        out = cp.empty((n, h, d), cp.float32)
        # the output's GEMV form for Wo, per head (tiny test models have head_dim 8 or 16); not for prefill
        quant = d % 32 == 0 and n <= GEMV_MAX_N
        qargs, form = self._new_form(n, h * d) if quant else ((*self._no_quant, self._no_half, False), None)
        launch_attention(q, kc, vc, sl, ps, window, scale, softcap, out, quant, qargs, self.nbs, self.att_chunk,
                         self.att_warps, bool(self.mma_min_n and n > 1), self._count)
        if quant:
            self._stash(out, form)
        return out

    def _count(self, n: int, h: int):
        """The (n, h) int32 counters of split attention's finished blocks: zero between launches (the last block
        of each (token, head) resets its own), so one buffer per shape serves every layer and every replay."""
        c = self._counts.get((n, h))
        if c is None:  # from the default pool, not a decode graph's own (the buffer outlives any one graph)
            with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):
                c = self._counts[n, h] = cp.zeros((n, h), cp.int32)
        return c

    # --- ops of the families that differ from llama (phi2: LayerNorm, biases, plain MLP; mixtral: MoE) ---
    def layernorm(self, x, w, b, eps: float):
        shape = x.shape
        x2 = cp.ascontiguousarray(x).reshape(-1, shape[-1])
        out = cp.empty_like(x2)
        n, d = x2.shape
        if x.ndim == 2 and self._fuse_quant(n, d):
            args, form = self._new_form(n, d)
            launch_layernorm(x2, w, b, eps, out, args, self.nbs)
            self._stash(out, form)
        else:
            launch_layernorm(x2, w, b, eps, out, None, self.nbs)
        return out.reshape(shape)

    def add_bias_(self, x, b) -> None:
        """x[i] += b for every row i (linear-layer biases), in place."""
        self._xquant = None
        x2 = x.reshape(-1, x.shape[-1])  # a view: x is contiguous (a matmul output)
        launch_add_bias(x2, b, self.nbs)

    def act(self, x, activation: str):
        x = cp.ascontiguousarray(x)
        out = cp.empty_like(x)
        launch_act(x, activation == "gelu", out, self.nbs)
        return out

    def expert_matrix(self, t: Tensor) -> GExperts:
        """The stacked expert weights (n_exp, n_out, n_in) of one MoE layer, kept quantized on the GPU."""
        return GExperts.from_tensor(t)

    def topk_softmax(self, logits, k: int):
        """Router: (n, E) logits -> ids (n, k) int64 of the top-k experts and their softmax weights (n, k)."""
        logits = cp.ascontiguousarray(logits, dtype=cp.float32)
        return launch_topk_softmax(logits, k, self.nbs)

    def matmul_id(self, experts: GExperts, x, ids):
        """y[t, j] = x[t] (or x[t, j]) @ W[ids[t, j]].T -> (n, k, n_out)"""
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        q = self._quant_of(x) if experts.family != "float" else None
        q = (q[0].view(cp.int32), q[1], q[2]) if isinstance(q, tuple) else None  # the MoE GEMVs read int8
        ids = cp.ascontiguousarray(self._ix(ids).reshape(x.shape[0], -1) if not isinstance(ids, cp.ndarray)
                                   else ids.astype(cp.int64, copy=False))
        return gmatmul_id(experts, x, ids, self.nbs, q)

    def moe_sum(self, y, weights):
        """out[t] = sum_j weights[t, j] * y[t, j]"""
        y = cp.ascontiguousarray(y)
        return launch_moe_sum(y, cp.ascontiguousarray(weights), self.nbs)

    def argmax(self, logits):
        """Greedy token ids (n,) int64 on the GPU."""
        return argmax(logits, self.nbs)

    # --- L2 prefetch ---
    def prefetch(self, mats: list) -> None:
        """Start fetching the weights of mats into the L2 cache, for the kernels that come later, if they fit in
        prefetch_bytes (half the L2; larger models read their weights at full bandwidth anyway: 7B Q4_0 gained
        nothing from prefetching part of them; SmolLM2's step went 1.082 -> 1.063 ms). It runs on a side stream,
        beside the main stream's kernels (the model calls it before attention, which leaves device memory idle),
        and nothing waits for it until the next prefetch or the end of a captured step."""
        key = tuple(id(m) for m in mats)
        hit = self._spans.get(key)
        if hit is None:
            hit = self._spans[key] = (mats, prefetch_spans(mats, self.prefetch_bytes))
        spans = hit[1]
        if spans is None:
            return
        self.join_side()
        self.side.wait_event(self.stream.record())  # fork: after what the main stream has queued so far
        launch_prefetch(spans, self._side_nbs)
        self._side_busy = self.side.record()

    def join_side(self) -> None:
        """Make the main stream wait for the side stream's prefetch (a captured graph must join every stream it
        forked; a prefetch is long done by the time of the next one)."""
        if self._side_busy is not None:
            self.stream.wait_event(self._side_busy)
            self._side_busy = None

    # --- the captured decode step ---
    def decode_step(self, model, cache, tokens, slots, pos, greedy: bool = False, sample=None) -> np.ndarray:
        """One decode forward of len(tokens) rows from a CUDA graph: host logits (n, vocab), or ids (n,) if greedy,
        or ids (n,) drawn on the GPU with sample = (temperature, top_k, top_p, min_p, coin), one value of each per
        row (sample_rows; rows the GPU leaves undecided are drawn on the host from their logits)."""
        prm = None if sample is None else gpu_sample.pack(*sample)
        greedy = greedy and prm is None
        key = (id(model), id(cache), len(tokens), greedy, prm is not None, self.mma_min_n)
        g = self._graphs.get(key)
        if g is None or g.model is not model or g.cache is not cache:
            g = self._graphs[key] = DecodeGraph(self, model, cache, len(tokens), greedy, prm is not None)
            out = g.first(tokens, slots, pos, prm)
        else:
            out = g.replay(tokens, slots, pos, prm)
        return out if prm is None else gpu_sample.finish_on_host(*out, prm)

    def sample_rows(self, logits, temperature, top_k, top_p, min_p, coin) -> np.ndarray:
        """Host token ids (n,), row i drawn from logits[i] (n, vocab) as minirs.sampling.sample_plain draws it, with
        temperature[i] > 0, top_k[i], top_p[i], min_p[i] and coin[i]: on the GPU (sample.py), the rows it cannot
        decide on the host."""
        prm = gpu_sample.pack(temperature, top_k, top_p, min_p, coin)
        logits = cp.ascontiguousarray(logits, dtype=cp.float32)
        ids = cp.asnumpy(self.sample_ids(logits, cp.asarray(prm)), stream=self.stream)
        return gpu_sample.finish_on_host(ids, _undecided_rows(logits, ids, self.stream), prm)

    def sample_ids(self, logits, prm):
        """Device ids (n,) int64 drawn from logits (n, vocab) float32 with device parameters prm (n, 5)
        (sample.pack), -1 in the rows the host must draw."""
        return gpu_sample.sample_ids(logits, prm, self.nbs)
