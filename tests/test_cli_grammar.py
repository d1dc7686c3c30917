"""The command line's structured-output flags with the real SmolLM2: a JSON schema from a file gives an answer
that validates (jsonschema), and a bad grammar is a one-line error naming the flag."""

import json

import jsonschema
import pytest

from minirs.cli import main

CAT = {"type": "object", "additionalProperties": False, "required": ["name", "lives"],
       "properties": {"name": {"type": "string", "maxLength": 12},
                      "lives": {"type": "integer", "minimum": 1, "maximum": 9}}}


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # the 2 CI cores are shared


def test_json_schema_file(smollm2_path, tmp_path, capsys):
    schema = tmp_path / "cat.json"
    schema.write_text(json.dumps(CAT))
    assert main(["--gguf", str(smollm2_path), "--prompt", "A cat as JSON.", "--max-tokens", "48", "--temperature",
                 "0", "--grammar-type", "json_schema", "--grammar", str(schema), "--quiet", "--device", "cpu"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), CAT)


def test_bad_grammar_flags(smollm2_path, capsys):
    base = ["--gguf", str(smollm2_path), "--prompt", "Hi", "--quiet", "--device", "cpu"]
    assert main(base + ["--grammar-type", "regex", "--grammar", "a(b"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minirs: error: invalid --grammar (regex):") and "unclosed group" in err
    assert main(base + ["--grammar", "a+"]) == 1
    assert "--grammar and --grammar-type go together" in capsys.readouterr().err


def test_flag_choices_are_the_grammar_types():
    """cli_grammar keeps its own copy (the CLI parses its flags without importing llguidance)."""
    from minirs import cli_grammar
    from minirs.grammar import GRAMMAR_TYPES
    assert cli_grammar.GRAMMAR_TYPES == GRAMMAR_TYPES
