"""Zero-copy reader of llama.cpp's legacy GGML files: unversioned `ggml`, `ggmf` v1 and `ggjt` v1-v3.

Layout (little-endian; the magic is a u32, so 'ggjt' = 0x67676a74 is stored as the bytes "tjgg"):
    magic u32 | version u32 (ggmf, ggjt only)
    hparams: n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype   (7 x i32)
    n_vocab x (len u32 | len bytes of text | score f32 (not in unversioned ggml))
    tensor records until the end of the file:
        n_dims i32 | name_len i32 | type i32 | ne[n_dims] i32 (innermost first) | name
        | (ggjt only) zero padding to the next multiple of 32 of the file offset | data

The result looks like a GGUF made by llama.cpp's convert-llama-ggml-to-gguf.py: hparams become llama.* keys,
the vocab becomes tokenizer.ggml.* (with <unk>, <s>, </s> named, control and byte tokens typed, spaces as
U+2581), and tensor names are mapped to GGUF's (`layers.0.attention.wq.weight` -> `blk.0.attn_q.weight`).
The header has no n_head_kv or norm epsilon, so they are arguments (`gqa`, `eps`).

Quantized layouts changed over these versions: before ggjt v2 the 4/8-bit blocks packed their nibbles
differently, and before ggjt v3 Q4_0, Q4_1 and Q8_0 stored f32 scales. Only layouts identical to today's types
are accepted; the rest is refused with a message saying how to convert.
"""

import re
import struct
from array import array
from pathlib import Path

import numpy as np

from minirs.errors import FormatError, quote
from minirs.formats.model_file import ModelFile, Tensor
from minirs.formats.types import QTYPES_BY_ID

MAGICS = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}
VERSIONS = {"ggml": (0,), "ggmf": (1,), "ggjt": (1, 2, 3)}
DEFAULT_EPS = 5e-6  # llama.cpp's LLAMA_DEFAULT_RMS_EPS in the ggjt days (LLaMA 2 wants 1e-5)
CONTEXT_LENGTH = 2048  # what the converter assumes; the old header does not say
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6
MAX_NAME = 64  # GGML_MAX_NAME was never above 64 (it was 32, then 48, in the ggjt days)

_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
          "output.weight": "output.weight"}
_LAYER_NAMES = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
                "attention.wo": "attn_output", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
                "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)\.weight")


def gguf_tensor_name(name: str) -> str:
    """Map an old llama tensor name to its GGUF name (unknown names are kept)."""
    if name in _NAMES:
        return _NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return name


def _layout_problem(kind: str, version: int, qtype: str) -> str | None:
    """Why tensors of `qtype` in this file version cannot be read as today's type, or None if they can."""
    if qtype in ("F32", "F16"):
        return None
    newest = kind == "ggjt" and version == 3
    if newest:
        return None
    if kind == "ggjt" and version == 2 and qtype in ("Q5_0", "Q5_1"):
        return None  # Q5 blocks have had f16 scales since they were added
    if kind == "ggjt" and version == 2 and qtype in ("Q4_0", "Q4_1", "Q8_0"):
        return "uses the pre-ggjt-v3 layout with f32 scales"
    return "uses an old quantized layout (before ggjt v2 the block packing differed)"


def feed_forward_length(n_embd: int, n_mult: int) -> int:
    """llama.cpp's n_ff for the old header: 2/3 of 4 * n_embd rounded up to a multiple of n_mult."""
    return ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult


def _vocab_texts(mv: memoryview, starts, types: np.ndarray) -> list[str]:
    """The texts of the tokens whose bytes start at `starts` (each after its u32 length), as
    convert-llama-ggml-to-gguf.py makes them: the specials named, control and byte tokens typed in `types`,
    spaces as U+2581."""
    tokens = []
    for i, pos in enumerate(starts):
        (n,) = struct.unpack_from("<I", mv, pos - 4)
        text = bytes(mv[pos:pos + n])
        if i <= 2:
            text, types[i] = [b"<unk>", b"<s>", b"</s>"][i], [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL][i]
        elif n == 0:
            types[i] = TOKEN_CONTROL
        elif i <= 258 and n == 1:
            text, types[i] = f"<0x{text[0]:02X}>".encode(), TOKEN_BYTE
        else:
            text = text.replace(b" ", "\u2581".encode())
        tokens.append(text.decode("utf-8", "replace"))
    return tokens


