"""Golden reference files for minirs, made by Hugging Face transformers from the same GGUF files minirs reads.

transformers is the independent reference: it builds its own tokenizer from the GGUF metadata, renders the chat
template with its own Jinja setup, and dequantizes the GGUF weights to float32 for its own PyTorch model. The tests
compare minirs against the files this script writes; they never need torch or transformers themselves.

What it writes, next to this file:
  corpus.json                 the tokenizer torture-test strings (hand-written plus seeded generated ones)
  tokenizer_smollm2.json      ids / decode for every corpus string (SmolLM2, GPT-2 byte-level BPE, pre="smollm")
  tokenizer_gemma3.json       ids / decode for every corpus string (Gemma 3, SentencePiece BPE with byte fallback)
  chat_smollm2.json           SmolLM2's own chat template (from the GGUF) rendered by apply_chat_template
  logits_smollm2.npz          prompt ids, full last-position logits, 24 greedy tokens per prompt
  logits_gemma3.npz           prompt ids, top-256 + a seeded 8192-id subset of last-position logits, logsumexp,
                              24 greedy tokens per prompt

Two places where the reference is adjusted on purpose, both recorded in the output files:
  * SmolLM2: transformers' GGUF loader does not know the "smollm" pre-tokenizer and falls back to the plain GPT-2
    split. SmolLM2's own tokenizer.json (and llama.cpp's "smollm" pre-type) first isolates every \\p{N} character,
    then applies the GPT-2 split. We set that pre-tokenizer (Digits(individual_digits=True) + ByteLevel) and keep the
    unpatched ids as "ids_hf_unpatched" wherever they differ.
  * Gemma 3: transformers builds a BPE tokenizer, deriving merges from the vocabulary order. As a cross-check we also
    build a real SentencePiece BPE model from the same GGUF pieces, scores and types and record its ids as
    "ids_sentencepiece" wherever it disagrees with transformers.

Run (after `pip install -e .[ref]` or in a venv with torch, transformers, tokenizers, sentencepiece, accelerate):
    python tests/golden/make_goldens.py                   # everything, about 15 minutes on 2 CPU cores
    python tests/golden/make_goldens.py --only tokenizer  # one part: corpus, tokenizer, chat or logits
Model paths default to ~/.cache/minirs/models/...; override with MINIRS_SMOLLM2 / MINIRS_GEMMA3.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent
MODEL_DIR = Path.home() / ".cache" / "minirs" / "models"
SMOLLM2_PATH = Path(os.environ.get("MINIRS_SMOLLM2", MODEL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"))
GEMMA3_PATH = Path(os.environ.get("MINIRS_GEMMA3", MODEL_DIR / "gemma-3-270m-q4_k_m.gguf"))

SEED = 1234
N_GREEDY = 24
GEMMA3_TOP_K = 256
GEMMA3_SUBSET = 8192
# Strings for which we also record ids with add_special_tokens=True (BOS for Gemma 3; nothing for SmolLM2).
WITH_SPECIAL = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm here",
    "",
    " ",
    "\n",
    "1234567890",
    "你好，世界！",
    "<bos>Hello<eos>",
    "<|im_start|>user",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
]


# --------------------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------------------

ENGLISH = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    "HELLO WORLD IN ALL CAPS",
    "hElLo WoRlD mIxEd CaSe",
    "A sentence with a trailing space ",
    " A sentence with a leading space",
    "Mr. Smith went to Washington D.C. on Jan. 5th at 3 p.m.",
    "The U.S.A. and the U.K. signed the treaty (finally).",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "Once upon a time, in a small village, there lived an old clockmaker.",
    "Transformers use self-attention; RNNs use recurrence.",
    "e.g., i.e., etc., vs., a.k.a.",
    "co-operate re-enter well-being state-of-the-art",
    "Don't stop believing.",
]

CONTRACTIONS = [
    "I'm here",
    "don't",
    "we'll they've she'd it's",
    "the dog's bone",
    "I'LL BE BACK",
    "YOU'RE, WE'VE, HE'D, IT'S",
    "'s 't 're 've 'm 'll 'd",
    "rock 'n' roll",
    "''quoted'' and 'single' and \"double\"",
    "can't won't shan't y'all ma'am o'clock",
    "It’s a curly apostrophe — isn’t it?",
]

CODE = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)",
    "class Foo(Base):\n\tdef __init__(self, *args, **kwargs):\n\t\tsuper().__init__(*args, **kwargs)\n",
    'for i in range(10):\n    print(f"{i:03d}: {i ** 2}")',
    "lambda x: x if x else None  # comment",
    "async def main() -> None:\n    await asyncio.sleep(0.1)",
    '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, %s!\\n", "world");\n    return 0;\n}\n',
    "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`);",
    "function foo() {\n  return new Promise((resolve) => setTimeout(resolve, 100));\n}",
    "if (x === null || x !== undefined) { throw new Error('bad'); }",
    'fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!("{:?}", v);\n}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    '#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo "$f"; done',
    "x+=1;y-=2;z*=3;w/=4;a%=5;b**=2;c//=3;d>>=1;e<<=2;f&=g|h^~i",
    "    indented with four spaces\n        and eight\n\t\tand two tabs",
    '<div class="box"><p>Hello</p></div>',
    "<table><tr><td>cell</td></tr></table>",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\n\n\n",
    " \t\n ",
    "\r\n",
    "\r\n\r\n",
    "a  b   c    d",
    "  leading two",
    "trailing two  ",
    "   both   ",
    "tab\tseparated\tvalues",
    "line one\nline two\n\nline four",
    "ends with newline\n",
    "\n starts with newline",
    " " * 40,
    "\n" * 40,
    "\t" * 40,
    "x" + " " * 33 + "y",
    "non\u00a0breaking\u00a0space",
    "ideographic\u3000space",
    "thin\u2009space and em\u2003space",
    "zero\u200bwidth\u200bspace",
    "  \n  \n  ",
    "\t \t \t",
    "a\n\nb\n\n\nc\n\n\n\nd",
    "word\n\n",
    "1 2  3   4",
    "  123",
]

SCRIPTS = [
    "你好，世界！",
    "我们今天去北京大学学习人工智能。",
    "中华人民共和国成立于1949年10月1日。",
    "繁體中文測試：臺灣、香港。",
    "こんにちは世界",
    "日本語のテキストです。カタカナとひらがなと漢字。",
    "東京スカイツリーは634メートルです。",
    "ｱｲｳｴｵ ﾊﾝｶｸ カタカナ",
    "안녕하세요 세계",
    "한국어 문장입니다. 대한민국 서울특별시.",
    "Привет, мир!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Γειά σου Κόσμε",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "مرحبا بالعالم",
    "اللغة العربية جميلة جدا، أليس كذلك؟",
    "שלום עולם",
    "עברית נכתבת מימין לשמאל.",
    "नमस्ते दुनिया",
    "हिन्दी भारत की राजभाषा है।",
    "สวัสดีชาวโลก",
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "হ্যালো বিশ্ব",
    "வணக்கம் உலகம்",
    "გამარჯობა მსოფლიო",
    "Բարեւ աշխարհ",
    "Xin chào thế giới, Tiếng Việt có nhiều dấu.",
    "İstanbul'da ıslak ılık iğde ağacı",
    "Straße, Größe, Übermäßig",
    "Zażółć gęślą jaźń",
    "naïve café résumé coöperate",
    "Ελληνικά and English mixed with русский and 中文",
    "ሰላም ዓለም",
    "ᐊᐃᖓᐃ Inuktitut",
]

EMOJI = [
    "😀",
    "Hello 👋 world 🌍!",
    "👍🏽",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "👩‍👩‍👧‍👦",
    "👨‍💻 writes code",
    "🏳️‍🌈",
    "🇺🇸🇯🇵🇩🇪",
    "1️⃣ 2️⃣ #️⃣",
    "❤️ ❤ ♥",
    "🤷‍♀️🤦🏻‍♂️",
    "🧑🏿‍🤝‍🧑🏻",
    "🔥🔥🔥🔥🔥🔥🔥🔥",
    "I love 🍕 and 🍣!",
]

COMBINING = [
    "e\u0301",
    "caf\u0065\u0301 vs caf\u00e9",
    "n\u0303 o\u0308 a\u030a",
    (
        "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034d"
        "A\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305"
        "\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333"
    ),
    "\u1100\u1161\u11a8",
    "\u0915\u094d\u0937",
    "a\u0300\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308",
]

NUMBERS = [
    "1234567890",
    "3.14159",
    "1,000,000",
    "0",
    "00000",
    "-42",
    "+1 (555) 123-4567",
    "1e-10 6.022e23 0x1F 0b1010 0o777",
    "2024-01-15T12:34:56Z",
    "$19.99 €5,00 £3 ¥1000",
    "50% off, 3/4 cup, 1:2 ratio",
    "v1.2.3-beta.4+build.567",
    "½ ¾ ² ³ ①②③",
    "١٢٣٤٥ ۱۲۳ १२३ ๑๒๓",
    "１２３４５",
    "Ⅻ Ⅳ ⅸ",
    "In 2023, 45.7% of 1,234 people earned $56,789.01.",
]

WEB = [
    "https://www.example.com/path/to/page?query=1&lang=en#section",
    "http://localhost:8080/api/v1/users/42",
    "ftp://files.example.org/pub/README.txt",
    "user.name+tag@example.co.uk",
    "Contact: support@minirs.dev or admin@127.0.0.1",
    "192.168.1.1 and ::1 and 2001:db8::ff00:42:8329",
    "C:\\Users\\Name\\Documents\\file.txt",
    "/usr/local/lib/python3.11/site-packages/",
    "550e8400-e29b-41d4-a716-446655440000",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "@username #hashtag $TICKER",
]

SPECIAL_TEXT = [
    "<|im_start|>user",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_start",
    "<|IM_START|>",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<start_of_turn>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>",
    "<bos>Hello<eos>",
    "<pad><unk><mask>",
    "<s> </s> [INST] [/INST]",
    "<start_of_image><end_of_image>",
    "<unused0> <unused42>",
    "[multimodal]",
    "<|im_end|> not at start",
    "< |im_start| >",
    "<repo_name>minirs<file_sep>README.md",
]

PUNCTUATION = [
    "!!!???...",
    "....",
    "…",
    "—–-",
    "«»„“”‘’",
    "--->",
    "===",
    "~~~",
    "```",
    "(((nested)))",
    "[{<>}]",
    "@#$%^&*()_+-=",
    "!?!?!?!?",
    "a.b,c;d:e!f?g",
    '"""docstring"""',
    "//////////",
    "||||||||",
]

STRUCTURED = [
    "# Title\n\n## Subtitle\n\n- item one\n- item two\n  - nested\n\n1. first\n2. second\n",
    "**bold** _italic_ `code` [link](https://example.com) ![img](a.png)",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "> quoted text\n>> doubly quoted",
    "```python\nprint('hi')\n```",
    '{"name": "minirs", "version": "0.1.0", "tags": ["llm", "gguf"], "nested": {"a": 1, "b": [true, false, null]}}',
    '[{"id":1,"v":-1.5e3},{"id":2,"v":"\\u00e9\\n"}]',
    "key: value\nlist:\n  - a\n  - b\n",
    'name,age,city\nAlice,30,"New York, NY"\nBob,25,Paris',
    "$$\\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2}$$",
    '<?xml version="1.0" encoding="UTF-8"?><root attr=\'1\'/>',
]

ODD_UNICODE = [
    "\x00",
    "a\x00b",
    "\x01\x02\x03\x7f",
    "\ufeffBOM at start",
    "\u200d",
    "\u200e\u200fdirection marks",
    "\ue000\uf8ff private use",
    "\ufffd replacement",
    "𝕏 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝",
    "𝄞 musical",
    "𓀀𓀁𓀂 hieroglyphs",
    "\U0010fffd",
    "ﬁ ﬂ ﬀ ligatures",
    "Ω Å K (compatibility forms)",
]

REPEATS = [
    "a" * 100,
    "ab" * 50,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbb",
    "the the the the the the the the",
    "0" * 64,
    "=" * 80,
    "-" * 80,
    "ha" * 30,
]

# Pools the generated strings draw from.
WORD_LIST = (
    "the of and to in is was for on that with as by at from it this be are or an have not which but had they "
    "you were his her their one all we can there been has when who will more no if out so said what up its about "
    "into than them only other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much your way well down "
    "model token layer tensor weight matrix vector kernel cache prompt logits softmax attention embedding"
)
WORDS = WORD_LIST.split()
CHAR_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "你好世界中文字符测试日本語ひらがなカタカナ한국어",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГД",
    "αβγδεζηθικλμνξοπρστυφχψω",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "אבגדהוזחטיכלמנסעפצקרשת",
    "कखगघङचछजझञटठडढणतथदधनपफबभमयरलवशषसह",
    "กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮ",
    "😀😁😂🤣😃😄👍🏽👩‍💻🎉🔥✨🌍",
    "\u0301\u0308\u0303\u0327",
    "éèêëàâäôöûüçñß",
]


def generated_strings(rng: random.Random) -> list[str]:
    """Seeded random strings: character soup across scripts, word salad with odd spacing, numbers of many lengths."""
    out = []
    for _ in range(50):
        n = rng.randint(1, 60)
        out.append("".join(rng.choice(rng.choice(CHAR_POOLS)) for _ in range(n)))
    for _ in range(20):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 15))]
        seps = [rng.choice([" ", " ", " ", "  ", "\n", "\t", ", ", ". ", "   "]) for _ in words]
        text = "".join(w + s for w, s in zip(words, seps))
        out.append(text.capitalize() if rng.random() < 0.5 else text)
    for length in range(1, 31):
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        out.append(digits if length % 3 else " " + digits)
    for _ in range(5):
        out.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(2, 6))))
    return out


def long_strings(rng: random.Random, pieces: list[str]) -> list[str]:
    """A few strings of 5,000+ characters: a mixed-text collage, a long code file, a long multilingual paragraph."""
    collage = []
    while sum(map(len, collage)) < 6000:
        collage.append(rng.choice(pieces))
    code = "\n\n".join(CODE[:6] * 20)
    multilingual = " ".join(SCRIPTS * 8)
    return ["".join(collage), code, multilingual]


def build_corpus() -> list[str]:
    """The full corpus: hand-written groups, then seeded generated strings, then three long strings."""
    rng = random.Random(SEED)
    groups = [ENGLISH, CONTRACTIONS, CODE, WHITESPACE, SCRIPTS, EMOJI, COMBINING, NUMBERS, WEB, SPECIAL_TEXT]
    groups += [PUNCTUATION, STRUCTURED, ODD_UNICODE, REPEATS]
    corpus = [text for group in groups for text in group] + generated_strings(rng)
    corpus += long_strings(rng, corpus)
    return list(dict.fromkeys(corpus))  # drop repeats, keep first-seen order


# --------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------


def load_hf_tokenizer(path: Path):
    """transformers' tokenizer built from the GGUF metadata, exactly as AutoTokenizer makes it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def set_smollm_pretokenizer(tok) -> None:
    """Give the SmolLM2 tokenizer the pre-tokenizer its GGUF names ("smollm"): every \\p{N} on its own, then GPT-2.

    This is what SmolLM2's tokenizer.json says and what llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM does; transformers'
    GGUF loader has no entry for "smollm" and keeps the plain GPT-2 ByteLevel split.
    """
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def gguf_tokenizer_fields(path: Path) -> dict:
    """Raw tokenizer arrays of a GGUF file, read with the gguf package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields
    return {
        "tokens": fields["tokenizer.ggml.tokens"].contents(),
        "scores": fields["tokenizer.ggml.scores"].contents(),
        "token_type": fields["tokenizer.ggml.token_type"].contents(),
        "unk_id": fields["tokenizer.ggml.unknown_token_id"].contents(),
    }


def sentencepiece_from_gguf(path: Path):
    """A real SentencePiece BPE processor built from a llama-style GGUF vocabulary (pieces, scores, token types).

    Normalizer: identity, no dummy prefix, spaces escaped to U+2581 (what tokenizer.ggml.add_space_prefix=False
    means). User-defined pieces made only of spaces are stored with real spaces in the GGUF; SentencePiece expects
    them spelled with U+2581. The GGUF marks <unk> as a control token; SentencePiece needs it typed UNKNOWN.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    fields = gguf_tokenizer_fields(path)
    model = spm_pb2.ModelProto()
    for index, (piece, score, token_type) in enumerate(zip(fields["tokens"], fields["scores"], fields["token_type"])):
        if " " in piece and not piece.strip(" "):
            piece = "\u2581" * len(piece)
        entry = model.pieces.add()
        entry.piece = piece
        entry.score = float(score)
        entry.type = 2 if index == fields["unk_id"] else int(token_type)  # 2 is UNKNOWN
    model.trainer_spec.model_type = spm_pb2.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(fields["tokens"])
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id = fields["unk_id"]
    model.trainer_spec.bos_id = -1
    model.trainer_spec.eos_id = -1
    model.trainer_spec.pad_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model.SerializeToString())
    return processor


