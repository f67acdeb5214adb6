"""The package's import graph: no cycle, even through imports inside functions, and no
lower layer importing an orchestrator (issue #15 §1).

Read with `ast` only, so the test sees every import, including the ones a function makes
when it runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "autoseg"

#: What runs a search, a command or a model folder; nothing in `LOWER` may import these.
ORCHESTRATORS = ("autoseg.search", "autoseg.tuner", "autoseg.hypermodel", "autoseg.distributed",
                 "autoseg.plan", "autoseg.cli", "autoseg.commands", "autoseg.export",
                 "autoseg.predict", "autoseg.evaluate", "autoseg.leaderboard")
#: Data, architectures and the small modules every layer uses.
LOWER = ("autoseg.data", "autoseg.architectures", "autoseg.backbones", "autoseg.registry",
         "autoseg.builder", "autoseg.models", "autoseg.losses", "autoseg.metrics",
         "autoseg.errors", "autoseg.atomic", "autoseg.durations", "autoseg.model_dir",
         "autoseg.model_contract", "autoseg.run_dir", "autoseg.user_cache")


def _modules(root: Path) -> dict[str, Path]:
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (a package's
    `__init__` importing its own children is not an edge back to them)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".")
                if node.level:
                    base = base[: len(base) - node.level + is_package]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                parent_init = name.startswith(target + ".") and modules[target].name == "__init__.py"
                if target and target != name and not parent_init:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_lower_layer_imports_an_orchestrator():
    graph = import_graph(PACKAGE)
    upward = sorted(f"{name} imports {target}" for name, targets in graph.items()
                    if _within(name, LOWER) for target in targets
                    if _within(target, ORCHESTRATORS))
    assert upward == []
    assert any(_within(name, LOWER) for name in graph)  # the prefixes name real modules


def test_the_checks_find_a_cycle_through_an_import_inside_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg import a\n")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(package)
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (package / "c.py").write_text("import os\n")
    assert cycles(import_graph(package)) == []
