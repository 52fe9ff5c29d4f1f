"""The ``threads`` engine: a pool of threads in the driver process.

For I/O-bound steps (HTTP calls, reading files, waiting on a database): no pickling, no process
start-up, and hundreds of workers are cheap. CPU-bound pure-Python steps gain nothing here because
of the GIL; use ``processes``. A thread cannot be stopped from outside, so a task that overruns its
timeout fails the chunk (its clock starts when a thread takes the task) while the thread finishes
it in the background, still holding its place in the pool.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from ._base import Engine, EngineTraits, Task, TaskLost, TaskResult
from .kit import expire_after, settle, timed_call


class ThreadsEngine(Engine):
    """Runs tasks on a pool of threads (default: ``min(32, cores + 4)``, as the standard library)."""

    name = "threads"
    traits = EngineTraits(ships_data=False, task_seconds=0.005, tasks_per_worker=2)

    def __init__(self, workers: int | None = None) -> None:
        self._size = workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool = ThreadPoolExecutor(max_workers=self._size, thread_name_prefix="madhatter")

    @property
    def workers(self) -> int:
        return self._size

    def submit(self, task: Task) -> Future[TaskResult]:
        if task.timeout is None:
            return self._pool.submit(_run, task)
        outer: Future[TaskResult] = Future()
        outer.set_running_or_notify_cancel()
        inner = self._pool.submit(_run_with_timeout, task, outer)
        inner.add_done_callback(lambda done: _copy(done, outer))
        return outer

    def shutdown(self, *, cancel_pending: bool) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel_pending)


def _run(task: Task) -> TaskResult:
    return timed_call(task.function, task.argument, threading.current_thread().name, task.interim)


def _run_with_timeout(task: Task, outer: Future[TaskResult]) -> TaskResult:
    """Run ``task``; its timer starts now, when a thread takes it, not when it was queued."""
    assert task.timeout is not None
    timer = expire_after(outer, task.timeout)
    try:
        return _run(task)
    finally:
        timer.cancel()


def _copy(done: Future[TaskResult], outer: Future[TaskResult]) -> None:
    """Hand the pool's answer on to the task's future, unless its timeout failed it first."""
    if done.cancelled():
        settle(outer, error=TaskLost("the task was cancelled before it started"))
    elif (error := done.exception()) is not None:  # ``is not None``: an exception may be falsy
        settle(outer, error=error)
    else:
        settle(outer, done.result())
