"""Random-weight GGUF files with the exact tensor names, shapes and quant types of real models.

Speed does not depend on the weight values, so benchmarks (and GPU checks, where multi-GB real files cannot
travel) run on these. Blocks are random bytes with their scale fields overwritten by small finite f16 values,
so every weight decodes to a finite number of a realistic size (std ~0.02). Writing a 4 GB file takes seconds.

    python -m minirs.models.synthetic llama-7b-q4_0 /tmp/llama7b.gguf
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirs.formats.types import QTYPES

# Byte offsets of the f16 scale fields inside one block, and a value that gives weights of std ~0.02.
_SCALE_FIELDS = {
    "Q4_0": [(0, 0.006)], "Q4_1": [(0, 0.006), (2, -0.045)], "Q5_0": [(0, 0.003)], "Q5_1": [(0, 0.003), (2, -0.045)],
    "Q8_0": [(0, 0.0004)], "Q2_K": [(80, 0.002), (82, 0.002)], "Q3_K": [(108, 0.0002)],
    "Q4_K": [(0, 0.0001), (2, 0.0001)], "Q5_K": [(0, 0.00005), (2, 0.00005)], "Q6_K": [(208, 0.00001)],
    "IQ4_NL": [(0, 0.0002)], "IQ4_XS": [(0, 0.00002)],
}


def random_tensor_bytes(qtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Raw bytes (rows, row_bytes) of a tensor of `shape` (NumPy order) whose values decode finite and small."""
    qt = QTYPES[qtype]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if qtype in ("F32", "F16", "BF16"):
        vals = (rng.standard_normal((rows, shape[-1]), dtype=np.float32) * 0.02)
        if qtype == "F32":
            return vals.view(np.uint8)
        if qtype == "F16":
            return vals.astype(np.float16).view(np.uint8)
        return (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    n_blocks = rows * shape[-1] // qt.block_size
    if n_blocks * qt.type_size >= 1 << 26 and n_blocks * qt.type_size % 8 == 0:  # big: 8 bytes a draw, 4x faster
        words = rng.integers(0, np.iinfo(np.uint64).max, size=n_blocks * qt.type_size // 8, dtype=np.uint64,
                             endpoint=True)
        blocks = words.view(np.uint8).reshape(n_blocks, qt.type_size)
    else:
        blocks = rng.integers(0, 256, size=(n_blocks, qt.type_size), dtype=np.uint8)
    for off, scale in _SCALE_FIELDS[qtype]:
        s = (scale * (0.5 + rng.random(n_blocks, dtype=np.float32))).astype(np.float16)
        blocks[:, off:off + 2] = s.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, -1)


@dataclass(frozen=True)
class Preset:
    arch: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab: int
    qtype: str  # most matrices
    embd_qtype: str
    output_qtype: str | None  # None: tied to token_embd
    head_dim: int = 0
    context: int = 4096
    rope_theta: float = 10000.0
    # per-layer overrides: tensor role -> (qtype for "more bits" layers, layers that get it, qtype for the others)
    overrides: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # additional metadata
    n_experts: int = 0  # sparse MoE (mixtral): ffn_gate_inp + stacked ffn_{gate,up,down}_exps instead of ffn_*
    n_experts_used: int = 0


_GEMMA3_MORE_BITS = (0, 1, 4, 7, 10, 13, 15, 16, 17)
PRESETS = {
    "smollm2-135m": Preset("llama", 576, 30, 9, 3, 1536, 49152, "Q4_1", "Q8_0", None, context=8192,
                           rope_theta=100000.0),
    "gemma3-270m": Preset("gemma3", 640, 18, 4, 1, 2048, 262144, "Q5_0", "Q8_0", None, head_dim=256,
                          context=32768, rope_theta=1e6,
                          overrides={"attn_output": ("Q4_K", (), "Q4_K"),
                                     "attn_v": ("Q8_0", _GEMMA3_MORE_BITS, "Q5_0"),
                                     "ffn_down": ("Q6_K", _GEMMA3_MORE_BITS, "Q4_K")},
                          extra={"attention.sliding_window": 512}),
    "llama-7b-q4_0": Preset("llama", 4096, 32, 32, 8, 14336, 32000, "Q4_0", "Q4_0", "Q6_K"),
    "llama-7b-q4_k": Preset("llama", 4096, 32, 32, 8, 14336, 32000, "Q4_K", "Q4_K", "Q6_K"),
    # a 1.1B llama (TinyLlama's shape) at Q4_K with a Q6_K output: the 1B class of issue 27's CPU comparison
    "llama-1b-q4_k": Preset("llama", 2048, 22, 32, 4, 5632, 32000, "Q4_K", "Q4_K", "Q6_K"),
    "tiny-llama": Preset("llama", 64, 2, 4, 2, 128, 256, "Q8_0", "Q8_0", "Q8_0", context=256),
    # Mixtral-8x7B: llama-shaped attention, 8 experts of ffn 14336, top-2 (about 26 GB at Q4_K)
    "mixtral-8x7b-q4_k": Preset("llama", 4096, 32, 32, 8, 14336, 32000, "Q4_K", "Q4_K", "Q6_K", context=32768,
                                rope_theta=1e6, n_experts=8, n_experts_used=2),
    # the Mixtral-8x7B of ANCHORS.md: Q4_0 everywhere, Q6_K output (24.6 GiB)
    "mixtral-8x7b-q4_0": Preset("llama", 4096, 32, 32, 8, 14336, 32000, "Q4_0", "Q4_0", "Q6_K", context=32768,
                                rope_theta=1e6, n_experts=8, n_experts_used=2),
    "tiny-mixtral": Preset("llama", 64, 2, 4, 2, 96, 256, "Q8_0", "Q8_0", "Q8_0", context=256,
                           n_experts=4, n_experts_used=2),
}


