"""Test helpers that write small model files with random weights: a GGUF (through gguf.GGUFWriter), a legacy
ggjt v3 (or older) GGML file, a sharded safetensors folder with its index and config.json, and a folder in Mistral's
layout (params.json, consolidated.safetensors and one of the real tokenizer files of the mistral-common wheel).

Each writer returns the path it wrote and is deterministic for a given seed.
"""

import json
import struct
from pathlib import Path

import gguf
import numpy as np

from minirs.formats.quantize import quantize
from minirs.formats.types import QTYPES

GGML_MAGICS = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}


def write_gguf(path: Path, seed: int = 0, n_vocab: int = 64, dim: int = 64, n_layers: int = 1,
               qtypes: tuple[str, ...] = ("Q4_K", "Q8_0", "Q4_0")) -> Path:
    """A tiny llama-shaped GGUF: metadata, a token list, and a few tensors of each of `qtypes` plus F32."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(2 * dim)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    w.add_token_scores([float(-i) for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, 256)).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.standard_normal(dim).astype(np.float32))
    for layer in range(n_layers):
        for k, qtype in enumerate(qtypes):
            x = rng.standard_normal((dim, 256)).astype(np.float32)
            raw = quantize(x, qtype)
            w.add_tensor(f"blk.{layer}.t{k}_{qtype.lower()}.weight", raw,
                         raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def ggml_tensors(seed: int = 0, n_vocab: int = 32, dim: int = 64, n_ff: int = 192, n_layers: int = 1,
                 qtype: str = "Q4_0") -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Old-style llama tensors: name -> (qtype, float values, raw bytes). 1-D norms stay F32."""
    rng = np.random.default_rng(seed)
    shapes = {"tok_embeddings.weight": (n_vocab, dim), "norm.weight": (dim,), "output.weight": (n_vocab, dim)}
    for i in range(n_layers):
        for n in ("wq", "wk", "wv", "wo"):
            shapes[f"layers.{i}.attention.{n}.weight"] = (dim, dim)
        shapes[f"layers.{i}.attention_norm.weight"] = (dim,)
        shapes[f"layers.{i}.ffn_norm.weight"] = (dim,)
        shapes[f"layers.{i}.feed_forward.w1.weight"] = (n_ff, dim)
        shapes[f"layers.{i}.feed_forward.w2.weight"] = (dim, n_ff)
        shapes[f"layers.{i}.feed_forward.w3.weight"] = (n_ff, dim)
    out = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape).astype(np.float32)
        q = "F32" if len(shape) == 1 else qtype
        out[name] = (q, x, quantize(x, q))
    return out


