"""The ``serial`` engine: every task runs inline, in the caller, one after another.

It is the debugger's engine (breakpoints and prints work, tracebacks are local) and the reference
output the other engines are tested against.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from ._base import Engine, Task, TaskResult
from ._deadline import deadline


def run_inline(task: Task, worker: str) -> Future[TaskResult]:
    """Run ``task`` now, in this thread, and return its already-finished future."""
    future: Future[TaskResult] = Future()
    started, clock = time.time(), time.perf_counter()
    try:
        with deadline(task.timeout):
            value = task.function(task.argument)
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(TaskResult(value, worker, started, time.perf_counter() - clock))
    return future


def run_in_thread(task: Task, worker: str) -> Future[TaskResult]:
    """Run ``task`` on a new daemon thread; its future resolves when it is done."""
    future: Future[TaskResult] = Future()
    future.set_running_or_notify_cancel()

    def target() -> None:
        started, clock = time.time(), time.perf_counter()
        try:
            value = task.function(task.argument)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(TaskResult(value, worker, started, time.perf_counter() - clock))

    threading.Thread(target=target, name="madhatter-probe", daemon=True).start()
    return future


class SerialEngine(Engine):
    """Runs each task inline when it is submitted."""

    name = "serial"
    ships_data = False
    runs_inline = True
    target_task_seconds = 0.01

    def __init__(self, workers: int | None = None) -> None:
        del workers  # one worker: the caller

    @property
    def workers(self) -> int:
        return 1

    def submit(self, task: Task) -> Future[TaskResult]:
        return run_inline(task, "main")

    def shutdown(self, *, cancel_pending: bool) -> None:
        """Nothing to stop: no task outlives its ``submit`` call."""
