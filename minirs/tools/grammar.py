"""The grammar that makes a model call a tool (tool_choice "required" or a named function), in its own syntax.

A Lark grammar in llguidance's dialect (docs/syntax.md): the call's fixed text is literal, the arguments are
`%json{schema}` with the tool's parameter schema, and a marker that is a control token (Mistral's [TOOL_CALLS],
[ARGS]) is the token itself, `<[id]>`, so it cannot be spelled out of ordinary pieces. One call is generated, to
any of the tools given (the named one only, for a named tool_choice); the model may end only after it. The
arguments have no properties their schema does not declare (unless it sets additionalProperties itself) and are
laid out as json.dumps writes them.

    call_grammar(tools, HERMES, tokenizer)
    # start: call
    # call: "<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": " %json{...} "}\\n</tool_call>"
"""

import json

from minirs.grammar.compile import JSON_LAYOUT as LAYOUT
from minirs.tools.syntax import Syntax


def call_grammar(tools: list[dict], syntax: Syntax, tokenizer) -> str:
    """Lark text accepting exactly one call to one of `tools` (OpenAI tool dicts, already validated)."""
    alts = [_call(t["function"]["name"], _schema(t["function"]), syntax, tokenizer) for t in tools]
    return "start: call\ncall: " + "\n    | ".join(alts) + "\n"


def _schema(function: dict) -> str:
    """The arguments' schema as the grammar uses it: closed to undeclared properties unless it says otherwise (as
    OpenAI's strict mode does; a small model would otherwise invent some), laid out as LAYOUT."""
    schema = dict(function.get("parameters") or {"type": "object"})
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    schema["x-guidance"] = {**LAYOUT, **schema.get("x-guidance", {})}
    return json.dumps(schema, ensure_ascii=False)


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _marker(text: str, tokenizer) -> str:
    """A marker as the control token it is in this vocabulary, else as text."""
    tid = tokenizer.special_texts.get(text)
    return f"<[{tid}]>" if tid is not None and tokenizer.is_special(tid) else _lit(text)


def _head(name: str, key: str) -> str:
    """'{"name": "f", "arguments": ' : a call object up to its arguments."""
    return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "' + key + '": '


def _call(name: str, schema: str, syntax: Syntax, tokenizer) -> str:
    args = f"%json{schema}"
    if syntax.name == "hermes":  # <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
        head, tail = _lit("\n" + _head(name, "arguments")), _lit("}\n")
        return f"{_marker(syntax.start, tokenizer)} {head} {args} {tail} {_marker(syntax.end, tokenizer)}"
    if syntax.name == "llama3":  # {"name": "f", "parameters": {...}}
        return f"{_lit(_head(name, 'parameters'))} {args} {_lit('}')}"
    start = _marker(syntax.start, tokenizer)
    if syntax.args_token:  # [TOOL_CALLS]f[ARGS]{...}
        return f"{start} {_lit(name)} {_marker(syntax.args_token, tokenizer)} {args}"
    # [TOOL_CALLS] [{"name": "f", "arguments": {...}}], with the "id" mistral-common writes in v3 prompts or without
    with_id, close = _lit(', "id": "'), _lit('"}]')
    end = f"({_lit('}]')} | {with_id} /[a-zA-Z0-9]{{9}}/ {close})"
    return f"{start} {_lit(' [' + _head(name, 'arguments'))} {args} {end}"
