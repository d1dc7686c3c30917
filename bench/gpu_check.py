"""One call on the GPU machine: the llama-bench-style table (minirs.bench) for several presets, kernel micro
timings, a GEMV block-shape sweep, a by-op profile of a 7B prefill, and the batched engine (exactness alone vs
batched, and bench_batch's throughput table). Prints a short summary last; logs go to $OUT (or ./gpu_out).
Correctness of every kernel and model is checked by the tests (`pytest tests/test_cuda*.py`), not here.
The random-weight GGUFs stay in --dir (default /tmp/minirs-models), reused by later runs.

    PYTHONUNBUFFERED=1 python bench/gpu_check.py [--bench-presets a,b] [--no-batch] [--no-micro] [--sweep] [--profile]
    python bench/gpu_check.py --bench-presets "" --no-batch --no-micro --sample   # the sampling timings alone
"""

import argparse
import itertools
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

warnings.filterwarnings("ignore", message=".*under-utilization.*")
OUT = Path(os.environ.get("OUT", "gpu_out"))
OUT.mkdir(parents=True, exist_ok=True)
LOG = open(OUT / "gpu_check.log", "w")
SUMMARY = []
ATT_CHUNKS = [int(c) for c in os.environ.get("ATT_CHUNKS", "0").split(",")]  # decode attention: fewest keys per block
ATT_WARPS = [int(c) for c in os.environ.get("ATT_WARPS", "0").split(",")]  # and warps per block (0: the default)


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


def graph_time(stream, fn, reps=20) -> float:
    """Microseconds per fn() replayed from a CUDA graph of reps calls (launch cost excluded), median-free mean
    over 5 replays after a warm-up."""
    import cupy as cp
    fn()
    stream.synchronize()
    stream.begin_capture()
    for _ in range(reps):
        fn()
    g = stream.end_capture()
    g.launch(stream)
    stream.synchronize()
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    e0.record(stream)
    for _ in range(5):
        g.launch(stream)
    e1.record(stream)
    e1.synchronize()
    return cp.cuda.get_elapsed_time(e0, e1) * 1e3 / (5 * reps)


def _weights(qt, n_out, n_in, rng, copies=3):
    from minirs.formats.model_file import Tensor
    from minirs.kernels.cuda.weights import GMatrix
    from minirs.models.synthetic import random_tensor_bytes
    return [GMatrix.from_tensor(Tensor("w", qt, (n_out, n_in), random_tensor_bytes(qt, (n_out, n_in), rng)
                                       .reshape(-1))) for _ in range(copies)]


def gemv_sweep():
    """The quantized GEMV for several block shapes (nw warps x tt tokens per block, mmvq.gemv_kernels) on
    the shapes of the presets' matrices; the model uses nw = mmvq.gemv_warps(w) and tt = 1 for
    one token, TT for more. Weight copies rotate past the L2 cache."""
    import cupy as cp

    from minirs.kernels.cuda import mmvq
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.kernels.cuda.quantize import quantize
    be = CudaBackend()
    rng = np.random.default_rng(0)
    shapes = [("Q4_0", 6144, 4096), ("Q4_0", 4096, 4096), ("Q4_0", 28672, 4096), ("Q4_0", 4096, 14336),
              ("Q4_K", 28672, 4096), ("Q4_K", 4096, 14336), ("Q6_K", 32000, 4096), ("Q4_1", 960, 576),
              ("Q4_1", 576, 576),
              ("Q4_1", 3072, 576), ("Q4_1", 576, 1536), ("Q4_1", 49152, 576)]
    variants = {1: [(1, 1), (2, 1), (3, 1), (4, 1), (6, 1), (8, 1)], 4: [(1, 4), (2, 4)], 16: [(1, 4), (2, 4), (4, 4)],
                32: [(1, 4), (2, 4)]}
    only = os.environ.get("SWEEP_N")  # e.g. SWEEP_N=4,16: those batch sizes only
    if only:
        variants = {n: v for n, v in variants.items() if str(n) in only.split(",")}
    for n, vs in variants.items():
        log(f"GEMV sweep, n = {n} (us per call; nw warps x tt tokens per block; the model's choice marked *)")
        log("| matrix | " + " | ".join(f"{nw}x{tt}" for nw, tt in vs) + " |")
        for qt, n_out, n_in in shapes:
            ws = _weights(qt, n_out, n_in, rng)
            xq, xd, xs = quantize(cp.asarray(rng.standard_normal((n, n_in)).astype(np.float32)), be.nbs)
            y = cp.empty((n, n_out), cp.float32)
            cells = []
            for nw, tt in vs:
                t = graph_time(be.stream, _sweep_call(ws, nw, tt, (xq.view(cp.int64), xd, xs), y, be.nbs))
                mark = "*" if nw == mmvq.gemv_warps(ws[0]) else ""
                cells.append(f"{t:.1f}{mark}")
            log(f"| {qt} {n_out}x{n_in} | " + " | ".join(cells) + " |")
            ws = None


