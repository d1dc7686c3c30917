"""Structured output with the real SmolLM2-135M on the CPU: JSON schemas (nested objects, enums, arrays with
minItems, integer ranges, required fields), regexes, a Lark grammar and JSON mode, each output checked by an
independent parser (jsonschema, re.fullmatch, the lark package, json); 16 concurrent requests, half constrained and
half free; and every bad grammar field raising RequestError that names the field before the request joins a batch.
"""

import json
import math
import re
import threading

import jsonschema
import lark
import pytest

from minirs import ChatCompletionRequest, CompletionRequest, RequestError, Runner, Which

PERSON = {"type": "object", "additionalProperties": False,
          "required": ["name", "role", "age", "address", "tags"],
          "properties": {
              "name": {"type": "string", "maxLength": 20},
              "role": {"type": "string", "enum": ["admin", "user", "guest"]},
              "age": {"type": "integer", "minimum": 18, "maximum": 99},
              "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                          "properties": {"city": {"type": "string", "maxLength": 20},
                                         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
              "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 2,
                       "maxItems": 3}}}
CAT = {"type": "object", "additionalProperties": False, "required": ["name", "lives"],
       "properties": {"name": {"type": "string", "maxLength": 12}, "lives": {"type": "integer", "minimum": 1,
                                                                               "maximum": 9}}}
PHONE = r"\(\d{3}\) \d{3}-\d{4}"
ARITH = r"""start: expr
expr: term (("+" | "-") term)*
term: NUMBER (("*" | "/") NUMBER)*
NUMBER: /[0-9]{1,3}/
"""


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # the 2 CI cores are shared


@pytest.fixture(scope="module")
def runner(smollm2_path):
    r = Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
               device="cpu", seed=1, max_seqs=16)
    yield r
    r.shutdown()


def chat(runner, content, **kw):
    kw.setdefault("temperature", 0.0)
    res = runner.send_chat_completion_request(ChatCompletionRequest(
        messages=[{"role": "user", "content": content}], **kw), timeout=300)
    return res.choices[0]


def test_json_schema_nested_enum_array_range(runner):
    c = chat(runner, "Describe a user account as JSON.", max_tokens=120, grammar=json.dumps(PERSON),
             grammar_type="json_schema")
    assert c.finish_reason == "stop", c.message.content
    jsonschema.validate(json.loads(c.message.content), PERSON)
    # laid out as json.dumps lays it out: no whitespace for a model to loop on until max_tokens cuts it short
    assert json.dumps(json.loads(c.message.content)) == c.message.content


