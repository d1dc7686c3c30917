"""Summarise a model file: python -m minirs.formats FILE [--tensors] [--gqa N] [--eps X]

Prints the format and version, architecture, parameter count, size, tensor counts and bytes per type, context
length, tokenizer kind and whether a chat template is present; --tensors adds the tensor table.
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from minirs.errors import MinirsError
from minirs.formats import ModelFile, load_model_file


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return ""


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def summary(mf: ModelFile, tensors: bool = False) -> str:
    md, arch = mf.metadata, mf.architecture
    n_params = sum(t.n_elements for t in mf.tensors.values())
    lines = [f"file:            {mf.path}",
             f"format:          {mf.format} v{mf.version}",
             f"architecture:    {arch}"]
    if "general.name" in md:
        lines.append(f"name:            {md['general.name']}")
    data_bytes = sum(t.nbytes for t in mf.tensors.values())
    lines += [f"parameters:      {n_params:,} ({n_params / 1e9:.3f} B)",
              f"size:            {_size(_disk_size(mf.path))} ({data_bytes:,} bytes of tensor data)",
              f"context length:  {md.get(f'{arch}.context_length', 'unknown')}"]
    tok = md.get("tokenizer.ggml.model")
    n_tokens = len(md.get("tokenizer.ggml.tokens", []))
    lines.append(f"tokenizer:       {tok} ({n_tokens:,} tokens)" if tok else "tokenizer:       none in the file")
    lines.append(f"chat template:   {'yes' if 'tokenizer.chat_template' in md else 'no'}")
    counts, nbytes = Counter(), Counter()
    for t in mf.tensors.values():
        counts[t.qtype] += 1
        nbytes[t.qtype] += t.nbytes
    lines.append(f"tensors:         {len(mf.tensors)}")
    for q in sorted(counts, key=lambda q: -nbytes[q]):
        lines.append(f"  {q:<8} {counts[q]:>5} tensors  {_size(nbytes[q]):>12}")
    if tensors:
        width = max((len(n) for n in mf.tensors), default=4)
        lines.append("")
        lines.append(f"{'name':<{width}}  {'type':<7} {'shape':<22} {'bytes':>14}")
        for name, t in mf.tensors.items():
            lines.append(f"{name:<{width}}  {t.qtype:<7} {t.shape!s:<22} {t.nbytes:>14,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minirs.formats", description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path, help="a GGUF, legacy GGML or safetensors file, or a safetensors folder")
    p.add_argument("--tensors", action="store_true", help="also print every tensor's name, type, shape and size")
    p.add_argument("--gqa", type=int, default=1, help="legacy GGML only: n_head // n_head_kv (default 1)")
    p.add_argument("--eps", type=float, default=None, help="legacy GGML only: RMS norm epsilon (default 5e-6)")
    args = p.parse_args(argv)
    try:
        text = summary(load_model_file(args.file, gqa=args.gqa, eps=args.eps), args.tensors)
    except (MinirsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # the reader stopped early (`| head`), which is not an error; stdout goes to devnull so that the flush at
        # exit does not fail again (the recipe in Python's signal module docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