_SWEEP_KERNELS = {}


MMA_SHAPES = [("Q4_0", 6144, 4096), ("Q4_0", 4096, 4096), ("Q4_0", 28672, 4096), ("Q4_0", 4096, 14336),
              ("Q6_K", 32000, 4096), ("Q4_K", 28672, 4096), ("Q4_1", 960, 576), ("Q4_1", 3072, 576),
              ("Q4_1", 576, 1536), ("Q8_0", 49152, 576)]


def mma_timings():
    """Replayed us of the dp4a and the tensor-core GEMV (cuda/mma.py) for 7B and SmolLM2 shapes and n tokens
    (MMA_N, default 1,2,4,8,16,32), each given its input form; MMA_WAVE: values of mma.MMA_WAVE to time."""
    import cupy as cp

    from minirs.kernels.cuda import matmul as cm
    from minirs.kernels.cuda import mma
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.kernels.cuda.mma import mma_splits
    from minirs.kernels.cuda.quantize import quantize, to_half
    be = CudaBackend()
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    rng = np.random.default_rng(0)
    ns = [int(v) for v in os.environ.get("MMA_N", "1,2,4,8,16,32").split(",")]
    waves = [int(v) for v in os.environ.get("MMA_WAVE", str(mma.MMA_WAVE)).split(",")]
    log(f"# GEMV us, dp4a / tensor cores (K splits), n = {ns}, MMA_WAVE = {waves}")
    for (qt, n_out, n_in), wave in itertools.product(MMA_SHAPES, waves):
        mma.MMA_WAVE = wave
        ws = _weights(qt, n_out, n_in, rng)
        row = []
        for n in ns:
            x = cp.asarray(rng.standard_normal((n, n_in)).astype(np.float32))
            xq = quantize(x, be.nbs)
            xh = to_half(x, be.nbs)  # the tensor cores' form, as the op before a GEMV writes it
            y = cp.empty((n, n_out), cp.float32)
            it = itertools.count()
            t = [graph_time(be.stream, lambda: cm._gemv(ws[next(it) % 3], x, f, y, be.nbs, False, cm._no_ep(), m))
                 for m, f in ((0, xq), (1, xh))]
            row.append(f"{n}: {t[0]:.1f}/{t[1]:.1f}")
        log(f"{qt} {n_out}x{n_in} (S{mma_splits(n_out, n_in, sms)}, wave {wave}): "
            + ", ".join(row))


