"""Fuzzing the readers with hypothesis: real headers (written by the test helpers) are mutated at random (byte
flips, insertions, deletions, truncation) and structurally (counts, lengths, offsets, type ids and dimensions set
to edge values; in GGUF every string length, element type and count of the tokenizer's arrays, in GGML every
token length and tensor record field, in safetensors one field of the JSON header).

Issue 20's acceptance, checked for every case: parsing succeeds or raises FormatError with a short message naming
the file, within CASE_SECONDS, and grows the peak memory by at most the file's size + 64 MB. Any other exception
fails the test.

A hypothesis example is a batch of CASES cases drawn as one fixed-size byte string (hypothesis's own overhead per
example is a few parses' worth), so 2,500 examples are the 10,000 cases of each format; files are parsed from
memory (the readers take a uint8 buffer). Memory is measured on Linux as the peak RSS of each case, which
/proc/self/clear_refs resets; memory reserved but never touched (np.zeros of a corrupt count) is caught by an
address-space limit of 1 GiB above the process's size during each test. tracemalloc around each parse would be
exact but makes a parse 10-40 times slower. Elsewhere only the error and time checks run.
"""

import json
import signal
import struct
import sys
import tempfile
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import pytest
from helpers_files import gguf_fields, write_ggml, write_gguf, write_safetensors_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minirs.errors import FormatError
from minirs.formats.ggml import read_ggml
from minirs.formats.gguf import read_gguf
from minirs.formats.safetensors import read_safetensors_file

