"""Benchmark: opening a multi-GB GGUF reads only its header and copies no tensor data.

    /work/venv/bin/python bench/bench_open.py [--dir /tmp] [--runs 5]

Writes a sparse 7B-llama-shaped GGUF (291 tensors, Q4_K with a Q6_K output, 32,000-token vocab, ~3.9 GB):
the header is written for real and the data region is made by truncate, so it costs no time or disk. Then it
times `load_model_file` (metadata + tensor table) and reports the process RSS before and after, which shows
that no tensor bytes were read or copied. gguf's own GGUFReader is timed too, for reference. Prints a
markdown table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirs.formats import load_model_file

DIM, FF, VOCAB, LAYERS = 4096, 11008, 32000, 32


def tensor_table() -> list[tuple[str, tuple[int, ...], str]]:
    """(name, NumPy shape, type) of a llama-7B GGUF."""
    t = [("token_embd.weight", (VOCAB, DIM), "Q4_K"), ("output_norm.weight", (DIM,), "F32"),
         ("output.weight", (VOCAB, DIM), "Q6_K")]
    for i in range(LAYERS):
        t += [(f"blk.{i}.attn_norm.weight", (DIM,), "F32"), (f"blk.{i}.ffn_norm.weight", (DIM,), "F32")]
        t += [(f"blk.{i}.attn_{n}.weight", (DIM, DIM), "Q4_K") for n in ("q", "k", "v", "output")]
        t += [(f"blk.{i}.ffn_gate.weight", (FF, DIM), "Q4_K"), (f"blk.{i}.ffn_up.weight", (FF, DIM), "Q4_K"),
              (f"blk.{i}.ffn_down.weight", (DIM, FF), "Q6_K")]
    return t


def write_sparse_gguf(path: Path) -> int:
    """Write the header of a 7B-like GGUF and extend the file to its full size without writing the data."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(32)
    w.add_head_count_kv(32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{i:02X}>" if 3 <= i < 259 else f"\u2581tok{i}" for i in range(VOCAB)])
    w.add_token_scores(np.linspace(0, -1, VOCAB, dtype=np.float32).tolist())
    w.add_token_types([1] * VOCAB)
    for name, shape, qtype in tensor_table():
        qt = gguf.GGMLQuantizationType[qtype]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        nbytes = int(np.prod(shape)) // block * size
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = path.stat().st_size
    total = header + 32 + sum(_nbytes(s, q) + 32 for _, s, q in tensor_table())  # >= the aligned data end
    os.truncate(path, total)
    return header


def _nbytes(shape, qtype) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return int(np.prod(shape)) // block * size


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write the sparse file")
    p.add_argument("--runs", type=int, default=5, help="timed opens (the median is reported)")
    args = p.parse_args()
    path = args.dir / "minirs-bench-7b-sparse.gguf"
    t0 = time.perf_counter()
    header = write_sparse_gguf(path)
    t_write = time.perf_counter() - t0
    try:
        size = path.stat().st_size
        on_disk = path.stat().st_blocks * 512
        rss0 = rss_mib()
        times, mf = [], None
        for _ in range(args.runs):
            del mf
            t = time.perf_counter()
            mf = load_model_file(path)
            times.append(time.perf_counter() - t)
        rss1 = rss_mib()
        nbytes = sum(t.nbytes for t in mf.tensors.values())
        shared = all(not t.data.flags.owndata for t in mf.tensors.values())
        t = time.perf_counter()
        gguf.GGUFReader(path)
        t_ref = time.perf_counter() - t
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"file: {path} ({size / 2**30:.2f} GiB logical, {on_disk / 2**20:.1f} MiB on disk, header "
              f"{header / 2**20:.2f} MiB; written in {t_write:.2f} s)\n")
        print("| what | value |\n| --- | --- |")
        print(f"| tensors / metadata keys | {len(mf.tensors)} / {len(mf.metadata)} |")
        print(f"| tensor data mapped | {nbytes / 2**30:.2f} GiB |")
        print(f"| `load_model_file` median of {args.runs} | {statistics.median(times) * 1000:.1f} ms "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) |")
        print(f"| `gguf.GGUFReader` (reference, 1 run) | {t_ref * 1000:.1f} ms |")
        print(f"| RSS before -> after the opens | {rss0:.1f} -> {rss1:.1f} MiB (+{rss1 - rss0:.1f}) |")
        print(f"| every Tensor.data a view (no copy) | {shared} |")
    finally:
        path.unlink()


if __name__ == "__main__":
    main()
