"""The code's layout holds: no import cycles, imports only in the allowed directions, no module over 500 lines.

The import graph is read from the source with `ast` (every `import` and `from ... import`, also those inside
functions), so a lazy import counts as much as a top-level one.

    formats, tokenizer  ->  nothing of kernels / models / engine
    kernels             ->  nothing of models / engine / api
    models              ->  nothing of engine / api
    sampling            ->  nothing of models
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "minirs"
MAX_LINES = 500
FORBIDDEN = {
    "minirs.formats": ("minirs.kernels", "minirs.models", "minirs.engine"),
    "minirs.tokenizer": ("minirs.kernels", "minirs.models", "minirs.engine"),
    "minirs.kernels": ("minirs.models", "minirs.engine", "minirs.api"),
    "minirs.models": ("minirs.engine", "minirs.api"),
    "minirs.sampling": ("minirs.models",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The minirs modules a file imports (for `from pkg import name`, the submodule pkg.name where it is one)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in out if m in modules and m != me}


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if n.startswith(m + "."):  # a package importing its own submodules (its __init__) is no cycle
                continue
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_only_the_allowed_ways():
    bad = [f"{m} imports {n}" for m, deps in graph().items() for n in deps
           for low, banned in FORBIDDEN.items() if (m == low or m.startswith(low + "."))
           and any(n == b or n.startswith(b + ".") for b in banned)]
    assert not bad, "\n".join(bad)


def test_no_module_over_500_lines():
    long = {str(f.relative_to(ROOT.parent)): n for f in ROOT.rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_cycle_and_a_forbidden_import(tmp_path, monkeypatch):
    """The checks can fail: a fake package with a cycle and a kernels -> models import trips both."""
    pkg = tmp_path / "minirs"
    for name, body in {"__init__.py": "", "kernels/__init__.py": "", "models/__init__.py": "",
                       "kernels/a.py": "from minirs.kernels import b\nfrom minirs.models import m\n",
                       "kernels/b.py": "import minirs.kernels.a\n", "models/m.py": ""}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(body)
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    g = graph()
    assert g["minirs.kernels.a"] == {"minirs.kernels.b", "minirs.models.m"} and g["minirs.kernels.b"] == {
        "minirs.kernels.a"}
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "minirs.kernels.a -> minirs.kernels.b -> minirs.kernels.a" in str(e)
    else:
        raise AssertionError("the cycle was not found")
    try:
        test_imports_go_only_the_allowed_ways()
    except AssertionError as e:
        assert "minirs.kernels.a imports minirs.models.m" in str(e)
    else:
        raise AssertionError("the forbidden import was not found")
