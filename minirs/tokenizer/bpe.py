"""Byte-level BPE (GPT-2 style, tokenizer.ggml.model = "gpt2") and the pair-merge loop it shares with SentencePiece.

BPE repeatedly merges the adjacent pair of symbols with the best (lowest) rank, the leftmost one on ties, until no
adjacent pair has a rank. `merge_pairs` does this with a heap over adjacent pairs and a doubly linked list of
symbols, so a word of n symbols costs O(n log n) rather than the O(n^2) of rescanning after every merge. Stale heap
entries (one of the pair has since merged) are recognised by comparing the stored strings and skipped.

Byte-level BPE first maps each UTF-8 byte to a printable character (`bytes_to_unicode`, the table GPT-2 made so
that the vocabulary is plain text), splits the text with the model's pre-tokenizer and merges within each piece.
Pieces repeat a lot in real text, so their ids are cached.
"""

from collections.abc import Callable
from heapq import heapify, heappop, heappush

from minirs.errors import TokenizerError
from minirs.tokenizer.pretokenize import PreTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the rest to U+0100+."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merge_pairs(symbols: list[str], rank: Callable[[str, str], object]) -> list[str]:
    """Apply BPE merges to `symbols`: `rank(a, b)` is the merge's priority (lower first) or None if a+b is no merge."""
    n = len(symbols)
    if n < 2:
        return symbols
    sym = list(symbols)  # sym[i] is None once merged into its left neighbour
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    for i in range(n - 1):
        r = rank(sym[i], sym[i + 1])
        if r is not None:
            heap.append((r, i, sym[i], sym[i + 1]))
    heapify(heap)
    while heap:
        _, i, a, b = heappop(heap)
        j = nxt[i]
        if sym[i] != a or j < 0 or sym[j] != b:
            continue  # stale: a side of this pair has merged with something else since it was pushed
        merged = a + b
        sym[i], sym[j] = merged, None
        k = nxt[j]
        nxt[i] = k
        if k >= 0:
            prev[k] = i
            r = rank(merged, sym[k])
            if r is not None:
                heappush(heap, (r, i, merged, sym[k]))
        p = prev[i]
        if p >= 0:
            r = rank(sym[p], merged)
            if r is not None:
                heappush(heap, (r, p, sym[p], merged))
    return [s for s in sym if s is not None]


class ByteLevelBPE:
    """GPT-2 byte-level BPE over a vocabulary written in the `bytes_to_unicode` alphabet, with ranked merges."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pretokenizer: PreTokenizer,
                 ignore_merges: bool = False, cache_size: int = 200_000):
        self.vocab = vocab
        self.ignore_merges = ignore_merges  # Llama 3: a piece that is itself a token is taken whole
        self.pretokenizer = pretokenizer
        self.ranks: dict[tuple[str, str], int] = {}
        for r, (a, b) in enumerate(merges):
            if a + b in vocab:
                self.ranks.setdefault((a, b), r)
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.cache: dict[str, list[int]] = {}
        self.cache_size = cache_size

    @classmethod
    def from_vocab(cls, tokens: list[str], merges: list[str], pretokenizer: PreTokenizer,
                   ignore_merges: bool = False) -> "ByteLevelBPE":
        """From a GGUF's tokens and "a b" merges. A token written outside the byte alphabet (an added token such
        as "<think>" stored as plain text) is looked up by its byte spelling, as transformers does."""
        byte_char = bytes_to_unicode()
        alphabet = set(byte_char.values())
        vocab = {}
        for i, t in enumerate(tokens):
            vocab[t if set(t) <= alphabet else "".join(byte_char[b] for b in t.encode("utf-8"))] = i
        pairs = []
        for m in merges:
            parts = m.split(" ")
            if len(parts) != 2:
                raise TokenizerError(f"merge {m!r} is not two space-separated pieces")
            pairs.append((parts[0], parts[1]))
        return cls(vocab, pairs, pretokenizer, ignore_merges)

    def _rank(self, a: str, b: str):
        return self.ranks.get((a, b))

    def encode_word(self, word: str) -> list[int]:
        """The ids of one pre-tokenized piece."""
        ids = self.cache.get(word)
        if ids is None:
            byte_char = self.byte_char
            symbols = [byte_char[b] for b in word.encode("utf-8", errors="surrogatepass")]
            vocab = self.vocab
            if self.ignore_merges and "".join(symbols) in vocab:
                return [vocab["".join(symbols)]]
            # a byte that never occurs in valid UTF-8 may lack a token; HF's BPE drops it too
            ids = [vocab[s] for s in merge_pairs(symbols, self._rank) if s in vocab]
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of a text that holds no special tokens."""
        out: list[int] = []
        for word in self.pretokenizer(text):
            out.extend(self.encode_word(word))
        return out

    def token_bytes(self, token: str) -> bytes:
        """A vocabulary entry back to the bytes it stands for (characters outside the alphabet as UTF-8)."""
        char_byte = self.char_byte
        if all(c in char_byte for c in token):
            return bytes(char_byte[c] for c in token)
        return token.encode("utf-8")
