"""Pre-tokenizers: split text into the pieces that byte-level BPE merges within, named as in tokenizer.ggml.pre.

The split patterns are written exactly as llama.cpp (`llama-vocab.cpp`) and HF tokenizers spell them, with
`\\p{L}`, `\\p{N}`, `\\s` and friends. Python's `re` has no `\\p{...}`, so `unicode_regex` rewrites each into an
explicit character class built once from `unicodedata` (letters = categories Lu Ll Lt Lm Lo, numbers = Nd Nl No,
whitespace = the Unicode White_Space property, which is what Oniguruma and llama.cpp mean by `\\s`; Python's own
`\\s` differs on U+001C..U+001F). No third-party `regex` package is needed.

A pre-tokenizer is a list of patterns applied in turn, as llama.cpp does: each pattern cuts every piece from the
previous step into its matches and the text between them (HF's `Split(behavior="isolated")`).

    split = pretokenizer("llama-bpe")
    split("Hello world's 12345")   # ['Hello', ' world', "'s", ' ', '123', '45']
"""

import re
import sys
import unicodedata
from functools import cache

# Unicode White_Space (PropList.txt): what `\s` means in Oniguruma (HF tokenizers) and in llama.cpp's unicode.cpp.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# As in tokenizer.json: `(?i:...)` folds case the Unicode way, so "'ſ" (U+017F, long s) is a contraction too, as it
# is for HF tokenizers (llama.cpp's [sS] spelling differs there).
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Mistral's Tekken (tekken.json's config.pattern; llama.cpp's "tekken"): a cased word is one piece, digits go singly
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# llama.cpp's deepseek-llm split, its classes written with escapes (the letter class is the cased letters)
DEEPSEEK_LLM = [
    r"[\r\n]",
    (r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
     r"\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
     r"\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
     r"\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
     r"\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
     r"\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
     r"\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
     r"\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
     r"\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
     r"\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"),
    r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+$",
    r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    r"\p{N}+",
]

# tokenizer.ggml.pre -> the patterns llama.cpp applies, in order.
PRETOKENIZERS: dict[str, list[str]] = {
    "default": [GPT2],
    "gpt-2": [GPT2],
    "gpt2": [GPT2],
    "llama-bpe": [LLAMA3],
    "llama3": [LLAMA3],
    "llama-v3": [LLAMA3],
    "dbrx": [LLAMA3],
    "smaug-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "deepseek-r1-qwen": [QWEN2],
    "starcoder": [r"\p{N}", GPT2],
    "refact": [r"\p{N}", GPT2],
    "command-r": [r"\p{N}", GPT2],
    "smollm": [r"\p{N}", GPT2],
    "codeshell": [r"\p{N}", GPT2],
    "exaone": [r"\p{N}", GPT2],
    "deepseek-llm": DEEPSEEK_LLM,
    "tekken": [TEKKEN],
}


@cache
def category_class(prefix: str) -> str:
    """The body of a `[...]` class matching every code point whose general category starts with `prefix`."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp)).startswith(prefix)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"\\U{start:08x}" if start == cp - 1 else f"\\U{start:08x}-\\U{cp - 1:08x}")
            start = None
    return "".join(ranges)


def _class_body(escape: str) -> str:
    if escape == r"\s":
        return WHITESPACE
    return category_class(escape[3:-1])  # \p{L} -> "L"


@cache
def unicode_regex(pattern: str) -> re.Pattern:
    """Compile a pattern written with `\\p{X}`, `\\s`, `\\S` (Unicode semantics) into a Python regex."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        m = re.match(r"\\p\{\w+\}|\\[sS]", pattern[i:])
        if m:
            token = m.group()
            if token == r"\S":
                out.append(f"[^{WHITESPACE}]")
            else:
                body = _class_body(token)
                out.append(body if in_class else f"[{body}]")
            i += len(token)
            continue
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class and pattern[i - 1:i] != "[" and pattern[i - 2:i] != "[^":
            in_class = False
        out.append(c)
        i += 1
    return re.compile("".join(out))


def split_isolated(pieces: list[str], regex: re.Pattern) -> list[str]:
    """Cut each piece into the regex's matches and the (non-empty) text between them."""
    out = []
    for piece in pieces:
        pos = 0
        for m in regex.finditer(piece):
            if m.start() > pos:
                out.append(piece[pos:m.start()])
            if m.end() > m.start():
                out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


class PreTokenizer:
    """A named sequence of split patterns; calling it on a text returns the list of pieces."""

    def __init__(self, name: str, patterns: list[str]):
        self.name = name
        self.patterns = patterns
        self.regexes = [unicode_regex(p) for p in patterns]

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        for regex in self.regexes:
            pieces = split_isolated(pieces, regex)
        return pieces

    def __repr__(self) -> str:
        return f"PreTokenizer({self.name!r})"


# pre-tokenizer types for which llama.cpp (like Llama 3's tokenizer.json) takes a piece that is a token whole
IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3", "tekken"}


def pretokenizer(name: str) -> PreTokenizer:
    """The pre-tokenizer llama.cpp uses for a tokenizer.ggml.pre value; unknown names fall back to GPT-2's."""
    return PreTokenizer(name, PRETOKENIZERS.get(name, [GPT2]))
