"""One call on the GPU machine: check every CUDA kernel against its NumPy twin, compare whole models on the GPU
with the CPU path, then time them. Prints a short table last; logs go to $OUT (or ./gpu_out).

    PYTHONUNBUFFERED=1 python bench/gpu_check.py [--quick] [--no-bench] [--bench-presets a,b]
"""

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import warnings

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

warnings.filterwarnings("ignore", message=".*under-utilization.*")
OUT = Path(os.environ.get("OUT", "gpu_out"))
OUT.mkdir(parents=True, exist_ok=True)
LOG = open(OUT / "gpu_check.log", "w")
SUMMARY = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.write(s + "\n")
    LOG.flush()


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(name, err, tol):
    ok = np.isfinite(err) and err <= tol
    SUMMARY.append((name, err, tol, ok))
    log(f"{'ok  ' if ok else 'FAIL'} {name:40s} rel err {err:.2e} (tol {tol:.0e})")


def kernel_checks(rng):
    import cupy as cp
    from minirs.formats.model_file import Tensor
    from minirs.formats.quants import dequantize
    from minirs.kernels import ref
    from minirs.kernels.cuda import CudaBackend
    from minirs.kernels.cuda_matmul import GMatrix
    from minirs.models.synthetic import random_tensor_bytes

    be = CudaBackend()
    g = lambda a: cp.asnumpy(a)  # noqa: E731
    for qt in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16", "F32"]:
        n_out, n_in = 300, 512  # n_out not a multiple of the 8 rows per block: the tail is exercised
        raw = random_tensor_bytes(qt, (n_out, n_in), rng)
        t = Tensor(f"w_{qt}", qt, (n_out, n_in), raw.reshape(-1))
        W = dequantize(t).reshape(n_out, n_in).astype(np.float64)
        w = GMatrix.from_tensor(t)
        from minirs.kernels.cuda_matmul import GEMV_MAX_N
        for n in (1, 3, 8, 17, 32, 40):
            x = rng.standard_normal((n, n_in)).astype(np.float32)
            y = g(be.matmul(w, cp.asarray(x)))
            # the GEMV quantizes x to int8 per 32 (as llama.cpp's q8_1): ~1e-2; the cuBLAS path uses fp16 x: ~1e-3
            check(f"matmul {qt} n={n}", rel(y, x @ W.T), 2e-2 if n <= GEMV_MAX_N else 3e-3)
            if 1 < n <= GEMV_MAX_N:  # batch invariance: each row bit-identical to that row alone
                alone = np.concatenate([g(be.matmul(w, cp.asarray(x[i:i + 1]))) for i in range(n)])
                check(f"matmul {qt} n={n} rows == rows alone (max abs diff)", float(np.abs(y - alone).max()), 0)
        ids = rng.integers(0, n_out, 5)
        e = g(be.embed(w, ids, 1.5))
        check(f"embed {qt}", rel(e, W[ids] * 1.5), 1e-3 if qt in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K") else 1e-6)

    # element-wise and norm kernels
    x = rng.standard_normal((7, 576)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(576)).astype(np.float32)
    check("rmsnorm", rel(g(be.rmsnorm(cp.asarray(x), cp.asarray(w), 1e-5)), ref.rmsnorm(x, w, 1e-5)), 1e-5)
    for neox in (False, True):
        q = rng.standard_normal((5, 4, 64)).astype(np.float32)
        pos = rng.integers(0, 30000, 5)
        inv = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64)
        qd = cp.asarray(q)
        be.rope_(qd, pos, cp.asarray(inv), neox)
        check(f"rope neox={neox}", rel(g(qd), ref.rope(q, pos, inv, neox)), 1e-5)
    for act in ("silu", "gelu"):
        a, b = rng.standard_normal((2, 4, 1000)).astype(np.float32)
        check(f"gated_act {act}", rel(g(be.gated_act(cp.asarray(a), cp.asarray(b), act)),
                                      ref.gated_act(a, b, act)), 1e-5)
    logits = rng.standard_normal((3, 50000)).astype(np.float32)
    ok = np.array_equal(g(be.argmax(cp.asarray(logits))), logits.argmax(-1))
    check("argmax", 0.0 if ok else 1.0, 0)

    # the int8 form of x that the GEMVs read: quantize_x, and the fused producers (rmsnorm_q, gated_act_q,
    # attn_reduce) against the NumPy twin; codes may differ by one where x / d sits on a rounding boundary
    from minirs.kernels import cuda_matmul, cuda_numerics

    def qcheck(name, quant, xref):
        xq, xd, xs = (g(a) for a in quant)
        tq, td, ts = cuda_numerics.quantize_x(xref)
        diff = np.abs(xq.view(np.int8).astype(np.int32).reshape(tq.shape) - tq)
        check(f"{name} int8 codes (max diff {diff.max()}, {np.mean(diff > 0):.1e} off)", float(diff.max() > 1), 0)
        check(f"{name} int8 scales", rel(xd, td), 1e-6)
        check(f"{name} int8 sums", float(np.abs(xs - (xq.view(np.int8).reshape(tq.shape).astype(np.int32)
                                                      .reshape(xs.shape[0], -1, 16).sum(-1))).max()), 0)
        check(f"{name} dequantized x", rel(cuda_numerics.dequantize_x(xq.view(np.int8).reshape(tq.shape), xd),
                                           xref), 1.5e-2)

    x = (rng.standard_normal((5, 4096)) * rng.uniform(0.1, 10, (5, 1))).astype(np.float32)
    qcheck("quantize_x", cuda_matmul.quantize(cp.asarray(x), be.nbs), x)
    for d in (576, 640, 4096):
        x = rng.standard_normal((3, d)).astype(np.float32)
        w = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        out = be.rmsnorm(cp.asarray(x), cp.asarray(w), 1e-6)
        check(f"rmsnorm_q d={d}", rel(g(out), ref.rmsnorm(x, w, 1e-6)), 1e-5)
        qcheck(f"rmsnorm_q d={d}", be._quant_of(out), g(out))
    for act in ("silu", "gelu"):
        a, b = rng.standard_normal((2, 2, 1536)).astype(np.float32)
        out = be.gated_act(cp.asarray(a), cp.asarray(b), act)
        check(f"gated_act_q {act}", rel(g(out), ref.gated_act(a, b, act)), 1e-5)
        qcheck(f"gated_act_q {act}", be._quant_of(out), g(out))

    # attention over ring buffers: GQA, windows, soft-cap, tokens of several slots
    for n, h, hkv, d, L, window, softcap in [
            (6, 8, 2, 64, 64, 0, 0.0), (6, 4, 1, 256, 40, 16, 0.0), (6, 32, 8, 128, 600, 0, 0.0),
            (6, 6, 3, 32, 50, 0, 30.0), (12, 9, 3, 64, 300, 0, 0.0),  # prefill kernel (n > 8)
            (1, 32, 8, 128, 4100, 0, 0.0), (3, 9, 3, 64, 700, 0, 0.0), (2, 4, 1, 256, 600, 512, 0.0),  # split
            (1, 6, 3, 32, 200, 0, 30.0)]:
        n_slots = 2
        kc = rng.standard_normal((n_slots, hkv, L, d)).astype(np.float16)
        vc = rng.standard_normal((n_slots, hkv, L, d)).astype(np.float16)
        slots = rng.integers(0, n_slots, n)
        pos = rng.integers(0, 2 * L if window else L, n)
        q = rng.standard_normal((n, h, d)).astype(np.float32)
        k = rng.standard_normal((n, hkv, d)).astype(np.float32)
        v = rng.standard_normal((n, hkv, d)).astype(np.float32)
        # kv_write of distinct (slot, row) pairs, then attention
        _, first = np.unique(slots * 10**6 + pos % L, return_index=True)
        kcd, vcd = cp.asarray(kc), cp.asarray(vc)
        be.kv_write(kcd, vcd, slots[first], pos[first], cp.asarray(k[first]), cp.asarray(v[first]))
        kc2, vc2 = kc.copy(), vc.copy()
        for t in first:
            kc2[slots[t], :, pos[t] % L] = k[t]
            vc2[slots[t], :, pos[t] % L] = v[t]
        check(f"kv_write d={d}", rel(g(kcd).astype(np.float32), kc2.astype(np.float32)), 1e-3)
        scale = 1 / np.sqrt(d)
        o = g(be.attention(cp.asarray(q), kcd, vcd, slots, pos, window, scale, softcap))
        ro = ref.attention(q, kc2, vc2, slots, pos, window, scale, softcap)
        check(f"attention n={n} h={h}/{hkv} d={d} L={L} w={window} cap={softcap}", rel(o, ro), 1e-4)
        if n <= 8 and (min(L, window) if window else L) > 32:  # split attention: its reduce also writes the int8 form for the output projection
            qcheck(f"attn_reduce n={n} d={d}", be._xquant[3], o.reshape(n, -1))


