"""The package's import graph has no circles: every module sits on a floor above the modules it
imports (lazy imports inside functions count too: they still couple the modules)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cgar_interp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``. ``from a.b import c`` points at the
    module ``a.b.c`` where ``c`` is a module, else at ``a.b``."""
    files = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base if is_package else base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a non-module attr
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert "cgar_interp.runner" in graph and graph["cgar_interp.runner"]
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_leaves_stay_leaves():
    """The engines know nothing of the handle built on them (``models``); the figures' style kit,
    the claims' statistics and the probes' inputs import nothing of their own packages, and the
    claims' base only the statistics."""
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("cgar_interp.backends"):
            assert "cgar_interp.models" not in imports, module
    for leaf, package in [
        ("cgar_interp.figures.style", "cgar_interp"),
        ("cgar_interp.claims.stats", "cgar_interp.claims"),
        ("cgar_interp.probes.inputs", "cgar_interp.probes"),
        ("cgar_interp.shots", "cgar_interp"),
    ]:
        inside = {m for m in graph[leaf] if m.startswith(package)}
        assert not inside, (leaf, inside)
    base = {m for m in graph["cgar_interp.claims.base"] if m.startswith("cgar_interp.claims")}
    assert base <= {"cgar_interp.claims.stats"}, base
