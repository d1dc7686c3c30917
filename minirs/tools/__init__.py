"""Tool calls: the syntaxes models write them in, parsing them out of text (whole or streamed), the grammar that
forces one, and tool calls and results in a chat's messages.

    syntax = syntax_for(tokenizer.special_texts, tokenizer.chat_template)   # once per model
    parse('<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>', syntax).calls
    # [ToolCall(name='f', arguments='{"x": 1}', id='call_...')]
"""

from minirs.tools.grammar import call_grammar
from minirs.tools.messages import for_template, write_calls
from minirs.tools.parser import CallParser, Parsed, ToolCall, parse
from minirs.tools.syntax import HERMES, LLAMA3, MISTRAL, MISTRAL_V11, Syntax, marker_ids, syntax_for

__all__ = ["HERMES", "LLAMA3", "MISTRAL", "MISTRAL_V11", "CallParser", "Parsed", "Syntax", "ToolCall", "call_grammar",
           "for_template", "marker_ids", "parse", "syntax_for", "write_calls"]
