"""Zero-copy GGUF (v2, v3) reader.

Layout (little-endian):
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x (key: string, value_type u32, value)       string = u64 length + UTF-8 bytes
        value_type: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array, 10 u64, 11 i64, 12 f64
        array = element_type u32 | count u64 | count x element
    n_tensors x (name: string, n_dims u32, ne[n_dims] u64 (innermost first), type u32, offset u64)
    padding to `general.alignment` (default 32), then the tensor data; each offset is relative to that start.

The file is memory-mapped; tensors are views into the map. Every count, length and offset is checked against
the file size before it is used, so a hostile file raises FormatError instead of allocating or crashing.

Opening is dominated by the tokenizer's string arrays (262k tokens for Gemma 3). They are split in bulk with
NumPy (`_string_array`), falling back to a plain loop for the rare arrays the fast path cannot prove correct.
"""

import itertools
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
_U64 = struct.Struct("<Q").unpack_from


def _decode(raw) -> str:
    return str(raw, "utf-8", "replace")


def _string_array_fast(buf: np.ndarray, pos: int, count: int) -> tuple[list[str], int] | None:
    """Split `count` length-prefixed strings starting at `pos` in bulk, or return None if it cannot.

    A length prefix whose value is below 2^24 has zero bytes 3..7: every such position in a window is a
    candidate. The one or two positions just before a prefix are candidates too, so only the last of each run
    of adjacent candidates is kept. The first `count` candidates must then chain exactly (each one's
    8 + length reaches the next), which proves they are the true prefixes; anything else (a string of 16 MB or
    more, NULs inside strings, two empty strings in a row) falls back to the loop. Replacing each 8-byte prefix
    by one NUL byte lets one UTF-8 decode and one str.split do the rest, provided no string holds a NUL and the
    decode is strict (so every string is valid UTF-8 on its own: ASCII cannot sit inside a multi-byte char).
    """
    size = len(buf)
    span = count * 16 + 4096  # a guess at the array's byte length; grown until the chain fits
    while True:
        end = min(size, pos + span)
        win = buf[pos:end]
        n = len(win) - 7
        if n <= 0:
            return None
        z = win == 0
        ok = z[3:3 + n] & z[4:4 + n] & z[5:5 + n] & z[6:6 + n] & z[7:7 + n]
        # a short string's prefix at s makes s-2, s-1 and s candidates: keep the last of each run
        ok[:-1] &= ~ok[1:]
        cand = np.flatnonzero(ok)
        length = win[cand].astype(np.int64) | win[cand + 1].astype(np.int64) << 8 | win[cand + 2].astype(np.int64) << 16
        nxt = cand + 8 + length
        if len(cand) >= count and (nxt[count - 1] < len(win) or end == size):
            break
        if end == size:
            return None
        span *= 4
    cand, nxt = cand[:count], nxt[:count]
    if count == 0 or cand[0] != 0 or nxt[-1] > len(win) or not np.array_equal(nxt[:-1], cand[1:]):
        return None
    stop = int(nxt[-1])
    keep = np.ones(stop, dtype=bool)
    for k in range(7):  # drop prefix bytes 0..6; byte 7 (always 0 here) becomes the separator
        keep[cand + k] = False
    joined = win[:stop][keep]
    if np.count_nonzero(joined == 0) != count:
        return None
    try:
        text = joined.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.split("\x00")[1:], pos + stop


