"""SentencePiece-style BPE (tokenizer.ggml.model = "llama"): scored merges over characters, with byte fallback.

The text is normalised as SentencePiece does: an optional space in front (add_space_prefix), then every " " becomes
"▁" (U+2581). Symbols start as single characters; a character missing from the vocabulary becomes its UTF-8 bytes
as the <0xNN> tokens (byte fallback), or <unk> where those do not exist. Adjacent symbols a, b may merge when a+b is
a token, and the merge of higher priority goes first. The priority is that of HF's BPE built from the same vocab
(`transformers.tokenization_utils_base.generate_merges`), so ids match what transformers gives for the GGUF:

    key(a, b) = (-score(a+b), -len(a), -len(b), id(a+b))          smaller merges first, leftmost on ties

For Gemma, transformers takes the token's position as its score (the file's scores do not follow the merge
order), so the key becomes (id(a+b), -len(a), ...); `by_position=True` selects that. Control tokens are never the
result of a merge: they are reached only through `parse_special`, so plain text cannot forge them.

Speed: a long text is cut before each "▁" that no token has inside it right after the preceding character. No
symbol can span such a cut, so merging the parts alone gives exactly the same tokens; the parts (mostly words)
are cached. A 1 MB text thus costs about what its distinct words cost.
"""

import re

import numpy as np

from minirs.tokenizer.bpe import merge_pairs

SPACE = "\u2581"


def respell(token: str) -> str:
    """Tokens of spaces only are stored as real spaces in Gemma files; SentencePiece spells them with "▁"."""
    return SPACE * len(token) if " " in token and not token.strip() else token


class SentencePieceBPE:
    """Merges scored SentencePiece pieces; `encode(text, first)` gives the ids of text without special tokens."""

    def __init__(self, pieces: list[str], scores: np.ndarray | None, blocked: set[int], unk_id: int | None,
                 add_space_prefix: bool, by_position: bool = False, merges: list[tuple[str, str]] | None = None,
                 collapse_spaces: bool = False, cache_size: int = 200_000):
        self.pieces = pieces
        # a tokenizer.json gives the merges themselves: their order is the priority
        self.merge_ranks = None if merges is None else {m: r for r, m in reversed(list(enumerate(merges)))}
        self.collapse_spaces = collapse_spaces  # SentencePiece's remove_extra_whitespaces
        self.vocab = {p: i for i, p in enumerate(pieces)}  # the last of duplicate pieces wins, as in HF
        self.add_space_prefix = add_space_prefix
        self.unk_id = unk_id
        if by_position or scores is None:
            self.priority = list(range(len(pieces)))
        else:
            self.priority = [-float(s) for s in scores]
        self.blocked = blocked
        self.byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
        self.byte_fallback = all(p in self.vocab for p in self.byte_pieces)
        # characters that some token has right before a "▁": the text cannot be cut there
        glued = set()
        for p in pieces:
            j = p.find(SPACE, 1)
            while j > 0:
                glued.add(p[j - 1])
                j = p.find(SPACE, j + 1)
        self.cut = re.compile(f"(?<![{re.escape(''.join(sorted(glued)))}])(?={SPACE})" if glued else f"(?={SPACE})")
        self.cache: dict[str, list[int]] = {}
        self.cache_size = cache_size

    def _rank(self, a: str, b: str):
        i = self.vocab.get(a + b)
        if i is None or i in self.blocked:
            return None
        if self.merge_ranks is not None:
            return self.merge_ranks.get((a, b))
        return (self.priority[i], -len(a), -len(b), i)

    def _symbols(self, chunk: str) -> list[str]:
        vocab, out = self.vocab, []
        for c in chunk:
            if c in vocab and vocab[c] not in self.blocked:
                out.append(c)
            elif self.byte_fallback:
                out.extend(self.byte_pieces[b] for b in c.encode("utf-8", errors="surrogatepass"))
            elif not out or out[-1] is not None:
                out.append(None)  # unknown; consecutive unknowns fuse into one <unk>
        return out

    def encode_chunk(self, chunk: str) -> list[int]:
        ids = self.cache.get(chunk)
        if ids is None:
            symbols = self._symbols(chunk)
            ids = []
            start = 0
            for k in range(len(symbols) + 1):  # merge the runs between unknowns
                if k == len(symbols) or symbols[k] is None:
                    ids.extend(self.vocab[s] for s in merge_pairs(symbols[start:k], self._rank))
                    if k < len(symbols):
                        ids.append(self.unk_id if self.unk_id is not None else 0)
                    start = k + 1
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[chunk] = ids
        return ids

    def encode(self, text: str, first: bool = True) -> list[int]:
        """The ids of a text that holds no special tokens; `first` says it starts the whole input."""
        if self.collapse_spaces:
            text = re.sub(" +", " ", text).strip(" ")
        if self.add_space_prefix and first:
            text = " " + text
        text = text.replace(" ", SPACE)
        out: list[int] = []
        for chunk in self.cut.split(text):
            if chunk:
                out.extend(self.encode_chunk(chunk))
        return out
