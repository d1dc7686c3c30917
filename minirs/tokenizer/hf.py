"""Tokenizers from a Hugging Face model folder: tokenizer.json, or a SentencePiece tokenizer.model(.v3).

tokenizer.json (the `tokenizers` library's format) is read for the two BPE shapes GGUF files also use:
  * byte-level BPE: a ByteLevel pre-tokenizer, alone or after Split / Digits steps, each turned into one of our
    `\\p{...}` patterns (`pretokenize.py` compiles any such pattern, so unknown Split regexes work too);
  * SentencePiece converted to BPE (Llama 2, Mistral, Gemma): byte_fallback, "▁" for spaces from a Metaspace
    pre-tokenizer or Replace/Prepend normalizers; merges taken in the file's order.
Added tokens become control tokens (special) or user-defined tokens (the rest), as in GGUF.

tokenizer.model is SentencePiece's ModelProto, a protocol buffer. Only a few fields are needed (pieces with score
and type, the trainer's model type and special ids, the normalizer's flags), so `read_sentencepiece_model`
decodes them directly; the sentencepiece package is not required. Unigram models are refused.

tokenizer_config.json supplies the chat template, bos/eos tokens and add_bos_token; generation_config.json the
extra end-of-turn ids.
"""

import json
import struct
from pathlib import Path

import numpy as np

from minirs.errors import TokenizerError, quote
from minirs.tokenizer.bpe import ByteLevelBPE
from minirs.tokenizer.checks import special_id
from minirs.tokenizer.pretokenize import GPT2, PreTokenizer
from minirs.tokenizer.spm import SPACE, SentencePieceBPE

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def load_folder(cls, folder: Path, chat_template: str | None):
    """Build a `Tokenizer` (class `cls`) from the files in `folder`."""
    if not folder.is_dir():
        raise TokenizerError(f"{folder}: not a folder")
    config = _json_object(folder / "tokenizer_config.json")
    if (folder / "tokenizer.json").exists():
        parts = _from_tokenizer_json(folder / "tokenizer.json", config)
    else:
        models = sorted(folder.glob("tokenizer.model*"), key=lambda p: len(p.name), reverse=True)
        if not models:
            raise TokenizerError(f"{folder}: no tokenizer.json, tokenizer.model or tokenizer.model.v3")
        parts = from_sentencepiece(models[0])
    model, tokens, types, bos_id, eos_id, unk_id, add_bos = parts
    n = len(tokens)
    where = folder / "tokenizer_config.json"
    bos_id, eos_id, unk_id = (special_id(i, key, n, str(folder)) for i, key in
                              ((bos_id, "bos id"), (eos_id, "eos id"), (unk_id, "unk id")))

    index = {t: i for i, t in enumerate(tokens)}
    bos_id = index.get(_token_text(config.get("bos_token"), "bos_token", where), bos_id)
    eos_id = index.get(_token_text(config.get("eos_token"), "eos_token", where), eos_id)
    eos_ids = [eos_id] if eos_id is not None else []
    gen_path = folder / "generation_config.json"
    extra = _json_object(gen_path).get("eos_token_id")
    for i, value in enumerate(extra if isinstance(extra, list) else [extra]):
        key = f"eos_token_id[{i}]" if isinstance(extra, list) else "eos_token_id"
        eos_ids.append(special_id(value, key, n, str(gen_path)))
    eos_ids = [i for i in eos_ids if i is not None]
    from minirs.tokenizer import END_OF_TURN_TEXTS
    eos_ids += [i for i, t in enumerate(tokens) if t in END_OF_TURN_TEXTS and types[i] == CONTROL]
    from minirs.tokenizer.chat import resolve_template
    template = resolve_template(chat_template) if chat_template else _config_template(config, where)
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    add_bos = _config_flag(config, "add_bos_token", where, add_bos)
    return cls(model, tokens, types, bos_id=bos_id, eos_ids=list(dict.fromkeys(eos_ids)),
               add_bos=add_bos, add_eos=_config_flag(config, "add_eos_token", where, False), chat_template=template,
               unk_id=unk_id, source=str(folder))


def _read_json(path: Path):
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None


def _json_object(path: Path) -> dict:
    """A JSON file that must hold an object; {} if the file does not exist."""
    value = _read_json(path)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: expected a JSON object, found {quote(value)}")
    return value


def _token_text(value, key: str, where: Path) -> str | None:
    """A special token of tokenizer_config.json: a string, or an AddedToken object {"content": ...}."""
    text = value.get("content") if isinstance(value, dict) else value
    if text is not None and not isinstance(text, str):
        raise TokenizerError(f"{where}: {key} must be a string or {{\"content\": string}}, not {quote(value)}")
    return text