def added_token_texts(tok) -> tuple[set[str], set[str]]:
    """(special, all) contents of the added tokens that transformers matches in text before the model runs."""
    special, everything = set(), set()
    for added in tok.added_tokens_decoder.values():
        everything.add(added.content)
        if added.special:
            special.add(added.content)
    return special, everything


def tokenizer_cases(tok, corpus: list[str], alt_ids=None, alt_name: str = "") -> list[dict]:
    """One record per corpus string. alt_ids(text) -> ids, stored under alt_name only where it disagrees."""
    special, everything = added_token_texts(tok)
    cases = []
    for text in corpus:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        case = {
            "text": text,
            "ids": ids,
            "ids_with_special": tok(text, add_special_tokens=True)["input_ids"] if text in WITH_SPECIAL else None,
            "decoded": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "has_special_text": any(s in text for s in special),
            "has_added_text": any(s in text for s in everything),
        }
        if alt_ids is not None:
            other = alt_ids(text)
            if other != ids:
                case[alt_name] = other
        cases.append(case)
    return cases


def encode_parsing_specials(sp, specials: dict[str, int], text: str) -> list[int]:
    """SentencePiece ids with control-token text matched first (longest first), like parse_special=True."""
    if not specials:
        return sp.encode(text)
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    ids, start = [], 0
    for match in pattern.finditer(text):
        ids += sp.encode(text[start : match.start()]) + [specials[match.group()]]
        start = match.end()
    return ids + sp.encode(text[start:])


