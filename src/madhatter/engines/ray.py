"""The ``ray`` engine: hand tasks to a Ray cluster (``pip install 'madhatter[ray]'``).

madhatter schedules nothing itself here: each task becomes one call of a Ray remote function, and
Ray's scheduler places it, moves its inputs, and reruns it when it fails (``Task.retries``, for a
crashed worker and for an exception alike: the ``retries`` trait). A stage's step chain is pickled
by cloudpickle and put in Ray's object store once (not pickled into every task); each worker
process unpickles it on first use and keeps it, by the task's ``function_key``.

With ``address=None`` a local Ray is started for the run, with Ray's own CLI in a process of its
own (``ray start --head --block``), and the driver connects to it. Every server it runs listens on
127.0.0.1 only, with no dashboard and no usage statistics (see ``_ray_connection.py`` for how, and
why it cannot be ``ray.init`` in this process). Runs alive at once in one process share it (Ray
connects a process to one cluster at a time): the last one to finish stops it. With an address
(``"auto"``, ``"host:port"`` or ``"ray://host:port"``) the engine connects to that cluster and
leaves it running; a Ray already initialised in the process by its user is used as it is, and left
alone. On connecting, the engine checks that every node runs the driver's madhatter and Python
(major.minor). Disconnecting puts back what ``ray.init`` changed in ``os.environ``.

Results kept on the cluster (the ``keeps_output`` trait): a task with ``keep_output`` returns two
objects, its small summary, which comes back to the driver, and its output, pickled on the worker
as one ``bytes`` object (boxed, as on Dask), which stays in Ray's object store behind a
:class:`~._base.Remote`. A later task given that ``Remote`` gets the output
on its worker: Ray resolves only object refs passed as top-level arguments of a remote call, so
each ``Remote`` of a task's argument tuple is passed as an extra argument and put back in place on
the worker. (By default Ray hands outputs under 100 KiB, its ``max_direct_call_object_size``, to
the driver's in-process store, still pickled, and inlines them into the tasks that use them;
larger ones stay in the object store of the node that made them.)

Errors: Ray wraps an exception raised by a task in ``RayTaskError``; the task's future fails with
the original (``.cause``, e.g. a :class:`~madhatter.StepFailed`). A dead worker or node fails it
with :class:`~._base.TaskLost`. A task past its timeout fails with :class:`~._base.TaskTimedOut`:
a Ray worker runs its task on its main thread, where the task function's own alarm stops it
``timeout`` after it started (not after its submission: it may wait behind others). The driver's
timer is only the backstop, for a task the alarm cannot stop (a call into C that never returns):
it counts from submission, with room for the tasks that may run before it
(:func:`_backstop`), and cancels the task with ``force=True``, which kills the worker process
running it (Ray starts a fresh one).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import threading
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any

from .._errors import EngineError, first_line
from . import kit
from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult
from ._deadline import deadline
from ._ray_connection import acquire, release
from ._registry import require_extra
from ._serialize import dumps_data, dumps_function, loads

ray = require_extra("ray", extra="ray")


CHECK_TIMEOUT_SECONDS = 60.0
"""How long each node may take to answer the version check (it may have to start a worker)."""

CANCEL_WAIT_SECONDS = 30.0
"""How long ``shutdown(cancel_pending=True)`` waits for Ray to confirm its cancelled tasks ended."""

FINISH_GRACE_SECONDS = 1.0
"""How long ``shutdown(cancel_pending=True)`` lets tasks finish before it cancels those left.