def preset_tensors(p: Preset):
    """(name, qtype, shape) of every tensor of a preset, in GGUF order."""
    hd = p.head_dim or p.dim // p.n_heads
    yield "token_embd.weight", p.embd_qtype, (p.vocab, p.dim)
    for i in range(p.n_layers):
        roles = [("attn_norm", "F32", (p.dim,)), ("attn_q", None, (p.n_heads * hd, p.dim)),
                 ("attn_k", None, (p.n_kv_heads * hd, p.dim)), ("attn_v", None, (p.n_kv_heads * hd, p.dim)),
                 ("attn_output", None, (p.dim, p.n_heads * hd)), ("ffn_norm", "F32", (p.dim,))]
        if p.n_experts:
            e = p.n_experts
            roles += [("ffn_gate_inp", "F32", (e, p.dim)), ("ffn_gate_exps", None, (e, p.ffn_dim, p.dim)),
                      ("ffn_up_exps", None, (e, p.ffn_dim, p.dim)), ("ffn_down_exps", None, (e, p.dim, p.ffn_dim))]
        else:
            roles += [("ffn_gate", None, (p.ffn_dim, p.dim)), ("ffn_up", None, (p.ffn_dim, p.dim)),
                      ("ffn_down", None, (p.dim, p.ffn_dim))]
        if p.arch == "gemma3":
            roles += [("attn_q_norm", "F32", (hd,)), ("attn_k_norm", "F32", (hd,)),
                      ("post_attention_norm", "F32", (p.dim,)), ("post_ffw_norm", "F32", (p.dim,))]
        for role, qtype, shape in roles:
            if qtype is None:
                more, layers, other = p.overrides.get(role, (p.qtype, (), p.qtype))
                qtype = more if i in layers else other
            yield f"blk.{i}.{role}.weight", qtype, shape
    yield "output_norm.weight", "F32", (p.dim,)
    if p.output_qtype:
        yield "output.weight", p.output_qtype, (p.vocab, p.dim)


def _add_value(w, key: str, v) -> None:
    """One metadata value, its GGUF type taken from its Python type (a sequence: an array of str or int32)."""
    if isinstance(v, (bool, np.bool_)):
        w.add_bool(key, bool(v))
    elif isinstance(v, (int, np.integer)):
        w.add_uint32(key, int(v))
    elif isinstance(v, (float, np.floating)):
        w.add_float32(key, float(v))
    elif isinstance(v, str):
        w.add_string(key, v)
    else:
        w.add_array(key, [x if isinstance(x, str) else int(x) for x in v])


def write_random_gguf(path, preset: str | Preset, seed: int = 0, metadata: dict | None = None) -> Path:
    """Write a random-weight GGUF of a preset (see PRESETS) and return its path. `metadata` adds keys as they are
    (e.g. a real model's `tokenizer.*` keys, for a preset of the same vocabulary size)."""
    import gguf

    p = PRESETS[preset] if isinstance(preset, str) else preset
    rng = np.random.default_rng(seed)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), p.arch)
    hd = p.head_dim or p.dim // p.n_heads
    a = p.arch
    w.add_uint32(f"{a}.context_length", p.context)
    w.add_uint32(f"{a}.embedding_length", p.dim)
    w.add_uint32(f"{a}.block_count", p.n_layers)
    w.add_uint32(f"{a}.feed_forward_length", p.ffn_dim)
    w.add_uint32(f"{a}.attention.head_count", p.n_heads)
    w.add_uint32(f"{a}.attention.head_count_kv", p.n_kv_heads)
    w.add_uint32(f"{a}.attention.key_length", hd)
    w.add_uint32(f"{a}.attention.value_length", hd)
    w.add_uint32(f"{a}.rope.dimension_count", hd)
    w.add_float32(f"{a}.rope.freq_base", p.rope_theta)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6 if a == "gemma3" else 1e-5)
    w.add_uint32(f"{a}.vocab_size", p.vocab)
    if p.n_experts:
        w.add_uint32(f"{a}.expert_count", p.n_experts)
        w.add_uint32(f"{a}.expert_used_count", p.n_experts_used)
    for k, v in p.extra.items():
        w.add_uint32(f"{a}.{k}", v)
    for k, v in (metadata or {}).items():
        _add_value(w, k, v)
    for name, qtype, shape in preset_tensors(p):
        if qtype == "F32" and len(shape) == 1:  # norm weights near 1 keep activations in range
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            w.add_tensor(name, data)
            continue
        raw = random_tensor_bytes(qtype, shape, rng).reshape(*shape[:-1], -1)  # (..., row_bytes)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write a random-weight GGUF with a real model's shapes.")
    ap.add_argument("preset", choices=sorted(PRESETS), help="which model's shapes and quant types")
    ap.add_argument("out", type=Path, help="output .gguf path")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args(argv)
    path = write_random_gguf(args.out, args.preset, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
