"""A byte-level tokenizer for the tiny random models (vocabulary 256): id 0 is the end of sequence (a control
token), id b (1..255) is the byte b. Enough for llguidance's tokenizer adapter (minirs.grammar.vocab) and the
engine's text handling, so grammar tests run on a model that costs nothing."""

import codecs


class ByteTokenizer:
    eos_ids = [0]
    bos_id = None
    control_ids = {0}
    tokens = ["</s>"] + [chr(b) if 32 <= b < 127 else f"<0x{b:02X}>" for b in range(1, 256)]
    token_bytes_table = [b"</s>"] + [bytes([b]) for b in range(1, 256)]

    def encode(self, text, add_special_tokens=False, parse_special=False):
        return list(text.encode("utf-8"))

    def stream_decoder(self, skip_special_tokens=False):
        table = self.token_bytes_table

        class D:
            dec = codecs.getincrementaldecoder("utf-8")("replace")

            def feed(self, t):
                return "" if t == 0 else self.dec.decode(table[t])

            def flush(self):
                return self.dec.decode(b"", final=True)
        return D()
