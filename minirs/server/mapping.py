"""OpenAI's request JSON to the Runner's request dataclasses, and the Runner's responses to OpenAI's JSON.

Requests. OpenAI's names map to ours (RENAMES: `n` -> n_choices, `stop` -> stop_seqs, `max_completion_tokens` ->
max_tokens, `echo` -> echo_prompt; a completion's integer `logprobs` -> logprobs + top_logprobs), and every other
field of the target dataclass passes through under its own name (`dataclasses.fields`), so a field added to
ChatCompletionRequest or CompletionRequest is served with no change here, and mistral.rs's extensions (top_k,
min_p, repetition_penalty, stop_token_ids, ...) come for free. A JSON null means the field's default. A field
that is neither is refused (400, naming it), except IGNORED ones, which change nothing a local server does. Values
are checked by the Runner (minirs/api/validation.py), whose RequestError becomes the 400, with the field named
as the client spelled it.

    req = chat_request({"model": "m", "messages": [...], "n": 2, "stop": "\\n"})   # ChatCompletionRequest
    body = chat_json(runner.send_chat_completion_request(req.request), tokenizer)
"""

import dataclasses
import re
from dataclasses import dataclass

from minirs.api.types import ChatCompletionRequest, CompletionRequest
from minirs.api.validation import is_int
from minirs.errors import RequestError, quote

RENAMES = {"n": "n_choices", "stop": "stop_seqs", "max_completion_tokens": "max_tokens"}
COMPLETION_RENAMES = {**RENAMES, "echo": "echo_prompt"}
# OpenAI fields with no effect here: `user` identifies an end user to OpenAI's abuse monitoring, `store` and
# `metadata` ask OpenAI to keep the completion. Accepted and ignored, as vLLM and llama-cpp-python do.
IGNORED = frozenset({"user", "store", "metadata"})


@dataclass
class Parsed:
    request: ChatCompletionRequest | CompletionRequest
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage and no choices
    names: dict  # our field name -> the name the client used, where they differ


def chat_request(body) -> Parsed:
    return parse_request(body, ChatCompletionRequest, RENAMES)


def completion_request(body) -> Parsed:
    """As chat_request; OpenAI's completion `logprobs` is an integer (how many top tokens), ours a flag beside
    top_logprobs; `prompt` may be a list holding one string."""
    if isinstance(body, dict) and is_int(body.get("logprobs")):
        if body.get("top_logprobs") is not None:
            raise RequestError("invalid top_logprobs: give an integer logprobs or top_logprobs, not both")
        body = {**body, "logprobs": True, "top_logprobs": body["logprobs"]}
    if isinstance(body, dict) and isinstance(body.get("prompt"), list) and body["prompt"] \
            and not all(is_int(t) for t in body["prompt"]):
        if len(body["prompt"]) != 1 or not isinstance(body["prompt"][0], str):
            raise RequestError(f"invalid prompt: {quote(body['prompt'])} (one string or one list of token ids a "
                               "request: send several prompts as several requests, which run batched)")
        body = {**body, "prompt": body["prompt"][0]}
    return parse_request(body, CompletionRequest, COMPLETION_RENAMES)


def parse_request(body, cls, renames: dict) -> Parsed:
    """`body` as a `cls` request, OpenAI names mapped by `renames`, every field of `cls` passed through."""
    if not isinstance(body, dict):
        raise RequestError(f"invalid request body: {quote(body)} (a JSON object)")
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs, names, unknown = {}, {}, []
    for key, value in body.items():
        ours = renames.get(key, key)
        if key in IGNORED or key == "stream_options":
            continue
        if ours not in known:
            unknown.append(key)
            continue
        if ours in names:
            raise RequestError(f"invalid {key}: given together with {names[ours]}, which means the same")
        names[ours] = key
        if value is not None:
            kwargs[ours] = [value] if ours == "stop_seqs" and isinstance(value, str) else value
    if unknown:
        raise RequestError(f"unsupported field{'s' if len(unknown) > 1 else ''}: {', '.join(map(quote, unknown))} "
                           f"(not a field of OpenAI's API that minirs serves, nor of minirs's {cls.__name__})")
    return Parsed(cls(**kwargs), _include_usage(body.get("stream_options")),
                  {ours: theirs for ours, theirs in names.items() if ours != theirs})


def _include_usage(opts) -> bool:
    if opts is None:
        return False
    if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool) \
            or set(opts) - {"include_usage"}:
        raise RequestError(f"invalid stream_options: {quote(opts)} (an object with include_usage: true or false)")
    return opts.get("include_usage", False)


_FIELD = re.compile(r"invalid ([A-Za-z_]\w*)")


def client_error(e: RequestError, names: dict) -> tuple[str, str | None]:
    """The message and OpenAI's `param` of a RequestError, our field names replaced by the client's."""
    msg = str(e)
    m = _FIELD.match(msg)
    if m is None:
        return msg, None
    theirs = names.get(m.group(1), m.group(1))
    return f"invalid {theirs}{msg[m.end():]}", theirs


def error_json(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ----- responses -------------------------------------------------------------------------------------------------

_FIELDS: dict[type, tuple] = {}


def plain(obj):
    """A response (a tree of dataclasses) as dicts and lists: dataclasses.asdict without its deep copies, which cost
    ~90 us a stream chunk, paid once per token per client."""
    if isinstance(obj, list):
        return [plain(x) for x in obj]
    names = _FIELDS.get(type(obj))
    if names is None:
        if not dataclasses.is_dataclass(obj):
            return obj
        names = _FIELDS[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    return {n: plain(getattr(obj, n)) for n in names}

def _top(t, tokenizer) -> dict:
    """OpenAI's top-logprob entry (token text and its bytes) from ours (token id, text)."""
    return {"token": t.bytes, "logprob": t.logprob, "bytes": list(tokenizer.token_to_bytes(t.token))}


def _entry(e, tokenizer) -> dict:
    return {"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
            "top_logprobs": [_top(t, tokenizer) for t in e.top_logprobs]}


def _legacy(entries, tokenizer, offset: int = 0) -> dict:
    """The text completion's logprobs as OpenAI's completions API gives them: parallel lists per token."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.bytes: t.logprob for t in e.top_logprobs} for e in entries], "text_offset": offsets}


def chat_json(res, tokenizer) -> dict:
    d = plain(res)
    for c, choice in zip(d["choices"], res.choices):
        if choice.logprobs is not None:
            c["logprobs"] = {"content": [_entry(e, tokenizer) for e in choice.logprobs.content]}
    return d


def completion_json(res, tokenizer, echo_chars: int = 0) -> dict:
    d = plain(res)
    for c, choice in zip(d["choices"], res.choices):
        if choice.logprobs is not None:
            c["logprobs"] = _legacy(choice.logprobs.content, tokenizer, echo_chars)
    return d


def chunk_json(chunk, tokenizer, chat: bool, include_usage: bool) -> dict:
    """A stream chunk; the usage goes to a chunk of its own (usage_json) when asked for, as OpenAI's does."""
    d = plain(chunk)
    for c, choice in zip(d["choices"], chunk.choices):
        if choice.logprobs is not None:
            c["logprobs"] = {"content": [_entry(choice.logprobs, tokenizer)]} if chat else \
                _legacy([choice.logprobs], tokenizer)
    if include_usage:
        d["usage"] = None
    else:
        d.pop("usage", None)
    return d


def usage_json(chunk) -> dict:
    """The last chunk of a stream with stream_options.include_usage: no choices, the request's usage."""
    d = plain(chunk)
    d["choices"] = []
    return d
