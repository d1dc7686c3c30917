"""Mistral's instruct format: chat messages and fill-in-the-middle to token ids, exactly as mistral_common does it.

Mistral's models take no chat template: `mistral_common.MistralTokenizer.encode_chat_completion` builds the ids
directly, joining control-token ids and the ids of each text encoded on its own (no BOS, and for SentencePiece
with its own leading "▁"). `InstructEncoder` repeats that for tokenizer versions v1, v2, v3 and v7, whether the text
tokenizer is SentencePiece (tokenizer.model.vN) or Tekken (tekken.json):

    <s> [AVAILABLE_TOOLS] json(tools) [/AVAILABLE_TOOLS] [INST] user [/INST] assistant </s>
        [TOOL_CALLS] json([{name, arguments, id}]) </s> [TOOL_RESULTS] json({content, call_id}) [/TOOL_RESULTS]

    v1  system prompt + "\n\n" before the first user message; "[INST] ... [/INST]" is plain text; no tools
    v2  system prompt before the last user message, [AVAILABLE_TOOLS] too; tool calls and results only after
        it, results as [{name, content}]
    v3  as v2, but calls carry their id and every call and result is kept, results as {content, call_id}
    v7  [SYSTEM_PROMPT] text [/SYSTEM_PROMPT] where the system message stands; results as
        [TOOL_RESULTS] id [TOOL_CONTENT] text [/TOOL_RESULTS]; an assistant turn may hold text and calls

Before encoding, messages are normalised as mistral_common's InstructRequestNormalizer does: consecutive messages
of one role merge (texts joined by a blank line), tool-call arguments and (before v7) tool results are re-dumped
as JSON when they parse, and a conversation that does not open with a user message gets an empty one in front.

Fill-in-the-middle (Codestral, v3 and later): <s> [SUFFIX] suffix [PREFIX] prefix; the model writes the middle.
"""

import json
import re
from dataclasses import dataclass, field

from minirs.errors import RequestError, TokenizerError, quote

VERSIONS = ("v1", "v2", "v3", "v7")  # the instruct formats encoded here, oldest first
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # function names mistral_common accepts
NEXT_ROLES = {"system": {"user", "assistant", "system"}, "user": {"assistant", "system", "user"},
              "assistant": {"assistant", "user", "tool"}, "tool": {"assistant", "tool", "user"}}
CONTROL_TEXTS = ("[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                 "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[PREFIX]", "[SUFFIX]", "[MIDDLE]", "[SYSTEM_PROMPT]",
                 "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")
NEEDED = {"v1": (), "v2": CONTROL_TEXTS[:7], "v3": CONTROL_TEXTS[:7], "v7": CONTROL_TEXTS[:7] + CONTROL_TEXTS[10:]}


@dataclass
class Message:
    """One chat message after checking: text content, and for an assistant its calls (name, arguments, id)."""

    role: str
    content: str
    tool_calls: list[dict] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    prefix: bool = False  # an assistant message the model continues: no </s> after it


def _text(value, where: str) -> str:
    """A message's content as text: a string, None, or OpenAI's list of {"type": "text", "text": ...} parts (joined
    by a blank line, as mistral_common joins chunks)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for k, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type", "text") == "text"
                    and isinstance(part.get("text"), str)):
                raise RequestError(f"{where}.content[{k}] = {quote(part)}: only text parts are supported")
            if part["text"]:
                parts.append(part["text"])
        return "\n\n".join(parts)
    raise RequestError(f"{where}.content must be a string or a list of text parts, not {quote(value)}")


def _json_or_text(text: str):
    """mistral_common's `_parse_json_content`: the JSON value of `text` if it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _normal_json(text: str | None) -> str:
    """mistral_common's `_normalize_json_content`: "{}" for nothing, JSON re-dumped, other text unchanged."""
    if not text:
        return "{}"
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return text


