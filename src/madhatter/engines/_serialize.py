"""How tasks and results cross a process boundary.

Data goes through the standard pickle first (fast for plain data; cloudpickle's per-object hook
makes it several times slower on large lists), falling back to cloudpickle for lambdas and other
objects pickle refuses. Functions always go through cloudpickle, so steps defined in ``__main__``,
closures and lambdas work on every engine that ships code.

:func:`dumps_portable` is for receivers that have only the standard library, madhatter and
cloudpickle (a container from an arbitrary image): the driver's own modules that it references,
the ones not installed as packages, travel by value.
"""

from __future__ import annotations

import functools
import io
import pathlib
import pickle
import site
import sys
import sysconfig
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps_data(value: Any) -> bytes:
    """Pickle data, falling back to cloudpickle for what plain pickle refuses."""
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        result: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
        return result


LOCAL_ATTRIBUTES = "__madhatter_local__"
"""A function attribute naming the function's attributes that stay in the driver's process when
the function is pickled by value (madhatter's decorators set it; see :class:`FunctionPickler`)."""


class FunctionPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, except that a function pickled by value (defined in a script, or not
    importable by the receiver) travels without the attributes it lists in ``__madhatter_local__``.

    madhatter's decorators list theirs (``__madhatter__``, ``dependency``, ...): they reference
    the step's upstream functions, which would travel by value too, and with them whatever their
    globals reach: a ``@preprocess`` step of a script that returns a module-level list of arrays
    would ship the whole list with every downstream step (issue 10 found 512 MB pickled that
    way). Nothing on a worker reads them.
    """

    def _dynamic_function_reduce(self, func: Any) -> Any:
        reduced = super()._dynamic_function_reduce(func)
        local = getattr(func, LOCAL_ATTRIBUTES, None)
        if not local:
            return reduced
        try:
            make, args, (state, slots), *rest = reduced
        except (TypeError, ValueError):  # another cloudpickle's layout: leave it as it is
            return reduced
        if not isinstance(state, dict):
            return reduced
        kept = {name: value for name, value in state.items() if name not in {*local, LOCAL_ATTRIBUTES}}
        return (make, args, (kept, slots), *rest)


def dumps_function(function: Any, buffer_callback: Any = None) -> bytes:
    """Pickle a function (by value where it cannot be imported by the receiver, then without
    madhatter's decorations: see :class:`FunctionPickler`)."""
    stream = io.BytesIO()
    FunctionPickler(stream, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(function)
    return stream.getvalue()


loads = pickle.loads

_by_value_lock = threading.Lock()


def dumps_portable(value: Any, *, function: bool) -> bytes:
    """Pickle ``value`` (with :func:`dumps_function` or :func:`dumps_data`) for a process that
    cannot import the driver's own code (see :func:`pickle_portable`)."""

    def once(by_value: bool) -> bytes:
        return dumps_function(value) if function or by_value else dumps_data(value)

    return pickle_portable(once, lambda blob: blob)


Pickled = TypeVar("Pickled")


def pickle_portable(once: Callable[[bool], Pickled], stream: Callable[[Pickled], bytes]) -> Pickled:
    """Pickle something for a process that cannot import the driver's own code: modules it
    references that are not installed packages (the user's script, a test module, a helper next
    to them) are pickled by value, and so are the local modules those reference in turn.

    ``once(by_value)`` pickles it (with cloudpickle when ``by_value``, which honours the modules
    registered here) and ``stream(result)`` is the pickle stream to look for module names in.
    """
    result = once(False)
    candidates = _local_modules()
    wanted = {name for name in candidates if name.encode() in stream(result)}
    if not wanted:
        return result
    with _by_value_lock:
        while True:  # by value, a module's code may name further local modules: repeat
            added = []
            for name in wanted:
                module = sys.modules.get(name)
                if module is not None and not _registered_by_value(module):
                    cloudpickle.register_pickle_by_value(module)
                    added.append(module)
            try:
                result = once(True)
            finally:
                for module in added:
                    cloudpickle.unregister_pickle_by_value(module)
            more = {name for name in candidates if name.encode() in stream(result)} - wanted
            if not more:
                return result
            wanted |= more


def _local_modules() -> list[str]:
    """The names of the loaded modules that are the driver's own code (see :func:`_is_local`)."""
    return [name for name in list(sys.modules) if _is_local(name)]


def _registered_by_value(module: Any) -> bool:
    return module.__name__ in cloudpickle.list_registry_pickle_by_value()


@functools.cache
def _installed_roots() -> tuple[pathlib.Path, ...]:
    """Where the standard library and installed packages live."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages())
    return tuple(pathlib.Path(root).resolve() for root in roots)


@functools.cache
def _is_local(name: str) -> bool:
    """Whether module ``name`` is the driver's own code rather than an installed package
    (madhatter and cloudpickle are shipped to the receiver; builtins are everywhere)."""
    if name.partition(".")[0] in ("madhatter", "cloudpickle", "__main__"):
        return False
    file = getattr(sys.modules.get(name), "__file__", None)
    if not file:
        return False
    path = pathlib.Path(file).resolve()
    return not any(path.is_relative_to(root) for root in _installed_roots())