def model_checks(folder: Path, presets):
    """Same random-weight file on CPU (float32), on the CPU with the GPU's roundings (cuda_numerics) and on the
    GPU: prefill logits, teacher-forced decode logits, graph decode vs eager decode, greedy tokens by margin."""
    from minirs.formats import load_model_file
    from minirs.generate import Generator
    from minirs.kernels.cpu import CpuBackend
    from minirs.kernels.cuda import CudaBackend
    from minirs.kernels.cuda_numerics import GpuNumericsCpu
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf
    from minirs.sampling import SamplingParams

    for preset in presets:
        path = folder / f"{preset}.gguf"
        if not path.exists():
            write_random_gguf(path, preset)
        mf = load_model_file(path)
        cpu = load_model(mf, backend=CpuBackend())
        twin = load_model(mf, backend=GpuNumericsCpu())
        gpu = load_model(mf, backend=CudaBackend())
        rng = np.random.default_rng(1)
        prompt = [int(i) for i in rng.integers(0, cpu.config.vocab_size, 40)]
        # cuBLAS prefill (chunks of 40) and the prefill attention kernel, against the float32 CPU
        l40 = [Generator(m, ctx_len=256, max_chunk=40).prefill(prompt) for m in (cpu, gpu)]
        check(f"{preset} prefill (chunk 40, cuBLAS) GPU vs CPU", rel(l40[1], l40[0]), 8e-2)
        # chunks of 8: every matmul a GEMV, so the twin rounds exactly as the GPU does
        gens = [Generator(m, ctx_len=256, max_chunk=8) for m in (cpu, twin, gpu)]
        lc, lt, lg = (gen.prefill(prompt) for gen in gens)
        log(f"     {preset} prefill: GPU vs CPU {rel(lg, lc):.1e}, twin vs CPU {rel(lt, lc):.1e}, "
            f"GPU vs twin {rel(lg, lt):.1e}")
        # int8 rounding is chaotic (cuda_numerics): GPU and twin are two draws of the same error, not equal
        check(f"{preset} prefill logits GPU vs CPU (twin {rel(lt, lc):.1e})", rel(lg, lc), max(8e-2, 2.5 * rel(lt, lc)))
        # teacher-forced decode on the CPU's greedy tokens
        toks = list(Generator(cpu, ctx_len=256, max_chunk=8).generate(prompt, SamplingParams(), 12))
        e_gc, e_tc, e_gt, eager_errs, bad = [], [], [], [], []
        for i, tok in enumerate(toks[:-1]):
            p = len(prompt) + i
            a, b = gens[0].decode(tok, p), gens[1].decode(tok, p)
            if i < 3:
                args = (np.array([tok]), np.zeros(1, np.int64), np.array([p]))
                e = gpu.backend.to_numpy(gpu.forward(*args, gens[2].cache))[0]  # eager GPU forward
            c = gens[2].decode(tok, p)  # graph path (first call eager + capture, then replays)
            if i < 3:
                eager_errs.append(rel(c, e))
            e_gc.append(rel(c, a))
            e_tc.append(rel(b, a))
            e_gt.append(rel(c, b))
            top = np.sort(a)[::-1]
            margin, err = top[0] - top[1], np.abs(b - a).max()  # the design error, measured by the twin
            if margin > 2 * err and int(np.argmax(c)) != int(np.argmax(a)):
                bad.append(i)
        fmt = lambda v: " ".join("%.1e" % x for x in v)  # noqa: E731
        log(f"     {preset} decode per step: GPU vs CPU [{fmt(e_gc)}]\n     twin vs CPU [{fmt(e_tc)}]\n"
            f"     GPU vs twin [{fmt(e_gt)}]\n     graph vs eager GPU [{fmt(eager_errs)}]")
        check(f"{preset} decode logits graph vs eager GPU", max(eager_errs), 1e-5)
        check(f"{preset} decode logits GPU vs CPU mean over steps <= 2.5x the twin's ({np.mean(e_tc):.1e})",
              float(np.mean(e_gc)), 2.5 * float(np.mean(e_tc)))
        check(f"{preset} greedy: GPU argmax = CPU where margin > 2x twin error (bad steps {bad})", float(len(bad)), 0)
        tg = list(Generator(gpu, ctx_len=256, max_chunk=8).generate(prompt, SamplingParams(), 12))
        agree = next((i for i, (x, y) in enumerate(zip(toks, tg)) if x != y), len(toks))
        log(f"     {preset} greedy CPU {toks}\n     {preset} greedy GPU {tg} (first {agree} agree)")
        del cpu, twin, gpu, gens