def write_json(name: str, payload) -> None:
    """Pretty header, one line per case (or per corpus string), so diffs stay readable and the file small."""
    path = GOLDEN_DIR / name
    if isinstance(payload, list):
        text = "[\n" + ",\n".join(json.dumps(item, ensure_ascii=False) for item in payload) + "\n]\n"
    else:
        cases = payload["cases"]
        head = json.dumps({k: v for k, v in payload.items() if k != "cases"}, ensure_ascii=False, indent=1)
        body = ",\n".join("  " + json.dumps(case, ensure_ascii=False) for case in cases)
        text = head[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n"
    path.write_text(text, encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # the hand-assembled JSON must parse
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


def make_tokenizer_goldens(corpus: list[str]) -> None:
    import transformers

    # SmolLM2
    tok = load_hf_tokenizer(SMOLLM2_PATH)
    unpatched = load_hf_tokenizer(SMOLLM2_PATH)
    set_smollm_pretokenizer(tok)
    cases = tokenizer_cases(
        tok, corpus, lambda t: unpatched(t, add_special_tokens=False)["input_ids"], "ids_hf_unpatched"
    )
    n_diff = sum("ids_hf_unpatched" in c for c in cases)
    write_json(
        "tokenizer_smollm2.json",
        {
            "tokenizer": f"transformers AutoTokenizer from {SMOLLM2_PATH.name} (GPT-2 byte-level BPE, pre='smollm'), "
            "pre-tokenizer set to Digits(individual_digits=True) + ByteLevel(add_prefix_space=False)",
            "transformers_version": transformers.__version__,
            "tokenizers_version": __import__("tokenizers").__version__,
            "notes": [
                (
                    "ids: tok(text, add_special_tokens=False). Added tokens (all 17 are control tokens, e.g. "
                    "<|im_start|>) are always matched in the text, so compare strings with has_special_text=true "
                    "against parse_special=True."
                ),
                (
                    "ids_with_special: add_special_tokens=True, only for a dozen strings (null elsewhere); SmolLM2's "
                    "GGUF says add_bos_token=False, so these equal ids."
                ),
                "decoded: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).",
                (
                    f"ids_hf_unpatched: present on {n_diff} cases, the ids of the tokenizer exactly as transformers "
                    "loads it from the GGUF (plain GPT-2 split, no digit isolation), where they differ from ids."
                ),
            ],
            "bos_id": tok.bos_token_id,
            "eos_id": tok.eos_token_id,
            "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
            "cases": cases,
        },
    )

    # Gemma 3
    tok = load_hf_tokenizer(GEMMA3_PATH)
    sp = sentencepiece_from_gguf(GEMMA3_PATH)
    specials = {a.content: i for i, a in tok.added_tokens_decoder.items() if a.special}
    cases = tokenizer_cases(tok, corpus, lambda t: encode_parsing_specials(sp, specials, t), "ids_sentencepiece")
    n_diff = sum("ids_sentencepiece" in c for c in cases)
    write_json(
        "tokenizer_gemma3.json",
        {
            "tokenizer": f"transformers AutoTokenizer from {GEMMA3_PATH.name} (GemmaTokenizer: BPE with byte "
            "fallback, merges derived from vocabulary order, spaces normalized to U+2581, no prefix space)",
            "transformers_version": transformers.__version__,
            "tokenizers_version": __import__("tokenizers").__version__,
            "sentencepiece_version": __import__("sentencepiece").__version__,
            "notes": [
                "ids: tok(text, add_special_tokens=False).",
                (
                    "Added tokens: the GGUF's 6249 control tokens (<bos>, <start_of_turn>, <unused0>, ...) are "
                    "special; its user-defined tokens ('\\n' runs, '\\t' runs, HTML tags like <table>, [multimodal], "
                    "<start_of_image>) are non-special added tokens. transformers matches both kinds in any text. "
                    "has_special_text: the text holds a special (control) token's text; has_added_text: any added "
                    "token's text, user-defined included."
                ),
                (
                    "ids_with_special: add_special_tokens=True (prepends <bos>=2; GGUF add_bos_token=True), only for "
                    "a dozen strings (null elsewhere)."
                ),
                "decoded: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).",
                (
                    f"ids_sentencepiece: present on {n_diff} cases, the ids of a SentencePiece BPE model built from "
                    "the same GGUF pieces/scores/types (identity normalizer, no dummy prefix, whitespace escaped, "
                    "byte fallback; control-token text split out first, as parse_special=True would) where they "
                    "differ from ids. Known cause: runs of more than 31 spaces. SentencePiece matches the "
                    "user-defined space-run tokens greedily, longest first (so does llama.cpp's special-token "
                    "partition); transformers reaches them through BPE merges and splits such runs differently."
                ),
            ],
            "bos_id": tok.bos_token_id,
            "eos_id": tok.eos_token_id,
            "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
            "cases": cases,
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Chat template
# --------------------------------------------------------------------------------------------------------------

CHAT_CASES = [
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "What is 2+2?"}], True),
    (
        [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Germany?"},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
        ],
        False,
    ),
    ([{"role": "user", "content": ""}], True),
    ([{"role": "system", "content": ""}, {"role": "user", "content": ""}], False),
    ([{"role": "user", "content": "Translate: 你好，世界！ 👋🏽 — naïve café\nline two\n\n  indented"}], True),
    ([{"role": "user", "content": "Write <|im_start|> literally."}], True),
]


def make_chat_goldens() -> None:
    import transformers

    tok = load_hf_tokenizer(SMOLLM2_PATH)
    set_smollm_pretokenizer(tok)
    cases = []
    for messages, add_generation_prompt in CHAT_CASES:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        cases.append(
            {
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "rendered": rendered,
                "ids": tok(rendered, add_special_tokens=False)["input_ids"],
            }
        )
    write_json(
        "chat_smollm2.json",
        {
            "template_source": f"tokenizer.chat_template of {SMOLLM2_PATH.name}",
            "chat_template": tok.chat_template,
            "renderer": "transformers apply_chat_template(messages, tokenize=False, add_generation_prompt=...)",
            "transformers_version": transformers.__version__,
            "notes": ["ids: the rendered string tokenized with special-token text parsed, no BOS added."],
            "cases": cases,
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Logits and greedy decoding
# --------------------------------------------------------------------------------------------------------------

# Longer than Gemma 3's 512-token sliding window (about 740 tokens with either tokenizer), so the window matters.
LONG_PROMPT = (
    "The following is a long report about the history of computing. " + " ".join(ENGLISH[2:14]) + " "
) * 4 + "In summary, the most important idea in the history of computing is"

SMOLLM2_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    LONG_PROMPT,
]
GEMMA3_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    LONG_PROMPT,
]


def load_hf_model(path: Path):
    """The fp32 transformers model with weights dequantized from the GGUF, eager attention, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def forward_logits(model, ids: list[int], last_only: bool = False):
    """Logits for one sequence from a full forward pass without a cache: (seq, vocab) float32, or (1, vocab)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1 if last_only else 0)
    return out.logits[0].float()


