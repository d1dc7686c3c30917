"""GPU prefill, eager against the runner's captured prefill (engine/runner.py), same model, same call.

    python bench/bench_prefill.py [--preset smollm2-135m --preset llama-7b-q4_0 ...] [--n 128 --n 512 --n 2048]

For each random-weight preset (written once into --dir and reused) and chunk length n: tokens/s of an eager
`model.forward` of one sequence from position 0 (last row's logits), and of the same chunk through
`ModelRunner.forward` with the backend's prefill_graphs on (padded to a bucket, replayed in the spare slot, moved
to the sequence's slot), the median of five after a first call (which captures; its time is printed), and how far
apart the two last rows are (max |difference| / max |logit|).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefill_graph_probe import _median_ms  # noqa: E402  (bench/ is this script's own folder on sys.path)


def _row(be, model, preset: str, n: int) -> None:
    from minirs.engine import ModelRunner
    from minirs.engine.kv_cache import KVCache
    cache = KVCache(model.config, be, 2, n + 8, n)
    runner = ModelRunner(model, cache, spare_slot=1)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, n)
    slots, pos = np.zeros(n, np.int64), np.arange(n)

    def eager():
        return be.to_numpy(model.forward(ids, slots, pos, cache, logit_rows=[n - 1]))
    ref = eager()  # compiles
    te = _median_ms(eager) / 1e3
    t = time.perf_counter()
    got = runner.forward(ids, slots, pos, [n - 1])
    first = time.perf_counter() - t
    tg = _median_ms(lambda: runner.forward(ids, slots, pos, [n - 1])) / 1e3
    apart = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"| {preset} | {n} | {n / te:,.0f} | {n / tg:,.0f} | {te / tg:.2f}x | {apart:.1e} | {first:.2f} |",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", action="append", help="random-weight presets (default: smollm2-135m, gemma3-270m)")
    ap.add_argument("--n", action="append", type=int, help="chunk lengths (default 128, 512, 2048)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/minirs-models"), help="where the GGUFs are kept")
    args = ap.parse_args()
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf
    be = CudaBackend()
    be.prefill_graphs = True
    args.dir.mkdir(parents=True, exist_ok=True)
    print("| preset | n | eager tok/s | captured tok/s | ratio | last row apart | first captured call s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preset in args.preset or ["smollm2-135m", "gemma3-270m"]:
        path = args.dir / f"{preset}.gguf"
        if not path.exists():
            write_random_gguf(path, preset)
        model = load_model(path, backend=be)
        for n in args.n or [128, 512, 2048]:
            _row(be, model, preset, n)


if __name__ == "__main__":
    main()
