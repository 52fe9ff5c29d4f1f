"""Source as syntax: files parsed once, code normalised, names read off the tree.

A function's or class's source is parsed with ``ast`` and dumped without positions, docstrings
(and other bare string statements, which are no-ops) and chosen decorators, so comments and
formatting vanish by construction. The same text is also compiled, on demand, so that a caller can
check that it is the source of the code that runs (see :mod:`._code`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import linecache
import types
from collections.abc import Iterable, Mapping
from typing import Any

from ._digest import DIGEST_SIZE

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
CodeKey = tuple[int, str]
"""A code object's first line (its first decorator's, for a decorated one) and name."""


@dataclasses.dataclass
class SourceIndex:
    """A parsed file: function nodes by first line (the first decorator's, as ``co_firstlineno``),
    class nodes by qualname (the last definition wins, as at run time), and the code objects the
    text compiles to, by :data:`CodeKey`, for each set of ``__future__`` flags asked for."""

    filename: str
    tree: ast.Module
    functions: dict[int, list[ast.FunctionDef | ast.AsyncFunctionDef]]
    classes: dict[str, ast.ClassDef]
    compiled: dict[int, dict[CodeKey, list[types.CodeType]]] = dataclasses.field(default_factory=dict)

    def code_at(self, key: CodeKey, flags: int) -> list[types.CodeType]:
        """The code objects this text compiles to (with ``__future__`` ``flags``) at ``key``.

        Compiled once per flags and text (a file about as long to compile as to parse); text that
        does not compile (an IPython cell with top-level ``await``) has none."""
        found = self.compiled.get(flags)
        if found is None:
            found = {}
            try:
                module = compile(self.tree, self.filename, "exec", flags=flags, dont_inherit=True)
            except (SyntaxError, ValueError):
                module = None
            pending = [module] if module is not None else []
            while pending:
                code = pending.pop()
                found.setdefault((code.co_firstlineno, code.co_name), []).append(code)
                pending.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            self.compiled[flags] = found
        return found.get(key, [])


_SOURCES: dict[str, tuple[list[str], SourceIndex]] = {}


def first_line(node: Definition) -> int:
    """The line a definition's code object starts at: its first decorator's, if it has any."""
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def source_index(filename: str, namespace: Mapping[str, Any] | None) -> SourceIndex | None:
    """The parsed source of ``filename`` (from ``linecache``, which also knows IPython cells),
    re-parsed when ``linecache`` finds the file changed on disk, as ``inspect`` does. What it says
    may therefore be newer than the code that runs: see :func:`._code.same_code`."""
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, namespace if isinstance(namespace, dict) else None)
    if not lines:
        return None
    cached = _SOURCES.get(filename)
    if cached is not None and cached[0] is lines:
        return cached[1]
    try:
        tree = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    index = SourceIndex(filename, tree, {}, {})
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                index.functions.setdefault(first_line(child), []).append(child)
                stack.append((child, f"{prefix}{child.name}.<locals>."))
            elif isinstance(child, ast.ClassDef):
                if f"{prefix}{child.name}" not in index.classes or child.lineno > (
                    index.classes[f"{prefix}{child.name}"].lineno
                ):
                    index.classes[f"{prefix}{child.name}"] = child
                stack.append((child, f"{prefix}{child.name}."))
            else:
                stack.append((child, prefix))
    _SOURCES[filename] = (lines, index)
    return index


def _is_no_op_string(statement: ast.stmt) -> bool:
    """A bare string statement: a docstring, or an attribute docstring. Neither does anything."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _dump(node: object, out: list[str], dropped: frozenset[int]) -> None:
    """``ast.dump`` without positions, docstrings, ``Constant.kind`` and type comments, and
    without the decorators whose ``id`` is in ``dropped``."""
    if isinstance(node, ast.AST):
        out.append(type(node).__name__)
        out.append("(")
        for field in node._fields:
            if field in ("kind", "type_comment"):
                continue
            value = getattr(node, field, None)
            if field == "body" and isinstance(value, list):
                value = [s for s in value if not _is_no_op_string(s)]
            elif field == "decorator_list" and dropped and isinstance(value, list):
                value = [d for d in value if id(d) not in dropped]
            out.append(field)
            out.append("=")
            _dump(value, out, dropped)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _dump(item, out, dropped)
            out.append(",")
        out.append("]")
    else:
        out.append(repr(node))


def ast_digest(node: ast.AST, dropped: frozenset[int] = frozenset()) -> str:
    """The digest of ``node``'s normalised syntax (without the decorators whose ``id`` is in
    ``dropped``)."""
    out: list[str] = []
    _dump(node, out, dropped)
    return hashlib.blake2b(
        "".join(out).encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE
    ).hexdigest()


def chain(node: ast.expr) -> tuple[str, ...] | None:
    """``("a", "b", "c")`` for the expression ``a.b.c``; None if it is not such a path."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return (node.id, *reversed(names))


def ast_references(
    nodes: Iterable[ast.AST], *, skip_function_bodies: bool = False
) -> tuple[list[str], set[tuple[str, ...]], list[tuple[str, int, tuple[str, ...]]]]:
    """Names loaded, attribute chains and imports in ``nodes``: a superset of the globals they use
    (a local that shadows a global counts too, which only costs a spurious miss).

    With ``skip_function_bodies`` (for a class, whose methods' code objects say exactly what they
    use), the bodies of functions inside ``nodes`` are skipped, but not their decorators and
    defaults, which run in the class body."""
    names: dict[str, None] = {}
    chains: set[tuple[str, ...]] = set()
    imports: list[tuple[str, int, tuple[str, ...]]] = []
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if skip_function_bodies and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pending.extend(node.decorator_list)
            pending.extend(node.args.defaults)
            pending.extend(d for d in node.args.kw_defaults if d is not None)
            continue
        if isinstance(node, ast.Name):
            names.setdefault(node.id)
        elif isinstance(node, ast.Attribute):
            found = chain(node)
            if found is not None:
                chains.add(found)
        elif isinstance(node, ast.Import):
            imports.extend((alias.name, 0, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.module or "", node.level, tuple(a.name for a in node.names)))
        pending.extend(reversed(list(ast.iter_child_nodes(node))))
    return list(names), chains, imports


@functools.lru_cache(maxsize=256)
def file_digest(path: str, stamp: tuple[int, int]) -> str:
    """The normalised source of a whole file (``stamp``, its mtime and size, keys the cache)."""
    with open(path, "rb") as file:
        return ast_digest(ast.parse(file.read()))
