"""Hostile input to the tokenizer (issue 20): arguments of the wrong type to encode/decode, and tokenizer metadata of
the wrong type or length, which a model file can carry. Every case either works or raises a MinirsError subclass
that names the problem; none may crash with a raw Python error or reach an index out of range later.

The tokenizers are tiny (a byte-level BPE of 256 bytes, a few merges and two control tokens) and built from a
metadata dict on a `ModelFile`, so the fuzz test runs hundreds of loads in seconds."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirs.errors import MinirsError, TemplateError, TokenizerError
from minirs.formats import ModelFile
from minirs.tokenizer import Tokenizer
from minirs.tokenizer.bpe import bytes_to_unicode
from minirs.tokenizer.checks import FLAGS, SPECIAL_IDS

BYTES = [bytes_to_unicode()[b] for b in range(256)]
MERGES = ["h e", "l l", "he ll", "Ġ w", "o r"]
SPECIAL = ["<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{{ bos_token }}{{ eos_token }}")


def tiny_metadata() -> dict:
    """GGUF tokenizer metadata as `read_gguf` returns it: strings, Python ints/bools, NumPy arrays, str lists."""
    tokens = BYTES + ["he", "ll", "hell", "Ġw", "or"] + SPECIAL
    n = len(tokens)
    return {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array([1] * (n - 2) + [3, 3], dtype=np.int32),
        "tokenizer.ggml.merges": list(MERGES),
        "tokenizer.ggml.bos_token_id": n - 2,
        "tokenizer.ggml.eos_token_id": n - 1,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": TEMPLATE,
    }


def load(md: dict) -> Tokenizer:
    return Tokenizer.from_gguf(ModelFile(Path("hostile.gguf"), "gguf", 3, md))


@pytest.fixture(scope="module")
def tiny():
    return load(tiny_metadata())


def test_tiny_tokenizer_works(tiny):
    ids = tiny.encode("hello world<|im_end|>", parse_special=True)
    assert tiny.decode(ids) == "hello world<|im_end|>" and ids[-1] == tiny.eos_id
    assert tiny.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|><|im_end|>")


# ----- item 12: arguments of the wrong type ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [123, b"bytes", None, ["a"], 1.5])
def test_encode_refuses_non_text(tiny, text):
    with pytest.raises(TokenizerError, match="encode\\(\\) takes a str"):
        tiny.encode(text)


@pytest.mark.parametrize("ids, match", [
    (["a"], r"ids\[0\] 'a' is a str"),
    ([1.5], r"ids\[0\] 1.5 is a float"),
    ([True], r"ids\[0\] True is a bool"),
    ([3, np.bool_(True)], r"ids\[1\] .*True.* is a bool"),
    ([3, None], r"ids\[1\] None is a NoneType"),
    ([3, [4]], r"ids\[1\] \[4\] is a list"),
    ([np.float32(2.0)], r"ids\[0\] .*2\.0.* is a float32"),
    ([-1], r"ids\[0\] -1 is out of range for a vocabulary of 263"),
    ([263], r"ids\[0\] 263 is out of range"),
    ([2 ** 70], r"out of range"),
    (5, r"decode\(\) takes an iterable of token ids, not 5"),
    ("abc", r"decode\(\) takes an iterable of token ids, not 'abc'"),
    (b"ab", r"not b'ab'"),
    (None, r"not None"),
    ({1: 2}, r"a dict"),
])
def test_decode_refuses_what_is_not_a_token_id(tiny, ids, match):
    with pytest.raises(TokenizerError, match=match):
        tiny.decode(ids)


def test_decode_takes_numpy_integers(tiny):
    ids = tiny.encode("hello")
    assert tiny.decode(np.array(ids, dtype=np.int64)) == "hello"
    assert tiny.decode(np.array(ids, dtype=np.uint16)) == "hello"
    assert tiny.decode([np.int32(i) for i in ids]) == "hello"
    assert tiny.decode(iter(ids)) == tiny.decode(tuple(ids)) == "hello"


@pytest.mark.parametrize("bad", ["a", 1.5, True, -1, 263, None])
def test_token_to_bytes_and_stream_feed_check_ids(tiny, bad):
    with pytest.raises(TokenizerError, match="token id"):
        tiny.token_to_bytes(bad)
    stream = tiny.stream_decoder(skip_special_tokens=True)
    with pytest.raises(TokenizerError, match="token id"):
        stream.feed(bad)
    assert tiny.token_to_bytes(np.int64(104)) == b"h" and stream.feed(np.uint8(104)) == "h"


# ----- item 3: tokenizer metadata of the wrong type or length -------------------------------------------------------

N = len(tiny_metadata()["tokenizer.ggml.tokens"])
BOS = "tokenizer.ggml.bos_token_id"

BAD_METADATA = [  # (key, value, what the error says)
    (BOS, "1", r"bos_token_id must be an integer token id, not '1' \(a str\)"),
    (BOS, float("nan"), r"bos_token_id must be an integer token id, not nan"),
    ("tokenizer.ggml.eos_token_id", float("inf"), r"eos_token_id must be an integer token id, not inf"),
    ("tokenizer.ggml.eos_token_id", 2.0, r"not 2.0 \(a float\)"),
    (BOS, np.array([1, 2], dtype=np.int32), r"bos_token_id must be an integer token id, not array"),
    (BOS, True, r"not True \(a bool\)"),
    ("tokenizer.ggml.unknown_token_id", ["a"], r"unknown_token_id must be an integer"),
    ("tokenizer.ggml.token_type", np.ones(N - 5, dtype=np.int32), rf"token_type has {N - 5} entries but .* has {N}"),
    ("tokenizer.ggml.token_type", np.ones(N, dtype=np.float32), r"token_type must be an array of integers"),
    ("tokenizer.ggml.token_type", ["1"] * N, r"token_type must be an array of integers"),
    ("tokenizer.ggml.token_type", np.full(N, 2**40, dtype=np.int64), r"token_type holds a value outside int32"),
    ("tokenizer.ggml.merges", np.arange(5, dtype=np.int32), r"merges must be an array of strings, not array"),
    ("tokenizer.ggml.merges", ["h e", 7], r"merges\[1\] must be a string, not 7"),
    ("tokenizer.ggml.merges", ["a b c"], r"merge 'a b c' is not two space-separated pieces"),
    ("tokenizer.ggml.tokens", np.arange(N, dtype=np.int32), r"tokens must be an array of strings"),
    ("tokenizer.ggml.tokens", [], r"tokens is empty"),
    ("tokenizer.ggml.tokens", "abc", r"tokens must be an array of strings, not 'abc'"),
    ("tokenizer.ggml.model", np.array([1, 2]), r"tokenizer.ggml.model must be a string"),
    ("tokenizer.ggml.model", "bert", r"'bert' is not supported"),
    ("tokenizer.ggml.pre", 5, r"tokenizer.ggml.pre must be a string, not 5"),
    ("tokenizer.ggml.add_bos_token", "false", r"add_bos_token must be a bool, not 'false'"),
    ("tokenizer.ggml.add_bos_token", np.array([True, False]), r"add_bos_token must be a bool"),
    ("tokenizer.chat_template", 12345, r"chat_template must be a string, not 12345 \(a int\)"),
    ("tokenizer.ggml.scores", np.zeros(3, dtype=np.float32), r"scores has 3 entries"),
    ("tokenizer.ggml.scores", ["x"] * N, r"scores must be an array of numbers"),
    ("general.architecture", 7, r"general.architecture must be a string"),
]


@pytest.mark.parametrize("key, value, match", BAD_METADATA, ids=[f"{k.split('.')[-1]}-{i}" for i, (k, _, _)
                                                                 in enumerate(BAD_METADATA)])
def test_bad_metadata_is_a_tokenizer_error(key, value, match):
    md = tiny_metadata()
    md[key] = value
    with pytest.raises(TokenizerError, match=match) as info:
        load(md)
    assert "hostile.gguf" in str(info.value)


def test_llama_kind_checks_its_keys_too():
    md = tiny_metadata() | {"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": np.arange(N, dtype=np.float32)}
    assert load(md).encode("hello")
    with pytest.raises(TokenizerError, match="add_space_prefix must be a bool"):
        load(md | {"tokenizer.ggml.add_space_prefix": "yes"})
    with pytest.raises(TokenizerError, match="unknown_token_id must be an integer"):
        load(md | {"tokenizer.ggml.unknown_token_id": 1.5})


@pytest.mark.parametrize("key", sorted(SPECIAL_IDS.values()))
@pytest.mark.parametrize("value", [N, N + 1000, -1, 2**63])
def test_special_id_outside_the_vocabulary_is_dropped(key, value, caplog):
    """As llama.cpp does ("bad special token"): warned about and ignored, never used as an index later."""
    tok = load(tiny_metadata() | {key: value})
    assert "outside the vocabulary" in caplog.text
    assert all(0 <= i < N for i in tok.eos_ids)
    assert tok.bos_id is None or 0 <= tok.bos_id < N
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])  # reads bos_token and eos_token
    assert tok.decode(tok.encode(text, parse_special=True)) == text


def test_eos_past_the_vocabulary_does_not_break_the_chat_template():
    tok = load(tiny_metadata() | {"tokenizer.ggml.eos_token_id": N + 5})
    assert tok.eos_ids == [N - 1]  # only <|im_end|>, found as an end-of-turn control token
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|><|im_end|>")
    md = tiny_metadata() | {"tokenizer.ggml.eos_token_id": N + 5}
    md["tokenizer.ggml.token_type"] = np.ones(N, dtype=np.int32)  # no control tokens: no end of turn either
    tok = load(md)
    assert tok.eos_token is None and tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith(
        "<|im_start|>")


def test_deeply_nested_template_loads_and_fails_as_template_error():
    tok = load(tiny_metadata() | {"tokenizer.chat_template": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"})
    with pytest.raises(TemplateError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_bad_metadata_in_a_written_gguf(tmp_path):
    """The same check on metadata as the GGUF reader returns it from a file."""
    import gguf
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    md = tiny_metadata()
    w.add_tokenizer_model("gpt2")
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_types([1] * (N - 7))  # short
    w.add_token_merges(md["tokenizer.ggml.merges"])
    w.add_string(BOS, "<|im_start|>")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(TokenizerError, match=f"token_type has {N - 7} entries"):
        Tokenizer.from_gguf(path)


# The fuzz test: every tokenizer key gets values of every wrong kind; each load must work or be a MinirsError, and
# a tokenizer that loads must encode, decode and render its template with at most a MinirsError.
KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.chat_template", "general.architecture",
        *SPECIAL_IDS.values(), *FLAGS.values()]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["gpt2", "llama", "smollm", "gemma3", "{{ 1 }}"]),
                    st.integers(N - 3, N + 3))
ARRAYS = st.one_of(
    st.lists(SCALARS, max_size=6),
    st.lists(st.text(max_size=4), min_size=N - 2, max_size=N + 2),
    st.builds(lambda n, dt: np.arange(n).astype(dt), st.integers(0, N + 2),
              st.sampled_from([np.int8, np.uint16, np.int32, np.uint64, np.float32, np.float64, np.bool_])),
    st.builds(lambda n, v: np.full(n, v), st.sampled_from([N - 1, N, N + 1]),
              st.sampled_from([float("nan"), float("inf"), -1, 2**31, 7])),
)
VALUES = st.one_of(SCALARS, ARRAYS, st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
                   st.just(b"bytes"), st.just(np.int64(3)), st.just(np.float32(3.0)), st.just(np.array(5)))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3),
       dropped=st.lists(st.sampled_from(KEYS), max_size=2))
def test_fuzzed_metadata_loads_or_raises_minirs_error(changes, dropped):
    md = tiny_metadata()
    for key in dropped:
        md.pop(key, None)
    md.update(changes)
    try:
        tok = load(md)
    except MinirsError:
        return
    try:
        ids = tok.encode("hello <|im_start|> world", parse_special=True)
        assert all(0 <= i < tok.vocab_size for i in ids)
        tok.decode(ids, skip_special_tokens=True)
        tok.decode(range(tok.vocab_size))
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    except MinirsError:
        pass


# ----- the same for a Hugging Face folder (Tokenizer.from_files) ---------------------------------------------------

def write_folder(folder: Path, spec=None, config=None, generation=None) -> Path:
    """The tiny tokenizer as tokenizer.json (byte-level BPE) + tokenizer_config.json (+ generation_config.json)."""
    md = tiny_metadata()
    tokens = md["tokenizer.ggml.tokens"]
    if spec is None:
        spec = {"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens[:-2])}, "merges": MERGES},
                "added_tokens": [{"id": N - 2 + k, "content": t, "special": True} for k, t in enumerate(SPECIAL)],
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    if config is None:
        config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": TEMPLATE}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


def test_tiny_folder_works(tmp_path):
    tok = Tokenizer.from_files(write_folder(tmp_path, generation={"eos_token_id": [N - 1, 0]}))
    assert tok.encode("hello world") == load(tiny_metadata()).encode("hello world")
    assert tok.bos_id == N - 2 and tok.eos_ids == [N - 1, 0]


def _spec_with(change):
    spec = {"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tiny_metadata()["tokenizer.ggml.tokens"])},
                      "merges": list(MERGES)},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    change(spec)
    return spec


BAD_FOLDERS = [  # (tokenizer.json, tokenizer_config.json, generation_config.json, what the error says)
    (None, ["not", "an", "object"], None, r"tokenizer_config.json: expected a JSON object"),
    (None, {"bos_token": ["<|im_start|>"]}, None, r"bos_token must be a string or \{\"content\": string\}"),
    (None, {"eos_token": {"content": 5}}, None, r"eos_token must be a string"),
    (None, {"add_bos_token": "yes"}, None, r"add_bos_token must be true or false, not 'yes'"),
    (None, {"add_eos_token": 1}, None, r"add_eos_token must be true or false, not 1"),
    (None, {"chat_template": 5}, None, r"chat_template must be a string, not 5"),
    (None, {"chat_template": [{"name": "default"}]}, None, r"chat_template list entries must be"),
    (None, {"chat_template": ["x"]}, None, r"chat_template list entries must be"),
    (None, {}, {"eos_token_id": "2"}, r"generation_config.json: eos_token_id must be an integer token id, not '2'"),
    (None, {}, {"eos_token_id": [2, 1.5]}, r"eos_token_id\[1\] must be an integer token id, not 1.5"),
    (None, {}, ["eos"], r"generation_config.json: expected a JSON object"),
    (_spec_with(lambda s: s["model"]["vocab"].update(big=10**12)), {}, None, r"token id 1000000000000 is far past"),
    (_spec_with(lambda s: s["model"]["vocab"].update(neg=-1)), {}, None, r"model.vocab\['neg'\] = -1 is not a token"),
    (_spec_with(lambda s: s["model"]["vocab"].update(f=1.5)), {}, None, r"model.vocab\['f'\] = 1.5 is not a token"),
    (_spec_with(lambda s: s.update(added_tokens=[{"id": 3}])), {}, None, r"added_tokens\[0\] = .* needs an int id"),
    (_spec_with(lambda s: s.update(added_tokens=[{"id": "3", "content": "x"}])), {}, None, r"needs an int id"),
    (_spec_with(lambda s: s["model"].update(vocab=[1, 2])), {}, None, r"model.vocab must be an object"),
    (_spec_with(lambda s: s["model"].update(vocab={})), {}, None, r"the vocabulary is empty"),
    (_spec_with(lambda s: s["model"].update(merges=[5, 6])), {}, None, r"malformed tokenizer.json|model.merges must"),
    (_spec_with(lambda s: s["model"].update(merges=[["a", 5]])), {}, None, r"model.merges must be"),
    (_spec_with(lambda s: s.update(model="BPE")), {}, None, r"malformed tokenizer.json \(AttributeError"),
    (_spec_with(lambda s: s.update(post_processor={"type": "TemplateProcessing", "single": []})), {}, None, None),
    (["tokenizer.json as a list"], {}, None, r"tokenizer.json: expected a JSON object"),
]


@pytest.mark.parametrize("spec, config, generation, match", BAD_FOLDERS)
def test_bad_folder_is_a_tokenizer_error(tmp_path, spec, config, generation, match):
    write_folder(tmp_path, spec, config, generation)
    if match is None:
        assert Tokenizer.from_files(tmp_path).encode("hello")
        return
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_files(tmp_path)


def test_folder_eos_outside_the_vocabulary_is_dropped(tmp_path, caplog):
    tok = Tokenizer.from_files(write_folder(tmp_path, generation={"eos_token_id": [N + 3, -1, N - 1]}))
    assert tok.eos_ids == [N - 1] and "outside the vocabulary" in caplog.text


def test_broken_sentencepiece_models(tmp_path):
    from test_tokenizer_files import _model_proto, _pb
    good = _model_proto()
    for k, data in enumerate([good[:len(good) // 2] + b"\xff", good[:-3], _pb(1, 5) + good, _pb(1, _pb(1, b"\xff\xfe"))
                              + good, _pb(1, _pb(3, 2**40)) + good, good + _pb(2, _pb(41, b"x"))]):
        folder = tmp_path / str(k)
        folder.mkdir()
        (folder / "tokenizer.model").write_bytes(data)
        with pytest.raises(TokenizerError, match="SentencePiece"):
            Tokenizer.from_files(folder)
