"""Chat templates at their limits (issue 20): `read_template` on literals too long to be file names, and templates
from untrusted model files that try to exhaust time, memory or the stack. Every such template must fail fast with a
TemplateError, while ordinary templates (tests/test_chat.py) keep rendering exactly."""

import json
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirs.errors import TemplateError
from minirs.tokenizer.chat import read_template, render, resolve_template

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


# ----- item 8: templates that try to exhaust time, memory or the stack --------------------------------------------

BOMBS = {
    "range_list": "{{ range(200000) | list | length }}",
    "recursive_macro": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    "nested_parentheses": "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
    "nested_expressions": "{{ " + "-" * 5000 + "1 }}",
    "huge_repeat": "{{ 'a' * 10**12 }}",
    "huge_repeat_list": "{{ ([1] * 10**9) | length }}",
    "doubled_plus": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
                    "{{ ns.s | length }}",
    "doubled_tilde": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                     "{{ ns.s | length }}",
    "doubled_join": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = [ns.s, ns.s] | join %}"
                    "{% endfor %}{{ ns.s | length }}",
    "doubled_method": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('a', ns.s) %}"
                      "{% endfor %}{{ ns.s | length }}",
    "doubled_format": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = '%s%s' | format(ns.s, ns.s) %}"
                      "{% endfor %}{{ ns.s | length }}",
    "power": "{{ 9 ** (9 ** 9) }}",
    "product": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ 1 }}",
    "nested_ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested_string_loops": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "output_flood": "{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
    "repeated_references": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000) | join }}",
    "repeated_references_json": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000) | tojson }}",
    "repeated_references_print": "{% set s = 'x' * 1000000 %}{{ [s] * 100000 }}",
    "join_separator": "{% set s = 'x' * 1000000 %}{{ ([''] * 100000) | join(s) }}",
    "join_method": "{% set s = 'x' * 1000000 %}{{ s.join([''] * 100000) }}",
    "width": "{{ 'a'.center(10**9) }}",
    "width_filter": "{{ 'a' | center(999999999) }}",
    "percent_width": "{{ '%999999999d' % 1 }}",
    "format_width": "{{ '{:>999999999}'.format(1) }}",
    "indent": "{% set s = '\n' * 1000000 %}{{ s | indent(1000000) }}",
    "recursive_loop": "{% for x in [[1]] recursive %}{{ loop([[x]]) }}{% endfor %}",
    "lipsum": "{{ lipsum(10**6) }}",
}


def assert_fails_fast(template: str) -> None:
    """The template is a TemplateError within 2.5 s, having allocated less than 300 MiB on the way."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(TemplateError):
            render(template, [{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 2.5, f"{elapsed:.1f} s"
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_template_bombs_are_template_errors(name):
    assert_fails_fast(BOMBS[name])


def test_limits_leave_room_for_real_use():
    """Big but honest renders pass: a 4 MB message, 5,000 messages, long joins, widths, ranges and formats."""
    messages = [{"role": "user", "content": "x" * 4_000_000}] + [{"role": "user", "content": f"m{i}"}
                                                                   for i in range(5000)]
    out = render("{% for m in messages %}{{ m.role ~ ': ' ~ m.content | trim }}\n{% endfor %}", messages)
    assert len(out) > 4_000_000
    out = render("{{ messages | map(attribute='content') | join('\n') | length }} {{ range(100000) | list | length }}"
                 " {{ '%5d|%-3s|{:>4}'.format(7) }} {{ 'ab' * 3 }} {{ 2 ** 100 }} {{ '%05.1f' % 3.14159 }}",
                 messages)
    joined = len("\n".join(m["content"] for m in messages))
    assert out == f"{joined} 100000 %5d|%-3s|   7 ababab 1267650600228229401496703205376 003.1"


FEATURES = [  # Jinja features chat templates use; the bounded sandbox must render them as Jinja's own sandbox does
    ("{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ '.' if loop.last }}{{ loop.revindex0 }}"
     "{{ loop.cycle('a', 'b') }}{{ loop.previtem.role if loop.previtem }}{% endfor %}"),
    "{% for m in [] %}x{% else %}empty{% endfor %}{% for i in range(5) if i is odd %}{{ i }}{% endfor %}",
    "{% for k, v in {'a': 1, 'b': 2} | dictsort %}{{ k ~ '=' ~ v }};{% endfor %}",
    ("{% for x in [[1, [2]], [3]] recursive %}[{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}]"
     "{% endfor %}"),
    ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m.content | length %}{% endfor %}"
     "{{ ns.n }}"),
    ("{% macro fmt(m) %}{{ m.role | upper }}: {{ m.content }}{% endmacro %}{% for m in messages %}{{ fmt(m) }}"
     "{% endfor %}"),
    ("{{ messages | map(attribute='role') | join(', ') }} {{ messages | selectattr('role', 'equalto', 'user') | list "
     "| length }} {{ (messages | first).content | replace('i', 'I') }} {{ '%-5s|%3d' % ('ab', 7) }}"),
    "{{ 'a' ~ 1 ~ none ~ [1, 2] }} {{ 'ab' * 3 }} {{ [1] * 3 + [2] }} {{ 2 ** 10 }} {{ 7 % 3 }} {{ 10 // 3 }}",
    "{{ '{}-{:>4}'.format('x', 5) }} {{ '  pad ' | trim | center(9) }} {{ 'a\nb' | indent(2, true) }}",
    "{{ messages | tojson }} {{ {'k': [1, 2]} | items | list }} {{ 'x,y' .split(',') }} {{ '%s' | format(3) }}",
    "{% filter upper %}{{ messages[0].content }}{% endfilter %}{% set s %}block{% endset %}{{ s }}",
    "{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}",
    "{{ messages | tojson(indent=2) }}{{ [1, 2] | tojson(indent='  ') }}",
]


@pytest.mark.parametrize("template", FEATURES)
def test_bounded_sandbox_renders_like_jinja(template):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from minirs.tokenizer.chat import _tojson
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    assert render(template, messages) == env.from_string(template).render(messages=messages)


MORE_BOMBS = [
    "{% set l = range(100000) | list %}{{ [l] * 1000 }}",  # a wide structure to print: size() keeps the deadline
    "{{ range(1000) | list | tojson(indent=999999) }}",
    "{{ ('x' * 1000000) | wordwrap(1, wrapstring='y' * 1000000) }}",
    "{{ ('\t' * 1000000).expandtabs(1000) }}",
    "{{ '{0:{1}}'.format('x', 10**8) }}",
    "{{ '%*d' % (10**8, 1) }}",
    "{% macro m(n) %}{% if n > 0 %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(40) }}",
    "{% for i in range(100000) %}{% set x = range(100000) | list %}{% endfor %}",
]


@pytest.mark.parametrize("template", MORE_BOMBS)
def test_more_bombs(template):
    assert_fails_fast(template)


def test_many_values_under_the_limits_add_up_to_an_error():
    """Each result is 4M characters, under MAX_CHARS, but join holds every one: the render's budget stops it."""
    assert_fails_fast("{% set s = 'x' * 1000000 %}{{ range(100000) | map('replace', '', s) | join | length }}")
    assert_fails_fast("{% set s = 'x' * 1000000 %}{{ range(100000) | map('string') | map('center', 1000000) "
                      "| join | length }}")


