"""Tool calls with the real SmolLM2-135M-Instruct on the CPU: a required call (two tools) and a named one come back as
`tool_calls` whose arguments validate against the tool's schema (jsonschema), a streamed call reassembles (OpenAI's
client code) to the whole response, "none" hides the tools, and a chat's tool round trip renders as SmolLM2's
transformers golden. Greedy and short: a call is ~30 tokens.
"""

import json
from pathlib import Path

import jsonschema
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from minirs import ChatCompletionRequest, RequestError, Runner, Which
from minirs.load import cuda_available

T = 300  # seconds: nothing may hang
GOLDEN = Path(__file__).parent / "golden" / "tools_smollm2.json"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 1000},
        "b": {"type": "integer", "minimum": 0, "maximum": 1000}},
        "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
Q = [{"role": "user", "content": "What is the weather like in Paris?"}]


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # the 2 CI cores are shared


@pytest.fixture(scope="module")
def runner(smollm2_path):
    r = Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
               device="cpu", seed=1)
    yield r
    r.shutdown()


def chat(runner, **kw):
    kw.setdefault("max_tokens", 64)
    return runner.send_chat_completion_request(ChatCompletionRequest(messages=kw.pop("messages", Q), **kw), T)


def check_call(choice, names):
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id
    tool = next(t for t in TOOLS if t["function"]["name"] == calls[0].function.name)
    assert tool["function"]["name"] in names
    jsonschema.validate(json.loads(calls[0].function.arguments), tool["function"]["parameters"])
    return calls[0]


def test_required_call_to_one_of_two_tools_validates(runner):
    res = chat(runner, tools=TOOLS, tool_choice="required")
    ChatCompletion.model_validate(res.to_dict())
    check_call(res.choices[0], {"get_weather", "add"})


def test_named_function_is_the_one_called(runner):
    res = chat(runner, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}},
               messages=[{"role": "user", "content": "What is 12 plus 30?"}])
    assert check_call(res.choices[0], {"add"}).function.name == "add"


def test_streamed_call_reassembles_to_the_whole_response(runner):
    kw = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    whole = chat(runner, **kw).choices[0]
    state = ChatCompletionStreamState()
    for chunk in chat(runner, stream=True, **kw):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk.to_dict()))
    streamed = state.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    check_call(whole, {"get_weather"})


def test_none_hides_the_tools_and_auto_shows_them(runner):
    plain = chat(runner, max_tokens=1).usage.prompt_tokens
    assert chat(runner, max_tokens=1, tools=TOOLS, tool_choice="none").usage.prompt_tokens == plain
    assert chat(runner, max_tokens=1, tools=TOOLS).usage.prompt_tokens > plain + 100


def test_tool_round_trip_renders_as_transformers_does(runner):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    res = chat(runner, max_tokens=1, messages=golden["round_trip"], tools=golden["tools"])
    ids = runner.tokenizer.encode(golden["rendered"], add_special_tokens=False, parse_special=True)
    assert res.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("kw,field", [
    ({"tools": [{"type": "function", "function": {"parameters": {"type": "object"}}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "no-such-type"}}}}}], "tool_choice": "required"}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_tools_raise_before_the_request_runs(runner, kw, field):
    with pytest.raises(RequestError, match=f"invalid {field}".replace("[", r"\[").replace("]", r"\]")):
        chat(runner, **kw)
    assert chat(runner, max_tokens=2).choices[0].message.content  # the runner still serves


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")
def test_required_and_named_calls_on_the_gpu(smollm2_path):
    """The same forced calls with the model on the GPU (the grammar's mask applied in the device's sampling)."""
    with Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
                device="cuda", seed=1) as gpu:
        check_call(chat(gpu, tools=TOOLS, tool_choice="required").choices[0], {"get_weather", "add"})
        named = {"type": "function", "function": {"name": "add"}}
        whole = chat(gpu, tools=TOOLS, tool_choice=named, messages=[{"role": "user", "content": "What is 2 + 3?"}])
        check_call(whole.choices[0], {"add"})
        state = ChatCompletionStreamState()
        for chunk in chat(gpu, tools=TOOLS, tool_choice=named, stream=True,
                          messages=[{"role": "user", "content": "What is 2 + 3?"}]):
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk.to_dict()))
        streamed = state.get_final_completion().choices[0]
        assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
            [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
