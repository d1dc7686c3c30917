"""Tokenizer.from_files: a HF tokenizer.json (byte-level, and SentencePiece converted to BPE) and a SentencePiece
tokenizer.model, written by the tests themselves so no download is needed."""

import json
import struct

import pytest

from minirs.errors import TokenizerError
from minirs.formats import load_model_file
from minirs.tokenizer import Tokenizer

TEXTS = ["Hello world", "It's 12345 ², ok?", "  x\n\n  1 日本語 🎉", "<|im_start|>user\nHi<|im_end|>\n", ""]


def test_smollm2_tokenizer_json_matches_gguf(tmp_path, smollm2_path):
    """SmolLM2's tokenizer.json shape (Digits + ByteLevel) rebuilt from its GGUF gives the same ids."""
    md = load_model_file(smollm2_path).metadata
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    spec = {
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": list(md["tokenizer.ggml.merges"]),
                  "byte_fallback": False, "ignore_merges": False},
        "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(tokens) if types[i] == 3],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel"},
        "decoder": {"type": "ByteLevel"},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": md["tokenizer.chat_template"], "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    from_json, from_gguf = Tokenizer.from_files(tmp_path), Tokenizer.from_gguf(smollm2_path)
    for text in TEXTS:
        for parse in (False, True):
            assert from_json.encode(text, parse_special=parse) == from_gguf.encode(text, parse_special=parse)
    assert from_json.add_bos is False and from_json.eos_id == 2 and from_json.bos_id == 1
    msgs = [{"role": "user", "content": "Hi"}]
    assert from_json.apply_chat_template(msgs) == from_gguf.apply_chat_template(msgs)


# A toy SentencePiece BPE vocabulary: merges go by score, highest first.
PIECES = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)] + [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)] + [
    ("ll", -1.0, 1), ("\u2581h", -2.0, 1), ("\u2581he", -3.0, 1), ("llo", -4.0, 1), ("\u2581hello", -5.0, 1),
    ("\u2581w", -6.0, 1), ("or", -7.0, 1)] + [(c, -10.0 - k, 1) for k, c in enumerate("\u2581helowrd")]
EXPECTED = ["\u2581hello", "\u2581w", "or", "l", "d", "\u2581", "<0xC3>", "<0xA9>"]  # "hello world é"


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb(field: int, value) -> bytes:
    if isinstance(value, bytes):
        return _pb_varint(field << 3 | 2) + _pb_varint(len(value)) + value
    if isinstance(value, float):
        return _pb_varint(field << 3 | 5) + struct.pack("<f", value)
    return _pb_varint(field << 3) + _pb_varint(value)


def _model_proto(model_type: int = 2) -> bytes:
    pieces = b"".join(_pb(1, _pb(1, p.encode()) + _pb(2, s) + _pb(3, t)) for p, s, t in PIECES)
    trainer = _pb(3, model_type) + _pb(35, 1) + _pb(40, 0) + _pb(41, 1) + _pb(42, 2)
    normalizer = _pb(1, b"identity") + _pb(3, 1) + _pb(4, 0)
    return pieces + _pb(2, trainer) + _pb(3, normalizer)


def _check_toy(tok):
    ids = tok.encode("hello world é")
    assert ids[0] == tok.bos_id == 1
    assert [tok.tokens[i] for i in ids[1:]] == EXPECTED
    assert tok.decode(ids, skip_special_tokens=True) == "hello world é"  # the prefix space is dropped again
    stream = tok.stream_decoder(skip_special_tokens=True)
    assert "".join(stream.feed(i) for i in ids) + stream.flush() == "hello world é"


def test_sentencepiece_model_v3(tmp_path):
    (tmp_path / "tokenizer.model.v3").write_bytes(_model_proto())
    tok = Tokenizer.from_files(tmp_path, chat_template="mistral-v3")
    _check_toy(tok)
    assert tok.eos_ids == [2]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s>[INST] hi[/INST]"


def test_sentencepiece_unigram_refused(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(_model_proto(model_type=1))
    with pytest.raises(TokenizerError, match="model type 1"):
        Tokenizer.from_files(tmp_path)


def test_sentencepiece_tokenizer_json(tmp_path):
    """The same toy vocabulary as transformers converts it: BPE with byte fallback, merges listed in order."""
    vocab = {p: i for i, (p, _, _) in enumerate(PIECES)}
    merges = [["l", "l"], ["\u2581", "h"], ["\u2581h", "e"], ["ll", "o"], ["\u2581he", "llo"], ["\u2581", "w"],
              ["o", "r"]]
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": merges, "byte_fallback": True, "unk_token": "<unk>"},
            "added_tokens": [{"id": i, "content": p, "special": True} for i, (p, _, t) in enumerate(PIECES) if t != 1
                             and t != 6],
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                       {"Sequence": {"id": "A", "type_id": 0}}]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    _check_toy(Tokenizer.from_files(tmp_path))


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_files(tmp_path)
    with pytest.raises(TokenizerError, match="not a folder"):
        Tokenizer.from_files(tmp_path / "nope")


def test_gguf_without_tokenizer_is_an_error(tmp_path):
    import gguf
    path = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TokenizerError, match="no tokenizer.ggml.model"):
        Tokenizer.from_gguf(path)


def test_encode_takes_text(smollm2_path):
    with pytest.raises(TokenizerError, match="str"):
        Tokenizer.from_gguf(smollm2_path).encode(b"bytes")