def micro_timings():
    """Kernel times replayed from a graph (launch cost excluded), 7B shapes, rotating weight copies past L2."""
    import cupy as cp
    from minirs.formats.model_file import Tensor
    from minirs.kernels.cuda import CudaBackend
    from minirs.kernels.cuda_matmul import GMatrix, gmatmul, quantize
    from minirs.models.synthetic import random_tensor_bytes

    be = CudaBackend()
    rng = np.random.default_rng(0)
    s = be.stream

    def timed(name, fn, nbytes, reps=20):
        fn()
        s.synchronize()
        s.begin_capture()
        for _ in range(reps):
            fn()
        g = s.end_capture()
        g.launch(s)
        s.synchronize()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(s)
        for _ in range(5):
            g.launch(s)
        e1.record(s)
        e1.synchronize()
        us = cp.cuda.get_elapsed_time(e0, e1) * 1e3 / (5 * reps)
        log(f"time {name:44s} {us:8.1f} us  {nbytes / us / 1e3:7.0f} GB/s")

    for n in (1, 2, 4, 8, 16, 32):  # batched decode: one weight read per block of TT tokens
        ws = [GMatrix.from_tensor(Tensor("w", "Q4_0", (14336, 4096), random_tensor_bytes(
            "Q4_0", (14336, 4096), rng).reshape(-1))) for _ in range(3)]
        x = cp.asarray(rng.standard_normal((n, 4096)).astype(np.float32))
        xqt = quantize(x, be.nbs)
        it = iter(range(10**9))
        timed(f"gemv Q4_0 14336x4096 n={n}", lambda: gmatmul(ws[next(it) % 3], x, be.nbs, xqt), ws[0].nbytes)
        del ws
    for qt, (n_out, n_in) in [("Q4_0", (14336, 4096)), ("Q4_0", (4096, 14336)), ("Q4_0", (1024, 4096)),
                              ("Q4_K", (14336, 4096)), ("Q6_K", (32000, 4096)), ("Q8_0", (49152, 576)),
                              ("Q4_1", (1536, 576))]:
        ws = [GMatrix.from_tensor(Tensor("w", qt, (n_out, n_in), random_tensor_bytes(qt, (n_out, n_in), rng)
                                         .reshape(-1))) for _ in range(3)]
        x = cp.asarray(rng.standard_normal((1, n_in)).astype(np.float32))
        xqt = quantize(x, be.nbs)
        it = iter(range(10**9))
        timed(f"gemv {qt} {n_out}x{n_in}", lambda: gmatmul(ws[next(it) % 3], x, be.nbs, xqt), ws[0].nbytes)
        del ws
    x = cp.asarray(rng.standard_normal((1, 4096)).astype(np.float32))
    timed("quantize_x 4096", lambda: quantize(x, be.nbs), 4096 * 5)
    w = cp.asarray(np.ones(4096, np.float32))
    timed("rmsnorm_q 4096 (norm + int8 x)", lambda: be.rmsnorm(x, w, 1e-5), 4096 * 13)
    timed("rmsnorm 4096 (3-D input: no int8)", lambda: be.rmsnorm(x.reshape(1, 1, 4096), w, 1e-5), 4096 * 12)
    gu = cp.asarray(rng.standard_normal((2, 1, 14336)).astype(np.float32))
    timed("gated_act_q 14336", lambda: be.gated_act(gu[0], gu[1], "silu"), 14336 * 13)
    for L, ctx in ((648, 128), (648, 640), (4100, 128), (4100, 4096)):
        kc = cp.asarray(rng.standard_normal((1, 8, L, 128)).astype(np.float16))
        q = cp.asarray(rng.standard_normal((1, 32, 128)).astype(np.float32))
        sl, ps = cp.zeros(1, cp.int64), cp.full(1, ctx - 1, cp.int64)
        timed(f"attention decode 32/8x128 L={L} ctx {ctx}", lambda: be.attention(q, kc, kc, sl, ps, 0, 0.088, 0.0),
              ctx * 8 * 128 * 4)
    # prefill pieces, 7B shapes, 512 tokens (outside graphs: cuBLAS cannot be captured; events around 5 runs)
    from minirs.kernels.cuda_matmul import dequant

    def evtime(name, fn, reps=5):
        fn()
        s.synchronize()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(s)
        for _ in range(reps):
            fn()
        e1.record(s)
        e1.synchronize()
        ms = cp.cuda.get_elapsed_time(e0, e1) / reps
        log(f"time {name:44s} {ms * 1e3:8.1f} us")
        return ms

    w = GMatrix.from_tensor(Tensor("w", "Q4_0", (14336, 4096), random_tensor_bytes("Q4_0", (14336, 4096), rng)
                                   .reshape(-1)))
    rows = cp.arange(14336, dtype=cp.int64)
    evtime("prefill dequant Q4_0 14336x4096 -> f16", lambda: dequant(w, rows, 1.0, cp.float16, be.nbs))
    x512 = cp.asarray(rng.standard_normal((512, 4096)).astype(np.float32))
    wf = dequant(w, rows, 1.0, cp.float16, be.nbs)
    xh = x512.astype(cp.float16)
    evtime("prefill cuBLAS 512x4096 @ 4096x14336 f16", lambda: cp.matmul(xh, wf.T))
    evtime("prefill gmatmul Q4_0 14336x4096 n=512 (all)", lambda: gmatmul(w, x512, be.nbs))
    kc = cp.asarray(rng.standard_normal((1, 8, 520, 128)).astype(np.float16))
    q = cp.asarray(rng.standard_normal((512, 32, 128)).astype(np.float32))
    sl, ps = cp.zeros(512, cp.int64), cp.arange(512, dtype=cp.int64)
    evtime("prefill attention 512 tok 32/8x128", lambda: be.attention(q, kc, kc, sl, ps, 0, 0.088, 0.0))


