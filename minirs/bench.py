"""llama-bench-style speed table on random-weight models with real shapes.

    python -m minirs.bench --device cuda --preset llama-7b-q4_0 --preset smollm2-135m
    python -m minirs.bench --device cpu --preset smollm2-135m --pp 64 --tg 16

For each preset it writes a random-weight GGUF (models/synthetic.py; speed does not depend on weight values)
into a temporary folder deleted at the end (`--dir FOLDER` keeps the files there and reuses them next time),
loads it, and measures pp (one prefill forward of N tokens) and tg (N greedy decode steps from an empty
context, one token each; on CUDA the decode step is a replayed CUDA graph and only token ids come back).
GB/s is the weight bytes a decode token reads (every matrix but the embedding table, unless it is tied to the
output) over the time per token, and "% copy" compares it with a device copy measured here (bytes read +
written, as ANCHORS.md counts it).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minirs.models.synthetic import PRESETS, write_random_gguf


class _Clock:
    """Host timer that waits for the device first (CUDA) so the time covers the queued work."""

    def __init__(self, backend):
        self.backend = backend

    def now(self) -> float:
        self.backend.synchronize()
        return time.perf_counter()


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large device-to-device (or RAM) copy."""
    n = 1 << 28  # 256 MiB
    if device == "cuda":
        import cupy as cp
        a, b = cp.ones(n, cp.uint8), cp.empty(n, cp.uint8)
        for _ in range(3):
            b[...] = a
        ev0, ev1 = cp.cuda.Event(), cp.cuda.Event()
        ev0.record()
        for _ in range(10):
            b[...] = a
        ev1.record()
        ev1.synchronize()
        return 2 * n * 10 / (cp.cuda.get_elapsed_time(ev0, ev1) / 1e3)
    a, b = np.ones(n, np.uint8), np.empty(n, np.uint8)
    np.copyto(b, a)
    t = time.perf_counter()
    for _ in range(3):
        np.copyto(b, a)
    return 2 * n * 3 / (time.perf_counter() - t)


