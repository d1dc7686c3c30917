"""Tool calls out of model text: content pieces and complete calls, in order, from text fed piece by piece.

One parser serves the whole response and the stream alike: `parse(text)` is `feed(text)` then `finish()`, so a
streamed response reassembles to exactly the non-streamed one however the text was cut. A call is handed out only
once it is complete and valid; until then its text is held back (so a call never half-appears), and a call that
turns out malformed (bad JSON, no name, arguments that are not an object, cut off by max_tokens) comes back as
content, verbatim. Text that cannot start a call streams at once, except a tail that could be the start of a
marker, and trailing whitespace, which waits to see whether content (then it is content) or a call or the end after
calls (then it is dropped) follows; chunking cannot change that decision.

    parser = CallParser(HERMES)
    for piece in pieces: items += parser.feed(piece)   # str (content) or ToolCall, in order
    items += parser.finish()
"""

import json
import uuid
from dataclasses import dataclass

from minirs.tools.syntax import Syntax

_JSON = json.JSONDecoder()


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)
    id: str


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class Parsed:
    content: str | None  # None when the text was calls and whitespace only
    calls: list[ToolCall]


def parse(text: str, syntax: Syntax) -> Parsed:
    """A whole response's content and calls."""
    p = CallParser(syntax)
    items = p.feed(text) + p.finish()
    return Parsed(p.content_of(items), [c for c in items if isinstance(c, ToolCall)])


class CallParser:
    """Feed the model's text piece by piece; get back content pieces (str) and complete ToolCalls, in order."""

    def __init__(self, syntax: Syntax):
        self.syntax = syntax
        self.buf = ""  # text not handed out yet
        self.held_ws = ""  # whitespace content, handed out once more content follows
        self.at_start = True  # nothing but whitespace seen yet (Llama 3's bare JSON call counts only there)
        self.n_calls = 0
        self.has_content = False

    def feed(self, text: str) -> list:
        self.buf += text
        return self._drain(final=False)

    def finish(self) -> list:
        """The end of the text: what was held back, as calls or content."""
        out = self._drain(final=True)
        if self.held_ws and not self.n_calls:  # trailing whitespace after calls is no content
            out.append(self.held_ws)
        self.held_ws = ""
        return out

    def content_of(self, items: list) -> str | None:
        text = "".join(c for c in items if isinstance(c, str))
        return None if self.n_calls and not self.has_content else text

    # ----- scanning -------------------------------------------------------------------------------------------------

    def _drain(self, final: bool) -> list:
        out = []
        while self.buf:
            step = self._scan(final)
            if step is None:
                break  # the rest may still become a call: wait for more text
            n, calls = step
            piece, self.buf = self.buf[:n], self.buf[n:]
            if calls:  # whitespace before a call is no content
                out += calls
                self.held_ws = ""
                self.n_calls += len(calls)
                self.at_start = False
            elif piece.strip():  # content; its trailing whitespace waits to see what follows
                body = piece.rstrip()
                out.append(self.held_ws + body)
                self.held_ws, self.has_content, self.at_start = piece[len(body):], True, False
            else:
                self.held_ws += piece
        return out

    def _scan(self, final: bool):
        """(n, calls) for the buffer's first n characters: calls, or None for content; None to wait."""
        buf, start = self.buf, self.syntax.start
        if self.syntax.name == "llama3" and self.at_start and buf.lstrip()[:1] in ("{", ""):
            if not final:
                return None
            if not buf.strip():
                return len(buf), None
            return len(buf), _semicolon_calls(buf)
        i = buf.find(start)
        if i > 0:
            return i, None
        if i < 0:
            n = len(buf) if final else len(buf) - _partial_marker(buf, start)
            return (n, None) if n > 0 else None
        step = self._call(final)
        if step is None:
            return (len(buf), None) if final else None
        return step

    def _call(self, final: bool):
        """The call the buffer starts with: (n, calls or None when malformed), or None while incomplete."""
        syn, buf = self.syntax, self.buf
        rest = buf[len(syn.start):]
        if syn.name == "hermes":
            e = rest.find(syn.end)
            if e < 0:  # a model may stop right after the object, without the closing tag
                return (len(buf), _json_calls(rest)) if final else None
            return len(syn.start) + e + len(syn.end), _json_calls(rest[:e])
        if syn.name == "llama3":
            return (len(buf), _semicolon_calls(rest)) if final else None
        body = rest.lstrip()
        skipped = len(buf) - len(body)
        if body[:1] in ("[", "{"):  # [TOOL_CALLS] [{"name": ..., "arguments": ...}, ...]
            value, k = _decode(body)
            if value is None:
                return None
            return skipped + k, _calls(value)
        return _mistral_named(buf)


def _mistral_named(buf: str):
    """[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}: one call (Mistral tokenizer v11+)."""
    rest = buf[len("[TOOL_CALLS]"):]
    a = rest.find("[ARGS]")
    if a < 0:
        return None
    name, _, call_id = rest[:a].partition("[CALL_ID]")
    body = rest[a + len("[ARGS]"):]
    args = body.lstrip()
    value, k = _decode(args)
    if value is None:
        return None
    n = len(buf) - len(args) + k
    name, call_id = name.strip(), call_id.strip()
    if not name or not isinstance(value, dict):
        return n, None
    return n, [ToolCall(name, json.dumps(value, ensure_ascii=False), call_id or new_call_id())]


def _partial_marker(buf: str, marker: str) -> int:
    """The length of the longest tail of buf that begins marker (held back: the next piece may complete it)."""
    for k in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:k]):
            return k
    return 0


def _decode(text: str):
    """(value, characters used) for the JSON value text begins with; (None, 0) if it is not one (yet)."""
    try:
        return _JSON.raw_decode(text)
    except ValueError:
        return None, 0


def _json_calls(body: str):
    try:
        return _calls(json.loads(body))
    except ValueError:
        return None


def _semicolon_calls(text: str):
    """Llama 3's calls: JSON objects, separated by ';'."""
    values, rest = [], text.strip()
    while rest:
        value, k = _decode(rest)
        if value is None:
            return None
        values.append(value)
        rest = rest[k:].strip()
        if rest.startswith(";"):
            rest = rest[1:].strip()
        elif rest:
            return None
    return _calls(values)


def _calls(value) -> list[ToolCall] | None:
    """Calls from a decoded object or list of objects with a name and arguments (or Llama's parameters), each
    an object or a JSON string of one; None if any is not such a call."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        call_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else new_call_id()
        calls.append(ToolCall(item["name"], json.dumps(args, ensure_ascii=False), call_id))
    return calls or None
