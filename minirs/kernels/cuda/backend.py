"""The CUDA backend (kernels/backend.py's interface): CuPy memory, Numba CUDA kernels, steps captured in graphs.

Weights go to the GPU still quantized (weights.GMatrix); activations are float32, the KV cache float16. Every
kernel runs on the backend's one non-default stream: Numba kernels through `numba.cuda.external_stream`, CuPy ops
with that stream made current, so a whole forward can be captured (capture(): graph.py's StepGraph, given the step
as a function by the engine). The ops that feed a GEMV (norms, the gated activation, attention) also write the
GEMV's input form in the same kernel, int8 per 32-block for dp4a or float16 for the tensor cores, and return it
with their output as an Act, which matmul reads. Greedy ids come from the GPU's argmax and sampled ones from its
sampler (sample.py), so a decode step sends only ids back.

This package (minirs/kernels/cuda/) is the only place that imports CuPy and numba.cuda.
"""

import os

os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")  # no stream syncs inside graph capture

import cupy as cp  # noqa: E402
import cupyx  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from minirs.errors import ModelError  # noqa: E402
from minirs.formats import Tensor  # noqa: E402
from minirs.kernels.backend import Act, LoraStack, Stack, values  # noqa: E402
from minirs.kernels.cuda import mask as gpu_mask  # noqa: E402
from minirs.kernels.cuda import sample as gpu_sample  # noqa: E402
from minirs.kernels.cuda.activation import launch_act, launch_add_bias, launch_gated_act  # noqa: E402
from minirs.kernels.cuda.argmax import argmax  # noqa: E402
from minirs.kernels.cuda.attention import (  # noqa: E402
    ATT_CHUNK,
    ATT_DECODE_WARPS,
    ATT_DMAX,
    attention_gemm,
    launch_attention,
)
from minirs.kernels.cuda.dequant import dequant  # noqa: E402
from minirs.kernels.cuda.graph import StepGraph, copy_async  # noqa: E402
from minirs.kernels.cuda.kv_move import launch_kv_move  # noqa: E402
from minirs.kernels.cuda.lora import launch_lora_add  # noqa: E402
from minirs.kernels.cuda.matmul import gmatmul, gmatmul_qkv_rope, on_tensor_cores  # noqa: E402
from minirs.kernels.cuda.moe import gmatmul_id, launch_moe_sum, launch_topk_softmax  # noqa: E402
from minirs.kernels.cuda.norm import launch_layernorm, launch_rmsnorm  # noqa: E402
from minirs.kernels.cuda.prefetch import launch_prefetch, prefetch_spans  # noqa: E402
from minirs.kernels.cuda.quantize import GEMV_MAX_N  # noqa: E402
from minirs.kernels.cuda.rope import launch_attn_inputs  # noqa: E402
from minirs.kernels.cuda.weights import GExperts, GMatrix  # noqa: E402
from minirs.sampling import rows as sampling_rows  # noqa: E402

for _cfg in ("numba.cuda.core.config", "numba.core.config"):  # the env var is read when the config loads,
    try:  # which may have happened before this module
        __import__(_cfg, fromlist=["x"]).CUDA_ARRAY_INTERFACE_SYNC = 0
    except Exception:  # noqa: BLE001
        pass

MMA_MIN_N = 2  # quantized GEMVs of this many tokens or more run on the tensor cores (unless batch_invariant)


class KnownIndex(np.ndarray):
    """A host int64 index array carrying its device copy (`dev`, made once, from the default pool: it outlives
    any graph that reads it). Host code sees the values; the backend's kernels read `dev` (CudaBackend._ix)."""

    def __new__(cls, values):
        obj = np.ascontiguousarray(values, dtype=np.int64).reshape(-1).view(cls)
        with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):
            obj.dev = cp.asarray(obj.view(np.ndarray))
        return obj

    def __array_finalize__(self, obj):
        self.dev = None  # a view or a slice of it is not what the device copy holds