def decode_bytes(mf, cfg) -> int:
    """Weight bytes read per decode token: every 2-D tensor except an untied token embedding table, and the
    n_experts_used / n_experts share of the stacked MoE experts (3-D) that one token's routing reads."""
    tied = "output.weight" not in mf.tensors
    dense = sum(t.nbytes for name, t in mf.tensors.items()
                if len(t.shape) == 2 and (name != "token_embd.weight" or tied))
    experts = sum(t.nbytes for t in mf.tensors.values() if len(t.shape) == 3)
    return dense + (experts * cfg.n_experts_used // cfg.n_experts if cfg.n_experts else 0)


def bench_preset(preset: str, device: str, pp: int, tg: int, reps: int, folder: Path, log=print) -> dict:
    import gc

    from minirs.engine import ModelRunner
    from minirs.engine.kv_cache import KVCache
    from minirs.formats import load_model_file
    from minirs.load import get_backend, load
    gc.collect()  # an earlier preset's model (held in cycles through its backend's graphs) frees its GPU memory
    path = folder / f"{preset}.gguf"
    if not path.exists():
        t = time.perf_counter()
        write_random_gguf(path, preset)
        log(f"# wrote {path} in {time.perf_counter() - t:.1f} s")
    mf = load_model_file(path)
    be = get_backend(device)
    clock = _Clock(be)
    t0 = clock.now()
    model = load(mf, backend=be, tokenizer=False).model
    load_s = clock.now() - t0
    cfg = model.config
    spare = 1 if be.graphs and be.prefill_graphs else None  # the slot a captured prefill runs in (runner.py)
    cache = KVCache(cfg, be, 1 + (spare is not None), pp + tg + 8, max(pp, 1))
    runner = ModelRunner(model, cache, spare_slot=spare)
    rng = np.random.default_rng(0)
    res = {"preset": preset, "device": device, "size": path.stat().st_size, "load_s": load_s}
    if device == "cuda":
        import cupy as cp
        res["gpu_bytes"] = cp.get_default_memory_pool().used_bytes()
        res["kv_bytes"] = cache.nbytes

    if pp:
        ids = rng.integers(0, cfg.vocab_size, pp)
        slots, pos = np.zeros(pp, np.int64), np.arange(pp, dtype=np.int64)
        times = []
        for _ in range(reps + 1):  # the first run compiles and warms up
            t = clock.now()
            runner.forward(ids, slots, pos, [pp - 1])  # a captured prefill where the backend has graphs
            times.append(clock.now() - t)
        res["pp_tps"] = pp / float(np.median(times[1:]))
        log(f"# {preset} pp{pp}: {res['pp_tps']:,.0f} tok/s (first run, compiles included: {times[0]:.2f} s)")

    if tg:
        greedy = [(0.0, 1, 1.0, 0.0, 0.0)] if runner.device_sampling else None

        def decode(tok, p):  # one greedy step: the argmax on the device where the backend can
            out = runner.decode([tok], [0], [p], greedy)
            return int(out[0]) if greedy else int(np.argmax(out[0]))

        tok = 1
        for p in range(min(4, tg)):  # warm-up (and graph capture)
            tok = decode(tok, p)
        times = []
        for _ in range(reps):
            tok = 1
            t = clock.now()
            for p in range(tg):
                tok = decode(tok, p)
            times.append(clock.now() - t)
        res["tg_tps"] = tg / float(np.median(times))
        log(f"# {preset} tg{tg}: {res['tg_tps']:,.1f} tok/s")
        if be.graphs:  # the device time of one step alone: replays back to back, no host round trip
            step, reps_g = runner.captured(1, "argmax"), 50
            t = clock.now()
            for _ in range(reps_g):
                step.replay()
            res["step_ms_graph_only"] = (clock.now() - t) / reps_g * 1e3
            log(f"# {preset} one step replayed back to back (no host round trip): {res['step_ms_graph_only']:.3f} ms; "
                f"with it: {1e3 / res['tg_tps']:.3f} ms")
        res["gbps"] = decode_bytes(mf, cfg) * res["tg_tps"] / 1e9
    return res


def table(rows: list[dict], copy_bw: float, pp: int, tg: int) -> str:
    out = ["| model | size | device | test | t/s | weights GB/s | % of copy BW |",
           "| --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        size = f"{r['size'] / 2**20:.0f} MiB"
        if "pp_tps" in r:
            out.append(f"| {r['preset']} | {size} | {r['device']} | pp{pp} | {r['pp_tps']:,.0f} | | |")
        if "tg_tps" in r:
            out.append(f"| {r['preset']} | {size} | {r['device']} | tg{tg} | {r['tg_tps']:,.1f} | "
                       f"{r['gbps']:,.0f} | {100 * r['gbps'] * 1e9 / copy_bw:.0f}% |")
    return "\n".join(out)


def run(args: argparse.Namespace, folder: Path) -> int:
    """Bench the presets of `args` with their GGUF files in `folder`; print the table."""
    from minirs.load import get_backend
    device = get_backend(args.device).name
    copy_bw = copy_bandwidth(device)
    print(f"# device {device}: copy bandwidth {copy_bw / 1e9:,.0f} GB/s (read + write)", file=sys.stderr)
    rows = []
    for preset in args.preset or ["smollm2-135m"]:
        r = bench_preset(preset, device, args.pp, args.tg, args.reps, folder,
                         log=lambda s: print(s, file=sys.stderr))
        extra = ""
        if "gpu_bytes" in r:
            extra = f", GPU memory {r['gpu_bytes'] / 2**30:.2f} GiB (KV {r['kv_bytes'] / 2**20:.0f} MiB)"
        print(f"# {preset}: loaded in {r['load_s']:.2f} s{extra}", file=sys.stderr)
        rows.append(r)
    print(table(rows, copy_bw, args.pp, args.tg))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Prefill / decode speed on random-weight models with real shapes.")
    ap.add_argument("--preset", action="append", choices=sorted(PRESETS),
                    help="model shape to bench (repeatable; default smollm2-135m)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="backend (default auto)")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens in the prefill test (0 = skip)")
    ap.add_argument("--tg", type=int, default=128, help="decode steps in the generation test (0 = skip)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions, median reported")
    ap.add_argument("--dir", type=Path, default=None, help="keep the GGUF files in this folder and reuse them on "
                    "later runs (default: a temporary folder, deleted at the end)")
    args = ap.parse_args(argv)
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        return run(args, args.dir)
    with tempfile.TemporaryDirectory(prefix="minirs-bench-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
