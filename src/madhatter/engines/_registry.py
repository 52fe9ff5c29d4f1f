"""Engines by name: the built-in ones, third-party ones found by entry point, and registered ones.

A third-party engine is a package with one module and one :class:`~._base.Engine` subclass, and
an entry point in the ``madhatter.engines`` group (the convention of pytest plugins and fsspec
implementations)::

    [project.entry-points."madhatter.engines"]
    slurm = "madhatter_slurm:SlurmEngine"

after which ``madhatter run FILE --engine slurm --engine-option partition=short`` works. Names
resolve in this order: :func:`register_engine` (at run time), the built-in engines, entry points.
Nothing is imported until an engine is asked for by name, so a missing extra costs nothing until
then; :func:`require_extra` turns it into a one-line error naming the extra. A class given to
:func:`register_engine` is kept as it is, so one defined in a function (as tests do) works too.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from .._errors import EngineError, MissingExtraError, UnknownEngineError
from ._base import Engine

ENTRY_POINT_GROUP = "madhatter.engines"

_BUILT_IN: dict[str, str] = {
    "serial": "madhatter.engines.serial:SerialEngine",
    "threads": "madhatter.engines.threads:ThreadsEngine",
    "processes": "madhatter.engines.processes:ProcessesEngine",
    "dask": "madhatter.engines.dask:DaskEngine",
    "ray": "madhatter.engines.ray:RayEngine",
    "docker": "madhatter.engines.docker:DockerEngine",
}
_registered: dict[str, str | type[Engine]] = {}
"""By :func:`register_engine`: a class as given, or a lazy ``"package.module:ClassName"``."""


@functools.cache
def _entry_points() -> dict[str, str]:
    """Engines that installed packages declare, by name (read once per process, when an engine
    is first looked up: ``importlib.metadata`` costs ~10 ms to import, more than madhatter)."""
    import importlib.metadata

    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _targets() -> dict[str, str | type[Engine]]:
    return {**_entry_points(), **_BUILT_IN, **_registered}


def engine_names() -> tuple[str, ...]:
    """The names of every known engine: built-in, installed by entry point, or registered."""
    return tuple(sorted(_targets()))


def register_engine(name: str, target: str | type[Engine]) -> None:
    """Make an engine available by name: a class (kept as it is, so a class defined inside a
    function works too), or ``"package.module:ClassName"`` (imported when first asked for)."""
    _registered[name] = target


def engine_class(name: str) -> type[Engine]:
    """The engine class known as ``name`` (importing its module on first use)."""
    target = _targets().get(name)
    if target is None:
        raise UnknownEngineError(f"no engine named {name!r}; choose one of: {', '.join(engine_names())}")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr, None)
    else:
        cls = target
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise UnknownEngineError(f"engine {name!r} points at {target!r}, which is not an Engine class")
    return cls


def get_engine(name: str, **options: Any) -> Engine:
    """Create the engine known as ``name`` with the given options (checked first, so a typo is
    an error naming the engine's options, not a ``TypeError`` from its constructor)."""
    check_options(name, options)
    return engine_class(name)(**options)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`~madhatter.EngineError` if the engine known as ``name`` takes no option of
    one of these names (an engine whose constructor takes ``**options`` takes any)."""
    if not options:
        return
    parameters = inspect.signature(engine_class(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    known = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        names = ", ".join(n for n in known if n != "workers") or "none but workers"
        raise EngineError(f"the {name!r} engine has no option {unknown[0]!r} (its options: {names})")


def require_extra(module: str, *, extra: str, needed_by: str | None = None) -> ModuleType:
    """Import an optional dependency, or explain which extra to install (``needed_by`` names
    what needs it; by default the engine called ``extra``)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.partition(".")[0]:
            raise  # something else is broken: show the real error
        who = needed_by or f"the {extra!r} engine"
        raise MissingExtraError(f"{who} needs {module!r}: pip install 'madhatter[{extra}]'") from None