def test_filters_are_not_run_at_compile_time():
    """Jinja's optimizer folds a filter of constants into the compiled code, where no render budget applies; a
    million-item constant then took Python 20 s to compile."""
    assert_fails_fast("{% for x in ((1.5 | center(1000000)) | sort) %}{{ x }}{% endfor %}")
    assert render("{{ 'a' | upper }}{{ [3, 1] | sort | join }}", []) == "A13"


@pytest.mark.parametrize("template", [
    "{{ ('x' * 1000000) | wordwrap(3) | length }}",  # textwrap is superlinear: a minute for one call
    "{{ ('a ' * 1000000) | urlize | length }}",
    "{{ ('ab' * 1000000) | list | sort | join | length }}",
    "{{ ((range(100000) | list) * 100) | map('string') | list | length }}",
])
def test_filters_that_work_per_item_take_a_bounded_input(template):
    assert_fails_fast(template)


# Random compositions of values, filters, operators and methods over a 100,000-character string and a 10,000-item
# list: whatever they build, a render is a string or a TemplateError, within the time limit.
ATOMS = ["s", "l", "n", "'ab'", "messages", "range(1000)", "[s, s]", "{'a': s}", "none", "1.5", "10**6", "-1", "ns.x"]
FILTERS = ["list", "join", "join(s)", "tojson", "string", "length", "upper", "replace('a', s)", "center(1000000)",
           "indent(999)", "wordwrap(3)", "format(s)", "sum", "sort", "reverse", "unique", "batch(1000)", "slice(7)",
           "first", "last", "map('string')", "selectattr('role')", "items", "dictsort", "trim", "truncate(5)", "int",
           "urlencode", "xmlattr", "pprint", "title", "wordcount", "striptags", "escape", "min", "max",
           "groupby('role')", "default(s)", "select", "tojson(indent=2)", "urlize"]
OPERATORS = ["+", "*", "~", "%", "**", "-", "//", "/", "in", "==", "and", "or"]
METHODS = ["split()", "join(l)", "replace(s, s)", "format(s)", "center(99999)", "upper()", "startswith(s)"]


def _expressions():
    return st.recursive(
        st.sampled_from(ATOMS),
        lambda inner: st.one_of(
            st.builds(lambda e, f: f"({e} | {f})", inner, st.sampled_from(FILTERS)),
            st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(OPERATORS), inner),
            st.builds(lambda e, m: f"{e}.{m}", inner, st.sampled_from(METHODS))),
        max_leaves=6)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(expr=_expressions(), shape=st.sampled_from([
    "{{{{ {} }}}}", "{{% for i in range(100) %}}{{% set ns.x = {} %}}{{% endfor %}}{{{{ ns.x | length }}}}",
    "{{% for x in {} %}}{{{{ x }}}}{{% endfor %}}"]))
def test_random_templates_render_or_fail_fast(expr, shape):
    template = ("{% set s = 'x' * 100000 %}{% set l = range(10000) | list %}{% set n = 12345 %}"
                "{% set ns = namespace(x=s) %}" + shape.format(expr))
    start = time.monotonic()
    try:
        assert isinstance(render(template, [{"role": "user", "content": "hi"}]), str)
    except TemplateError:
        pass
    assert time.monotonic() - start < 2.5, template