def prefill_profile(folder: Path, preset: str):
    """Where a pp512 forward spends its time: whole forward, and by op (host timer after a sync per op)."""
    import time as _t
    from minirs.formats import load_model_file
    from minirs.kernels.cuda import CudaBackend
    from minirs.kv_cache import KVCache
    from minirs.load import load_model

    be = CudaBackend()
    model = load_model(load_model_file(folder / f"{preset}.gguf"), backend=be)
    cache = KVCache(model.config, be, 1, 648, 512)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 512)
    sl, ps = np.zeros(512, np.int64), np.arange(512, dtype=np.int64)
    totals = {}
    for name in ("matmul", "attention", "rmsnorm", "rope_", "kv_write", "gated_act", "embed", "add_"):
        fn = getattr(be, name)

        def wrap(*a, _fn=fn, _name=name, **k):
            be.stream.synchronize()
            t = _t.perf_counter()
            r = _fn(*a, **k)
            be.stream.synchronize()
            totals[_name] = totals.get(_name, 0.0) + _t.perf_counter() - t
            return r
        setattr(be, name, wrap)
    for rep in range(2):
        totals.clear()
        be.stream.synchronize()
        t = _t.perf_counter()
        model.forward(ids, sl, ps, cache, logit_rows=[511])
        be.stream.synchronize()
        wall = _t.perf_counter() - t
    log(f"# {preset} pp512 forward (synced per op) {wall * 1e3:.0f} ms: " +
        ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in sorted(totals.items(), key=lambda kv: -kv[1])))
    del model, cache


