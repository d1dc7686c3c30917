"""Benchmark: memory taken by opening malformed or unusual GGUF files (issue 20, defect 2).

    python bench/format_memory.py [--model gemma-3-270m-q4_k_m.gguf] [--code DIR]

Derives three files from the real Gemma 3 270M GGUF (262,144 tokens, 253 MB) and opens each with
`load_model_file` in a fresh process, reporting the peak RSS above the RSS just before the open (VmHWM, so
touched pages of the map count too), the tracemalloc peak (a second process; Python and NumPy allocations
only) and the length of the FormatError's message:
    empty tokens   every token an empty string (a valid file)
    name length    bit 27 of the first tensor name's length flipped
    token length   bit 27 of token 100's length flipped
`--code DIR` imports minirs from DIR instead of this checkout (e.g. an exported older commit, to compare).
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak) of this process, from /proc. Not ru_maxrss: a child started by
    subprocess inherits its parent's peak in that."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def make_files(model: Path, out: Path) -> dict[str, Path]:
    """The three derived files of the docstring, written into `out`."""
    from helpers_files import gguf_fields
    data = model.read_bytes()
    f = gguf_fields(data)
    value = next(kv for kv in f["kv"] if kv[0] == "tokenizer.ggml.tokens")[3]
    count = struct.unpack_from("<Q", data, value + 4)[0]
    end = value + 12
    for _ in range(count):
        end += 8 + struct.unpack_from("<Q", data, end)[0]
    (alignment,) = [struct.unpack_from("<I", data, kv[3])[0] for kv in f["kv"] if kv[0] == "general.alignment"] or [32]
    data_start = -(-f["end"] // alignment) * alignment
    header = data[:value + 12] + bytes(8 * count) + data[end:f["end"]]
    files = {"empty tokens": out / "empty.gguf", "name length": out / "name.gguf", "token length": out / "token.gguf"}
    files["empty tokens"].write_bytes(header + bytes(-len(header) % alignment) + data[data_start:])
    name = bytearray(data)
    name[f["tensors"][0][1] + 3] ^= 1 << 3  # bit 27 of the u64 length
    files["name length"].write_bytes(name)
    tok = bytearray(data)
    pos = value + 12
    for _ in range(100):
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
    tok[pos + 3] ^= 1 << 3
    files["token length"].write_bytes(tok)
    return files


def measure(path: Path, traced: bool) -> dict:
    """Open `path` in this process: peak RSS growth or tracemalloc peak, time, and the error's message length."""
    from minirs.errors import FormatError
    from minirs.formats import load_model_file
    rss0 = status_bytes("VmRSS")
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        mf = load_model_file(path)
        result = {"ok": True, "tokens": len(mf.metadata.get("tokenizer.ggml.tokens", []))}
    except FormatError as e:
        result = {"ok": False, "message_chars": len(str(e))}
    result["seconds"] = time.perf_counter() - t0
    if traced:
        result["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        result["rss_growth"] = status_bytes("VmHWM") - rss0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="the Gemma 3 GGUF (default: minirs.fetch.gemma3_path())")
    p.add_argument("--code", type=Path, default=ROOT, help="folder whose minirs package is measured")
    p.add_argument("--child", nargs=2, metavar=("FILE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1] == "traced")))
        return
    if args.model is None:
        from minirs.fetch import gemma3_path
        args.model = gemma3_path()
    env = {**os.environ, "PYTHONPATH": str(args.code.resolve())}
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    print("| file | result | peak RSS growth | tracemalloc peak | message chars | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as d:
        for case, path in make_files(args.model, Path(d)).items():
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(path), mode], env=env,
                                              check=True, capture_output=True, text=True).stdout)
                    for mode in ("rss", "traced")]
            r = {**runs[1], **runs[0]}
            what = f"{r['tokens']:,} tokens" if r["ok"] else "FormatError"
            chars = f"{r['message_chars']:,}" if not r["ok"] else "-"
            print(f"| {case} | {what} | {r['rss_growth'] / 2**20:+.1f} MiB | {r['traced_peak'] / 2**20:.1f} MiB "
                  f"| {chars} | {r['seconds']:.2f} s |")


if __name__ == "__main__":
    main()
