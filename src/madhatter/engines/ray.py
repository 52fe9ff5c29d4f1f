"""The ``ray`` engine: hand tasks to a Ray cluster (``pip install 'madhatter[ray]'``).

madhatter schedules nothing itself here: each task becomes one call of a Ray remote function, and
Ray's scheduler places it, moves its inputs, and reruns it when it fails (``Task.retries``, for a
crashed worker and for an exception alike: ``handles_retries``). A stage's step chain is pickled by
cloudpickle and put in Ray's object store once (not pickled into every task); each worker process
unpickles it on first use and keeps it, by the task's ``function_key``.

With ``address=None`` a local Ray is started for the run and shut down after it: every server it
runs listens on 127.0.0.1 only, with no dashboard and no usage statistics. With an address
(``"auto"``, ``"host:port"`` or ``"ray://host:port"``) the engine connects to that cluster and
leaves it running; a Ray already initialised in the process is used as it is, and left alone. On
connecting, the engine checks that every node runs the driver's madhatter and Python
(major.minor).

Results kept on the cluster (``keeps_results``): a task with ``keep_output`` returns two objects,
its small summary, which comes back to the driver, and its output, which stays in Ray's object
store behind a :class:`~._base.Remote`. A later task given that ``Remote`` gets the output on its
worker: Ray resolves only object refs passed as top-level arguments of a remote call, so each
``Remote`` of a task's argument tuple is passed as an extra argument and put back in place on the
worker. (By default Ray hands outputs under 100 KiB, its ``max_direct_call_object_size``, to the
driver's in-process store, still pickled, and inlines them into the tasks that use them; larger
ones stay in the object store of the node that made them.)

Errors: Ray wraps an exception raised by a task in ``RayTaskError``; the task's future fails with
the original (``.cause``, e.g. a :class:`~madhatter.StepFailed`). A dead worker or node fails it
with :class:`~._base.TaskLost`. A task past its timeout fails with :class:`~._base.TaskTimedOut`
and is cancelled with ``force=True``, which kills the worker process running it (Ray starts a
fresh one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, InvalidStateError, wait
from typing import Any

from .._errors import EngineError
from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult, TaskTimedOut
from ._kit import load_function
from ._kit import worker_runtime as _runtime
from ._registry import require_extra
from ._serialize import dumps_function

ray = require_extra("ray", extra="ray")

CONNECT_TIMEOUT_SECONDS = 5.0
"""How long the engine tries to open a TCP connection to a cluster's address before calling it
unreachable (``ray.init`` itself retries an unreachable address for minutes)."""

CHECK_TIMEOUT_SECONDS = 60.0
"""How long each node may take to answer the version check (it may have to start a worker)."""

CANCEL_WAIT_SECONDS = 30.0
"""How long ``shutdown(cancel_pending=True)`` waits for Ray to confirm its cancelled tasks ended."""

SINGLE_MACHINE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's single-machine mode, for every process of a local Ray (see :func:`_addresses_as_given`)."""

_BLACKHOLE = "http://127.0.0.1:9"
NO_OUTSIDE_HTTP_ENV = {
    **dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), _BLACKHOLE),
    **dict.fromkeys(("NO_PROXY", "no_proxy"), "127.0.0.1,localhost,::1"),
}
"""For the dashboard process of a local Ray: its HTTP requests can reach 127.0.0.1 only (see
:func:`_local_processes_kept_local`)."""


