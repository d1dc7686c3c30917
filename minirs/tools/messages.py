"""Tool calls and results in a chat's messages, made ready for the model's chat template.

A template that knows tools (it mentions them: Mistral v3, Qwen2.5, Llama 3.1...) gets the messages as the HF
templates expect them: an assistant call's `arguments` as an object, not OpenAI's JSON string (templates write
`arguments | tojson`; mistral-common and vLLM convert the same way), and for Mistral a tool result that is JSON
as its value, as mistral-common encodes it (`_parse_json_content`). A template that does not (SmolLM2's, plain
ChatML, Gemma's) would drop the tools and the calls silently; it gets them as text instead, in the model's own
call syntax:
  * the tools, and how to call them, in the system message (a new one first, or appended to the one given);
  * an assistant message's calls as its content, written as the model would write them;
  * tool results as a user message of <tool_response> blocks (consecutive results in one message, so templates
    that insist on alternating roles accept them), as Qwen2.5's template writes them.
"""

import json

from minirs.tools.syntax import Syntax

_HOW = {
    "hermes": "For each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call>",
    "mistral": "To call functions, write [TOOL_CALLS] followed by a JSON list of calls: "
               "[TOOL_CALLS] [{\"name\": <function-name>, \"arguments\": <args-json-object>}]",
    "llama3": "To call a function, respond with only a JSON object of the form "
              "{\"name\": <function-name>, \"parameters\": <args-json-object>}",
}


def knows_tools(template: str | None) -> bool:
    return template is not None and "tool" in template


def for_template(messages: list[dict], tools: list | None, syntax: Syntax, template: str | None):
    """(messages, tools) to render with `template`: see the module docstring."""
    if knows_tools(template):
        msgs = [_object_arguments(m) for m in messages]
        if syntax.name == "mistral":  # mistral-common writes a JSON tool result as the value it holds
            msgs = [{**m, "content": _json_or_text(m["content"])} if m["role"] == "tool" else m for m in msgs]
        return msgs, tools
    out = []
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = write_calls([_call_object(c) for c in m["tool_calls"]], syntax)
            text = m["content"] + "\n" + calls if m["content"] else calls
            out.append({"role": "assistant", "content": text})
        else:
            out.append(m)
    out = [{k: v for k, v in m.items() if k != "tool_results"} for m in out]
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        block = (f"# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                 f"with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\n"
                 f"{_HOW[syntax.name]}")
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, None


def write_calls(calls: list[dict], syntax: Syntax) -> str:
    """Calls ({"name", "arguments" (an object), "id"}) as the model writes them."""
    if syntax.name == "hermes":
        return "\n".join("<tool_call>\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]},
                                                      ensure_ascii=False) + "\n</tool_call>" for c in calls)
    if syntax.name == "llama3":
        return "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}, ensure_ascii=False)
                         for c in calls)
    if syntax.args_token:
        return "".join(f"[TOOL_CALLS]{c['name']}[ARGS]{json.dumps(c['arguments'], ensure_ascii=False)}"
                       for c in calls)
    return "[TOOL_CALLS] " + json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls],
                                        ensure_ascii=False)


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _args(value):
    return json.loads(value) if isinstance(value, str) else value


def _call_object(call: dict) -> dict:
    fn = call["function"]
    return {"name": fn["name"], "arguments": _args(fn.get("arguments", {})), "id": call.get("id")}


def _object_arguments(m: dict) -> dict:
    if not m.get("tool_calls"):
        return m
    calls = [{**c, "function": {**c["function"], "arguments": _args(c["function"].get("arguments", {}))}}
             for c in m["tool_calls"]]
    return {**m, "tool_calls": calls}
