"""Batched decode throughput: 1 request alone vs N concurrent requests through one Runner, total decode tok/s.

    python bench/bench_batch.py                                  # SmolLM2-135M Q4_1 on the CPU, 1 vs 16
    python bench/bench_batch.py --device cuda --gguf model.gguf   # any GGUF with a tokenizer, on the GPU
    python bench/bench_batch.py --device cuda --preset llama-7b-q4_0   # random weights, 7B shape (engine level)
    python bench/bench_batch.py --modes exact,fast --repeat 3 --threads 1

Every request is a short chat prompt with greedy decoding of --max-tokens tokens (no stop: the EOS id is
biased away). Throughput = all tokens generated / wall time from submitting the requests to the last one's end
(prefill included, the same way in both columns); the table reports the median over --repeat runs. Modes:
`exact` is row_invariant=True (each row computed as if alone: greedy output identical alone and batched),
`fast` is row_invariant=False (one forward per step for the whole batch). On CUDA both modes decode through
CUDA graphs padded to a few batch sizes (engine.GRAPH_BUCKETS); they differ in how prefill chunks run.
"""

import argparse
import statistics
import threading
import time
from pathlib import Path

import numba


def run_batch(runner, n: int, max_tokens: int) -> float:
    """Total generated tok/s of n concurrent greedy requests."""
    from minirs import ChatCompletionRequest
    eos = runner.tokenizer.eos_ids
    results = [None] * n

    def go(i):
        req = ChatCompletionRequest(messages=[{"role": "user", "content": f"Write a long story, part {i}."}],
                                    max_tokens=max_tokens, logit_bias={e: -100.0 for e in eos})
        results[i] = runner.send_chat_completion_request(req, timeout=3600).usage
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(u.completion_tokens for u in results) / (time.perf_counter() - t0)


def time_split(runner, n: int, max_tokens: int) -> str:
    """Where the wall time of n concurrent requests goes: eager forwards (prefill chunks; on the CPU every
    step), CUDA-graph decode steps (each synchronized: GPU time plus launch), and the rest (the engine's host
    work: scheduling, sampling bookkeeping, threads)."""
    model = runner.engine.model
    be = model.backend
    spent = {"prefill": [0.0, 0], "decode": [0.0, 0]}

    def timed(kind, fn):
        def call(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            be.synchronize()
            spent[kind][0] += time.perf_counter() - t
            spent[kind][1] += 1
            return out
        return call
    mr = runner.engine.runner  # the engine's ModelRunner: eager forwards and captured decode steps
    mr.forward, mr.decode = timed("prefill", mr.forward), timed("decode", mr.decode)
    try:
        t0 = time.perf_counter()
        rate = run_batch(runner, n, max_tokens)
        wall = time.perf_counter() - t0
    finally:
        del mr.forward, mr.decode
    rest = wall - spent["prefill"][0] - spent["decode"][0]
    (ef, ne), (gs, ng) = spent["prefill"], spent["decode"]
    return (f"{n} requests: {rate:.1f} tok/s, wall {wall * 1e3:.1f} ms = eager forwards {ef * 1e3:.1f} ms ({ne}) "
            f"+ graph steps {gs * 1e3:.1f} ms ({ng}, {gs * 1e3 / max(1, ng):.2f} ms each) + host {rest * 1e3:.1f} ms")


class _Ids:
    """A tokenizer stand-in for random-weight presets (they have none): ids decode to nothing."""
    eos_ids = ()

    def stream_decoder(self, skip_special_tokens=False):
        class D:
            def feed(self, t):
                return ""

            def flush(self):
                return ""
        return D()


class PresetRunner:
    """Drives the Engine directly with random prompt ids; quacks like Runner for run_batch."""

    def __init__(self, preset: str, device: str, max_seqs: int, row_invariant: bool, model=None):
        import tempfile

        from minirs.engine import Engine
        from minirs.load import load_model
        from minirs.models.synthetic import write_random_gguf
        if model is None:  # a model already loaded (of that preset) may be passed in, e.g. one per mode
            # the folder goes once the model is loaded: the model maps the file, and the mapping outlives the
            # unlink (POSIX); the disk space comes back when the model is freed, even if the run crashes
            with tempfile.TemporaryDirectory(prefix="minirs-bench-") as tmp:
                model = load_model(write_random_gguf(Path(tmp) / f"{preset}.gguf", preset, seed=0), device=device)
        self.model = model
        self.tokenizer = _Ids()
        self.engine = Engine(self.model, self.tokenizer, max_seqs=max_seqs, row_invariant=row_invariant)

    def send_chat_completion_request(self, req, timeout=None):
        import numpy as np

        from minirs.engine import GenParams, Job
        ids = list(np.random.default_rng(0).integers(0, self.model.config.vocab_size, 32))
        job = self.engine.submit(Job(ids, GenParams(max_tokens=req.max_tokens), self.tokenizer)).wait(timeout)

        class U:
            completion_tokens = len(job.seqs[0].generated)
        return type("R", (), {"usage": U})

    def shutdown(self):
        self.engine.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=str, default=None, help="GGUF path (default: the SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--preset", type=str, default=None, help="a random-weight preset of minirs.models.synthetic "
                    "(e.g. llama-7b-q4_0) instead of a GGUF")
    ap.add_argument("--device", type=str, default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent requests in the batched run")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    ap.add_argument("--modes", type=str, default="exact,fast", help="comma list of exact / fast")
    ap.add_argument("--threads", type=int, default=0, help="Numba threads (0: leave as is); the forward uses no BLAS")
    ap.add_argument("--split", action="store_true", help="also print where the time of 1 and N requests goes")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    from minirs import Runner, Which
    from minirs.fetch import smollm2_path
    path = Path(args.gguf) if args.gguf else None if args.preset else smollm2_path()
    name = args.preset or path.name
    rows = []
    model = None
    for mode in args.modes.split(","):
        if args.preset:
            runner = PresetRunner(args.preset, args.device, max(16, args.concurrency), mode == "exact", model)
            model = runner.model  # loaded once for all modes
        else:
            runner = Runner(Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name),
                            max_seqs=max(16, args.concurrency), device=args.device, row_invariant=(mode == "exact"))
        run_batch(runner, 1, 4)  # warm-up (JIT, caches; on CUDA the graphs of each batch size)
        run_batch(runner, args.concurrency, 4)
        single = statistics.median(run_batch(runner, 1, args.max_tokens) for _ in range(args.repeat))
        batch = statistics.median(run_batch(runner, args.concurrency, args.max_tokens) for _ in range(args.repeat))
        rows.append((mode, single, batch))
        if args.split:
            for k in (1, args.concurrency):
                print(f"{mode}: {time_split(runner, k, args.max_tokens)}")
        runner.shutdown()
    dev = rows and runner.model.backend.name
    print(f"\n{name} on {dev}, {args.max_tokens} tokens per request, median of {args.repeat}\n")
    print(f"| mode | 1 request (tok/s) | {args.concurrency} concurrent (total tok/s) | speed-up |")
    print("| --- | --- | --- | --- |")
    for mode, single, batch in rows:
        print(f"| {mode} | {single:.1f} | {batch:.1f} | {batch / single:.2f}x |")


if __name__ == "__main__":
    main()
