"""Fingerprints of a step's code: the part of a cached chunk's key that says which code made it.

A step's result may be reused only while everything that decides it is unchanged. For the code, that
is the step's own function, the module-level functions, classes and constants it uses (transitively,
through the user's own modules), and the versions of the third-party distributions it reaches. Peers
get this wrong in both directions: ``joblib.Memory`` hashes a function's own source, so it misses an
edit in a nested helper yet invalidates on a docstring edit; Hamilton versions only a node's own code.

How a fingerprint is made:

* **Code is compared as syntax, not text.** A function's or class's source is parsed with ``ast``
  and dumped without positions, docstrings (and other bare string statements, which are no-ops) and
  madhatter's own decorators (``@parallel(chunk_by=...)`` and friends: their options do not change
  what the function returns). Comments and formatting vanish by construction. Without source (code
  made by ``exec``, some REPLs), the code object is hashed instead (bytecode, constants, names);
  there, formatting still does not count but a docstring edit in a nested function does. Lambdas are
  always hashed by code object: their source line may hold other code, and they have no docstring.
* **What code uses is found in its bytecode.** ``LOAD_GLOBAL`` names (and attribute chains after
  them, so ``mymod.helper`` names ``helper`` of ``mymod``), local ``import`` statements, closure
  cells and default values. Each referenced value is classified (:meth:`_Walker.visit`): user
  functions and classes are fingerprinted in turn (cycle-safe), third-party ones and modules record
  their distribution's version (not their code), the standard library and madhatter record nothing,
  constants are hashed by value, other data too when it pickles to at most :data:`DATA_LIMIT` bytes,
  else it is recorded as ``untracked`` with the reason.
* **A user module** is one whose file is outside the interpreter's standard library and
  ``site-packages``/``dist-packages`` directories, and is not madhatter (``__main__`` and files
  loaded by path count). The test is on those directories rather than on ``sys.prefix`` because a
  system Python's prefix is ``/usr``, and projects live in ``/usr/src/app``.
* **Deterministic across processes.** Nothing depends on ``id()``, ``hash()`` or memory addresses:
  sets are hashed with their elements sorted by digest, pickling uses the pure-Python pickler with a
  fixed protocol, ``__main__`` is named after its file, as the CLI names a pipeline file's module.
* **Fast.** The normalised code and the names it uses are computed once per function object (and
  each file is parsed once), so a run re-walks only the references, whose values may have changed.

Every part that went in is kept in :attr:`Fingerprint.parts` (``madhatter cache explain`` shows
them, and :meth:`Fingerprint.changes` says which changed).
"""

from __future__ import annotations

import ast
import dataclasses
import dis
import enum
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import linecache
import os
import pickle
import re
import site
import sys
import sysconfig
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import cloudpickle

DIGEST_SIZE = 16
"""Bytes of blake2b output: 32 hex characters, as the chunk cache's keys."""

DATA_LIMIT = 1 << 20
"""Module-level data larger than this when pickled (1 MiB) is recorded as ``untracked`` rather than
hashed: hashing a large array or table on every run would cost more than most steps, and such data is
usually loaded at import time from a file (the file's content is then the thing to key on)."""

PICKLE_PROTOCOL = 5
"""Fixed, so that a digest does not change with the interpreter's default protocol."""

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})
_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_CONTAINER_TAGS: dict[type, bytes] = {tuple: b"t", list: b"l", dict: b"d", set: b"S", frozenset: b"Z"}

Origin = Literal["user", "madhatter", "stdlib", "third-party"]


# --------------------------------------------------------------------------------------------------
# The public result


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """The fingerprint of one step: a digest, and the parts it was made of.

    Attributes:
        digest: blake2b (32 hex characters) of all parts, in sorted order of their keys.
        parts: what went in, key -> value, e.g. ``"code:mymod.clean"`` -> digest of its normalised
            code, ``"const:mymod.SCALE"`` -> digest of its value, ``"dist:numpy"`` -> ``"1.26.4"``,
            ``"param:threshold"`` -> digest, ``"key:cache_key"`` -> digest (the driver's ``extra``),
            ``"untracked:mymod.DATA"`` -> why it could not be hashed, ``"step"`` -> the step's
            qualified name, ``"python"`` -> ``"cpython 3.11"``. Other kinds: ``data:`` (non-constant
            module-level data hashed by value) and ``module:`` (a user module imported inside a
            function but not yet imported when fingerprinted: its whole normalised source).
    """

    digest: str
    parts: Mapping[str, str] = dataclasses.field(compare=False)

    def changes(self, previous: Fingerprint) -> list[str]:
        """What differs from ``previous``, as sentences (``"helper mymod.clean changed"``,
        ``"numpy 1.26.4 -> 2.0.0"``), in the sorted order of the parts' keys; empty if nothing."""
        if previous.digest == self.digest:
            return []
        step = self.parts.get("step", previous.parts.get("step"))
        sentences = []
        for key in sorted(set(self.parts) | set(previous.parts)):
            old, new = previous.parts.get(key), self.parts.get(key)
            if old != new:
                sentences.append(_describe(key, old, new, step))
        return sentences


