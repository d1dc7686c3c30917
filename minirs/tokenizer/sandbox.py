"""The bounded Jinja2 sandbox chat templates render in.

A chat template comes from an untrusted model file and is a program. Jinja2's ImmutableSandboxedEnvironment keeps it
away from Python's internals (CVE-2024-34359) but not from exhausting the machine: `'a' * 10**12`, `9 ** (9 ** 9)`,
a string doubled in a loop, nested `range(100000)` loops, a macro that calls itself. Here every way a template can
grow a value or spend time passes a check, and a failed check is a TemplateError:

  * the operators `*`, `**`, `+` and `%` (intercepted by the sandbox, so also never folded at compile time) and `~`
    (string concatenation, routed through `Bounded.concat` by the code generator) refuse results of more than
    MAX_CHARS characters or items, and integer products and powers of more than MAX_POWER_BITS bits;
  * every call (globals, methods, macros) and every filter refuses integer arguments above MAX_INT_ARG (widths,
    counts) and inputs that expand to more than MAX_CHARS characters (`size`, counting a repeated reference each
    time, so `[s] * 100000 | join` is refused before it is built); join, replace, indent, wordwrap, expandtabs and
    format widths are bounded by the size of their result, tojson's indent by 64;
  * every `for` loop iterates through `Bounded.loop`, `range` holds at most MAX_RANGE items, a filter that runs
    Python code per item (sort, map, groupby, wordwrap...) takes at most MAX_RANGE items, the output at most MAX_CHARS
    characters;
  * a wall-clock deadline (MAX_SECONDS per render) is checked at every loop step, call, filter, operator and output,
    and all the values built through these checks add up to at most MAX_BUILT characters or items per render;
  * RecursionError, MemoryError and OverflowError (a recursive macro, 3,000 nested parentheses) become TemplateError.

The limits are far above what real chat templates use (tests/test_chat.py renders them unchanged). Not covered: a
single builtin call whose cost is not bounded by its input or output size (none is known among Jinja's filters and
str's methods; the deadline is checked between calls, not inside one).
"""

import re
import time
from collections.abc import Sized
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.runtime import str_join
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg, pass_context

from minirs.errors import TemplateError, quote

MAX_SECONDS = 1.0          # wall-clock time of one render
MAX_CHARS = 1 << 24        # characters of any string, items of any list, and the whole output
MAX_INT_ARG = 1_000_000    # an integer argument to a call or filter (a width, a count)
MAX_POWER_BITS = 1 << 16   # bits of the result of an integer `**` or `*`
MAX_SOURCE_CHARS = 1 << 20  # characters of a template's source

MAX_BUILT = 8 * MAX_CHARS  # characters and items of all the values one render builds through the checks below


class _Budget:
    """What one render may still spend: wall-clock time, and characters or items of the values it builds (so that
    many values, each under MAX_CHARS, cannot add up to gigabytes before the deadline)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.built = 0


_budget: ContextVar[_Budget | None] = ContextVar("minirs_template_budget", default=None)
# the width and precision of a %-format; the spec of a {}-format
_PERCENT_SPEC = re.compile(r"%[#0 +\-]*(\d*)(?:\.(\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")


@contextmanager
def budget(seconds: float = MAX_SECONDS):
    """Give the renders inside this block `seconds` of wall-clock time and MAX_BUILT characters to build (per thread
    and task: a ContextVar). Outside such a block only the per-value limits apply."""
    token = _budget.set(_Budget(seconds))
    try:
        yield
    finally:
        _budget.reset(token)


def tick() -> None:
    b = _budget.get()
    if b is not None and time.monotonic() > b.deadline:
        raise TemplateError(f"chat template ran longer than {MAX_SECONDS} s")


def _built(value):
    """Count a value a check let through against the render's budget; return it."""
    b = _budget.get()
    if b is not None and isinstance(value, (str, list, tuple, dict)):
        b.built += len(value)
        if b.built > MAX_BUILT:
            raise TemplateError(f"chat template built more than {MAX_BUILT} characters or items in all")
    return value