CASES = 4  # cases per hypothesis example
EXAMPLES = 2_500  # x CASES = 10,000 cases per format
CEILING = 64 << 20  # a case may grow the peak RSS by the file's size + this
CASE_SECONDS = 10  # a case running longer counts as a hang
MAX_MESSAGE = 1000  # characters of a FormatError's message
FAKE = Path("fuzzed.bin")
EDGES = [0, 1, 2, 3, 7, 8, 9, 12, 13, 16, 24, 31, 32, 33, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31,
         (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1]
TYPE_IDS = list(range(14))  # every GGUF value type and the first unknown one


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


# --- the bases -------------------------------------------------------------------------------------------------
def _tokenizer_gguf(path: Path) -> Path:
    """A gpt2-style GGUF whose tokenizer arrays hold the awkward strings (empty ones in a row, a NUL, non-ASCII, a
    long one), with merges, token types, scores, special ids and flags."""
    tokens = ["", "", "a\x00b", "é", "\u2581x" * 50, *[f"t{i}" for i in range(27)]]
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges([f"t{i} t{i + 1}" for i in range(16)])
    w.add_token_types([1, 3, *[1] * 30])
    w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


@cache
def base_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        st_weights = {"a": np.ones((4, 8), np.float32), "b": np.arange(6, dtype=np.int64),
                      "c": np.zeros(16, np.float16)}
        return {"gguf": write_gguf(d / "a.gguf", n_vocab=48, dim=32).read_bytes(),
                "gguf_tok": _tokenizer_gguf(d / "t.gguf").read_bytes(),
                "ggml": write_ggml(d / "b.bin", n_vocab=24, dim=32, n_head=2).read_bytes(),
                "st": write_safetensors_file(d / "c.safetensors", st_weights).read_bytes()}


@cache
def gguf_targets(name: str) -> tuple[int, list[tuple[int, int]]]:
    """(end of the header, (offset, width) of every count, length, type id, dimension and offset field of the
    base GGUF `name`'s header, every string length inside its arrays included)."""
    data = base_files()[name]
    f = gguf_fields(data)
    out = [(f["n_tensors"], 8), (f["n_kv"], 8)]
    for _, key_len, vtype, value in f["kv"]:
        out += [(key_len, 8), (vtype, 4)]
        (t,) = struct.unpack_from("<I", data, vtype)
        if t == 8:
            out.append((value, 8))
        elif t == 9:
            etype, count = struct.unpack_from("<IQ", data, value)
            out += [(value, 4), (value + 4, 8)]
            pos = value + 12
            for _ in range(count if etype == 8 else 0):
                out.append((pos, 8))
                pos += 8 + struct.unpack_from("<Q", data, pos)[0]
    for _, name_len, ndims, dims, type_id, offset in f["tensors"]:
        out += [(name_len, 8), (ndims, 4), (dims, 8), (dims + 8, 8), (type_id, 4), (offset, 8)]
    return min(f["end"] + 64, len(data)), out


@cache
def ggml_targets() -> list[tuple[int, int]]:
    """(offset, 4) of the version, the hparams, every token length and every tensor record's fields."""
    data = base_files()["ggml"]
    out = [(4, 4)] + [(8 + 4 * i, 4) for i in range(7)]
    (n_vocab,) = struct.unpack_from("<i", data, 8)
    pos = 36
    for _ in range(n_vocab):
        out.append((pos, 4))
        pos += 4 + struct.unpack_from("<I", data, pos)[0] + 4
    while pos + 12 <= len(data):
        n_dims, name_len, type_id = struct.unpack_from("<3i", data, pos)
        ne = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        out += [(pos + 4 * k, 4) for k in range(3 + n_dims)]
        pos += 12 + 4 * n_dims + name_len
        pos += -pos % 32  # ggjt aligns each tensor's data to 32 bytes
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        pos += int(np.prod(ne)) // block * size
    return out


# --- mutations -------------------------------------------------------------------------------------------------
# A case is a 36-byte slot: one to three mutations of 12 bytes each (kind, position u16, value u16, up to 7 bytes
# to insert); the slot's last byte says how many. One draw of CASES slots per example keeps hypothesis cheap.
KINDS = ["flip", "byte", "insert", "delete", "truncate", "field", "field", "field"]
SLOT = 36
BATCHES = st.binary(min_size=CASES * SLOT, max_size=CASES * SLOT)


def slots(raw: bytes) -> list[bytes]:
    return [raw[i:i + SLOT] for i in range(0, len(raw), SLOT)]


def mutations(slot: bytes) -> list[tuple[int, int, int, bytes]]:
    return [(slot[i] % len(KINDS), int.from_bytes(slot[i + 1:i + 3], "little"),
             int.from_bytes(slot[i + 3:i + 5], "little"), slot[i + 5:i + 5 + slot[i] % 8])
            for i in range(0, 12 * (1 + slot[-1] % 3), 12)]


def mutate(data: bytes, header_end: int, muts, targets) -> bytes:
    """Apply `muts` (from `mutations`) to the first `header_end` bytes of `data`. A field is set to an edge value:
    one of EDGES, the file's size +-1, its own value +-1, the bytes left after it (a length that reaches exactly
    the end) +-1, or for a 4-byte field (type ids, GGML's lengths) every type id."""
    buf = bytearray(data)
    for kind, a, b, blob in muts:
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
            if off + width <= len(buf):
                fmt = "<I" if width == 4 else "<Q"
                (own,) = struct.unpack_from(fmt, buf, off)
                rest = len(buf) - off - width
                values = [*EDGES, len(buf) - 1, len(buf), len(buf) + 1, own - 1, own + 1, rest - 1, rest, rest + 1,
                          b, *(TYPE_IDS if width == 4 else ())]
                struct.pack_into(fmt, buf, off, values[b % len(values)] % (1 << (8 * width)))
    return bytes(buf)


# --- one case: the acceptance checks ---------------------------------------------------------------------------
_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def _vm(field: bytes) -> int:
    """A Vm... line of /proc/self/status, in bytes."""
    text = _STATUS.read_bytes()
    i = text.index(field + b":")
    return int(text[i + len(field) + 1:text.index(b"kB", i)]) * 1024


@cache
def _peak_resettable() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return _vm(b"VmHWM") > 0
    except (OSError, ValueError):
        return False


class Hang(BaseException):
    """Raised by SIGALRM in a case that runs past CASE_SECONDS. Not an Exception, so hypothesis stops at once
    instead of re-running the hung case while it shrinks."""


def _hang(signum, frame):
    raise Hang(f"a case ran for over {CASE_SECONDS} s")


@pytest.fixture(autouse=True)
def limits():
    """For the test's duration: SIGALRM ends a hung case, and the address space may grow by at most 1 GiB."""
    if sys.platform != "linux":
        yield
        return
    import resource
    old_handler = signal.signal(signal.SIGALRM, _hang)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm(b"VmSize") + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old_handler)


