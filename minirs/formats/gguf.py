"""Zero-copy GGUF (v2, v3) reader.

Layout (little-endian):
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x (key: string, value_type u32, value)       string = u64 length + UTF-8 bytes
    n_tensors x (name: string, n_dims u32, ne[n_dims] u64 (innermost first), type u32, offset u64)
    padding to `general.alignment` (default 32), then the tensor data; each offset is relative to that start.

The file is memory-mapped; tensors are views into the map. Every count, length and offset is checked against
the file size before it is used, so a hostile file raises FormatError instead of allocating or crashing.
"""

import struct
from pathlib import Path

import numpy as np

from minirs.errors import FormatError
from minirs.formats.model_file import ModelFile, Tensor
from minirs.formats.types import QTYPES_BY_ID

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4

# value type id -> (struct format, size) for scalar types
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads little-endian values from a bytes-like buffer, refusing to read past its end."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what} (at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what}: needs {n} bytes but the file ends at byte {self.size}")

    def scalar(self, fmt: str, size: int, what: str):
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.need(n, f"{what} of length {n}")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            return self.scalar(fmt, size, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth > 0:
                raise self.fail(f"{what}: nested arrays are not supported")
            etype = self.u32(f"{what} element type")
            count = self.u64(f"{what} element count")
            if etype in _SCALARS:
                size = _SCALARS[etype][1]
                self.need(count * size, f"{what} array of {count} elements")
                arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos).copy()
                self.pos += count * size
                return arr
            if etype == _STRING:
                # Each string takes at least its 8-byte length: refuse counts the rest of the file cannot hold.
                self.need(count * 8, f"{what} array of {count} strings")
                return [self.string(f"{what}[{i}]") for i in range(count)]
            if etype == _ARRAY:
                raise self.fail(f"{what}: nested arrays are not supported")
            raise self.fail(f"{what}: unknown array element type {etype}")
        raise self.fail(f"{what}: unknown value type {vtype}")


def read_gguf(path: Path, buf: np.ndarray) -> ModelFile:
    """Parse a GGUF file already mapped as `buf` (uint8)."""
    cur = _Cursor(buf, path)
    cur.need(4, "magic")
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {bytes(buf[:4])!r})")
    cur.pos = 4
    version = cur.u32("version")
    if version not in (2, 3):
        raise cur.fail(f"unsupported GGUF version {version} (minirs reads v2 and v3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # Every KV pair takes >= 12 bytes and every tensor record >= 28: bound the counts by the file size.
    if n_kv * 12 > cur.size or n_tensors * 28 > cur.size:
        raise cur.fail(f"absurd counts: {n_tensors} tensors, {n_kv} metadata pairs in a {cur.size}-byte file")

    metadata: dict = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"type of {key!r}")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}")
        n_dims = cur.u32(f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        ne = [cur.u64(f"tensor {name!r} dim {d}") for d in range(n_dims)]
        type_id = cur.u32(f"tensor {name!r} type")
        offset = cur.u64(f"tensor {name!r} offset")
        infos.append((name, ne, type_id, offset))

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment must be a power of two, got {alignment!r}")
    data_start = (cur.pos + alignment - 1) // alignment * alignment

    tensors = {}
    spans = []
    for name, ne, type_id, offset in infos:
        qt = QTYPES_BY_ID.get(type_id)
        if qt is None:
            raise cur.fail(f"tensor {name!r} has unknown type id {type_id}")
        if name in tensors:
            raise cur.fail(f"tensor {name!r} appears twice")
        n = 1
        for d in ne:
            if d == 0 or d > cur.size * 8:
                raise cur.fail(f"tensor {name!r} has dimension {d}, impossible for a {cur.size}-byte file")
            n *= d
        if ne[0] % qt.block_size:
            raise cur.fail(f"tensor {name!r}: row length {ne[0]} is not a multiple of {qt.name}'s block "
                           f"size {qt.block_size}")
        nbytes = n // qt.block_size * qt.type_size
        start = data_start + offset
        if offset % alignment or start + nbytes > cur.size:
            raise cur.fail(f"tensor {name!r} ({qt.name}, {nbytes} bytes at offset {offset}) lies outside the "
                           f"file's data ({cur.size - data_start} bytes) or is misaligned")
        spans.append((start, start + nbytes, name))
        tensors[name] = Tensor(name, qt.name, tuple(int(d) for d in reversed(ne)), buf[start:start + nbytes])

    spans.sort()
    for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
        if s1 < e0:
            raise cur.fail(f"tensors {a!r} and {b!r} overlap")
    return ModelFile(path=path, format="gguf", version=version, metadata=metadata, tensors=tensors)
