"""Model file readers (GGUF, legacy GGML, safetensors) and the quantized types' decoders and encoders.

    from minirs.formats import load_model_file, dequantize
    mf = load_model_file("model.gguf")
    w = dequantize(mf.tensors["blk.0.attn_q.weight"])   # float32, shape (n_out, n_in)

`python -m minirs.formats FILE [--tensors]` prints a summary of a model file.
"""

from pathlib import Path

import numpy as np

from minirs.errors import FormatError
from minirs.formats.gguf import StringArray
from minirs.formats.model_file import ModelFile, Tensor
from minirs.formats.quantize import quantize
from minirs.formats.quants import dequantize
from minirs.formats.types import QTYPES, QTYPES_BY_ID, QType

__all__ = [
    "QTYPES",
    "QTYPES_BY_ID",
    "FormatError",
    "ModelFile",
    "QType",
    "StringArray",
    "Tensor",
    "dequantize",
    "load_model_file",
    "quantize",
]

_GGML_MAGICS = {b"lmgg", b"fmgg", b"tjgg"}  # u32 magics 'ggml', 'ggmf', 'ggjt' as little-endian bytes


def _map(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise FormatError(f"{path}: file is empty")
    # A plain ndarray view of the read-only map (it keeps the map alive): slicing it is much cheaper than
    # slicing an np.memmap, which matters for files with thousands of tensors.
    return np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)


def load_model_file(path, *, gqa: int = 1, eps: float | None = None) -> ModelFile:
    """Open a model file (format detected from its magic bytes) without copying its tensor data.

    `path` is a GGUF, legacy GGML/GGMF/GGJT or safetensors file, or a folder of safetensors shards.
    `gqa` (n_head // n_head_kv) and `eps` (RMS norm epsilon) are used by legacy GGML files only, whose header
    lacks them.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    if path.is_dir():
        from minirs.formats.safetensors import read_safetensors
        return read_safetensors(path)
    try:
        buf = _map(path)
    except OSError as e:
        raise FormatError(f"{path}: cannot open ({e.strerror})") from None
    magic = bytes(buf[:4])
    if magic == b"GGUF":
        from minirs.formats.gguf import read_gguf
        return read_gguf(path, buf)
    if magic in _GGML_MAGICS:
        from minirs.formats.ggml import DEFAULT_EPS, read_ggml
        return read_ggml(path, buf, gqa=gqa, eps=DEFAULT_EPS if eps is None else eps)
    if len(buf) >= 9 and buf[8] == ord("{"):
        from minirs.formats.safetensors import read_safetensors
        return read_safetensors(path, buf)
    raise FormatError(f"{path}: unknown file format (magic bytes {magic!r}; expected GGUF, GGML or safetensors)")
