"""Mistral tokenizer files that are not the shipped ones: a tiny Tekken file (checked against mistral_common's
Tekkenizer on the same file), broken files (each a TokenizerError naming the file and the field), folders holding
several versions, GGUF files whose vocabulary carries Mistral's control tokens, and requests the instruct encoder
must refuse with a RequestError."""

import base64
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")

from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402
from mistral_common.tokens.tokenizers.tekken import Tekkenizer  # noqa: E402

from minirs.errors import RequestError, TokenizerError  # noqa: E402
from minirs.tokenizer import Tokenizer  # noqa: E402
from minirs.tokenizer.hf import read_sentencepiece_model  # noqa: E402
from minirs.tokenizer.instruct import InstructEncoder, version_from_vocabulary  # noqa: E402
from minirs.tokenizer.mistral import load_mistral_tokenizer  # noqa: E402
from minirs.tokenizer.tekken import DEFAULT_SPECIAL_TOKENS  # noqa: E402

DATA = Path(MistralTokenizer._data_path())
CORPUS = json.loads((Path(__file__).parent / "golden" / "corpus.json").read_text(encoding="utf-8"))
PATTERN = json.loads((DATA / "tekken_240718.json").read_bytes())["config"]["pattern"]
MERGED = [b"th", b"the", b" t", b" the", b"in", b"ing", b"er", b" a", b"an", b"and", b" and", b"\xc3\xa9", b"  "]


def tiny_tekken(version="v3", n_special=24, **changes) -> dict:
    """A Tekken file of 256 bytes + a few merged tokens; `changes` replaces top-level or config entries."""
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None} for i in range(256)]
    vocab += [{"rank": 256 + k, "token_bytes": base64.b64encode(m).decode(), "token_str": None}
              for k, m in enumerate(MERGED)]
    spec = {"config": {"pattern": PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab) + n_special,
                       "default_num_special_tokens": n_special, "version": version}, "vocab": vocab}
    for key, value in changes.items():
        (spec["config"] if key in spec["config"] else spec)[key] = value
    return spec


def write(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_tiny_tekken_matches_mistral_common(tmp_path):
    path = write(tmp_path / "tekken.json", tiny_tekken())
    tok, mt = load_mistral_tokenizer(path), Tekkenizer.from_file(path)
    assert tok.vocab_size == mt.n_words
    for s in CORPUS:
        ids = tok.encode(s, add_special_tokens=False)
        assert ids == mt.encode(s, bos=False, eos=False), s
        assert tok.decode(ids) == mt.decode(ids), s
    # the vocabulary is cut to default_vocab_size, as mistral_common cuts it
    cut = write(tmp_path / "cut_tekken.json", tiny_tekken(default_vocab_size=256 + 24 + 3))
    tok, mt = load_mistral_tokenizer(cut), Tekkenizer.from_file(cut)
    assert tok.vocab_size == mt.n_words == 283
    assert tok.encode("the thing", False) == mt.encode("the thing", bos=False, eos=False)


def test_tekken_special_token_table(tmp_path):
    specials = [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(DEFAULT_SPECIAL_TOKENS)]
    path = write(tmp_path / "tekken.json", tiny_tekken("v7", special_tokens=specials[:20]))
    tok, mt = load_mistral_tokenizer(path), Tekkenizer.from_file(path)
    assert tok.tokens[:24] == [mt.id_to_piece(i) for i in range(24)]  # filled up with <SPECIAL_20>...
    assert tok.instruct.version == "v7"


BROKEN = {
    "config.version": dict(version="v99"),
    "config.pattern": dict(pattern="(unclosed"),
    "config.default_num_special_tokens": dict(default_num_special_tokens="many"),
    "config.default_num_special_tokens =": dict(default_num_special_tokens=10**9, default_vocab_size=10**9 + 300),
    "config.default_vocab_size": dict(default_vocab_size=-5),
    "vocab[260].rank": dict(vocab="dup-rank"),
    "vocab[257].token_bytes": dict(vocab="bad-base64"),
    "vocab[7].token_bytes": dict(vocab="not-a-byte"),
    "repeats vocab[256]": dict(vocab="dup-bytes"),
    "special_tokens has '<s>' twice": dict(special_tokens="dup"),
    "special_tokens missing": dict(version="v11"),
}


@pytest.mark.parametrize("field", sorted(BROKEN))
def test_broken_tekken_names_file_and_field(tmp_path, field):
    change = dict(BROKEN[field])
    kind = change.pop("vocab", None)
    specials = change.pop("special_tokens", None)
    spec = tiny_tekken(**change)
    v = spec["vocab"]
    if kind == "dup-rank":
        v[260]["rank"] = 259
    elif kind == "bad-base64":
        v[257]["token_bytes"] = "@@not base64@@"
    elif kind == "not-a-byte":
        v[7]["token_bytes"] = base64.b64encode(b"ab").decode()
    elif kind == "dup-bytes":
        v[260]["token_bytes"] = v[256]["token_bytes"]
    if specials == "dup":
        spec["special_tokens"] = [{"rank": 0, "token_str": "<s>", "is_control": True},
                                  {"rank": 1, "token_str": "<s>", "is_control": True}]
    path = write(tmp_path / "tekken.json", spec)
    with pytest.raises(TokenizerError) as e:
        load_mistral_tokenizer(path)
    assert str(path) in str(e.value) and field.split(" ")[0] in str(e.value), str(e.value)


def test_not_json_and_unknown_files(tmp_path):
    (tmp_path / "tekken.json").write_text("{nope")
    with pytest.raises(TokenizerError, match="tekken.json: not a readable JSON"):
        load_mistral_tokenizer(tmp_path / "tekken.json")
    spm = tmp_path / "tokenizer.model.v5"
    shutil.copy(DATA / "tokenizer.model.v1", spm)
    with pytest.raises(TokenizerError, match=r"tokenizer.model.v5: tokenizer version 'v5'"):
        load_mistral_tokenizer(spm)
    (tmp_path / "tokenizer.model.v3").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(TokenizerError, match="tokenizer.model.v3: not a valid SentencePiece model"):
        load_mistral_tokenizer(tmp_path / "tokenizer.model.v3")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="no Mistral tokenizer file"):
        load_mistral_tokenizer(empty)


