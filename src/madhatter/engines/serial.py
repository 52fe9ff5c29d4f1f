"""The ``serial`` engine: every task runs inline, in the caller, one after another.

It is the debugger's engine (breakpoints and prints work, tracebacks are local) and the reference
output the other engines are tested against.
"""

from __future__ import annotations

from concurrent.futures import Future

from ._base import Engine, EngineTraits, Task, TaskResult
from ._deadline import deadline
from .kit import timed_call


def run_inline(task: Task, worker: str) -> Future[TaskResult]:
    """Run ``task`` now, in this thread, and return its already-finished future."""
    future: Future[TaskResult] = Future()
    try:
        with deadline(task.timeout):
            result = timed_call(task.function, task.argument, worker, task.interim)
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
    return future


class SerialEngine(Engine):
    """Runs each task inline when it is submitted."""

    name = "serial"
    traits = EngineTraits(ships_data=False, runs_inline=True, task_seconds=0.01)

    def __init__(self, workers: int | None = None) -> None:
        del workers  # one worker: the caller

    @property
    def workers(self) -> int:
        return 1

    def submit(self, task: Task) -> Future[TaskResult]:
        return run_inline(task, "main")

    def shutdown(self, *, cancel_pending: bool) -> None:
        """Nothing to stop: no task outlives its ``submit`` call."""
