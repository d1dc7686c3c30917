"""Incremental decoding for streaming: token ids in, text out, never a broken UTF-8 character or a lost space.

A token can end in the middle of a multi-byte character (byte-level BPE splits them freely; SentencePiece's byte
fallback spells them one <0xNN> token per byte), so decoding token by token and joining would print replacement
characters. The decoder keeps the bytes of a character that is not complete yet and emits it once it is. Decoding
whole pieces through a per-token `decode` would also lose SentencePiece's word-initial spaces; here every token's
bytes are kept, and only the one prefix space the encoder itself added is dropped, once, at the very start.

    stream = tok.stream_decoder()
    for id in generated: print(stream.feed(id), end="")
    print(stream.flush())
"""

import codecs


class StreamDecoder:
    """Feed token ids one at a time; each call returns the text that became complete."""

    def __init__(self, tokenizer, skip_special_tokens: bool = False, keep: frozenset = frozenset()):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.keep = keep  # special tokens shown all the same (the tool-call markers a parser looks for)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False

    def feed(self, token_id: int) -> str:
        tok = self.tokenizer
        token_id = tok.check_id(token_id)
        if self.skip_special_tokens and tok.is_special(token_id) and token_id not in self.keep:
            return ""
        data = tok.token_bytes_table[token_id]
        if not self._started:
            self._started = True
            if tok.strips_leading_space and data.startswith(b" ") and not tok.is_special(token_id):
                data = data[1:]
        return self._utf8.decode(data)

    def flush(self) -> str:
        """The end of the stream: an incomplete character left over becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
