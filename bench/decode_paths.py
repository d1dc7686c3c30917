"""A short run through every GPU decode path of a random-weight model, for checks that watch a whole run.

    python bench/decode_paths.py OUT.npz [--preset smollm2-135m] [--gguf FILE] [--no-pool]
    compute-sanitizer --tool memcheck --error-exitcode 9 python bench/decode_paths.py /tmp/o.npz --no-pool
    (likewise --tool racecheck and --tool synccheck)

A 60-token prefill in a chunk of 48 (dequantize + cuBLAS, cuBLAS attention) and one of 12 (GEMVs), six decode
steps of one row (the first captures the decode graph, the rest replay it) and four steps of five rows (the
tensor-core GEMVs, split attention); each step's logits go to OUT.
`tests/test_cuda.py::test_dependent_launch_changes_no_bit` runs it with MINIRS_PDL=1 and 0 and compares the bits.
--no-pool makes CuPy's allocator plain cudaMalloc, so that memcheck sees the bounds of the arrays made outside
graphs (prefill's, the weights, the caches). A captured graph's intermediates still come from its own pool, and
a few long-lived buffers (split attention's counters, the prefetch spans, the cuBLAS workspace) from CuPy's
default pool. The model is --gguf, or the preset's random-weight GGUF written to a temporary folder.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(path: Path) -> dict[str, np.ndarray]:
    from minirs.engine import ModelRunner
    from minirs.engine.kv_cache import KVCache
    from minirs.generate import Generator
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.load import load_model
    be = CudaBackend()
    model = load_model(path, backend=be)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(3)
    gen = Generator(model, ctx_len=256, max_chunk=48)
    out = {"prefill": gen.prefill([int(t) for t in rng.integers(0, vocab, 60)])}
    for i in range(6):
        out[f"decode_{i}"] = gen.decode((int(np.argmax(out["prefill"])) + i) % vocab, 60 + i)
    runner = ModelRunner(model, KVCache(model.config, be, 6, 64, 8), spare_slot=5)  # 5 rows padded to 8
    toks, slots = rng.integers(0, vocab, 5), np.arange(5)
    for i in range(4):
        out[f"batch_{i}"] = runner.decode((toks + i) % vocab, slots, np.full(5, i))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="where the logits go (.npz)")
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--gguf", type=Path, help="a model file instead of the preset's random weights")
    ap.add_argument("--no-pool", action="store_true", help="no CuPy memory pool (for compute-sanitizer memcheck)")
    args = ap.parse_args()
    if args.no_pool:
        import cupy as cp
        cp.cuda.set_allocator(None)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.gguf
        if path is None:
            from minirs.models.synthetic import write_random_gguf
            path = write_random_gguf(Path(tmp) / f"{args.preset}.gguf", args.preset)
        out = run(path)
    np.savez(args.out, **out)
    print(f"{len(out)} logits rows written to {args.out}")


if __name__ == "__main__":
    main()
