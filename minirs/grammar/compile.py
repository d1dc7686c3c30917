"""A grammar checked and compiled once per request, in the caller's thread: errors come back as RequestError naming
the request field and carrying llguidance's own message.

    g = compile_grammar("regex", r"\\d{3}-\\d{4}", tokenizer, field="grammar")
    m = g.matcher()          # a fresh llguidance.LLMatcher at the grammar's start
"""

import json

import llguidance

from minirs.errors import RequestError, quote
from minirs.grammar.vocab import ll_tokenizer

GRAMMAR_TYPES = ("regex", "json_schema", "lark", "llguidance")
# JSON written as json.dumps writes it (", " and ": ", no other whitespace): how JSON looks in training data, and a
# model cannot wander off into whitespace until max_tokens cuts the document short (a schema's own "x-guidance"
# options override it)
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_GRAMMAR_CHARS = 1 << 20  # a grammar's text; llguidance bounds the work its parser does (LLParserLimits)


class Grammar:
    """A compiled grammar: its type and text, and a matcher at its start that every sequence copies."""

    def __init__(self, kind: str, text: str, start: llguidance.LLMatcher, tokenizer: llguidance.LLTokenizer):
        self.kind, self.text = kind, text
        self.ll_tokenizer = tokenizer
        self._start = start

    def matcher(self) -> llguidance.LLMatcher:
        return self._start.deep_copy()


def _ll_grammar(kind: str, text: str, field: str) -> str:
    """llguidance's grammar definition for mistral.rs's (grammar_type, grammar)."""
    if kind == "json_schema":
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise RequestError(f"invalid {field}: the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise RequestError(f"invalid {field}: a JSON schema is an object (got {quote(schema)})")
        return llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_LAYOUT)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(text)
    if kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(text)
    return text  # "llguidance": its own JSON grammar, checked by the matcher below


def compile_grammar(kind, text, tokenizer, field: str = "grammar") -> Grammar:
    """Check and compile (grammar_type, grammar text) for minirs Tokenizer `tokenizer`; RequestError naming `field`
    with llguidance's message if the type is unknown or the grammar invalid."""
    if kind not in GRAMMAR_TYPES:
        raise RequestError(f"invalid {field}_type: {quote(kind)} (one of {', '.join(GRAMMAR_TYPES)})"
                           if field == "grammar" else
                           f"invalid {field}: grammar type {quote(kind)} (one of {', '.join(GRAMMAR_TYPES)})")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(f"invalid {field}: {quote(text)} (a non-empty string)")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise RequestError(f"invalid {field}: {len(text)} characters (at most {MAX_GRAMMAR_CHARS})")
    lt = ll_tokenizer(tokenizer)
    start = llguidance.LLMatcher(lt, _ll_grammar(kind, text, field), log_level=0)
    if start.is_error():
        raise RequestError(f"invalid {field} ({kind}): {start.get_error().strip()}")
    return Grammar(kind, text, start, lt)
