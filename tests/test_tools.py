"""Tool calls without running a model: the parsers on fixed model text of each family (well formed, several calls,
malformed), streamed chunks reassembled by OpenAI's own client code against the whole response, the request
checks, the call grammar (llguidance) against calls encoded by mistral-common, and tool messages through SmolLM2's
template (a transformers golden) and the built-in mistral-v3 template (mistral-common's encoding).
"""

import itertools
import json
import random
import re
from pathlib import Path

import llguidance
import mistral_common
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from minirs import ChatCompletionRequest, RequestError, ToolChoice
from minirs.api import responses, validation
from minirs.engine import GenParams, Job
from minirs.engine.request import Delta as Event
from minirs.errors import TemplateError
from minirs.grammar.vocab import ll_tokenizer
from minirs.tokenizer import Tokenizer
from minirs.tokenizer.chat import BUILTIN_TEMPLATES, render
from minirs.tools import HERMES, LLAMA3, MISTRAL, MISTRAL_V11, call_grammar, for_template, marker_ids, parse, syntax_for
from minirs.tools import parser as parser_module

GOLDEN = Path(__file__).parent / "golden" / "tools_smollm2.json"
MISTRAL_DATA = Path(mistral_common.__file__).parent / "data"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}

# (syntax, model text, expected content, expected calls as (name, arguments, id or None for a generated one))
WELL_FORMED = [
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
     None, [("get_weather", {"city": "Paris"}, None)]),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "Hk2x9Lm0q"}, '
              '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}, "id": "P0o9i8u7y"}]',
     None, [("get_weather", {"city": "Paris"}, "Hk2x9Lm0q"), ("get_time", {"tz": "Europe/Paris"}, "P0o9i8u7y")]),
    (MISTRAL, 'Let me look.[TOOL_CALLS] [{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}]',
     "Let me look.", [("get_time", {"tz": "UTC"}, None)]),
    (MISTRAL_V11, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "Europe/Paris"}',
     None, [("get_weather", {"city": "Paris"}, None), ("get_time", {"tz": "Europe/Paris"}, None)]),
    (MISTRAL_V11, '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}',
     None, [("get_weather", {"city": "Paris"}, "a1b2c3d4e")]),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [("get_weather", {"city": "Paris"}, None)]),
    (HERMES, 'I will check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
             '\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>\n',
     "I will check both.", [("get_weather", {"city": "Paris"}, None), ("get_time", {"tz": "Europe/Paris"}, None)]),
    (HERMES, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '  # SmolLM2-1.7B writes a list
             '{"name": "get_time", "arguments": {"tz": "UTC"}}]</tool_call>',
     None, [("get_weather", {"city": "Paris"}, None), ("get_time", {"tz": "UTC"}, None)]),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}',  # stopped before the tag
     None, [("get_weather", {"city": "Zürich"}, None)]),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}',
     None, [("get_weather", {"city": "Paris"}, None)]),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
             '{"name": "get_time", "parameters": {"tz": "UTC"}}',
     None, [("get_weather", {"city": "Paris"}, None), ("get_time", {"tz": "UTC"}, None)]),
    (LLAMA3, 'Checking.<|python_tag|>{"name": "get_time", "parameters": {}}', "Checking.", [("get_time", {}, None)]),
]

# text that is no call (or a malformed one): all of it comes back as content
NOT_CALLS = [
    (HERMES, "The capital of France is Paris."),
    (HERMES, 'Broken: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>'),
    (HERMES, '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>'),  # no name
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>'),  # arguments not an object
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"ci'),  # cut by max_tokens
    (HERMES, "Use the <tool"),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": '),
    (MISTRAL, "[TOOL_CALLS] not json"),
    (MISTRAL_V11, '[TOOL_CALLS]get_weather[ARGS]{"city": "Par'),
    (MISTRAL_V11, "[TOOL_CALLS]get_weather"),
    (LLAMA3, '{"city": "Paris"}'),  # JSON, but no call
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}} and some words'),
    (LLAMA3, 'Here is JSON: {"name": "get_weather", "parameters": {}}'),  # a bare call counts only at the start
]