Ray 2.60 aborts the driver's whole process (``Check failed: it != submissible_tasks_.end()
Tried to complete task that was not pending``) when ``ray.cancel`` meets a task whose reply is
being handled; the variant for retried tasks was fixed upstream (ray-project/ray#54798), this one
was not. It struck twice in a row in CI, cancelling the tiny tasks of a stopped stream. Tasks
that end within this grace are not cancelled at all, so only long-running ones are, and a long
task is rarely in the instant of its reply."""


# -- on the worker ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Stands in a task's argument tuple for the value of the ``index``-th extra argument of the
    remote call: the output a :class:`~._base.Remote` referred to, which Ray fetched to the
    worker."""

    index: int


@functools.cache
def _worker() -> str:
    """This worker process as results name it: its node's address and its pid."""
    return f"{ray.util.get_node_ip_address()}/pid-{os.getpid()}"


def _run_task(
    function_key: str,
    function_bytes: bytes,
    keep_output: bool,
    timeout: float | None,
    argument: Any,
    *outputs: Any,
) -> Any:
    """Runs inside a Ray worker: call the task function, timed, and say where it ran; past
    ``timeout`` its alarm stops it (a Ray worker runs its task on its main thread).

    ``argument`` holds a :class:`_Slot` where the driver's argument held a ``Remote``; ``outputs``
    are those values, resolved by Ray. With ``keep_output`` the function returns ``(summary,
    output)`` and this returns two objects (``num_returns=2``): the result with ``(summary,
    len(output))``, which goes back to the driver, and ``output``, which stays in the cluster,
    boxed: pickled here, with the standard pickle, as one ``bytes`` object. Ray's own serialiser
    (cloudpickle, whose per-object hook runs for every item of a list) would pickle a list of
    thousands of items several times slower, and again on every worker that reads it; bytes it
    copies as they are.
    """
    function = kit.load_function(function_key, function_bytes)
    if outputs:
        argument = tuple(loads(outputs[e.index]) if isinstance(e, _Slot) else e for e in argument)
    with deadline(timeout):
        result = kit.timed_call(function, argument, _worker())
    if keep_output:
        summary, output = result.value
        return dataclasses.replace(result, value=(summary, len(output))), dumps_data(output)
    return result


_remote_run_task = ray.remote(_run_task)
_remote_runtime = ray.remote(kit.worker_runtime)


# -- in the driver ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    """A submitted task: the future the runner holds, its timeout timer, and (with
    ``keep_output``) the ref of the output that stays on the cluster."""

    result: Future[TaskResult]
    timer: threading.Timer | None
    output: Any = None


class RayEngine(Engine):
    """Runs tasks on a Ray cluster: a new local one, or the one at ``address``.

    Args:
        workers: CPUs of a new local Ray (default: every core; ``num_cpus=`` says the same, and
            giving both, different, is an error); ignored with an ``address``, and when the
            engine joins the Ray another engine of this process connected.
        address: ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` of a running cluster.
        **init_options: options of ``ray.init``, in two kinds:

            - start-time options, which set up a Ray as it starts, so only a local Ray takes
              them (``address=None``): madhatter gives them to its ``ray start``. ``num_cpus``
              -> ``--num-cpus``, ``num_gpus`` -> ``--num-gpus``, ``resources`` -> ``--resources``
              (JSON), ``labels`` -> ``--labels`` (``key=value,...``), ``object_store_memory``
              -> ``--object-store-memory``, ``_system_config`` -> ``--system-config`` (JSON),
              and the rest of ``_ray_connection.START_FLAGS`` (``_memory``,
              ``_plasma_directory``, ``object_spilling_directory``, ``_node_name``, ...). A dict
              may also be given as its JSON text (``--engine-option 'resources={"a": 1}'``).
              The dashboard's options (``include_dashboard=True``, ``dashboard_host``,
              ``dashboard_port``, ``proxy_server_url``) are refused: the local Ray runs none. So
              are ``_temp_dir``, ``_node_ip_address`` and ``_redis_*``, which madhatter sets
              itself. With an ``address``, with a Ray the user initialised, or when the engine
              joins the Ray of another engine of this process, start-time options are an
              error (joining a local Ray, repeating the options it was started with is fine).
            - every other option (``runtime_env``, ``namespace``, ``log_to_driver``,
              ``job_config``, ``logging_level``, ...) goes to ``ray.init`` when this engine
              connects the process; an engine that joins a connection there is, or a Ray the
              user initialised, does not call ``ray.init``, and its options are not used.

            An option ``ray.init`` does not take is an error, before anything starts.

    Raises:
        EngineError: the cluster cannot be reached or started, a node runs another madhatter or
            Python, this process is connected to another Ray cluster already, or an option
            cannot apply (see above).
    """

    name = "ray"
    traits = EngineTraits(task_seconds=0.1, tasks_per_worker=2, retries=True, keeps_output=True)

    def __init__(
        self, workers: int | None = None, *, address: str | None = None, **init_options: Any
    ) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, _Pending] = {}  # by the ObjectRef of each task's result
        self._functions: kit.ShippedFunctions[Any] = kit.ShippedFunctions(_put_function)
        self._closed = False
        self._connection = acquire(workers, address, init_options)  # None: the user's Ray
        try:
            _check_nodes()
        except BaseException:
            self._close()
            raise

    @property
    def workers(self) -> int:
        self._require_open()
        return max(1, int(ray.cluster_resources().get("CPU", 0)))

    @property
    def dashboard_link(self) -> str | None:
        return None if self._connection is None else self._connection.dashboard

    def submit(self, task: Task) -> Future[TaskResult]:
        self._require_open()
        argument, remote_outputs = _split_remotes(task.argument)
        options = _ray_options(task.resources)
        if self._connection is not None and self._connection.capacity is not None:
            _check_feasible(options, self._connection.capacity)
        refs = _remote_run_task.options(
            num_returns=2 if task.keep_output else 1,
            max_retries=task.retries,
            retry_exceptions=True,
            name=f"madhatter:{task.key}",
            **options,
        ).remote(
            task.function_key,
            self._functions.handle(task),
            task.keep_output,
            task.timeout,
            argument,
            *remote_outputs,
        )
        ref, output = (refs[0], refs[1]) if task.keep_output else (refs, None)
        result: Future[TaskResult] = Future()
        result.set_running_or_notify_cancel()
        timer = None
        if task.timeout is not None:
            backstop = _backstop(task.timeout, self.traits.tasks_per_worker)
            cancel = functools.partial(_cancel, ref)
            timer = kit.expire_after(result, task.timeout, cancel, after=backstop)
        with self._lock:
            self._pending[ref] = _Pending(result, timer, output)
        ref.future().add_done_callback(lambda done: self._resolve(ref, done))
        return result

    def _require_open(self) -> None:
        """Refuse to go on without Ray: Ray's next call would start a Ray of its own."""
        if self._closed or not ray.is_initialized():
            raise EngineError("the ray engine is shut down (or Ray was, under it)")

    def _resolve(self, ref: Any, done: Future[Any]) -> None:
        """Called on a Ray thread when a task's result (or its error) is in: hand it on to the
        task's future, unless its timeout failed it first."""
        with self._lock:
            pending = self._pending.pop(ref, None)
        if pending is None:  # the engine was shut down meanwhile
            return
        if pending.timer is not None:
            pending.timer.cancel()
        kit.settle(pending.result, *_outcome(done, pending.output))

    def shutdown(self, *, cancel_pending: bool) -> None:
        if self._closed:
            return
        with self._lock:
            outstanding = dict(self._pending)
        try:
            if outstanding:
                if cancel_pending:
                    refs = list(outstanding)
                    _, running = ray.wait(
                        refs, num_returns=len(refs), timeout=FINISH_GRACE_SECONDS, fetch_local=False
                    )
                    for ref in running:
                        _cancel(ref)
                ray.wait(
                    list(outstanding),
                    num_returns=len(outstanding),
                    timeout=CANCEL_WAIT_SECONDS if cancel_pending else None,
                    fetch_local=False,
                )
                # Ray has answered for them all: let the callbacks hand those answers over
                # before ``_close`` calls whatever is still pending lost.
                wait([pending.result for pending in outstanding.values()], CANCEL_WAIT_SECONDS)
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        with self._lock:
            left, self._pending = list(self._pending.values()), {}
        for pending in left:
            if pending.timer is not None:
                pending.timer.cancel()
            kit.settle(pending.result, error=TaskLost("the Ray engine was shut down"))
        self._functions.clear()  # drops the refs: Ray frees the pickled functions
        connection, self._connection = self._connection, None
        if connection is not None:
            release(connection)


def _put_function(function: Any) -> Any:
    """Ship a stage's function: its pickled bytes, put in Ray's object store once."""
    return ray.put(dumps_function(function))


def _outcome(done: Future[Any], output: Any) -> tuple[TaskResult | None, BaseException | None]:
    """A finished task's answer from Ray as ``(result, error)``; for ``keep_output`` tasks the
    result's output is ``output``, the ref that keeps it on the cluster."""
    if done.cancelled():
        return None, TaskLost("Ray cancelled the task")
    error = done.exception()
    if error is not None:
        return None, _task_error(error)
    answer: TaskResult = done.result()
    if output is not None:
        summary, count = answer.value
        answer = dataclasses.replace(answer, value=(summary, Remote(output, count)))
    return answer, None


# -- the Ray this process is connected to ----------------------------------------------------


def _check_nodes() -> None:
    """Run :func:`~.kit.worker_runtime` once on every live node and compare it with the
    driver's own."""
    strategies = importlib.import_module("ray.util.scheduling_strategies")
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    refs = [
        _remote_runtime.options(
            num_cpus=0,
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote()
        for node in nodes
    ]
    for node, ref in zip(nodes, refs, strict=True):
        where = f"Ray node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
        try:
            found = ray.get(ref, timeout=CHECK_TIMEOUT_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise EngineError(
                f"{where} did not answer within {CHECK_TIMEOUT_SECONDS:.0f}s; is it overloaded?"
            ) from None
        except ray.exceptions.RayError as exc:
            raise EngineError(
                f"{where} cannot run madhatter (is it installed there?): {first_line(exc)}"
            ) from None
        kit.check_runtime(where, tuple(found), remedy="on the nodes")


# -- tasks -----------------------------------------------------------------------------------


def _split_remotes(argument: Any) -> tuple[Any, list[Any]]:
    """Take the ``Remote`` elements out of a task's argument tuple: the tuple with a
    :class:`_Slot` in place of each, and their object refs, in slot order."""
    if not isinstance(argument, tuple):
        return argument, []
    refs: list[Any] = []
    shape: list[Any] = []
    for element in argument:
        if isinstance(element, Remote):
            if not isinstance(element.handle, ray.ObjectRef):
                raise EngineError(
                    f"the ray engine got a Remote of another engine ({type(element.handle).__name__})"
                )
            shape.append(_Slot(len(refs)))
            refs.append(element.handle)
        else:
            shape.append(element)
    return (tuple(shape), refs) if refs else (argument, [])


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _memory_bytes(value: Any) -> int:
    """Bytes, from an int or a string such as ``"512m"``, ``"2g"``, ``"1.5GiB"`` (powers of 1024)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise EngineError(
            f"resource memory={value!r} is not a size: use bytes or a string like '512m' or '2g'"
        )
    return int(float(match[1]) * _UNITS[match[2].lower()])


def _ray_options(resources: Mapping[str, Any]) -> dict[str, Any]:
    """A step's resource requests as Ray task options: ``cpus`` -> ``num_cpus``, ``memory``
    (bytes, or ``"512m"``) -> ``memory``, ``gpus`` -> ``num_gpus``, anything else -> a custom
    resource of that name."""
    options: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for name, amount in resources.items():
        if name == "memory":
            options["memory"] = _memory_bytes(amount)
            continue
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise EngineError(
                f"resource {name}={amount!r}: the ray engine needs a number (of CPUs, GPUs or "
                f"units of a Ray custom resource)"
            )
        if name == "cpus":
            options["num_cpus"] = amount
        elif name == "gpus":
            options["num_gpus"] = amount
        else:
            custom[name] = float(amount)
    if custom:
        options["resources"] = custom
    return options


def _check_feasible(options: Mapping[str, Any], capacity: Mapping[str, float]) -> None:
    """Refuse a task no node of a local Ray can ever run (Ray would queue it forever)."""
    wanted = {
        "CPU": options.get("num_cpus", 1),
        "GPU": options.get("num_gpus", 0),
        "memory": options.get("memory", 0),
        **options.get("resources", {}),
    }
    for name, amount in wanted.items():
        if amount and amount > capacity.get(name, 0.0):
            raise EngineError(
                f"the task asks for {amount:g} {name} but the local Ray this engine started has "
                f"{capacity.get(name, 0.0):g}; start it with more (workers=, num_gpus=, "
                f"resources=, _memory=), or start Ray yourself and pass address="
            )


_LOST = (
    "WorkerCrashedError",  # the worker process died (killed, crashed, os._exit)
    "NodeDiedError",
    "LocalRayletDiedError",
    "ObjectLostError",  # an input or the result was lost with its node (and all its subclasses)
    "OutOfMemoryError",  # Ray's memory monitor killed the worker
    "RaySystemError",
)


BACKSTOP_EXTRA_SECONDS = 5.0
"""What the driver's backstop timer allows beyond the task's and its queue's time."""


def _backstop(timeout: float, tasks_per_worker: int) -> float:
    """When the driver gives up on a task with ``timeout``, counted from its submission: the
    runner keeps ``tasks_per_worker`` tasks out per CPU, so at most that many run before it on
    its worker, each stopped by its own alarm at ``timeout``."""
    return timeout * (tasks_per_worker + 1) + BACKSTOP_EXTRA_SECONDS


def _task_error(error: BaseException) -> BaseException:
    """What a task's future fails with, for the exception Ray gave for it."""
    exceptions = ray.exceptions
    if isinstance(error, exceptions.RayTaskError):
        cause: BaseException = error.cause  # the task function's own exception, e.g. StepFailed
        return cause
    if isinstance(error, exceptions.TaskCancelledError):
        return TaskLost("the task was cancelled on the Ray cluster")
    if isinstance(error, tuple(getattr(exceptions, name) for name in _LOST)):
        return TaskLost(f"{type(error).__name__}: {first_line(error)}")
    return error


def _cancel(ref: Any) -> None:
    """Cancel a task, killing the worker process if it already runs (Ray starts a new one)."""
    try:
        ray.cancel(ref, force=True)
    except Exception:  # it finished meanwhile, or Ray is gone: nothing left to stop
        pass
