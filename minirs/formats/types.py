"""GGML tensor types: id, name, elements per block and bytes per block.

The numbers are those of ggml.h (mirrored by the `gguf` package); a quantized row of `n` elements takes
`n // block_size * type_size` bytes.

safetensors also has dtypes GGUF lacks (U8, U16, U32, U64, BOOL). They get names of the same style and ids
from 1000 up that no GGUF file can use: they are in QTYPES (by name) but not in QTYPES_BY_ID.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class QType:
    id: int
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block

    def row_bytes(self, n: int) -> int:
        """Bytes taken by a row of n elements (n must be a multiple of block_size)."""
        return n // self.block_size * self.type_size


_TABLE = [
    (0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24), (8, "Q8_0", 32, 34), (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84), (11, "Q3_K", 256, 110), (12, "Q4_K", 256, 144), (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210), (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66), (17, "IQ2_XS", 256, 74), (18, "IQ3_XXS", 256, 98), (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18), (21, "IQ3_S", 256, 110), (22, "IQ2_S", 256, 82), (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1), (25, "I16", 1, 2), (26, "I32", 1, 4), (27, "I64", 1, 8), (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56), (30, "BF16", 1, 2), (34, "TQ1_0", 256, 54), (35, "TQ2_0", 256, 66),
]

# minirs-only element types (safetensors dtypes with no GGML type), never read from or written to a GGUF file
_EXTRA = [(1000, "U8", 1, 1), (1001, "U16", 1, 2), (1002, "U32", 1, 4), (1003, "U64", 1, 8), (1004, "BOOL", 1, 1)]

QTYPES_BY_ID: dict[int, QType] = {i: QType(i, n, b, s) for i, n, b, s in _TABLE}
QTYPES: dict[str, QType] = {q.name: q for q in QTYPES_BY_ID.values()}
QTYPES.update({n: QType(i, n, b, s) for i, n, b, s in _EXTRA})
