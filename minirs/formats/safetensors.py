"""Zero-copy safetensors reader: one file, or a folder of shards (with or without model.safetensors.index.json).

Layout of a file (little-endian):
    header_size u64 | header: header_size bytes of UTF-8 JSON | data
    header = {"__metadata__": {str: str} (optional),
              name: {"dtype": "F32" | "F16" | "BF16" | "F64" | "I8" | ... | "BOOL",
                     "shape": [int, ...] (NumPy order), "data_offsets": [begin, end]} ...}
    offsets are relative to the start of the data; end - begin = prod(shape) * itemsize.

The dtype names become Tensor.qtype. Those GGUF also has keep their names (F32, F16, BF16, F64, I8, I16, I32,
I64); U8, U16, U32, U64 and BOOL have no GGML type and are minirs-only names (see types.py). Tensor names stay
as in the file: the model code maps them. A `config.json` beside the weights is read into the metadata, whole
under "hf.config" and as GGUF-style keys where the meaning is plain (general.architecture from model_type,
{arch}.embedding_length from hidden_size, ...).
"""

import itertools
import json
from pathlib import Path

import numpy as np

from minirs.errors import FormatError, quote
from minirs.formats.model_file import ModelFile, Tensor
from minirs.formats.types import QTYPES

MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself uses
INDEX_FILE = "model.safetensors.index.json"
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]

# config.json key -> GGUF key suffix (prefixed with "{arch}.")
_CONFIG_KEYS = {
    "max_position_embeddings": "context_length",
    "hidden_size": "embedding_length",
    "num_hidden_layers": "block_count",
    "intermediate_size": "feed_forward_length",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "layer_norm_eps": "attention.layer_norm_epsilon",
    "rope_theta": "rope.freq_base",
    "head_dim": "attention.key_length",
    "vocab_size": "vocab_size",
    "sliding_window": "attention.sliding_window",
}


def _fail(path: Path, what: str) -> FormatError:
    return FormatError(f"{path}: {what}")


def _map(path: Path) -> np.ndarray:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise _fail(path, f"cannot open ({e.strerror})") from None
    if size == 0:
        raise _fail(path, "file is empty")
    return np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)


def read_safetensors_file(path: Path, buf: np.ndarray | None = None) -> tuple[dict[str, Tensor], dict]:
    """Parse one .safetensors file: (tensors by name, the header's __metadata__)."""
    buf = _map(path) if buf is None else buf
    size = len(buf)
    if size < 8:
        raise _fail(path, f"file of {size} bytes is too short for the 8-byte header size")
    n = int(buf[:8].view(np.uint64)[0])
    if n > MAX_HEADER:
        raise _fail(path, f"header of {n} bytes is larger than the {MAX_HEADER}-byte limit")
    if 8 + n > size:
        raise _fail(path, f"header of {n} bytes runs past the end of the file ({size} bytes)")
    try:
        header = json.loads(buf[8:8 + n].tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: a decode error, bad JSON, an int over 4,300 digits
        raise _fail(path, f"header is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(path, "__metadata__ must be an object of strings")

    data_start = 8 + n
    data_size = size - data_start
    tensors, spans = {}, []
    for name, info in header.items():
        what = f"tensor {quote(name)}"
        if not isinstance(info, dict):
            raise _fail(path, f"{what}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise _fail(path, f"{what}: unsupported dtype {quote(dtype)} (minirs reads {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 8:
            raise _fail(path, f"{what}: shape {quote(shape)} is not a list of at most 8 non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(path, f"{what}: data_offsets {quote(offsets)} must be [begin, end] with 0 <= begin <= end")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * QTYPES[dtype].type_size
        begin, end = offsets
        if end - begin != nbytes:
            raise _fail(path, f"{what}: {dtype} shape {shape} needs {nbytes} bytes but data_offsets span "
                              f"{end - begin}")
        if end > data_size:
            raise _fail(path, f"{what}: data_offsets [{begin}, {end}] run past the end of the data "
                              f"({data_size} bytes)")
        if end > begin:
            spans.append((begin, end, name))
        tensors[name] = Tensor(name, dtype, tuple(shape), buf[data_start + begin:data_start + end])
    spans.sort()
    for (_, e0, a), (s1, _, b) in itertools.pairwise(spans):  # sorted non-empty spans: neighbours suffice
        if s1 < e0:
            raise _fail(path, f"tensors {quote(a)} and {quote(b)} overlap")
    return tensors, meta


def config_metadata(config: dict) -> dict:
    """GGUF-style metadata from a Hugging Face config.json (which is also kept whole under "hf.config")."""
    meta: dict = {"hf.config": config}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    arch = config.get("model_type")
    if isinstance(arch, str):
        meta["general.architecture"] = arch
        for src in (config, text):
            for key, suffix in _CONFIG_KEYS.items():
                value = src.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    meta.setdefault(f"{arch}.{suffix}", value)
    if isinstance(config.get("_name_or_path"), str):
        meta["general.name"] = config["_name_or_path"]
    return meta


def _read_json(path: Path):
    try:
        if path.stat().st_size > MAX_HEADER:
            raise _fail(path, f"larger than the {MAX_HEADER}-byte limit for JSON files")
        return json.loads(path.read_text(encoding="utf-8"))
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:  # ValueError: a decode error, bad JSON, an int over 4,300 digits
        raise _fail(path, f"not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror})") from None


def read_safetensors(path: Path, buf: np.ndarray | None = None) -> ModelFile:
    """Open a .safetensors file or a folder of shards; tensors are views into the files' memory maps."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    metadata: dict = {}
    config = folder / "config.json"
    if config.is_file():
        cfg = _read_json(config)
        if not isinstance(cfg, dict):
            raise _fail(config, "is not a JSON object")
        metadata.update(config_metadata(cfg))

    if not path.is_dir():
        tensors, meta = read_safetensors_file(path, buf)
        metadata["safetensors.metadata"] = meta
        return ModelFile(path=path, format="safetensors", version=1, metadata=metadata, tensors=tensors)

    index = path / INDEX_FILE
    if index.is_file():
        idx = _read_json(index)
        weight_map = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise _fail(index, "has no \"weight_map\" object of tensor name -> shard file")
        shards = sorted(set(weight_map.values()))
        for s in shards:
            if Path(s).name != s:
                raise _fail(index, f"shard name {quote(s)} is not a plain file name in the folder")
        if isinstance(idx.get("metadata"), dict):
            metadata["safetensors.index_metadata"] = idx["metadata"]
    else:
        weight_map = None
        shards = sorted(p.name for p in path.glob("*.safetensors"))
        if not shards:
            raise _fail(path, f"folder has neither {INDEX_FILE} nor any *.safetensors file")

    tensors: dict[str, Tensor] = {}
    for shard in shards:
        shard_path = path / shard
        if not shard_path.is_file():
            raise _fail(index, f"shard {quote(shard)} does not exist")
        part, meta = read_safetensors_file(shard_path)
        metadata.setdefault("safetensors.metadata", meta)
        for name, t in part.items():
            if name in tensors:
                raise _fail(shard_path, f"tensor {quote(name)} is also in another shard")
            if weight_map is not None and weight_map.get(name) != shard:
                raise _fail(shard_path, f"tensor {quote(name)} is not listed for this shard in {INDEX_FILE}")
            tensors[name] = t
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise _fail(index, f"{len(missing)} tensors listed but not found in their shards, e.g. {quote(missing[0])}")
    return ModelFile(path=path, format="safetensors", version=1, metadata=metadata, tensors=tensors)
