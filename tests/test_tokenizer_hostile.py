"""Hostile input to the tokenizer (issue 20): arguments of the wrong type to encode/decode, and tokenizer metadata of
the wrong type or length, which a model file can carry. Every case either works or raises a MinirsError subclass
that names the problem; none may crash with a raw Python error or reach an index out of range later.

The tokenizers are tiny (a byte-level BPE of 256 bytes, a few merges and two control tokens) and built from a
metadata dict on a `ModelFile`, so the fuzz test runs hundreds of loads in seconds."""

from pathlib import Path

import numpy as np
import pytest

from minirs.errors import TokenizerError
from minirs.formats import ModelFile
from minirs.tokenizer import Tokenizer
from minirs.tokenizer.bpe import bytes_to_unicode

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