def _describe(key: str, old: str | None, new: str | None, step: str | None) -> str:
    """One sentence for :meth:`Fingerprint.changes`."""
    kind, _, name = key.partition(":")
    if kind == "dist":
        if old is None:
            return f"{name} {new} is newly imported"
        return f"{name} is no longer imported" if new is None else f"{name} {old} -> {new}"
    if kind == "python" or kind == "step":
        label = "Python" if kind == "python" else "step renamed:"
        return f"{label} {old} -> {new}"
    if kind == "untracked":
        if new is None:
            return f"{name} is no longer untracked"
        return f"{name} is untracked: {new}"
    noun = {
        "code": "step" if name == step else "helper",
        "const": "constant",
        "data": "data",
        "param": "parameter",
        "module": "module",
        "key": "input",
    }.get(kind, kind)
    if old is None:
        return f"{noun} {name} is new"
    if new is None:
        return f"{noun} {name} is no longer {'read' if kind == 'param' else 'used'}"
    return f"{noun} {name} changed"


def fingerprint_step(
    function: Callable[..., Any],
    *,
    params: Mapping[str, Any] = _EMPTY,
    extra: Mapping[str, Any] = _EMPTY,
) -> Fingerprint:
    """Fingerprint a step's code, the run parameters it reads and the driver's other inputs.

    Args:
        function: the step's function (``functools.partial``, ``__wrapped__`` layers and bound
            methods are looked through). A ``setup=`` callable recorded by ``@parallel`` is
            fingerprinted with it, since what it returns is passed to the function.
        params: the run parameters the step reads, name -> value; each becomes ``param:name``.
        extra: other inputs that decide the result (the step kind, ``on_error``, a user's
            ``cache_key=``...); each becomes ``key:name``.

    Returns:
        The :class:`Fingerprint`.

    Raises:
        TypeError: a parameter or ``extra`` value cannot be hashed by value (see
            :func:`value_digest`). Unhashable module-level data only becomes an ``untracked`` part,
            but an input the caller passed must be tracked, or a change to it would go unseen.
    """
    walker = _Walker()
    innermost = _innermost(function)
    if isinstance(innermost, types.FunctionType):
        walker.parts["step"] = _function_label(innermost)
    else:
        walker.parts["step"] = getattr(innermost, "__qualname__", type(innermost).__qualname__)
    walker.parts["python"] = f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}"
    walker.visit(walker.parts["step"], function)
    spec = getattr(function, "__madhatter__", None) or getattr(innermost, "__madhatter__", None)
    setup = getattr(spec, "setup", None)
    if setup is not None:
        walker.visit(f"{walker.parts['step']}.<setup>", setup)
    for kind, values in (("param", params), ("key", extra)):
        for name, value in values.items():
            try:
                walker.parts[f"{kind}:{name}"] = value_digest(value)
            except TypeError as exc:
                what = "parameter" if kind == "param" else "input"
                raise TypeError(f"cannot fingerprint {what} {name!r}: {exc}") from None
    return Fingerprint(
        _combine(walker.parts), types.MappingProxyType(dict(sorted(walker.parts.items())))
    )


def _combine(parts: Mapping[str, str]) -> str:
    """The digest of ``parts``: every key and value, length-prefixed, in sorted key order."""
    hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for key in sorted(parts):
        for text in (key, parts[key]):
            data = text.encode()
            hasher.update(b"%d:" % len(data))
            hasher.update(data)
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------------
# Hashing values


class _TooLarge(Exception):
    """Raised by :class:`_Feed` past its limit, to stop hashing (and pickling) early."""


class _Feed:
    """A blake2b hasher with a file's ``write``, counting bytes against an optional limit, so that
    pickling can stream into it and stop at the limit instead of building the bytes first."""

    __slots__ = ("hasher", "limit", "size")

    def __init__(self, limit: int | None) -> None:
        self.hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self.size = 0
        self.limit = limit

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = memoryview(data).nbytes
        self.size += size
        if self.limit is not None and self.size > self.limit:
            raise _TooLarge
        self.hasher.update(data)
        return size

    def child(self) -> _Feed:
        """A fresh hasher sharing what is left of this one's limit (for sub-digests)."""
        return _Feed(None if self.limit is None else self.limit - self.size)


def value_digest(value: object) -> str:
    """A digest (32 hex characters) of ``value``'s content, stable across processes and runs.

    Common built-in types are encoded structurally, each with a type tag (so ``1``, ``1.0`` and
    ``True`` differ): ``None``, ``bool``, ``int``, ``float`` (exactly, via ``float.hex``),
    ``complex``, ``str``, ``bytes``, ``bytearray``, ``tuple``, ``list``, ``dict``, ``set``,
    ``frozenset`` and enum members. Sets are hashed with their elements sorted by digest, because
    their iteration order changes with string hash randomisation. Dicts keep insertion order: it is
    deterministic for a deterministic program, and a step that iterates a dict sees it, so two dicts
    in different orders are different inputs. Anything else is pickled (protocol 5, the pure-Python
    pickler with sets sorted as above; cloudpickle if plain pickle refuses) and the pickle hashed.
    Functions and classes inside a value pickle by reference, so only their names count here; the
    code they run is what :func:`fingerprint_step` follows.

    Raises:
        TypeError: ``value`` (or something in it) cannot be pickled.
    """
    return _digest(value, None)