def test_response_format_json_schema_and_json_object(runner):
    c = chat(runner, "Give me a JSON object describing a cat.", max_tokens=60,
             response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": CAT, "strict": True}})
    assert c.finish_reason == "stop"
    jsonschema.validate(json.loads(c.message.content), CAT)
    c = chat(runner, 'Reply with the JSON object {"ok": true} and nothing else.', max_tokens=40,
             response_format={"type": "json_object"})
    assert c.finish_reason == "stop", c.message.content
    assert isinstance(json.loads(c.message.content), dict)


def test_regex_and_lark(runner):
    c = chat(runner, "Give a US phone number.", max_tokens=20, grammar=PHONE, grammar_type="regex")
    assert c.finish_reason == "stop" and re.fullmatch(PHONE, c.message.content), c.message.content
    c = chat(runner, "Write an arithmetic expression.", max_tokens=30, grammar=ARITH, grammar_type="lark")
    assert c.finish_reason == "stop"
    lark.Lark(ARITH).parse(c.message.content)  # raises if the lark package does not accept it
    res = runner.send_completion_request(CompletionRequest(prompt="Is the sky blue? The answer is", max_tokens=8,
                                                           temperature=0.0, grammar=" ?(yes|no)",
                                                           grammar_type="regex"))
    assert re.fullmatch(" ?(yes|no)", res.choices[0].text) and res.choices[0].finish_reason == "stop"


def test_logprobs_come_from_the_masked_distribution(runner):
    """The first token's logprob under a two-word grammar is at least the free one (renormalised over fewer
    tokens), and its top alternatives are only tokens the grammar allows."""
    kw = dict(prompt="Is the sky blue? The answer is", max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5)
    free = runner.send_completion_request(CompletionRequest(**kw)).choices[0].logprobs.content[0]
    bound = runner.send_completion_request(CompletionRequest(**kw, grammar=" ?(yes|no)", grammar_type="regex"))
    first = bound.choices[0].logprobs.content[0]
    finite = [t for t in first.top_logprobs if t.logprob > -float("inf")]
    assert finite and all(any(w.startswith(t.bytes) for w in ("yes", "no", " yes", " no")) for t in finite), finite
    assert sum(math.exp(t.logprob) for t in finite) <= 1 + 1e-9
    same = [t for t in free.top_logprobs if t.bytes == first.token]
    assert same, (free.top_logprobs, first.token)  # the constrained pick is among the free top 5 here
    assert first.logprob > same[0].logprob


def test_sixteen_concurrent_half_constrained(runner):
    """8 free and 8 constrained chat requests at once: every free one equals its greedy run alone, every
    constrained one validates."""
    questions = ["What is the capital of France?", "Name a color.", "Say hello.", "What is 2+2?",
                 "Name a fruit.", "Who wrote Hamlet?", "Name a planet.", "What day comes after Monday?"]
    alone = [chat(runner, q, max_tokens=10).message.content for q in questions]
    constrained = [(dict(grammar=PHONE, grammar_type="regex"), lambda s: re.fullmatch(PHONE, s)),
                   (dict(response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": CAT}}),
                    lambda s: jsonschema.validate(json.loads(s), CAT) is None)] * 4
    results: dict = {}

    def go(key, content, kw):
        results[key] = chat(runner, content, **kw)

    threads = [threading.Thread(target=go, args=(("free", i), q, dict(max_tokens=10)))
               for i, q in enumerate(questions)]
    threads += [threading.Thread(target=go, args=(("bound", i), "Give a phone number or a cat as JSON.",
                                                  dict(max_tokens=48, **kw)))
                for i, (kw, _) in enumerate(constrained)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results["free", i].message.content for i in range(8)] == alone
    for i, (_, valid) in enumerate(constrained):
        c = results["bound", i]
        assert c.finish_reason == "stop" and valid(c.message.content), c.message.content


BAD = [  # request fields, the field named in the error, words of the grammar's own message
    (dict(grammar="a(b", grammar_type="regex"), "grammar", "unclosed group"),
    (dict(grammar='{"type": "foo"}', grammar_type="json_schema"), "grammar", "foo"),
    (dict(grammar="{bad", grammar_type="json_schema"), "grammar", "not valid JSON"),
    (dict(grammar="start: foo", grammar_type="lark"), "grammar", "unknown name"),
    (dict(grammar='{"grammars": 3}', grammar_type="llguidance"), "grammar", ""),
    (dict(grammar="a+", grammar_type="xml"), "grammar_type", "xml"),
    (dict(grammar="a+"), "grammar", "without grammar_type"),
    (dict(grammar_type="regex"), "grammar_type", "without grammar"),
    (dict(grammar="", grammar_type="regex"), "grammar", "non-empty"),
    (dict(response_format={"type": "xml"}), "response_format", "json_object"),
    (dict(response_format={"type": "json_schema"}), "response_format.json_schema", "name"),
    (dict(response_format={"type": "json_schema", "json_schema": {"schema": CAT}}),
     "response_format.json_schema.name", "non-empty"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
     "response_format.json_schema.schema", "schema"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}),
     "response_format", "foo"),
    (dict(response_format={"type": "json_object"}, grammar="a+", grammar_type="regex"), "response_format",
     "one or the other"),
]


@pytest.mark.parametrize("fields,field,words", BAD)
def test_bad_grammar_fields(runner, fields, field, words):
    steps = runner.engine.steps
    for req in (ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], **fields),
                CompletionRequest(prompt="Hi", **fields)):
        send = (runner.send_chat_completion_request if isinstance(req, ChatCompletionRequest)
                else runner.send_completion_request)
        with pytest.raises(RequestError, match=f"invalid {re.escape(field)}[ :(]") as e:
            send(req)
        assert words in str(e.value)
    assert runner.engine.steps == steps and runner.engine.inbox.empty()
