"""minirs.Tokenizer: text <-> token ids exactly as the model was trained, built from a GGUF file alone (or HF files).

    tok = Tokenizer.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = tok.encode("Hello world")                   # BOS first if the file says add_bos_token
    tok.decode(ids, skip_special_tokens=True)         # "Hello world"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    stream = tok.stream_decoder(); stream.feed(id)    # text pieces that never split a UTF-8 character

Two models cover GGUF files: byte-level BPE (`bpe.py`, tokenizer.ggml.model "gpt2") with the pre-tokenizer named by
tokenizer.ggml.pre (`pretokenize.py`), and SentencePiece BPE (`spm.py`, "llama"). Around either, this class
handles what is common: special tokens, BOS/EOS, decoding to bytes, and chat templates (`chat.py`). Mistral's own
files (tekken.json, tokenizer.model.v1-v7) load through `mistral.load_mistral_tokenizer`, which also sets
`.instruct`, the encoder of Mistral's [INST] chat format (`instruct.py`); a GGUF of a Mistral model gets one too.

Special tokens: user-defined tokens (type 4) are always matched whole in the text, as llama.cpp does; control
tokens (type 3, e.g. <|im_start|>) only with `parse_special=True`, so that text from a user cannot forge them.

Model files are untrusted: their tokenizer metadata is checked before use (`checks.py`: a value of the wrong type or
length is a TokenizerError naming the key; a special id outside the vocabulary is dropped with a warning, as in
llama.cpp), and chat templates render in a sandbox bounded in time and size (`sandbox.py`). Arguments are checked
too: encode takes a str, decode an iterable of int token ids inside the vocabulary.
"""

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from minirs.errors import TokenizerError, quote
from minirs.tokenizer import checks
from minirs.tokenizer.bpe import ByteLevelBPE, bytes_to_unicode
from minirs.tokenizer.pretokenize import IGNORE_MERGES, pretokenizer
from minirs.tokenizer.spm import SPACE, SentencePieceBPE, respell
from minirs.tokenizer.stream import StreamDecoder

__all__ = ["StreamDecoder", "Tokenizer"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Tokens that end a turn in common chat formats; llama.cpp stops on these too when the file marks them control.
END_OF_TURN_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                     "<EOT>", "<|end_of_text|>", "<end_of_utterance>", "</s>", "<eos>")