def _digest(value: object, limit: int | None) -> str:
    """:func:`value_digest` with an optional limit in bytes; raises :class:`_TooLarge` past it."""
    feed = _Feed(limit)
    try:
        _feed_value(feed, value, [])
    except RecursionError:
        raise TypeError(f"{type(value).__qualname__} is nested too deeply to hash") from None
    return feed.hasher.hexdigest()


def _feed_value(feed: _Feed, value: object, path: list[object]) -> None:
    """Write the canonical encoding of ``value`` into ``feed``; ``path`` holds the containers
    being encoded, so that a container inside itself is written as a back reference."""
    kind = type(value)
    if value is None or value is Ellipsis:
        feed.write(b"N" if value is None else b"E")
    elif kind is bool:
        feed.write(b"T" if value else b"F")
    elif kind is int:
        feed.write(b"i%s;" % hex(value).encode())  # type: ignore[arg-type]
    elif kind is float:
        feed.write(b"f%s;" % value.hex().encode())  # type: ignore[attr-defined]
    elif kind is complex:
        feed.write(b"c%s,%s;" % (value.real.hex().encode(), value.imag.hex().encode()))  # type: ignore[attr-defined]
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        feed.write(b"s%d:" % len(data))
        feed.write(data)
    elif kind is bytes or kind is bytearray:
        feed.write(b"%s%d:" % (b"b" if kind is bytes else b"y", len(value)))  # type: ignore[arg-type]
        feed.write(value)  # type: ignore[arg-type]
    elif isinstance(value, enum.Enum):
        feed.write(b"e%s:" % f"{kind.__module__}.{kind.__qualname__}.{value.name}".encode())
        _feed_value(feed, value.value, path)
    elif kind in (tuple, list, dict, set, frozenset):
        for depth, container in enumerate(path):
            if container is value:
                feed.write(b"R%d;" % depth)
                return
        path.append(value)
        _feed_container(feed, value, path)
        path.pop()
    else:
        child = feed.child()
        _pickle_into(child, value)
        feed.size += child.size
        feed.write(b"P" + child.hasher.digest())


def _feed_container(feed: _Feed, value: Any, path: list[object]) -> None:
    tag = _CONTAINER_TAGS[type(value)]
    feed.write(b"%s%d:" % (tag, len(value)))
    if isinstance(value, dict):
        for key, item in value.items():
            _feed_value(feed, key, path)
            _feed_value(feed, item, path)
    elif isinstance(value, (set, frozenset)):
        digests = []
        for item in value:
            child = feed.child()
            _feed_value(child, item, path)
            feed.size += child.size
            digests.append(child.hasher.digest())
        for digest in sorted(digests):
            feed.write(digest)
    else:
        for item in value:
            _feed_value(feed, item, path)


class _CanonicalPickler(pickle._Pickler):
    """The pure-Python pickler, writing sets with their elements sorted by digest (the C pickler
    writes exact sets itself, in iteration order, which string hash randomisation changes)."""

    def reducer_override(self, obj: object) -> Any:
        if type(obj) is set or type(obj) is frozenset:
            return type(obj), (sorted(obj, key=value_digest),)
        return NotImplemented


def _pickle_into(feed: _Feed, value: object) -> None:
    """Pickle ``value`` into ``feed``: canonically if possible, else with cloudpickle (which can
    pickle lambdas and local classes, though not always identically across processes)."""
    try:
        _CanonicalPickler(feed, protocol=PICKLE_PROTOCOL).dump(value)
        return
    except _TooLarge:
        raise
    except Exception as exc:
        first = exc
    retry = _Feed(feed.limit)
    try:
        cloudpickle.CloudPickler(retry, protocol=PICKLE_PROTOCOL).dump(value)
    except _TooLarge:
        raise
    except Exception:
        reason = _ADDRESS.sub("", f"{type(first).__name__}: {first}")
        raise TypeError(f"a {type(value).__qualname__} cannot be hashed by value ({reason})") from None
    feed.hasher, feed.size = retry.hasher, retry.size


def _is_constant(value: object) -> bool:
    """Whether ``value`` is immutable data: the constant types, enum members, and tuples and
    frozensets of them."""
    if isinstance(value, enum.Enum) or type(value) in _CONSTANT_TYPES:
        return True
    if type(value) is tuple or type(value) is frozenset:
        return all(_is_constant(item) for item in value)
    return False


# --------------------------------------------------------------------------------------------------
# Where an object comes from


_MADHATTER_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep


