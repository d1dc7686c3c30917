"""Tekken: Mistral's tiktoken-style byte-level BPE, read from its tekken.json alone (no tiktoken needed).

The file, as mistral_common (`tokens/tokenizers/tekken.py`) reads it:

    {"config": {"pattern": str,                      # the pre-tokenizer regex (tiktoken's pat_str)
                "num_vocab_tokens": int,             # entries in "vocab"
                "default_vocab_size": int,           # ids the model has: special tokens + the vocab kept
                "default_num_special_tokens": int,   # ids 0..n_special-1 are special
                "version": "v3" | "v7" | ...},       # the instruct format (see instruct.py)
     "vocab": [{"rank": r, "token_bytes": base64, "token_str": str | null}, ...],    # rank r at position r
     "special_tokens": [{"rank": r, "token_str": "<s>", "is_control": true}, ...]}   # optional up to v7

Ids: special token k is id k (the list is padded with "<SPECIAL_k>" up to default_num_special_tokens; files of
v7 and before without the list get `DEFAULT_SPECIAL_TOKENS`); the vocab entry of rank r is id r + n_special, and
only the first default_vocab_size - n_special entries are kept. Special tokens are never read from text.

Encoding is tiktoken's: split the text with the pattern; a piece that is a token is taken whole; otherwise merge
adjacent byte strings, always the pair whose concatenation has the lowest rank (leftmost on ties). That is
`ByteLevelBPE` with rank(a, b) = rank(a + b) instead of a merges list, so the byte <-> character table, the
heap-based merge loop and the per-piece cache are shared with GPT-2 style BPE.
"""

import base64
import binascii
import json
import re
from pathlib import Path

import numpy as np

from minirs.errors import TokenizerError, quote
from minirs.tokenizer.bpe import ByteLevelBPE, bytes_to_unicode
from minirs.tokenizer.pretokenize import PreTokenizer

CONTROL = 3

# mistral_common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS: the table of files that carry no "special_tokens"
DEFAULT_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                          "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                          "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                          "[TOOL_CONTENT]")

# mistral_common's TokenizerVersion, in order; files newer than v7 must list their special tokens
VERSIONS = ("v1", "v2", "v3", "v7", "v11", "v13", "v15")

MAX_SPECIAL = 1 << 16  # Mistral's files have 1000

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class TekkenBPE(ByteLevelBPE):
    """tiktoken's BPE over a vocabulary spelled in the `bytes_to_unicode` alphabet; `vocab` maps to final ids."""

    def __init__(self, vocab: dict[str, int], pretokenizer: PreTokenizer):
        super().__init__(vocab, [], pretokenizer, ignore_merges=True)

    def _rank(self, a: str, b: str):
        return self.vocab.get(a + b)  # ids are ranks plus a constant, so they order merges the same way

    def encode(self, text: str) -> list[int]:
        if _LONE_SURROGATE.search(text):  # tiktoken replaces what UTF-8 cannot hold, so do we
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return super().encode(text)


def _load_json(path: Path) -> dict:
    try:
        spec = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(spec, dict):
        raise TokenizerError(f"{path}: expected a JSON object, found {quote(spec)}")
    return spec


def _int(config: dict, key: str, path: Path, low: int = 0) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise TokenizerError(f"{path}: config.{key} must be an integer >= {low}, not {quote(value)}")
    return value


def _special_tokens(spec: dict, version: str, n_special: int, path: Path) -> list[str]:
    table = spec.get("special_tokens")
    if table is None:
        if VERSIONS.index(version) > VERSIONS.index("v7"):
            raise TokenizerError(f"{path}: special_tokens missing (required for version {version})")
        texts = list(DEFAULT_SPECIAL_TOKENS)
    else:
        if not isinstance(table, list):
            raise TokenizerError(f"{path}: special_tokens must be a list, not {quote(table)}")
        texts = []
        for k, t in enumerate(table):
            if not (isinstance(t, dict) and isinstance(t.get("token_str"), str) and t.get("rank") == k
                    and not isinstance(t.get("rank"), bool)):
                raise TokenizerError(f"{path}: special_tokens[{k}] = {quote(t)} needs rank {k} and a string "
                                     f"token_str")
            texts.append(t["token_str"])
    if len(set(texts)) != len(texts):
        dup = next(t for t in texts if texts.count(t) > 1)
        raise TokenizerError(f"{path}: special_tokens has {quote(dup)} twice")
    if len(texts) > n_special:
        raise TokenizerError(f"{path}: {len(texts)} special tokens but config.default_num_special_tokens is "
                             f"{n_special}")
    filler = [f"<SPECIAL_{k}>" for k in range(len(texts), n_special)]
    if set(filler) & set(texts):
        raise TokenizerError(f"{path}: special_tokens clashes with the filler names <SPECIAL_k>")
    return texts + filler