class Tokenizer:
    """Encode and decode text for one model; build it with `from_gguf` or `from_files`."""

    def __init__(self, model, tokens: list[str], token_types: np.ndarray, *, bos_id: int | None,
                 eos_ids: list[int], add_bos: bool, add_eos: bool = False, chat_template: str | None = None,
                 unk_id: int | None = None, pad_id: int | None = None, special_texts: dict[str, int] | None = None,
                 source: str = "", fim_ids: tuple[int, int, int] | None = None):
        self.model = model
        self.kind = "spm" if isinstance(model, SentencePieceBPE) else "bpe"
        self.tokens = tokens
        self.token_types = np.asarray(token_types, dtype=np.int32)
        self.bos_id = bos_id
        self.eos_ids = eos_ids
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.chat_template = chat_template
        self.unk_id = unk_id
        self.pad_id = pad_id
        self.source = source
        self.fim_ids = fim_ids  # (prefix, suffix, middle) token ids of a GGUF's fill-in-the-middle format, or None
        self.control_ids = {int(i) for i in np.flatnonzero(self.token_types == CONTROL)}
        if special_texts is None:
            special_texts = self._default_special_texts()
        self.special_texts = special_texts  # text -> id of every token matched whole in the input
        self._always = {t: i for t, i in special_texts.items() if int(self.token_types[i]) != CONTROL}
        self._splitters: dict[bool, re.Pattern | None] = {}
        self._bytes: list[bytes] | None = None
        # Mistral's instruct format (instruct.InstructEncoder: encode_chat, encode_fim) where the model has one
        self.instruct = None

    # ----- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, source, chat_template: str | None = None) -> "Tokenizer":
        """Build from a GGUF path or an already loaded `ModelFile`; `chat_template` overrides the file's.
        The metadata is checked first (`checks.gguf_fields`): a value of the wrong type is a TokenizerError."""
        from minirs.formats import ModelFile, load_model_file
        mf = source if isinstance(source, ModelFile) else load_model_file(source)
        where = str(mf.path)
        f = checks.gguf_fields(mf.metadata, where)
        tokens, types, n = f.tokens, f.types, len(f.tokens)
        if f.kind == "gpt2":
            if f.merges is None:
                raise TokenizerError(f"{where}: gpt2 tokenizer without tokenizer.ggml.merges")
            try:
                model = ByteLevelBPE.from_vocab(tokens, f.merges, pretokenizer(f.pre),
                                                ignore_merges=f.pre in IGNORE_MERGES)
            except TokenizerError as e:
                raise TokenizerError(f"{where}: {e}") from None
            add_bos_default = False
        elif f.kind == "llama":
            blocked = {i for i in range(n) if types[i] == CONTROL}
            model = SentencePieceBPE([respell(t) for t in tokens], f.scores, blocked, f.unk_id,
                                     f.add_space_prefix is not False,
                                     by_position=f.architecture in ("gemma", "gemma2", "gemma3"))
            add_bos_default = True
        else:
            raise TokenizerError(f"{where}: tokenizer.ggml.model {f.kind!r} is not supported (gpt2 and llama are)")
        eos_ids = [i for i in (f.eos_id, f.eot_id, f.eom_id) if i is not None]
        eos_ids += [i for i, t in enumerate(tokens) if t in END_OF_TURN_TEXTS and types[i] == CONTROL]
        from minirs.tokenizer.chat import resolve_template
        template = resolve_template(chat_template) if chat_template else f.chat_template
        fim = (f.fim_pre_id, f.fim_suf_id, f.fim_mid_id)
        tok = cls(model, tokens, types, bos_id=f.bos_id, eos_ids=list(dict.fromkeys(eos_ids)),
                  add_bos=add_bos_default if f.add_bos is None else f.add_bos, add_eos=bool(f.add_eos),
                  chat_template=template, unk_id=f.unk_id, pad_id=f.pad_id, source=where,
                  fim_ids=fim if None not in fim else None)
        # a Mistral model's vocabulary ([INST], [TOOL_CALLS]... as control tokens) offers its instruct format too
        from minirs.tokenizer.instruct import InstructEncoder, version_from_vocabulary
        version = version_from_vocabulary(tok)
        if version is not None:
            tok.instruct = InstructEncoder(tok, version)
        return tok

    @classmethod
    def from_files(cls, folder, chat_template: str | None = None) -> "Tokenizer":
        """Build from a HF model folder: tokenizer.json (+ tokenizer_config.json), or a SentencePiece
        tokenizer.model / tokenizer.model.v3 (Mistral)."""
        from minirs.tokenizer.hf import load_folder
        return load_folder(cls, Path(folder), chat_template)

    def _default_special_texts(self) -> dict[str, int]:
        """Control and user-defined tokens, matched whole in the input (as HF adds them from a GGUF)."""
        out = {}
        alphabet = set(bytes_to_unicode().values()) if self.kind == "bpe" else None
        for i, t in enumerate(self.tokens):
            ty = int(self.token_types[i])
            if not t or ty not in (CONTROL, USER_DEFINED):
                continue
            if self.kind == "bpe" and ty == CONTROL and not set(t) <= alphabet:
                continue  # llama.cpp mislabels some byte-level pieces as control; HF skips them too
            if self.kind == "spm" and respell(t) != t:
                continue  # runs of spaces: ordinary pieces once spelled with "▁"
            out.setdefault(t, i)
        return out

    # ----- properties -----------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eos_id(self) -> int | None:
        return self.eos_ids[0] if self.eos_ids else None

    @property
    def bos_token(self) -> str | None:
        return self.tokens[self.bos_id] if self.bos_id is not None else None

    @property
    def eos_token(self) -> str | None:
        return self.tokens[self.eos_id] if self.eos_id is not None else None

    def is_special(self, token_id: int) -> bool:
        """True for control tokens (BOS, EOS, <|im_start|>...), the ones `skip_special_tokens` drops."""
        return token_id in self.control_ids

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, source={self.source!r})"

    # ----- encoding -------------------------------------------------------------------------------------------------

    def _splitter(self, parse_special: bool) -> re.Pattern | None:
        if parse_special not in self._splitters:
            texts = self.special_texts if parse_special else self._always
            # longest first: Python's alternation is leftmost-first, so this makes it leftmost-longest
            alts = sorted(texts, key=lambda t: (-len(t), t))
            self._splitters[parse_special] = re.compile("|".join(map(re.escape, alts))) if alts else None
        return self._splitters[parse_special]

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; BOS (and EOS) per the file when `add_special_tokens`; `parse_special` matches
        control tokens written in the text (e.g. a rendered chat prompt) instead of spelling them out."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, not {quote(text)} (a {type(text).__name__})")
        ids: list[int] = []
        if add_special_tokens and self.add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        splitter = self._splitter(parse_special)
        pos = 0
        if splitter is not None:
            for m in splitter.finditer(text):
                if m.start() > pos:
                    ids.extend(self._encode_plain(text[pos:m.start()], pos == 0))
                ids.append(self.special_texts[m.group()])
                pos = m.end()
        if pos < len(text):
            ids.extend(self._encode_plain(text[pos:], pos == 0))
        if add_special_tokens and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        if self.kind == "spm":
            return self.model.encode(text, first)
        return self.model.encode(text)

    # ----- decoding -------------------------------------------------------------------------------------------------

    @property
    def token_bytes_table(self) -> list[bytes]:
        """Every token id's bytes (control and user-defined tokens as their text), built on first use."""
        if self._bytes is None:
            self._bytes = [self._token_bytes(i) for i in range(len(self.tokens))]
        return self._bytes

    def _token_bytes(self, i: int) -> bytes:
        t, ty = self.tokens[i], int(self.token_types[i])
        if ty in (CONTROL, USER_DEFINED, UNKNOWN):
            return t.encode("utf-8")
        if self.kind == "bpe":
            return self.model.token_bytes(t)
        if ty == BYTE or (len(t) == 6 and t.startswith("<0x") and t.endswith(">")):
            try:
                return bytes([int(t[3:5], 16)])
            except ValueError:
                pass
        return respell(t).replace(SPACE, " ").encode("utf-8")

    def check_id(self, token_id, what: str = "token id") -> int:
        """`token_id` as an int if it is one (a Python or NumPy integer, not a bool) inside the vocabulary; otherwise
        a TokenizerError that names it. A float such as 1.5 is refused rather than truncated to token 1."""
        return checks.token_id(token_id, len(self.tokens), what)

    def token_to_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for: what the engine appends to its output when it samples `token_id`."""
        return self.token_bytes_table[self.check_id(token_id)]

    @property
    def strips_leading_space(self) -> bool:
        """SentencePiece with add_space_prefix: decoding drops the space that encoding put in front."""
        return self.kind == "spm" and self.model.add_space_prefix

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of `ids` (an iterable of token ids, e.g. a list or an integer NumPy array); invalid UTF-8 (e.g.
        a cut multi-byte character) becomes U+FFFD."""
        if isinstance(ids, (str, bytes, dict)) or not isinstance(ids, Iterable):
            raise TokenizerError(f"decode() takes an iterable of token ids, not {quote(ids)} "
                                 f"(a {type(ids).__name__})")
        stream = self.stream_decoder(skip_special_tokens)
        return "".join([stream.feed(self.check_id(t, f"ids[{k}]")) for k, t in enumerate(ids)]) + stream.flush()

    def stream_decoder(self, skip_special_tokens: bool = False, keep: frozenset = frozenset()) -> StreamDecoder:
        """An incremental decoder: feed ids one at a time, get text that never splits a character; `keep`: special
        tokens it shows even when skipping the others."""
        return StreamDecoder(self, skip_special_tokens, keep)

    # ----- chat -----------------------------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tools=None,
                            chat_template: str | None = None, **kwargs) -> str:
        """Render `messages` with the model's chat template (or the given one / built-in name) in a sandbox."""
        from minirs.tokenizer.chat import render, resolve_template
        template = resolve_template(chat_template) if chat_template else self.chat_template
        if template is None:
            from minirs.errors import TemplateError
            raise TemplateError(f"{self.source or 'tokenizer'}: no chat template in the model; pass chat_template= "
                                f"(a Jinja template, a file, or a built-in name such as 'chatml')")
        return render(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                      bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)

    def encode_chat(self, messages: list[dict], tools=None) -> list[int]:
        """The prompt ids of a chat: the chat template rendered and tokenized as HF does (special-token text parsed,
        nothing added), or, for a model with no template but Mistral's instruct format (a Mistral folder), the
        instruct encoder's ids, as mistral_common encodes the request. A given template always wins."""
        if self.chat_template is None and self.instruct is not None:
            return self.instruct.encode_chat(messages, tools)
        text = self.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
        return self.encode(text, add_special_tokens=False, parse_special=True)

    # ----- fill in the middle ---------------------------------------------------------------------------------------

    @property
    def has_fim(self) -> bool:
        """True when the model has fill-in-the-middle tokens (Mistral's [PREFIX]/[SUFFIX], or a GGUF's FIM ids)."""
        return (self.instruct is not None and self.instruct.has_fim) or self.fim_ids is not None

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """The prompt ids that ask the model for the text between `prefix` and `suffix`, in the model's own order:
        Mistral's <s>[SUFFIX]suffix[PREFIX]prefix (mistral_common's encode_fim, Codestral), or a GGUF's
        [BOS] <PRE>prefix<SUF>suffix<MID> (llama.cpp's order, as Qwen2.5-Coder and CodeLlama were trained)."""
        if self.instruct is not None and self.instruct.has_fim:
            return self.instruct.encode_fim(prefix, suffix)
        if self.fim_ids is None:
            raise TokenizerError(f"{self.source or 'tokenizer'}: the model has no fill-in-the-middle tokens")
        pre, suf, mid = self.fim_ids
        bos = [self.bos_id] if self.add_bos and self.bos_id is not None else []
        return [*bos, pre, *self.encode(prefix, add_special_tokens=False), suf,
                *self.encode(suffix, add_special_tokens=False), mid]
