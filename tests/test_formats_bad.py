"""Bad input: every malformed file raises FormatError naming the file and the problem, quickly, without
allocating more memory than the file's size. Files are built by corrupting the helper-written ones."""

import json
import struct
import time
import tracemalloc

import gguf
import numpy as np
import pytest
from helpers_files import gguf_fields, write_ggml, write_gguf, write_safetensors_file, write_safetensors_folder

from minirs.errors import FormatError, quote
from minirs.formats import load_model_file


def expect_error(path, match, **kwargs):
    """Load `path`, expecting FormatError matching `match` that names the file; bounded time and memory."""
    size = path.stat().st_size if path.is_file() else 0
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FormatError, match=match) as e:
            load_model_file(path, **kwargs)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < size + (1 << 20), f"allocated {peak} bytes for a {size}-byte file"
    assert str(path) in str(e.value)
    return e.value


@pytest.fixture
def gguf_file(tmp_path):
    path = write_gguf(tmp_path / "ok.gguf")
    data = bytearray(path.read_bytes())
    return path, data, gguf_fields(bytes(data))


def _put(data, off, fmt, value, path):
    struct.pack_into(fmt, data, off, value)
    path.write_bytes(bytes(data))
    return path


def test_missing_empty_folder_and_unknown(tmp_path):
    expect_error(tmp_path / "nope.gguf", "no such file")
    (tmp_path / "empty.bin").write_bytes(b"")
    expect_error(tmp_path / "empty.bin", "empty")
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    expect_error(tmp_path / "junk.bin", "unknown file format")
    (tmp_path / "dir").mkdir()
    expect_error(tmp_path / "dir", "neither model.safetensors.index.json nor any")


