"""The ``dask`` engine: hand tasks to a Dask cluster (``pip install 'madhatter[dask]'``).

madhatter schedules nothing itself here: each task becomes one Dask task, and Dask's scheduler
places it, moves its data, and reruns it elsewhere when a worker dies. The step chain a task runs
is shipped to the workers once per stage (not pickled into every task); so are the run
parameters and ``setup=`` functions, which travel inside it.

With ``address=None`` a local cluster of worker *processes* (one thread each, on 127.0.0.1) is
started for the run and closed after it; with an address (``tcp://scheduler:8786``) the engine
connects to that cluster and leaves it running. Step functions travel pickled by cloudpickle, so
a script's steps need not be importable on the workers. On connecting, the engine checks that
the workers run the same madhatter and Python (major.minor) as the driver.

Data by reference, and a driver that keeps up (issue 10 of the benchmarks: the driver spent 4-7
ms of CPU per task, against ~1 ms for a hand-written ``client.map``):

* **Chunks travel as one opaque object.** Dask walks a task's arguments item by item, looking
  for futures in every list and tuple (``dask._task_spec.parse_input``: 0.22 s per W3 run), and
  its scheduler unpickles every task it is sent. A chunk is pickled by the driver and sent as
  bytes, which Dask neither walks nor rebuilds.
* **Output kept on the cluster stays boxed.** When the next step runs on the same cluster, a
  task's output stays there (the ``keeps_output`` trait). Dask serialises a task result that is a
  list one item at a time (unfused W3 took 4x fused); the task returns its summary and its output
  in a :class:`_Box` as one result instead; a second, tiny task on the same worker picks the
  summary out for the driver, and the next step's task gets the first task's future, unboxing the
  output on its worker.
* **Submits are batched.** ``submit`` queues the task and returns; a submitter thread sends
  everything queued as one ``client.map`` per stage (one graph update for the scheduler, not one
  per task). A lone task goes out at once: the thread waits for nothing but the queue.
* **Results are gathered in batches.** Dask calls back when a task is done; a gatherer thread
  fetches the results of every task done meanwhile with one ``client.gather`` (one round trip,
  not one per task).

Retries are Dask's own (``retries=``, without ``retry_delay``). A task's timeout counts from when
it starts on its worker, not from its submission (it may wait behind others there): a task with a
timeout tells the driver when it starts, through Dask's event topics (:data:`STARTED_TOPIC`), and
the driver starts its clock then. What a running task sends the driver (its output so far) travels
the same way, on :data:`INTERIM_TOPIC`. Dask cannot stop a task once it runs: a task past its timeout
fails its chunk with ``TaskTimedOut`` and is cancelled, but its worker thread finishes it in the
background.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

from .._errors import EngineError
from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult
from ._registry import require_extra
from ._serialize import dumps_data, dumps_function, loads
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
dask = require_extra("dask", extra="dask")

TASKS_PER_WORKER = 8
"""Tasks the runner keeps submitted per worker thread. A task's round trip from the driver
through the scheduler to a worker and back takes 10-20 ms on a local cluster, so a worker whose
tasks are shorter idles unless several wait for it; the extra ones wait on the scheduler (Dask
queues tasks beyond its workers' threads), not on a worker. More tasks out also means bigger
batches of submits and gathers: 20,000 one-item tasks (``bench_cluster.py``, driver CPU) cost
the driver 1.4 ms each with 2 per worker, 0.7 ms with 8."""


STARTED_TOPIC = "madhatter-task-started"
"""The Dask event topic on which a task with a timeout says it has started (its key): the
driver's clock for the timeout starts then. A worker thread cannot be interrupted by an alarm, so
the driver times the task, and only the worker knows when it leaves the worker's queue."""

INTERIM_TOPIC = "madhatter-task-interim"
"""The Dask event topic that carries ``(key, message)`` a running task sends the driver
(``Task.interim``: its output so far)."""

LARGE_FUNCTION_BYTES = 5 * 2**20
"""A pickled stage function this big travels with Dask's large-graph warning silenced (it
warns at 10 MB by default; the function is sent once per stage on purpose)."""


class _Box:
    """A task's output kept on the cluster, as one opaque object for Dask.

    Dask serialises a value that is a list, tuple or set item by item, when it moves it between
    workers (issue 10: unfused W3 took 9.4 s against 2.3 s fused). A box is none of those: Dask
    pickles it whole.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[_Box], tuple[Any]]:
        return _Box, (self.value,)


# -- on the worker ---------------------------------------------------------------------------


def _unbox(element: Any) -> Any:
    """An element of a task's argument as the task function gets it: pickled by the driver, or
    the output of an earlier ``keep_output`` task (whose whole result Dask fetched here)."""
    if isinstance(element, bytes):
        return loads(element)
    if isinstance(element, TaskResult):
        return element.value[1].value  # (summary, _Box(output))
    return element


def _run_on_worker(
    elements: tuple[Any, ...],
    *,
    function_key: str,
    function_bytes: bytes,
    keep_output: bool,
    timed: bool = False,
    live: bool = False,
) -> TaskResult:
    """Runs inside a Dask worker: call the task function, timed, and say where it ran.

    The function arrives pickled by cloudpickle (Dask would try plain pickle first, which pickles
    a step by reference to a module the workers may not have). With ``keep_output`` the function
    returns ``(summary, output)``; the output goes back boxed, so that Dask keeps and moves it as
    one object. A ``timed`` task (one with a timeout) first tells the driver it has started; a
    ``live`` one sends what it sends while it runs as events (``log_event`` may be called from
    any thread).
    """
    worker = distributed.get_worker()
    key = worker.get_current_task()
    if timed:
        worker.log_event(STARTED_TOPIC, key)

    def interim(message: Any) -> None:
        worker.log_event(INTERIM_TOPIC, (key, message))

    function = load_function(function_key, function_bytes)
    argument = tuple(_unbox(element) for element in elements)
    result = timed_call(function, argument, worker.address, interim if live else None)
    if keep_output:
        summary, output = result.value
        return dataclasses.replace(result, value=(summary, _Box(output)))
    return result


def _function_bytes(pickled: bytes) -> bytes:
    """A stage's pickled function, as a task's output (see :meth:`DaskEngine._scatter`)."""
    return pickled


def _summary(result: TaskResult) -> TaskResult:
    """For ``keep_output`` tasks, on the worker that has the result: the summary and the length
    of the output, for the driver (the output itself stays where it is)."""
    summary, output = result.value
    return TaskResult((summary, len(output.value)), result.worker, result.started, result.seconds)


# -- in the driver ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    """A task the runner holds a future for: queued, then out on the cluster.

    ``arguments`` are what Dask gets (see :func:`_arguments`); ``remote`` is the Dask future the
    driver waits on (the summary task's, with ``keep_output``); ``output`` is the one that keeps
    the output on the cluster."""

    task: Task
    arguments: tuple[Any, ...]
    result: Future[TaskResult]
    timer: threading.Timer | None = None
    remote: Any = None
    output: Any = None
    sent: int = 0  # bytes of the pickled argument (kept outputs travel between workers)


def _arguments(task: Task) -> tuple[Any, ...]:
    """The task's argument as Dask gets it: remote chunks as their Dask futures (which Dask
    resolves on the worker), every other element pickled here, as bytes.

    Bytes are opaque to Dask: it neither walks them looking for futures nor serialises them item
    by item, and the scheduler, which unpickles every task it is sent, copies them without
    rebuilding the items (nor importing the modules their classes come from)."""
    argument = task.argument if isinstance(task.argument, tuple) else (task.argument,)
    elements = []
    for element in argument:
        if isinstance(element, Remote):
            if not isinstance(element.handle, distributed.Future):
                raise EngineError(
                    f"the dask engine got a Remote of another engine ({type(element.handle).__name__})"
                )
            elements.append(element.handle)
        else:
            elements.append(dumps_data(element))
    return tuple(elements)


def _group(pending: Sequence[_Pending]) -> dict[tuple[Any, ...], list[_Pending]]:
    """Queued tasks by what one ``client.map`` call must share: function, options, arity."""
    groups: dict[tuple[Any, ...], list[_Pending]] = {}
    for item in pending:
        task = item.task
        shape = (
            task.function_key,
            task.keep_output,
            task.retries,
            repr(sorted(task.resources.items())),
            len(task.argument) if isinstance(task.argument, tuple) else -1,
            task.timeout is not None,
            task.interim is not None,
        )
        groups.setdefault(shape, []).append(item)
    return groups


def _cancel(item: _Pending) -> None:
    """Cancel a timed-out task on the cluster (its worker thread still finishes it)."""
    if item.remote is not None:
        item.remote.cancel()


def _outcome(remote: Any, item: _Pending) -> tuple[TaskResult | None, BaseException | None]:
    """A done Dask future's answer, fetched on its own, as ``(result, error)``.

    Its result may have been lost with its worker since it was done (Dask then recomputes it):
    ``result()`` waits for the recomputed one, where ``exception()`` would return ``None`` for it
    and the task would end with neither a result nor an error (issue 11's chaos test)."""
    if remote.status == "cancelled":
        return None, TaskLost("the task was cancelled on the Dask cluster")
    try:
        value = remote.result()
    except CancelledError:
        return None, TaskLost("the task was cancelled on the Dask cluster")
    except distributed.KilledWorker as error:
        return None, TaskLost(f"Dask gave up on the task after its workers died: {error}")
    except Exception as error:  # the task's own error
        return None, error
    return _answer(value, item), None


def _answer(result: TaskResult, item: _Pending) -> TaskResult:
    """The runner's answer for a task's result, with the bytes its argument took: for
    ``keep_output`` tasks the output is ``item.output``, the future that keeps it on the cluster."""
    if item.output is None:
        return dataclasses.replace(result, sent=item.sent)
    summary, count = result.value
    return dataclasses.replace(result, value=(summary, Remote(item.output, count)), sent=item.sent)


class DaskEngine(Engine):
    """Runs tasks on a Dask cluster: a new local one, or the one at ``address``."""

    name = "dask"
    traits = EngineTraits(
        task_seconds=0.1,
        tasks_per_worker=TASKS_PER_WORKER,
        pins_lost_tasks=False,  # a dead worker's queued tasks come back KilledWorker too
        retries=True,
        keeps_output=True,
    )

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
        self._lock = threading.Condition()
        self._queued: list[_Pending] = []  # submitted by the runner, not yet sent to Dask
        self._out: dict[str, _Pending] = {}  # sent, by the key of the Dask future waited on
        self._done: list[Any] = []  # Dask futures done, their results not yet fetched
        self._sending = 0  # batches taken off the queue, not yet in ``_out``
        self._watched: dict[str, _Pending] = {}  # tasks that send events, by their main task's key
        self._closing = False
        self._threads = [
            threading.Thread(target=self._send_loop, name="madhatter-dask-submit", daemon=True),
            threading.Thread(target=self._gather_loop, name="madhatter-dask-gather", daemon=True),
        ]
        self._client.subscribe_topic(STARTED_TOPIC, self._on_started)
        self._client.subscribe_topic(INTERIM_TOPIC, self._on_interim)
        try:
            self._check_workers()
        except BaseException:
            self._close()
            raise
        for thread in self._threads:
            thread.start()

    def _check_workers(self) -> None:
        """Refuse the cluster if any worker runs another madhatter or Python than the driver."""
        self._client.wait_for_workers(1, timeout=60)
        for worker, runtime in self._client.run(worker_runtime).items():
            check_runtime(f"Dask worker {worker}", tuple(runtime))

    def _scatter(self, function: Any) -> Any:
        """Ship a stage's function once: a Dask future of its pickled bytes, which each worker
        fetches with its first task of the stage.

        The bytes are the argument of a task (the scheduler keeps them in its graph), not
        scattered data: scattered data has no lineage, so when the workers holding it die
        (Dask's memory manager soon keeps a single replica of a broadcast), Dask cannot get it
        back and cancels every task that needs it (issue 11's chaos test found this). A task's
        output is recomputed instead. Dask warns about a graph over 10 MB; a stage that carries
        large run parameters is that big on purpose, once per stage.
        """
        pickled = dumps_function(function)
        key = f"madhatter-function-{uuid.uuid4().hex}"
        if len(pickled) < LARGE_FUNCTION_BYTES:
            return self._client.submit(_function_bytes, pickled, pure=False, key=key)
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": 2 * len(pickled)}):
            return self._client.submit(_function_bytes, pickled, pure=False, key=key)

    @property
    def workers(self) -> int:
        info = self._client.scheduler_info()["workers"]
        return sum(int(worker.get("nthreads", 1)) for worker in info.values()) or 1

    @property
    def dashboard_link(self) -> str | None:
        link: str | None = getattr(self._client, "dashboard_link", None)
        return link

    # -- submitting ------------------------------------------------------------------------

    def submit(self, task: Task) -> Future[TaskResult]:
        arguments = _arguments(task)  # here: the runner hears at once what does not pickle
        result: Future[TaskResult] = Future()
        result.set_running_or_notify_cancel()
        with self._lock:
            if self._closing:
                raise EngineError("the dask engine is shut down")
            sent = sum(len(element) for element in arguments if isinstance(element, bytes))
            self._queued.append(_Pending(task, arguments, result, sent=sent))
            self._lock.notify_all()
        return result

    def _send_loop(self) -> None:
        """The submitter thread: send whatever is queued, in one batch per stage."""
        while True:
            with self._lock:
                while not self._queued and not self._closing:
                    self._lock.wait()
                if not self._queued:
                    return
                batch, self._queued = self._queued, []
                self._sending += 1
            try:
                for group in _group(batch).values():
                    try:
                        self._send(group)
                    except Exception as exc:  # the cluster went away
                        for item in group:
                            self._stop_watching(item)
                            settle(item.result, error=exc)
            finally:
                with self._lock:
                    self._sending -= 1
                    self._lock.notify_all()

    def _send(self, group: list[_Pending]) -> None:
        """Send tasks that share their function and options as one ``client.map`` call."""
        first = group[0].task
        keys = [f"madhatter-{item.task.key}" for item in group]
        timed, live = first.timeout is not None, first.interim is not None
        if timed or live:  # before sending: a task may start before ``map`` returns
            with self._lock:
                self._watched.update(zip(keys, group, strict=True))
        options: dict[str, Any] = {
            "pure": False,
            "retries": first.retries or None,
            "resources": dict(first.resources) or None,
        }
        mains = self._client.map(
            _run_on_worker,
            [item.arguments for item in group],
            key=keys,
            function_key=first.function_key,
            function_bytes=self._functions.handle(first),
            keep_output=first.keep_output,
            timed=timed,
            live=live,
            **options,
        )
        waited = mains
        if first.keep_output:
            keys = [f"madhatter-{item.task.key}/summary" for item in group]
            waited = self._client.map(_summary, mains, key=keys, pure=False)
        with self._lock:
            for item, main, remote in zip(group, mains, waited, strict=True):
                item.arguments = ()  # sent: the driver need not keep the pickled chunk
                item.remote = remote
                item.output = main if first.keep_output else None
                self._out[remote.key] = item
        for remote in waited:
            remote.add_done_callback(self._on_done)

    def _on_started(self, event: tuple[float, Any]) -> None:
        """On the client's event loop: a task with a timeout started on its worker (again, if
        Dask reruns it: each attempt gets the whole timeout), so its clock starts now."""
        _, key = event
        with self._lock:
            item = self._watched.get(key)
            if item is None or item.task.timeout is None:  # done already, or another client's
                return
            if item.timer is not None:
                item.timer.cancel()
            item.timer = expire_after(item.result, item.task.timeout, lambda: _cancel(item))

    def _on_interim(self, event: tuple[float, Any]) -> None:
        """On the client's event loop: a running task sent the driver a message."""
        _, (key, message) = event
        with self._lock:
            item = self._watched.get(key)
        if item is not None and item.task.interim is not None:
            item.task.interim(message)

    def _stop_watching(self, item: _Pending) -> None:
        """The task is answered: its timeout no longer applies (nor does a late start), and
        what it sends now is late."""
        with self._lock:
            self._watched.pop(f"madhatter-{item.task.key}", None)
            timer, item.timer = item.timer, None
        if timer is not None:
            timer.cancel()

    # -- results ---------------------------------------------------------------------------

    def _on_done(self, remote: Any) -> None:
        """Called on Dask's callback thread: hand the future to the gatherer."""
        with self._lock:
            self._done.append(remote)
            self._lock.notify_all()

    def _gather_loop(self) -> None:
        """The gatherer thread: fetch the results of every task done meanwhile, at once."""
        while True:
            with self._lock:
                while not self._done and not self._closing:
                    self._lock.wait()
                if not self._done:
                    return
                done, self._done = self._done, []
                pending = [(remote, self._out.pop(remote.key, None)) for remote in done]
            self._deliver([(remote, item) for remote, item in pending if item is not None])

    def _deliver(self, done: list[tuple[Any, _Pending]]) -> None:
        """Hand Dask's answers on to the tasks' futures, unless their timeouts failed them first."""
        finished = {remote.key: remote for remote, _ in done if remote.status == "finished"}
        fetched: dict[str, Any] = {}
        if finished:
            try:
                fetched = self._client.gather(finished, errors="skip")
            except Exception:  # fetch them one by one below, to say which failed
                fetched = {}
        for remote, item in done:
            value = fetched.get(remote.key)
            if value is None and remote.status in ("pending", "lost"):
                self._await_recomputed(remote, item)
                continue
            self._stop_watching(item)
            if value is not None:
                settle(item.result, _answer(value, item))
                continue
            try:
                answer, error = _outcome(remote, item)
            except Exception as exc:  # fetching the result itself failed (the cluster went away)
                answer, error = None, TaskLost(f"the result could not be fetched from Dask: {exc!r}")
            settle(item.result, answer, error)

    def _await_recomputed(self, remote: Any, item: _Pending) -> None:
        """A task that was done, but whose result was lost with its worker before the gatherer
        fetched it: Dask recomputes it from its lineage. Wait for that on a thread of its own
        (the gatherer must not block, and Dask's done callback does not wait for a lost
        future), then hand it to the gatherer again."""
        with self._lock:
            if self._closing:
                settle(item.result, error=TaskLost("the Dask engine was shut down"))
                return
            self._out[remote.key] = item

        def wait() -> None:
            # ``result()`` waits on the engine's own client (``distributed.wait`` would look for
            # a default client, and there is none); an error is the gatherer's to report.
            try:
                remote.result()
            except BaseException:
                pass
            self._on_done(remote)

        threading.Thread(target=wait, name="madhatter-dask-recompute", daemon=True).start()

    # -- stopping --------------------------------------------------------------------------

    def shutdown(self, *, cancel_pending: bool) -> None:
        with self._lock:
            if cancel_pending:
                dropped, self._queued = self._queued, []
            else:
                dropped = []
                while self._queued or self._sending:  # let the submitter send them
                    self._lock.wait()
            outstanding = [item.remote for item in self._out.values()]
        for item in dropped:
            settle(item.result, error=TaskLost("the run was stopped before the task was sent"))
        if outstanding and cancel_pending:
            self._client.cancel(outstanding, force=True)
        elif outstanding:
            distributed.wait(outstanding)
        self._close()

    def _close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        with self._lock:
            left = [*self._queued, *self._out.values()]
            self._queued, self._out = [], {}
        for item in left:
            self._stop_watching(item)
            settle(item.result, error=TaskLost("the Dask engine was shut down"))
        self._client.unsubscribe_topic(STARTED_TOPIC)
        self._client.unsubscribe_topic(INTERIM_TOPIC)
        for scattered in self._functions.clear():
            scattered.release()
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
