"""The CUDA backend: CuPy memory, Numba CUDA kernels, and the decode step captured in a CUDA graph.

The model code (models/llama.py) calls the same methods as on the CPU (kernels/cpu.py). Weights go to the GPU
still quantized (cuda_weights.GMatrix); activations are float32, the KV cache float16. Every kernel runs on the
backend's one non-default stream: Numba kernels through `numba.cuda.external_stream`, CuPy ops with that
stream made current, so a whole forward can be captured.

Decode: `decode_step(model, cache, tokens, slots, pos)` runs a forward whose token ids, slots and positions
live in device buffers; the first call for a batch size runs it eagerly and captures it into a CUDA graph (the
scheduler pads its decode batches to a few sizes, scheduler.GRAPH_BUCKETS, so a handful of graphs serve all), later
calls copy the new ids/slots/positions in and replay it (~1.4 us per kernel instead of ~30-50 us per Python
launch, GPU.md). Intermediates of a captured step come from the graph's own memory pool, so no other code can
be handed that memory while the graph still writes it. Greedy decoding also takes the argmax on the GPU, and
sampled decoding draws on the GPU (cuda_sample), so only token ids come back.

This module (and cuda_*.py) are the only places that import CuPy and numba.cuda.
"""

import os

os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")  # no stream syncs inside graph capture

import cupy as cp  # noqa: E402
import cupyx  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from minirs.errors import ModelError  # noqa: E402
from minirs.formats import Tensor  # noqa: E402
from minirs.kernels import cuda_matmul, cuda_ops, cuda_sample  # noqa: E402
from minirs.kernels.cuda_weights import GExperts, GMatrix  # noqa: E402

for _cfg in ("numba.cuda.core.config", "numba.core.config"):  # the env var is read when the config loads,
    try:  # which may have happened before this module
        __import__(_cfg, fromlist=["x"]).CUDA_ARRAY_INTERFACE_SYNC = 0
    except Exception:  # noqa: BLE001
        pass

K = cuda_ops.K
PREFETCH_SPAN = 16384  # bytes per bulk prefetch (a thread each)
PREFETCH_THREADS = 32
MMA_MIN_N = 2  # quantized GEMVs of this many tokens or more run on the tensor cores (unless batch_invariant)