def _real_dirs(paths: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(sorted({os.path.realpath(p) + os.sep for p in paths if p}))


_STDLIB_DIRS = _real_dirs(
    [os.path.dirname(os.__file__), sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")]
)
_SITE_DIRS = _real_dirs(
    [
        sysconfig.get_path("purelib"),
        sysconfig.get_path("platlib"),
        *(site.getsitepackages() if hasattr(site, "getsitepackages") else []),
        site.getusersitepackages() if hasattr(site, "getusersitepackages") else None,
    ]
)
_SITE_NAMES = {"site-packages", "dist-packages"}


@functools.lru_cache(maxsize=4096)
def _path_origin(path: str) -> tuple[Origin, str | None]:
    """Where the file at ``path`` comes from, and for third-party files the top-level import name
    (the directory entry right under ``site-packages``), to look its distribution up by."""
    real = os.path.realpath(path)
    if real.startswith(_MADHATTER_DIR):
        return "madhatter", None
    parts = real.split(os.sep)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in _SITE_NAMES:
            return "third-party", parts[index + 1].partition(".")[0]
    for directory in _SITE_DIRS:
        if real.startswith(directory):
            return "third-party", real[len(directory) :].split(os.sep)[0].partition(".")[0]
    if any(real.startswith(directory) for directory in _STDLIB_DIRS):
        return "stdlib", None
    return "user", None


def _is_madhatter_name(name: object) -> bool:
    return isinstance(name, str) and (name == "madhatter" or name.startswith("madhatter."))


def _module_origin(module: types.ModuleType) -> tuple[Origin, str | None]:
    """Where ``module`` comes from (see :func:`_path_origin`); for a module without a file, by
    name: built-in and standard library names are ``stdlib``, anything else (``__main__`` in a
    REPL, modules made at run time) ``user``, so that its code is followed."""
    name = module.__name__
    if _is_madhatter_name(name):
        return "madhatter", None
    path = getattr(module, "__file__", None)
    if isinstance(path, str):
        origin, top = _path_origin(path)
        return origin, top or name.partition(".")[0]
    top = name.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "stdlib", None
    locations = list(getattr(module, "__path__", None) or [])  # a namespace package
    if locations:
        return _path_origin(os.path.join(locations[0], "__init__.py"))[0], top
    return "user", None


def _named_module_origin(name: str | None) -> tuple[Origin, str | None]:
    """The origin of the module called ``name`` (the ``__module__`` of a class or builtin)."""
    if not isinstance(name, str):
        return "user", None
    module = sys.modules.get(name)
    if module is not None:
        return _module_origin(module)
    top = name.partition(".")[0]
    if _is_madhatter_name(name):
        return "madhatter", None
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "stdlib", None
    return "user", None


def _function_origin(function: types.FunctionType) -> tuple[Origin, str | None]:
    """The origin of a Python function, by the file its code is in (``functools.wraps`` copies a
    wrapped function's ``__module__`` onto the wrapper, so the file is the better witness)."""
    filename = function.__code__.co_filename
    if os.path.isabs(filename):
        origin, top = _path_origin(filename)
        if origin == "third-party" and top is None:
            top = str(function.__module__).partition(".")[0]
        return origin, top
    return _named_module_origin(function.__globals__.get("__name__"))


def _is_madhatter(value: object) -> bool:
    """Whether ``value`` is madhatter's own: its module, a function or class of it, or an instance
    of one of its classes (``parallel`` is a ``_Parallel``)."""
    if isinstance(value, types.ModuleType):
        return _is_madhatter_name(value.__name__)
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return _is_madhatter_name(getattr(value, "__module__", None))
    return _is_madhatter_name(type(value).__module__)


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    """``importlib.metadata.packages_distributions()``, once per process (it reads every installed
    distribution's metadata: about 0.1 s with 150 installed)."""
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=1024)
def _distributions(top: str) -> tuple[tuple[str, str], ...]:
    """(name, version) of the distributions that install the top-level module ``top``.

    A distribution named like the module (``numpy``, ``cloudpickle``) is found directly, in well
    under a millisecond; other names (``yaml`` from PyYAML, ``sklearn``) need the full map."""
    try:
        found = importlib.metadata.distribution(top)
        return ((str(found.metadata["Name"]), found.version),)
    except importlib.metadata.PackageNotFoundError:
        pass
    versions = set()
    for name in _packages_distributions().get(top, []):
        try:
            versions.add((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(sorted(versions))


def _module_label(namespace: Mapping[str, Any]) -> str:
    """The name of the module whose globals are ``namespace``; ``__main__`` is named after its file,
    as the CLI names a pipeline file's module, so both ways of running it share fingerprints."""
    name = namespace.get("__name__")
    if name == "__main__":
        path = namespace.get("__file__")
        if isinstance(path, str):
            return os.path.splitext(os.path.basename(path))[0]
    return name if isinstance(name, str) else "<unknown>"


def _function_label(function: types.FunctionType) -> str:
    """``module.qualname`` of a function, by the module it was *defined* in (its globals) and its
    code's qualname: both survive ``functools.wraps``, which copies the wrapped function's names."""
    qualname = getattr(function.__code__, "co_qualname", function.__qualname__)
    return f"{_module_label(function.__globals__)}.{qualname}"


def _class_label(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return (
        f"{_module_label(vars(module) if module else {'__name__': cls.__module__})}.{cls.__qualname__}"
    )


def _innermost(value: object) -> object:
    """``value`` without ``functools.partial``, bound-method and ``__wrapped__`` layers."""
    for _ in range(100):  # as inspect.unwrap: a chain this long is a cycle
        if isinstance(value, functools.partial):
            value = value.func
        elif isinstance(value, types.MethodType):
            value = value.__func__
        else:
            wrapped = _wrapped(value)
            if wrapped is None:
                break
            value = wrapped
    return value


def _wrapped(value: object) -> Callable[..., Any] | None:
    """What ``value`` wraps (its ``__wrapped__``, as ``functools.wraps`` and ``lru_cache`` set it),
    if that is callable and not ``value`` itself."""
    try:
        wrapped = getattr(value, "__wrapped__", None)
    except Exception:
        return None
    return wrapped if callable(wrapped) and wrapped is not value else None


# --------------------------------------------------------------------------------------------------
# What code says and uses, computed once per function, class or file


@dataclasses.dataclass(frozen=True)
class _CodeInfo:
    """The normalised code of a function or class, and the names it uses.

    Attributes:
        digest: digest of the normalised syntax (or of the code object, without source).
        names: global names it loads, in first-use order.
        chains: attribute paths from a global, ``("mymod", "helper")`` for ``mymod.helper``.
        attributes: every name in its code (``co_names``): for a module used without an attribute
            (passed as a value), its attributes of these names are followed.
        imports: local imports, (module, level, imported names).
        source: for a class found in its file's source, that file: only its methods from that
            file are followed (see :func:`_class_methods`).
    """

    digest: str
    names: tuple[str, ...]
    chains: frozenset[tuple[str, ...]]
    attributes: frozenset[str]
    imports: tuple[tuple[str, int, tuple[str, ...]], ...]
    source: str | None = None


@dataclasses.dataclass
class _SourceIndex:
    """A parsed file: function nodes by first line (the first decorator's, as ``co_firstlineno``),
    class nodes by qualname (the last definition wins, as at run time)."""

    functions: dict[int, list[ast.FunctionDef | ast.AsyncFunctionDef]]
    classes: dict[str, ast.ClassDef]


_SOURCES: dict[str, tuple[list[str], _SourceIndex]] = {}
_FUNCTIONS: weakref.WeakKeyDictionary[types.FunctionType, tuple[types.CodeType, _CodeInfo]] = (
    weakref.WeakKeyDictionary()
)
_CLASSES: weakref.WeakKeyDictionary[type, _CodeInfo] = weakref.WeakKeyDictionary()
_GLOBAL_OPS = {"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_FROM_DICT_OR_GLOBALS"}
_ATTRIBUTE_OPS = {"LOAD_ATTR", "LOAD_METHOD"}


def _source_index(filename: str, namespace: Mapping[str, Any] | None) -> _SourceIndex | None:
    """The parsed source of ``filename`` (from ``linecache``, which also knows IPython cells),
    re-parsed when ``linecache`` finds the file changed on disk, as ``inspect`` does."""
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, namespace if isinstance(namespace, dict) else None)
    if not lines:
        return None
    cached = _SOURCES.get(filename)
    if cached is not None and cached[0] is lines:
        return cached[1]
    index = _SourceIndex({}, {})
    try:
        tree = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                index.functions.setdefault(first, []).append(child)
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


def _ast_digest(node: ast.AST, dropped: frozenset[int] = frozenset()) -> str:
    out: list[str] = []
    _dump(node, out, dropped)
    return hashlib.blake2b(
        "".join(out).encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE
    ).hexdigest()


def _chain(node: ast.expr) -> tuple[str, ...] | None:
    """``("a", "b", "c")`` for the expression ``a.b.c``; None if it is not such a path."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return (node.id, *reversed(names))


def _ast_references(
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
            chain = _chain(node)
            if chain is not None:
                chains.add(chain)
        elif isinstance(node, ast.Import):
            imports.extend((alias.name, 0, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.module or "", node.level, tuple(a.name for a in node.names)))
        pending.extend(reversed(list(ast.iter_child_nodes(node))))
    return list(names), chains, imports


def _scan_code(
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


_NOT_A_FUNCTION = object()
_CO_HAS_DOCSTRING: int | None = getattr(inspect, "CO_HAS_DOCSTRING", None)  # Python 3.14+


def _first_is_docstring(code: types.CodeType, docstring: object) -> bool:
    """Whether a function's first constant is its docstring's slot. Up to Python 3.13 a function's
    code always reserves it, holding the docstring or None; 3.14 says so with a flag."""
    if _CO_HAS_DOCSTRING is not None:
        return bool(code.co_flags & _CO_HAS_DOCSTRING)
    first = code.co_consts[0]
    return first is None or (isinstance(docstring, str) and first == docstring)


def _code_digest(code: types.CodeType, docstring: object = _NOT_A_FUNCTION) -> str:
    """A digest of a code object without its file name and line numbers: what is hashed when there
    is no source. For a function's code (``docstring`` given: its ``__doc__``), the docstring's slot
    among the constants is left out, so that at least its own docstring does not count; docstrings
    of functions nested in it still do."""
    feed = _Feed(None)
    _feed_code(feed, code, docstring)
    return feed.hasher.hexdigest()


def _feed_code(feed: _Feed, code: types.CodeType, docstring: object = _NOT_A_FUNCTION) -> None:
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
        _feed_value(feed, value, [])
    constants = code.co_consts
    if docstring is not _NOT_A_FUNCTION and constants and _first_is_docstring(code, docstring):
        constants = constants[1:]
    feed.write(b"C%d:" % len(constants))
    for constant in constants:
        if isinstance(constant, types.CodeType):
            feed.write(b"K")
            _feed_code(feed, constant)
        else:
            _feed_value(feed, constant, [])


def _function_info(function: types.FunctionType) -> _CodeInfo:
    """The :class:`_CodeInfo` of a function, cached while the function lives (and keeps its code)."""
    code = function.__code__
    cached = _FUNCTIONS.get(function)
    if cached is not None and cached[0] is code:
        return cached[1]
    names, chains, attributes, imports = _scan_code(code)
    node = None
    if function.__name__ != "<lambda>":
        index = _source_index(code.co_filename, function.__globals__)
        for candidate in index.functions.get(code.co_firstlineno, []) if index else []:
            if candidate.name == code.co_name:
                node = candidate
    if node is None:
        digest = _code_digest(code, function.__doc__)
    else:
        dropped = frozenset(
            id(d) for d in node.decorator_list if _is_madhatter_decorator(d, function.__globals__)
        )
        digest = _ast_digest(node, dropped)
        # Kept decorators run at definition time, so their names are not in the function's code.
        kept = [d for d in node.decorator_list if id(d) not in dropped]
        more_names, more_chains, _ = _ast_references(kept)
        names += [n for n in more_names if n not in names]
        chains |= more_chains
    info = _CodeInfo(digest, tuple(names), frozenset(chains), frozenset(attributes), tuple(imports))
    _FUNCTIONS[function] = (code, info)
    return info


def _is_madhatter_decorator(expression: ast.expr, namespace: Mapping[str, Any]) -> bool:
    """Whether a decorator expression (``parallel``, ``madhatter.parallel.map(n=2)``...) resolves,
    in the function's globals, to one of madhatter's objects."""
    target = expression.func if isinstance(expression, ast.Call) else expression
    chain = _chain(target)
    if chain is None or chain[0] not in namespace:
        return False
    value = namespace[chain[0]]
    for attribute in chain[1:]:
        if _is_madhatter(value):
            return True
        try:
            value = getattr(value, attribute)
        except Exception:
            return False
    return _is_madhatter(value)


def _methods(cls: type) -> list[types.FunctionType]:
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
                    found.extend(_methods(candidate))
                continue
            function = _innermost(candidate)
            if isinstance(function, types.FunctionType) and function.__qualname__.startswith(prefix):
                found.append(function)
    return found


def _class_methods(cls: type, info: _CodeInfo) -> list[types.FunctionType]:
    """The methods whose code is in the class's source (when it was found: not, for example, the
    ``__init__`` a dataclass generates, whose inputs are in the class body already)."""
    methods = _methods(cls)
    if info.source is None:
        return methods
    return [m for m in methods if m.__code__.co_filename == info.source]


def _class_info(cls: type) -> _CodeInfo:
    """The :class:`_CodeInfo` of a user class: its normalised source (methods included), the names
    its body uses outside methods, and those its methods' code uses. Without source: the digests of
    its methods' code objects instead."""
    cached = _CLASSES.get(cls)
    if cached is not None:
        return cached
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    index = _source_index(path, vars(module)) if isinstance(path, str) and module else None
    node = index.classes.get(cls.__qualname__) if index else None
    methods = _methods(cls)
    if node is not None and isinstance(path, str):
        names, chains, imports = _ast_references([node], skip_function_bodies=True)
        digest, source = _ast_digest(node), path
        methods = [m for m in methods if m.__code__.co_filename == path]
    else:
        feed = _Feed(None)
        _feed_value(feed, cls.__qualname__, [])
        for method in sorted(methods, key=lambda m: m.__qualname__):
            _feed_value(feed, method.__qualname__, [])
            feed.write(_code_digest(method.__code__, method.__doc__).encode())
        names, chains, imports, digest, source = [], set(), [], feed.hasher.hexdigest(), None
    attributes: set[str] = set()
    for method in methods:
        more_names, more_chains, more_attributes, more_imports = _scan_code(method.__code__)
        names += [n for n in more_names if n not in names]
        chains |= more_chains
        attributes |= more_attributes
        imports += more_imports
    info = _CodeInfo(
        digest, tuple(names), frozenset(chains), frozenset(attributes), tuple(imports), source
    )
    _CLASSES[cls] = info
    return info


def _find_module_file(name: str) -> str | None:
    """The file of module ``name``, found without importing it (nor its parent packages)."""
    locations: list[str] | None = None
    spec = None
    parts = name.split(".")
    for count in range(1, len(parts) + 1):
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:count]), locations)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        search = spec.submodule_search_locations
        locations = list(search) if search is not None else None
        if locations is None and count < len(parts):
            return None
    return spec.origin if spec is not None and spec.has_location else None


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, stamp: tuple[int, int]) -> str:
    """The normalised source of a whole file (``stamp``, its mtime and size, keys the cache)."""
    with open(path, "rb") as file:
        return _ast_digest(ast.parse(file.read()))