def _tool_call(call, where: str) -> dict:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise RequestError(f"{where} = {quote(call)} must be {{\"id\", \"type\": \"function\", \"function\": "
                           f"{{\"name\", \"arguments\"}}}}")
    fn = call["function"]
    name, args = fn.get("name"), fn.get("arguments")
    if not isinstance(name, str) or not NAME.match(name):
        raise RequestError(f"{where}.function.name = {quote(name)} must match {NAME.pattern}")
    if isinstance(args, dict):
        args = json.dumps(args, ensure_ascii=False)
    if args is not None and not isinstance(args, str):
        raise RequestError(f"{where}.function.arguments = {quote(args)} must be a JSON string or an object")
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise RequestError(f"{where}.id = {quote(call_id)} must be a string")
    return {"name": name, "arguments": _normal_json(args), "id": call_id or "null"}


def read_message(m, k: int) -> Message:
    """An OpenAI-style message dict as a `Message`, every field checked."""
    where = f"messages[{k}]"
    if not isinstance(m, dict):
        raise RequestError(f"{where} = {quote(m)} must be an object with a role")
    role = m.get("role")
    if role not in NEXT_ROLES:
        raise RequestError(f"{where}.role = {quote(role)} must be one of system, user, assistant, tool")
    if role == "system" and m.get("content") is None:
        raise RequestError(f"{where}: a system message needs content")
    calls = m.get("tool_calls") or []
    if role != "assistant" and calls:
        raise RequestError(f"{where}: only assistant messages carry tool_calls")
    if not isinstance(calls, list):
        raise RequestError(f"{where}.tool_calls = {quote(calls)} must be a list")
    calls = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
    call_id, name = m.get("tool_call_id"), m.get("name")
    if role == "tool":
        if call_id is not None and not isinstance(call_id, str):
            raise RequestError(f"{where}.tool_call_id = {quote(call_id)} must be a string")
        if name is not None and not (isinstance(name, str) and NAME.match(name)):
            raise RequestError(f"{where}.name = {quote(name)} must match {NAME.pattern}")
    prefix = m.get("prefix", False)
    if not isinstance(prefix, bool) or (prefix and role != "assistant"):
        raise RequestError(f"{where}.prefix = {quote(prefix)}: only an assistant message may be a prefix (true)")
    return Message(role, _text(m.get("content"), where), calls, call_id if role == "tool" else None,
                   name if role == "tool" else None, prefix)


def read_tools(tools) -> list[dict]:
    """OpenAI tools as mistral_common dumps them: {"type": "function", "function": {name, description, parameters}}."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestError(f"tools = {quote(tools)} must be a list")
    out = []
    for k, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or t.get("type", "function") != "function":
            raise RequestError(f"tools[{k}] = {quote(t)} must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name, desc, params = fn.get("name"), fn.get("description"), fn.get("parameters")
        if not isinstance(name, str) or not NAME.match(name):
            raise RequestError(f"tools[{k}].function.name = {quote(name)} must match {NAME.pattern}")
        if desc is not None and not isinstance(desc, str):
            raise RequestError(f"tools[{k}].function.description = {quote(desc)} must be a string")
        if params is not None and not isinstance(params, dict):
            raise RequestError(f"tools[{k}].function.parameters = {quote(params)} must be a JSON Schema object")
        out.append({"type": "function", "function": {"name": name, "description": desc or "",
                                                     "parameters": params or {}}})
    return out


def check_order(msgs: list[Message]) -> None:
    """mistral_common's structure rules: role order, the last message, one tool result per tool call."""
    if not msgs:
        raise RequestError("messages is empty: a conversation needs at least one message")
    if len(msgs) == 1 and msgs[0].role not in ("user", "system"):
        raise RequestError(f"messages[0].role = {quote(msgs[0].role)}: a one-message conversation needs a user or "
                           f"system message")
    for k in range(1, len(msgs)):
        if msgs[k].role not in NEXT_ROLES[msgs[k - 1].role]:
            raise RequestError(f"messages[{k}]: a {msgs[k].role} message cannot follow a {msgs[k - 1].role} message")
    last = msgs[-1]
    if len(msgs) > 1 and last.role not in ("user", "tool") and not last.prefix:
        raise RequestError(f"messages[{len(msgs) - 1}]: the last message must be a user or tool message (or an "
                           f"assistant message with prefix: true), not {last.role}")
    if any(m.prefix for m in msgs[:-1]):
        raise RequestError("only the last message may have prefix: true")
    expected = 0
    for k, m in enumerate(msgs[1:], 1):
        if m.role == "tool":
            expected -= 1
        elif m.role == "assistant":
            if expected != 0:
                raise RequestError(f"messages[{k}]: the tool calls before it and the tool results do not match in "
                                   f"number")
            expected = len(m.tool_calls)


