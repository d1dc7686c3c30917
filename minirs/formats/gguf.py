"""Zero-copy GGUF (v2, v3) reader.

Layout (little-endian):
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x (key: string, value_type u32, value)       string = u64 length + UTF-8 bytes
        value_type: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array, 10 u64, 11 i64, 12 f64
        array = element_type u32 | count u64 | count x element
    n_tensors x (name: string, n_dims u32, ne[n_dims] u64 (innermost first), type u32, offset u64)
    padding to `general.alignment` (default 32), then the tensor data; each offset is relative to that start.

The file is memory-mapped; tensors are views into the map. Every count, length and offset is checked against
the bytes left in the file before anything is allocated or sliced, so a hostile file raises FormatError instead
of allocating or crashing; what the reader allocates grows only with the bytes it has read. Keys and tensor names
are held to the spec's limits (65,535 and 64 bytes), string values are decoded only once the whole header has
parsed, and messages quote at most a short prefix of any name (`minirs.errors.quote`).

String arrays (Gemma 3's 262,144 tokens, a BPE vocabulary's merges) become a `StringArray`: the map plus one
offset per string, 8 bytes a string however the file spells them, decoded to str when read.
"""

import itertools
import struct
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from minirs.errors import FormatError, quote
from minirs.formats.model_file import ModelFile, Tensor
from minirs.formats.types import QTYPES_BY_ID

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4
MAX_KEY = 65_535  # GGUF spec: a key is at most 2^16 - 1 bytes
MAX_NAME = 64  # GGUF spec: a tensor name is at most 64 bytes (llama.cpp's GGML_MAX_NAME)
DECODE_CHUNK = 1 << 20  # StringArray decodes at most this many bytes of strings at once

# value type id -> (struct format, size) for scalar types
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q").unpack_from


def _decode(raw) -> str:
    return str(raw, "utf-8", "replace")


class StringArray(Sequence[str]):
    """A GGUF string array read in place: string i is buf[starts[i]:starts[i + 1] - 8] (the next string's u64
    length lies between the two), decoded as UTF-8 when it is read, invalid bytes as U+FFFD.

    It holds 8 bytes a string (the offsets, never more than the file spent on the strings' lengths) and a view of
    the map, where a list of short str costs ~60 bytes a string. Iterating (and `tolist`) decodes in bulk,
    DECODE_CHUNK bytes at a time; which str objects to keep is the caller's choice. Equal to a list or tuple of
    the same strings.
    """

    def __init__(self, buf: np.ndarray, starts: np.ndarray):
        self._buf, self._mv, self._starts = buf, memoryview(buf), starts  # starts: (len + 1,) int64

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"StringArray index {index} out of range for {n} strings")
        return _decode(self._mv[int(self._starts[i]):int(self._starts[i + 1]) - 8])

    def __iter__(self) -> Iterator[str]:
        starts, lo, n = self._starts, 0, len(self)
        while lo < n:
            hi = int(np.searchsorted(starts, starts[lo] + DECODE_CHUNK, "right")) - 1
            hi = min(max(hi, lo + 1), n)
            yield from self._decode_range(lo, hi)
            lo = hi

    def _decode_range(self, lo: int, hi: int) -> list[str]:
        """Strings lo..hi-1 with one UTF-8 decode: the 8-byte lengths between them are cut to their last byte,
        always 0 (lengths are below 2^56), which then separates the strings. That needs no NUL inside a string and
        every string valid UTF-8 on its own (a NUL cannot sit inside a multi-byte character); else one by one."""
        if hi - lo > 1:
            starts = self._starts
            first, stop = int(starts[lo]) - 8, int(starts[hi]) - 8
            keep = np.ones(stop - first, dtype=bool)
            prefixes = starts[lo:hi] - 8 - first  # where each string's length is, in the window
            for k in range(7):
                keep[prefixes + k] = False
            joined = self._buf[first:stop][keep]
            if np.count_nonzero(joined == 0) == hi - lo:
                try:
                    return joined.tobytes().decode("utf-8").split("\x00")[1:]
                except UnicodeDecodeError:
                    pass
        return [self[i] for i in range(lo, hi)]

    def tolist(self) -> list[str]:
        return list(self)

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # mutable-sequence-like equality, as list

    def __repr__(self) -> str:
        head = ", ".join(quote(s) for s in self[:3])
        return f"StringArray({len(self):,} strings: [{head}{', ...' if len(self) > 3 else ''}])"


