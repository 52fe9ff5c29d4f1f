"""Code objects: the names they use, their digest without source, and whether two are the same.

Without source (code made by ``exec``, some REPLs), a function's code object is hashed instead of
its syntax: bytecode, constants and names, not the file name and line numbers, so formatting does
not count, but a docstring edit in a nested function does.

Source is used only for the code it compiles to: :func:`same_code` compares a live code object with
one compiled from the source read now, so that a file edited after its module was imported is not
taken for the code that runs.
"""

from __future__ import annotations
import __future__

import dis
import inspect
import types

from ._digest import Feed, feed_value

_GLOBAL_OPS = {"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_FROM_DICT_OR_GLOBALS"}
_ATTRIBUTE_OPS = {"LOAD_ATTR", "LOAD_METHOD"}
_NOT_A_FUNCTION = object()
_CO_HAS_DOCSTRING: int | None = getattr(inspect, "CO_HAS_DOCSTRING", None)  # Python 3.14+
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    if _feature not in ("nested_scopes", "generators"):  # always on: their flags mean other things
        _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag


def future_flags(code: types.CodeType) -> int:
    """The ``__future__`` flags ``code`` was compiled with, to compile its source with again."""
    return code.co_flags & _FUTURE_FLAGS


def scan_code(
    code: types.CodeType,
) -> tuple[list[str], set[tuple[str, ...]], set[str], list[tuple[str, int, tuple[str, ...]]]]:
    """Global names, attribute chains, all ``co_names`` and local imports of ``code`` and the code
    nested in it (inner functions, comprehensions, lambdas), from its bytecode."""
    names: dict[str, None] = {}
    chains: set[tuple[str, ...]] = set()
    attributes: set[str] = set()
    imports: list[tuple[str, int, tuple[str, ...]]] = []
    pending = [code]
    while pending:
        current = pending.pop()
        attributes.update(current.co_names)
        pending.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
        chain: list[str] | None = None
        constants: list[object] = [None, None]
        for instruction in dis.get_instructions(current):
            op = instruction.opname
            if op in _ATTRIBUTE_OPS and chain is not None:
                chain.append(instruction.argval)
                continue
            if chain is not None:
                chains.add(tuple(chain))
                chain = None
            if op in _GLOBAL_OPS:
                names.setdefault(instruction.argval)
                chain = [instruction.argval]
            elif op == "LOAD_CONST":
                constants = [constants[1], instruction.argval]
            elif op == "IMPORT_NAME":
                level = constants[0] if isinstance(constants[0], int) else 0
                imports.append((instruction.argval, level, ()))
            elif op == "IMPORT_FROM" and imports:
                module, level, fromlist = imports[-1]
                imports[-1] = (module, level, (*fromlist, instruction.argval))
        if chain is not None:
            chains.add(tuple(chain))
    return list(names), chains, attributes, imports


def _first_is_docstring(code: types.CodeType, docstring: object) -> bool:
    """Whether a function's first constant is its docstring's slot. Up to Python 3.13 a function's
    code always reserves it, holding the docstring or None; 3.14 says so with a flag."""
    if _CO_HAS_DOCSTRING is not None:
        return bool(code.co_flags & _CO_HAS_DOCSTRING)
    first = code.co_consts[0]
    return first is None or (isinstance(docstring, str) and first == docstring)


def code_digest(code: types.CodeType, docstring: object = _NOT_A_FUNCTION) -> str:
    """A digest of a code object without its file name and line numbers: what is hashed when there
    is no source. For a function's code (``docstring`` given: its ``__doc__``), the docstring's slot
    among the constants is left out, so that at least its own docstring does not count; docstrings
    of functions nested in it still do."""
    feed = Feed(None)
    feed_code(feed, code, docstring)
    return feed.hasher.hexdigest()


def feed_code(feed: Feed, code: types.CodeType, docstring: object = _NOT_A_FUNCTION) -> None:
    """Write what :func:`code_digest` hashes into ``feed``."""
    for value in (
        code.co_name,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_code,
        getattr(code, "co_exceptiontable", b""),
    ):
        feed_value(feed, value, [])
    constants = code.co_consts
    if docstring is not _NOT_A_FUNCTION and constants and _first_is_docstring(code, docstring):
        constants = constants[1:]
    feed.write(b"C%d:" % len(constants))
    for constant in constants:
        if isinstance(constant, types.CodeType):
            feed.write(b"K")
            feed_code(feed, constant)
        else:
            feed_value(feed, constant, [])


def same_code(live: types.CodeType, compiled: types.CodeType) -> bool:
    """Whether ``live`` runs what ``compiled`` does: the same bytecode, names and constants, code
    nested in them included; line numbers, the file name and docstrings aside (a fingerprint ignores
    docstrings, so source differing from the running code only in them still describes it)."""
    if live is compiled:
        return True
    docstring_flag = _CO_HAS_DOCSTRING or 0
    if (
        live.co_code != compiled.co_code
        or live.co_names != compiled.co_names
        or live.co_varnames != compiled.co_varnames
        or live.co_freevars != compiled.co_freevars
        or live.co_cellvars != compiled.co_cellvars
        or live.co_name != compiled.co_name
        or getattr(live, "co_qualname", None) != getattr(compiled, "co_qualname", None)
        or live.co_argcount != compiled.co_argcount
        or live.co_posonlyargcount != compiled.co_posonlyargcount
        or live.co_kwonlyargcount != compiled.co_kwonlyargcount
        or live.co_flags & ~docstring_flag != compiled.co_flags & ~docstring_flag
        or getattr(live, "co_exceptiontable", b"") != getattr(compiled, "co_exceptiontable", b"")
    ):
        return False
    mine, theirs = _body_constants(live), _body_constants(compiled)
    return len(mine) == len(theirs) and all(map(_same_constant, mine, theirs))


def _body_constants(code: types.CodeType) -> tuple[object, ...]:
    """``code``'s constants without a function's docstring slot (see :func:`_first_is_docstring`;
    only a ``def`` has one: its name is an identifier, unlike ``<lambda>`` or ``<listcomp>``)."""
    constants = code.co_consts
    if _CO_HAS_DOCSTRING is not None:
        has_slot = bool(code.co_flags & _CO_HAS_DOCSTRING)
    else:
        has_slot = bool(code.co_flags & inspect.CO_OPTIMIZED) and code.co_name.isidentifier()
    if has_slot and constants and (constants[0] is None or isinstance(constants[0], str)):
        return constants[1:]
    return constants


def _same_constant(mine: object, theirs: object) -> bool:
    """Constants compared exactly: by type too (``1`` is not ``1.0``), ``-0.0`` is not ``0.0``."""
    if type(mine) is not type(theirs):
        return False
    if isinstance(mine, types.CodeType) and isinstance(theirs, types.CodeType):
        return same_code(mine, theirs)
    if isinstance(mine, tuple) and isinstance(theirs, tuple):
        return len(mine) == len(theirs) and all(map(_same_constant, mine, theirs))
    if isinstance(mine, frozenset) and isinstance(theirs, frozenset):
        return sorted(map(repr, mine)) == sorted(map(repr, theirs))  # of constants, in any order
    if isinstance(mine, (float, complex)):
        return repr(mine) == repr(theirs)  # exact, and true for two NaNs
    return mine == theirs
