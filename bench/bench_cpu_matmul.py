"""Benchmark of the CPU quantized matmul on the real SmolLM2-135M (Q4_1/Q8_0) and Gemma-3-270M (Q4_K_M) matrices.

    NUMBA_NUM_THREADS=1 python bench/bench_cpu_matmul.py [--reps 20] [--types]
    NUMBA_NUM_THREADS=2 python bench/bench_cpu_matmul.py

Prints a markdown table per distinct (type, shape): for n = 1, 4, 16, 128 rows of x the time, GB/s of weights read
(the re-laid-out bytes, once per call) and GFLOP/s; then totals for one SmolLM2 decode step (all 30 x 7 layer matrices plus the output
projection, run in model order so that weights come from L3/DRAM as in the engine) and one 128-token prefill.
`--types` adds a table over every supported type on a synthetic 2048 x 2048 matrix.

Timings are best-of-reps wall times and depend on what else runs on the machine: on a shared 2-core box, run
single-thread (NUMBA_NUM_THREADS=1) and 2-thread, and repeat.
"""

import argparse
import sys
import time

import numpy as np

from minirs.formats import Tensor, load_model_file
from minirs.kernels.cpu.matmul import qmatmul, set_threads
from minirs.kernels.cpu.weights import QMatrix


def timeit(reps: int, f, *args) -> float:
    """Best wall time of f(*args) over reps runs, after one warm-up (compile or cache load) run."""
    f(*args)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(*args)
        best = min(best, time.perf_counter() - t)
    return best


def run_all(ws: list[QMatrix], xs: dict) -> None:
    for w in ws:
        qmatmul(w, xs[w.n_in])


def matrices(path: str) -> list[tuple[str, QMatrix]]:
    mf = load_model_file(path)
    return [(name, QMatrix.from_tensor(t)) for name, t in mf.tensors.items() if len(t.shape) == 2]


NS = (1, 4, 16, 128)


def shape_table(mats: list[tuple[str, QMatrix]], reps: int) -> None:
    seen = {}
    for name, w in mats:
        seen.setdefault((w.qtype, w.n_out, w.n_in), (name, w))
    print("| type | shape (n_out, n_in) | example | " + " | ".join(f"n={n} ms, GB/s, GFLOP/s" for n in NS) + " |")
    print("| --- | --- | --- |" + " ---: |" * len(NS))
    for (qtype, n_out, n_in), (name, w) in seen.items():
        row = [f"| {qtype} | ({n_out}, {n_in}) | {name} "]
        for n in NS:
            x = np.random.default_rng(0).standard_normal((n, n_in), dtype=np.float32)
            t = timeit(reps if n <= 4 else max(2, reps // 5), qmatmul, w, x)
            row.append(f"| {t * 1e3:.3f}, {w.nbytes / t / 1e9:.1f}, {2 * n_out * n_in * n / t / 1e9:.1f} ")
        print("".join(row) + "|")


def totals(label: str, mats: list[tuple[str, QMatrix]], reps: int) -> None:
    layer = [w for name, w in mats if name.startswith("blk.")]
    out = [w for name, w in mats if name in ("output.weight", "token_embd.weight")][:1]
    for n in (1, 128):
        ws = layer + out if n == 1 else layer  # prefill needs the output projection for the last token only
        xs = {w.n_in: np.random.default_rng(1).standard_normal((n, w.n_in), dtype=np.float32) for w in ws}
        t = timeit(reps if n == 1 else 2, run_all, ws, xs)
        if n == 128:
            t += timeit(reps, qmatmul, out[0], xs[out[0].n_in][:1])
        flops = sum(2 * w.n_out * w.n_in for w in ws) * n
        what = "decode step (n=1, layers + output)" if n == 1 else "128-token prefill (layers n=128, output n=1)"
        print(f"| {label} | {what} | {len(ws)} | {t * 1e3:.2f} | {flops / t / 1e9:.1f} | "
              f"{n / t:.0f} tok/s (matmuls only) |")


def type_table(reps: int) -> None:
    sys.path.insert(0, "tests")
    from test_cpu_matmul import ALL_TYPES, random_rows

    n_out = n_in = 2048
    print("| type | n=1 ms | n=1 GB/s | n=128 ms | n=128 GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for qtype in ALL_TYPES:
        raw = random_rows(qtype, n_out, n_in, np.random.default_rng(0))
        w = QMatrix.from_tensor(Tensor("w", qtype, (n_out, n_in), raw.reshape(-1)))
        x1 = np.ones((1, n_in), np.float32)
        x128 = np.ones((128, n_in), np.float32)
        t1 = timeit(reps, qmatmul, w, x1)
        t128 = timeit(2, qmatmul, w, x128)
        print(f"| {qtype} | {t1 * 1e3:.3f} | {w.nbytes / t1 / 1e9:.1f} | {t128 * 1e3:.2f} | "
              f"{2 * 128 * n_out * n_in / t128 / 1e9:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions (best is reported)")
    ap.add_argument("--threads", type=int, default=0, help="Numba threads (0: all cores)")
    ap.add_argument("--types", action="store_true", help="also bench every type on a synthetic 2048x2048 matrix")
    args = ap.parse_args()
    if args.threads:
        set_threads(args.threads)
    import numba

    from minirs.fetch import gemma3_path, smollm2_path
    print(f"numba threads: {numba.get_num_threads()}, kernels from {qmatmul.__module__} "
          f"({sys.modules[qmatmul.__module__].__file__})")
    runs = [("SmolLM2-135M Q4_1", smollm2_path()), ("Gemma-3-270M Q4_K_M", gemma3_path())]
    loaded = []
    for label, path in runs:
        t = time.perf_counter()
        mats = matrices(path)
        print(f"\n### {label}: {len(mats)} matrices re-laid out in {time.perf_counter() - t:.2f} s\n")
        shape_table(mats, args.reps)
        loaded.append((label, mats))
    print("\n| model | what | matrices | ms | GFLOP/s | rate |\n| --- | --- | ---: | ---: | ---: | --- |")
    for label, mats in loaded:
        totals(label, mats, args.reps)
    if args.types:
        print("\n### every type, 2048 x 2048 random blocks\n")
        type_table(args.reps)


if __name__ == "__main__":
    main()
