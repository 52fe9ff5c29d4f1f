"""The engine contract: run opaque tasks somewhere, report each result through a future.

An engine knows nothing about steps, chunks or graphs. It receives :class:`Task` objects -- a
picklable function, its argument, a timeout and resource requests -- and returns a
``concurrent.futures.Future`` per task that resolves to a :class:`TaskResult`, or fails with the
task function's own exception, :class:`TaskLost` (the worker died) or :class:`TaskTimedOut`. The
driver (:mod:`madhatter.driver`) does everything else: chunking, ordering, back-pressure,
retries, events.

The contract is three members -- :attr:`Engine.workers`, :meth:`Engine.submit`,
:meth:`Engine.shutdown` -- and one frozen :class:`EngineTraits` object that describes the engine
to the runner. Two optional hooks have defaults: :meth:`Engine.prepare` (check a stage's resource
requests before any work, and say the traits for that stage) and :attr:`Engine.dashboard_link`.
Two optional capabilities, each switched on by a trait and documented with it, let a cluster
engine do more: its own retries (``Task.retries``) and output kept on the cluster
(``Task.keep_output`` and :class:`Remote`). Plumbing that every engine shipping work elsewhere
needs (the timed call, expiry after a timeout, function caches, the runtime check) lives in
:mod:`.kit`, not here.

Engines are found by name (:mod:`._registry`); a third-party engine is one module with one class,
registered by an entry point.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, ClassVar


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
        retries: for engines with the ``retries`` trait only: how often the engine may rerun the
            task after it failed (other engines get 0, and the runner retries).
        keep_output: for engines with the ``keeps_output`` trait only: the function returns a
            pair ``(summary, output)``; the engine brings back ``summary`` and leaves ``output``
            on the cluster, answering ``(summary, Remote(...))``.
        interim: called in the driver, on any thread, with each message the function sends
            while it runs (a chunk's output so far: ``kit.interim_sender``), for engines that
            can carry them; others run the task without a channel (``kit.timed_call``'s
            ``interim=None``), and the function then keeps them for its result.

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
    interim: Callable[[Any], None] | None = None


@dataclasses.dataclass(frozen=True)
class Remote:
    """A task's output left on a cluster: ``handle`` is the engine's own reference to it (a Dask
    future, a Ray object ref), ``count`` the number of items in it."""

    handle: Any
    count: int


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What a task returned, where it ran and for how long (``started`` is wall-clock time).

    ``sent`` and ``received`` are the bytes its argument and its answer took between the driver
    and the worker (pickled, shared-memory buffers included), where the engine measured them:
    ``None`` where the engine's own transport carried them unseen (Ray; Dask's answers).
    """

    value: Any
    worker: str
    started: float
    seconds: float
    sent: int | None = None
    received: int | None = None


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


@dataclasses.dataclass(frozen=True)
class EngineTraits:
    """What the runner needs to know about an engine, declared once, as one value.

    Attributes:
        ships_data: tasks cross a process boundary, so functions and data are pickled (the run
            checks functions can be; it weighs pickling cost against compute cost).
        task_seconds: how long an automatic chunk should run, to amortise the engine's hand-off
            cost while still balancing load.
        tasks_per_worker: how many tasks the runner keeps submitted per worker, so a worker can
            start its next task without waiting for the driver (a step capped by ``n`` below the
            engine's workers gets exactly ``n``, so the cap holds).
        runs_inline: every task runs in the caller (the serial engine): the runner skips its
            probe, which could only decide to do the same.
        own_environment: tasks need the engine's environment (a container image with its own
            libraries), so the runner never runs them in the driver, however cheap they are.
        shares_buffers: large buffers (NumPy arrays and the like) reach the workers through
            shared memory, not in the pickle stream, so the runner weighs shipping them as one
            memory copy when it decides whether a step is worth shipping.
        pins_lost_tasks: a task that fails with :class:`TaskLost` is the one that was running
            when its worker died. ``False`` for an engine that also fails the tasks that only
            waited on that worker (Dask's scheduler blames all of them): the runner then bisects
            such a stage's chunks one task at a time, and names an item only after it killed a
            worker while running alone.

    Optional capabilities (each a promise about :meth:`Engine.submit`; see docs/engines.md):

    Attributes:
        retries: the engine reruns a failed task itself, up to ``Task.retries`` times; the runner
            then does not retry on top of it.
        keeps_output: the engine honours ``Task.keep_output``: it leaves the output on its
            cluster and answers ``(summary, Remote(handle, count))``, and it accepts such a
            :class:`Remote` in a later task's argument tuple.
    """

    ships_data: bool = True
    task_seconds: float = 0.05
    tasks_per_worker: int = 1
    runs_inline: bool = False
    own_environment: bool = False
    shares_buffers: bool = False
    pins_lost_tasks: bool = True
    retries: bool = False
    keeps_output: bool = False


_OLD_FLAGS = {
    "ships_data": "ships_data",
    "target_task_seconds": "task_seconds",
    "tasks_per_worker": "tasks_per_worker",
    "runs_inline": "runs_inline",
    "own_environment": "own_environment",
    "handles_retries": "retries",
    "keeps_results": "keeps_output",
    "task_seconds": "task_seconds",
}
"""The class flags and hook of the 0.1 engine contract, and the trait each became (the hook
``task_seconds(resources)`` became the traits that ``prepare`` returns)."""


class Engine(abc.ABC):
    """Runs opaque tasks somewhere. Knows nothing about steps, chunks or graphs.

    Subclasses set ``name`` and ``traits`` and implement ``workers``, ``submit`` and
    ``shutdown``. Engines are context managers: leaving the ``with`` block shuts the engine down,
    cancelling pending work if the block raised.
    """

    name: ClassVar[str]
    traits: ClassVar[EngineTraits] = EngineTraits()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse the class flags of madhatter 0.1's contract: silently ignored, one of them
        (``handles_retries``) would make the runner retry on top of the engine's own retries."""
        super().__init_subclass__(**kwargs)
        old = sorted(set(vars(cls)) & _OLD_FLAGS.keys())
        if old:
            raise TypeError(
                f"engine {cls.__qualname__} sets {', '.join(old)}, which madhatter no longer "
                f"reads: declare traits = EngineTraits({_OLD_FLAGS[old[0]]}=...) instead"
                f" (see docs/engines.md)"
            )

    @property
    @abc.abstractmethod
    def workers(self) -> int:
        """How many tasks the engine runs at once."""

    @abc.abstractmethod
    def submit(self, task: Task) -> Future[TaskResult]:
        """Start ``task`` (or queue it) and return a future for its result."""

    @abc.abstractmethod
    def shutdown(self, *, cancel_pending: bool) -> None:
        """Stop the engine; return only once nothing it started (process, thread, container) is
        still working on this run's tasks. With ``cancel_pending``, queued tasks are dropped and
        running ones stopped where the engine can stop them."""

    def prepare(self, resources: Mapping[str, Any]) -> EngineTraits:
        """Called once per parallel stage bound to this engine, before the run starts any work,
        with the stage's resource requests. Raise :class:`~madhatter.EngineError` naming what the
        engine cannot provide (a missing container image, say), so the run fails before work;
        return the traits for this stage (``self.traits`` unless they depend on the requests, as
        a fresh container per task makes hand-offs slower)."""
        return self.traits

    @property
    def dashboard_link(self) -> str | None:
        """A URL where the engine shows its own live view, if it has one."""
        return None

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(cancel_pending=exc_type is not None)