# --------------------------------------------------------------------------------------------------
# The walk


class _Walker:
    """Classifies the values one step's code reaches and collects the parts of its fingerprint.

    One walker serves one :func:`fingerprint_step` call: objects are remembered by ``id``, which is
    safe only while they are all alive, and values may change between calls.
    """

    def __init__(self) -> None:
        self.parts: dict[str, str] = {}
        self.seen: set[int] = set()
        self.followed: set[tuple[int, str, tuple[tuple[str, ...], ...]]] = set()
        self.labelled: set[tuple[str, int]] = set()
        self.digests: dict[int, str | BaseException] = {}
        self.keep: list[object] = []  # keeps every object remembered by id alive for the walk

    def add(self, kind: str, name: str, value: str) -> None:
        """Record a part, under ``kind:name``, or ``kind:name#2``... for a different object of the
        same name (lambdas, a redefined function still referenced)."""
        key, number = f"{kind}:{name}", 1
        while key in self.parts:
            number += 1
            key = f"{kind}:{name}#{number}"
        self.parts[key] = value

    def distribution(self, top: str | None) -> None:
        """Record the versions of the distributions providing the top-level module ``top``."""
        if not top or top in sys.stdlib_module_names:
            return
        found = _distributions(top)
        for name, version in found:
            self.parts[f"dist:{name}"] = version
        if not found:
            self.parts[f"untracked:{top}"] = "no installed distribution provides this module"

    def first_visit(self, value: object) -> bool:
        if id(value) in self.seen:
            return False
        self.seen.add(id(value))
        self.keep.append(value)
        return True

    def visit(
        self,
        label: str,
        value: object,
        rests: Iterable[tuple[str, ...]] = ((),),
        attributes: frozenset[str] = frozenset(),
    ) -> None:
        """Classify ``value``, reached under the name ``label`` (``mymod.SCALE``).

        ``rests`` are the attribute paths the code takes from it (for modules), and ``attributes``
        the code's names (for a module used without one)."""
        if _is_madhatter(value):
            return
        if isinstance(value, types.ModuleType):
            self.visit_module(value, rests, attributes)
        elif isinstance(value, types.FunctionType):
            self.visit_function(value)
        elif isinstance(value, type):
            self.visit_class(value)
        elif isinstance(value, functools.partial):
            self.visit(label, value.func)
            for index, argument in enumerate(value.args):
                self.visit(f"{label}.<args>.{index}", argument)
            for name, argument in sorted(value.keywords.items()):
                self.visit(f"{label}.<args>.{name}", argument)
        elif isinstance(value, types.MethodType):
            self.visit(label, value.__func__)
            self.visit(f"{label}.__self__", value.__self__)
        elif isinstance(value, (staticmethod, classmethod)):
            self.visit(label, value.__func__)
        elif isinstance(value, types.BuiltinFunctionType):
            owner = value.__self__
            if owner is None or isinstance(owner, types.ModuleType):
                origin, top = _named_module_origin(getattr(value, "__module__", None))
                if origin == "third-party":
                    self.distribution(top)
            else:
                self.visit(f"{label}.__self__", owner)
        elif (wrapped := _wrapped(value)) is not None:
            if not self.first_visit(value):
                return
            self.visit_type_of(value)  # lru_cache, numba's dispatcher...: their package's version
            self.visit(label, wrapped)
        else:
            self.visit_data(label, value)

    def visit_type_of(self, value: object) -> None:
        kind = type(value)
        origin, top = _named_module_origin(kind.__module__)
        if origin == "user":
            self.visit_class(kind)
        elif origin == "third-party":
            self.distribution(top)

    def visit_data(self, label: str, value: object) -> None:
        """Module-level data, a closure cell or a default: its value, and its class's code."""
        if (label, id(value)) in self.labelled:  # a constant used by two helpers of its module
            return
        self.labelled.add((label, id(value)))
        self.visit_type_of(value)
        constant = _is_constant(value)
        digest = self.digests.get(id(value))
        if digest is None:
            try:
                digest = _digest(value, None if constant else DATA_LIMIT)
            except _TooLarge as exc:
                digest = exc
            except TypeError as exc:
                digest = exc
            self.digests[id(value)] = digest
            self.keep.append(value)
        if isinstance(digest, str):
            self.add("const" if constant else "data", label, digest)
        elif isinstance(digest, _TooLarge):
            self.add("untracked", label, f"{type(value).__qualname__} (larger than 1 MiB pickled)")
        else:
            self.add("untracked", label, f"{type(value).__qualname__} (not hashable by value: {digest})")

    def visit_module(
        self, module: types.ModuleType, rests: Iterable[tuple[str, ...]], attributes: frozenset[str]
    ) -> None:
        origin, top = _module_origin(module)
        if origin == "third-party":
            self.distribution(top)
            return
        if origin != "user":
            return
        paths: dict[str, set[tuple[str, ...]]] = {}
        for rest in rests:
            if rest:
                paths.setdefault(rest[0], set()).add(rest[1:])
            else:  # the module itself is used (passed on, or attributes taken later): any name
                for name in attributes:  # the code mentions may be one of its attributes
                    paths.setdefault(name, set()).add(())
        label = _module_label(vars(module))
        namespace = vars(module)
        for name in sorted(paths):
            followed = (id(module), name, tuple(sorted(paths[name])))
            if name not in namespace or followed in self.followed:
                continue
            self.followed.add(followed)
            self.visit(f"{label}.{name}", namespace[name], followed[2], attributes)

    def visit_names(self, info: _CodeInfo, namespace: Mapping[str, Any], package: object) -> None:
        """Follow the globals (in ``namespace``) and the local imports that ``info`` names."""
        label = _module_label(namespace)
        rests: dict[str, set[tuple[str, ...]]] = {}
        for chain in info.chains:
            rests.setdefault(chain[0], set()).add(chain[1:])
        for name in info.names:
            if name in namespace:
                self.visit(
                    f"{label}.{name}", namespace[name], sorted(rests.get(name, {()})), info.attributes
                )
        for module_name, level, imported in info.imports:
            self.visit_import(module_name, level, imported, package, info.attributes)

    def visit_import(
        self,
        name: str,
        level: int,
        imported: tuple[str, ...],
        package: object,
        attributes: frozenset[str],
    ) -> None:
        """A local ``import`` in a function: the module if it is imported already, else, without
        importing it, its distribution's version or (a user module) its whole source."""
        if level:
            try:
                name = importlib.util.resolve_name("." * level + name, str(package or ""))
            except (ImportError, ValueError):
                return
        module = sys.modules.get(name)
        if module is not None:
            names = [(n,) for n in imported if n != "*"]
            self.visit(name, module, names if names and "*" not in imported else [()], attributes)
            return
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or _is_madhatter_name(name):
            return
        path = _find_module_file(name)
        origin = _path_origin(path)[0] if path else "third-party"
        if origin == "user" and path is not None:
            try:
                stat = os.stat(path)
                self.parts[f"module:{name}"] = _file_digest(path, (stat.st_mtime_ns, stat.st_size))
            except (OSError, SyntaxError, ValueError) as exc:
                self.parts[f"untracked:{name}"] = f"module source unreadable ({type(exc).__name__})"
        elif origin == "third-party":
            self.distribution(top)

    def visit_function(self, function: types.FunctionType) -> None:
        if not self.first_visit(function):
            return
        origin, top = _function_origin(function)
        if origin == "user":
            info = _function_info(function)
            label = _function_label(function)
            self.add("code", label, info.digest)
            self.visit_names(info, function.__globals__, function.__globals__.get("__package__"))
            self.visit_closure(function, label)
            code = function.__code__
            positional = code.co_varnames[: code.co_posonlyargcount + code.co_argcount]
            defaults = function.__defaults__ or ()
            for name, default in zip(
                positional[len(positional) - len(defaults) :], defaults, strict=True
            ):
                self.visit(f"{label}.<default>.{name}", default)
            for name, default in sorted((function.__kwdefaults__ or {}).items()):
                self.visit(f"{label}.<default>.{name}", default)
        elif origin == "third-party":
            self.distribution(top)
        wrapped = _wrapped(function)
        if wrapped is not None:
            self.visit(_function_label(function), wrapped)

    def visit_closure(self, function: types.FunctionType, label: str) -> None:
        """The values of the variables ``function`` closes over (``__class__``, the class a method
        is defined in, excepted: it is being fingerprinted)."""
        names = function.__code__.co_freevars
        for name, cell in zip(names, function.__closure__ or (), strict=False):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not bound yet
                continue
            if name != "__class__":
                self.visit(f"{label}.<closure>.{name}", contents)

    def visit_class(self, cls: type) -> None:
        if not self.first_visit(cls):
            return
        origin, top = _named_module_origin(cls.__module__)
        if origin == "third-party":
            self.distribution(top)
        if origin != "user":
            return
        info = _class_info(cls)
        self.add("code", _class_label(cls), info.digest)
        module = sys.modules.get(cls.__module__)
        namespace = vars(module) if module is not None else {}
        self.visit_names(info, namespace, namespace.get("__package__"))
        for base in cls.__bases__:
            self.visit(f"{_class_label(cls)}.<base>", base)
        for method in _class_methods(cls, info):
            self.visit_closure(method, _function_label(method))
