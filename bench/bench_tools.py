"""What tool calls cost: the parser on every streamed piece of a response, and a forced call on the real SmolLM2.

    python bench/bench_tools.py                 # parser per piece (each syntax), then forced calls on the CPU
    python bench/bench_tools.py --no-model      # the parser only

The parser runs in the caller's thread for every streamed piece of a request that offered tools (minirs/tools):
"plain" is a response with no call (what every "auto" answer in words pays), "calls" one with calls in the
family's syntax. The text is cut into word-sized pieces, as a stream hands them over. The forced calls are
tool_choice="required" (two tools) and a named function, greedy, with the time per generated token beside a free
answer of the same length (max_tokens = the call's token count, no stop) from the same prompt.
"""

import argparse
import statistics
import time

from minirs.tools import HERMES, LLAMA3, MISTRAL, MISTRAL_V11, CallParser

PLAIN = ("The weather in Paris today is mild, with clouds in the morning and sun in the afternoon. " * 20).strip()
CALLS = {
    HERMES: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    MISTRAL: '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
    MISTRAL_V11: '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
    LLAMA3: '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
}
NAMES = {HERMES: "hermes", MISTRAL: "mistral", MISTRAL_V11: "mistral-v11", LLAMA3: "llama3"}


def pieces(text: str) -> list[str]:
    """Cut like a tokenizer: a word with its leading space, punctuation on its own."""
    out, cur = [], ""
    for ch in text:
        if ch in " {}[]\":,<>\n" and cur:
            out.append(cur)
            cur = ""
        cur += ch
    return out + ([cur] if cur else [])


def per_piece_us(syntax, text: str, repeat: int) -> float:
    cut = pieces(text)
    times = []
    for _ in range(repeat):
        p = CallParser(syntax)
        t = time.perf_counter()
        for piece in cut:
            p.feed(piece)
        p.finish()
        times.append((time.perf_counter() - t) / len(cut) * 1e6)
    return statistics.median(times)


def model_rows(max_tokens: int) -> None:
    import numba

    from minirs import ChatCompletionRequest, Runner, Which
    from minirs.fetch import smollm2_path
    numba.set_num_threads(1)
    path = smollm2_path()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
    q = [{"role": "user", "content": "What is the weather like in Paris?"}]
    with Runner(Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name), device="cpu") as r:
        def run(**kw):
            res = r.send_chat_completion_request(ChatCompletionRequest(messages=q, tools=tools, temperature=0.0,
                                                                       **kw))
            u = res.usage
            return u.completion_tokens, u.total_completion_time_sec / max(u.completion_tokens - 1, 1) * 1e3, res
        run(tool_choice="required", max_tokens=max_tokens)  # compiles what the first run needs
        for name, choice in (("required", "required"), ("named", {"type": "function", "function": {"name": "add"}})):
            n, ms, res = run(tool_choice=choice, max_tokens=max_tokens)
            n_free, ms_free, _ = run(tool_choice="none", max_tokens=n, stop_token_ids=None)
            call = res.choices[0].message.tool_calls[0].function
            print(f"  {name:9s} {n:3d} tokens  {ms:6.1f} ms/token  (free, {n_free} tokens: {ms_free:6.1f} ms/token)"
                  f"  {call.name}({call.arguments})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="parser runs per row (the median is shown)")
    ap.add_argument("--no-model", action="store_true", help="skip the forced calls on SmolLM2")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of a forced call")
    args = ap.parse_args()
    print("parser, microseconds per streamed piece (median):")
    for syntax, call in CALLS.items():
        plain = per_piece_us(syntax, PLAIN, args.repeat)
        calls = per_piece_us(syntax, call if syntax is LLAMA3 else "Let me check. " + call, args.repeat)
        print(f"  {NAMES[syntax]:12s} plain {plain:6.2f}   with a call {calls:6.2f}")
    if not args.no_model:
        print("forced calls, SmolLM2-135M Q4_1, CPU, one Numba thread:")
        model_rows(args.max_tokens)


if __name__ == "__main__":
    main()
