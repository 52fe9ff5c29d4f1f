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
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any

from .._errors import EngineError
from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult, TaskTimedOut
from ._kit import load_function
from ._kit import worker_runtime as _runtime
from ._registry import require_extra
from ._serialize import dumps_function

distributed = require_extra("distributed", extra="dask")


def _run_on_worker(function_key: str, function_bytes: bytes, argument: Any) -> TaskResult:
    """Runs inside a Dask worker: call the task function, timed, and say where it ran.

    The function arrives pickled by cloudpickle (Dask would try plain pickle first, which pickles
    a step by reference to a module the workers may not have).
    """
    function = load_function(function_key, function_bytes)
    started, clock = time.time(), time.perf_counter()
    value = function(argument)
    worker = distributed.get_worker().address
    return TaskResult(value, worker, started, time.perf_counter() - clock)


def _summary(result: TaskResult) -> TaskResult:
    """For ``keep_output`` tasks: the task's summary and the length of its output, to fetch."""
    summary, output = result.value
    return TaskResult((summary, len(output)), result.worker, result.started, result.seconds)


def _output(result: TaskResult) -> Any:
    """For ``keep_output`` tasks: the output, as a future of its own that stays on the cluster."""
    return result.value[1]


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
        self._functions: dict[str, Any] = {}
        self._futures: set[Any] = set()
        self._lock = threading.Lock()
        try:
            self._check_workers()
        except BaseException:
            self._close()
            raise

    def _check_workers(self) -> None:
        self._client.wait_for_workers(1, timeout=60)
        expected = _runtime()
        found = self._client.run(_runtime)
        wrong = {worker: runtime for worker, runtime in found.items() if tuple(runtime) != expected}
        if wrong:
            worker, (version, python) = next(iter(wrong.items()))
            raise EngineError(
                f"Dask worker {worker} runs madhatter {version} on Python {python}, but this "
                f"driver runs madhatter {expected[0]} on Python {expected[1]}; install the same "
                f"versions on the workers (tasks are pickled code)"
            )

    @property
    def workers(self) -> int:
        info = self._client.scheduler_info()["workers"]
        return sum(int(worker.get("nthreads", 1)) for worker in info.values()) or 1

    @property
    def dashboard_link(self) -> str | None:
        link: str | None = getattr(self._client, "dashboard_link", None)
        return link

    def submit(self, task: Task) -> Future[TaskResult]:
        function = self._functions.get(task.function_key)
        if function is None:
            function = self._functions[task.function_key] = self._client.scatter(
                dumps_function(task.function), broadcast=True, hash=False
            )
        # Remote chunks of earlier tasks are Dask futures: Dask hands their data to the worker.
        argument = tuple(a.handle if isinstance(a, Remote) else a for a in task.argument)
        remote = self._client.submit(
            _run_on_worker,
            task.function_key,
            function,
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
            timer = threading.Timer(task.timeout, self._expire, args=(remote, result, task.timeout))
            timer.daemon = True
            timer.start()
        remote.add_done_callback(lambda done: self._resolve(done, result, timer, output))
        return result

    def _resolve(
        self, remote: Any, result: Future[TaskResult], timer: threading.Timer | None, output: Any
    ) -> None:
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._futures.discard(remote)
        try:
            if remote.status == "finished":
                answer: TaskResult = remote.result()
                if output is not None:  # the output stays on the cluster, as a future
                    summary, count = answer.value
                    answer = dataclasses.replace(answer, value=(summary, Remote(output, count)))
                result.set_result(answer)
            elif remote.status == "cancelled":
                result.set_exception(TaskLost("the task was cancelled on the Dask cluster"))
            else:
                error = remote.exception()
                if isinstance(error, distributed.KilledWorker):
                    error = TaskLost(f"Dask gave up on the task after its workers died: {error}")
                result.set_exception(error)
        except InvalidStateError:  # the timeout failed it first
            pass
        except Exception as exc:  # fetching the result itself failed (e.g. the cluster went away)
            try:
                result.set_exception(TaskLost(f"the result could not be fetched from Dask: {exc!r}"))
            except InvalidStateError:
                pass

    def _expire(self, remote: Any, result: Future[TaskResult], timeout: float) -> None:
        try:
            result.set_exception(TaskTimedOut(timeout))
        except InvalidStateError:
            return
        remote.cancel()

    def shutdown(self, *, cancel_pending: bool) -> None:
        with self._lock:
            outstanding = list(self._futures)
        if outstanding and cancel_pending:
            self._client.cancel(outstanding, force=True)
        elif outstanding:
            distributed.wait(outstanding)
        self._close()

    def _close(self) -> None:
        for scattered in self._functions.values():
            scattered.release()
        self._functions.clear()
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
