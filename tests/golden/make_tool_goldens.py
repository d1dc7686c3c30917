"""Golden file for tool calls in SmolLM2's chat template, rendered by Hugging Face transformers.

SmolLM2's template (from its GGUF) knows no tools: transformers would drop `tools` and an assistant message's
`tool_calls` without a trace. minirs (minirs/tools/messages.py) therefore writes them into the messages as text, in
the model's call syntax (Hermes `<tool_call>` blocks). This script holds, written out by hand, the OpenAI round trip
(a user question, the assistant's tool call, the tool's result, the final answer) and the plain messages that rule
turns it into; transformers renders the plain messages with SmolLM2's own template. The test checks minirs' message
conversion against `converted` and its rendering against `rendered`.

Writes tests/golden/tools_smollm2.json. Run in a venv with transformers (see tests/golden/README.md):
    python tests/golden/make_tool_goldens.py
"""

import json
import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent
SMOLLM2_PATH = Path(os.environ.get("MINIRS_SMOLLM2",
                                   Path.home() / ".cache/minirs/models/SmolLM2-135M-Instruct.Q4_1.gguf"))

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

ROUND_TRIP = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 22, \"sky\": \"clear\"}"},
    {"role": "assistant", "content": "It is 22 degrees and clear in Paris."},
    {"role": "user", "content": "Thanks!"},
]

TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>\n" + json.dumps(WEATHER) + "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")

CONVERTED = [  # the rule of minirs/tools/messages.py, applied by hand
    {"role": "system", "content": TOOLS_BLOCK},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant",
     "content": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"},
    {"role": "user", "content": "<tool_response>\n{\"temperature\": 22, \"sky\": \"clear\"}\n</tool_response>"},
    {"role": "assistant", "content": "It is 22 degrees and clear in Paris."},
    {"role": "user", "content": "Thanks!"},
]


def main() -> None:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SMOLLM2_PATH.parent), gguf_file=SMOLLM2_PATH.name)
    rendered = tok.apply_chat_template(CONVERTED, tokenize=False, add_generation_prompt=True)
    dropped = tok.apply_chat_template(ROUND_TRIP[:1], tools=[WEATHER], tokenize=False, add_generation_prompt=True)
    out = {
        "template_source": f"tokenizer.chat_template of {SMOLLM2_PATH.name}",
        "chat_template": tok.chat_template,
        "renderer": "transformers apply_chat_template(converted, tokenize=False, add_generation_prompt=True)",
        "transformers_version": transformers.__version__,
        "tools": [WEATHER],
        "round_trip": ROUND_TRIP,
        "converted": CONVERTED,
        "rendered": rendered,
        "tools_dropped_by_template": dropped,
    }
    path = GOLDEN_DIR / "tools_smollm2.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
