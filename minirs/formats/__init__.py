"""Model file readers (GGUF, legacy GGML, safetensors) and the quantized types' decoders.

    from minirs.formats import load_model_file, dequantize
    mf = load_model_file("model.gguf")
    w = dequantize(mf.tensors["blk.0.attn_q.weight"])   # float32, shape (n_out, n_in)
"""

from pathlib import Path

import numpy as np

from minirs.errors import FormatError
from minirs.formats.model_file import ModelFile, Tensor
from minirs.formats.quants import dequantize
from minirs.formats.types import QTYPES, QTYPES_BY_ID, QType

__all__ = [
    "QTYPES",
    "QTYPES_BY_ID",
    "FormatError",
    "ModelFile",
    "QType",
    "Tensor",
    "dequantize",
    "load_model_file",
]


def _map(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise FormatError(f"{path}: file is empty")
    return np.memmap(path, dtype=np.uint8, mode="r")


def load_model_file(path, **kwargs) -> ModelFile:
    """Open a model file (format detected from its magic bytes) without copying its tensor data."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    if path.is_dir():
        raise FormatError(f"{path}: is a folder; no reader for folders is available")
    buf = _map(path)
    magic = bytes(buf[:4])
    if magic == b"GGUF":
        from minirs.formats.gguf import read_gguf
        return read_gguf(path, buf)
    raise FormatError(f"{path}: unknown file format (magic bytes {magic!r})")