def _blocks(n: int, threads: int) -> int:
    return max(1, (n + threads - 1) // threads)


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
        self.att_chunk = cuda_ops.ATT_CHUNK  # fewest keys per block of decode attention (bench/gpu_check.py sweeps it)
        self.att_warps = cuda_ops.ATT_DECODE_WARPS  # warps per block of decode attention (<= ATT_WARPS)
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
        """Where a fused op writes its output's GEMV form (cuda_matmul.gemv_input): (the kernel's arguments
        xq, xd, xs, xh, half; what to stash). float16 when the next GEMVs run on the tensor cores (cuda_mma), else
        the int8 form."""
        if cuda_matmul.on_tensor_cores(n, k, self.mma_min_n):
            xh = cp.empty((n, k), cp.float16)
            return (*self._no_quant, xh, True), xh
        xq = self._new_quant(n, k)
        return (*xq, self._no_half, False), xq

    def batch_invariant(self, exact: bool) -> None:
        """exact: every quantized GEMV on dp4a, whose rows are bit-identical whatever the batch (the scheduler's
        row_invariant mode); else batches of MMA_MIN_N or more tokens on the tensor cores (cuda_mma: 2.3-4.2x faster
        at 16 tokens, and a row's last bits differ from the same row computed alone on dp4a), and a batch's decode
        attention splits each context over fewer blocks (about ATT_GRID in all)."""
        self.mma_min_n = 0 if exact else MMA_MIN_N

    def _fuse_quant(self, n: int, k: int) -> bool:
        return n <= cuda_matmul.GEMV_MAX_N and k % 32 == 0

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
        return cuda_matmul.gmatmul(w, x, self.nbs, q, mma_min_n=self.mma_min_n)

    def matmul_add_(self, w: GMatrix, x, out) -> None:
        """out += x @ W.T (an output projection into the residual stream: the GEMVs add as they write)."""
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        q = self._quant_of(x) if w.family != "float" else None
        self._xquant = None
        cuda_matmul.gmatmul(w, x, self.nbs, q, out=out, mma_min_n=self.mma_min_n)

    def embed(self, w: GMatrix, ids, scale: float = 1.0):
        """x[i] = W[ids[i]] * scale"""
        return cuda_matmul.dequant(w, self._ix(ids), float(scale), self.nbs)

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
        threads = min(1024, 32 * max(1, -(-d // 128)))  # ~4 elements per thread, held in registers
        if d > threads * cuda_ops.RMS_MAXE:
            raise ModelError(f"CUDA rmsnorm handles rows up to {1024 * cuda_ops.RMS_MAXE}, got {d}")
        if x.ndim == 2 and self._fuse_quant(n, d):  # its output feeds GEMVs: write their form too
            args, form = self._new_form(n, d)
            slices = -(-d // (64 * cuda_ops.NORM_WARPS))
            K["rmsnorm_q"][(n, slices), 32 * cuda_ops.NORM_WARPS, self.nbs](x2, w, np.float32(eps), out, *args)
            self._stash(out, form)
        else:
            K["rmsnorm"][n, threads, self.nbs](x2, w, np.float32(eps), out)
        return out.reshape(shape)

    def rope_(self, x, pos, inv_freq, neox: bool) -> None:
        self._xquant = None
        n, h, _ = x.shape
        total = n * h * inv_freq.shape[0]
        K["rope_"][_blocks(total, 256), 256, self.nbs](x, self._ix(pos), inv_freq, bool(neox))

    def gated_act(self, gate, up, activation: str):
        """act(gate) * up; gate and up may be column views of one fused gate_up output."""
        n, f = gate.shape
        out = cp.empty((n, f), cp.float32)
        if self._fuse_quant(n, f):  # its output feeds the down-projection GEMV
            args, form = self._new_form(n, f)
            K["gated_act_q"][_blocks(gate.size, 256), 256, self.nbs](gate, up, activation == "gelu", out, *args)
            self._stash(out, form)
        else:
            K["gated_act"][_blocks(gate.size, 256), 256, self.nbs](gate, up, activation == "gelu", out)
        return out

    def kv_write(self, kc, vc, slots, pos, k, v) -> None:
        k = cp.ascontiguousarray(k)
        v = cp.ascontiguousarray(v)
        K["kv_write"][_blocks(k.size, 256), 256, self.nbs](kc, vc, self._ix(slots), self._ix(pos), k, v)

    def attn_inputs(self, q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots):
        """Biases, per-head q/k RMSNorm (norms = (q_norm, k_norm) or None), RoPE, and the k/v cache writes, in one
        kernel (cuda_ops.attn_inputs). q, k, v: (n, h*d), (n, hkv*d) x2, possibly views of one qkv output.
        Returns q as (n, h, d)."""
        self._xquant = None
        n, hkv, d = q.shape[0], kc.shape[1], kc.shape[3]
        h = q.shape[1] // d
        if d > cuda_ops.ATT_DMAX:
            raise ModelError(f"CUDA attention handles head_dim up to {cuda_ops.ATT_DMAX}, got {d}")
        dummy = self._dummy
        has_bias = biases[0] is not None
        qb, kb, vb = biases if has_bias else (dummy, dummy, dummy)
        has_norm = norms is not None
        qn, kn = norms if has_norm else (dummy, dummy)
        qo = cp.empty((n, h, d), cp.float32)
        warps = n * (h + hkv)
        K["attn_inputs"][_blocks(warps, cuda_ops.PREP_WARPS), 32 * cuda_ops.PREP_WARPS, self.nbs](
            q, k, v, qb, kb, vb, has_bias, qn, kn, has_norm, np.float32(eps), self._ix(pos), inv_freq, bool(neox),
            kc, vc, self._ix(slots), qo)
        return qo

    def qkv_attn_inputs(self, w: GMatrix, h, q_dim: int, kv_dim: int, biases, norms, eps, pos, inv_freq, neox,
                        kc, vc, slots):
        """The stacked q/k/v projection of h (stack_matrices) followed by attn_inputs; returns q as (n, heads, d).
        Decode batches of the llama family (RoPE on adjacent pairs, no biases, no q/k norms) run it as one GEMV
        whose epilogue rotates q and k and writes k and v to the caches (cuda_matmul.gmatmul_qkv_rope)."""
        n, d = h.shape[0], kc.shape[3]
        if n <= cuda_matmul.GEMV_MAX_N and w.family != "float" and not neox and biases[0] is None and norms is None:
            x = cp.ascontiguousarray(h, dtype=cp.float32)
            qo = cuda_matmul.gmatmul_qkv_rope(w, x, self.nbs, self._quant_of(x), self._ix(pos), self._ix(slots),
                                              inv_freq, kc, vc, self.mma_min_n)
            self._xquant = None
            return qo.reshape(n, q_dim // d, d)
        qkv = self.matmul(w, h)
        q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        return self.attn_inputs(q, k, v, biases, norms, eps, pos, inv_freq, neox, kc, vc, slots)

    def attention(self, q, kc, vc, slots, pos, window, scale, softcap):
        n, h, d = q.shape
        if d > cuda_ops.ATT_DMAX or d % 2:
            raise ModelError(f"CUDA attention handles even head_dim up to {cuda_ops.ATT_DMAX}, got {d}")
        q = cp.ascontiguousarray(q)
        if n > cuda_matmul.GEMV_MAX_N and not isinstance(slots, cp.ndarray) and not isinstance(pos, cp.ndarray):
            out = self._attention_gemm(q, kc, vc, slots, pos, window, scale, softcap)
            if out is not None:
                return out
        sl, ps = self._ix(slots), self._ix(pos)
        keys = min(kc.shape[2], window) if window > 0 else kc.shape[2]  # the most keys one token can see
        splits = min(-(-keys // self.att_chunk), cuda_ops.ATT_SPLITS)  # each block sizes its chunk at run time
        if self.mma_min_n and n > 1:  # rows need not be batch-invariant: fewer, fuller blocks for a batch (16
            # tokens x 32 heads x 32 splits, mostly finding no keys in a short context, cost 38 us at 64 keys)
            splits = max(1, min(splits, -(-cuda_ops.ATT_GRID // (n * h))))
        args = (q, kc, vc, sl, ps, int(window), np.float32(scale), np.float32(softcap))
        out = cp.empty((n, h, d), cp.float32)
        # the output's GEMV form for Wo, per head (tiny test models have head_dim 8 or 16); not for prefill
        quant = d % 32 == 0 and n <= cuda_matmul.GEMV_MAX_N
        qargs, form = self._new_form(n, h * d) if quant else ((*self._no_quant, self._no_half, False), None)
        if n > cuda_matmul.GEMV_MAX_N or splits == 1:  # a block per (token, head) over all its keys
            dummy = cp.empty((1, 1, 1), cp.float32)
            warps = max(8 if n * h < 1024 else 4, -(-d // 32))  # (gemv_input: a thread per head dim)
            K["attention"][(h, 1, n), 32 * warps, self.nbs](*args, kc.shape[2], dummy, dummy, dummy.reshape(1, 1, 1, 1),
                                                             self._count(1, 1), out, quant, *qargs)
        else:  # decode (flash-decoding): blocks over chunks of the context; the last block of each (token, head)
            # combines the chunks
            pm = cp.empty((n, h, splits), cp.float32)
            pl = cp.empty((n, h, splits), cp.float32)
            po = cp.empty((n, h, splits, d), cp.float32)
            K["attention"][(h, splits, n), 32 * max(self.att_warps, -(-d // 32)), self.nbs](
                *args, self.att_chunk, pm, pl, po, self._count(n, h), out, quant, *qargs)
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

    def _attention_gemm(self, q, kc, vc, slots, pos, window, scale, softcap):
        """Prefill attention through cuBLAS (fp32): per sequence slot, scores = Q K^T for all its query rows
        against its keys, a masked softmax kernel (causal, window, soft-cap), then P V. GQA: the g query heads
        of a kv head are stacked as rows of one matrix. None when a slot's keys have wrapped around its ring
        buffer (the attention kernel handles that)."""
        n, h, d = q.shape
        hkv, L = kc.shape[1], kc.shape[2]
        g = h // hkv
        out = cp.empty((n, h, d), cp.float32)
        pos_dev = self._ix(pos)  # uploaded once per forward (the cache of _ix), read by every layer
        slots, pos = np.asarray(slots).reshape(-1), np.asarray(pos).reshape(-1)
        for s in np.unique(slots):
            rows = np.nonzero(slots == s)[0]
            p = pos[rows]
            k0 = max(0, int(p.min()) - window + 1) if window > 0 else 0
            m = int(p.max()) + 1 - k0
            if k0 + m > L:
                return None
            keys = kc[int(s), :, k0:k0 + m].astype(cp.float32)  # (hkv, m, d)
            vals = vc[int(s), :, k0:k0 + m].astype(cp.float32)
            step = max(1, (256 << 20) // (4 * h * m))  # query rows per round: scores stay under 256 MiB
            for c0 in range(0, len(rows), step):
                r = rows[c0:c0 + step]
                nq = len(r)
                block = r[-1] - r[0] + 1 == nq  # consecutive rows: slices, not gathers
                qr = q[r[0]:r[0] + nq] if block else q[cp.asarray(r)]
                qs = qr.reshape(nq, hkv, g, d).transpose(1, 2, 0, 3).reshape(hkv, g * nq, d)
                sc = cp.matmul(qs, keys.transpose(0, 2, 1))  # (hkv, g * nq, m)
                qpos, q0 = (pos_dev, int(r[0])) if block else (cp.asarray(p[c0:c0 + nq]), 0)
                K["softmax_masked_"][hkv * g * nq, 128, self.nbs](sc.reshape(-1, m), qpos, q0, nq, k0, int(window),
                                                                   np.float32(scale), np.float32(softcap))
                o = cp.matmul(sc, vals).reshape(hkv, g, nq, d).transpose(2, 0, 1, 3).reshape(nq, h, d)
                if block:
                    out[r[0]:r[0] + nq] = o
                else:
                    out[cp.asarray(r)] = o
        return out

    # --- ops of the families that differ from llama (phi2: LayerNorm, biases, plain MLP; mixtral: MoE) ---
    def layernorm(self, x, w, b, eps: float):
        shape = x.shape
        x2 = cp.ascontiguousarray(x).reshape(-1, shape[-1])
        out = cp.empty_like(x2)
        n, d = x2.shape
        threads = min(1024, 32 * max(1, -(-d // 128)))
        if d > threads * cuda_ops.RMS_MAXE:
            raise ModelError(f"CUDA layernorm handles rows up to {1024 * cuda_ops.RMS_MAXE}, got {d}")
        if x.ndim == 2 and self._fuse_quant(n, d):
            args, form = self._new_form(n, d)
            K["layernorm_q"][n, threads, self.nbs](x2, w, b, np.float32(eps), out, *args)
            self._stash(out, form)
        else:
            K["layernorm"][n, threads, self.nbs](x2, w, b, np.float32(eps), out)
        return out.reshape(shape)

    def add_bias_(self, x, b) -> None:
        """x[i] += b for every row i (linear-layer biases), in place."""
        self._xquant = None
        x2 = x.reshape(-1, x.shape[-1])  # a view: x is contiguous (a matmul output)
        K["add_bias_"][_blocks(x2.size, 256), 256, self.nbs](x2, b)

    def act(self, x, activation: str):
        x = cp.ascontiguousarray(x)
        out = cp.empty_like(x)
        K["act"][_blocks(x.size, 256), 256, self.nbs](x, activation == "gelu", out)
        return out

    def expert_matrix(self, t: Tensor) -> GExperts:
        """The stacked expert weights (n_exp, n_out, n_in) of one MoE layer, kept quantized on the GPU."""
        return GExperts.from_tensor(t)

    def topk_softmax(self, logits, k: int):
        """Router: (n, E) logits -> ids (n, k) int64 of the top-k experts and their softmax weights (n, k)."""
        logits = cp.ascontiguousarray(logits, dtype=cp.float32)
        n = logits.shape[0]
        ids, weights = cp.empty((n, k), cp.int64), cp.empty((n, k), cp.float32)
        K["topk_softmax"][_blocks(n, 64), 64, self.nbs](logits, ids, weights)
        return ids, weights

    def matmul_id(self, experts: GExperts, x, ids):
        """y[t, j] = x[t] (or x[t, j]) @ W[ids[t, j]].T -> (n, k, n_out)"""
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        q = self._quant_of(x) if experts.family != "float" else None
        q = (q[0].view(cp.int32), q[1], q[2]) if isinstance(q, tuple) else None  # the MoE GEMVs read int8
        ids = cp.ascontiguousarray(self._ix(ids).reshape(x.shape[0], -1) if not isinstance(ids, cp.ndarray)
                                   else ids.astype(cp.int64, copy=False))
        return cuda_matmul.gmatmul_id(experts, x, ids, self.nbs, q)

    def moe_sum(self, y, weights):
        """out[t] = sum_j weights[t, j] * y[t, j]"""
        y = cp.ascontiguousarray(y)
        out = cp.empty((y.shape[0], y.shape[2]), cp.float32)
        K["moe_sum"][_blocks(out.size, 256), 256, self.nbs](y, cp.ascontiguousarray(weights), out)
        return out

    def argmax(self, logits):
        """Greedy token ids (n,) int64 on the GPU."""
        n, V = logits.shape
        S = -(-V // cuda_ops.ARGMAX_SPAN)  # slices, each a block: the row is read by many SMs at once
        pv, pi, out = cp.empty((n, S), cp.float32), cp.empty((n, S), cp.int64), cp.empty(n, cp.int64)
        K["argmax_part"][(n, S), cuda_ops.ARGMAX_THREADS, self.nbs](logits, pv, pi)
        K["argmax_pick"][n, 256, self.nbs](pv, pi, out)
        return out

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
            hit = self._spans[key] = (mats, self._prefetch_spans(mats))
        spans = hit[1]
        if spans is None:
            return
        self.join_side()
        self.side.wait_event(self.stream.record())  # fork: after what the main stream has queued so far
        K["prefetch"][_blocks(spans.shape[0], PREFETCH_THREADS), PREFETCH_THREADS, self._side_nbs](spans)
        self._side_busy = self.side.record()

    def join_side(self) -> None:
        """Make the main stream wait for the side stream's prefetch (a captured graph must join every stream it
        forked; a prefetch is long done by the time of the next one)."""
        if self._side_busy is not None:
            self.stream.wait_event(self._side_busy)
            self._side_busy = None

    def _prefetch_spans(self, mats: list):
        """The (address, bytes) spans of prefetch, None if mats do not fit the budget: each matrix's arrays cut
        into PREFETCH_SPAN pieces (16-byte multiples: CuPy allocations are 256-byte aligned)."""
        arrays = [a for w in mats if isinstance(w, GMatrix) for a in (w.q, w.d, w.m, w.h)
                  if isinstance(a, cp.ndarray) and a.size > 1]
        if not arrays or sum(a.nbytes for a in arrays) > self.prefetch_bytes:
            return None
        spans = [(a.data.ptr + o, min(PREFETCH_SPAN, a.nbytes // 16 * 16 - o))
                 for a in arrays for o in range(0, a.nbytes // 16 * 16, PREFETCH_SPAN)]
        with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):  # outlives any one decode graph
            return cp.asarray(np.array(spans, np.int64).reshape(-1, 2))

    # --- the captured decode step ---
    def decode_step(self, model, cache, tokens, slots, pos, greedy: bool = False, sample=None) -> np.ndarray:
        """One decode forward of len(tokens) rows from a CUDA graph: host logits (n, vocab), or ids (n,) if greedy,
        or ids (n,) drawn on the GPU with sample = (temperature, top_k, top_p, min_p, coin), one value of each per
        row (sample_rows; rows the GPU leaves undecided are drawn on the host from their logits)."""
        prm = None if sample is None else cuda_sample.pack(*sample)
        greedy = greedy and prm is None
        key = (id(model), id(cache), len(tokens), greedy, prm is not None, self.mma_min_n)
        g = self._graphs.get(key)
        if g is None or g.model is not model or g.cache is not cache:
            g = self._graphs[key] = DecodeGraph(self, model, cache, len(tokens), greedy, prm is not None)
            out = g.first(tokens, slots, pos, prm)
        else:
            out = g.replay(tokens, slots, pos, prm)
        return out if prm is None else cuda_sample.finish_on_host(*out, prm)

    def sample_rows(self, logits, temperature, top_k, top_p, min_p, coin) -> np.ndarray:
        """Host token ids (n,), row i drawn from logits[i] (n, vocab) as minirs.sampling.sample_plain draws it, with
        temperature[i] > 0, top_k[i], top_p[i], min_p[i] and coin[i]: on the GPU (cuda_sample), the rows it cannot
        decide on the host."""
        prm = cuda_sample.pack(temperature, top_k, top_p, min_p, coin)
        logits = cp.ascontiguousarray(logits, dtype=cp.float32)
        ids = cp.asnumpy(self.sample_ids(logits, cp.asarray(prm)), stream=self.stream)
        return cuda_sample.finish_on_host(ids, _undecided_rows(logits, ids, self.stream), prm)

    def sample_ids(self, logits, prm):
        """Device ids (n,) int64 drawn from logits (n, vocab) float32 with device parameters prm (n, 5)
        (cuda_sample.pack), -1 in the rows the host must draw."""
        return cuda_sample.sample_ids(logits, prm, self.nbs)


def _undecided_rows(logits, ids: np.ndarray, stream) -> np.ndarray:
    """The rows of device logits whose sampled id is -1 (the host draws them), on the host; no device work when
    the GPU decided every row."""
    undecided = ids < 0
    if not undecided.any():
        return np.empty((0, logits.shape[1]), np.float32)
    return cp.asnumpy(logits[cp.asarray(undecided)], stream=stream)


def _copy_async(dst, src, stream) -> None:
    """dst = src between a page-locked host array and a contiguous device array (either way), queued on stream: one
    runtime call (CuPy's set/get cost ~10 us of host time per step, the GPU idle meanwhile)."""
    rt = cp.cuda.runtime
    if isinstance(dst, cp.ndarray):
        rt.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, rt.memcpyHostToDevice, stream.ptr)
    else:
        rt.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes, rt.memcpyDeviceToHost, stream.ptr)


class DecodeGraph:
    """A decode step of a fixed batch size captured in a CUDA graph, its inputs and output in fixed buffers. Its
    result: logits (n, vocab), or ids (n,) if greedy, or if sampled (ids (n,), the logits of the rows with id -1)."""

    def __init__(self, backend: CudaBackend, model, cache, n: int, greedy: bool, sampled: bool = False):
        self.be, self.model, self.cache, self.n = backend, model, cache, n
        self.greedy, self.sampled = greedy, sampled
        self.inputs = cp.zeros((3, n), cp.int64)  # the graph reads ids, slots and positions from these rows
        self.tok, self.slots, self.pos = self.inputs
        self.prm = cp.zeros((n, 5), cp.float64)  # and the sampling parameters (cuda_sample.pack)
        self.staged = cupyx.empty_pinned((3, n), np.int64)  # page-locked host copies: one async copy each way
        self.staged_prm = cupyx.empty_pinned((n, 5), np.float64)
        self.result = None
        self.pool = cp.cuda.MemoryPool()  # intermediates of the graph live here and nowhere else
        self.graph = None
        self.out = None
        self.logits = None  # a sampled step's logits, for the rows the GPU leaves to the host

    def _load(self, tokens, slots, pos, prm):
        self.staged[0], self.staged[1], self.staged[2] = tokens, slots, pos
        _copy_async(self.inputs, self.staged, self.be.stream)
        if self.sampled:
            self.staged_prm[...] = prm
            _copy_async(self.prm, self.staged_prm, self.be.stream)

    def _fetch(self, out) -> np.ndarray:
        """out copied to the host (through a page-locked buffer) once the stream is done."""
        out = cp.ascontiguousarray(out)
        if self.result is None or self.result.shape != out.shape:
            self.result = cupyx.empty_pinned(out.shape, out.dtype)
        _copy_async(self.result, out, self.be.stream)
        self.be.stream.synchronize()
        return self.result.copy()

    def _forward(self):
        logits = self.model.forward(self.tok, self.slots, self.pos, self.cache)
        self.be.join_side()
        if self.sampled:
            self.logits = logits
            return self.be.sample_ids(logits, self.prm)
        return self.be.argmax(logits) if self.greedy else logits

    def _result(self, out):
        res = self._fetch(out)
        if not self.sampled:
            return res
        return res, _undecided_rows(self.logits, res, self.be.stream)

    def first(self, tokens, slots, pos, prm=None):
        """Run the step eagerly (compiles, fills the pool, gives this step's result), then capture it."""
        self._load(tokens, slots, pos, prm)
        s = self.be.stream
        with cp.cuda.using_allocator(self.pool.malloc):
            out = self._forward()
            result = self._result(out)
            del out
            self.logits = None
            # the replay recomputes the same step: it writes the same K/V rows, so capturing now is harmless
            s.begin_capture()
            try:
                self.out = self._forward()
            finally:
                self.graph = s.end_capture()
        if hasattr(self.graph, "upload"):
            self.graph.upload(s)
        return result

    def replay(self, tokens, slots, pos, prm=None):
        self._load(tokens, slots, pos, prm)
        self.graph.launch(self.be.stream)
        return self._result(self.out)
