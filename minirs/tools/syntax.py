"""The tool-call syntaxes our model families write, and which one a model gets (decided once, from its tokenizer).

    mistral   [TOOL_CALLS] [{"name": "f", "arguments": {...}, "id": "a1b2c3d4e"}]       Mistral v2/v3 (id optional)
    mistral   [TOOL_CALLS]f[CALL_ID]a1b2c3d4e[ARGS]{...}[TOOL_CALLS]g[ARGS]{...}      Mistral tokenizer v11+ (Tekken)
    hermes    <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>              Hermes, Qwen2/2.5, ChatML
    llama3    <|python_tag|>{"name": "f", "parameters": {...}}   or the bare object    Llama 3.1+ (JSON tool calling)

Both Mistral forms are parsed by one parser (mistral-common writes the first up to tokenizer v7, the second from
v11: `InstructTokenizerV11._encode_tool_calls_in_assistant_message`); `args_token` says which one the model writes,
which matters for the constrained-call grammar and for rendering calls into a prompt. A model with none of the
markers in its vocabulary or template gets `hermes`: plain-text tags any tokenizer can spell, and the format the
ChatML-trained families (SmolLM2's larger siblings, Qwen2) were taught.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Syntax:
    name: str              # "mistral", "hermes" or "llama3"
    start: str             # the marker a call begins with (the only place the parser looks for calls)
    end: str = ""          # the marker a call ends with, where the syntax has one
    args_token: str = ""   # Mistral v11+: "[ARGS]" between the name and the arguments
    call_id_token: str = ""  # Mistral v11: "[CALL_ID]" between the name and [ARGS] (v13 writes no id)


MISTRAL = Syntax("mistral", "[TOOL_CALLS]")
MISTRAL_V11 = Syntax("mistral", "[TOOL_CALLS]", args_token="[ARGS]", call_id_token="[CALL_ID]")
HERMES = Syntax("hermes", "<tool_call>", "</tool_call>")
LLAMA3 = Syntax("llama3", "<|python_tag|>")


def syntax_for(special_texts, chat_template: str | None) -> Syntax:
    """The syntax a model writes calls in, from its special tokens (text -> id) and its chat template."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in special_texts or "[TOOL_CALLS]" in template:
        return MISTRAL_V11 if "[ARGS]" in special_texts or "[ARGS]" in template else MISTRAL
    if "<tool_call>" in special_texts or "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in special_texts or "<|python_tag|>" in template:
        return LLAMA3
    return HERMES


def marker_ids(syntax: Syntax, special_texts) -> frozenset:
    """The ids of the syntax's markers that are special tokens: the detokenizer must keep them, or the parser
    would never see where a call starts."""
    texts = (syntax.start, syntax.end, syntax.args_token, syntax.call_id_token)
    return frozenset(special_texts[t] for t in texts if t and t in special_texts)
