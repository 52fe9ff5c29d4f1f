"""Imports go one way, ``cli -> service -> core``: the core (pipelines, graph, engines) never imports
the service, and the service never imports the CLI."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "src" / "madhatter"


def _imported(path: pathlib.Path) -> set[str]:
    """Dotted names (relative to the package) of the madhatter modules ``path`` imports."""
    package = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            found.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("madhatter"):
            found.add((node.module or "").removeprefix("madhatter").strip("."))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("madhatter.") for a in node.names if a.name.startswith("madhatter")
            )
    return found


CORE = sorted(
    p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("cli", "service")
)
SERVICE = sorted((PACKAGE / "service").glob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_never_imports_the_service(path: pathlib.Path) -> None:
    assert not {m for m in _imported(path) if m.startswith("service")}


@pytest.mark.parametrize("path", SERVICE, ids=lambda p: p.name)
def test_the_service_never_imports_the_cli(path: pathlib.Path) -> None:
    assert not {m for m in _imported(path) if m.startswith("cli")}


def test_the_check_sees_imports() -> None:
    assert "service._store" in _imported(PACKAGE / "service" / "_worker.py")
    assert "_pipeline" in _imported(PACKAGE / "service" / "_worker.py")
