"""Imports go one way: cli -> service -> core (_pipeline, _steps) -> graph, engines.

The graph package is plain data and never imports engines; the engines themselves (everything in
``engines/`` but the runner and the stage driver, which execute a plan) see only ``Task``s, never a
graph; the core never imports the service; nothing outside ``cli`` imports ``cli``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "src" / "madhatter"
PLAN_EXECUTORS = {"_runner.py", "_stage.py"}


def _imports(path: pathlib.Path) -> set[str]:
    """The madhatter modules ``path`` imports, as dotted names relative to the package."""
    package = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.add(module)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(n.removeprefix("madhatter.") for n in names if n and n.startswith("madhatter"))
    return found


def _modules(folder: str) -> list[pathlib.Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", _modules("graph"), ids=lambda p: p.name)
def test_graph_is_plain_data(path: pathlib.Path) -> None:
    imported = _imports(path)
    assert not {m for m in imported if m.startswith(("engines", "cli"))}, imported


@pytest.mark.parametrize(
    "path", [p for p in _modules("engines") if p.name not in PLAN_EXECUTORS], ids=lambda p: p.name
)
def test_engines_never_see_a_graph(path: pathlib.Path) -> None:
    imported = _imports(path)
    assert not {m for m in imported if m.startswith(("graph", "cli", "_pipeline"))}, imported


@pytest.mark.parametrize(
    "path",
    [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_only_cli_imports_cli(path: pathlib.Path) -> None:
    if path.name == "__main__.py":
        return
    assert not {m for m in _imports(path) if m.startswith("cli")}


@pytest.mark.parametrize(
    "path",
    [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("cli", "service")],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_core_never_imports_the_service(path: pathlib.Path) -> None:
    assert not {m for m in _imports(path) if m.startswith("service")}


def test_the_check_sees_imports() -> None:
    imported = _imports(PACKAGE / "engines" / "_runner.py")
    assert "graph" in imported
    assert "engines._base" in imported
    assert "service._store" in _imports(PACKAGE / "service" / "_worker.py")
    assert "_pipeline" in _imports(PACKAGE / "service" / "_worker.py")
