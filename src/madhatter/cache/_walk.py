"""The walk: from a step's function to every value its code reaches, classified.

User functions and classes are fingerprinted in turn (cycle-safe), third-party ones and modules
record their distribution's version (not their code), the standard library and madhatter record
nothing, constants are hashed by value, other data too when it pickles to at most
:data:`DATA_LIMIT` bytes, else it is recorded as ``untracked`` with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

from ._digest import TooLarge, bounded_digest, is_constant
from ._info import CodeInfo, class_info, class_methods, function_info
from ._origins import (
    class_label,
    distributions,
    find_module_file,
    function_label,
    function_origin,
    is_madhatter,
    is_madhatter_name,
    module_label,
    module_origin,
    named_module_origin,
    path_origin,
    wrapped,
)
from ._source import file_digest

DATA_LIMIT = 1 << 20
"""Module-level data larger than this when pickled (1 MiB) is recorded as ``untracked`` rather than
hashed: hashing a large array or table on every run would cost more than most steps, and such data is
usually loaded at import time from a file (the file's content is then the thing to key on)."""


class Walker:
    """Classifies the values one step's code reaches and collects the parts of its fingerprint.

    One walker serves one :func:`._fingerprint.fingerprint_step` call: objects are remembered by
    ``id``, which is safe only while they are all alive, and values may change between calls.
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
        found = distributions(top)
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
        if is_madhatter(value):
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
                origin, top = named_module_origin(getattr(value, "__module__", None))
                if origin == "third-party":
                    self.distribution(top)
            else:
                self.visit(f"{label}.__self__", owner)
        elif (inner := wrapped(value)) is not None:
            if not self.first_visit(value):
                return
            self.visit_type_of(value)  # lru_cache, numba's dispatcher...: their package's version
            self.visit(label, inner)
        else:
            self.visit_data(label, value)

    def visit_type_of(self, value: object) -> None:
        kind = type(value)
        origin, top = named_module_origin(kind.__module__)
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
        constant = is_constant(value)
        digest = self.digests.get(id(value))
        if digest is None:
            try:
                digest = bounded_digest(value, None if constant else DATA_LIMIT)
            except TooLarge as exc:
                digest = exc
            except TypeError as exc:
                digest = exc
            self.digests[id(value)] = digest
            self.keep.append(value)
        if isinstance(digest, str):
            self.add("const" if constant else "data", label, digest)
        elif isinstance(digest, TooLarge):
            self.add("untracked", label, f"{type(value).__qualname__} (larger than 1 MiB pickled)")
        else:
            self.add("untracked", label, f"{type(value).__qualname__} (not hashable by value: {digest})")

    def visit_module(
        self, module: types.ModuleType, rests: Iterable[tuple[str, ...]], attributes: frozenset[str]
    ) -> None:
        origin, top = module_origin(module)
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
        label = module_label(vars(module))
        namespace = vars(module)
        for name in sorted(paths):
            followed = (id(module), name, tuple(sorted(paths[name])))
            if name not in namespace or followed in self.followed:
                continue
            self.followed.add(followed)
            self.visit(f"{label}.{name}", namespace[name], followed[2], attributes)

    def visit_names(self, info: CodeInfo, namespace: Mapping[str, Any], package: object) -> None:
        """Follow the globals (in ``namespace``) and the local imports that ``info`` names."""
        label = module_label(namespace)
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
        if top in sys.stdlib_module_names or is_madhatter_name(name):
            return
        path = find_module_file(name)
        origin = path_origin(path)[0] if path else "third-party"
        if origin == "user" and path is not None:
            try:
                stat = os.stat(path)
                self.parts[f"module:{name}"] = file_digest(path, (stat.st_mtime_ns, stat.st_size))
            except (OSError, SyntaxError, ValueError) as exc:
                self.parts[f"untracked:{name}"] = f"module source unreadable ({type(exc).__name__})"
        elif origin == "third-party":
            self.distribution(top)

    def visit_function(self, function: types.FunctionType) -> None:
        if not self.first_visit(function):
            return
        origin, top = function_origin(function)
        if origin == "user":
            info = function_info(function)
            label = function_label(function)
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
        inner = wrapped(function)
        if inner is not None:
            self.visit(function_label(function), inner)

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
        origin, top = named_module_origin(cls.__module__)
        if origin == "third-party":
            self.distribution(top)
        if origin != "user":
            return
        info = class_info(cls)
        self.add("code", class_label(cls), info.digest)
        module = sys.modules.get(cls.__module__)
        namespace = vars(module) if module is not None else {}
        self.visit_names(info, namespace, namespace.get("__package__"))
        for base in cls.__bases__:
            self.visit(f"{class_label(cls)}.<base>", base)
        for method in class_methods(cls, info):
            self.visit_closure(method, function_label(method))
