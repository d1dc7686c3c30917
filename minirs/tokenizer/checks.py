"""Checks on what reaches the tokenizer from outside: token ids from callers, and (in `gguf_fields`) the tokenizer
metadata of a model file, which is untrusted. A value of the wrong type or length becomes a TokenizerError that names
the key and the value here, instead of a ValueError or IndexError deep inside encoding, decoding or templating."""

import logging
from dataclasses import dataclass

import numpy as np

from minirs.errors import TokenizerError, quote
from minirs.formats.gguf import StringArray

log = logging.getLogger("minirs.tokenizer")


def token_id(value, vocab_size: int, what: str = "token id") -> int:
    """`value` as an int if it is one (a Python or NumPy integer, not a bool) inside the vocabulary."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TokenizerError(f"{what} {quote(value)} is a {type(value).__name__}, not an integer token id")
    if not 0 <= value < vocab_size:
        raise TokenizerError(f"{what} {int(value)} is out of range for a vocabulary of {vocab_size}")
    return int(value)


# ----- GGUF tokenizer metadata ------------------------------------------------------------------------------------

MODEL, PRE, TOKENS, TOKEN_TYPE = "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", \
    "tokenizer.ggml.token_type"
MERGES, SCORES, CHAT_TEMPLATE, ARCH = "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.chat_template", \
    "general.architecture"
SPECIAL_IDS = {"bos_id": "tokenizer.ggml.bos_token_id", "eos_id": "tokenizer.ggml.eos_token_id",
               "eot_id": "tokenizer.ggml.eot_token_id", "eom_id": "tokenizer.ggml.eom_token_id",
               "unk_id": "tokenizer.ggml.unknown_token_id", "pad_id": "tokenizer.ggml.padding_token_id"}
# fill-in-the-middle tokens: llama.cpp's keys, then the older ones some CodeLlama GGUFs carry
FIM_IDS = {"fim_pre_id": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
           "fim_suf_id": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
           "fim_mid_id": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id")}
FLAGS = {"add_bos": "tokenizer.ggml.add_bos_token", "add_eos": "tokenizer.ggml.add_eos_token",
         "add_space_prefix": "tokenizer.ggml.add_space_prefix"}
NORMAL = 1


@dataclass(frozen=True)
class GGUFTokenizer:
    """The tokenizer metadata of a GGUF file, every value of the type and length the tokenizer needs."""

    kind: str                       # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
    tokens: list[str]               # (n,) tokenizer.ggml.tokens
    types: np.ndarray               # (n,) int32 tokenizer.ggml.token_type; NORMAL where the file has none
    merges: list[str] | None        # tokenizer.ggml.merges, "a b" each
    scores: np.ndarray | None       # (n,) float64 tokenizer.ggml.scores
    pre: str                        # tokenizer.ggml.pre
    architecture: str               # general.architecture
    bos_id: int | None              # special ids: each in [0, n) or None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    fim_pre_id: int | None          # fill-in-the-middle: <PRE> / <|fim_prefix|> ...
    fim_suf_id: int | None
    fim_mid_id: int | None
    add_bos: bool | None            # None: the file does not say
    add_eos: bool | None
    add_space_prefix: bool | None
    chat_template: str | None


def gguf_fields(md: dict, where: str) -> GGUFTokenizer:
    """Check and gather the tokenizer metadata `md` of the file `where`.

    A value of the wrong type or length (a string where an id belongs, NaN, an array for a scalar, a token_type
    array shorter than the token list, integers as tokens or merges) is a TokenizerError naming the key and the value.
    A special token id of the right type but outside the vocabulary is dropped with a warning, as llama.cpp does
    ("bad special token"), so that no out-of-range id is ever used to index the vocabulary later."""
    kind, tokens = md.get(MODEL), md.get(TOKENS)
    if kind is None or tokens is None:
        raise TokenizerError(f"{where}: no {MODEL} / {TOKENS} in the metadata")
    kind = _text(md, MODEL, where)
    tokens = _strings(md, TOKENS, where)
    n = len(tokens)
    if n == 0:
        raise TokenizerError(f"{where}: {TOKENS} is empty")
    types = md.get(TOKEN_TYPE)
    types = np.full(n, NORMAL, np.int32) if types is None else _int_array(md, TOKEN_TYPE, where, n)
    scores = md.get(SCORES)
    if scores is not None:
        scores = _number_array(md, SCORES, where, n)
    merges = md.get(MERGES)
    if merges is not None:
        merges = _strings(md, MERGES, where)
    ids = {name: special_id(md.get(key), key, n, where) for name, key in SPECIAL_IDS.items()}
    for name, keys in FIM_IDS.items():
        key = next((k for k in keys if k in md), keys[0])
        ids[name] = special_id(md.get(key), key, n, where)
    flags = {name: _flag(md, key, where) for name, key in FLAGS.items()}
    return GGUFTokenizer(kind, tokens, types, merges, scores, pre=_text(md, PRE, where, "default"),
                         architecture=_text(md, ARCH, where, ""), chat_template=_text(md, CHAT_TEMPLATE, where),
                         **ids, **flags)


def special_id(value, key: str, vocab_size: int, where: str) -> int | None:
    """A special token id from a file: None if absent or outside the vocabulary (with a warning), an error if it is
    not an integer at all."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TokenizerError(f"{where}: {key} must be an integer token id, not {quote(value)} "
                             f"(a {type(value).__name__})")
    if not 0 <= value < vocab_size:
        log.warning("%s: %s = %d is outside the vocabulary of %d tokens; ignoring it", where, key, value, vocab_size)
        return None
    return int(value)


