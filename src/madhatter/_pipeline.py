"""``Pipeline``: a validated graph of steps that runs on any engine; and ``madhatter.run``."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from threading import Event as ThreadingEvent
from types import ModuleType
from typing import Any

from . import _notebook, _params
from ._errors import PipelineDefinitionError
from ._events import Listener
from ._loading import load_module
from ._results import RunReport
from .cache import CacheStore, open_cache
from .driver import execute_plan
from .engines import Engine
from .graph import Graph, Param, Plan, build_graph, graph_params, plan_graph, steps_of_module

DEFAULT_ENGINE = "processes"


class SkippedItemsWarning(UserWarning):
    """Some items failed in ``on_error="skip"`` steps and are missing from the result."""


class Pipeline:
    """A validated DAG of steps.

    Build one from a module's decorated functions (:meth:`from_module`), from a list of step
    functions (``Pipeline([load, score, report])``, dependencies from ``@depends``), or as a
    straight chain (:meth:`chain`). Building validates: cycles, missing upstreams, signatures, and
    that there is exactly one output step (or the one named by ``output``).
    """

    def __init__(
        self,
        steps: Iterable[Callable[..., Any]],
        *,
        output: Callable[..., Any] | str | None = None,
        name: str | None = None,
    ) -> None:
        self._adopt(build_graph(steps, output=output), name)

    def _adopt(self, graph: Graph, name: str | None) -> None:
        self.graph: Graph = graph
        self.name = name or graph.output
        self.params: Mapping[str, Param] = graph_params(graph)

    @classmethod
    def from_module(cls, module: ModuleType | str, *, name: str | None = None) -> Pipeline:
        """The pipeline made of the steps defined in ``module`` (an object, a path or a name)."""
        if not isinstance(module, ModuleType):
            module = load_module(module)
        steps = steps_of_module(module)
        if not steps:
            raise PipelineDefinitionError(
                f"module {module.__name__!r} defines no madhatter steps (decorate functions with "
                f"@preprocess, @parallel or @postprocess)"
            )
        return cls(steps, name=name or module.__name__.rpartition(".")[2])

    @classmethod
    def chain(cls, *steps: Callable[..., Any], name: str | None = None) -> Pipeline:
        """A straight pipeline: each step takes the output of the one before it."""
        pipeline = cls.__new__(cls)
        pipeline._adopt(build_graph(steps, chain=True), name)
        return pipeline

    def plan(self, *, fuse: bool = True) -> Plan:
        """How the steps will be grouped into tasks (see :mod:`madhatter.graph._plan`)."""
        return plan_graph(self.graph, fuse=fuse)

    def run(self, **options: Any) -> Any:
        """Run the pipeline and return the output step's result.

        Takes the same options as :meth:`execute`. If ``on_error="skip"`` steps left items out,
        a :class:`SkippedItemsWarning` says how many; :meth:`execute` returns them.
        """
        report = self.execute(**options)
        if report.skipped:
            warnings.warn(
                f"{len(report.skipped)} item(s) failed and were skipped (first: step "
                f"{report.skipped[0].step!r}: {report.skipped[0].error}); "
                f"Pipeline.execute() returns them",
                SkippedItemsWarning,
                stacklevel=2,
            )
        return report.result

    def execute(
        self,
        *,
        engine: str | Engine = DEFAULT_ENGINE,
        workers: int | None = None,
        params: Mapping[str, Any] | None = None,
        listeners: Iterable[Listener] = (),
        cancel: ThreadingEvent | None = None,
        inline: bool = True,
        fuse: bool = True,
        cache: str | os.PathLike[str] | CacheStore | bool | None = None,
        progress: bool | None = None,
        capture_output: bool = False,
        **engine_options: Any,
    ) -> RunReport:
        """Run the pipeline and return a :class:`RunReport` (result, skipped items, statistics).

        Args:
            engine: an engine name (``"serial"``, ``"threads"``, ``"processes"``, ...) or instance.
            workers: the engine's pool size (default: the engine's own, e.g. one per core).
            params: run parameters by name; strings are converted to the parameter's type.
            listeners: callables that receive every progress event.
            cancel: set this event (from another thread) to stop the run with ``RunCancelled``.
            inline: let steps whose items are cheaper than shipping them run in the driver.
            fuse: run chains of parallel steps as one task per chunk.
            cache: keep every parallel step's outputs, and reuse those whose code, parameters
                and input are unchanged (docs/caching.md): a folder, an fsspec URL
                (``"s3://bucket/prefix"``), a :class:`~madhatter.cache.CacheStore`, or ``True``
                for ``.madhatter/`` in the current folder.
            progress: show the run's progress: ``None`` (the default) in a Jupyter kernel only,
                as one live display updated in place (docs/notebooks.md); ``True`` also
                elsewhere, as text on stderr; ``False`` never.
            capture_output: keep what the steps print and log (per chunk, bounded) and report
                it as ``ChunkOutput`` events instead of printing it (the service's workers do).
            engine_options: passed to the engine (e.g. ``address=`` for a cluster).
        """
        values = _params.resolve(self.params, dict(params or {}))
        shown = _notebook.progress_listener(progress)
        everyone = [*listeners, shown] if shown is not None else list(listeners)
        return execute_plan(
            self.plan(fuse=fuse),
            pipeline=self.name,
            engine=engine,
            workers=workers,
            params=values,
            listeners=everyone,
            cancel=cancel,
            inline=inline,
            engine_options=engine_options,
            cache=open_cache(cache),
            capture_output=capture_output,
        )

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {' -> '.join(self.graph.steps)}>"


def as_pipeline(target: Pipeline | ModuleType | str | Callable[..., Any]) -> Pipeline:
    """A pipeline from a pipeline, a module, a path or module name, or its output step function."""
    if isinstance(target, Pipeline):
        return target
    if isinstance(target, (ModuleType, str)):
        return Pipeline.from_module(target)
    if callable(target) and not inspect.isclass(target):
        return Pipeline([target])
    raise TypeError(f"cannot make a pipeline from {target!r}")


def run(target: Pipeline | ModuleType | str | Callable[..., Any], **options: Any) -> Any:
    """Run a pipeline (or a module's, a file's, or the one ending in a step) and return its result.

    ``madhatter.run(my_module, engine="threads", params={"path": "data/"})``; options are those of
    :meth:`Pipeline.execute`.
    """
    return as_pipeline(target).run(**options)
