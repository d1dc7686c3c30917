"""The llguidance tokenizer of a minirs.Tokenizer: every token's bytes, which ids are special, and the EOS ids.

llguidance builds its token trie from the bytes (Tokenizer.token_bytes_table). Control tokens (BOS, EOS,
<|im_start|>...) are marked special: no grammar text can produce them by spelling their bytes, and the ends of
sequence (Tokenizer.eos_ids, every one of them) are allowed exactly where the grammar accepts. Building it costs
~0.4 s for a 49k vocabulary, so each Tokenizer's is built once and kept beside it (a weak reference: it goes with
the tokenizer).
"""

import threading
import weakref

import llguidance

from minirs.errors import RequestError

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _Source:
    """What llguidance.TokenizerWrapper reads: tokens as bytes, special ids, EOS/BOS, and an encoder of text."""

    def __init__(self, tok):
        self.tok = tok
        self.tokens = tok.token_bytes_table
        self.eos_token_id = tok.eos_ids[0]
        self.bos_token_id = tok.bos_id
        self.special_token_ids = sorted(tok.control_ids)

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tok.encode(text, add_special_tokens=False)


def ll_tokenizer(tok) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of minirs Tokenizer `tok` (built on first use)."""
    with _LOCK:
        lt = _CACHE.get(tok)
        if lt is None:
            if not tok.eos_ids:
                raise RequestError(f"a grammar needs an end-of-sequence token, and {tok!r} has none")
            lt = _CACHE[tok] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Source(tok)),
                                                      eos_token=list(tok.eos_ids))
        return lt