def write_ggml(path: Path, seed: int = 0, kind: str = "ggjt", version: int = 3, qtype: str = "Q4_0",
               n_vocab: int = 300, dim: int = 64, n_head: int = 4, n_layers: int = 1, n_mult: int = 32) -> Path:
    """A legacy llama GGML file (layout in minirs/formats/ggml.py) with a SentencePiece-like vocab: specials
    (empty for ggjt-era files), 256 byte tokens (one raw byte each), then words with spaces."""
    n_ff = ((2 * (4 * dim) // 3 + n_mult - 1) // n_mult) * n_mult
    tensors = ggml_tensors(seed, n_vocab, dim, n_ff, n_layers, qtype)
    vocab = [b" \xe2\x81\x87 ", b"", b""] + [bytes([b]) for b in range(256)]
    vocab += [f" w{i}".encode() for i in range(n_vocab - len(vocab))]
    out = bytearray(struct.pack("<I", GGML_MAGICS[kind]))
    if kind != "ggml":
        out += struct.pack("<I", version)
    ftype = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}.get(qtype, 10)
    out += struct.pack("<7i", n_vocab, dim, n_mult, n_head, n_layers, dim // n_head, ftype)
    for i, text in enumerate(vocab[:n_vocab]):
        out += struct.pack("<I", len(text)) + text
        if kind != "ggml":
            out += struct.pack("<f", -float(i))
    for name, (q, x, raw) in tensors.items():
        ne = list(reversed(x.shape))
        encoded = name.encode()
        out += struct.pack(f"<3i{len(ne)}i", len(ne), len(encoded), QTYPES[q].id, *ne) + encoded
        if kind == "ggjt":
            out += b"\0" * (-len(out) % 32)
        out += raw.tobytes()
    Path(path).write_bytes(bytes(out))
    return path


def write_safetensors_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """One .safetensors file (layout in minirs/formats/safetensors.py). bfloat16 is passed as ("BF16", uint16)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name, value in tensors.items():
        dtype, arr = value if isinstance(value, tuple) else (_ST_DTYPES[np.dtype(value.dtype)], value)
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


_ST_DTYPES = {np.dtype(k): v for k, v in [(np.float64, "F64"), (np.float32, "F32"), (np.float16, "F16"),
                                         (np.int64, "I64"), (np.int32, "I32"), (np.int16, "I16"), (np.int8, "I8"),
                                         (np.uint8, "U8"), (np.uint16, "U16"), (np.uint32, "U32"),
                                         (np.uint64, "U64"), (np.bool_, "BOOL")]}


def safetensors_weights(seed: int = 0, dim: int = 64, n_vocab: int = 128, n_layers: int = 2) -> dict:
    """Hugging Face llama-style weights: F32, F16 and BF16 tensors plus a couple of integer ones."""
    rng = np.random.default_rng(seed)
    w: dict = {"model.embed_tokens.weight": rng.standard_normal((n_vocab, dim)).astype(np.float16),
               "model.norm.weight": rng.standard_normal(dim).astype(np.float32),
               "lm_head.weight": rng.standard_normal((n_vocab, dim)).astype(np.float32)}
    for i in range(n_layers):
        bf16 = (rng.standard_normal((dim, dim)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        w[f"model.layers.{i}.self_attn.q_proj.weight"] = ("BF16", bf16)
        w[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((2 * dim, dim)).astype(np.float32)
        w[f"model.layers.{i}.input_layernorm.weight"] = np.ones(dim, np.float32)
    w["model.position_ids"] = np.arange(16, dtype=np.int64)
    w["model.mask"] = rng.integers(0, 2, 8).astype(np.bool_)
    return w


def write_safetensors_folder(folder: Path, seed: int = 0, n_shards: int = 2, index: bool = True) -> Path:
    """A sharded safetensors folder (model-0000i-of-0000n.safetensors), its index and a llama config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = safetensors_weights(seed)
    names = list(weights)
    weight_map = {}
    for s in range(n_shards):
        shard = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: weights[n] for n in names[s::n_shards]}
        write_safetensors_file(folder / shard, part)
        weight_map.update({n: shard for n in part})
    if index:
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "vocab_size": 128, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def gguf_fields(data: bytes) -> dict:
    """Byte offsets of a well-formed GGUF's header fields: {"n_tensors": off, "n_kv": off, "kv": [(key, key_len
    off, vtype off, value off)], "tensors": [(name, name_len off, ndims off, dims off, type off, offset off)]}."""
    (n_tensors, n_kv) = struct.unpack_from("<QQ", data, 8)
    pos, kvs, tensors = 24, [], []

    def skip_value(vtype, pos):
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if vtype in sizes:
            return pos + sizes[vtype]
        if vtype == 8:
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        etype, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        for _ in range(count):
            pos = skip_value(etype, pos)
        return pos

    for _ in range(n_kv):
        n = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8:pos + 8 + n].decode()
        vtype = struct.unpack_from("<I", data, pos + 8 + n)[0]
        kvs.append((key, pos, pos + 8 + n, pos + 12 + n))
        pos = skip_value(vtype, pos + 12 + n)
    for _ in range(n_tensors):
        n = struct.unpack_from("<Q", data, pos)[0]
        name = data[pos + 8:pos + 8 + n].decode()
        nd = struct.unpack_from("<I", data, pos + 8 + n)[0]
        dims = pos + 12 + n
        tensors.append((name, pos, pos + 8 + n, dims, dims + 8 * nd, dims + 8 * nd + 4))
        pos = dims + 8 * nd + 12
    return {"n_tensors": 8, "n_kv": 16, "kv": kvs, "tensors": tensors, "end": pos}



def mistral_tokenizer_file(name: str) -> Path:
    """One of the tokenizer files the mistral-common wheel ships (tokenizer.model.v1, tekken_240911.json, ...)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    return Path(MistralTokenizer._data_path()) / name


def write_mistral_folder(folder: Path, tokenizer_file: Path, vocab: int, seed: int = 0, dim: int = 32,
                         n_layers: int = 1, hidden_dim: int = 64) -> Path:
    """A tiny random model in Mistral's layout: params.json, consolidated.safetensors (F16, Mistral's names) and a
    copy of a real tokenizer file under the name Mistral's folders give it (tokenizer.model.v3, tekken.json)."""
    import shutil
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {"dim": dim, "n_layers": n_layers, "head_dim": 16, "hidden_dim": hidden_dim, "n_heads": 2,
              "n_kv_heads": 1, "norm_eps": 1e-5, "vocab_size": vocab, "rope_theta": 1e6}
    (folder / "params.json").write_text(json.dumps(params))
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)
    w = {"tok_embeddings.weight": rng.standard_normal((vocab, dim)).astype(np.float16),
         "norm.weight": np.ones(dim, np.float16), "output.weight": mat(vocab, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        w |= {p + "attention_norm.weight": np.ones(dim, np.float16), p + "ffn_norm.weight": np.ones(dim, np.float16),
              p + "attention.wq.weight": mat(32, dim), p + "attention.wk.weight": mat(16, dim),
              p + "attention.wv.weight": mat(16, dim), p + "attention.wo.weight": mat(dim, 32),
              p + "feed_forward.w1.weight": mat(hidden_dim, dim), p + "feed_forward.w3.weight": mat(hidden_dim, dim),
              p + "feed_forward.w2.weight": mat(dim, hidden_dim)}
    write_safetensors_file(folder / "consolidated.safetensors", w)
    version = tokenizer_file.name.split(".")[-1]
    name = "tekken.json" if tokenizer_file.suffix == ".json" else f"tokenizer.model.{version}"
    shutil.copy(tokenizer_file, folder / name)
    return folder