def normalize(msgs: list[Message], version: str) -> tuple[str | None, list[Message]]:
    """mistral_common's InstructRequestNormalizer (v7: ...V7): the system prompt (before v7) and merged messages."""
    system = None
    if version != "v7":
        texts = [m.content for m in msgs if m.role == "system" and m.content]
        system = "\n\n".join(texts) if texts else None
    groups: list[list[Message]] = []
    for m in msgs:
        if groups and groups[-1][0].role == m.role:
            groups[-1].append(m)
        else:
            groups.append([m])
    out: list[Message] = []
    for group in groups:
        role = group[0].role
        joined = "\n\n".join(m.content for m in group if m.content)
        if role == "user":
            out.append(Message("user", joined))
        elif role == "assistant":
            calls = [c for m in group for c in m.tool_calls]
            if version != "v7" and any(m.content and m.tool_calls for m in group):
                raise RequestError(f"an assistant message has both content and tool_calls (not allowed before v7; "
                                   f"this tokenizer is {version})")
            out.append(Message("assistant", joined, calls, prefix=any(m.prefix for m in group)))
        elif role == "tool":
            out += [Message("tool", m.content if version == "v7" else _normal_json(m.content),
                            tool_call_id=m.tool_call_id, name=m.name) for m in group]
        elif version == "v7":
            out += [Message("system", m.content) for m in group]
    if not out or (version != "v7" and out[0].role != "user"):
        out.insert(0, Message("user", ""))
    return system, out


