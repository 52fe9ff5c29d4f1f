"""The engines of one run: the run's own, and any a step names, each made once.

The caller gives an engine by name (madhatter creates it, with ``workers=`` and the engine
options, and shuts it down after the run) or as an instance (the caller's to shut down, so one
engine can serve many runs). That choice is settled here, once; the rest of the driver sees only
:class:`~madhatter.engines.Engine` objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..engines import Engine, EngineTraits, engine_class, get_engine


class EngineSet:
    """The engines of one run, created on first use: the run's own and any a step names."""

    def __init__(self, default: str | Engine, workers: int | None, options: Mapping[str, Any]):
        self._engines: dict[str, Engine] = {}
        self._borrowed: Engine | None = None
        if isinstance(default, Engine):
            if options or workers is not None:
                raise TypeError(
                    "workers= and engine options configure an engine madhatter creates; give them "
                    "to your engine instance's constructor instead"
                )
            self._borrowed = self._engines[default.name] = default
            self.default_name = default.name
        elif isinstance(default, str):
            self.default_name = default
        else:
            raise TypeError(
                f"engine= takes an engine's name or an Engine instance, not {type(default).__name__}"
            )
        self._workers = workers
        self._options = dict(options)

    def traits(self, name: str | None) -> EngineTraits:
        """The traits of the engine a step names (or the run's own), without creating it (a
        pipeline that cannot be shipped fails before a cluster is started for it)."""
        key = name or self.default_name
        return self._engines[key].traits if key in self._engines else engine_class(key).traits

    def get(self, name: str | None) -> Engine:
        """The engine a step names (or the run's own), created on first use. A step naming the
        run's own engine gets the run's engine, options and all."""
        key = name or self.default_name
        if key not in self._engines:
            options = self._options if key == self.default_name else {}
            self._engines[key] = get_engine(key, workers=self._workers, **options)
        return self._engines[key]

    def shutdown(self, *, cancel_pending: bool) -> None:
        """Shut down the engines this run created (not one the caller passed in)."""
        errors = []
        for engine in self._engines.values():
            if engine is self._borrowed:
                continue
            try:
                engine.shutdown(cancel_pending=cancel_pending)
            except Exception as exc:  # shut the others down regardless
                errors.append(exc)
        if errors:
            raise errors[0]
