"""Probe: what a prefill chunk costs when it is replayed from a CUDA graph instead of issued from Python.

    python bench/prefill_graph_probe.py [--preset smollm2-135m --preset gemma3-270m ...] [--n 128 --n 512]

A design measurement, not a product path. Eager prefill is host-bound (Python issues every kernel and cuBLAS
call). Here a chunk of n tokens from position 0 runs through the decode-graph machinery (backend.capture
with n rows, so positions and slots are device buffers): the matmuls take the dequantize + cuda/blas.py path, which
can be captured, and attention takes the attention kernel (a block per token and head) instead of the eager
path's cuBLAS attention. The captured function returns the last row's logits only, as a prefill does, and
take_rows is patched to accept that slice. Prints the eager forward and the graph
replay per chunk, and how far apart their last rows are (max |difference| / max |logit|).
The random-weight GGUFs stay in --dir (default /tmp/minirs-models), reused by later runs.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(fn, reps: int = 5) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def probe(path: Path, ns) -> None:
    import cupy as cp

    from minirs.engine.kv_cache import KVCache
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.load import load_model

    be = CudaBackend()
    take = be.take_rows
    be.take_rows = lambda x, rows: cp.ascontiguousarray(x[rows]) if isinstance(rows, slice) else take(x, rows)
    model = load_model(path, backend=be)
    for n in ns:
        _chunk(model, be, KVCache(model.config, be, 1, max(ns) + 8, max(ns)), n, path.stem)


def _chunk(model, be, cache, n: int, name: str) -> None:
    """One table row: a chunk of n tokens from position 0, eager and from a captured graph (the chunk's forward
    handed to backend.capture with its ids, slots and positions as device inputs, the last row's logits out)."""
    import cupy as cp
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, n)
    slots, pos = np.zeros(n, np.int64), np.arange(n, dtype=np.int64)

    def eager():
        out = model.forward(ids, slots, pos, cache, logit_rows=[n - 1])
        be.stream.synchronize()
        return out
    ref = cp.asnumpy(eager()[0])  # compiles
    te = _median_ms(eager)
    step = be.capture(lambda inp: model.forward(inp[0], inp[1], inp[2], cache, logit_rows=slice(n - 1, n)),
                      lambda out, inp: be.to_numpy(out), [np.zeros((3, n), np.int64)])
    inputs = np.stack([ids, slots, pos])
    out = step(inputs)  # runs once, captures
    tg = _median_ms(lambda: step(inputs))
    diff = np.abs(out[-1] - ref).max() / np.abs(ref).max()
    print(f"| {name} | {n} | {te:.2f} | {n / te * 1e3:,.0f} | {tg:.2f} | {n / tg * 1e3:,.0f} | {diff:.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", action="append", help="random-weight presets (default: smollm2, gemma3, 7B Q4_0)")
    ap.add_argument("--n", action="append", type=int, help="chunk lengths (default 128 and 512)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/minirs-models"),
                    help="random-weight GGUFs are written here once and reused by later runs "
                    "(delete the folder to free the space)")
    args = ap.parse_args()
    from minirs.models.synthetic import write_random_gguf
    args.dir.mkdir(parents=True, exist_ok=True)
    print("| preset | n | eager ms | eager tok/s | graph ms | graph tok/s | last row apart |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in args.preset or ["smollm2-135m", "gemma3-270m", "llama-7b-q4_0"]:
        path = args.dir / f"{p}.gguf"
        if not path.exists():
            write_random_gguf(path, p)
        probe(path, args.n or [128, 512])


if __name__ == "__main__":
    main()