class _Cursor:
    """Reads little-endian values from a uint8 buffer, refusing to read past its end."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.mv, self.pos, self.size, self.path = buf, memoryview(buf), 0, len(buf), path

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what} (at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what}: needs {n} bytes but the file ends at byte {self.size}")

    def scalar(self, fmt: str, size: int, what: str):
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.mv, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.need(n, f"{what} of length {n}")
        s = _decode(self.mv[self.pos:self.pos + n])
        self.pos += n
        return s

    def strings(self, count: int, what: str) -> list[str]:
        # Each string takes at least its 8-byte length: refuse counts the rest of the file cannot hold.
        self.need(count * 8, f"{what}: array of {count} strings")
        fast = _string_array_fast(self.buf, self.pos, count)
        if fast is not None:
            out, self.pos = fast
            return out
        mv, p, size, out = self.mv, self.pos, self.size, [""] * count
        for i in range(count):
            if p + 8 > size:
                self.pos = p
                raise self.fail(f"{what}[{i}]: string length runs past the end of the file ({size} bytes)")
            (n,) = _U64(mv, p)
            p += 8
            if p + n > size:
                self.pos = p
                raise self.fail(f"{what}[{i}]: string of length {n} runs past the end of the file ({size} bytes)")
            out[i] = _decode(mv[p:p + n])
            p += n
        self.pos = p
        return out

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            return self.scalar(fmt, size, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.u32(f"{what} element type")
            count = self.u64(f"{what} element count")
            if etype in _SCALARS:
                size = _SCALARS[etype][1]
                self.need(count * size, f"{what}: array of {count} elements")
                arr = np.frombuffer(self.mv, dtype=_NUMPY[etype], count=count, offset=self.pos).copy()
                self.pos += count * size
                return arr
            if etype == _STRING:
                return self.strings(count, what)
            if etype == _ARRAY:
                raise self.fail(f"{what}: nested arrays are not supported")
            raise self.fail(f"{what}: unknown array element type {etype}")
        raise self.fail(f"{what}: unknown value type {vtype}")


def read_gguf(path: Path, buf: np.ndarray) -> ModelFile:
    """Parse a GGUF file already mapped as `buf` (uint8)."""
    cur = _Cursor(buf, path)
    cur.need(24, "header (magic, version, counts)")
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {bytes(buf[:4])!r})")
    cur.pos = 4
    version = cur.u32("version")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian GGUF, which minirs does not read)" if swapped in (2, 3) else ""
        raise cur.fail(f"unsupported GGUF version {version}{hint} (minirs reads v2 and v3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # Every KV pair takes >= 13 bytes and every tensor record >= 32: bound the counts by the file size.
    if n_kv * 13 > cur.size or n_tensors * 32 > cur.size:
        raise cur.fail(f"absurd counts: {n_tensors} tensors, {n_kv} metadata pairs in a {cur.size}-byte file")

    metadata: dict = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:
            raise cur.fail(f"metadata key {key!r} appears twice")
        vtype = cur.u32(f"type of {key!r}")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}")
        n_dims = cur.u32(f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        cur.need(8 * n_dims + 12, f"tensor {name!r} record")
        ne = list(struct.unpack_from(f"<{n_dims}Q", cur.mv, cur.pos))
        cur.pos += 8 * n_dims
        type_id = cur.u32(f"tensor {name!r} type")
        offset = cur.u64(f"tensor {name!r} offset")
        infos.append((name, ne, type_id, offset))

    alignment = metadata.get("general.alignment", 32)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
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
        if n >= 1 << 63:
            raise cur.fail(f"tensor {name!r}: element count {n} (dims {ne}) overflows int64")
        if ne[0] % qt.block_size:
            raise cur.fail(f"tensor {name!r}: row length {ne[0]} is not a multiple of {qt.name}'s block "
                           f"size {qt.block_size}")
        nbytes = n // qt.block_size * qt.type_size
        start = data_start + offset
        if offset % alignment or start + nbytes > cur.size:
            raise cur.fail(f"tensor {name!r} ({qt.name}, {nbytes} bytes at offset {offset}) lies outside the "
                           f"file's data ({max(cur.size - data_start, 0)} bytes) or is misaligned")
        spans.append((start, start + nbytes, name))
        tensors[name] = Tensor(name, qt.name, tuple(int(d) for d in reversed(ne)), buf[start:start + nbytes])

    spans.sort()
    for (_, e0, a), (s1, _, b) in itertools.pairwise(spans):
        if s1 < e0:
            raise cur.fail(f"tensors {a!r} and {b!r} overlap")
    return ModelFile(path=path, format="gguf", version=version, metadata=metadata, tensors=tensors)