def batched_checks(folder: Path, presets, n_req: int = 16, max_tokens: int = 24):
    """The engine on the GPU: each request's greedy tokens (and logprobs) alone vs batched with the others
    (row_invariant: prefill chunks alone, decode rows through the bucketed CUDA graphs); must be identical."""
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf
    from minirs.scheduler import Engine, GenParams, Job
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_batch import _Ids

    for preset in presets:
        path = folder / f"{preset}.gguf"
        if not path.exists():
            write_random_gguf(path, preset)
        model = load_model(path, device="cuda")
        rng = np.random.default_rng(7)
        ps = [[int(i) for i in rng.integers(0, model.config.vocab_size, int(rng.integers(5, 60)))]
              for _ in range(n_req)]
        eng = Engine(model, _Ids(), max_seqs=n_req, row_invariant=True)
        t = time.time()
        alone = [eng.submit(Job(p, GenParams(max_tokens=max_tokens, logprobs=True), _Ids())).wait(600).seqs[0]
                 for p in ps[:4]]
        t_alone = time.time() - t
        t = time.time()
        jobs = [eng.submit(Job(p, GenParams(max_tokens=max_tokens, logprobs=True), _Ids())) for p in ps]
        batched = [j.wait(600).seqs[0] for j in jobs]
        t_b = time.time() - t
        eng.shutdown()
        same = sum(a.generated == b.generated for a, b in zip(alone, batched))
        lp = max(abs(x[1] - y[1]) for a, b in zip(alone, batched) for x, y in zip(a.logprobs, b.logprobs))
        log(f"     {preset} alone {alone[0].generated}\n     {preset} batch {batched[0].generated}")
        log(f"     {preset}: 4 alone {4 * max_tokens / t_alone:.0f} tok/s, {n_req} batched "
            f"{n_req * max_tokens / t_b:.0f} tok/s (logprobs on)")
        check(f"{preset} GPU engine: greedy tokens alone == batched x{n_req} ({same}/4 equal)", float(4 - same), 0)
        check(f"{preset} GPU engine: logprobs alone vs batched (max abs diff)", lp, 0)
        del model, eng


