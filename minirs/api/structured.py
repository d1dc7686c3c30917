"""The request fields that constrain generation: mistral.rs's `grammar` + `grammar_type`, and OpenAI's
`response_format`. Checked and compiled in the caller's thread, before the request joins a batch.

    grammar = request_grammar(request, tokenizer)   # ("json_schema", '{"type": "object"}') or None
    params = gen_params(request, ..., grammar=grammar)

response_format {"type": "text"} constrains nothing; {"type": "json_object"} is any JSON object;
{"type": "json_schema", "json_schema": {"name", "schema", "strict"}} follows the schema (OpenAI's `strict` is
accepted: llguidance always follows the schema). A request may give a grammar or a JSON response_format, not both.
A bad field raises RequestError naming it, with llguidance's own message for an invalid regex, schema or grammar.
"""

import json

from minirs.errors import RequestError, quote
from minirs.grammar import GRAMMAR_TYPES, compile_grammar

RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _grammar_field(req) -> tuple[str, str] | None:
    kind, g = req.grammar_type, req.grammar
    if kind is None and g is None:
        return None
    if kind is None or g is None:
        given, missing = ("grammar", "grammar_type") if kind is None else ("grammar_type", "grammar")
        raise RequestError(f"invalid {given}: {quote(g if kind is None else kind)} comes without {missing} "
                           "(give both fields or neither)")
    if kind not in GRAMMAR_TYPES:
        raise RequestError(f"invalid grammar_type: {quote(kind)} (one of {', '.join(GRAMMAR_TYPES)})")
    if kind == "json_schema" and isinstance(g, dict):  # a schema given as an object
        g = json.dumps(g)
    if not isinstance(g, str) or not g.strip():
        raise RequestError(f"invalid grammar: {quote(g)} (a non-empty string)")
    return kind, g


def _response_format(v) -> tuple[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or v.get("type") not in RESPONSE_FORMATS:
        raise RequestError(f"invalid response_format: {quote(v)} (a dict with type one of "
                           f"{', '.join(RESPONSE_FORMATS)})")
    if v["type"] == "text":
        return None
    if v["type"] == "json_object":
        return "json_schema", '{"type": "object"}'
    spec = v.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError(f"invalid response_format.json_schema: {quote(spec)} (a dict with name, schema, strict)")
    name, schema, strict = spec.get("name"), spec.get("schema", {"type": "object"}), spec.get("strict")
    if not isinstance(name, str) or not name:
        raise RequestError(f"invalid response_format.json_schema.name: {quote(name)} (a non-empty string)")
    if not isinstance(schema, (dict, bool)):
        raise RequestError(f"invalid response_format.json_schema.schema: {quote(schema)} (a JSON schema object)")
    if strict is not None and not isinstance(strict, bool):
        raise RequestError(f"invalid response_format.json_schema.strict: {quote(strict)} (True, False or None)")
    return "json_schema", json.dumps(schema)


def request_grammar(req, tokenizer) -> tuple[str, str] | None:
    """The (grammar_type, grammar_text) constraining `req` (GenParams.grammar), or None; compiled once here so that
    an invalid grammar raises RequestError naming its field in the caller's thread."""
    from_grammar, from_format = _grammar_field(req), _response_format(req.response_format)
    if from_grammar is not None and from_format is not None:
        raise RequestError(f"invalid response_format: {quote(req.response_format)} (the request has a grammar "
                           "already: give one or the other)")
    grammar = from_grammar or from_format
    if grammar is not None:
        compile_grammar(*grammar, tokenizer, field="grammar" if from_grammar else "response_format")
    return grammar
