"""Fingerprints of a step's code: the part of a cached chunk's key that says which code made it.

A step's result may be reused only while everything that decides it is unchanged. For the code, that
is the step's own function, the module-level functions, classes and constants it uses (transitively,
through the user's own modules), and the versions of the third-party distributions it reaches. Peers
get this wrong in both directions: ``joblib.Memory`` hashes a function's own source, so it misses an
edit in a nested helper yet invalidates on a docstring edit; Hamilton versions only a node's own code.

How a fingerprint is made (one module for each job):

* **Code is compared as syntax, not text** (:mod:`._source`). A function's or class's source is
  parsed with ``ast`` and dumped without positions, docstrings (and other bare string statements,
  which are no-ops) and madhatter's own decorators (``@parallel(chunk_by=...)`` and friends: their
  options do not change what the function returns). Comments and formatting vanish by construction.
* **Only the source of the code that runs** (:mod:`._info`). A file edited after its module was
  imported no longer describes the code that runs, so source is used only when it compiles to the
  live code objects; otherwise, and without source (code made by ``exec``, some REPLs), the code
  object is hashed instead (:mod:`._code`: bytecode, constants, names); there, formatting still
  does not count but a docstring edit in a nested function does. Lambdas are always hashed by code
  object: their source line may hold other code, and they have no docstring.
* **What code uses is found in its bytecode** (:mod:`._code`). ``LOAD_GLOBAL`` names (and
  attribute chains after them, so ``mymod.helper`` names ``helper`` of ``mymod``), local ``import``
  statements, closure cells and default values. Each referenced value is classified
  (:meth:`._walk.Walker.visit`) by where it comes from (:mod:`._origins`): user functions and
  classes are fingerprinted in turn, third-party ones record their distribution's version,
  the standard library and madhatter nothing, data its value (:mod:`._digest`).
* **Deterministic across processes.** Nothing depends on ``id()``, ``hash()`` or memory addresses:
  sets are hashed with their elements sorted by digest, pickling uses the pure-Python pickler with a
  fixed protocol, ``__main__`` is named after its file, as the CLI names a pipeline file's module.
* **Fast.** The normalised code and the names it uses are computed once per function object (and
  each file is parsed, and compiled, once), so a run re-walks only the references, whose values may
  have changed.

Every part that went in is kept in :attr:`Fingerprint.parts` (``madhatter cache explain`` shows
them, and :meth:`Fingerprint.changes` says which changed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

from ._digest import DIGEST_SIZE, value_digest
from ._origins import function_label, innermost
from ._walk import Walker

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


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
    walker = Walker()
    unwrapped = innermost(function)
    if isinstance(unwrapped, types.FunctionType):
        walker.parts["step"] = function_label(unwrapped)
    else:
        walker.parts["step"] = getattr(unwrapped, "__qualname__", type(unwrapped).__qualname__)
    walker.parts["python"] = f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}"
    walker.visit(walker.parts["step"], function)
    spec = getattr(function, "__madhatter__", None) or getattr(unwrapped, "__madhatter__", None)
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


__all__ = ["Fingerprint", "fingerprint_step", "value_digest"]