def batch_bench(folder: Path, preset: str, n: int = 16, max_tokens: int = 64):
    """bench/bench_batch.py's table (1 vs n concurrent requests, exact and fast modes) on a preset."""
    import statistics
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_batch import PresetRunner, run_batch
    from minirs.load import load_model
    model = load_model(folder / f"{preset}.gguf", device="cuda")
    rows = []
    for mode in ("exact", "fast"):
        runner = PresetRunner(preset, "cuda", n, mode == "exact", model=model)
        run_batch(runner, 1, 4)
        run_batch(runner, n, 4)  # captures the graphs of every bucket
        single = statistics.median(run_batch(runner, 1, max_tokens) for _ in range(3))
        batch = statistics.median(run_batch(runner, n, max_tokens) for _ in range(3))
        rows.append((mode, single, batch))
        runner.shutdown()
    out = [f"\n{preset} on cuda (engine, greedy), {max_tokens} tokens per request, median of 3",
           f"| mode | 1 request (tok/s) | {n} concurrent (total tok/s) | speed-up |", "| --- | --- | --- | --- |"]
    out += [f"| {m} | {a:.1f} | {b:.1f} | {b / a:.2f}x |" for m, a, b in rows]
    log("\n".join(out))
    del model
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--bench-presets", default="smollm2-135m,gemma3-270m,llama-7b-q4_0,llama-7b-q4_k")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/minirs-models"))
    ap.add_argument("--no-batch", action="store_true", help="skip the batched-engine checks and batch bench")
    ap.add_argument("--no-micro", action="store_true", help="skip the kernel micro timings")
    ap.add_argument("--profile", action="store_true", help="profile a 7B pp512 forward by op")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(time.time()))
    t0 = time.time()
    for name, fn in [("kernels", None if args.no_kernels else lambda: kernel_checks(rng))]:
        if fn is None:
            continue
        try:
            t = time.time()
            fn()
            log(f"# {name} checks took {time.time() - t:.1f} s")
        except Exception:
            log(f"FAIL {name} checks raised:\n{traceback.format_exc()}")
            SUMMARY.append((name, float("nan"), 0, False))
    batch_out = ""
    for name, fn in [("batched engine", lambda: batched_checks(args.dir, ["smollm2-135m", "llama-7b-q4_0"])),
                     ("batch bench", lambda: batch_bench(args.dir, "llama-7b-q4_0"))]:
        if args.no_batch:
            break
        try:
            t = time.time()
            r = fn()
            batch_out = r or batch_out
            log(f"# {name} took {time.time() - t:.1f} s")
        except Exception:
            log(f"FAIL {name} raised:\n{traceback.format_exc()}")
            SUMMARY.append((name, float("nan"), 0, False))
    bench_out = ""
    if args.bench_presets:
        from minirs import bench
        rows = []
        bw = bench.copy_bandwidth("cuda")
        log(f"# copy bandwidth {bw / 1e9:.0f} GB/s")
        for p in args.bench_presets.split(","):
            try:
                r = bench.bench_preset(p, "cuda", 512, 128, 3, args.dir, log=log)
                log(f"# {p}: {r}")
                rows.append(r)
            except Exception:
                log(f"FAIL bench {p}:\n{traceback.format_exc()}")
        bench_out = bench.table(rows, bw, 512, 128)
        log(bench_out)
        for r in rows:
            log(f"# {r['preset']}: load {r['load_s']:.1f} s, graph step alone {r.get('step_ms_graph_only', 0):.2f} ms")
    try:
        if not args.no_micro:
            micro_timings()
    except Exception:
        log(f"FAIL micro timings:\n{traceback.format_exc()}")
    if args.bench_presets and args.profile:
        try:
            prefill_profile(args.dir, "llama-7b-q4_0")
        except Exception:
            log(f"FAIL prefill profile:\n{traceback.format_exc()}")
    if not args.no_models:
        try:
            t = time.time()
            model_checks(args.dir, ["smollm2-135m", "gemma3-270m"])
            log(f"# models checks took {time.time() - t:.1f} s")
        except Exception:
            log(f"FAIL models checks raised:\n{traceback.format_exc()}")
            SUMMARY.append(("models", float("nan"), 0, False))
    log(f"\n# total {time.time() - t0:.0f} s; {sum(not s[3] for s in SUMMARY)} failed of {len(SUMMARY)} checks")
    for name, err, tol, ok in SUMMARY:
        if not ok:
            log(f"FAILED: {name} {err:.2e} > {tol:.0e}")
    log(bench_out)
    log(batch_out)


if __name__ == "__main__":
    main()