def _text(md: dict, key: str, where: str, default: str | None = None) -> str | None:
    value = md.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise TokenizerError(f"{where}: {key} must be a string, not {quote(value)} (a {type(value).__name__})")
    return value


def _flag(md: dict, key: str, where: str) -> bool | None:
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise TokenizerError(f"{where}: {key} must be a bool, not {quote(value)} (a {type(value).__name__})")


def _strings(md: dict, key: str, where: str) -> list[str]:
    value = md.get(key)
    if isinstance(value, StringArray):  # a GGUF reader's array decodes on every read: decode it once, here
        value = list(value)
    if not isinstance(value, (list, tuple)):
        raise TokenizerError(f"{where}: {key} must be an array of strings, not {quote(value)} "
                             f"(a {type(value).__name__})")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TokenizerError(f"{where}: {key}[{i}] must be a string, not {quote(item)} "
                                 f"(a {type(item).__name__})")
    return list(value)


def _numbers(md: dict, key: str, where: str, n: int, kinds: str, what: str) -> np.ndarray:
    """A 1-D array of `n` numbers whose NumPy kind is in `kinds` ("iu" integers, "iuf" also floats)."""
    value = md.get(key)
    if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            for v in value):
        value = np.asarray(value) if value else np.zeros(0, np.int64)
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in kinds:
        of = f" of {value.dtype}, shape {value.shape}" if isinstance(value, np.ndarray) else ""
        raise TokenizerError(f"{where}: {key} must be an array of {what}, not {quote(value)} "
                             f"(a {type(value).__name__}{of})")
    if len(value) != n:
        raise TokenizerError(f"{where}: {key} has {len(value)} entries but {TOKENS} has {n}")
    return value


def _int_array(md: dict, key: str, where: str, n: int) -> np.ndarray:
    value = _numbers(md, key, where, n, "iu", "integers")
    if n and (int(value.min()) < -2**31 or int(value.max()) >= 2**31):
        raise TokenizerError(f"{where}: {key} holds a value outside int32 ({int(value.min())}..{int(value.max())})")
    return value.astype(np.int32)


def _number_array(md: dict, key: str, where: str, n: int) -> np.ndarray:
    return _numbers(md, key, where, n, "iuf", "numbers").astype(np.float64)