def test_folder_takes_the_newest_version(tmp_path):
    for name, target in (("tokenizer.model.v3", "mistral_instruct_tokenizer_240323.model.v3"),
                         ("tokenizer.model.v1", "tokenizer.model.v1")):
        (tmp_path / name).symlink_to(DATA / target)
    assert load_mistral_tokenizer(tmp_path).instruct.version == "v3"
    write(tmp_path / "tekken.json", tiny_tekken("v7"))
    tok = load_mistral_tokenizer(tmp_path)
    assert tok.instruct.version == "v7" and tok.source.endswith("tekken.json")
    (tmp_path / "tokenizer.model.v7").symlink_to(DATA / "mistral_instruct_tokenizer_241114.model.v7")
    assert load_mistral_tokenizer(tmp_path).source.endswith("tekken.json")  # Tekken wins a tie


def _gguf_from_spm(path: Path, model_file: Path) -> Path:
    """A GGUF holding only the SentencePiece vocabulary of a Mistral tokenizer file, as llama.cpp converts it."""
    spec = read_sentencepiece_model(model_file.read_bytes())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tokenizer_model("llama")
    w.add_token_list(spec["pieces"])
    w.add_token_scores(spec["scores"])
    w.add_token_types(spec["types"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", np.zeros((len(spec["pieces"]), 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("name,version", [("mistral_instruct_tokenizer_240323.model.v3", "v3"),
                                          ("mistral_instruct_tokenizer_241114.model.v7", "v7")])
def test_gguf_mistral_vocabulary_offers_instruct(tmp_path, name, version):
    tok = Tokenizer.from_gguf(_gguf_from_spm(tmp_path / "m.gguf", DATA / name))
    assert tok.instruct is not None and tok.instruct.version == version
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"id": "abc123def", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "abc123def", "content": "sunny"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    expected = MistralTokenizer.from_file(str(DATA / name)).encode_chat_completion(
        ChatCompletionRequest.from_openai(messages, tools=tools)).tokens
    assert tok.instruct.encode_chat(messages, tools) == expected


def test_gguf_without_mistral_tokens_has_no_instruct(smollm2_path):
    assert Tokenizer.from_gguf(smollm2_path).instruct is None


@pytest.fixture(scope="module")
def v3():
    return load_mistral_tokenizer(DATA / "mistral_instruct_tokenizer_240323.model.v3").instruct


