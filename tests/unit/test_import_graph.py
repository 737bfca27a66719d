"""The layering of docs/architecture.md, checked on the source.

The layer table of docs/architecture.md is read from the document itself, and every module is held
to its row: it may import its own layer and the layers its row names, nothing else inside ddpm_rt
(function-level imports count; so do the backend modules `ddpm_rt.registry` imports by name). No
import circles between modules or between packages; the runtime side (`ddpm_rt.runtime`,
`ddpm_rt.bundle`) never reaches torch, the exporter or the sources package, even transitively."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ddpm_rt"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
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


def _registry_modules() -> set[str]:
    """The modules `ddpm_rt.registry` imports by name (read from its source: the REGISTRY entries)."""
    tree = ast.parse((PACKAGE / "registry.py").read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BackendEntry"
            and node.args and isinstance(node.args[0], ast.Constant)}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = _imports(ast.parse(path.read_text()), set(files), name)
        if name == "ddpm_rt.registry":
            deps |= _registry_modules()
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


def _layer_table() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(module prefix -> layer, layer -> layers it may import) from the table in docs/architecture.md."""
    rows = [ln for ln in ARCHITECTURE.read_text().splitlines() if ln.startswith("| ") and ln.count("|") == 5]
    header = next(i for i, ln in enumerate(rows) if "may import" in ln)
    layer_of: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for row in rows[header + 1:]:
        layer, modules, _, may = (c.strip() for c in row.strip("|").split("|"))
        for m in re.findall(r"`([^`]+)`", modules):
            layer_of[_prefix(m)] = layer
        allowed[layer] = {layer} | set(re.findall(r"`([^`]+)`", may)) | {
            w for w in re.findall(r"[a-z]+", re.sub(r"`[^`]*`|\([^)]*\)", "", may))}
    return layer_of, allowed


def _prefix(path: str) -> str:
    """`runtime/` -> ddpm_rt.runtime, `plan.py` -> ddpm_rt.plan, `shards/store.py` -> ddpm_rt.shards.store."""
    name = path.rstrip("/").removesuffix(".py").replace("/", ".")
    return "ddpm_rt" if name == "__init__" else f"ddpm_rt.{name}"


def _layer(module: str, layer_of: dict[str, str]) -> str | None:
    best = max((p for p in layer_of if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else layer_of[best]


def test_every_module_has_a_row_in_the_layer_table() -> None:
    layer_of, _ = _layer_table()
    assert {m for m in _graph() if _layer(m, layer_of) is None} == set()


def test_every_import_follows_the_layer_table() -> None:
    layer_of, allowed = _layer_table()
    bad = []
    for module, deps in _graph().items():
        mine = _layer(module, layer_of)
        if mine == "commands":
            continue  # may import everything
        for dep in deps:
            if not dep.startswith("ddpm_rt."):
                continue
            theirs = _layer(dep, layer_of)
            ok = theirs in allowed[mine] or any(dep == _prefix(a) or dep.startswith(_prefix(a) + ".")
                                                for a in allowed[mine] if "/" in a or a.endswith(".py"))
            if not ok:
                bad.append(f"{module} ({mine}) imports {dep} ({theirs})")
    assert bad == []


def test_the_table_parser_reads_rows() -> None:
    layer_of, allowed = _layer_table()
    assert layer_of["ddpm_rt.runtime"] == "runtime" and layer_of["ddpm_rt.plan"] == "core"
    assert allowed["runtime"] == {"runtime", "core", "bundle"}
    assert "ddpm_rt.gpu.trt_backend" in _graph()["ddpm_rt.registry"]  # by name, through REGISTRY


def test_no_import_circles_in_ddpm_rt() -> None:
    assert _cycles(_graph()) == []


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_import_circles_between_packages() -> None:
    graph = _graph()
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        packages.setdefault(_package(module), set()).update(
            _package(d) for d in deps if d.startswith("ddpm_rt.") and _package(d) != _package(module))
    assert _cycles(packages) == []


def test_the_runtime_side_never_reaches_torch_the_exporter_or_sources() -> None:
    graph = _graph()
    lean = [m for m in graph if m.startswith(LEAN)]
    assert lean, "no runtime modules found"
    bad = {m: sorted(_hits(_reach(graph, m), FORBIDDEN_FOR_LEAN)) for m in lean}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_checker_sees_function_level_imports() -> None:
    tree = ast.parse("def f():\n    import torch\nif TYPE_CHECKING:\n    import onnx\n")
    assert _imports(tree, set(), "ddpm_rt.x") == {"torch"}
