"""Fuzzing the readers with hypothesis: real headers (written by the test helpers) are mutated at random (byte
flips, insertions, deletions, truncation) and structurally (counts, lengths, offsets, type ids and dimensions
set to edge values). Parsing must succeed or raise FormatError; any other exception fails the test.

The files are parsed from memory (the readers take a uint8 buffer), so 10,000 GGUF cases take seconds.
"""

import json
import struct
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
from helpers_files import gguf_fields, write_ggml, write_gguf, write_safetensors_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minirs.errors import FormatError
from minirs.formats.ggml import read_ggml
from minirs.formats.gguf import read_gguf
from minirs.formats.safetensors import read_safetensors_file


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
FAKE = Path("fuzzed.bin")
EDGES = [0, 1, 2, 3, 7, 8, 9, 12, 13, 16, 24, 31, 32, 33, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31,
         (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1]


@cache
def base_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        st_weights = {"a": np.ones((4, 8), np.float32), "b": np.arange(6, dtype=np.int64),
                      "c": np.zeros(16, np.float16)}
        return {"gguf": write_gguf(d / "a.gguf", n_vocab=48, dim=32).read_bytes(),
                "ggml": write_ggml(d / "b.bin", n_vocab=270, dim=32, n_head=2).read_bytes(),
                "st": write_safetensors_file(d / "c.safetensors", st_weights).read_bytes()}


@cache
def gguf_targets() -> list[tuple[int, int]]:
    """(offset, width) of every count, length, type id, dimension and offset field of the base GGUF header."""
    f = gguf_fields(base_files()["gguf"])
    out = [(f["n_tensors"], 8), (f["n_kv"], 8)]
    data = base_files()["gguf"]
    for _, key_len, vtype, value in f["kv"]:
        out += [(key_len, 8), (vtype, 4)]
        if struct.unpack_from("<I", data, vtype)[0] == 9:
            out += [(value, 4), (value + 4, 8), (value + 12, 8)]  # element type, count, first string length
        elif struct.unpack_from("<I", data, vtype)[0] == 8:
            out += [(value, 8)]
    for _, name_len, ndims, dims, type_id, offset in f["tensors"]:
        out += [(name_len, 8), (ndims, 4), (dims, 8), (dims + 8, 8), (type_id, 4), (offset, 8)]
    return out


# A case is one to three mutations, each drawn as 12 bytes (one primitive draw per case keeps hypothesis's
# overhead small): kind, position (u16), value (u16), then up to 7 bytes to insert.
KINDS = ["flip", "byte", "insert", "delete", "truncate", "field", "field", "field"]
MUTATIONS = st.binary(min_size=12, max_size=36).map(
    lambda raw: [(raw[i] % len(KINDS), int.from_bytes(raw[i + 1:i + 3], "little"),
                  int.from_bytes(raw[i + 3:i + 5], "little"), raw[i + 5:i + 5 + raw[i] % 8])
                 for i in range(0, len(raw) - 11, 12)])


def mutate(data: bytes, header_end: int, mutations, targets) -> bytes:
    """Apply `mutations` (drawn from MUTATIONS) to the first `header_end` bytes of `data`."""
    buf = bytearray(data)
    for kind, a, b, blob in mutations:
        kind = KINDS[kind]
        pos = a % max(1, min(len(buf), header_end))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << (b % 8)
        elif kind == "byte" and buf:
            buf[pos] = b % 256
        elif kind == "insert":
            buf[pos:pos] = blob or b"\xff"
        elif kind == "delete":
            del buf[pos:pos + 1 + b % 16]
        elif kind == "truncate":
            del buf[b % (len(buf) + 1):]
        elif kind == "field" and targets:
            off, width = targets[a % len(targets)]
            values = [*EDGES, len(buf), len(buf) - 1, len(buf) + 1, b]
            if off + width <= len(buf):
                struct.pack_into("<I" if width == 4 else "<Q", buf, off, values[b % len(values)] % (1 << (8 * width)))
    return bytes(buf)


def parse_or_format_error(reader, data: bytes) -> None:
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        reader(FAKE, buf)
    except FormatError as e:
        assert str(FAKE) in str(e)


@fuzz(10_000)
@given(MUTATIONS)
def test_fuzz_gguf_headers(mutations):
    base = base_files()["gguf"]
    header_end = min(gguf_fields(base)["end"] + 64, 64 * 1024)
    parse_or_format_error(read_gguf, mutate(base, header_end, mutations, gguf_targets()))


@fuzz(2_000)
@given(MUTATIONS)
def test_fuzz_ggml_headers(mutations):
    base = base_files()["ggml"]
    targets = [(4, 4)] + [(8 + 4 * i, 4) for i in range(7)]  # version, hparams
    parse_or_format_error(lambda p, b: read_ggml(p, b, gqa=1), mutate(base, 4096, mutations, targets))


def _json_values():
    return st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
                     st.text(max_size=8), st.lists(st.integers(-5, 1 << 66), max_size=4),
                     st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "Q4_0", ""]))


@fuzz(2_000)
@given(st.data())
def test_fuzz_safetensors_headers(data):
    base = base_files()["st"]
    n = struct.unpack_from("<Q", base)[0]
    if data.draw(st.booleans()):  # structured: change one field of one tensor's entry and re-serialise
        header = json.loads(base[8:8 + n])
        name = data.draw(st.sampled_from(sorted(header)))
        entry = header[name]
        if isinstance(entry, dict):
            entry[data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = data.draw(_json_values())
        text = json.dumps(header).encode()
        blob = struct.pack("<Q", len(text)) + text + base[8 + n:]
    else:
        blob = mutate(base, 8 + n, data.draw(MUTATIONS), [(0, 8)])
    parse_or_format_error(read_safetensors_file, blob)
