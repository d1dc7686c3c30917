"""What a LoRA adapter costs in decode: a rank-16 adapter on all seven projections against none, batch 1 and 16.

    python bench/bench_lora.py                                      # SmolLM2-135M Q4_1 on the CPU
    python bench/bench_lora.py --device cuda --preset llama-7b-q4_0  # random weights, 7B shape, on the GPU
    python bench/bench_lora.py --rank 16 --batches 1,16 --steps 32 --repeat 5 --threads 2

The adapter is random (A and B non-zero, seeded) and attached with minirs.models.lora.attach, as a PEFT folder
would be. Decode steps run through the engine's ModelRunner (on CUDA from captured graphs, the coefficients a graph
input) over a KV cache prefilled with 32 tokens per row; every row of the adapted run uses the adapter. Time per
step is the median over --repeat alternating runs of --steps steps each (none, adapter, none, adapter, ...); on the
CPU the process's CPU time per step is reported too (steadier than wall time when other work shares the cores).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def random_adapter(cfg, rank: int, seed: int = 0):
    """A rank-`rank` LoRA adapter on all seven projections of every block, with non-zero A and B."""
    from minirs.models.lora import Adapter, Module
    rng = np.random.default_rng(seed)
    shapes = {"q_proj": (cfg.q_dim, cfg.dim), "k_proj": (cfg.kv_dim, cfg.dim), "v_proj": (cfg.kv_dim, cfg.dim),
              "o_proj": (cfg.dim, cfg.q_dim), "gate_proj": (cfg.ffn_dim, cfg.dim), "up_proj": (cfg.ffn_dim, cfg.dim),
              "down_proj": (cfg.dim, cfg.ffn_dim)}
    modules = {}
    for i in range(cfg.n_layers):
        for p in PROJECTIONS:
            n_out, n_in = shapes[p.split(".")[1]]
            a = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
            b = (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)
            modules[f"model.layers.{i}.{p}"] = Module(a, b, 2.0)
    return Adapter("bench", Path("random"), modules)


def time_decode(runner, n: int, steps: int, coef) -> tuple[float, float]:
    """Seconds per decode step of n rows (positions 32.. in slots 0..n-1): wall time, and this process's CPU time
    (on a shared CPU machine the steadier of the two; meaningless on the GPU)."""
    be = runner.backend
    tokens, slots = list(range(1, n + 1)), list(range(n))
    picks = [(0.0, 1, 1.0, 0.0, 0.0)] * n if runner.device_sampling else None
    runner.decode(tokens, slots, [32] * n, picks, coef=coef)  # warm-up (and on CUDA, the capture)
    be.synchronize()
    t, c = time.perf_counter(), time.process_time()
    for s in range(steps):
        runner.decode(tokens, slots, [33 + s] * n, picks, coef=coef)
    be.synchronize()
    return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=str, default=None, help="GGUF path (default: the SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--preset", type=str, default=None, help="a random-weight preset (e.g. llama-7b-q4_0)")
    ap.add_argument("--device", type=str, default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--rank", type=int, default=16, help="adapter rank")
    ap.add_argument("--batches", type=str, default="1,16", help="comma list of decode batch sizes")
    ap.add_argument("--steps", type=int, default=32, help="decode steps per timed run")
    ap.add_argument("--repeat", type=int, default=5, help="alternating runs per configuration (median)")
    ap.add_argument("--threads", type=int, default=0, help="Numba threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    from minirs.engine.kv_cache import KVCache
    from minirs.engine.runner import ModelRunner
    from minirs.load import load_model
    from minirs.models.lora import attach
    if args.preset:
        from minirs.models.synthetic import write_random_gguf
        with tempfile.TemporaryDirectory(prefix="minirs-bench-") as tmp:
            model = load_model(write_random_gguf(Path(tmp) / f"{args.preset}.gguf", args.preset), device=args.device)
        name = args.preset
    else:
        from minirs.fetch import smollm2_path
        path = Path(args.gguf) if args.gguf else smollm2_path()
        model, name = load_model(path, device=args.device), path.name
    attach(model, [random_adapter(model.config, args.rank)])
    be = model.backend
    rows = []
    for n in [int(b) for b in args.batches.split(",")]:
        cache = KVCache(model.config, be, n + 1, 128, 32)
        runner = ModelRunner(model, cache, spare_slot=n if be.graphs else None)
        prompt = np.arange(32 * n) % model.config.vocab_size
        runner.forward(prompt, np.repeat(np.arange(n), 32), np.tile(np.arange(32), n), [0])
        coef = np.tile(model.lora.row(["bench"]), (n, 1))
        base, lora = [], []
        for _ in range(args.repeat):
            base.append(time_decode(runner, n, args.steps, None))
            lora.append(time_decode(runner, n, args.steps, coef))
        b, a = (statistics.median(t[0] for t in v) for v in (base, lora))
        bc, ac = (statistics.median(t[1] for t in v) for v in (base, lora))
        rows.append((n, n / b, n / a, a / b - 1, ac / bc - 1))
    print(f"\n{name} on {be.name}, rank-{args.rank} LoRA on all seven projections, median of {args.repeat} x "
          f"{args.steps} decode steps\n")
    print(f"| batch | no adapter (tok/s) | rank-{args.rank} adapter (tok/s) | cost (wall) | cost (process CPU time) |")
    print("| --- | --- | --- | --- | --- |")
    for n, b, a, cost, cpu in rows:
        print(f"| {n} | {b:.1f} | {a:.1f} | {100 * cost:+.1f}% | {100 * cpu:+.1f}% |")


if __name__ == "__main__":
    main()