def _expected_calls(calls):
    return [(name, args, cid) for name, args, cid in calls]


@pytest.mark.parametrize("syntax,text,content,calls", WELL_FORMED)
def test_parse_well_formed(syntax, text, content, calls):
    got = parse(text, syntax)
    assert got.content == content
    assert [(c.name, json.loads(c.arguments), c.id if cid else None) for c, (_, _, cid) in zip(got.calls, calls)] \
        == _expected_calls(calls)
    assert len(got.calls) == len(calls)
    assert all(c.id for c in got.calls) and len({c.id for c in got.calls}) == len(got.calls)


@pytest.mark.parametrize("syntax,text", NOT_CALLS)
def test_parse_keeps_what_is_no_call_as_content(syntax, text):
    got = parse(text, syntax)
    assert got.calls == [] and got.content == text


def test_a_malformed_call_stays_content_beside_good_ones():
    text = ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call> then '
            '<tool_call>{"name": oops}</tool_call>')
    got = parse(text, HERMES)
    assert [c.name for c in got.calls] == ["get_time"]
    assert got.content == ' then <tool_call>{"name": oops}</tool_call>'


# ----- streaming --------------------------------------------------------------------------------------------------

class _Tok:
    eos_ids = ()

    def stream_decoder(self, skip_special_tokens=False, keep=frozenset()):
        return None


def _job(pieces: list[str], finish: str = "stop"):
    """A finished one-sequence Job whose text is `pieces`, and the events a stream of it carried."""
    job = Job([1, 2, 3], GenParams(), _Tok(), stream=True)
    seq = job.seqs[0]
    seq.text, seq.finish_reason = list(pieces), finish
    events = [Event(0, p, finish_reason=finish if k == len(pieces) - 1 else None) for k, p in enumerate(pieces)]
    return job, events


def _cuts(text: str, seed: int) -> list[str]:
    if seed == 0:
        return list(text)  # one character at a time
    rng = random.Random(seed)
    at = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
    return [text[a:b] for a, b in zip([0] + at, at + [len(text)])]


def _fixed_ids(monkeypatch):
    counter = itertools.count()
    monkeypatch.setattr(parser_module, "new_call_id", lambda: f"call_{next(counter)}")


class _Req:
    logprobs = False


@pytest.mark.parametrize("syntax,text", [(s, t) for s, t, _, _ in WELL_FORMED] + NOT_CALLS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stream_reassembles_to_the_whole_response(syntax, text, seed, monkeypatch):
    """OpenAI's client accumulates our chunks (ChatCompletionStreamState) into what the non-streamed response is."""
    _fixed_ids(monkeypatch)
    job, _ = _job([text])
    whole = responses.chat_response(job, "chatcmpl-1", "m", None, False, syntax)
    _fixed_ids(monkeypatch)
    job, events = _job(_cuts(text, seed))
    state = ChatCompletionStreamState()
    for chunk in responses.chat_chunks(events, job, "chatcmpl-1", "m", None, _Req(), [[]], syntax):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk.to_dict()))
    streamed = state.get_final_completion().choices[0]
    want = ChatCompletion.model_validate(whole.to_dict()).choices[0]
    assert streamed.finish_reason == want.finish_reason
    assert (streamed.message.content or None) == (want.message.content or None)
    got_calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in streamed.message.tool_calls or []]
    want_calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in want.message.tool_calls or []]
    assert got_calls == want_calls


