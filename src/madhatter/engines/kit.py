"""The engine kit: plumbing that every engine shipping work elsewhere needs, written once.

Public, for third-party engines as much as for the built-in ones.

* :func:`timed_call` runs a task function and says when, where and for how long it ran; given
  an ``interim`` channel, the function may send messages through it while it runs
  (:func:`interim_sender`: a chunk's output so far), for the task's :attr:`Task.interim`.
* :func:`settle` and :func:`expire_after` resolve a task's future exactly once, whichever comes
  first: the answer, or the timeout (``concurrent.futures`` raises ``InvalidStateError`` on a
  second resolution; here the loser is ignored).
* :class:`ShippedFunctions` (driver side) and :func:`load_function` (worker side) send a stage's
  function once per worker, or once per cluster, by the task's ``function_key``, not with every
  task.
* :func:`worker_runtime` and :func:`check_runtime` refuse workers whose madhatter or Python
  differs from the driver's (tasks are pickled code).
* :func:`describe_exit` says how a worker that died ended, for the :class:`TaskLost` message.

An engine that runs tasks on its own workers needs little more than these and its library's
submit call: see ``madhatter/testing/_fake.py`` for a whole cluster engine in about 100 lines.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, TypeVar

from .._errors import EngineError
from .._version import __version__
from ._base import Task, TaskResult, TaskTimedOut

__all__ = [
    "ShippedFunctions",
    "check_runtime",
    "describe_exit",
    "expire_after",
    "interim_sender",
    "load_function",
    "settle",
    "timed_call",
    "worker_runtime",
]

Handle = TypeVar("Handle")


Interim = Callable[[Any], None]
"""A channel for what a task sends while it runs: called with each message (from any thread)."""

_interim = threading.local()


def timed_call(
    function: Callable[[Any], Any], argument: Any, worker: str, interim: Interim | None = None
) -> TaskResult:
    """Call ``function(argument)``, timed: the result with where and when it ran. ``interim``
    is the task's channel for messages sent while it runs (:func:`interim_sender`): the task's
    own :attr:`Task.interim` in the driver's process, a way to the driver elsewhere."""
    started, clock = time.time(), time.perf_counter()
    _interim.send = interim
    try:
        value = function(argument)
    finally:
        _interim.send = None
    return TaskResult(value, worker, started, time.perf_counter() - clock)


def interim_sender() -> Interim | None:
    """The running task's channel to the driver for messages sent before it ends, or ``None``
    where the engine has none (they then travel with the task's result). Read it on the task's
    own thread; the channel itself may be called from any thread until the task returns."""
    send: Interim | None = getattr(_interim, "send", None)
    return send


def settle(
    future: Future[TaskResult], result: TaskResult | None = None, error: BaseException | None = None
) -> bool:
    """Resolve ``future`` with ``error`` if given, else ``result``; False (and no change) if it
    was resolved already -- by a timeout, a cancellation, or the answer that came first."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        return False
    return True


def expire_after(
    future: Future[TaskResult],
    timeout: float,
    on_expired: Callable[[], None] | None = None,
    *,
    after: float | None = None,
) -> threading.Timer:
    """Fail ``future`` with :class:`TaskTimedOut` after ``timeout`` seconds unless it is resolved
    by then; if the timeout wins, call ``on_expired`` (to stop the task where the engine can).
    ``after`` fires it later than ``timeout`` (a backstop behind the worker's own alarm; the
    error still names ``timeout``). The timer is started; cancel it when the answer comes."""

    def expire() -> None:
        if settle(future, error=TaskTimedOut(timeout)) and on_expired is not None:
            on_expired()

    timer = threading.Timer(timeout if after is None else after, expire)
    timer.daemon = True
    timer.start()
    return timer


class ShippedFunctions(Generic[Handle]):
    """The driver's side of the function cache: each task function shipped once, by key.

    ``ship`` turns a function into what the engine sends with its tasks (pickled bytes, a Dask
    future of scattered bytes, a Ray object ref); it runs once per ``function_key``.
    """

    def __init__(self, ship: Callable[[Callable[[Any], Any]], Handle]) -> None:
        self._ship = ship
        self._handles: dict[str, Handle] = {}
        self._lock = threading.Lock()

    def handle(self, task: Task) -> Handle:
        """What to send for ``task.function`` (shipped on the first task of its key)."""
        with self._lock:
            found = self._handles.get(task.function_key)
            if found is None:
                found = self._handles[task.function_key] = self._ship(task.function)
            return found

    def clear(self) -> list[Handle]:
        """Forget every shipped function; return the handles, for the engine to release."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        return handles


_loaded: dict[str, Any] = {}
_loaded_lock = threading.Lock()


def load_function(function_key: str, function_bytes: bytes) -> Any:
    """The worker's side of the function cache: a task function, unpickled once per worker
    process and then reused (cluster engines send the same pickled chain with every task of a
    stage; unpickling it each time would cost)."""
    function = _loaded.get(function_key)
    if function is None:
        from ._serialize import loads

        loaded = loads(function_bytes)
        with _loaded_lock:
            function = _loaded.setdefault(function_key, loaded)
    return function


def worker_runtime() -> tuple[str, str]:
    """What must match between driver and workers: madhatter's version and Python's major.minor
    (run on a worker, it reports the worker's own)."""
    return __version__, f"{sys.version_info.major}.{sys.version_info.minor}"


def check_runtime(where: str, found: tuple[str, str], *, remedy: str = "on the workers") -> None:
    """Raise :class:`~madhatter.EngineError` if a worker's :func:`worker_runtime` (``found``,
    reported by the worker ``where``) differs from the driver's."""
    expected = worker_runtime()
    if tuple(found) == expected:
        return
    version, python = found
    raise EngineError(
        f"{where} runs madhatter {version} on Python {python}, but this driver runs madhatter "
        f"{expected[0]} on Python {expected[1]}; install the same versions {remedy} (tasks are "
        f"pickled code)"
    )


def describe_exit(exitcode: int | None) -> str:
    """How a dead worker ended, as a phrase after its name: ``None`` if it is still running (it
    stopped answering), ``-N`` if signal ``N`` killed it (as ``multiprocessing`` says it), else
    the code it exited with."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (often the out-of-memory killer)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"