def _vocab_bytes(vocab, n_keep: int, path: Path) -> list[bytes]:
    """The byte strings of the first `n_keep` vocab entries, each checked: rank = position, valid base64, the first
    256 being the single bytes, no byte string twice."""
    if not isinstance(vocab, list):
        raise TokenizerError(f"{path}: vocab must be a list, not {quote(vocab)}")
    if len(vocab) < n_keep:
        raise TokenizerError(f"{path}: vocab has {len(vocab)} entries but config.default_vocab_size - "
                             f"default_num_special_tokens = {n_keep}")
    out: list[bytes] = []
    seen: dict[bytes, int] = {}
    for i, entry in enumerate(vocab[:n_keep]):
        rank = entry.get("rank") if isinstance(entry, dict) else None
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TokenizerError(f"{path}: vocab[{i}] = {quote(entry)} has no integer rank")
        if rank != i:
            what = "duplicates an earlier rank" if rank < i else "is out of order"
            raise TokenizerError(f"{path}: vocab[{i}].rank = {rank} {what} (ranks must be 0, 1, 2, ... in order)")
        try:
            data = base64.b64decode(entry.get("token_bytes"), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise TokenizerError(f"{path}: vocab[{i}].token_bytes = {quote(entry.get('token_bytes'))} is not "
                                 f"base64") from None
        if i < 256 and data != bytes([i]):
            raise TokenizerError(f"{path}: vocab[{i}].token_bytes must be the single byte {i} (ranks 0..255 are "
                                 f"the bytes), not {data!r}")
        if not data or data in seen:
            raise TokenizerError(f"{path}: vocab[{i}].token_bytes {data!r} is empty or repeats vocab[{seen.get(data)}]")
        seen[data] = i
        out.append(data)
    return out


def _pattern(config: dict, path: Path) -> PreTokenizer:
    pattern = config.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise TokenizerError(f"{path}: config.pattern must be a non-empty string, not {quote(pattern)}")
    try:
        pre = PreTokenizer(f"{path.name} pattern", [pattern])
    except (re.error, ValueError, IndexError, OverflowError) as e:
        raise TokenizerError(f"{path}: config.pattern {quote(pattern)} is not a valid regex ({e})") from None
    return pre


def load_tekken(path, tokenizer_cls):
    """A `tokenizer_cls` (minirs.Tokenizer) from a tekken.json, and the file's version string ("v3", "v7"...)."""
    path = Path(path)
    spec = _load_json(path)
    config = spec.get("config")
    if not isinstance(config, dict):
        raise TokenizerError(f"{path}: config must be an object, not {quote(config)}")
    version = config.get("version")
    if version not in VERSIONS:
        raise TokenizerError(f"{path}: config.version {quote(version)} is unknown (known: {', '.join(VERSIONS)})")
    n_special = _int(config, "default_num_special_tokens", path, 1)
    if n_special > MAX_SPECIAL:  # each is a "<SPECIAL_k>" string: a huge count is a huge allocation
        raise TokenizerError(f"{path}: config.default_num_special_tokens = {n_special} is more than {MAX_SPECIAL}")
    size = _int(config, "default_vocab_size", path, n_special + 256)
    specials = _special_tokens(spec, version, n_special, path)
    pre = _pattern(config, path)
    data = _vocab_bytes(spec.get("vocab"), size - n_special, path)

    byte_char = bytes_to_unicode()
    spelled = ["".join([byte_char[b] for b in d]) for d in data]
    vocab = {s: n_special + r for r, s in enumerate(spelled)}
    tokens = specials + spelled
    types = np.ones(size, np.int32)
    types[:n_special] = CONTROL
    index = {t: i for i, t in enumerate(specials)}
    for needed in ("<s>", "</s>"):
        if needed not in index:
            raise TokenizerError(f"{path}: special_tokens has no {needed}")
    tok = tokenizer_cls(TekkenBPE(vocab, pre), tokens, types, bos_id=index["<s>"], eos_ids=[index["</s>"]],
                        add_bos=True, unk_id=index.get("<unk>"), pad_id=index.get("<pad>"),
                        special_texts=dict(index), source=str(path))
    return tok, version