BAD_REQUESTS = [
    ("not a list", None, "messages = 'not a list' must be a list"),
    ([], None, "messages is empty"),
    ([{"role": "robot", "content": "x"}], None, r"messages\[0\].role = 'robot'"),
    ([{"role": "user", "content": 5}], None, r"messages\[0\].content must be"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], None, "only text parts"),
    ([{"role": "assistant", "content": "x"}], None, "one-message conversation"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "abc123def", "content": "b"}], None,
     "a tool message cannot follow a user message"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], None, "the last message must be"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
        {"id": "abc123def", "function": {"name": "bad name!", "arguments": "{}"}}]}], None, "function.name"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
        {"id": "abc123def", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "content": "b"}], None, "needs tool_call_id"),
    ([{"role": "system", "content": None}, {"role": "user", "content": "a"}], None, "system message needs content"),
    ([{"role": "user", "content": "a"}], [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
     r"tools\[0\].function.parameters"),
    ([{"role": "user", "content": "a"}], {"f": 1}, "tools = .* must be a list"),
]


@pytest.mark.parametrize("messages,tools,match", BAD_REQUESTS)
def test_bad_requests_are_request_errors(v3, messages, tools, match):
    with pytest.raises(RequestError, match=match):
        v3.encode_chat(messages, tools)


def test_bad_fim_arguments(v3):
    with pytest.raises(RequestError, match="FIM suffix must be a string"):
        v3.encode_fim("a", None)


def test_tekken_lone_surrogates_as_tiktoken(tmp_path):
    path = write(tmp_path / "tekken.json", tiny_tekken())
    tok, mt = load_mistral_tokenizer(path), Tekkenizer.from_file(path)
    for s in ("a\ud800b", "\udfff", "x \ud83d"):
        assert tok.encode(s, add_special_tokens=False) == mt.encode(s, bos=False, eos=False)


def test_gguf_tekken_vocabulary(tmp_path):
    """A Tekken model as llama.cpp converts it (tokenizer.ggml.pre "tekken": the file's pattern, whole-piece
    lookup, merges recovered from the ranks), on the first 3000 tokens of tekken_240718.json."""
    from minirs.tokenizer.bpe import bytes_to_unicode, merge_pairs
    spec = json.loads((DATA / "tekken_240718.json").read_bytes())
    n_special, n_keep = spec["config"]["default_num_special_tokens"], 3000
    spec["config"]["default_vocab_size"] = n_special + n_keep
    spec["vocab"] = spec["vocab"][:n_keep]
    cut = write(tmp_path / "cut_tekken.json", spec)
    mt = MistralTokenizer.from_file(str(cut))
    byte_char = bytes_to_unicode()
    words = ["".join(byte_char[b] for b in base64.b64decode(v["token_bytes"])) for v in spec["vocab"]]
    rank = {w: r for r, w in enumerate(words)}
    merges = []
    for r in range(256, n_keep):  # the two parts BPE reaches a token from, using only lower ranks
        parts = merge_pairs(list(words[r]), lambda a, b: rank[a + b] if rank.get(a + b, r) < r else None)
        assert len(parts) == 2
        merges.append(" ".join(parts))
    specials = [mt.instruct_tokenizer.tokenizer.id_to_piece(i) for i in range(n_special)]
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_block_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("tekken")
    w.add_token_list(specials + words)
    w.add_token_types([3] * n_special + [1] * n_keep)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", np.zeros((n_special + n_keep, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = Tokenizer.from_gguf(tmp_path / "t.gguf")
    ref = mt.instruct_tokenizer.tokenizer
    for s in CORPUS:
        assert tok.encode(s, add_special_tokens=False) == ref.encode(s, bos=False, eos=False), s
    # Tekken's default special tokens include [SYSTEM_PROMPT] even in v3: with no template that says v7
    assert tok.instruct.version == "v7"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]
    for template, version in (("{{ '[SYSTEM_PROMPT]' }}", "v7"), ("{{ '[INST]' }}", "v3")):
        tok.chat_template = template
        assert version_from_vocabulary(tok) == version
    inst = InstructEncoder(tok, "v3")  # Mistral Nemo's format
    assert inst.encode_chat(messages) == mt.encode_chat_completion(ChatCompletionRequest.from_openai(messages)).tokens


def test_versions_after_v7_load_without_instruct(tmp_path):
    specials = [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(DEFAULT_SPECIAL_TOKENS)]
    path = write(tmp_path / "tekken.json", tiny_tekken("v11", special_tokens=specials))
    tok = load_mistral_tokenizer(path)
    assert tok.instruct is None
    assert tok.encode("the end", add_special_tokens=False) == Tekkenizer.from_file(path).encode("the end", False, False)
    with pytest.raises(TokenizerError, match="instruct version 'v11' is not supported"):
        InstructEncoder(tok, "v11")
