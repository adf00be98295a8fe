"""The package layering of docs/architecture.md, checked on the source: no cycles, no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gridchain"

# package -> the gridchain packages it may import (besides itself). The edges never import the
# node (its composition root) or the CLI; net and relay are two separate edges.
LAYERS = {
    "consensus": set(),
    "wire": {"consensus"},
    "identity": {"consensus"},
    "ledger": {"consensus", "identity"},
    "relay": {"consensus", "wire", "identity"},
    "net": {"consensus", "wire", "identity"},
    "api": {"consensus", "wire", "identity", "ledger"},
    "web": {"consensus", "wire", "identity", "ledger", "api"},
    "node": {"consensus", "wire", "identity", "ledger", "relay", "net", "api", "web"},
    "cli": {"consensus", "wire", "identity", "ledger", "relay", "net", "api", "web", "node"},
}
# config.py (defaults, Address, NodeConfig) imports nothing of gridchain: any layer above
# consensus may read it.
ALLOWED = {package: allowed | ({"config"} if package != "consensus" else set())
           for package, allowed in LAYERS.items()} | {"config": set()}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every gridchain module this file imports, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gridchain"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gridchain"):
            if node.level:
                raise AssertionError(f"{path}: relative import; the code uses absolute imports")
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def source_modules() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # `from gridchain.x import y` names a module only when y is one.
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = source_modules()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if top_package(m) in ALLOWED))
def test_each_package_imports_only_the_layers_below_it(module):
    package = top_package(module)
    for imported in GRAPH[module]:
        target = top_package(imported)
        if target == package or target == "":
            continue
        assert target in ALLOWED[package], f"{module} imports {imported}: {package} may not import {target}"


def test_every_module_is_in_a_known_package():
    unknown = sorted(m for m in GRAPH if top_package(m) not in ALLOWED and m.count(".") > 0
                     and top_package(m) != "__main__")
    assert unknown == [], f"modules outside the documented layers: {unknown}"


def test_there_are_no_import_cycles():
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for nxt in sorted(GRAPH[module]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
