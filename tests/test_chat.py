"""Chat templates: SmolLM2's own template against transformers' rendering (golden), the built-in templates, the
transformers extensions real templates use, and the sandbox against template injection (CVE-2024-34359)."""

import json
from pathlib import Path

import pytest

from minirs.errors import TemplateError
from minirs.tokenizer import Tokenizer
from minirs.tokenizer.chat import BUILTIN_TEMPLATES, render, resolve_template

GOLDEN = Path(__file__).parent / "golden" / "chat_smollm2.json"

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return Tokenizer.from_gguf(smollm2_path)


def test_smollm2_template_matches_transformers(smollm2):
    if not GOLDEN.exists():
        pytest.skip("chat golden not generated yet (python tests/golden/make_goldens.py --only chat)")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert smollm2.chat_template == golden["chat_template"]
    for case in golden["cases"]:
        text = smollm2.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"])
        assert text == case["rendered"]
        assert smollm2.encode(text, add_special_tokens=False, parse_special=True) == case["ids"]


EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
              "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
    "llama-2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]",
    "llama-3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
               "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\n",
    "mistral-v1": "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] 2+2? [/INST]",
    "mistral-v3": "<s>[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\n2+2?[/INST]",
    "gemma": "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
             "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n",
    "phi-3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\n2+2?<|end|>\n"
             "<|assistant|>\n",
}


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_templates(name):
    out = render(BUILTIN_TEMPLATES[name], CONVERSATION, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert out == EXPECTED[name]


def test_mistral_v3_tools():
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "2+2?"},
            {"role": "assistant", "tool_calls": [{"id": "abc123xyz", "function": {"name": "add",
                                                                                  "arguments": {"a": 2, "b": 2}}}]},
            {"role": "tool", "tool_call_id": "abc123xyz", "content": "4"},
            {"role": "user", "content": "Thanks"}]
    out = render(BUILTIN_TEMPLATES["mistral-v3"], msgs, tools=tools, bos_token="<s>", eos_token="</s>")
    assert out == ('<s>[INST] 2+2?[/INST]'
                   '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2, "b": 2}, "id": "abc123xyz"}]'
                   '</s>[TOOL_RESULTS] {"content": "4", "call_id": "abc123xyz"}[/TOOL_RESULTS]'
                   '[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "add", "parameters": {"type": '
                   '"object"}}}][/AVAILABLE_TOOLS][INST] Thanks[/INST]')


def test_alternation_is_enforced():
    with pytest.raises(TemplateError, match="alternate"):
        render(BUILTIN_TEMPLATES["llama-2"], [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_gemma3_with_builtin_template(gemma3_path):
    tok = Tokenizer.from_gguf(gemma3_path, chat_template="gemma")
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(text, add_special_tokens=False, parse_special=True)
    assert ids[:2] == [2, tok.tokens.index("<start_of_turn>")]
    with pytest.raises(TemplateError, match="no chat template"):
        Tokenizer.from_gguf(gemma3_path).apply_chat_template([{"role": "user", "content": "Hi"}])


def test_transformers_extensions():
    template = ("{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}{% if m.role == 'skip' %}"
                "{% continue %}{% endif %}{{ m.content | tojson }};{% endfor %}{{ tools | tojson(indent=None) }}"
                "{{ strftime_now('%Y') | length }}{% generation %}[gen]{% endgeneration %}{{ bos_token }}")
    msgs = [{"role": "u", "content": "<b>é</b>"}, {"role": "skip", "content": "x"}, {"role": "u", "content": "no"}]
    out = render(template, msgs, tools=[{"a": 1}], bos_token="<s>")
    assert out == '"<b>é</b>";[{"a": 1}]4[gen]<s>'  # tojson neither escapes HTML nor non-ASCII


def test_raise_exception_is_template_error():
    with pytest.raises(TemplateError, match="no system role"):
        render("{{ raise_exception('no system role') }}", [])


CVE_PAYLOADS = [
    # CVE-2024-34359 (llama-cpp-python): walk from a str to subprocess.Popen and run a command
    ("{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
     "{{ c(['touch', '{marker}']) }}{% endif %}{% endfor %}"),
    "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ self._TemplateReference__context.joiner.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set x = messages.append({'role': 'x'}) %}{{ messages | length }}",  # the immutable sandbox: no mutation
]


@pytest.mark.parametrize("payload", CVE_PAYLOADS)
def test_sandbox_blocks_template_injection(payload, tmp_path):
    marker = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError, match="sandbox forbids|unsafe|immutable"):
        render(payload.replace("{marker}", str(marker)), messages)
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hi"}]


def test_syntax_error_is_template_error():
    with pytest.raises(TemplateError, match="syntax error"):
        render("{% for m in messages %}", [])


def test_resolve_template(tmp_path):
    assert resolve_template("chatml") == BUILTIN_TEMPLATES["chatml"]
    assert resolve_template("{{ 'x' }}") == "{{ 'x' }}"
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0].content }}")
    assert resolve_template(str(f)) == "{{ messages[0].content }}"
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"chat_template": "{{ 'cfg' }}"}))
    assert resolve_template(str(cfg)) == "{{ 'cfg' }}"
    with pytest.raises(TemplateError, match="built-in name"):
        resolve_template("no-such-template")
