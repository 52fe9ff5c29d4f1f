"""The engine interface: run opaque tasks somewhere, report each result through a future.

An engine knows nothing about steps, chunks or graphs. It receives :class:`Task` objects -- a
picklable function, its argument, a timeout and resource requests -- and returns a
``concurrent.futures.Future`` per task that resolves to a :class:`TaskResult`, or fails with the
task function's own exception, :class:`TaskLost` (the worker died) or :class:`TaskTimedOut`. The
runner (``_runner.py``) does everything else: chunking, ordering, back-pressure, retries, events.

Engines are chosen by name (``get_engine("processes")``); ``register_engine`` adds one, so a
cluster or container engine is one module with one class. Heavy engines import their libraries
through :func:`require_extra`, so a missing extra is a one-line error naming it.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import ModuleType, TracebackType
from typing import Any, ClassVar

from .._errors import MissingExtraError, UnknownEngineError


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work for an engine.

    Attributes:
        key: unique within the run, e.g. ``"3f2a/job+another_job/7/0"``.
        function: picklable callable applied to ``argument``; the same object for every task of a
            stage, so engines that ship code send it once per worker, keyed by ``function_key``.
        function_key: identifies ``function`` for such caching.
        argument: the task's input.
        timeout: seconds the task may run once started, or ``None``.
        resources: engine-specific requests (``cpus``, ``memory``, ``image``, ...).
        retries: how often the engine may rerun the task after it failed, for engines with their
            own retry (``handles_retries``); other engines get 0 and the runner retries.
        keep_output: for engines that ``keeps_results``: the function returns a pair
            ``(summary, output)``; the engine brings back ``summary`` and leaves ``output`` on
            the cluster, answering ``(summary, Remote(...))``.

    ``argument`` is a tuple; any element of it may be a :class:`Remote` from an earlier task of
    the same engine, which the engine replaces by the value itself on the worker.
    """

    key: str
    function: Callable[[Any], Any]
    function_key: str
    argument: Any
    timeout: float | None = None
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    retries: int = 0
    keep_output: bool = False


@dataclasses.dataclass(frozen=True)
class Remote:
    """A task's output left on a cluster: ``handle`` is the engine's own reference to it (a Dask
    future, a Ray object ref), ``count`` the number of items in it."""

    handle: Any
    count: int


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What a task returned, where it ran and for how long (``started`` is wall-clock time)."""

    value: Any
    worker: str
    started: float
    seconds: float


class TaskLost(Exception):
    """The worker running the task died before answering; ``detail`` says how."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TaskTimedOut(Exception):
    """The task ran longer than its timeout and was stopped (or abandoned)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout


class Engine(abc.ABC):
    """Runs opaque tasks somewhere. Knows nothing about steps, chunks or graphs.

    Class attributes describe the engine to the planner and the runner:

    * ``ships_data``: tasks cross a process boundary, so functions and data are pickled (the
      planner checks functions can be; the runner weighs pickling cost against compute cost).
    * ``target_task_seconds``: how long a task should run to amortise the engine's hand-off cost
      while still balancing load; the runner sizes automatic chunks to it.
    * ``tasks_per_worker``: how many tasks the runner keeps submitted per worker, so a worker can
      start its next task without waiting for the driver (a step capped by ``n`` below the
      engine's workers gets exactly ``n``, so the cap holds).
    * ``handles_retries``: the engine reruns a failed task itself (``Task.retries``); the runner
      then does not retry on top of it.
    * ``runs_inline``: every task runs in the caller (the serial engine): the runner skips its
      probe, which could only decide to do the same.
    * ``keeps_results``: the engine can leave a task's output on its cluster (``Task.keep_output``)
      for later tasks to read there, so data between steps never goes through the driver.
    * ``own_environment``: tasks need the engine's environment (a container image with its own
      libraries), so the runner never runs them in the driver, however cheap they are.

    Engines are context managers: leaving the ``with`` block shuts the engine down, cancelling
    pending work if the block raised.
    """

    name: ClassVar[str]
    ships_data: ClassVar[bool] = True
    target_task_seconds: ClassVar[float] = 0.05
    tasks_per_worker: ClassVar[int] = 1
    handles_retries: ClassVar[bool] = False
    keeps_results: ClassVar[bool] = False
    runs_inline: ClassVar[bool] = False
    own_environment: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def workers(self) -> int:
        """How many tasks the engine runs at once."""

    @property
    def dashboard_link(self) -> str | None:
        """A URL where the engine shows its own live view, if it has one."""
        return None

    def task_seconds(self, resources: Mapping[str, Any]) -> float:
        """How long automatic chunks of a stage with these resource requests should run
        (``target_task_seconds`` unless the hand-off cost depends on them, as a fresh container
        per task does)."""
        return self.target_task_seconds

    def prepare(self, resources: Mapping[str, Any]) -> None:
        """Called before the run starts any work, once per parallel stage bound to this engine,
        with the stage's resource requests: raise :class:`~madhatter.EngineError` naming what the
        engine cannot provide (a missing container image, say), so the run fails before work."""
        return None

    @abc.abstractmethod
    def submit(self, task: Task) -> Future[TaskResult]:
        """Start ``task`` (or queue it) and return a future for its result."""

    @abc.abstractmethod
    def shutdown(self, *, cancel_pending: bool) -> None:
        """Stop the engine; return only once nothing it started (process, thread, container) is
        still working on this run's tasks. With ``cancel_pending``, queued tasks are dropped and
        running ones stopped where the engine can stop them."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(cancel_pending=exc_type is not None)


_ENGINES: dict[str, str] = {
    "serial": "madhatter.engines.serial:SerialEngine",
    "threads": "madhatter.engines.threads:ThreadsEngine",
    "processes": "madhatter.engines.processes:ProcessesEngine",
    "dask": "madhatter.engines.dask:DaskEngine",
    "ray": "madhatter.engines.ray:RayEngine",
    "docker": "madhatter.engines.docker:DockerEngine",
}


def engine_names() -> tuple[str, ...]:
    """The names of every registered engine."""
    return tuple(sorted(_ENGINES))


def register_engine(name: str, target: str | type[Engine]) -> None:
    """Make an engine available by name: a class, or ``"package.module:ClassName"`` (lazy)."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _ENGINES[name] = target


def engine_class(name: str) -> type[Engine]:
    """The engine class registered under ``name`` (importing its module on first use)."""
    if name not in _ENGINES:
        raise UnknownEngineError(f"no engine named {name!r}; choose one of: {', '.join(engine_names())}")
    module, _, attr = _ENGINES[name].partition(":")
    cls: type[Engine] = getattr(importlib.import_module(module), attr)
    return cls


def get_engine(name: str, **options: Any) -> Engine:
    """Create the engine registered under ``name`` with the given options."""
    return engine_class(name)(**options)


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