def _config_flag(config: dict, key: str, where: Path, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return bool(default)
    if not isinstance(value, bool):
        raise TokenizerError(f"{where}: {key} must be true or false, not {quote(value)}")
    return value


def _config_template(config: dict, where: Path) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of {"name", "template"} of which "default"."""
    value = config.get("chat_template")
    if isinstance(value, list):
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
                   for t in value):
            raise TokenizerError(f"{where}: chat_template list entries must be {{\"name\": string, \"template\": "
                                 f"string}}, not {quote(value)}")
        value = next((t["template"] for t in value if t["name"] == "default"), None)
    if value is not None and not isinstance(value, str):
        raise TokenizerError(f"{where}: chat_template must be a string, not {quote(value)}")
    return value


# ----- tokenizer.json --------------------------------------------------------------------------------------------

def _steps(node) -> list[dict]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [s for sub in node.get("pretokenizers", node.get("normalizers", [])) for s in _steps(sub)]
    return [node]


def _split_patterns(pre_tokenizer, where: str) -> list[str]:
    """The HF pre-tokenizer steps of a byte-level BPE as our list of isolated-split patterns."""
    patterns = []
    for step in _steps(pre_tokenizer):
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise TokenizerError(f"{where}: ByteLevel add_prefix_space=true is not supported")
            if step.get("use_regex", True):
                patterns.append(GPT2)
        elif kind == "Digits":
            patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "Split":
            if step.get("behavior", "").lower() != "isolated" or step.get("invert"):
                raise TokenizerError(f"{where}: Split behavior {step.get('behavior')!r} is not supported")
            pat = step["pattern"]
            patterns.append(pat["Regex"] if "Regex" in pat else _escape(pat["String"]))
        else:
            raise TokenizerError(f"{where}: pre-tokenizer {kind!r} is not supported for byte-level BPE")
    return patterns


def _escape(s: str) -> str:
    return "".join("\\" + c if c in r"\.^$*+?{}[]|()" else c for c in s)


def _from_tokenizer_json(path: Path, config: dict):
    try:
        return _tokenizer_json_parts(path, _json_object(path))
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # any other shape than the tokenizers library's
        raise TokenizerError(f"{path}: malformed tokenizer.json ({type(e).__name__}: {quote(str(e))})") from None


def _check_vocab(path: Path, vocab, added) -> int:
    """The vocabulary size of model.vocab plus added_tokens, whose ids must be ints that (almost) fill 0..size-1."""
    if not isinstance(vocab, dict) or not isinstance(added, list):
        raise TokenizerError(f"{path}: model.vocab must be an object and added_tokens a list")
    for t, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{path}: model.vocab[{quote(t)}] = {quote(i)} is not a token id")
    for k, a in enumerate(added):
        if not (isinstance(a, dict) and isinstance(a.get("content"), str) and isinstance(a.get("id"), int)
                and not isinstance(a.get("id"), bool) and a["id"] >= 0):
            raise TokenizerError(f"{path}: added_tokens[{k}] = {quote(a)} needs an int id and a string content")
    count = len(vocab) + len(added)
    size = max([*vocab.values(), *(a["id"] for a in added)], default=-1) + 1
    if size == 0:
        raise TokenizerError(f"{path}: the vocabulary is empty")
    if size > 2 * count + 1024:  # a few holes are normal; a huge id would allocate a huge token list
        raise TokenizerError(f"{path}: token id {size - 1} is far past the {count} tokens the file defines")
    return size


def _tokenizer_json_parts(path: Path, spec: dict):
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerError(f"{path}: model type {model.get('type')!r} is not supported (BPE is)")
    vocab: dict[str, int] = model["vocab"]
    added = spec.get("added_tokens", [])
    size = _check_vocab(path, vocab, added)
    tokens = [""] * size
    types = np.full(size, NORMAL, np.int32)
    for t, i in vocab.items():
        tokens[i] = t
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if not all(len(m) == 2 and all(isinstance(p, str) for p in m) for m in merges):
        raise TokenizerError(f"{path}: model.merges must be \"a b\" strings or [a, b] pairs of strings")
    unk_id = vocab.get(model.get("unk_token")) if model.get("unk_token") else None

    if model.get("byte_fallback"):
        for t, i in vocab.items():
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
        steps = _steps(spec.get("normalizer")) + _steps(spec.get("pre_tokenizer"))
        prefix = any(s.get("type") == "Prepend" for s in steps) or any(
            s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") != "never"
            and s.get("add_prefix_space", True) for s in steps)
        pieces = list(tokens)
        blocked = {i for i in range(size) if types[i] == CONTROL}
        bpe = SentencePieceBPE(pieces, None, blocked, unk_id, prefix, merges=merges)
    else:
        if not any(s.get("type") == "ByteLevel" for s in _steps(spec.get("pre_tokenizer"))):
            raise TokenizerError(f"{path}: BPE without byte_fallback needs a ByteLevel pre-tokenizer")
        pre = PreTokenizer(f"{path.name} pre_tokenizer", _split_patterns(spec.get("pre_tokenizer"), str(path)))
        bpe = ByteLevelBPE(dict(vocab), merges, pre, ignore_merges=bool(model.get("ignore_merges")))
    bos_id = _post_processor_bos(spec.get("post_processor"), tokens)
    return bpe, tokens, types, bos_id, None, unk_id, bos_id is not None


def _post_processor_bos(post, tokens) -> int | None:
    """The special token a TemplateProcessing puts first, if any (how tokenizer.json says "add BOS")."""
    for step in ([post] if post and post.get("type") != "Sequence" else (post or {}).get("processors", [])):
        single = step.get("single") if step else None
        if single and isinstance(single, list) and "SpecialToken" in single[0]:
            name = single[0]["SpecialToken"]["id"]
            return tokens.index(name) if name in tokens else None
    return None


# ----- tokenizer.model (SentencePiece ModelProto) -----------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message; value is int, bytes or a 4/8-byte blob."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise TokenizerError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def read_sentencepiece_model(data: bytes) -> dict:
    """The fields of a SentencePiece ModelProto we use: pieces, scores, types, model_type, ids and normalizer flags."""
    out = {"pieces": [], "scores": [], "types": [], "model_type": 1, "byte_fallback": False, "unk_id": 0,
           "bos_id": 1, "eos_id": 2, "add_dummy_prefix": True, "remove_extra_whitespaces": True,
           "normalizer": "nmt_nfkc"}
    for field, _, value in _fields(data):
        if field == 1:  # SentencePiece { string piece = 1; float score = 2; Type type = 3; }
            piece, score, kind = "", 0.0, NORMAL
            for f, _, v in _fields(value):
                if f == 1:
                    piece = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    kind = v
            out["pieces"].append(piece)
            out["scores"].append(score)
            out["types"].append(kind)
        elif field == 2:  # TrainerSpec
            names = {3: "model_type", 35: "byte_fallback", 40: "unk_id", 41: "bos_id", 42: "eos_id"}
            for f, _, v in _fields(value):
                if f in names:
                    out[names[f]] = v if f != 35 else bool(v)
        elif field == 3:  # NormalizerSpec
            for f, _, v in _fields(value):
                if f == 1:
                    out["normalizer"] = v.decode("utf-8")
                elif f == 3:
                    out["add_dummy_prefix"] = bool(v)
                elif f == 4:
                    out["remove_extra_whitespaces"] = bool(v)
    for k in ("unk_id", "bos_id", "eos_id"):  # int32 fields: -1 arrives as a 64-bit varint
        if out[k] >= 1 << 31:
            out[k] -= 1 << 64
    return out


def from_sentencepiece(path: Path):
    """The parts of a Tokenizer from a SentencePiece BPE ModelProto file; a broken file is a TokenizerError."""
    try:
        spec = read_sentencepiece_model(path.read_bytes())
    except (IndexError, UnicodeDecodeError, struct.error, TypeError, AttributeError) as e:
        # a length or varint past the end, bad UTF-8, a field of another wire type than the schema's
        raise TokenizerError(f"{path}: not a valid SentencePiece model ({type(e).__name__}: {e})") from None
    if not spec["pieces"]:
        raise TokenizerError(f"{path}: no pieces in the SentencePiece model")
    for key in ("model_type", "unk_id", "bos_id", "eos_id", "types"):
        values = spec[key] if key == "types" else [spec[key]]
        if not all(isinstance(v, int) and -2**31 <= v < 2**31 for v in values):
            raise TokenizerError(f"{path}: SentencePiece {key} is not a 32-bit integer ({quote(spec[key])})")
    if spec["model_type"] != 2:
        raise TokenizerError(f"{path}: SentencePiece model type {spec['model_type']} is not supported (BPE = 2 is)")
    if spec["normalizer"] not in ("identity", ""):
        raise TokenizerError(f"{path}: SentencePiece normalizer {spec['normalizer']!r} is not supported "
                             f"(only 'identity'; other normalizers need its precompiled character map)")
    types = np.asarray(spec["types"], dtype=np.int32)
    pieces = spec["pieces"]
    blocked = {i for i in range(len(pieces)) if types[i] == CONTROL}
    unk = spec["unk_id"] if spec["unk_id"] >= 0 else None
    model = SentencePieceBPE([p.replace(" ", SPACE) for p in pieces], np.asarray(spec["scores"]), blocked, unk,
                             spec["add_dummy_prefix"], collapse_spaces=spec["remove_extra_whitespaces"])
    bos = spec["bos_id"] if spec["bos_id"] >= 0 else None
    eos = spec["eos_id"] if spec["eos_id"] >= 0 else None
    return model, pieces, types, bos, eos, unk, True
