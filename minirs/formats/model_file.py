"""What every reader returns: a ModelFile with GGUF-style metadata and a table of zero-copy tensors."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirs.formats.types import QTYPES


@dataclass(frozen=True)
class Tensor:
    """One tensor of a model file.

    `shape` is the logical element shape in NumPy order (rows last-but-one, contiguous elements last), so a
    GGUF weight with ne = [n_in, n_out] has shape (n_out, n_in). `data` is a read-only uint8 view of the tensor's
    bytes inside the file's memory map: nothing is copied until a kernel or `dequantize` reads it.
    """

    name: str
    qtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # (nbytes,) uint8, a view into the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def rows(self) -> np.ndarray:
        """The raw bytes as a (n_rows, row_bytes) uint8 matrix, the form the matmul kernels take."""
        row_bytes = QTYPES[self.qtype].row_bytes(self.shape[-1])
        return self.data.reshape(-1, row_bytes)


@dataclass
class ModelFile:
    """A parsed model file: format, metadata (GGUF key names) and tensors by name."""

    path: Path
    format: str  # "gguf", "ggml", "ggmf", "ggjt" or "safetensors"
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def __repr__(self) -> str:
        return (f"ModelFile({str(self.path)!r}, format={self.format} v{self.version}, arch={self.architecture}, "
                f"{len(self.tensors)} tensors, {len(self.metadata)} metadata keys)")
