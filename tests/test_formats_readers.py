"""The readers: GGUF (helper-written and real), legacy GGML (ggjt v3 and older), safetensors (file and sharded
folder). Each loads, exposes GGUF-style metadata and decodes its tensors to the values written."""

import gguf
import numpy as np
import pytest
from helpers_files import (
    ggml_tensors,
    safetensors_weights,
    write_ggml,
    write_gguf,
    write_safetensors_file,
    write_safetensors_folder,
)

from minirs.errors import FormatError
from minirs.formats import StringArray, dequantize, load_model_file


def test_gguf_helper_file_matches_gguf_reader(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", n_layers=2)
    mf = load_model_file(path)
    ref = gguf.GGUFReader(path)
    assert mf.format == "gguf" and mf.version == 3 and mf.architecture == "llama"
    assert mf.metadata["tokenizer.ggml.tokens"] == [f"tok{i}" for i in range(64)]
    assert mf.metadata["llama.attention.head_count_kv"] == 2
    assert len(mf.tensors) == len(ref.tensors)
    for rt in ref.tensors:
        t = mf.tensors[rt.name]
        assert t.qtype == rt.tensor_type.name and t.shape == tuple(int(d) for d in reversed(rt.shape))
        assert not t.data.flags.writeable and t.data.base is not None  # a view into the map, not a copy
        assert np.array_equal(dequantize(t), gguf.quants.dequantize(rt.data, rt.tensor_type).reshape(t.shape))


def test_gguf_bulk_strings_match_plain_loop(smollm2_path, gemma3_path):
    """A StringArray's bulk decode (iteration) returns exactly what reading each string alone (its slow twin)
    does, on both real vocabularies and SmolLM2's merges."""
    md = [load_model_file(p).metadata for p in (smollm2_path, gemma3_path)]
    for arr in (md[0]["tokenizer.ggml.tokens"], md[0]["tokenizer.ggml.merges"], md[1]["tokenizer.ggml.tokens"]):
        assert isinstance(arr, StringArray)
        assert list(arr) == [arr[i] for i in range(len(arr))]
    assert len(md[1]["tokenizer.ggml.tokens"]) == 262144 and md[1]["tokenizer.ggml.tokens"][2] == "<bos>"


@pytest.mark.parametrize("chunk", [1 << 20, 16])
@pytest.mark.parametrize("tokens", [["", "", "a"], ["x" * 300, "", "y\x00z", ""], ["\xff\u2581é", "b"] * 50,
                                    [""] * 10, ["ok", "bad"], [b"\xff\xfe", "ok", b"a\xc3", "é"]])
def test_gguf_string_array_edge_cases(tmp_path, monkeypatch, tokens, chunk):
    """Empty strings, NULs, long, non-ASCII and invalid UTF-8 strings: the bulk decode or its fallback gets them
    right, in one window or many (chunk 16), and the StringArray reads like a list."""
    import minirs.formats.gguf as reader
    monkeypatch.setattr(reader, "DECODE_CHUNK", chunk)
    w = gguf.GGUFWriter(str(tmp_path / "s.gguf"), "llama")
    w.add_token_list(tokens)
    w.add_string("after", "end")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    mf = load_model_file(tmp_path / "s.gguf")
    want = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in tokens]
    got = mf.metadata["tokenizer.ggml.tokens"]
    assert got == want and list(got) == want and mf.metadata["after"] == "end"
    assert got[-1] == want[-1] and got[1:3] == want[1:3] and got[::-2] == want[::-2] and want[0] in got
    with pytest.raises(IndexError):
        got[len(want)]
    assert repr(got).startswith(f"StringArray({len(want)} strings: [")