def _sweep_call(ws, nw, tt, xquant, y, stream):
    """A call of one GEMV variant that takes the next of the weight copies each time."""
    import math

    import cupy as cp
    from numba import cuda

    from minirs.kernels.cuda import mmvq as cm
    from minirs.kernels.cuda.matmul import _no_ep
    it = iter(range(10**9))
    xq, xd, xs = xquant
    n, n_out = y.shape
    grid, threads = math.ceil(n_out / cm.R) * math.ceil(n / tt), 32 * nw
    w0 = ws[0]
    key = cm.gemv_name(f"gemv_{w0.family}", w0, nw, tt)
    if key not in _SWEEP_KERNELS:
        flags = dict(has_h=w0.has_h, has_m=w0.has_m) if w0.family == "q45" else dict(g16=w0.g == 16, has_m=w0.has_m)
        fn = cm.gemv_kernels(nw, tt, **flags)[f"gemv_{w0.family}"]
        _SWEEP_KERNELS[key] = cuda.jit(cm._GEMV_SIGS[f"gemv_{w0.family}"])(fn)
    kernel = _SWEEP_KERNELS[key]

    ep = _no_ep()  # no attention epilogue

    def call():
        w = ws[next(it) % len(ws)]
        if w.family == "q45":
            kernel[grid, threads, stream](w.q.view(cp.int64), w.h, w.d, w.m, xq, xd, xs, y, w.off, False, *ep)
        else:
            kernel[grid, threads, stream](w.q.view(cp.int64), w.d, w.m, xq, xd, xs, y, False, *ep)
    return call