def test_stream_deltas_have_openais_order():
    job, events = _job(_cuts('Sure.<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>', 0))
    chunks = [c.to_dict() for c in responses.chat_chunks(events, job, "id", "m", None, _Req(), [[]], HERMES)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function" and calls[0]["id"]
    assert calls[0]["function"] == {"name": "get_time", "arguments": ""}
    assert calls[1] == {"index": 0, "function": {"arguments": '{"tz": "UTC"}'}}
    assert "".join(d["content"] or "" for d in deltas) == "Sure."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_response_json_has_tool_calls_only_where_openai_has_them():
    job, _ = _job(["plain answer"])
    msg = responses.chat_response(job, "id", "m", None, False, HERMES).to_dict()["choices"][0]["message"]
    assert msg == {"content": "plain answer", "role": "assistant"}
    job, _ = _job(['<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'])
    res = responses.chat_response(job, "id", "m", None, False, HERMES).to_dict()
    ChatCompletion.model_validate(res)
    assert res["choices"][0]["finish_reason"] == "tool_calls"
    assert res["choices"][0]["message"]["content"] is None
    assert res["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}


# ----- which syntax a model gets; its markers survive detokenizing --------------------------------------------------

@pytest.fixture(scope="module")
def mistral_v3(tmp_path_factory):
    """Mistral's v3 SentencePiece tokenizer, as mistral-common ships it ([TOOL_CALLS] is control token 5)."""
    folder = tmp_path_factory.mktemp("mistral")
    (folder / "tokenizer.model.v3").write_bytes((MISTRAL_DATA / "mistral_instruct_tokenizer_240323.model.v3")
                                                .read_bytes())
    return Tokenizer.from_files(folder, chat_template="mistral-v3")


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return Tokenizer.from_gguf(smollm2_path)


def test_syntax_for_each_family(mistral_v3, smollm2):
    assert syntax_for(mistral_v3.special_texts, mistral_v3.chat_template) == MISTRAL
    assert syntax_for({"[TOOL_CALLS]": 9, "[ARGS]": 32, "[CALL_ID]": 33}, None) == MISTRAL_V11
    assert syntax_for({}, "{% for m in messages %}<tool_call>{% endfor %}") == HERMES  # Qwen2.5's template says so
    assert syntax_for({"<|python_tag|>": 128010}, None) == LLAMA3
    assert syntax_for(smollm2.special_texts, smollm2.chat_template) == HERMES  # no markers: the ChatML default


def mistral_common_call_tokens(*calls: tuple[str, str]) -> list[int]:
    """The tokens mistral-common's v3 tokenizer writes for an assistant message making `calls` ((name, arguments
    JSON) each): encode a whole round trip and cut the assistant's turn out of it ([/INST] ... </s>)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, ToolMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
    from mistral_common.protocol.instruct.tool_calls import FunctionCall, ToolCall
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    made = [ToolCall(id=f"abcdefgh{k}", function=FunctionCall(name=n, arguments=a)) for k, (n, a) in enumerate(calls)]
    msgs = [UserMessage(content="hi"), AssistantMessage(tool_calls=made)]
    msgs += [ToolMessage(tool_call_id=c.id, content="ok") for c in made]
    ids = MistralTokenizer.v3().encode_chat_completion(MistralRequest(messages=msgs)).tokens
    start = ids.index(4) + 1  # [/INST]
    return ids[start:ids.index(2, start)]  # </s>


def test_mistral_calls_from_mistral_common_tokens_parse_back(mistral_v3):
    """mistral-common encodes an assistant tool call; our detokenizer keeps the marker and the parser recovers it."""
    ids = mistral_common_call_tokens(("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "UTC"}'))
    keep = marker_ids(MISTRAL, mistral_v3.special_texts)
    assert keep == {5}
    dec = mistral_v3.stream_decoder(skip_special_tokens=True, keep=keep)
    text = "".join(dec.feed(i) for i in ids) + dec.flush()
    got = parse(text, MISTRAL)
    assert [(c.name, json.loads(c.arguments)) for c in got.calls] == [("get_weather", {"city": "Paris"}),
                                                                       ("get_time", {"tz": "UTC"})]
    assert got.content is None
    plain = mistral_v3.stream_decoder(skip_special_tokens=True)  # without keep the marker is gone
    assert "[TOOL_CALLS]" not in "".join(plain.feed(i) for i in ids)


# ----- the grammar of a required call ------------------------------------------------------------------------------

def _matcher(grammar: str, tok) -> llguidance.LLMatcher:
    m = llguidance.LLMatcher(ll_tokenizer(tok), llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    assert not m.is_error(), m.get_error()
    return m


def _accepts(m: llguidance.LLMatcher, ids: list[int]) -> bool:
    m.reset()
    return m.validate_tokens(ids) == len(ids) and m.consume_tokens(ids) and m.is_accepting()


def test_grammar_accepts_the_calls_mistral_common_encodes(mistral_v3):
    def encoded(name, args):
        return mistral_common_call_tokens((name, args))

    grammar = call_grammar([WEATHER, TIME], MISTRAL, mistral_v3)
    assert "<[5]>" in grammar  # [TOOL_CALLS] as the control token, not its spelling
    m = _matcher(grammar, mistral_v3)
    assert _accepts(m, encoded("get_weather", '{"city": "Paris"}'))
    assert _accepts(m, encoded("get_time", '{"tz": "UTC"}'))
    assert not _accepts(m, encoded("get_time", '{"city": "Paris"}'))  # tz is required
    assert not _accepts(m, encoded("get_weather", '{"city": 3}'))  # city is a string
    assert not _accepts(m, encoded("launch", '{}'))  # no such tool
    spelled = mistral_v3.encode('[TOOL_CALLS] [{"name": "get_time", "arguments": {"tz": "UTC"}}]',
                                add_special_tokens=False)
    assert not _accepts(m, spelled)  # the marker spelled out of ordinary pieces is no call
    only_time = _matcher(call_grammar([TIME], MISTRAL, mistral_v3), mistral_v3)
    assert not _accepts(only_time, encoded("get_weather", '{"city": "Paris"}'))


@pytest.mark.parametrize("syntax", [HERMES, LLAMA3, MISTRAL, MISTRAL_V11])
def test_grammar_accepts_model_text_of_each_syntax(syntax, smollm2):
    """The fixed model text above (hand-written in each family's syntax) fits the grammar of its syntax."""
    m = _matcher(call_grammar([WEATHER, TIME], syntax, smollm2), smollm2)
    texts = {HERMES: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
             LLAMA3: '{"name": "get_weather", "parameters": {"city": "Paris"}}',
             MISTRAL: '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
             MISTRAL_V11: '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'}
    assert _accepts(m, smollm2.encode(texts[syntax], add_special_tokens=False))
    assert parse(texts[syntax], syntax).calls[0].name == "get_weather"
    for wrong in (texts[syntax].replace('"Paris"', "3"), texts[syntax].replace("get_weather", "get_wether")):
        assert not _accepts(m, smollm2.encode(wrong, add_special_tokens=False))


# ----- request checks ----------------------------------------------------------------------------------------------

def _use(**kw):
    return validation.tool_use(ChatCompletionRequest(messages="x", **kw))


@pytest.mark.parametrize("kw,field", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": {"name": "f"}}, "tools"),
    ({"tool_schemas": ["{not json"]}, "tool_schemas[0]"),
    ({"tools": [WEATHER], "tool_schemas": [WEATHER]}, "tool_schemas"),
    ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_bad_tools_name_the_field(kw, field):
    with pytest.raises(RequestError, match="invalid " + re.escape(field) + ":"):
        _use(**kw)


def test_tool_use_modes():
    assert _use() == validation.ToolUse(None, "none")
    assert _use(tools=[WEATHER]) == validation.ToolUse([WEATHER], "auto")
    assert _use(tools=[WEATHER], tool_choice="none") == validation.ToolUse(None, "none")
    assert _use(tools=[WEATHER], tool_choice="required").mode == "required"
    named = _use(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert (named.mode, named.name) == ("required", "get_time")
    bare = _use(tool_schemas=[json.dumps(WEATHER["function"])])  # mistral.rs: JSON strings of the functions
    assert bare.tools == [WEATHER]
    assert _use(tools=[WEATHER], tool_choice=ToolChoice.Auto).mode == "auto"  # mistral.rs's enum
    assert _use(tools=[WEATHER], tool_choice=ToolChoice.NoTools) == validation.ToolUse(None, "none")


def test_bad_tool_call_messages_name_the_field():
    bad = [{"role": "user", "content": "hi"},
           {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(RequestError, match=r"invalid messages\[1\]\.tool_calls\[0\]\.function\.arguments"):
        validation.messages(bad)
    bad[1]["tool_calls"] = [{"id": "1", "function": {"arguments": "{}"}}]
    with pytest.raises(RequestError, match=r"invalid messages\[1\]\.tool_calls\[0\]"):
        validation.messages(bad)


# ----- tool calls and results through chat templates ---------------------------------------------------------------

ROUND_TRIP = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "Hk2x9Lm0q", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "Hk2x9Lm0q", "content": '{"temperature": 22}'},
    {"role": "assistant", "content": "It is 22 degrees in Paris."},
    {"role": "user", "content": "Thanks!"},
]


def test_round_trip_in_mistral_v3_template_matches_mistral_common():
    from mistral_common.protocol.instruct.messages import AssistantMessage, ToolMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
    from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    fn = WEATHER["function"]
    req = MistralRequest(tools=[Tool(function=Function(**fn))], messages=[
        UserMessage(content=ROUND_TRIP[0]["content"]),
        AssistantMessage(tool_calls=[ToolCall(id="Hk2x9Lm0q", function=FunctionCall(
            name="get_weather", arguments='{"city": "Paris"}'))]),
        ToolMessage(tool_call_id="Hk2x9Lm0q", content=ROUND_TRIP[2]["content"]),
        AssistantMessage(content=ROUND_TRIP[3]["content"]),
        UserMessage(content=ROUND_TRIP[4]["content"])])
    mt = MistralTokenizer.v3()
    want = mt.decode(mt.encode_chat_completion(req).tokens, special_token_policy=SpecialTokenPolicy.KEEP)
    want = want.replace("▁", " ")  # SentencePiece's spaces
    template = BUILTIN_TEMPLATES["mistral-v3"]
    msgs, tools = for_template(validation.messages(ROUND_TRIP), [WEATHER], MISTRAL, template)
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object, as templates expect
    got = render(template, msgs, add_generation_prompt=True, tools=tools, bos_token="<s>", eos_token="</s>")
    assert got == want


def test_round_trip_in_smollm2_template_matches_transformers(smollm2):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert smollm2.chat_template == golden["chat_template"]
    msgs, tools = for_template(validation.messages(golden["round_trip"]), golden["tools"], HERMES,
                               smollm2.chat_template)
    assert tools is None and msgs == golden["converted"]
    assert smollm2.apply_chat_template(msgs, add_generation_prompt=True) == golden["rendered"]


def test_round_trip_in_a_template_that_insists_on_alternation(gemma3_path):
    """The built-in gemma template refuses roles out of turn (a `tool` role, two user turns in a row); the converted
    round trip passes it."""
    gemma3 = Tokenizer.from_gguf(gemma3_path, chat_template="gemma")
    with pytest.raises(TemplateError, match="alternate"):
        gemma3.apply_chat_template(validation.messages(ROUND_TRIP))
    msgs, _ = for_template(validation.messages(ROUND_TRIP[:3] + ROUND_TRIP[2:]), [WEATHER], HERMES,
                           gemma3.chat_template)  # two results of one call in a row become one user turn
    text = gemma3.apply_chat_template(msgs, add_generation_prompt=True)
    assert text.count("<tool_response>") == 2 and text.count("<start_of_turn>user") == 3
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
