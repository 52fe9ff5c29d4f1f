"""``FakeClusterEngine``: a cluster engine in one file, from the engine contract and its kit alone.

It proves the contract is enough, the way httpx's ``MockTransport`` proves its transport cut: the
conformance suite (:class:`~madhatter.testing.EngineConformance`) passes on it, and
docs/engines.md walks through it as the example of an engine. Its "cluster" is a
``ProcessPoolExecutor`` of worker processes started with ``spawn``, so they share nothing with the
driver, as a cluster's would not; its "object store" is a folder the workers share. It has both
optional capabilities:

* ``retries``: a worker reruns a failed call at once, up to ``Task.retries`` times, so the runner
  does not retry on top of it;
* ``keeps_output``: a ``keep_output`` task leaves its output in the folder and answers
  ``(summary, Remote(path, count))``; the worker of a later task reads such a ``Remote`` back.

What a fake may skip, it says: a task past its timeout fails with ``TaskTimedOut`` while its
worker goes on with it (the step's own alarm usually stops it soon after), and a worker that dies
breaks the whole pool, so every task still out fails with ``TaskLost``. As with any ``spawn``
start, a script that runs it needs the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from .. import EngineError
from ..engines import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult
from ..engines.kit import ShippedFunctions, expire_after, load_function, settle, timed_call

Answer = tuple[TaskResult | None, BaseException | None]
"""What a worker sends back: the task's result, or the error it ended with."""


def _run_on_worker(
    function_key: str, function_bytes: bytes, argument: Any, retries: int, keep_in: str | None
) -> Answer:
    """Runs in a worker process: the task, rerun up to ``retries`` times while it raises.

    It answers ``(result, error)`` instead of raising: an exception raised here would reach the
    driver with its ``__cause__`` replaced by the pool's traceback text, and madhatter's errors
    carry the user's own exception there.
    """
    try:
        function = load_function(function_key, function_bytes)
        argument = tuple(_read(a) if isinstance(a, Remote) else a for a in argument)
        result = _call(function, argument, retries)
    except Exception as exc:
        return None, exc
    if keep_in is None:
        return result, None
    summary, output = result.value
    with open(keep_in, "wb") as file:
        pickle.dump(output, file)
    return dataclasses.replace(result, value=(summary, Remote(keep_in, len(output)))), None


def _call(function: Callable[[Any], Any], argument: Any, retries: int) -> TaskResult:
    """The timed call, made again at once while it raises, ``retries`` times at most."""
    worker = f"fake/pid-{os.getpid()}"
    for _ in range(retries):
        try:
            return timed_call(function, argument, worker)
        except Exception:
            pass  # rerun it
    return timed_call(function, argument, worker)


def _read(remote: Remote) -> Any:
    """The output an earlier task left in the store (its ``Remote`` handle is the file)."""
    with open(remote.handle, "rb") as file:
        return pickle.load(file)


class FakeClusterEngine(Engine):
    """Runs tasks on local worker processes as if they were a cluster's (see the module doc)."""

    name = "fake"
    traits = EngineTraits(task_seconds=0.05, tasks_per_worker=2, retries=True, keeps_output=True)

    def __init__(self, workers: int | None = None) -> None:
        self._size = workers or os.cpu_count() or 1
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self._size, mp_context=context)
        self._store = tempfile.mkdtemp(prefix="madhatter-fake-")
        self._functions: ShippedFunctions[bytes] = ShippedFunctions(cloudpickle.dumps)

    @property
    def workers(self) -> int:
        return self._size

    def prepare(self, resources: Mapping[str, Any]) -> EngineTraits:
        if resources:
            raise EngineError(f"the fake engine has no resources to give: {sorted(resources)}")
        return self.traits

    def submit(self, task: Task) -> Future[TaskResult]:
        keep_in = os.path.join(self._store, uuid.uuid4().hex) if task.keep_output else None
        function = self._functions.handle(task)  # pickled once per stage, unpickled once per worker
        call = self._pool.submit(
            _run_on_worker, task.function_key, function, task.argument, task.retries, keep_in
        )
        result: Future[TaskResult] = Future()
        result.set_running_or_notify_cancel()

        def expired() -> None:
            call.cancel()  # if it still waits for a worker; a running call goes on

        timer = None if task.timeout is None else expire_after(result, task.timeout, expired)
        call.add_done_callback(lambda done: _answer(done, result, timer))
        return result

    def shutdown(self, *, cancel_pending: bool) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel_pending)
        shutil.rmtree(self._store, ignore_errors=True)


def _answer(call: Future[Answer], result: Future[TaskResult], timer: threading.Timer | None) -> None:
    """Hand the worker's answer on to the task's future, unless its timeout failed it first."""
    if timer is not None:
        timer.cancel()
    if call.cancelled():
        settle(result, error=TaskLost("the task was cancelled before it started"))
    elif isinstance(call.exception(), BrokenProcessPool):
        settle(result, error=TaskLost(f"a worker process died: {call.exception()}"))
    elif call.exception() is not None:  # the answer could not be pickled, say
        settle(result, error=call.exception())
    else:
        settle(result, *call.result())
