"""What a function's or class's code is and uses, computed once per function or class object.

Source counts only when it is the source of the code that runs. ``linecache`` re-reads a file when
it changes on disk, so in a long-lived process (a service worker, a notebook) the text may be newer
than the imported code; fingerprinting it would file the old code's results under the new code's
fingerprint, for a fresh process to reuse. So the text is compiled and compared with the live code
(:func:`._code.same_code`); when they differ, the code object is hashed instead, as for code without
source. That digest differs from any source digest (a fresh process's included), so stale code's
results are never reused by fresh code; its price is that, in that process, docstrings of nested
functions count. For a class, whose body's code is not kept, its methods' code is compared, and its
body's constant attributes with the class's own.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import sys
import types
import weakref
from collections.abc import Mapping
from typing import Any

from ._code import code_digest, future_flags, same_code, scan_code
from ._digest import Feed, feed_value, is_constant, value_digest
from ._origins import innermost, is_madhatter
from ._source import SourceIndex, ast_digest, ast_references, chain, first_line, source_index


@dataclasses.dataclass(frozen=True)
class CodeInfo:
    """The normalised code of a function or class, and the names it uses.

    Attributes:
        digest: digest of the normalised syntax (or of the code object, without source).
        names: global names it loads, in first-use order.
        chains: attribute paths from a global, ``("mymod", "helper")`` for ``mymod.helper``.
        attributes: every name in its code (``co_names``): for a module used without an attribute
            (passed as a value), its attributes of these names are followed.
        imports: local imports, (module, level, imported names).
        source: for a class found in its file's source, that file: only its methods from that
            file are followed (see :func:`class_methods`).
    """

    digest: str
    names: tuple[str, ...]
    chains: frozenset[tuple[str, ...]]
    attributes: frozenset[str]
    imports: tuple[tuple[str, int, tuple[str, ...]], ...]
    source: str | None = None


_FUNCTIONS: weakref.WeakKeyDictionary[types.FunctionType, tuple[types.CodeType, CodeInfo]] = (
    weakref.WeakKeyDictionary()
)
_CLASSES: weakref.WeakKeyDictionary[type, CodeInfo] = weakref.WeakKeyDictionary()


def _runs(index: SourceIndex, code: types.CodeType) -> bool:
    """Whether the source in ``index`` compiles, where ``code`` starts, to what ``code`` runs."""
    candidates = index.code_at((code.co_firstlineno, code.co_name), future_flags(code))
    return any(same_code(code, candidate) for candidate in candidates)


def function_info(function: types.FunctionType) -> CodeInfo:
    """The :class:`CodeInfo` of a function, cached while the function lives (and keeps its code):
    the code decides it, and was compared with the source when it was computed."""
    code = function.__code__
    cached = _FUNCTIONS.get(function)
    if cached is not None and cached[0] is code:
        return cached[1]
    names, chains, attributes, imports = scan_code(code)
    node = None
    index = (
        None if function.__name__ == "<lambda>" else source_index(code.co_filename, function.__globals__)
    )
    if index is not None:
        for candidate in index.functions.get(code.co_firstlineno, []):
            if candidate.name == code.co_name:
                node = candidate
        if node is not None and not _runs(index, code):  # the file changed since it was imported
            node = None
    if node is None:
        digest = code_digest(code, function.__doc__)
    else:
        dropped = frozenset(
            id(d) for d in node.decorator_list if _is_madhatter_decorator(d, function.__globals__)
        )
        digest = ast_digest(node, dropped)
        # Kept decorators run at definition time, so their names are not in the function's code.
        kept = [d for d in node.decorator_list if id(d) not in dropped]
        more_names, more_chains, _ = ast_references(kept)
        names += [n for n in more_names if n not in names]
        chains |= more_chains
    info = CodeInfo(digest, tuple(names), frozenset(chains), frozenset(attributes), tuple(imports))
    _FUNCTIONS[function] = (code, info)
    return info


def _is_madhatter_decorator(expression: ast.expr, namespace: Mapping[str, Any]) -> bool:
    """Whether a decorator expression (``parallel``, ``madhatter.parallel.map(n=2)``...) resolves,
    in the function's globals, to one of madhatter's objects."""
    target = expression.func if isinstance(expression, ast.Call) else expression
    path = chain(target)
    if path is None or path[0] not in namespace:
        return False
    value = namespace[path[0]]
    for attribute in path[1:]:
        if is_madhatter(value):
            return True
        try:
            value = getattr(value, attribute)
        except Exception:
            return False
    return is_madhatter(value)


def methods(cls: type) -> list[types.FunctionType]:
    """The functions defined in the body of ``cls`` and of the classes nested in it: methods,
    static and class methods, property and ``cached_property`` functions, without wrappers."""
    found = []
    prefix = f"{cls.__qualname__}."
    for member in vars(cls).values():
        candidates: list[object] = [member]
        if isinstance(member, (staticmethod, classmethod)):
            candidates = [member.__func__]
        elif isinstance(member, property):
            candidates = [member.fget, member.fset, member.fdel]
        elif isinstance(member, functools.cached_property):
            candidates = [member.func]
        for candidate in candidates:
            if isinstance(candidate, type):
                if candidate.__qualname__.startswith(prefix):
                    found.extend(methods(candidate))
                continue
            function = innermost(candidate)
            if isinstance(function, types.FunctionType) and function.__qualname__.startswith(prefix):
                found.append(function)
    return found


def class_methods(cls: type, info: CodeInfo) -> list[types.FunctionType]:
    """The methods whose code is in the class's source (when it was found: not, for example, the
    ``__init__`` a dataclass generates, whose inputs are in the class body already)."""
    found = methods(cls)
    if info.source is None:
        return found
    return [m for m in found if m.__code__.co_filename == info.source]


def class_info(cls: type) -> CodeInfo:
    """The :class:`CodeInfo` of a user class: its normalised source (methods included), the names
    its body uses outside methods, and those its methods' code uses. Without source, or with source
    that is not the class's (see the module's docstring): the digests of its methods' code objects
    and the values of its constant attributes instead."""
    cached = _CLASSES.get(cls)
    if cached is not None:
        return cached
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    index = source_index(path, vars(module)) if isinstance(path, str) and module else None
    node = index.classes.get(cls.__qualname__) if index else None
    found = methods(cls)
    mine = [m for m in found if m.__code__.co_filename == path]
    if node is not None and index is not None and _class_runs(cls, node, index, mine):
        names, chains, imports = ast_references([node], skip_function_bodies=True)
        digest, source, found = ast_digest(node), index.filename, mine
    else:
        feed = Feed(None)
        feed_value(feed, cls.__qualname__, [])
        for method in sorted(found, key=lambda m: m.__qualname__):
            feed_value(feed, method.__qualname__, [])
            feed.write(code_digest(method.__code__, method.__doc__).encode())
        for name, value in sorted(vars(cls).items()):
            if not (name.startswith("_") and name.endswith("_")) and is_constant(value):
                feed_value(feed, (name, value), [])
        names, chains, imports, digest, source = [], set(), [], feed.hasher.hexdigest(), None
    attributes: set[str] = set()
    for method in found:
        more_names, more_chains, more_attributes, more_imports = scan_code(method.__code__)
        names += [n for n in more_names if n not in names]
        chains |= more_chains
        attributes |= more_attributes
        imports += more_imports
    info = CodeInfo(
        digest, tuple(names), frozenset(chains), frozenset(attributes), tuple(imports), source
    )
    _CLASSES[cls] = info
    return info


def _class_runs(
    cls: type, node: ast.ClassDef, index: SourceIndex, live: list[types.FunctionType]
) -> bool:
    """Whether ``node`` is the source of ``cls``: each of its ``live`` methods (those from this
    file) is the code the source compiles to, and :func:`_body_matches`."""
    if not all(_runs(index, method.__code__) for method in live):
        return False
    keys = {(m.__code__.co_firstlineno, m.__code__.co_name) for m in live}
    return _body_matches(cls, node, keys)


def _body_matches(owner: type, node: ast.ClassDef, live: set[tuple[int, str]]) -> bool:
    """Whether the class body ``node`` agrees with the class ``owner`` it made, as far as the class
    shows: each ``def`` is a live method (at ``live``: first line and name), or its name is bound
    to something that is not unwrapped to one (``typing.overload`` stubs); each nested class agrees
    with the class of its name; each attribute assigned an immutable literal has that value."""
    namespace = vars(owner)
    for statement in node.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            key = (first_line(statement), statement.name)
            if key not in live and _mangle(owner, statement.name) not in namespace:
                return False
        elif isinstance(statement, ast.ClassDef):
            inner = namespace.get(_mangle(owner, statement.name), _MISSING)
            if inner is _MISSING:
                return False
            if isinstance(inner, type) and not _body_matches(inner, statement, live):
                return False
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                if isinstance(target, ast.Name) and not _literal_matches(
                    statement.value, namespace.get(_mangle(owner, target.id), _MISSING), owner
                ):
                    return False
    return True


_MISSING = object()


def _literal_matches(expression: ast.expr, live: object, owner: type) -> bool:
    """False only if ``expression`` is an immutable literal and ``live``, the class attribute it
    was assigned to, is a different constant (an enum member: with a different value)."""
    try:
        literal = ast.literal_eval(expression)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return True  # not a literal: what it evaluated to cannot be told from the source
    if not is_constant(literal):
        return True  # a mutable literal (a class-level cache...) may have changed since
    if isinstance(live, enum.Enum) and type(live) is owner:
        live = live.value
    elif live is _MISSING or not is_constant(live):
        return True  # moved elsewhere (a slotted dataclass's defaults), or replaced by a descriptor
    return value_digest(live) == value_digest(literal)


def _mangle(owner: type, name: str) -> str:
    """``name`` as a class body stores it: ``__x`` in class ``_A`` becomes ``_A__x``."""
    if name.startswith("__") and not name.endswith("__"):
        stripped = owner.__name__.lstrip("_")
        return f"_{stripped}{name}" if stripped else name
    return name
