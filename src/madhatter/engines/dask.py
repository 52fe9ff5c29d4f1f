"""The ``dask`` engine: hand tasks to a Dask cluster (``pip install 'madhatter[dask]'``).

madhatter schedules nothing itself here: each task becomes one ``client.submit`` call, and Dask's
scheduler places it, moves its data, and reruns it elsewhere when a worker dies. The step chain a
task runs is scattered to the workers once per stage (not pickled into every task).

With ``address=None`` a local cluster of worker *processes* (one thread each, on 127.0.0.1) is
started for the run and closed after it; with an address (``tcp://scheduler:8786``) the engine
connects to that cluster and leaves it running. Step functions travel pickled by cloudpickle, so
a script's steps need not be importable on the workers. On connecting, the engine checks that
the workers run the same madhatter and Python (major.minor) as the driver.

Retries are Dask's own (``client.submit(retries=...)``, without ``retry_delay``). When the next
step runs on the same cluster, a task's output stays there: the runner passes it on as a Dask
future and only a summary (counts, skipped items) comes back to the driver.

Dask cannot stop a task once it runs: a task past its timeout fails its chunk with
``TaskTimedOut`` and is cancelled, but its worker thread finishes it in the background.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import Future
from typing import Any

from .._errors import EngineError
from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult
from ._registry import require_extra
from ._serialize import dumps_function
from .kit import (
    ShippedFunctions,
    check_runtime,
    expire_after,
    load_function,
    settle,
    timed_call,
    worker_runtime,
)

distributed = require_extra("distributed", extra="dask")


def _run_on_worker(function_key: str, function_bytes: bytes, argument: Any) -> TaskResult:
    """Runs inside a Dask worker: call the task function, timed, and say where it ran.

    The function arrives pickled by cloudpickle (Dask would try plain pickle first, which pickles
    a step by reference to a module the workers may not have).
    """
    function = load_function(function_key, function_bytes)
    return timed_call(function, argument, distributed.get_worker().address)


def _summary(result: TaskResult) -> TaskResult:
    """For ``keep_output`` tasks: the task's summary and the length of its output, to fetch."""
    summary, output = result.value
    return TaskResult((summary, len(output)), result.worker, result.started, result.seconds)


def _output(result: TaskResult) -> Any:
    """For ``keep_output`` tasks: the output, as a future of its own that stays on the cluster."""
    return result.value[1]


def _outcome(remote: Any, output: Any) -> tuple[TaskResult | None, BaseException | None]:
    """A finished Dask future's answer as ``(result, error)``; for ``keep_output`` tasks the
    result's output is ``output``, the future that keeps it on the cluster."""
    if remote.status == "cancelled":
        return None, TaskLost("the task was cancelled on the Dask cluster")
    if remote.status != "finished":
        error = remote.exception()
        if isinstance(error, distributed.KilledWorker):
            error = TaskLost(f"Dask gave up on the task after its workers died: {error}")
        return None, error
    answer: TaskResult = remote.result()
    if output is not None:
        summary, count = answer.value
        answer = dataclasses.replace(answer, value=(summary, Remote(output, count)))
    return answer, None


class DaskEngine(Engine):
    """Runs tasks on a Dask cluster: a new local one, or the one at ``address``."""

    name = "dask"
    traits = EngineTraits(task_seconds=0.1, tasks_per_worker=2, retries=True, keeps_output=True)

    def __init__(
        self, workers: int | None = None, *, address: str | None = None, **cluster_options: Any
    ):
        self._cluster: Any = None
        if address is None:
            self._cluster = distributed.LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                **cluster_options,
            )
            address = self._cluster.scheduler_address
        try:
            self._client = distributed.Client(address, set_as_default=False)
        except OSError as exc:
            if self._cluster is not None:
                self._cluster.close()
            raise EngineError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self._functions: ShippedFunctions[Any] = ShippedFunctions(self._scatter)
        self._futures: set[Any] = set()
        self._lock = threading.Lock()
        try:
            self._check_workers()
        except BaseException:
            self._close()
            raise

    def _check_workers(self) -> None:
        """Refuse the cluster if any worker runs another madhatter or Python than the driver."""
        self._client.wait_for_workers(1, timeout=60)
        for worker, runtime in self._client.run(worker_runtime).items():
            check_runtime(f"Dask worker {worker}", tuple(runtime))

    def _scatter(self, function: Any) -> Any:
        """Send a stage's function to every worker once: a Dask future of its pickled bytes."""
        return self._client.scatter(dumps_function(function), broadcast=True, hash=False)

    @property
    def workers(self) -> int:
        info = self._client.scheduler_info()["workers"]
        return sum(int(worker.get("nthreads", 1)) for worker in info.values()) or 1

    @property
    def dashboard_link(self) -> str | None:
        link: str | None = getattr(self._client, "dashboard_link", None)
        return link

    def submit(self, task: Task) -> Future[TaskResult]:
        # Remote chunks of earlier tasks are Dask futures: Dask hands their data to the worker.
        argument = tuple(a.handle if isinstance(a, Remote) else a for a in task.argument)
        remote = self._client.submit(
            _run_on_worker,
            task.function_key,
            self._functions.handle(task),
            argument,
            key=f"madhatter-{task.key}",
            pure=False,
            retries=task.retries or None,
            resources=dict(task.resources) or None,
        )
        output = None
        if task.keep_output:
            output = self._client.submit(_output, remote, key=f"madhatter-{task.key}/output")
            remote = self._client.submit(_summary, remote, key=f"madhatter-{task.key}/summary")
        result: Future[TaskResult] = Future()
        result.set_running_or_notify_cancel()
        with self._lock:
            self._futures.add(remote)
        timer = None
        if task.timeout is not None:
            timer = expire_after(result, task.timeout, remote.cancel)
        remote.add_done_callback(lambda done: self._resolve(done, result, timer, output))
        return result

    def _resolve(
        self, remote: Any, result: Future[TaskResult], timer: threading.Timer | None, output: Any
    ) -> None:
        """Hand Dask's answer on to the task's future, unless its timeout failed it first."""
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._futures.discard(remote)
        try:
            answer, error = _outcome(remote, output)
        except Exception as exc:  # fetching the result itself failed (e.g. the cluster went away)
            answer, error = None, TaskLost(f"the result could not be fetched from Dask: {exc!r}")
        settle(result, answer, error)

    def shutdown(self, *, cancel_pending: bool) -> None:
        with self._lock:
            outstanding = list(self._futures)
        if outstanding and cancel_pending:
            self._client.cancel(outstanding, force=True)
        elif outstanding:
            distributed.wait(outstanding)
        self._close()

    def _close(self) -> None:
        for scattered in self._functions.clear():
            scattered.release()
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
