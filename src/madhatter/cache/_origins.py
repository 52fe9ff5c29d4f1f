"""Where an object's code comes from, and what a fingerprint calls it.

A fingerprint follows the user's code and records only the version of anyone else's: each module,
function and class is classified by its file as ``user``, ``madhatter``, ``stdlib`` or
``third-party`` (then with the top-level import name its distribution is looked up by).

A **user module** is one whose file is outside the interpreter's standard library and
``site-packages``/``dist-packages`` directories, and is not madhatter (``__main__`` and files
loaded by path count). The test is on those directories rather than on ``sys.prefix`` because a
system Python's prefix is ``/usr``, and projects live in ``/usr/src/app``.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.metadata
import os
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

Origin = Literal["user", "madhatter", "stdlib", "third-party"]

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
def path_origin(path: str) -> tuple[Origin, str | None]:
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


def is_madhatter_name(name: object) -> bool:
    return isinstance(name, str) and (name == "madhatter" or name.startswith("madhatter."))


def module_origin(module: types.ModuleType) -> tuple[Origin, str | None]:
    """Where ``module`` comes from (see :func:`path_origin`); for a module without a file, by
    name: built-in and standard library names are ``stdlib``, anything else (``__main__`` in a
    REPL, modules made at run time) ``user``, so that its code is followed."""
    name = module.__name__
    if is_madhatter_name(name):
        return "madhatter", None
    path = getattr(module, "__file__", None)
    if isinstance(path, str):
        origin, top = path_origin(path)
        return origin, top or name.partition(".")[0]
    top = name.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "stdlib", None
    locations = list(getattr(module, "__path__", None) or [])  # a namespace package
    if locations:
        return path_origin(os.path.join(locations[0], "__init__.py"))[0], top
    return "user", None


def named_module_origin(name: str | None) -> tuple[Origin, str | None]:
    """The origin of the module called ``name`` (the ``__module__`` of a class or builtin)."""
    if not isinstance(name, str):
        return "user", None
    module = sys.modules.get(name)
    if module is not None:
        return module_origin(module)
    top = name.partition(".")[0]
    if is_madhatter_name(name):
        return "madhatter", None
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "stdlib", None
    return "user", None


def function_origin(function: types.FunctionType) -> tuple[Origin, str | None]:
    """The origin of a Python function, by the file its code is in (``functools.wraps`` copies a
    wrapped function's ``__module__`` onto the wrapper, so the file is the better witness)."""
    filename = function.__code__.co_filename
    if os.path.isabs(filename):
        origin, top = path_origin(filename)
        if origin == "third-party" and top is None:
            top = str(function.__module__).partition(".")[0]
        return origin, top
    return named_module_origin(function.__globals__.get("__name__"))


def is_madhatter(value: object) -> bool:
    """Whether ``value`` is madhatter's own: its module, a function or class of it, or an instance
    of one of its classes (``parallel`` is a ``_Parallel``)."""
    if isinstance(value, types.ModuleType):
        return is_madhatter_name(value.__name__)
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return is_madhatter_name(getattr(value, "__module__", None))
    return is_madhatter_name(type(value).__module__)


def find_module_file(name: str) -> str | None:
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


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    """``importlib.metadata.packages_distributions()``, once per process (it reads every installed
    distribution's metadata: about 0.1 s with 150 installed)."""
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=1024)
def distributions(top: str) -> tuple[tuple[str, str], ...]:
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


def module_label(namespace: Mapping[str, Any]) -> str:
    """The name of the module whose globals are ``namespace``; ``__main__`` is named after its file,
    as the CLI names a pipeline file's module, so both ways of running it share fingerprints."""
    name = namespace.get("__name__")
    if name == "__main__":
        path = namespace.get("__file__")
        if isinstance(path, str):
            return os.path.splitext(os.path.basename(path))[0]
    return name if isinstance(name, str) else "<unknown>"


def function_label(function: types.FunctionType) -> str:
    """``module.qualname`` of a function, by the module it was *defined* in (its globals) and its
    code's qualname: both survive ``functools.wraps``, which copies the wrapped function's names."""
    qualname = getattr(function.__code__, "co_qualname", function.__qualname__)
    return f"{module_label(function.__globals__)}.{qualname}"


def class_label(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return f"{module_label(vars(module) if module else {'__name__': cls.__module__})}.{cls.__qualname__}"


def innermost(value: object) -> object:
    """``value`` without ``functools.partial``, bound-method and ``__wrapped__`` layers."""
    for _ in range(100):  # as inspect.unwrap: a chain this long is a cycle
        if isinstance(value, functools.partial):
            value = value.func
        elif isinstance(value, types.MethodType):
            value = value.__func__
        else:
            inner = wrapped(value)
            if inner is None:
                break
            value = inner
    return value


def wrapped(value: object) -> Callable[..., Any] | None:
    """What ``value`` wraps (its ``__wrapped__``, as ``functools.wraps`` and ``lru_cache`` set it),
    if that is callable and not ``value`` itself."""
    try:
        inner = getattr(value, "__wrapped__", None)
    except Exception:
        return None
    return inner if callable(inner) and inner is not value else None
