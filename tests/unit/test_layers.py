"""Imports go one way: cli -> service -> core (_pipeline, _steps) -> driver -> graph, engines.

Each package may import only the layers below it, and the leaf modules every layer shares
(``_errors``, ``_events``, ``_results``, ``_version``, ...). ``_steps`` (the decorators) is such a
leaf: it imports nothing of madhatter's, and the graph is built from what it attaches.

There is no exception list: the graph is plain data; engines see only ``Task``s, never a graph or
the driver; the driver never imports the core that calls it; the core never imports the service;
nothing outside ``cli`` imports ``cli``. The public package and ``_pipeline`` import nothing
private from an engine module.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "src" / "madhatter"

FORBIDDEN = {
    # package: the madhatter packages and core modules it may never import
    "graph": ("engines", "driver", "service", "cli", "_pipeline", "testing"),
    "engines": ("graph", "driver", "service", "cli", "_pipeline", "_steps", "testing"),
    "driver": ("service", "cli", "_pipeline", "_steps", "testing"),
    "cache": ("graph", "engines", "driver", "service", "cli", "_pipeline", "testing"),
    "testing": ("service", "cli"),
    "report": ("engines", "driver", "cache", "service", "cli", "_pipeline", "testing"),
    "tracing": ("graph", "cache", "service", "cli", "_pipeline", "_steps", "testing"),
    "service": ("cli",),
}
CORE = ("service", "cli")
"""What the core modules at the package's top level may never import."""


def _imports(path: pathlib.Path) -> set[str]:
    """The madhatter modules ``path`` imports, as dotted names relative to the package."""
    package = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            if node.module:
                found.add(".".join([*base, *node.module.split(".")]))
            else:  # ``from .. import x``: x is a submodule, or a name of the package itself
                for alias in node.names:
                    submodule = PACKAGE.joinpath(*base, alias.name)
                    if submodule.with_suffix(".py").exists() or submodule.is_dir():
                        found.add(".".join([*base, alias.name]))
                    else:
                        found.add(".".join(base) or "madhatter")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(n.removeprefix("madhatter.") for n in names if n and n.startswith("madhatter"))
    return found


def _layer(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else "core"


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path: pathlib.Path) -> None:
    layer = _layer(path)
    forbidden = CORE if layer == "core" and path.name != "__main__.py" else FORBIDDEN.get(layer, ())
    wrong = {m for m in _imports(path) if m.split(".")[0] in forbidden}
    assert not wrong, f"{layer} may not import {sorted(wrong)}"


@pytest.mark.parametrize("module", ["__init__.py", "_pipeline.py"])
def test_the_public_face_imports_no_private_engine_module(module: str) -> None:
    private = {m for m in _imports(PACKAGE / module) if m.startswith("engines._") or m == "engines"}
    assert not {m for m in private if m != "engines"}, private


UNDER_THE_SURFACE = ("graph", "engines", "driver")
"""The packages below the public surface: they may not import ``madhatter`` itself (the layers
above it, ``testing``, ``service`` and ``cli``, are built on the public API and may)."""


def test_nothing_under_the_surface_imports_the_package_itself() -> None:
    """``import madhatter`` or ``from .. import Pipeline`` in an engine (as the container bundle
    once did) is an upward import."""
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in SOURCES
        if _layer(p) in UNDER_THE_SURFACE and "madhatter" in _imports(p)
    ]
    assert not offenders


def test_the_check_sees_a_name_imported_from_the_package_itself() -> None:
    assert "madhatter" in _imports(PACKAGE / "testing" / "_conformance.py")  # from .. import Pipeline
    assert "events" in _imports(PACKAGE / "cli" / "_progress.py")  # from .. import events


def test_the_check_sees_imports() -> None:
    imported = _imports(PACKAGE / "driver" / "_evaluator.py")
    assert "graph" in imported
    assert "engines" in imported
    assert "driver._stage" in imported
    assert "service._store" in _imports(PACKAGE / "service" / "_worker.py")
    assert "_pipeline" in _imports(PACKAGE / "service" / "_worker.py")