# -- on the worker ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Stands in a task's argument tuple for the value of the ``index``-th extra argument of the
    remote call: the output a :class:`~._base.Remote` referred to, which Ray fetched to the
    worker."""

    index: int


_worker_name: str | None = None


def _run_task(
    function_key: str, function_bytes: bytes, keep_output: bool, argument: Any, *outputs: Any
) -> Any:
    """Runs inside a Ray worker: call the task function, timed, and say where it ran.

    ``argument`` holds a :class:`_Slot` where the driver's argument held a ``Remote``; ``outputs``
    are those values, resolved by Ray. With ``keep_output`` the function returns ``(summary,
    output)`` and this returns two objects (``num_returns=2``): the result with ``(summary,
    len(output))``, which goes back to the driver, and ``output``, which stays in the cluster.
    """
    global _worker_name
    function = load_function(function_key, function_bytes)
    if outputs:
        argument = tuple(outputs[e.index] if isinstance(e, _Slot) else e for e in argument)
    started, clock = time.time(), time.perf_counter()
    value = function(argument)
    seconds = time.perf_counter() - clock
    if _worker_name is None:
        _worker_name = f"{ray.util.get_node_ip_address()}/pid-{os.getpid()}"
    if keep_output:
        summary, output = value
        return TaskResult((summary, len(output)), _worker_name, started, seconds), output
    return TaskResult(value, _worker_name, started, seconds)


_remote_run_task = ray.remote(_run_task)
_remote_runtime = ray.remote(_runtime)


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
        workers: CPUs of a new local Ray (default: every core); ignored with an ``address``.
        address: ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` of a running cluster.
        **init_options: passed on to ``ray.init`` (e.g. ``runtime_env``, ``namespace``).

    Raises:
        EngineError: the cluster cannot be reached, or a node runs another madhatter or Python.
    """

    name = "ray"
    traits = EngineTraits(task_seconds=0.1, tasks_per_worker=2, retries=True, keeps_output=True)

    def __init__(
        self, workers: int | None = None, *, address: str | None = None, **init_options: Any
    ) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, _Pending] = {}  # by the ObjectRef of each task's result
        self._functions: dict[str, Any] = {}  # function key -> ObjectRef of the pickled function
        self._closed = False
        self._connected_here = False  # this engine called ray.init, so it calls ray.shutdown
        self._capacity: dict[str, float] | None = None  # a local Ray's resources (it cannot grow)
        self._dashboard: str | None = None
        if not ray.is_initialized():
            context = (
                _start_local(workers, init_options)
                if address is None
                else _connect(address, init_options)
            )
            self._connected_here = True
            url = getattr(context, "dashboard_url", None)
            if url:
                self._dashboard = url if "://" in url else f"http://{url}"
        try:
            _check_nodes()
            if address is None and self._connected_here:
                self._capacity = _largest_node()
        except BaseException:
            self._close()
            raise

    @property
    def workers(self) -> int:
        self._require_open()
        return max(1, int(ray.cluster_resources().get("CPU", 0)))

    @property
    def dashboard_link(self) -> str | None:
        return self._dashboard

    def submit(self, task: Task) -> Future[TaskResult]:
        self._require_open()
        function = self._functions.get(task.function_key)
        if function is None:
            function = self._functions[task.function_key] = ray.put(dumps_function(task.function))
        argument, remote_outputs = _split_remotes(task.argument)
        options = _ray_options(task.resources)
        if self._capacity is not None:
            _check_feasible(options, self._capacity)
        refs = _remote_run_task.options(
            num_returns=2 if task.keep_output else 1,
            max_retries=task.retries,
            retry_exceptions=True,
            name=f"madhatter:{task.key}",
            **options,
        ).remote(task.function_key, function, task.keep_output, argument, *remote_outputs)
        ref, output = (refs[0], refs[1]) if task.keep_output else (refs, None)
        result: Future[TaskResult] = Future()
        result.set_running_or_notify_cancel()
        timer = None
        if task.timeout is not None:
            timer = threading.Timer(task.timeout, self._expire, args=(ref, result, task.timeout))
            timer.daemon = True
        with self._lock:
            self._pending[ref] = _Pending(result, timer, output)
        if timer is not None:
            timer.start()
        ref.future().add_done_callback(lambda done: self._resolve(ref, done))
        return result

    def _require_open(self) -> None:
        """Refuse to go on without Ray: Ray's next call would start a Ray of its own."""
        if self._closed or not ray.is_initialized():
            raise EngineError("the ray engine is shut down (or Ray was, under it)")

    def _resolve(self, ref: Any, done: Future[Any]) -> None:
        """Called on a Ray thread when a task's result (or its error) is in."""
        with self._lock:
            pending = self._pending.pop(ref, None)
        if pending is None:  # the engine was shut down meanwhile
            return
        if pending.timer is not None:
            pending.timer.cancel()
        try:
            error = TaskLost("Ray cancelled the task") if done.cancelled() else done.exception()
            if error is not None:
                pending.result.set_exception(_task_error(error))
            elif pending.output is None:
                pending.result.set_result(done.result())
            else:
                value: TaskResult = done.result()
                summary, count = value.value
                kept = (summary, Remote(pending.output, count))
                pending.result.set_result(dataclasses.replace(value, value=kept))
        except InvalidStateError:  # the timeout failed it first
            pass

    def _expire(self, ref: Any, result: Future[TaskResult], timeout: float) -> None:
        try:
            result.set_exception(TaskTimedOut(timeout))
        except InvalidStateError:
            return
        _cancel(ref)

    def shutdown(self, *, cancel_pending: bool) -> None:
        if self._closed:
            return
        with self._lock:
            outstanding = dict(self._pending)
        try:
            if outstanding:
                if cancel_pending:
                    for ref in outstanding:
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
            try:
                pending.result.set_exception(TaskLost("the Ray engine was shut down"))
            except InvalidStateError:
                pass
        self._functions.clear()  # drops the refs: Ray frees the pickled functions
        if self._connected_here:
            ray.shutdown()  # stops a local Ray; for a cluster, only disconnects


