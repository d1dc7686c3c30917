"""Chat templates: turn a list of messages into the prompt string a model was trained on.

Templates are Jinja2, read from the model file (tokenizer.chat_template), a tokenizer_config.json, a file, a
literal, or one of the built-ins below for files that carry none. They render with what transformers provides
(`raise_exception`, `strftime_now`, a `tojson` that does not HTML-escape, `bos_token`/`eos_token`, loop controls,
`tools`, the `{% generation %}` tag), so real templates give the same string as `tokenizer.apply_chat_template`.

Templates come from untrusted files. They render in Jinja2's ImmutableSandboxedEnvironment, and reaching for an
unsafe attribute (`''.__class__.__mro__`..., the attack behind CVE-2024-34359 in llama-cpp-python) stops the render
at once with a `TemplateError`, rather than yielding an undefined value the template could keep probing. The sandbox
is also bounded in time, size and depth (`sandbox.py`), so a template bomb is a `TemplateError` too.

    render(BUILTIN_TEMPLATES["chatml"], [{"role": "user", "content": "Hi"}])
    # '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import SecurityError

from minirs.errors import TemplateError, quote
from minirs.tokenizer import sandbox

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

_ALTERNATE = ("{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}")

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}" + _ALTERNATE +
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")

LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# Mistral v1 (Mistral-7B-Instruct-v0.1/v0.2): spaces inside [INST] ... [/INST]; a system prompt goes before the
# first user message.
MISTRAL_V1 = ("{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] + '\\n\\n' %}"
              "{% set loop_messages = messages[1:] %}{% else %}{% set system_message = '' %}"
              "{% set loop_messages = messages %}{% endif %}{{ bos_token }}{% for message in loop_messages %}"
              + _ALTERNATE +
              "{% if message['role'] == 'user' %}"
              "{{ '[INST] ' + (system_message if loop.first else '') + message['content'] + ' [/INST]' }}"
              "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}")

# Mistral v3 (Mistral-7B-Instruct-v0.3 and its tokenizer.model.v3): tools are listed before the last user message,
# the system prompt is prepended to the last user message, tool calls and results have their own control tokens.
MISTRAL_V3 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if tools and (message == user_messages[-1]) %}
            {{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}
        {%- endif %}
        {%- if system_message is defined and message == user_messages[-1] %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' and message.tool_calls %}
        {%- set ns = namespace(calls=[]) %}
        {%- for call in message.tool_calls %}
            {%- set f = call.function if call.function is defined else call %}
            {%- set ns.calls = ns.calls + [{'name': f.name, 'arguments': f.arguments, 'id': call.id}] %}
        {%- endfor %}
        {{- '[TOOL_CALLS] ' + ns.calls | tojson + eos_token }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] | trim + eos_token }}
    {%- elif message['role'] == 'tool' %}
        {{- '[TOOL_RESULTS] ' + {'content': message['content'], 'call_id': message.tool_call_id} | tojson }}
        {{- '[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception('Only user, assistant and tool roles are supported, with an optional system first.') }}
    {%- endif %}
{%- endfor %}"""

GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
         "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
         "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
         "{% for message in loop_messages %}" + _ALTERNATE +
         "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
         "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
         " + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")

