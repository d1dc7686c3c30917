"""The command line's structured-output flags: a grammar (mistral.rs's types) or JSON mode for every answer.

    python cli.py --prompt "A cat as JSON" --grammar-type json_schema --grammar schema.json
    python cli.py --prompt "A phone number" --grammar-type regex --grammar '\\(\\d{3}\\) \\d{3}-\\d{4}'
    python cli.py --prompt "A cat as JSON" --response-format json_object

`--grammar` is a file path if such a file exists, else the grammar itself. The grammar is compiled once the
tokenizer is loaded; an invalid one is a one-line error naming the flag and llguidance's message.
"""

import argparse
from pathlib import Path

from minirs.errors import MinirsError

GRAMMAR_TYPES = ("regex", "json_schema", "lark", "llguidance")  # minirs.grammar.GRAMMAR_TYPES (imported lazily)


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grammar-type", choices=GRAMMAR_TYPES, default=None,
                   help="constrain every answer to a grammar of this type (with --grammar; default: none)")
    p.add_argument("--grammar", type=str, default=None,
                   help="the grammar for --grammar-type: a file, or the grammar text itself (default: none)")
    p.add_argument("--response-format", choices=["text", "json_object"], default="text",
                   help="json_object: every answer is a JSON object (default: text)")


def grammar_of(args, tok) -> tuple[str, str] | None:
    """GenParams.grammar for the flags, checked against tokenizer `tok`; MinirsError for a bad combination or
    grammar."""
    if (args.grammar is None) != (args.grammar_type is None):
        raise MinirsError("--grammar and --grammar-type go together: give both or neither")
    if args.grammar is not None and args.response_format != "text":
        raise MinirsError("--response-format json_object and --grammar exclude each other: give one")
    if args.grammar is not None:
        path = Path(args.grammar)
        try:
            text = path.read_text(encoding="utf-8") if len(args.grammar) < 4096 and path.is_file() else args.grammar
        except (OSError, UnicodeDecodeError) as e:
            raise MinirsError(f"--grammar: cannot read {args.grammar!r}: {e}") from None
        grammar = (args.grammar_type, text)
    elif args.response_format == "json_object":
        grammar = ("json_schema", '{"type": "object"}')
    else:
        return None
    from minirs.grammar import compile_grammar
    compile_grammar(*grammar, tok, field="--grammar" if args.grammar is not None else "--response-format")
    return grammar
