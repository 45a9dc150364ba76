"""The package's shape, checked from its source: imports go one way, core stays pure, one module reads the environment.

Every import counts, including the ones inside functions: a cycle hidden in a function body is
still a cycle, it only fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "heatmap_pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Every heatmap_pipeline module this file imports, anywhere in it (submodules resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` imports mod.
            # (The implicit import of a module's parent packages is not counted: Python handles it.)
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name in MODULES:
                found.add(name)
    return found


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_found():
    # guards the cycle test against passing on an empty graph
    assert "heatmap_pipeline.warehouse.etl.sql_path" in GRAPH["heatmap_pipeline.warehouse.etl"]
    assert "heatmap_pipeline.settings" in GRAPH["heatmap_pipeline.definitions"] or any(
        "heatmap_pipeline.settings" in GRAPH[m] for m in GRAPH["heatmap_pipeline.definitions"]
    )


def test_no_import_cycle_counting_imports_inside_functions():
    assert find_cycle() is None, f"import cycle: {' -> '.join(find_cycle())}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("heatmap_pipeline.core")))
def test_core_is_pure(name):
    """core/ imports neither Dagster nor anything of ours outside core/."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for imported in names:
                assert not imported.startswith("dagster"), f"{name} imports {imported}"
                if imported.startswith("heatmap_pipeline"):
                    assert imported.startswith("heatmap_pipeline.core"), f"{name} imports {imported}"


def reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in ("environ", "getenv", "putenv", "unsetenv"):
                lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(alias.name in ("environ", "getenv") for alias in node.names):
                lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment():
    offenders = {
        name: lines
        for name, path in MODULES.items()
        if name != "heatmap_pipeline.settings" and (lines := reads_environment(ast.parse(path.read_text())))
    }
    assert offenders == {}
    assert reads_environment(ast.parse(MODULES["heatmap_pipeline.settings"].read_text()))  # the check sees reads


def imports_of(name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module or "")
    return found


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[1:2] == ["warehouse"]))
def test_the_warehouse_knows_no_dagster(name):
    assert not [i for i in imports_of(name) if i.startswith("dagster")]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[1:2] == ["trigger"]))
def test_the_trigger_state_machine_knows_no_http_framework(name):
    assert not [i for i in imports_of(name) if i.split(".")[0] in ("fastapi", "starlette", "uvicorn")]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[1:2] == ["trigger"]))
def test_the_trigger_state_machine_does_not_import_the_web_app(name):
    assert not [m for m in GRAPH[name] if m.startswith("heatmap_pipeline.web")]