def test_ggjt_v3_loads_like_gguf(tmp_path):
    path = write_ggml(tmp_path / "m.bin", n_layers=2, qtype="Q4_0")
    mf = load_model_file(path, gqa=2, eps=1e-5)
    md = mf.metadata
    assert (mf.format, mf.version, mf.architecture) == ("ggjt", 3, "llama")
    assert md["llama.embedding_length"] == 64 and md["llama.block_count"] == 2
    assert md["llama.attention.head_count"] == 4 and md["llama.attention.head_count_kv"] == 2
    assert md["llama.feed_forward_length"] == 192 and md["llama.rope.dimension_count"] == 16
    assert md["llama.attention.layer_norm_rms_epsilon"] == 1e-5 and md["llama.context_length"] == 2048
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and list(types[:3]) == [2, 3, 3]
    assert tokens[3] == "<0x00>" and tokens[3 + 0x41] == "<0x41>" and types[3 + 0x41] == 6
    assert tokens[259] == "\u2581w0" and types[259] == 1 and md["tokenizer.ggml.scores"][5] == -5.0
    assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.eos_token_id"] == 2
    want = ggml_tensors(0, 300, 64, 192, 2, "Q4_0")
    names = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "layers.1.attention.wq.weight": "blk.1.attn_q.weight", "layers.0.attention.wo.weight":
             "blk.0.attn_output.weight", "layers.1.feed_forward.w1.weight": "blk.1.ffn_gate.weight",
             "layers.0.feed_forward.w2.weight": "blk.0.ffn_down.weight", "layers.0.ffn_norm.weight":
             "blk.0.ffn_norm.weight", "layers.0.attention_norm.weight": "blk.0.attn_norm.weight"}
    for old, new in names.items():
        qtype, x, raw = want[old]
        t = mf.tensors[new]
        assert t.qtype == qtype and t.shape == x.shape and t.data.ctypes.data % 32 == 0
        assert np.array_equal(dequantize(t), dequantize(raw, qtype, x.shape))
    assert len(mf.tensors) == len(want)


@pytest.mark.parametrize("kind,version", [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2)])
def test_old_ggml_float_files_load(tmp_path, kind, version):
    mf = load_model_file(write_ggml(tmp_path / "m.bin", kind=kind, version=version, qtype="F16"))
    assert (mf.format, mf.version) == (kind, version)
    assert mf.tensors["blk.0.attn_k.weight"].qtype == "F16"
    assert (mf.metadata["tokenizer.ggml.scores"] == 0).all() == (kind == "ggml")


@pytest.mark.parametrize("kind,version,qtype", [("ggjt", 2, "Q4_0"), ("ggjt", 2, "Q8_0"), ("ggjt", 1, "Q4_1"),
                                                ("ggml", 0, "Q4_0"), ("ggmf", 1, "Q5_0")])
def test_old_quantized_layouts_refused(tmp_path, kind, version, qtype):
    path = write_ggml(tmp_path / "m.bin", kind=kind, version=version, qtype=qtype)
    with pytest.raises(FormatError, match=f"{qtype} in a {kind} v{version} file.*ggjt v3"):
        load_model_file(path)


def test_ggjt_v2_q5_accepted(tmp_path):
    mf = load_model_file(write_ggml(tmp_path / "m.bin", version=2, qtype="Q5_1"))
    assert mf.tensors["output.weight"].qtype == "Q5_1"


def test_bad_gqa(tmp_path):
    with pytest.raises(FormatError, match="gqa=3"):
        load_model_file(write_ggml(tmp_path / "m.bin"), gqa=3)


def _want(name, value):
    if isinstance(value, tuple):  # ("BF16", uint16 bits)
        return (value[1].astype(np.uint32) << 16).view(np.float32)
    return value.astype(np.float32)


def test_safetensors_sharded_folder(tmp_path):
    folder = write_safetensors_folder(tmp_path / "model", n_shards=3)
    mf = load_model_file(folder)
    weights = safetensors_weights(0)
    assert mf.format == "safetensors" and set(mf.tensors) == set(weights)
    assert mf.architecture == "llama" and mf.metadata["hf.config"]["hidden_size"] == 64
    assert mf.metadata["llama.attention.head_count_kv"] == 2 and mf.metadata["llama.rope.freq_base"] == 10000.0
    kinds = {t.qtype for t in mf.tensors.values()}
    assert kinds == {"F16", "F32", "BF16", "I64", "BOOL"}
    for name, value in weights.items():
        t = mf.tensors[name]
        assert t.shape == (value[1] if isinstance(value, tuple) else value).shape
        assert np.array_equal(dequantize(t), _want(name, value)), name


def test_safetensors_folder_without_index_and_single_file(tmp_path):
    folder = write_safetensors_folder(tmp_path / "model", n_shards=2, index=False)
    assert len(load_model_file(folder).tensors) == len(safetensors_weights(0))
    single = write_safetensors_file(tmp_path / "one.safetensors", {"a": np.arange(6, dtype=np.int32).reshape(2, 3),
                                                                   "b": np.float64([1.5]), "c": np.uint8([7])})
    mf = load_model_file(single)
    assert mf.metadata["safetensors.metadata"] == {"format": "pt"} and "hf.config" not in mf.metadata
    assert mf.tensors["a"].qtype == "I32" and mf.tensors["b"].qtype == "F64" and mf.tensors["c"].qtype == "U8"
    assert np.array_equal(dequantize(mf.tensors["a"]), np.arange(6, dtype=np.float32).reshape(2, 3))
