"""Where one decode step's GPU time goes, kernel by kernel, measured by Nsight Compute on the replayed CUDA graph.

    ncu --profile-from-start off --graph-profiling node --clock-control none --metrics gpu__time_duration.sum \
        --csv --log-file step.csv python bench/profile_decode.py run --preset llama-7b-q4_0 [--ctx 128] [--batch 16]
    python bench/profile_decode.py summary step.csv

`run` writes (or reuses) the random-weight preset GGUF in /tmp/minirs-models, fills --batch cache slots up to
--ctx positions, captures the decode graph of --batch rows (the backend's default kernels: tensor cores for 2 or
more rows) and profiles one replay; `summary` prints the time per kernel (summed over
the layers) and the step's total.
"""

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(preset: str, ctx: int, folder: Path, batch: int = 1) -> None:
    import cupy as cp

    from minirs.engine import ModelRunner
    from minirs.engine.kv_cache import KVCache
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf

    path = folder / f"{preset}.gguf"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_random_gguf(path, preset)
    model = load_model(path, device="cuda")
    be = model.backend
    cache = KVCache(model.config, be, batch, 648, 512)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, ctx)
    for s in range(batch):
        model.forward(ids, np.full(ctx, s, np.int64), np.arange(ctx), cache, logit_rows=[ctx - 1])
    runner = ModelRunner(model, cache)  # batch: a bucket size (no padding, no spare slot)
    args = (np.ones(batch, np.int64), np.arange(batch, dtype=np.int64), np.full(batch, ctx, np.int64))
    greedy = [(0.0, 1, 1.0, 0.0, 0.0)] * batch
    for _ in range(3):  # eager run, capture, replay
        runner.decode(*args, greedy)
    be.stream.synchronize()
    cp.cuda.runtime.profilerStart()
    runner.decode(*args, greedy)
    be.stream.synchronize()
    cp.cuda.runtime.profilerStop()


def kernel_name(name: str) -> str:
    """Nsight shows Numba kernels as module::function[version,...]: keep the function."""
    m = re.search(r"::(\w+)\[", name)
    return m.group(1) if m else name[:40]


def summary(csv_path: Path) -> None:
    rows = [r for r in csv.reader(open(csv_path)) if len(r) > 5]
    head = next(r for r in rows if "Kernel Name" in r)
    ki, mi, vi = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
    ui = head.index("Metric Unit")
    to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
    total, count = defaultdict(float), defaultdict(int)
    for r in rows:
        if r is head or r[mi] != "gpu__time_duration.sum":
            continue
        name = kernel_name(r[ki])
        total[name] += float(r[vi].replace(",", "")) * to_us[r[ui]]
        count[name] += 1
    all_us = sum(total.values())
    print("| kernel | launches | total us | us per launch | share |\n| --- | ---: | ---: | ---: | ---: |")
    for name in sorted(total, key=lambda k: -total[k]):
        t = total[name]
        print(f"| {name} | {count[name]} | {t:.1f} | {t / count[name]:.2f} | {t / all_us:.0%} |")
    print(f"| all | {sum(count.values())} | {all_us:.1f} | | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--preset", default="llama-7b-q4_0")
    r.add_argument("--ctx", type=int, default=128)
    r.add_argument("--batch", type=int, default=1, help="decode rows (one cache slot each)")
    r.add_argument("--dir", type=Path, default=Path("/tmp/minirs-models"),
                   help="random-weight GGUFs are written here once and reused by later runs "
                   "(delete the folder to free the space)")
    s = sub.add_parser("summary")
    s.add_argument("csv", type=Path)
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.preset, a.ctx, a.dir, a.batch)
    else:
        summary(a.csv)


if __name__ == "__main__":
    main()