class CudaBackend:
    name = "cuda"
    kv_dtype = np.float16
    graphs = True
    device_sampling = True
    numba_threads = False
    # captured prefill (engine/runner.py), opt-in with MINIRS_PREFILL_GRAPHS=1 until it has run on a GPU: written
    # and tested on the CPU's stand-in in a session that got no GPU (BENCHMARKS.md)
    prefill_graphs = os.environ.get("MINIRS_PREFILL_GRAPHS", "0") == "1"

    def __init__(self, device: int = 0):
        cp.cuda.Device(device).use()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.stream.use()  # CuPy ops of this thread go to our stream
        self.nbs = cuda.external_stream(self.stream.ptr)
        self._idx = {}  # id(host index array) -> (host array, device copy), so one forward uploads each once
        self._pinned = {}  # (shape, dtype) -> page-locked host buffer of to_numpy
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

    def synchronize(self) -> None:
        self.stream.synchronize()

    @staticmethod
    def release_memory() -> None:
        """CuPy keeps freed blocks in its pools for reuse: hand those of the device and the page-locked host
        buffers back (graphs' own pools go with their graphs)."""
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()

    # --- the GEMVs' forms of their inputs (int8 or float16), written by the op before them ---
    def _new_quant(self, n: int, k: int):
        return cp.empty((n, k), cp.int8), cp.empty((n, k // 32), cp.float32), cp.empty((n, k // 16), cp.int32)

    def _new_form(self, n: int, k: int):
        """Where a fused op writes its output's GEMV form (quantize.gemv_input): (the kernel's arguments
        xq, xd, xs, xh, half; the Act keywords). float16 when the next GEMVs run on the tensor cores (mma.py), else
        the int8 form."""
        if on_tensor_cores(n, k, self.mma_min_n):
            xh = cp.empty((n, k), cp.float16)
            return (*self._no_quant, xh, True), {"h": xh}
        xq = self._new_quant(n, k)
        return (*xq, self._no_half, False), {"q": xq}

    @staticmethod
    def _form_of(x, w):
        """The GEMV form an Act carries for weight w (the int8 tuple or the float16 array), None for float w."""
        if not isinstance(x, Act) or w.family == "float":
            return None
        return x.q if x.q is not None else x.h

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
        """A device array on the host through a page-locked buffer: one async copy, then a wait for the stream."""
        if not isinstance(a, cp.ndarray):
            return np.asarray(a)
        a = cp.ascontiguousarray(a)
        key = (a.shape, a.dtype.str)
        buf = self._pinned.get(key)
        if buf is None:
            if len(self._pinned) > 16:
                self._pinned.clear()
            buf = self._pinned[key] = cupyx.empty_pinned(a.shape, a.dtype)
        copy_async(buf, a, self.stream)
        self.stream.synchronize()
        return buf.copy()

    def _ix(self, a):
        """Index arrays (ids, slots, positions) as int64 device arrays; device arrays pass through, and so does the
        device copy of a KnownIndex."""
        if isinstance(a, cp.ndarray):
            return a if a.dtype == cp.int64 else a.astype(cp.int64)
        if isinstance(a, KnownIndex) and a.dev is not None:
            return a.dev
        hit = self._idx.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
        dev = cp.asarray(np.ascontiguousarray(a, dtype=np.int64).reshape(-1))
        if len(self._idx) > 8:
            self._idx.clear()
        self._idx[id(a)] = (a, dev)
        return dev

    # --- ops ---
    def stack_matrices(self, parts: list):
        """One matrix of the parts' rows (q, k, v -> qkv; gate, up -> gate_up): one GEMV instead of several; a Stack
        of the parts when their layouts differ."""
        return GMatrix.stack(parts) or Stack(tuple(parts))

    def lora_stack(self, a, bt, key, scale, lo, hi, base=None) -> LoraStack:
        f32, i64 = (lambda v: cp.asarray(np.ascontiguousarray(v, np.float32))), \
            (lambda v: cp.asarray(np.ascontiguousarray(v, np.int64)))
        return LoraStack(f32(a), f32(bt), i64(key), f32(scale), i64(lo), i64(hi))

    def lora_add_(self, y, x, lora: LoraStack, coef) -> None:
        """y += the LoRA delta of x: two launches for every adapter of the batch (lora.py)."""
        xf = cp.ascontiguousarray(values(x), dtype=cp.float32)
        u = cp.empty((xf.shape[0], lora.a.shape[0]), cp.float32)
        launch_lora_add(y, xf, lora.a, lora.bt, lora.key, lora.scale, lora.lo, lora.hi,
                        cp.ascontiguousarray(coef, dtype=cp.float32), u, self.nbs)

    def matmul(self, w: GMatrix, x, lora=None):
        """y = x @ W.T (+ the LoRA delta)   x: (n, n_in) array or Act -> (n, n_out) float32"""
        xf = cp.ascontiguousarray(values(x), dtype=cp.float32)
        y = gmatmul(w, xf, self.nbs, self._form_of(x, w), mma_min_n=self.mma_min_n)
        if lora is not None:
            self.lora_add_(y, x, *lora)
        return y

    def matmul_add_(self, w: GMatrix, x, out, lora=None) -> None:
        """out += x @ W.T (+ the LoRA delta) (an output projection into the residual stream: the GEMVs add as they
        write)."""
        xf = cp.ascontiguousarray(values(x), dtype=cp.float32)
        gmatmul(w, xf, self.nbs, self._form_of(x, w), out=out, mma_min_n=self.mma_min_n)
        if lora is not None:
            self.lora_add_(out, x, *lora)

    def embed(self, w: GMatrix, ids, scale: float = 1.0):
        """x[i] = W[ids[i]] * scale"""
        return dequant(w, self._ix(ids), float(scale), self.nbs)

    def add_(self, x, y) -> None:
        x += values(y)

    def take_rows(self, x, rows):
        return cp.ascontiguousarray(x[rows if isinstance(rows, cp.ndarray) else self._ix(np.asarray(rows))])

    def known_index(self, values) -> "KnownIndex":
        """An int64 index array (slots, positions) whose values the host knows and the device holds: a captured
        step may take the host's paths (prefill attention through cuBLAS) without uploading it while recording."""
        return KnownIndex(values)

    def move_prefill(self, kc, vc, src: int, dst, n: int) -> None:
        """Rows 0..n-1 of KV slot src -> the slot in dst (a one-element device array; kv_move.py)."""
        launch_kv_move(kc, vc, src, dst, n, self.nbs)

    def softcap_(self, x, cap: float) -> None:
        cp.tanh(x / np.float32(cap), out=x)
        x *= np.float32(cap)

    def rmsnorm(self, x, w, eps: float, gemv: bool = True) -> Act:
        shape = x.shape
        x2 = cp.ascontiguousarray(x).reshape(-1, shape[-1])
        out = cp.empty_like(x2)
        n, d = x2.shape
        if gemv and x.ndim == 2 and self._fuse_quant(n, d):  # its output feeds GEMVs: write their form too
            args, form = self._new_form(n, d)
            launch_rmsnorm(x2, w, eps, out, args, self.nbs)
            return Act(out, **form)
        launch_rmsnorm(x2, w, eps, out, None, self.nbs)
        return Act(out.reshape(shape))

    def gated_act(self, gate, up, activation: str) -> Act:
        """act(gate) * up; gate and up may be column views of one fused gate_up output."""
        n, f = gate.shape
        out = cp.empty((n, f), cp.float32)
        if self._fuse_quant(n, f):  # its output feeds the down-projection GEMV
            args, form = self._new_form(n, f)
            launch_gated_act(gate, up, activation == "gelu", out, args, self.nbs)
            return Act(out, **form)
        launch_gated_act(gate, up, activation == "gelu", out, None, self.nbs)
        return Act(out)

    def gated_ffn(self, w, h, ffn_dim: int, activation: str, up_bias=None, lora=None) -> Act:
        """act(h Wgate) * (h Wup + up_bias): one stacked GEMV (+ the LoRA delta of gate|up), then the gated
        activation on its two halves."""
        if isinstance(w, Stack) and lora is None:
            gate, up = (self.matmul(m, h) for m in w.parts)
        else:
            gu = cp.concatenate([self.matmul(m, h) for m in w.parts], axis=1) if isinstance(w, Stack) \
                else self.matmul(w, h)
            if lora is not None:
                self.lora_add_(gu, h, *lora)
            gate, up = gu[:, :ffn_dim], gu[:, ffn_dim:]
        if up_bias is not None:
            up = cp.ascontiguousarray(up)
            launch_add_bias(up, up_bias, self.nbs)
        return self.gated_act(gate, up, activation)

    def _attn_inputs(self, q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots):
        """Biases, per-head q/k RMSNorm (norms = (q_norm, k_norm) or None), RoPE, and the k/v cache writes, in one
        kernel (rope.attn_inputs). q, k, v: (n, h*d), (n, hkv*d) x2, possibly views of one qkv output.
        Returns q as (n, h, d)."""
        n, d = q.shape[0], kc.shape[3]
        h = q.shape[1] // d
        if d > ATT_DMAX:
            raise ModelError(f"CUDA attention handles head_dim up to {ATT_DMAX}, got {d}")
        qo = cp.empty((n, h, d), cp.float32)
        launch_attn_inputs(q, k, v, biases, norms, eps, self._ix(pos), inv_freq, neox, kc, vc, self._ix(slots), qo,
                           self._dummy, self.nbs)
        return qo

    def qkv_attn_inputs(self, w, h, q_dim: int, kv_dim: int, biases, norms, eps, pos, inv_freq, neox,
                        kc, vc, slots, lora=None):
        """The q/k/v projection of h (+ the LoRA delta) followed by _attn_inputs; returns q as (n, heads, d).
        Decode batches of the llama family (a stacked matrix, RoPE on adjacent pairs, no biases, no q/k norms, no
        LoRA) run it as one GEMV whose epilogue rotates q and k and writes k and v to the caches
        (matmul.gmatmul_qkv_rope)."""
        n, d = h.shape[0], kc.shape[3]
        if lora is not None:  # the delta lands on q|k|v before RoPE: the unfused path
            qkv = cp.concatenate([self.matmul(m, h) for m in w.parts], axis=1) if isinstance(w, Stack) \
                else self.matmul(w, h)
            self.lora_add_(qkv, h, *lora)
            q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        elif isinstance(w, Stack):
            q, k, v = (self.matmul(m, h) for m in w.parts)
        elif n <= GEMV_MAX_N and w.family != "float" and not neox and biases[0] is None and norms is None:
            x = cp.ascontiguousarray(values(h), dtype=cp.float32)
            qo = gmatmul_qkv_rope(w, x, self.nbs, self._form_of(h, w), self._ix(pos), self._ix(slots), inv_freq,
                                  kc, vc, self.mma_min_n)
            return qo.reshape(n, q_dim // d, d)
        else:
            qkv = self.matmul(w, h)
            q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        return self._attn_inputs(q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots)

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap) -> Act:
        """Causal GQA of q (n, h, d) over the caches (attention.py) -> (n, h * d): prefill with host slots and
        positions through cuBLAS (attention_gemm) unless a slot's keys wrapped around its ring buffer, else the
        attention kernel, whose output also comes in the output projection's GEMV form for decode."""
        n, h, d = q.shape
        if d > ATT_DMAX or d % 2:
            raise ModelError(f"CUDA attention handles even head_dim up to {ATT_DMAX}, got {d}")
        q = cp.ascontiguousarray(q)
        if n > GEMV_MAX_N and not isinstance(slots, cp.ndarray) and not isinstance(pos, cp.ndarray):
            out = attention_gemm(q, kc, vc, slots, pos, self._ix(pos), window, scale, softcap, self.nbs,
                                 self.prefill_graphs)
            if out is not None:
                return Act(out.reshape(n, h * d))
        sl, ps = self._ix(slots), self._ix(pos)
        out = cp.empty((n, h, d), cp.float32)
        # the output's GEMV form for Wo, per head (tiny test models have head_dim 8 or 16); not for prefill
        quant = d % 32 == 0 and n <= GEMV_MAX_N
        qargs, form = self._new_form(n, h * d) if quant else ((*self._no_quant, self._no_half, False), {})
        launch_attention(q, kc, vc, sl, ps, window, scale, softcap, out, quant, qargs, self.nbs, self.att_chunk,
                         self.att_warps, bool(self.mma_min_n and n > 1), self._count)
        return Act(out.reshape(n, h * d), **form)

    def _count(self, n: int, h: int):
        """The (n, h) int32 counters of split attention's finished blocks: zero between launches (the last block
        of each (token, head) resets its own), so one buffer per shape serves every layer and every replay."""
        c = self._counts.get((n, h))
        if c is None:  # from the default pool, not a decode graph's own (the buffer outlives any one graph)
            with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):
                c = self._counts[n, h] = cp.zeros((n, h), cp.int32)
        return c

    # --- ops of the families that differ from llama (phi2: LayerNorm, biases, plain MLP; mixtral: MoE) ---
    def layernorm(self, x, w, b, eps: float) -> Act:
        x2 = cp.ascontiguousarray(x)
        out = cp.empty_like(x2)
        n, d = x2.shape
        if self._fuse_quant(n, d):
            args, form = self._new_form(n, d)
            launch_layernorm(x2, w, b, eps, out, args, self.nbs)
            return Act(out, **form)
        launch_layernorm(x2, w, b, eps, out, None, self.nbs)
        return Act(out)

    def relu_(self, x) -> None:
        cp.maximum(x, 0, out=x)

    def add_bias_(self, x, b) -> None:
        """x[i] += b for every row i (linear-layer biases), in place."""
        x2 = x.reshape(-1, x.shape[-1])  # a view: x is contiguous (a matmul output)
        launch_add_bias(x2, b, self.nbs)

    def act(self, x, activation: str) -> Act:
        x = cp.ascontiguousarray(x)
        out = cp.empty_like(x)
        launch_act(x, activation == "gelu", out, self.nbs)
        return Act(out)

    def expert_matrix(self, t: Tensor) -> GExperts:
        """The stacked expert weights (n_exp, n_out, n_in) of one MoE layer, kept quantized on the GPU."""
        return GExperts.from_tensor(t)

    def topk_softmax(self, logits, k: int):
        """Router: (n, E) logits -> ids (n, k) int64 of the top-k experts and their softmax weights (n, k)."""
        logits = cp.ascontiguousarray(logits, dtype=cp.float32)
        return launch_topk_softmax(logits, k, self.nbs)

    def matmul_id(self, experts: GExperts, x, ids):
        """y[t, j] = x[t] (or x[t, j]) @ W[ids[t, j]].T -> (n, k, n_out)"""
        q = x.q if isinstance(x, Act) and experts.family != "float" else None
        q = (q[0].view(cp.int32), q[1], q[2]) if q is not None else None  # the MoE GEMVs read the int8 form
        x = cp.ascontiguousarray(values(x), dtype=cp.float32)
        ids = cp.ascontiguousarray(self._ix(ids).reshape(x.shape[0], -1) if not isinstance(ids, cp.ndarray)
                                   else ids.astype(cp.int64, copy=False))
        return gmatmul_id(experts, x, ids, self.nbs, q)

    def moe_sum(self, y, weights):
        """out[t] = sum_j weights[t, j] * y[t, j]"""
        y = cp.ascontiguousarray(y)
        return launch_moe_sum(y, cp.ascontiguousarray(weights), self.nbs)

    def mask_logits(self, logits, words):
        """-inf in place where a grammar's packed bits words (n, W) uint32 are 0 (kernels/cuda/mask.py)."""
        return gpu_mask.mask_logits(logits, words, self.nbs)

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
        mats = [p for m in mats for p in (m.parts if isinstance(m, Stack) else (m,))]
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

    def forget_side(self) -> None:
        """Drop the side stream's last event unjoined (it was recorded in a capture that failed)."""
        self._side_busy = None

    def join_side(self) -> None:
        """Make the main stream wait for the side stream's prefetch (a captured graph must join every stream it
        forked; a prefetch is long done by the time of the next one)."""
        if self._side_busy is not None:
            self.stream.wait_event(self._side_busy)
            self._side_busy = None

    # --- sampling where the logits are, and captured steps ---
    def sample_ids(self, logits, prm):
        """Device ids (n,) int64 drawn from logits (n, vocab) float32 with device parameters prm (n, 5)
        (sampling.rows.pack), -1 in the rows the host must draw."""
        return gpu_sample.sample_ids(cp.ascontiguousarray(logits, dtype=cp.float32), cp.asarray(prm), self.nbs)

    def finish_sampling(self, ids: np.ndarray, logits, prm: np.ndarray) -> np.ndarray:
        """The host draws the rows the GPU left undecided (their logits come back, no other row's)."""
        undecided = ids < 0
        rows = (cp.asnumpy(logits[cp.asarray(undecided)], stream=self.stream) if undecided.any()
                else np.empty((0, logits.shape[1]), np.float32))
        return sampling_rows.finish(ids, rows, prm)

    def capture(self, fn, finish, inputs: list[np.ndarray]) -> StepGraph:
        return StepGraph(self, fn, finish, inputs)