def read_ggml(path: Path, buf: np.ndarray, gqa: int = 1, eps: float = DEFAULT_EPS) -> ModelFile:
    """Parse a legacy GGML/GGMF/GGJT file already mapped as `buf` (uint8)."""
    size = len(buf)
    mv = memoryview(buf)
    pos = 0

    def fail(what: str) -> FormatError:
        return FormatError(f"{path}: {what} (at byte {pos})")

    def ints(n: int, what: str, fmt: str = "i") -> tuple:
        nonlocal pos
        if pos + 4 * n > size:
            raise fail(f"{what}: needs {4 * n} bytes but the file ends at byte {size}")
        v = struct.unpack_from(f"<{n}{fmt}", mv, pos)
        pos += 4 * n
        return v

    (magic,) = ints(1, "magic", "I")
    kind = MAGICS.get(magic)
    if kind is None:
        raise fail(f"not a GGML file (magic 0x{magic:08x})")
    version = ints(1, "version", "I")[0] if kind != "ggml" else 0
    if version not in VERSIONS[kind]:
        raise fail(f"unsupported {kind} version {version} (minirs reads {kind} {VERSIONS[kind]})")
    n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype = ints(7, "hparams")
    for name, v in [("n_vocab", n_vocab), ("n_embd", n_embd), ("n_mult", n_mult), ("n_head", n_head),
                    ("n_layer", n_layer), ("n_rot", n_rot)]:
        if v <= 0 or v > size:
            raise fail(f"hparam {name} = {v} is impossible")
    if type(gqa) is not int or gqa <= 0 or n_head % gqa:
        raise FormatError(f"{path}: gqa={gqa!r} must be a positive divisor of n_head = {n_head}")

    has_score = kind != "ggml"
    entry = 8 if has_score else 4
    if pos + n_vocab * entry > size:
        raise fail(f"vocab of {n_vocab} tokens cannot fit in the rest of the file")
    # Here only where each token lies is noted; the texts are decoded once the whole file has parsed, so that a
    # corrupt length costs no decoding: the field after it, thrown off, is where the error shows.
    starts = array("q")
    scores, types = np.zeros(n_vocab, dtype=np.float32), np.full(n_vocab, TOKEN_NORMAL, np.int32)
    for i in range(n_vocab):
        if pos + entry > size:
            raise fail(f"vocab entry {i} runs past the end of the file")
        (n,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if pos + n + entry - 4 > size:
            raise fail(f"vocab entry {i} of length {n} runs past the end of the file")
        starts.append(pos)
        pos += n
        if has_score:
            (scores[i],) = struct.unpack_from("<f", mv, pos)
            pos += 4

    tensors: dict[str, Tensor] = {}
    while pos < size:
        n_dims, name_len, type_id = ints(3, "tensor record header")
        if not 1 <= n_dims <= 4:
            raise fail(f"tensor record has {n_dims} dimensions (1..4 allowed)")
        if not 0 < name_len <= min(MAX_NAME, size - pos):
            raise fail(f"tensor name length {name_len} is impossible (ggml's names are at most {MAX_NAME} bytes)")
        ne = ints(n_dims, "tensor dims")
        if pos + name_len > size:
            raise fail(f"tensor name of length {name_len} runs past the end of the file")
        old_name = bytes(mv[pos:pos + name_len]).decode("utf-8", "replace")
        pos += name_len
        what = f"tensor {quote(old_name)}"
        qt = QTYPES_BY_ID.get(type_id)
        if qt is None or qt.id > 15:  # the i-quants and integer types came after GGUF
            raise fail(f"{what} has unknown or unsupported type id {type_id}")
        problem = _layout_problem(kind, version, qt.name)
        if problem:
            raise fail(f"{what} is {qt.name} in a {kind} v{version} file, which {problem}; minirs reads "
                       f"quantized legacy files only as ggjt v3: re-convert the model to GGUF or ggjt v3")
        n = 1
        for d in ne:
            if d <= 0 or d > size * 8:
                raise fail(f"{what} has dimension {d}, impossible for a {size}-byte file")
            n *= d
        if ne[0] % qt.block_size:
            raise fail(f"{what}: row length {ne[0]} is not a multiple of {qt.name}'s block size {qt.block_size}")
        if kind == "ggjt":
            pos += -pos % 32
        nbytes = n // qt.block_size * qt.type_size
        if pos + nbytes > size:
            raise fail(f"{what} ({qt.name}, {nbytes} bytes) runs past the end of the file ({size} bytes)")
        name = gguf_tensor_name(old_name)
        if name in tensors:
            raise fail(f"{what} appears twice")
        tensors[name] = Tensor(name, qt.name, tuple(reversed(ne)), buf[pos:pos + nbytes])
        pos += nbytes

    tokens = _vocab_texts(mv, starts, types)
    n_ff = feed_forward_length(n_embd, n_mult)
    if "blk.0.ffn_gate.weight" in tensors:  # the tensor knows better (70B-style models break the formula)
        n_ff = tensors["blk.0.ffn_gate.weight"].shape[0]
    metadata = {
        "general.architecture": "llama",
        "general.name": path.stem,
        "general.file_type": ftype,
        "llama.context_length": CONTEXT_LENGTH,
        "llama.embedding_length": n_embd,
        "llama.block_count": n_layer,
        "llama.feed_forward_length": n_ff,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head // gqa,
        "llama.rope.dimension_count": n_rot,
        "llama.attention.layer_norm_rms_epsilon": float(eps),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    return ModelFile(path=path, format=kind, version=version, metadata=metadata, tensors=tensors)