class _Text:
    """A string value's place in the file, decoded once the whole header has parsed (see read_gguf)."""

    __slots__ = ("start", "stop")

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop


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

    def span(self, what: str, limit: int | None = None) -> _Text:
        """Skip a string, checking its length against `limit` and the bytes left; where its bytes are."""
        n = self.u64(f"{what} length")
        if limit is not None and n > limit:
            raise self.fail(f"{what} is {n:,} bytes long (GGUF allows {limit:,})")
        self.need(n, f"{what} of length {n}")
        self.pos += n
        return _Text(self.pos - n, self.pos)

    def string(self, what: str, limit: int) -> str:
        text = self.span(what, limit)
        return _decode(self.mv[text.start:text.stop])

    def strings(self, count: int, what: str) -> StringArray:
        # Each string takes at least its 8-byte length: refuse counts the rest of the file cannot hold. The offsets
        # grow with the strings actually read, so a count that only looks possible costs nothing more.
        self.need(count * 8, f"{what}: array of {count} strings")
        mv, p, size = self.mv, self.pos, self.size
        starts = array("q")
        add = starts.append
        for i in range(count):
            if p + 8 > size:
                self.pos = p
                raise self.fail(f"{what}[{i}]: string length runs past the end of the file ({size} bytes)")
            (n,) = _U64(mv, p)
            p += 8
            if n > size - p:
                self.pos = p
                raise self.fail(f"{what}[{i}]: string of length {n} runs past the end of the file "
                                f"({size} bytes)")
            add(p)
            p += n
        add(p + 8)
        self.pos = p
        return StringArray(self.buf, np.frombuffer(starts, dtype=np.int64))

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            return self.scalar(fmt, size, what)
        if vtype == _STRING:
            return self.span(what)
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
        key = cur.string(f"metadata key #{i}", MAX_KEY)
        if key in metadata:
            raise cur.fail(f"metadata key {quote(key)} appears twice")
        vtype = cur.u32(f"type of {quote(key)}")
        metadata[key] = cur.value(vtype, f"metadata {quote(key)}")

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}", MAX_NAME)
        what = f"tensor {quote(name)}"
        n_dims = cur.u32(f"{what} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"{what} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        cur.need(8 * n_dims + 12, f"{what} record")
        ne = list(struct.unpack_from(f"<{n_dims}Q", cur.mv, cur.pos))
        cur.pos += 8 * n_dims
        type_id = cur.u32(f"{what} type")
        offset = cur.u64(f"{what} offset")
        infos.append((name, ne, type_id, offset))

    # The header parsed: only now decode the string values, so that a corrupt length costs no decoding.
    for key, value in metadata.items():
        if type(value) is _Text:
            metadata[key] = _decode(cur.mv[value.start:value.stop])

    alignment = metadata.get("general.alignment", 32)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment must be a power of two, got {quote(alignment)}")
    data_start = (cur.pos + alignment - 1) // alignment * alignment

    tensors = {}
    spans = []
    for name, ne, type_id, offset in infos:
        qt = QTYPES_BY_ID.get(type_id)
        if qt is None:
            raise cur.fail(f"tensor {quote(name)} has unknown type id {type_id}")
        if name in tensors:
            raise cur.fail(f"tensor {quote(name)} appears twice")
        n = 1
        for d in ne:
            if d == 0 or d > cur.size * 8:
                raise cur.fail(f"tensor {quote(name)} has dimension {d}, impossible for a {cur.size}-byte file")
            n *= d
        if n >= 1 << 63:
            raise cur.fail(f"tensor {quote(name)}: element count {n} (dims {ne}) overflows int64")
        if ne[0] % qt.block_size:
            raise cur.fail(f"tensor {quote(name)}: row length {ne[0]} is not a multiple of {qt.name}'s block "
                           f"size {qt.block_size}")
        nbytes = n // qt.block_size * qt.type_size
        start = data_start + offset
        if offset % alignment or start + nbytes > cur.size:
            raise cur.fail(f"tensor {quote(name)} ({qt.name}, {nbytes} bytes at offset {offset}) lies outside the "
                           f"file's data ({max(cur.size - data_start, 0)} bytes) or is misaligned")
        spans.append((start, start + nbytes, name))
        tensors[name] = Tensor(name, qt.name, tuple(int(d) for d in reversed(ne)), buf[start:start + nbytes])

    spans.sort()
    for (_, e0, a), (s1, _, b) in itertools.pairwise(spans):
        if s1 < e0:
            raise cur.fail(f"tensors {quote(a)} and {quote(b)} overlap")
    return ModelFile(path=path, format="gguf", version=version, metadata=metadata, tensors=tensors)