PHI3 = ("{% for message in messages %}{% if message['role'] in ['system', 'user', 'assistant'] %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

BUILTIN_TEMPLATES = {
    "chatml": CHATML,
    "llama-2": LLAMA2,
    "llama-3": LLAMA3,
    "mistral-v1": MISTRAL_V1,
    "mistral-v3": MISTRAL_V3,
    "gemma": GEMMA,
    "phi-3": PHI3,
}


def resolve_template(value: str) -> str:
    """A chat_template option: a built-in name, a path to a template file (.jinja or tokenizer_config.json), or
    the template itself."""
    if not isinstance(value, str):
        raise TemplateError(f"chat_template must be a str (a template, a file or a built-in name), not "
                            f"{quote(value)} (a {type(value).__name__})")
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    if _is_file(value):
        return _read_template_file(Path(value))
    raise TemplateError(f"chat template {quote(value)} is not a Jinja template, an existing file, or a built-in "
                        f"name ({', '.join(BUILTIN_TEMPLATES)})")


def read_template(chat_template: str | None) -> str | None:
    """A chat_template argument as given to the Runner: None, a literal Jinja template, or a path to a .jinja file
    or to a tokenizer_config-style .json file whose "chat_template" is a string. A path is read; anything else is
    returned as it is (a built-in name is resolved later by `resolve_template`).

    Anything holding "{%" or "{{" is a literal and never touches the file system, and a path check that fails (a
    name too long for the OS, a NUL byte) means "not a file": a literal template is never an OSError."""
    if chat_template is None:
        return None
    if not isinstance(chat_template, str):
        raise TemplateError(f"chat_template must be a str or None, not {quote(chat_template)} "
                            f"(a {type(chat_template).__name__})")
    if "{{" in chat_template or "{%" in chat_template or not _is_file(chat_template):
        return chat_template
    return _read_template_file(Path(chat_template))


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # ENAMETOOLONG, a NUL byte...: no such file
        return False


def _read_template_file(path: Path) -> str:
    """The template in a .jinja (or any text) file, or the "chat_template" of a tokenizer_config-style .json file: a
    string, or HF's list of named templates, of which the one named "default"."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"chat template file {path}: cannot read it ({e})") from None
    if path.suffix != ".json":
        return text
    try:
        config = json.loads(text)
    except ValueError as e:
        raise TemplateError(f"chat template file {path}: not valid JSON ({e})") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if not isinstance(template, str):
        raise TemplateError(f"chat template file {path}: no 'chat_template' string in it (found {quote(template)})")
    return template


class _GenerationTag(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` marks assistant text for masks; here it just renders."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message):
    raise TemplateError(f"chat template refused the messages: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Parse a template once (as transformers does: trim_blocks, lstrip_blocks, loop controls) in the bounded
    sandbox (`sandbox.py`)."""
    if not isinstance(source, str):
        raise TemplateError(f"chat template must be a str, not {quote(source)} (a {type(source).__name__})")
    if len(source) > sandbox.MAX_SOURCE_CHARS:
        raise TemplateError(f"chat template of {len(source)} characters is too long "
                            f"(limit {sandbox.MAX_SOURCE_CHARS})")
    env = sandbox.Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
    env.add_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None
    except (RecursionError, MemoryError, OverflowError, SyntaxError) as e:  # deep nesting; Python's parser limits
        raise TemplateError(f"chat template is too deeply nested or too large to compile ({type(e).__name__})") \
            from None


def render(template: str, messages: list[dict], add_generation_prompt: bool = True, tools=None,
           bos_token: str = "", eos_token: str = "", **kwargs) -> str:
    """Render a chat template in the bounded sandbox; any failure, forbidden access or exhausted limit (time,
    size, depth) is a TemplateError."""
    compiled = compile_template(template)
    out, total = [], 0
    try:
        with sandbox.budget():
            for piece in compiled.generate(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                           bos_token=bos_token, eos_token=eos_token, **kwargs):
                total += len(piece)
                if total > sandbox.MAX_CHARS:
                    raise TemplateError(f"chat template output is longer than {sandbox.MAX_CHARS} characters")
                sandbox.tick()
                out.append(piece)
    except TemplateError:
        raise
    except SecurityError as e:
        raise TemplateError(f"chat template tried something the sandbox forbids: {e}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template failed to render: {e}") from None
    except (RecursionError, MemoryError, OverflowError) as e:
        raise TemplateError(f"chat template exhausted a resource: {type(e).__name__}: {quote(str(e))}") \
            from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise TemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
    return "".join(out)
