"""Chat templates at their limits (issue 20): `read_template` on literals too long to be file names, and templates
from untrusted model files that try to exhaust time, memory or the stack. Every such template must fail fast with a
TemplateError, while ordinary templates (tests/test_chat.py) keep rendering exactly."""

import json

import pytest

from minirs.errors import TemplateError
from minirs.tokenizer.chat import read_template, resolve_template

# SmolLM2-135M-Instruct's own template: 368 characters and not one "/", so all of it is a single path component.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# ----- item 9: read_template never mistakes a literal for a path ---------------------------------------------------

def test_read_template_takes_a_long_literal():
    assert len(SMOLLM2) == 368 and "/" not in SMOLLM2
    assert read_template(SMOLLM2) == SMOLLM2
    assert resolve_template(SMOLLM2) == SMOLLM2


@pytest.mark.parametrize("text", ["x" * 300, "a" * 5000, "nul\x00byte", "/" + "y" * 300 + "/z"])
def test_read_template_path_check_that_errors_means_not_a_file(text):
    assert read_template(text) == text  # not a file: passed on as it is (resolve_template judges it later)
    with pytest.raises(TemplateError, match="not a Jinja template"):
        resolve_template(text)


def test_read_template_files(tmp_path):
    assert read_template(None) is None
    (tmp_path / "t.jinja").write_text("{{ 'jinja' }}")
    assert read_template(str(tmp_path / "t.jinja")) == "{{ 'jinja' }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ 'cfg' }}"}))
    assert read_template(str(tmp_path / "tokenizer_config.json")) == "{{ 'cfg' }}"
    named = [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": "{{ 'dflt' }}"}]
    (tmp_path / "named.json").write_text(json.dumps({"chat_template": named}))
    assert read_template(str(tmp_path / "named.json")) == "{{ 'dflt' }}"
    assert read_template("chatml") == "chatml"  # a built-in name: resolved later


@pytest.mark.parametrize("content", [{"chat_template": 5}, {"other": "{{ x }}"}, ["chat_template"], "just text",
                                     {"chat_template": [{"name": "tool_use", "template": "{{ x }}"}]}])
def test_read_template_json_without_a_template_string(tmp_path, content):
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps(content))
    with pytest.raises(TemplateError, match="no 'chat_template' string"):
        read_template(str(path))
    with pytest.raises(TemplateError, match="no 'chat_template' string"):
        resolve_template(str(path))


def test_read_template_bad_files(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(TemplateError, match="not valid JSON"):
        read_template(str(tmp_path / "broken.json"))
    (tmp_path / "latin1.jinja").write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(TemplateError, match="cannot read it"):
        read_template(str(tmp_path / "latin1.jinja"))


@pytest.mark.parametrize("value", [5, b"{{ x }}", ["{{ x }}"], {"chat_template": "x"}])
def test_read_template_refuses_non_strings(value):
    with pytest.raises(TemplateError, match="must be a str"):
        read_template(value)
    with pytest.raises(TemplateError, match="must be a str"):
        resolve_template(value)