def test_gguf_truncated_everywhere(gguf_file, tmp_path):
    _, data, fields = gguf_file
    cuts = sorted({5, 12, 23, 30, fields["kv"][3][2] + 1, fields["tensors"][0][3] + 3, fields["end"] - 1,
                   len(data) - 1, len(data) // 2})
    for cut in cuts:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(bytes(data[:cut]))
        expect_error(p, "needs|ends|outside|past|header|absurd counts")


def test_gguf_wrong_magic_and_version(gguf_file):
    path, data, _ = gguf_file
    expect_error(_put(data, 4, "<I", 1, path), "unsupported GGUF version 1")
    expect_error(_put(data, 4, ">I", 3, path), "big-endian")


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
@pytest.mark.parametrize("count", [1 << 40, (1 << 64) - 1])
def test_gguf_absurd_counts(gguf_file, field, count):
    path, data, fields = gguf_file
    expect_error(_put(data, fields[field], "<Q", count, path), "absurd counts")


def test_gguf_string_and_array_lengths_past_end(gguf_file):
    path, data, fields = gguf_file
    key_len_off = fields["kv"][0][1]
    expect_error(_put(bytearray(data), key_len_off, "<Q", 1 << 62, path), "bytes long .GGUF allows 65,535")
    tokens = next(kv for kv in fields["kv"] if kv[0] == "tokenizer.ggml.tokens")
    expect_error(_put(bytearray(data), tokens[3] + 4, "<Q", 1 << 40, path), "array of 1099511627776 strings")
    first_token_len = tokens[3] + 12
    data3 = bytearray(data)
    expect_error(_put(data3, first_token_len, "<Q", 1 << 33, path), "tokenizer.ggml.tokens.*length")
    scores = next(kv for kv in fields["kv"] if kv[0] == "tokenizer.ggml.scores")
    data4 = bytearray(data)
    expect_error(_put(data4, scores[3] + 4, "<Q", 1 << 50, path), "array of 1125899906842624 elements")


def test_gguf_unknown_value_and_tensor_types(gguf_file):
    path, data, fields = gguf_file
    expect_error(_put(bytearray(data), fields["kv"][0][2], "<I", 99, path), "unknown value type 99")
    tensor = fields["tensors"][2]
    expect_error(_put(bytearray(data), tensor[4], "<I", 77, path), "unknown type id 77")
    expect_error(_put(bytearray(data), tensor[2], "<I", 9, path), "9 dimensions")


def test_gguf_tensor_offsets_sizes_overlap_overflow(gguf_file):
    path, data, fields = gguf_file
    t0, t1 = fields["tensors"][0], fields["tensors"][1]
    expect_error(_put(bytearray(data), t1[5], "<Q", 1 << 40, path), "lies outside")
    expect_error(_put(bytearray(data), t1[5], "<Q", 3, path), "misaligned")
    d = bytearray(data)
    struct.pack_into("<Q", d, t1[5], struct.unpack_from("<Q", data, t0[5])[0])
    expect_error(_put(d, t1[5], "<Q", struct.unpack_from("<Q", data, t0[5])[0], path), "overlap")
    expect_error(_put(bytearray(data), t1[3], "<Q", (1 << 62) + 256, path), "dimension .* impossible")
    d = bytearray(data)  # each dimension plausible for the file size, their product not
    nd = struct.unpack_from("<I", data, t0[2])[0]
    for k in range(nd):
        struct.pack_into("<Q", d, t0[3] + 8 * k, 2 * len(data))
    path.write_bytes(bytes(d))
    expect_error(path, "lies outside")
    expect_error(_put(bytearray(data), t1[3], "<Q", 0, path), "dimension 0")
    d = bytearray(data)  # two tensors of the same name (the helper's blk.0.t0_q4_k / blk.0.t1_q8_0)
    (n2, _), (n3, off3) = [(t[0].encode(), t[1]) for t in fields["tensors"][2:4]]
    assert len(n2) == len(n3)
    d[off3 + 8:off3 + 8 + len(n3)] = n2
    path.write_bytes(bytes(d))
    expect_error(path, "appears twice")


def test_gguf_bad_alignment(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.add_uint32("general.alignment", 24)
    w.add_tensor("x", np.zeros(8, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    expect_error(tmp_path / "a.gguf", "alignment must be a power of two")


# --- allocation bounded by the bytes read (issue 20) ---------------------------------------------------------
def _traced(fn):
    """(fn()'s result or the FormatError it raised, tracemalloc peak in bytes)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except FormatError as e:
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _gguf_before_data(path, tokens, data_bytes=8 << 20):
    """A GGUF whose vocabulary is `tokens`, then one tensor of `data_bytes` random bytes: what a corrupt length
    reads into, as in a real file."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_tensor("token_embd.weight", np.random.default_rng(0).integers(0, 1 << 32, data_bytes // 4, np.uint32)
                 .view(np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    data = bytearray(path.read_bytes())
    return data, gguf_fields(bytes(data))


def test_gguf_empty_tokens_cost_8_bytes_each(tmp_path):
    """65,536 empty tokens before 8 MB of data: the bulk parser used to grow NumPy windows over the whole file
    (Gemma 3 with every token empty opened with +958 MB); the offsets are 8 bytes a string."""
    n = 65536
    _gguf_before_data(tmp_path / "e.gguf", [""] * n)
    mf, peak = _traced(lambda: load_model_file(tmp_path / "e.gguf"))
    assert peak < 8 * n + (256 << 10), f"allocated {peak} bytes for {n} empty strings"
    tokens = mf.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == n and tokens[n - 1] == "" and list(tokens) == [""] * n


def test_gguf_flipped_tensor_name_length(tmp_path):
    """Bit 20 of a tensor name's length set: the name used to swallow 1 MB of tensor data and be quoted whole
    (a 242-million-character message and +2.5 GB for Gemma 3)."""
    path = tmp_path / "n.gguf"
    data, fields = _gguf_before_data(path, [f"tok{i}" for i in range(100)])
    _put(data, fields["tensors"][0][1], "<Q", len(fields["tensors"][0][0]) | 1 << 20, path)
    e, peak = _traced(lambda: load_model_file(path))
    assert isinstance(e, FormatError) and "bytes long (GGUF allows 64)" in str(e)
    assert len(str(e)) < 300 and peak < 256 << 10, (len(str(e)), peak)


def test_gguf_flipped_token_length(tmp_path):
    """Bit 20 of token 10's length set: the bulk parser grew its windows over the file and the loop decoded the
    1 MB string before the next length failed (+639 MB for Gemma 3)."""
    path = tmp_path / "t.gguf"
    data, fields = _gguf_before_data(path, [f"tok{i}" for i in range(1000)])
    tokens = next(kv for kv in fields["kv"] if kv[0] == "tokenizer.ggml.tokens")
    pos = tokens[3] + 12
    for _ in range(10):
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
    _put(data, pos, "<Q", 5 | 1 << 20, path)
    e, peak = _traced(lambda: load_model_file(path))
    assert isinstance(e, FormatError) and "tokenizer.ggml.tokens" in str(e)
    assert peak < 256 << 10, peak


def test_messages_quote_a_short_prefix(tmp_path):
    """A 5,000-character key that appears twice is quoted by its first 80 characters and its length."""
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    w.add_string("k" * 4999 + "a", "x")
    w.add_string("k" * 4999 + "b", "y")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    path = tmp_path / "k.gguf"
    data = bytearray(path.read_bytes())
    second = next(kv for kv in gguf_fields(bytes(data))["kv"] if kv[0].endswith("b"))
    data[second[2] - 1] = ord("a")
    path.write_bytes(bytes(data))
    e = expect_error(path, "appears twice")
    assert "(5,000 characters)" in str(e) and len(str(e)) < 300
    assert quote("é" * 10**6).endswith("... (1,000,000 characters)") and len(quote(list(range(10**6)))) < 120


# --- legacy GGML ---------------------------------------------------------------------------------------------
def test_ggml_bad_inputs(tmp_path):
    path = write_ggml(tmp_path / "m.bin")
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data[:20]))
    expect_error(bad, "hparams")
    expect_error(_put(bytearray(data), 4, "<I", 7, bad), "unsupported ggjt version 7")
    expect_error(_put(bytearray(data), 8, "<i", 1 << 30, bad), "n_vocab = 1073741824 is impossible")
    expect_error(_put(bytearray(data), 8, "<i", len(data) // 2, bad), "tokens cannot fit")
    expect_error(_put(bytearray(data), 8, "<i", -5, bad), "n_vocab = -5")
    expect_error(_put(bytearray(data), 36, "<I", 1 << 31, bad), "vocab entry 0 of length")
    vocab_end = 36 + sum(4 + n + 4 for n in [5, 0, 0] + [1] * 256 + [len(f" w{i}") for i in range(41)])
    first = vocab_end  # first tensor record: n_dims, name_len, type, dims
    expect_error(_put(bytearray(data), first + 8, "<i", 99, bad), "unknown or unsupported type id 99")
    expect_error(_put(bytearray(data), first, "<i", 7, bad), "7 dimensions")
    expect_error(_put(bytearray(data), first + 4, "<i", 1 << 30, bad), "name length")
    expect_error(_put(bytearray(data), first + 16, "<i", 1 << 14, bad), "runs past the end")
    expect_error(_put(bytearray(data), first + 16, "<i", 1 << 28, bad), "dimension 268435456, impossible")
    bad.write_bytes(bytes(data[:-10]))
    expect_error(bad, "runs past the end")


# --- safetensors ---------------------------------------------------------------------------------------------
def _st(path, header: dict | bytes, data: bytes = b"\0" * 64, n: int | None = None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if n is None else n) + text + data)
    return path


def test_safetensors_bad_headers(tmp_path):
    p = tmp_path / "x.safetensors"
    ok = {"a": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}}
    expect_error(_st(p, b"{not json", n=9), "not valid JSON")
    expect_error(_st(p, b"[1, 2]{"), "unknown file format|not an object")
    expect_error(_st(p, ok, n=200 * 1024 * 1024), "larger than the 104857600-byte limit")
    expect_error(_st(p, ok, n=10_000), "runs past the end")
    expect_error(_st(p, {"a": {**ok["a"], "dtype": "F8_E4M3"}}), "unsupported dtype 'F8_E4M3'")
    expect_error(_st(p, {"a": {**ok["a"], "shape": [4, -2]}}), "shape")
    expect_error(_st(p, {"a": {**ok["a"], "shape": [4, 3]}}), "needs 48 bytes but data_offsets span 32")
    expect_error(_st(p, {"a": {**ok["a"], "shape": [1 << 40, 1 << 40], "data_offsets": [0, 32]}}), "needs")
    expect_error(_st(p, {"a": {**ok["a"], "data_offsets": [40, 72]}}), "run past the end of the data")
    expect_error(_st(p, {"a": {**ok["a"], "data_offsets": [32, 0]}}), "data_offsets")
    expect_error(_st(p, {**ok, "b": {"dtype": "F16", "shape": [8], "data_offsets": [16, 32]}}), "overlap")
    expect_error(_st(p, {**ok, "__metadata__": {"k": 1}}), "__metadata__")
    expect_error(_st(p, b"{" * 100_000 + b"}" * 100_000), "not valid JSON")
    expect_error(_st(p, b'{"a": {"shape": [' + b"1" * 5000 + b"]}}"), "not valid JSON .ValueError: Exceeds the limit")
    expect_error(_st(p, b"\xff\xfe{}"), "not valid JSON|unknown file format")


def test_safetensors_bad_folders(tmp_path):
    folder = write_safetensors_folder(tmp_path / "m", n_shards=2)
    index = folder / "model.safetensors.index.json"
    original = index.read_text()
    index.write_text("{oops")
    expect_error(folder, "not valid JSON")
    index.write_text(json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    expect_error(folder, "not a plain file name")
    index.write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    expect_error(folder, "shard 'missing.safetensors' does not exist")
    wm = json.loads(original)["weight_map"]
    wm["extra.weight"] = next(iter(wm.values()))
    index.write_text(json.dumps({"weight_map": wm}))
    expect_error(folder, "1 tensors listed but not found")
    index.write_text(original)
    (folder / "config.json").write_text("[1,")
    expect_error(folder, "config.json: not valid JSON")
    (folder / "config.json").write_text('{"vocab_size": ' + "1" * 5000 + "}")
    expect_error(folder, "config.json: not valid JSON .ValueError")
    (folder / "config.json").write_text("{}")
    shard = min(folder.glob("*.safetensors"))
    write_safetensors_file(shard, {"model.norm.weight": np.zeros(3, np.float32)})
    expect_error(folder, "is also in another shard|not listed for this shard")