def size(value) -> int:
    """Characters (strings) plus items (containers) that `value` expands to when printed, joined or serialised,
    counting a repeated reference each time; the count stops soon after passing MAX_CHARS."""
    total, stack, visits = 0, [value], 0
    while stack and total <= MAX_CHARS:
        v = stack.pop()
        visits += 1
        if visits & 0xFFFF == 0:  # a wide structure of many small items can take a while: keep the deadline
            tick()
        if isinstance(v, (str, bytes)):
            total += len(v)
        elif isinstance(v, dict):
            total += 1 + len(v)
            if total <= MAX_CHARS:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 1 + len(v)
            if total <= MAX_CHARS:
                stack.extend(v)
        else:
            total += 1
    return total


def _refuse_big(what: str, n: int) -> None:
    if n > MAX_CHARS:
        raise TemplateError(f"chat template tried to build {what} of {n} or more characters or items "
                            f"(limit {MAX_CHARS})")


def _check_args(name: str, args, kwargs, expanding: bool) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARG:
            raise TemplateError(f"chat template passed {a} to {name}: integer arguments are limited to "
                                f"{MAX_INT_ARG}")
    if expanding:
        _refuse_big(f"the input of {name}", sum(size(a) for a in (*args, *kwargs.values())))


def _check_result(name: str, result):
    if isinstance(result, (str, list, tuple, dict)):
        _refuse_big(f"the result of {name}", len(result))
    return _built(result)


def _replace_size(s: str, old: str, new: str, count: int = -1) -> int:
    hits = len(s) + 1 if not old else s.count(old)
    hits = hits if count is None or count < 0 else min(hits, count)
    return len(s) + hits * (len(new) - len(old))


def _join_size(sep, items) -> int:
    n = len(items) if isinstance(items, (list, tuple, str, dict, set)) else 1
    return size(items) + max(n - 1, 0) * size(sep)


def _check_format(fmt, args, braces: bool = False) -> None:
    """`%` (and the format filter) or str.format (`braces`): a width or precision in the format is a size too."""
    if isinstance(fmt, str):
        specs = _BRACE_SPEC.finditer(fmt) if braces else _PERCENT_SPEC.finditer(fmt)
        numbers = [n for m in specs for g in m.groups() if g for n in re.findall(r"\d+", g)]
        if any(len(n) > 7 or int(n) > MAX_INT_ARG for n in numbers):
            raise TemplateError(f"chat template format {fmt[:40]!r} holds a width above {MAX_INT_ARG}")
    _check_args("a format", args if isinstance(args, tuple) else (args,), {}, expanding=True)


# filters that build a string or list from their whole input
_EXPANDING_FILTERS = {"join", "tojson", "format", "string", "pprint", "sum", "xmlattr", "urlencode", "center",
                      "indent", "wordwrap", "replace", "list", "batch", "slice", "map", "items", "dictsort"}
# filters that run Python code per item (a key, an attribute, a test; wordwrap and urlize per word or character):
# one call over 16M items would take a minute (wordwrap is superlinear), and the deadline is only checked between
# calls, so their input is limited to MAX_RANGE items or characters
_PER_ITEM_FILTERS = {"sort", "unique", "groupby", "map", "select", "reject", "selectattr", "rejectattr", "sum", "min",
                     "max", "dictsort", "batch", "slice", "list", "wordwrap", "urlize"}
_EXPANDING_METHODS = {"join", "format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs"}


def _bounded_filter(name: str, func):
    expanding = name in _EXPANDING_FILTERS
    passes = _PassArg.from_obj(func)  # what Jinja hands the filter first: context, eval context, environment, none

    # pass_context also stops the optimizer from running the filter at compile time, outside any render's budget
    # (it folded `1.5 | center(1000000) | sort` into a million-item literal for Python to compile)
    @pass_context
    @wraps(func)
    def bounded(context, *values, **kwargs):
        tick()
        if name in _PER_ITEM_FILTERS and values and isinstance(values[0], Sized) and len(values[0]) > MAX_RANGE:
            raise TemplateError(f"chat template applied the {name} filter to {len(values[0])} items or characters "
                                f"(limit {MAX_RANGE})")
        _check_args(f"the {name} filter", values, kwargs, expanding)
        if name == "replace" and len(values) >= 3 and all(isinstance(v, str) for v in values[:3]):
            _refuse_big("the result of replace", _replace_size(*values[:3]))
        if name == "indent" and values and isinstance(values[0], str):
            width = values[1] if len(values) > 1 else kwargs.get("width", 4)
            width = len(width) if isinstance(width, str) else width
            _refuse_big("the result of indent", len(values[0]) + (values[0].count("\n") + 1) * int(width or 0))
        if name == "format" and values:
            _check_format(values[0], tuple(values[1:]))
        if name == "tojson":
            indent = kwargs.get("indent", values[1] if len(values) > 1 else None)
            width = len(indent) if isinstance(indent, str) else indent
            if isinstance(width, (int, float)) and width > 64:  # each line of the result is indented
                raise TemplateError(f"chat template asked tojson for an indent of {quote(indent)} (limit 64)")
        if name == "join" and values:
            sep = values[1] if len(values) > 1 else kwargs.get("d", "")
            _refuse_big("the result of join", _join_size(sep, values[0]))
        if name == "wordwrap" and values and isinstance(values[0], str):
            wrap = kwargs.get("wrapstring") or (values[3] if len(values) > 3 else None) or "\n"
            _refuse_big("the result of wordwrap", len(values[0]) * (1 + len(str(wrap))))
        first = {_PassArg.context: (context,), _PassArg.eval_context: (context.eval_ctx,),
                 _PassArg.environment: (context.environment,)}.get(passes, ())
        return _check_result(f"the {name} filter", func(*first, *values, **kwargs))

    return bounded