def greedy_tokens(model, ids: list[int], n_new: int) -> tuple[list[int], list[float]]:
    """n_new argmax tokens, each from a full forward pass over prompt + tokens so far (no cache, no EOS stop,
    no repetition penalty or any other logits processor). Also returns top1 - top2 logit margin per step."""
    import torch

    seq, margins = list(ids), []
    for _ in range(n_new):
        last = forward_logits(model, seq, last_only=True)[-1]
        top2 = torch.topk(last, 2)
        seq.append(int(top2.indices[0]))
        margins.append(float(top2.values[0] - top2.values[1]))
    return seq[len(ids) :], margins


def model_meta(model, tok, name: str) -> dict:
    import torch
    import transformers

    return {
        "model": name,
        "reference": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=..., dtype=float32, "
        "attn_implementation='eager'); weights dequantized from the GGUF to float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "config": json.loads(model.config.to_json_string()),
        "tokenizer_add_bos_token": bool(getattr(tok, "add_bos_token", False)),
        "prompt_ids": "tok(prompt) with the tokenizer's default special-token behaviour; feed these ids as they are",
        "greedy": f"{N_GREEDY} argmax tokens from full forward passes (no KV cache), not stopped at EOS, "
        "no repetition penalty/temperature/top-k; greedy_margin_i is top1 - top2 logit at step i. A different "
        "but correct implementation may pick the other token where the margin is tiny, so compare greedy tokens "
        "up to the first step whose margin is below your logit tolerance",
    }


