"""Decode speed under a grammar: constrained (a JSON schema) against free decoding, 1 and N requests, and the cost of
one allowed-token mask.

    python bench/bench_grammar.py --threads 1                          # SmolLM2-135M Q4_1 on the CPU
    python bench/bench_grammar.py --device cuda                        # the same on the GPU
    python bench/bench_grammar.py --device cuda --preset llama-7b-q4_0 # random weights, 7B shape, SmolLM2's vocab

Every request decodes --max-tokens tokens greedily from a short chat prompt through the Engine (no stop ids, so
free rows run to max_tokens; the schema asks for at least 100 array items, so constrained rows do too): on the GPU
both kinds go through the captured decode step and its argmax, the constrained ones with their masks as a step
input. A preset model (random weights) gets SmolLM2's tokenizer and a vocabulary of its size, so the masks are the
real tokenizer's. Decode rate = tokens after each request's first / (last end - last first token), the median
over --repeat runs. On the host path the masks are computed on a worker thread while the forward runs; the
"no overlap" row computes them before the forward instead. "mask" is llguidance's time for one sequence's mask
(replaying a constrained run's tokens), median and 99th percentile, and "engine mask time" the engine thread's
time spent on masks per step (what the forward did not hide).
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

SCHEMA = {"type": "object", "required": ["items"], "properties": {"items": {
    "type": "array", "minItems": 100, "items": {
        "type": "object", "required": ["id", "name", "tags"], "additionalProperties": False,
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 100000},
                       "name": {"type": "string", "maxLength": 24},
                       "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}}}}}}}
GRAMMAR = ("json_schema", json.dumps(SCHEMA))


def load(args):
    """(model, tokenizer): the GGUF with its tokenizer, or a random preset with SmolLM2's tokenizer."""
    from minirs.fetch import smollm2_path
    from minirs.load import load as load_path
    from minirs.load import load_model
    from minirs.models.synthetic import PRESETS, write_random_gguf
    from minirs.tokenizer import Tokenizer
    if not args.preset:
        loaded = load_path(args.gguf or str(smollm2_path()), device=args.device)
        return loaded.model, loaded.tokenizer
    tok = Tokenizer.from_gguf(smollm2_path())

    preset = dataclasses.replace(PRESETS[args.preset], vocab=tok.vocab_size)
    with tempfile.TemporaryDirectory(prefix="minirs-bench-") as tmp:  # the mapping outlives the unlink
        model = load_model(write_random_gguf(Path(tmp) / "m.gguf", preset, seed=0), device=args.device)
    return model, tok


def prompt_ids(tok, i: int) -> list[int]:
    msgs = [{"role": "user", "content": f"List products {i} as JSON."}]
    if tok.chat_template is None:
        return tok.encode(msgs[0]["content"], add_special_tokens=True)
    return tok.encode(tok.apply_chat_template(msgs), add_special_tokens=False, parse_special=True)


def run(engine, tok, n: int, max_tokens: int, grammar) -> tuple[float, list]:
    """Decode tok/s of n concurrent greedy requests, and their jobs."""
    from minirs.engine import GenParams, Job
    jobs = [engine.submit(Job(prompt_ids(tok, i), GenParams(max_tokens=max_tokens, grammar=grammar), tok))
            for i in range(n)]
    for j in jobs:
        j.wait(3600)
    tokens = sum(len(j.seqs[0].generated) - 1 for j in jobs)
    return tokens / (max(j.t_end for j in jobs) - max(j.t_prompt_done for j in jobs)), jobs


def mask_times(tok, jobs, vocab: int) -> list[float]:
    """Seconds per mask, replaying each job's tokens through a fresh matcher."""
    from minirs.grammar import Constraint, compile_grammar
    g = compile_grammar(*GRAMMAR, tok)
    out = []
    for j in jobs:
        c = Constraint(g)
        for t in j.seqs[0].generated:
            t0 = time.perf_counter()
            c.mask(vocab)
            out.append(time.perf_counter() - t0)
            c.advance(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=str, default=None, help="GGUF path (default: the SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--preset", type=str, default=None, help="a random-weight preset (e.g. llama-7b-q4_0)")
    ap.add_argument("--device", type=str, default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent requests in the batched runs")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    ap.add_argument("--threads", type=int, default=0, help="Numba threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    from minirs.engine import Engine
    model, tok = load(args)
    vocab = model.config.vocab_size
    engine = Engine(model, tok, max_seqs=max(16, args.concurrency))
    rows, constrained_jobs = [], []
    overlaps = [True, False] if not engine.graphs else [True]
    for n in (1, args.concurrency):
        run(engine, tok, n, 4, None)  # warm-up: compile, capture each batch size's steps, with and without masks
        run(engine, tok, n, 4, GRAMMAR)
        free = statistics.median(run(engine, tok, n, args.max_tokens, None)[0] for _ in range(args.repeat))
        for overlap in overlaps:
            engine.overlap_masks = overlap
            rates, mask_s, steps = [], 0.0, 0
            for _ in range(args.repeat):
                m0, s0 = engine.mask_s, engine.steps
                rate, jobs = run(engine, tok, n, args.max_tokens, GRAMMAR)
                rates.append(rate)
                mask_s, steps = mask_s + engine.mask_s - m0, steps + engine.steps - s0
                constrained_jobs += jobs
            bound = statistics.median(rates)
            label = "" if len(overlaps) == 1 else " (overlap)" if overlap else " (no overlap)"
            rows.append((n, label, free, bound, mask_s / max(steps, 1)))
        engine.overlap_masks = True
    engine.shutdown()
    times = np.array(mask_times(tok, constrained_jobs[:4], vocab)) * 1e6
    print(f"\n{args.preset or Path(args.gguf or 'SmolLM2-135M-Instruct.Q4_1.gguf').name} on {model.backend.name}, "
          f"{args.max_tokens} tokens per request, median of {args.repeat}; vocabulary {vocab}\n")
    print("| requests | free (tok/s) | JSON schema (tok/s) | cost | engine mask time per step |")
    print("| --- | --- | --- | --- | --- |")
    for n, label, free, bound, per_step in rows:
        print(f"| {n}{label} | {free:.1f} | {bound:.1f} | {(free / bound - 1) * 100:+.1f}% | {per_step * 1e6:.0f} us |")
    print(f"\nmask per sequence per token: median {np.median(times):.0f} us, p99 {np.percentile(times, 99):.0f} us "
          f"({len(times)} masks)")


if __name__ == "__main__":
    main()