# -- starting and connecting -----------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _addresses_as_given() -> Iterator[None]:
    """Stop Ray from replacing a loopback address by the machine's outward one, while it starts
    or connects.

    On Linux, Ray turns a node address of 127.0.0.1 into the machine's outward IP, and its
    servers then listen on every interface; only in its single-machine mode (the one it uses on
    macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) does 127.0.0.1 stay 127.0.0.1, and
    the node's servers listen there alone. Ray reads that switch once, on import, so it is flipped
    in its constants module for the duration of the call. Other addresses are unaffected.
    """
    constants = importlib.import_module("ray._private.ray_constants")
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:  # another Ray: ``_start_local`` refuses a node that is not on loopback
        yield
        return
    setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 (an attribute mypy cannot see)
    try:
        yield
    finally:
        setattr(constants, "ENABLE_RAY_CLUSTER", saved)  # noqa: B010


@contextlib.contextmanager
def _local_processes_kept_local() -> Iterator[None]:
    """While a local Ray starts, give each process it starts an environment that keeps it local.

    Every process (GCS, raylet, and the workers and agents the raylet starts with its own
    environment) runs in Ray's single-machine mode, so none of them looks up an outward address.
    The dashboard process, which Ray starts even without a dashboard (to run its usage-statistics
    module alone), probes the cloud metadata service (169.254.169.254) and looks up
    ``metadata.google.internal`` whether or not statistics are enabled; a proxy that does not
    exist, for it alone, stops those requests before they leave the machine. (Workers keep the
    caller's proxies: a step may fetch URLs.)
    """
    services = importlib.import_module("ray._private.services")
    start = getattr(services, "start_ray_process", None)
    if start is None:
        yield
        return

    def start_kept_local(command: list[str], process_type: str, **options: Any) -> Any:
        env = {**(options.pop("env_updates", None) or {}), **SINGLE_MACHINE_ENV}
        if process_type == "dashboard":
            env.update(NO_OUTSIDE_HTTP_ENV)
        return start(command, process_type, env_updates=env, **options)

    setattr(services, "start_ray_process", start_kept_local)  # noqa: B010
    try:
        yield
    finally:
        setattr(services, "start_ray_process", start)  # noqa: B010


def _start_local(workers: int | None, init_options: Mapping[str, Any]) -> Any:
    """Start a local Ray for this engine: loopback only, no dashboard, no usage statistics."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = {
        "num_cpus": workers or os.cpu_count() or 1,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "logging_level": logging.WARNING,
        **init_options,
    }
    with _addresses_as_given(), _local_processes_kept_local():
        # "local": a new Ray even when RAY_ADDRESS or a `ray start` on this machine says otherwise
        context = ray.init(address="local", **options)
    node = str(context.address_info["node_ip_address"])
    if not _is_loopback(node):
        ray.shutdown()
        raise EngineError(
            f"the local Ray started on {node}, not on 127.0.0.1, so it would be reachable from "
            f"other machines; madhatter stopped it. Start Ray yourself (ray start --head) and "
            f"pass its address to the engine"
        )
    return context


def _connect(address: str, init_options: Mapping[str, Any]) -> Any:
    """Connect to the cluster at ``address``, failing fast and clearly when it is not there."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = {"logging_level": logging.WARNING, **init_options}
    with _addresses_as_given():
        _check_reachable(address)
        try:
            return ray.init(address=address, **options)
        except Exception as exc:
            if ray.is_initialized():
                ray.shutdown()
            raise EngineError(
                f"cannot connect to the Ray cluster at {address}: {_reason(exc)}"
            ) from None


