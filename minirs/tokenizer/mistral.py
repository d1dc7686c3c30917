"""Mistral's own tokenizer files, from the file alone: tekken.json, or SentencePiece tokenizer.model.v1/v2/v3/v7.

    tok = load_mistral_tokenizer("Mistral-7B-Instruct-v0.3/")        # a folder, or the file itself
    tok.encode("Hello")                                               # a normal minirs.Tokenizer (BOS first)
    tok.instruct.encode_chat([{"role": "user", "content": "Hi"}])     # [1, 3, 24046, 4] = <s>[INST]▁Hi[/INST]
    tok.instruct.encode_fim(prefix="def f(", suffix="\\n    return x") # Codestral's fill-in-the-middle

The version is in the file name for SentencePiece (tokenizer.model.v3; v7m1 is v7 with an image config; a bare
tokenizer.model is v1, as mistral_common reads it) and in config.version for Tekken. In a folder holding several
files, the newest version wins (Tekken on a tie). The text tokenizers are the existing ones: SentencePiece through
`hf.py`'s ModelProto reader and `SentencePieceBPE`, Tekken through `tekken.py`; the instruct format of the version
is `instruct.py`'s `InstructEncoder`, set as the tokenizer's `.instruct`.
"""

import re
from pathlib import Path

from minirs.errors import TokenizerError, quote
from minirs.tokenizer.instruct import VERSIONS as INSTRUCT_VERSIONS
from minirs.tokenizer.instruct import InstructEncoder
from minirs.tokenizer.tekken import VERSIONS

SPM_NAME = re.compile(r"\.model(?:\.(v\d+)(m\d+)?)?$")


def tokenizer_version(path: Path) -> str | None:
    """The version a file name gives: "v3" for tokenizer.model.v3, "v1" for a bare .model; None for a tekken
    file (its version is inside) or a name that is not a Mistral tokenizer's."""
    m = SPM_NAME.search(path.name)
    if m is None:
        return None
    return m.group(1) or "v1"


def is_tekken(path: Path) -> bool:
    return "tekken" in path.name and path.suffix == ".json"


def find_tokenizer_file(folder: Path) -> Path:
    """The tokenizer file of a Mistral folder: tekken.json or tokenizer.model.vN, the newest version first."""
    found = []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        if is_tekken(p):
            found.append((_tekken_rank(p), 1, p))
        elif (v := tokenizer_version(p)) is not None:
            found.append((VERSIONS.index(v) if v in VERSIONS else -1, 0, p))
    if not found:
        raise TokenizerError(f"{folder}: no Mistral tokenizer file (tekken.json or tokenizer.model.v1/v2/v3/v7)")
    return max(found, key=lambda f: (f[0], f[1]))[2]


def _tekken_rank(path: Path) -> int:
    """A tekken file's version rank, read cheaply from the head of the file (config comes first in Mistral's)."""
    head = path.open("rb").read(4096).decode("utf-8", "replace")
    m = re.search(r'"version"\s*:\s*"(v\d+)"', head)
    return VERSIONS.index(m.group(1)) if m and m.group(1) in VERSIONS else len(VERSIONS)


def load_mistral_tokenizer(path):
    """A `minirs.Tokenizer` with `.instruct` (an `InstructEncoder`) from a Mistral tokenizer file or a folder holding
    one. A file of an unknown version or a broken file is a TokenizerError naming the file and the field."""
    from minirs.tokenizer import Tokenizer
    path = Path(path)
    if path.is_dir():
        path = find_tokenizer_file(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file")
    if is_tekken(path) or path.suffix == ".json":
        from minirs.tokenizer.tekken import load_tekken
        tok, version = load_tekken(path, Tokenizer)
    else:
        version = tokenizer_version(path)
        if version is None:
            raise TokenizerError(f"{path}: not a Mistral tokenizer file name (tekken.json or tokenizer.model.vN)")
        if version not in VERSIONS:
            raise TokenizerError(f"{path}: tokenizer version {quote(version)} (from the file name) is unknown "
                                 f"(known: {', '.join(VERSIONS)})")
        from minirs.tokenizer.hf import from_sentencepiece
        model, pieces, types, bos, eos, unk, _ = from_sentencepiece(path)
        tok = Tokenizer(model, pieces, types, bos_id=bos, eos_ids=[eos] if eos is not None else [], add_bos=True,
                        unk_id=unk, source=str(path))
    # versions after v7 (tool calls as [TOOL_CALLS]name[ARGS]..., thinking) load for plain text; their chat
    # format is not encoded here, so they get no instruct encoder
    tok.instruct = InstructEncoder(tok, version) if version in INSTRUCT_VERSIONS else None
    return tok