def save_npz(name: str, arrays: dict) -> None:
    path = GOLDEN_DIR / name
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


def run_prompts(model, tok, prompts: list[str]) -> list[dict]:
    """Prompt ids, last-position logits (float32, full vocab) and greedy tokens for every prompt."""
    results = []
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        logits = forward_logits(model, ids)
        greedy, margins = greedy_tokens(model, ids, N_GREEDY)
        results.append(
            {
                "prompt": prompt,
                "ids": np.array(ids, dtype=np.int32),
                "last_logits": logits[-1].numpy().astype(np.float32),
                "argmax_all": logits.argmax(dim=-1).numpy().astype(np.int32),
                "greedy": np.array(greedy, dtype=np.int32),
                "greedy_margin": np.array(margins, dtype=np.float32),
                "greedy_text": tok.decode(greedy, skip_special_tokens=False),
            }
        )
        print(f"  {len(ids):4d} prompt tokens -> {tok.decode(greedy)!r}")
    return results


def make_logits_goldens() -> None:
    import torch

    torch.manual_seed(SEED)

    # SmolLM2: full last-position rows.
    tok = load_hf_tokenizer(SMOLLM2_PATH)
    set_smollm_pretokenizer(tok)
    model = load_hf_model(SMOLLM2_PATH)
    print(f"{SMOLLM2_PATH.name}:")
    results = run_prompts(model, tok, SMOLLM2_PROMPTS)
    meta = model_meta(model, tok, SMOLLM2_PATH.name)
    meta["layout"] = (
        "n_prompts; per prompt i: prompt_i (str), ids_i (int32), last_logits_i (float32, full vocab), argmax_all_i "
        "(argmax at every prompt position), greedy_i (int32), greedy_margin_i (float32), greedy_text_i (str)"
    )
    arrays = {"meta": np.array(json.dumps(meta)), "n_prompts": np.array(len(results))}
    for i, r in enumerate(results):
        arrays.update({f"{key}_{i}": np.array(value) for key, value in r.items()})
    save_npz("logits_smollm2.npz", arrays)
    del model

    # Gemma 3: top-k, a fixed random subset and the logsumexp of each last-position row.
    tok = load_hf_tokenizer(GEMMA3_PATH)
    model = load_hf_model(GEMMA3_PATH)
    print(f"{GEMMA3_PATH.name}:")
    results = run_prompts(model, tok, GEMMA3_PROMPTS)
    vocab = model.config.vocab_size
    subset_ids = np.sort(np.random.default_rng(SEED).choice(vocab, size=GEMMA3_SUBSET, replace=False)).astype(np.int32)
    meta = model_meta(model, tok, GEMMA3_PATH.name)
    meta["details"] = {
        "attn_implementation": model.config._attn_implementation,
        "layer_types": model.config.layer_types,
        "sliding_window": model.config.sliding_window,
        "sliding_window_rule": "query i sees key j iff 0 <= i - j < sliding_window (sliding layers only)",
        "rope_theta_full": model.config.rope_parameters["full_attention"]["rope_theta"],
        "rope_theta_sliding": model.config.rope_parameters["sliding_attention"]["rope_theta"],
        "embed_scale": float(model.model.embed_tokens.embed_scale),
        "embed_scale_note": "float32(sqrt(hidden_size)), multiplied onto the token embeddings",
        "attention_scaling": model.config.query_pre_attn_scalar**-0.5,
        "norm_note": "GGUF norm weights already hold 1 + w; transformers subtracts 1 on load and its RMSNorm "
        "multiplies by (1 + w), so the effective scale is the GGUF value",
        "final_logit_softcapping": model.config.final_logit_softcapping,
        "attn_logit_softcapping": model.config.attn_logit_softcapping,
        "hidden_activation": model.config.hidden_activation,
    }
    meta["layout"] = (
        "n_prompts; subset_ids (int32, sorted, shared by all prompts); per prompt i: prompt_i, ids_i, topk_ids_i and "
        "topk_logits_i (top 256, descending), subset_logits_i (logits at subset_ids), logsumexp_i (of the full "
        "last-position row, computed in float64), argmax_all_i, greedy_i, greedy_margin_i, greedy_text_i"
    )
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "n_prompts": np.array(len(results)),
        "subset_ids": subset_ids,
    }
    for i, r in enumerate(results):
        row = torch.from_numpy(r.pop("last_logits"))
        top = torch.topk(row, GEMMA3_TOP_K)
        r["topk_ids"] = top.indices.numpy().astype(np.int32)
        r["topk_logits"] = top.values.numpy().astype(np.float32)
        r["subset_logits"] = row[torch.from_numpy(subset_ids).long()].numpy().astype(np.float32)
        r["logsumexp"] = np.float32(torch.logsumexp(row.double(), dim=0).item())
        arrays.update({f"{key}_{i}": np.array(value) for key, value in r.items()})
    save_npz("logits_gemma3.npz", arrays)


# --------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        type=str,
        default="corpus,tokenizer,chat,logits",
        help="comma-separated parts to make: corpus, tokenizer, chat, logits (default: all)",
    )
    args = parser.parse_args()
    parts = set(args.only.split(","))
    for path in (SMOLLM2_PATH, GEMMA3_PATH):
        if not path.exists():
            sys.exit(f"model file not found: {path} (set MINIRS_SMOLLM2 / MINIRS_GEMMA3)")

    corpus = build_corpus()
    if "corpus" in parts:
        write_json("corpus.json", corpus)
    if "tokenizer" in parts:
        make_tokenizer_goldens(corpus)
    if "chat" in parts:
        make_chat_goldens()
    if "logits" in parts:
        make_logits_goldens()


if __name__ == "__main__":
    main()