def micro_timings():
    """Kernel times replayed from a graph (launch cost excluded), 7B shapes, rotating weight copies past L2."""
    import cupy as cp

    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.kernels.cuda.matmul import gmatmul
    from minirs.kernels.cuda.quantize import quantize

    be = CudaBackend()
    rng = np.random.default_rng(0)
    s = be.stream

    def timed(name, fn, nbytes, reps=20):
        us = graph_time(s, fn, reps)
        log(f"time {name:44s} {us:8.1f} us  {nbytes / us / 1e3:7.0f} GB/s")

    for qt, (n_out, n_in) in [("Q4_0", (14336, 4096)), ("Q4_0", (4096, 14336)), ("Q4_0", (6144, 4096)),
                              ("Q4_K", (14336, 4096)), ("Q6_K", (32000, 4096)), ("Q8_0", (49152, 576)),
                              ("Q4_1", (1536, 576))]:
        ws = _weights(qt, n_out, n_in, rng)
        x = cp.asarray(rng.standard_normal((1, n_in)).astype(np.float32))
        xqt = quantize(x, be.nbs)
        it = iter(range(10**9))
        timed(f"gemv {qt} {n_out}x{n_in}", lambda: gmatmul(ws[next(it) % 3], x, be.nbs, xqt), ws[0].nbytes)
        ws = None
    x = cp.asarray(rng.standard_normal((1, 4096)).astype(np.float32))
    timed("quantize_x 4096", lambda: quantize(x, be.nbs), 4096 * 5)
    w = cp.asarray(np.ones(4096, np.float32))
    timed("rmsnorm_q 4096 (norm + int8 x)", lambda: be.rmsnorm(x, w, 1e-5), 4096 * 13)
    gu = cp.asarray(rng.standard_normal((1, 2 * 14336)).astype(np.float32))
    timed("gated_act_q 14336 (fused gate_up views)", lambda: be.gated_act(gu[:, :14336], gu[:, 14336:], "silu"),
          14336 * 13)
    qkv = cp.asarray(rng.standard_normal((1, 6144)).astype(np.float32))
    kc = cp.zeros((1, 8, 648, 128), cp.float16)
    inv = cp.asarray(1.0 / 10000.0 ** (np.arange(0, 128, 2) / 128))
    sl, ps = cp.zeros(1, cp.int64), cp.full(1, 100, cp.int64)
    timed("attn_inputs 32/8x128 (rope + cache write)",
          lambda: be._attn_inputs(qkv[:, :4096], qkv[:, 4096:5120], qkv[:, 5120:], (None,) * 3, None, 1e-5, ps, inv,
                                 True, kc, kc, sl), 6144 * 8)
    wq = _weights("Q4_0", 6144, 4096, rng)
    xq1 = cp.asarray(rng.standard_normal((1, 4096)).astype(np.float32))
    it = iter(range(10**9))
    timed("qkv GEMV 6144x4096 Q4_0 + rope/cache epilogue",
          lambda: be.qkv_attn_inputs(wq[next(it) % 3], xq1, 4096, 1024, (None,) * 3, None, 1e-5, ps, inv, False, kc,
                                     kc, sl), wq[0].nbytes)
    wq = None
    chunk, warps = be.att_chunk, be.att_warps
    for (h, hkv, d), L, ctx in [((32, 8, 128), 648, 128), ((32, 8, 128), 648, 640), ((32, 8, 128), 4100, 128),
                                ((32, 8, 128), 4100, 1024), ((32, 8, 128), 4100, 4096), ((9, 3, 64), 648, 32),
                                ((9, 3, 64), 648, 64), ((9, 3, 64), 648, 128), ((9, 3, 64), 648, 640),
                                ((4, 1, 256), 648, 64), ((4, 1, 256), 648, 128)]:
        kc = cp.asarray(rng.standard_normal((1, hkv, L, d)).astype(np.float16))
        q = cp.asarray(rng.standard_normal((1, h, d)).astype(np.float32))
        sl, ps = cp.zeros(1, cp.int64), cp.full(1, ctx - 1, cp.int64)
        for c, w in itertools.product(ATT_CHUNKS, ATT_WARPS):
            be.att_chunk, be.att_warps = c or chunk, w or warps
            timed(f"attention decode {h}/{hkv}x{d} L={L} ctx {ctx} chunk {be.att_chunk} warps {be.att_warps}",
                  lambda: be.attention(q, kc, kc, sl, ps, 0, 0.088, 0.0), ctx * hkv * d * 4)
    be.att_chunk, be.att_warps = chunk, warps
    # prefill pieces, 7B shapes, 512 tokens (eager, as prefill runs; events around 5 runs)
    from minirs.kernels.cuda.blas import gemm_nt
    from minirs.kernels.cuda.dequant import dequant_f16

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

    for qt in ("Q4_0", "Q4_K", "Q6_K"):
        w = _weights(qt, 14336, 4096, rng, copies=1)[0]
        evtime(f"prefill dequant {qt} 14336x4096 -> f16", lambda: dequant_f16(w, be.nbs))
    x512 = cp.asarray(rng.standard_normal((512, 4096)).astype(np.float32))
    wf = dequant_f16(w, be.nbs)
    xh = x512.astype(cp.float16)
    y512 = cp.empty((512, 14336), cp.float32)
    evtime("prefill cuBLAS 512x4096 @ 4096x14336 f16->f32", lambda: gemm_nt(xh, wf, y512, False))
    evtime("prefill gmatmul Q6_K 14336x4096 n=512 (all)", lambda: gmatmul(w, x512, be.nbs))
    kc = cp.asarray(rng.standard_normal((1, 8, 520, 128)).astype(np.float16))
    q = cp.asarray(rng.standard_normal((512, 32, 128)).astype(np.float32))
    sl, ps = np.zeros(512, np.int64), np.arange(512, dtype=np.int64)
    evtime("prefill attention 512 tok 32/8x128 (cuBLAS)", lambda: be.attention(q, kc, kc, sl, ps, 0, 0.088, 0.0))
    evtime("prefill attention 512 tok 32/8x128 (kernel)",
           lambda: be.attention(q, kc, kc, cp.asarray(sl), cp.asarray(ps), 0, 0.088, 0.0))