def _check_reachable(address: str) -> None:
    """Open (and close) a TCP connection to the cluster's address: ``ray.init`` would otherwise
    wait minutes for an address where nothing listens."""
    target = address
    if address == "auto":
        services = importlib.import_module("ray._private.services")
        try:
            target = services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise EngineError(
                f"cannot find a Ray cluster to connect to (address='auto'): {exc}"
            ) from None
    host, port = _host_and_port(target)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {address}: {exc} (is Ray running there? start it "
            f"with: ray start --head)"
        ) from None


def _host_and_port(address: str) -> tuple[str, int]:
    """``"ray://host:port"``, ``"host:port"`` or ``"[::1]:port"`` -> (host, port)."""
    _, _, rest = address.rpartition("://")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(
            f"{address!r} is not a Ray address; use 'auto', 'host:port' or 'ray://host:port'"
        )
    return host.strip("[]"), int(port)


def _check_nodes() -> None:
    """Run :func:`_runtime` once on every live node and compare it with the driver's own."""
    strategies = importlib.import_module("ray.util.scheduling_strategies")
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    refs = [
        _remote_runtime.options(
            num_cpus=0,
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote()
        for node in nodes
    ]
    expected = _runtime()
    for node, ref in zip(nodes, refs, strict=True):
        where = f"Ray node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
        try:
            found = tuple(ray.get(ref, timeout=CHECK_TIMEOUT_SECONDS))
        except ray.exceptions.GetTimeoutError:
            raise EngineError(
                f"{where} did not answer within {CHECK_TIMEOUT_SECONDS:.0f}s; is it overloaded?"
            ) from None
        except ray.exceptions.RayError as exc:
            raise EngineError(
                f"{where} cannot run madhatter (is it installed there?): {_first_line(exc)}"
            ) from None
        if found != expected:
            version, python = found
            raise EngineError(
                f"{where} runs madhatter {version} on Python {python}, but this driver runs "
                f"madhatter {expected[0]} on Python {expected[1]}; install the same versions on "
                f"the nodes (tasks are pickled code)"
            )


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


def _largest_node() -> dict[str, float]:
    """The most of each resource one live node has (a task must fit on one node)."""
    most: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for name, amount in node.get("Resources", {}).items():
                most[name] = max(most.get(name, 0.0), float(amount))
    return most


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
                f"{capacity.get(name, 0.0):g}; start Ray with more (workers=, or ray start "
                f"--resources) and pass address="
            )


_LOST = (
    "WorkerCrashedError",  # the worker process died (killed, crashed, os._exit)
    "NodeDiedError",
    "LocalRayletDiedError",
    "ObjectLostError",  # an input or the result was lost with its node (and all its subclasses)
    "OutOfMemoryError",  # Ray's memory monitor killed the worker
    "RaySystemError",
)


def _task_error(error: BaseException) -> BaseException:
    """What a task's future fails with, for the exception Ray gave for it."""
    exceptions = ray.exceptions
    if isinstance(error, exceptions.RayTaskError):
        cause: BaseException = error.cause  # the task function's own exception, e.g. StepFailed
        return cause
    if isinstance(error, exceptions.TaskCancelledError):
        return TaskLost("the task was cancelled on the Ray cluster")
    if isinstance(error, tuple(getattr(exceptions, name) for name in _LOST)):
        return TaskLost(f"{type(error).__name__}: {_first_line(error)}")
    return error


def _cancel(ref: Any) -> None:
    """Cancel a task, killing the worker process if it already runs (Ray starts a new one)."""
    try:
        ray.cancel(ref, force=True)
    except Exception:  # it finished meanwhile, or Ray is gone: nothing left to stop
        pass


def _reason(error: BaseException) -> str:
    """An error's message with the gist of its root cause (Ray's "Failed to connect to Ray
    cluster" hides why, e.g. a refused token, in a traceback quoted by its cause)."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    if root is error:
        return str(error)
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f"{error}: {lines[-1] if lines else type(root).__name__}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
