"""The layering of docs/architecture.md, checked on the source: no import circles anywhere in ddpm_rt/,
and the runtime side (`ddpm_rt.runtime`, `ddpm_rt.bundle`) never reaches torch, the exporter or the
sources package — not even through a function-level import, not even transitively."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ddpm_rt"
LEAN = ("ddpm_rt.runtime", "ddpm_rt.bundle")
FORBIDDEN_FOR_LEAN = ("torch", "ddpm_rt.exporter", "ddpm_rt.sources", "ddpm_rt.gpu", "ddpm_rt.prepare",
                      "diffusers", "tensorrt", "sklearn", "matplotlib")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST, modules: set[str], here: str) -> set[str]:
    """Every module imported anywhere in `tree` (function bodies included, TYPE_CHECKING blocks not)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(here.split(".")[: -node.level] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = _imports(ast.parse(path.read_text()), set(files), name)
        resolved = set()
        for dep in deps:
            resolved.add(dep)
            parts = dep.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
            resolved.update(".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in files)
        graph[name] = {d for d in resolved if d != name and not name.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _hits(names: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {n for n in names for p in prefixes if n == p or n.startswith(p + ".")}


def test_no_import_circles_in_ddpm_rt() -> None:
    assert _cycles(_graph()) == []


def test_the_runtime_side_never_reaches_torch_the_exporter_or_sources() -> None:
    graph = _graph()
    lean = [m for m in graph if m.startswith(LEAN)]
    assert lean, "no runtime modules found"
    bad = {m: sorted(_hits(_reach(graph, m), FORBIDDEN_FOR_LEAN)) for m in lean}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_checker_sees_function_level_imports() -> None:
    tree = ast.parse("def f():\n    import torch\nif TYPE_CHECKING:\n    import onnx\n")
    assert _imports(tree, set(), "ddpm_rt.x") == {"torch"}