def parse_or_format_error(reader, data: bytes, case: str) -> None:
    """Parse `data`: it loads, or raises FormatError naming the file in a short message; within CASE_SECONDS and
    file size + CEILING of peak RSS growth (both measured on Linux only). `case` says what was mutated."""
    buf = np.frombuffer(data, dtype=np.uint8)
    linux = sys.platform == "linux"
    measure = linux and _peak_resettable()
    if measure:
        _CLEAR_REFS.write_text("5")  # the peak RSS (VmHWM) starts again from the current RSS
        before = _vm(b"VmHWM")
    if linux:
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        reader(FAKE, buf)
    except FormatError as e:
        message = str(e)
        assert str(FAKE) in message and len(message) < MAX_MESSAGE, f"{case}: {message[:MAX_MESSAGE]}"
    except Hang as e:
        raise Hang(f"{case}: {e}") from None
    finally:
        if linux:
            signal.setitimer(signal.ITIMER_REAL, 0)
    if measure:
        grew = _vm(b"VmHWM") - before
        assert grew <= len(data) + CEILING, f"{case}: peak RSS grew by {grew:,} bytes for a {len(data):,}-byte file"


# --- the tests -------------------------------------------------------------------------------------------------
@fuzz(EXAMPLES)
@given(BATCHES)
def test_fuzz_gguf_headers(raw):
    """Both bases: the helper's llama GGUF and the tokenizer-heavy one."""
    for slot in slots(raw):
        name = ("gguf", "gguf_tok")[slot[-2] % 2]
        header_end, targets = gguf_targets(name)
        muts = mutations(slot)
        parse_or_format_error(read_gguf, mutate(base_files()[name], header_end, muts, targets), f"{name} {muts}")


@fuzz(EXAMPLES)
@given(BATCHES)
def test_fuzz_ggml_headers(raw):
    base = base_files()["ggml"]
    for slot in slots(raw):
        muts = mutations(slot)
        parse_or_format_error(lambda p, b: read_ggml(p, b, gqa=1), mutate(base, len(base), muts, ggml_targets()),
                              f"ggml {muts}")


# JSON values a safetensors header field is set to: wrong types, edge integers, dtypes real and not
_JSON_VALUES = [None, True, False, 0, -1, 1, 7, 8, 2**31, 2**63, 2**64, 2**70, -(2**70), 0.5, float("nan"),
                float("inf"), "", "F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "Q4_0", "x" * 300, [], [0], [4, 2],
                [-1, 8], [0, 32], [32, 0], [0, 2**64], [2**40, 2**40], [1] * 9, [[1]], {"a": 1}, ["a"]]
_ST_FIELDS = ["dtype", "shape", "data_offsets", "extra"]


@fuzz(EXAMPLES)
@given(BATCHES)
def test_fuzz_safetensors_headers(raw):
    """Half the cases change one field of one entry (or __metadata__) of the JSON header and re-serialise it; the
    others mutate the bytes of the header and its size."""
    base = base_files()["st"]
    n = struct.unpack_from("<Q", base)[0]
    for slot in slots(raw):
        if slot[-2] % 2:
            header = json.loads(base[8:8 + n])
            name = sorted(header)[slot[0] % len(header)]
            value = _JSON_VALUES[slot[2] % len(_JSON_VALUES)]
            if name == "__metadata__":
                header[name] = {"format": value} if slot[1] % 2 else value
            else:
                header[name][_ST_FIELDS[slot[1] % len(_ST_FIELDS)]] = value
            text = json.dumps(header).encode()
            blob, case = struct.pack("<Q", len(text)) + text + base[8 + n:], f"header {text[:300]!r}"
        else:
            muts = mutations(slot)
            blob, case = mutate(base, 8 + n, muts, [(0, 8)]), f"safetensors {muts}"
        parse_or_format_error(read_safetensors_file, blob, case)