def _power(base, exp):
    if (isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1
            and exp * abs(base).bit_length() > MAX_POWER_BITS):
        raise TemplateError(f"chat template tried {base} ** {exp}, a number of more than {MAX_POWER_BITS} bits")
    return base ** exp


def _multiply(left, right):
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
        raise TemplateError(f"chat template tried a product of more than {MAX_POWER_BITS} bits")
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
            _refuse_big("a repeated sequence", len(seq) * max(n, 0))
    return _built(left * right)


def _add(left, right):
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _refuse_big("a concatenation", len(left) + len(right))
    return _built(left + right)


def _modulo(left, right):
    if isinstance(left, str):
        _check_format(left, right)
        _refuse_big("a formatted string", len(left) + size(right))
    return _built(left % right)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, but `~` calls `environment.concat` and every for loop iterates through
    `environment.loop(...)`, so that both are bounded."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame) -> None:
        node.iter = nodes.Call(nodes.EnvironmentAttribute("loop"), [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)


class Bounded(ImmutableSandboxedEnvironment):
    """The immutable sandbox with limits on time, size and depth (see the module docstring). Touching an unsafe
    attribute fails the render instead of giving Undefined."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options):
        super().__init__(**options, finalize=self._finalize)
        self.binop_table = {**self.binop_table, "*": _multiply, "**": _power, "+": _add, "%": _modulo}
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs; no chat template uses it
        self.globals["range"] = self.range
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def add_filter(self, name: str, func) -> None:
        self.filters[name] = _bounded_filter(name, func)

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator_: str, left, right):
        tick()
        return self.binop_table[operator_](left, right)

    def call(self, context, obj, /, *args, **kwargs):
        tick()
        name = getattr(obj, "__name__", type(obj).__name__)
        owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)  # the sandbox wraps str.format
        _check_args(f"{name}()", args, kwargs, expanding=isinstance(owner, str) or name in _EXPANDING_METHODS)
        if isinstance(owner, str):
            if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                _refuse_big("the result of replace()", _replace_size(owner, *args[:3]))
            if name == "format":
                _check_format(owner, args, braces=True)
            if name == "join" and args:
                _refuse_big("the result of join()", _join_size(owner, args[0]))
            if name == "expandtabs":
                _refuse_big("the result of expandtabs()", len(owner) + owner.count("\t") * (args[0] if args else 8))
        return _check_result(f"{name}()", super().call(context, obj, *args, **kwargs))

    @staticmethod
    def range(*args):
        r = range(*args)
        if len(r) > MAX_RANGE:
            raise TemplateError(f"chat template asked for range{args}: ranges are limited to {MAX_RANGE} items")
        return r

    @staticmethod
    def loop(iterable):
        """Every for loop's iterable: the deadline is checked at each step."""
        for item in iterable:
            tick()
            yield item

    @staticmethod
    def concat(parts) -> str:
        tick()
        _refuse_big("a concatenation (~)", sum(size(p) for p in parts))
        return _built(str_join(parts))

    @staticmethod
    def _finalize(value):
        """Every `{{ ... }}` output, before it becomes a string."""
        if not isinstance(value, str):
            _refuse_big("an output", size(value))
        return value