class InstructEncoder:
    """Encodes chat requests and FIM requests for one Mistral tokenizer (`version` "v1", "v2", "v3" or "v7")."""

    def __init__(self, tokenizer, version: str):
        if version not in VERSIONS:
            raise TokenizerError(f"{tokenizer.source}: instruct version {quote(version)} is not supported "
                                 f"(only {', '.join(VERSIONS)})")
        self.tokenizer = tokenizer
        self.version = version
        specials = tokenizer.special_texts
        missing = [t for t in NEEDED[version] if t not in specials]
        if missing or tokenizer.bos_id is None or tokenizer.eos_id is None:
            raise TokenizerError(f"{tokenizer.source}: a {version} instruct tokenizer needs the control tokens "
                                 f"{', '.join(missing or ['<s>', '</s>'])}")
        self.ids = {t: specials[t] for t in CONTROL_TEXTS if t in specials}
        self.bos, self.eos = tokenizer.bos_id, tokenizer.eos_id

    def __repr__(self) -> str:
        return f"InstructEncoder({self.version}, {self.tokenizer!r})"

    # ----- what a caller (the API, a tool-call parser) needs to know ------------------------------------------------

    @property
    def has_fim(self) -> bool:
        """True when the vocabulary has [PREFIX] and [SUFFIX] (v3 and later: Codestral's fill-in-the-middle)."""
        return self.version != "v1" and "[PREFIX]" in self.ids and "[SUFFIX]" in self.ids

    @property
    def tool_call_prefix(self) -> str | None:
        """The control token a model writes before its tool calls ("[TOOL_CALLS]", followed by a JSON list of
        {"name", "arguments"(, "id")}), or None where the version has no tools."""
        return "[TOOL_CALLS]" if self.version != "v1" else None

    @property
    def tool_call_prefix_id(self) -> int | None:
        return self.ids.get("[TOOL_CALLS]") if self.version != "v1" else None

    def parse_output(self, ids) -> tuple[str, list[dict]]:
        """Split generated ids into the text before the first [TOOL_CALLS] and the tool calls after it, in OpenAI's
        shape ({"id", "type": "function", "function": {"name", "arguments": JSON text}}; "id" is None when the
        model gave none). Each [TOOL_CALLS] is followed by a JSON list of {"name", "arguments"(, "id")}, as
        mistral_common's tool-call decoder (experimental/tools.py, v2 to v7) reads it. Output that does not parse
        as such is returned whole as text, with no calls."""
        ids = [self.tokenizer.check_id(t, f"ids[{k}]") for k, t in enumerate(ids)]
        marker = self.tool_call_prefix_id
        if marker is None or marker not in ids:
            return self.tokenizer.decode(ids, skip_special_tokens=True), []
        start = ids.index(marker)
        segments, current = [], None
        for t in ids[start:]:
            if t == marker:
                current = []
                segments.append(current)
            else:
                current.append(t)
        calls = []
        for seg in segments:
            try:
                listed = json.loads(self.tokenizer.decode(seg, skip_special_tokens=True))
            except ValueError:
                listed = None
            if not isinstance(listed, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
                    for c in listed):
                return self.tokenizer.decode(ids, skip_special_tokens=True), []
            calls += [{"id": c["id"] if isinstance(c.get("id"), str) and c["id"] != "null" else None,
                       "type": "function", "function": {"name": c["name"], "arguments": json.dumps(
                           c["arguments"], ensure_ascii=False)}} for c in listed]
        return self.tokenizer.decode(ids[:start], skip_special_tokens=True), calls

    # ----- encoding -------------------------------------------------------------------------------------------------

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The prompt ids of a chat request (OpenAI's message and tool dicts), as mistral_common encodes it."""
        if not isinstance(messages, list):
            raise RequestError(f"messages = {quote(messages)} must be a list of message objects")
        msgs = [read_message(m, k) for k, m in enumerate(messages)]
        tool_specs = read_tools(tools)
        if self.version == "v1" and (tool_specs or any(m.role == "tool" or m.tool_calls for m in msgs)):
            raise RequestError(f"{self.tokenizer.source}: tokenizer v1 has no tools, tool calls or tool messages")
        check_order(msgs)
        system, msgs = normalize(msgs, self.version)
        users = [k for k, m in enumerate(msgs) if m.role == "user"]
        first, last = (users[0], users[-1]) if users else (-1, -1)
        if self.version == "v2":
            self._check_v2_results(msgs, last)
        ids = [self.bos]
        for k, m in enumerate(msgs):
            if m.role == "user":
                ids += self._user(m.content, tool_specs if k == last else [], system if
                                  (k == first if self.version == "v1" else k == last) else None)
            elif m.role == "assistant":
                ids += self._assistant(m, before_last_user=k < last)
            elif m.role == "tool":
                ids += self._tool(m, before_last_user=k < last)
            else:  # v7 system message
                ids += [self.ids["[SYSTEM_PROMPT]"], *self._enc(m.content), self.ids["[/SYSTEM_PROMPT]"]]
        return ids

    def _user(self, content: str, tools: list[dict], system: str | None) -> list[int]:
        if system:
            content = system + "\n\n" + content
        if self.version == "v1":
            return self._enc(f"[INST] {content} [/INST]")
        out = []
        if tools:
            out += [self.ids["[AVAILABLE_TOOLS]"], *self._enc(json.dumps(tools, ensure_ascii=False)),
                    self.ids["[/AVAILABLE_TOOLS]"]]
        return out + [self.ids["[INST]"], *self._enc(content), self.ids["[/INST]"]]

    def _assistant(self, m: Message, before_last_user: bool) -> list[int]:
        if not m.content and not m.tool_calls:
            raise RequestError("an assistant message needs content or tool_calls")
        out: list[int] = []
        if m.content:
            out = self._enc(m.content if self.version == "v1" else m.content.rstrip(" "))
        if m.tool_calls:
            if self.version == "v2" and before_last_user:
                return []  # v2 drops the tool calls (and their results) of earlier turns
            calls = []
            for c in m.tool_calls:
                call = {"name": c["name"], "arguments": _json_or_text(c["arguments"])}
                if self.version != "v2" and c["id"] != "null":
                    call["id"] = c["id"]
                calls.append(call)
            out += [self.ids["[TOOL_CALLS]"], *self._enc(json.dumps(calls, ensure_ascii=False))]
        if not m.prefix:
            out.append(self.eos)
        return out

    def _tool(self, m: Message, before_last_user: bool) -> list[int]:
        if self.version == "v2":
            if before_last_user:
                return []
            body = json.dumps([{"name": m.name, "content": _json_or_text(m.content)}], ensure_ascii=False)
            return [self.ids["[TOOL_RESULTS]"], *self._enc(body), self.ids["[/TOOL_RESULTS]"]]
        if m.tool_call_id is None:
            raise RequestError(f"a tool message needs tool_call_id (tokenizer {self.version})")
        if self.version == "v3":
            body = json.dumps({"content": _json_or_text(m.content), "call_id": m.tool_call_id}, ensure_ascii=False)
            return [self.ids["[TOOL_RESULTS]"], *self._enc(body), self.ids["[/TOOL_RESULTS]"]]
        return [self.ids["[TOOL_RESULTS]"], *self._enc(m.tool_call_id), self.ids["[TOOL_CONTENT]"],
                *self._enc(m.content), self.ids["[/TOOL_RESULTS]"]]

    @staticmethod
    def _check_v2_results(msgs: list[Message], last_user: int) -> None:
        """v2 encodes one tool result per assistant turn after the last user message."""
        calls_turn, results = False, 0
        for m in msgs[max(last_user, 0):]:
            if m.role == "assistant":
                calls_turn, results = bool(m.tool_calls), 0
            elif m.role == "tool" and calls_turn:
                results += 1
                if results > 1:
                    raise RequestError("tokenizer v2 encodes only one tool result per assistant turn")
            elif m.role != "tool":
                calls_turn, results = False, 0

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """Fill-in-the-middle ids: <s> [SUFFIX] suffix [PREFIX] prefix (mistral_common's encode_fim)."""
        if not self.has_fim:
            raise RequestError(f"{self.tokenizer.source}: this tokenizer ({self.version}) has no [PREFIX]/[SUFFIX] "
                               f"tokens for fill-in-the-middle")
        for name, value in (("prefix", prefix), ("suffix", suffix)):
            if not isinstance(value, str):
                raise RequestError(f"FIM {name} must be a string, not {quote(value)}")
        # "☺" in front and its two tokens dropped: the suffix is encoded mid-text, without SentencePiece's "▁"
        tail = self._enc("☺" + suffix)[2:] if suffix else []
        return [self.bos, self.ids["[SUFFIX]"], *tail, self.ids["[PREFIX]"], *self._enc(prefix)]


def version_from_vocabulary(tokenizer) -> str | None:
    """The instruct version a GGUF's vocabulary points to, or None when it has no [INST] / [/INST] control tokens.

    The vocabulary alone can be ambiguous: Tekken's default special tokens hold [SYSTEM_PROMPT] even in v3 files
    (Mistral Nemo). So where the file has a chat template, v7 is taken only when the template writes
    [SYSTEM_PROMPT]; without one, the control tokens decide. `InstructEncoder(tok, version)` overrides the guess."""
    specials = tokenizer.special_texts
    if not all(t in specials and tokenizer.is_special(specials[t]) for t in ("[INST]", "[/INST]")):
        return None
    template = tokenizer.chat_template
    if all(t in specials for t in NEEDED["v7"]) and (template is None or "[SYSTEM_PROMPT]" in template):
        return "v7"
    if all(t in specials for t in NEEDED["v3"]):
        return "v3" if "[PREFIX]" in specials else "v2"
    return None