def sample_timings():
    """GPU sampling (cuda/sample.py's two kernels), replayed from a graph: vocabularies of SmolLM2 and Gemma-3, 1 and
    16 rows, top-k 40 + top-p 0.9, top-p 0.9 alone, no filter (temperature 0.8, logits ~ N(0, 3^2)); how many rows
    the GPU decided (the rest go to the host)."""
    import cupy as cp

    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.sampling.rows import pack

    be = CudaBackend()
    rng = np.random.default_rng(0)
    for V, n, k, p in itertools.product((49152, 262144), (1, 16), (40, 0), (0.9, 1.0)):
        if k and p == 1.0:
            continue
        x = cp.asarray(rng.standard_normal((n, V)).astype(np.float32) * 3)
        prm = cp.asarray(pack(np.full(n, 0.8), np.full(n, k), np.full(n, p), np.zeros(n), rng.random(n)))
        us = graph_time(be.stream, lambda x=x, prm=prm: be.sample_ids(x, prm))
        decided = int((be.sample_ids(x, prm) >= 0).sum())
        log(f"time sample V={V} n={n} top_k {k} top_p {p}: {us:8.1f} us  ({decided} of {n} rows decided)")


def prefill_profile(folder: Path, preset: str):
    """Where a pp512 forward spends its time: whole forward, and by op (host timer after a sync per op)."""
    import time as _t

    from minirs.engine.kv_cache import KVCache
    from minirs.formats import load_model_file
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.load import load_model

    be = CudaBackend()
    model = load_model(load_model_file(folder / f"{preset}.gguf"), backend=be)
    cache = KVCache(model.config, be, 1, 648, 512)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 512)
    sl, ps = np.zeros(512, np.int64), np.arange(512, dtype=np.int64)
    totals = {}
    for name in ("matmul", "matmul_add_", "attention", "attn_inputs", "rmsnorm", "gated_act", "embed", "add_"):
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
    from minirs.engine import Engine, GenParams, Job
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf
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
    from bench_batch import PresetRunner, run_batch, time_split

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
        for k in (1, n):
            log(f"# {mode}: {time_split(runner, k, max_tokens)}")
        runner.shutdown()
    out = [f"\n{preset} on cuda (engine, greedy), {max_tokens} tokens per request, median of 3",
           f"| mode | 1 request (tok/s) | {n} concurrent (total tok/s) | speed-up |", "| --- | --- | --- | --- |"]
    out += [f"| {m} | {a:.1f} | {b:.1f} | {b / a:.2f}x |" for m, a, b in rows]
    log("\n".join(out))
    del model
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-presets", default="smollm2-135m,gemma3-270m,llama-7b-q4_0,llama-7b-q4_k")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/minirs-models"),
                    help="random-weight GGUFs are written here once and reused by later runs "
                    "(delete the folder to free the space)")
    ap.add_argument("--no-batch", action="store_true", help="skip the batched-engine checks and batch bench")
    ap.add_argument("--no-micro", action="store_true", help="skip the kernel micro timings")
    ap.add_argument("--sample", action="store_true", help="time GPU sampling (also part of the micro timings)")
    ap.add_argument("--sweep", action="store_true", help="time GEMV block shapes (warps x tokens per block)")
    ap.add_argument("--mma", action="store_true", help="time the tensor-core GEMVs against dp4a")
    ap.add_argument("--profile", action="store_true", help="profile a pp512 forward by op for each preset")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
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
    for flag, name, fn in [(not args.no_micro, "micro timings", micro_timings),
                           (args.sample or not args.no_micro, "sampling timings", sample_timings),
                           (args.sweep, "GEMV sweep", gemv_sweep),
                           (args.mma, "tensor-core GEMV", mma_timings),
                           (args.profile, "prefill profile", lambda: [prefill_profile(args.dir, p) for p in args.bench_presets.split(",")])]:
        if flag:
            try:
                fn()
            except Exception:
                log(f"FAIL {name}:\n{traceback.format_exc()}")
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
    log(f"\n# total {time.time() - t0:.0f} s; {sum(not s[3] for s in SUMMARY)} failed of {len(SUMMARY)} checks")
    for name, err, tol, ok in SUMMARY:
        if not ok:
            log(f"FAILED: {name} {err:.2e} > {tol:.0e}")
    log(bench_out)
    log(batch_out)


if __name__ == "__main__":
    main()
