"""The ``ray`` engine: hand tasks to a Ray cluster (``pip install 'madhatter[ray]'``).

madhatter schedules nothing itself here: each task becomes one call of a Ray remote function, and
Ray's scheduler places it, moves its inputs, and reruns it when it fails (``Task.retries``, for a
crashed worker and for an exception alike: the ``retries`` trait). A stage's step chain is pickled
by cloudpickle and put in Ray's object store once (not pickled into every task); each worker
process unpickles it on first use and keeps it, by the task's ``function_key``.

With ``address=None`` a local Ray is started for the run, with Ray's own CLI in a process of its
own (``ray start --head --block``), and the driver connects to it. Every server it runs listens on
127.0.0.1 only, with no dashboard and no usage statistics (see :class:`_LocalHead` for how, and
why it cannot be ``ray.init`` in this process). Runs alive at once in one process share it (Ray
connects a process to one cluster at a time): the last one to finish stops it. With an address
(``"auto"``, ``"host:port"`` or ``"ray://host:port"``) the engine connects to that cluster and
leaves it running; a Ray already initialised in the process by its user is used as it is, and left
alone. On connecting, the engine checks that every node runs the driver's madhatter and Python
(major.minor). Disconnecting puts back what ``ray.init`` changed in ``os.environ``.

Results kept on the cluster (the ``keeps_output`` trait): a task with ``keep_output`` returns two
objects, its small summary, which comes back to the driver, and its output, which stays in Ray's
object store behind a :class:`~._base.Remote`. A later task given that ``Remote`` gets the output
on its worker: Ray resolves only object refs passed as top-level arguments of a remote call, so
each ``Remote`` of a task's argument tuple is passed as an extra argument and put back in place on
the worker. (By default Ray hands outputs under 100 KiB, its ``max_direct_call_object_size``, to
the driver's in-process store, still pickled, and inlines them into the tasks that use them;
larger ones stay in the object store of the node that made them.)

Errors: Ray wraps an exception raised by a task in ``RayTaskError``; the task's future fails with
the original (``.cause``, e.g. a :class:`~madhatter.StepFailed`). A dead worker or node fails it
with :class:`~._base.TaskLost`. A task past its timeout fails with :class:`~._base.TaskTimedOut`
and is cancelled with ``force=True``, which kills the worker process running it (Ray starts a
fresh one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any

from .._errors import EngineError
from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult
from ._kit import (
    ShippedFunctions,
    check_runtime,
    expire_after,
    load_function,
    settle,
    timed_call,
    worker_runtime,
)
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

START_TIMEOUT_SECONDS = 60.0
"""How long a local Ray may take to accept connections."""

STOP_TIMEOUT_SECONDS = 30.0
"""How long a local Ray may take to stop its processes before the rest are killed."""

LOOPBACK = "::ffff:127.0.0.1"
"""127.0.0.1, spelled as Ray does not rewrite it. On Linux a driver's Ray replaces the addresses
``127.0.0.1``, ``localhost`` and ``::1`` by the machine's outward IP before connecting, so it
could never reach a Ray that listens on loopback only; this IPv4-mapped form is the same address
to the kernel (and to gRPC), and Ray leaves it alone."""

_BLACKHOLE = "http://127.0.0.1:9"  # the discard port, closed on a usual machine: requests fail at once
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": f"{_BLACKHOLE}/",
    **dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), _BLACKHOLE),
    **dict.fromkeys(("NO_PROXY", "no_proxy"), "127.0.0.1,localhost,::1"),
}
"""The environment of a local Ray's own processes, on top of a copy of the caller's without its
``*_proxy`` variables (see :class:`_LocalHead`)."""


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
    function_key: str, function_bytes: bytes, keep_output: bool, argument: Any, *outputs: Any
) -> Any:
    """Runs inside a Ray worker: call the task function, timed, and say where it ran.

    ``argument`` holds a :class:`_Slot` where the driver's argument held a ``Remote``; ``outputs``
    are those values, resolved by Ray. With ``keep_output`` the function returns ``(summary,
    output)`` and this returns two objects (``num_returns=2``): the result with ``(summary,
    len(output))``, which goes back to the driver, and ``output``, which stays in the cluster.
    """
    function = load_function(function_key, function_bytes)
    if outputs:
        argument = tuple(outputs[e.index] if isinstance(e, _Slot) else e for e in argument)
    result = timed_call(function, argument, _worker())
    if keep_output:
        summary, output = result.value
        return dataclasses.replace(result, value=(summary, len(output))), output
    return result


_remote_run_task = ray.remote(_run_task)
_remote_runtime = ray.remote(worker_runtime)


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
        workers: CPUs of a new local Ray (default: every core); ignored with an ``address``, and
            when the engine joins the Ray another engine of this process connected.
        address: ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` of a running cluster.
        **init_options: passed on to ``ray.init`` (e.g. ``runtime_env``, ``namespace``) by the
            engine that connects this process.

    Raises:
        EngineError: the cluster cannot be reached or started, a node runs another madhatter or
            Python, or this process is connected to another Ray cluster already.
    """

    name = "ray"
    traits = EngineTraits(task_seconds=0.1, tasks_per_worker=2, retries=True, keeps_output=True)

    def __init__(
        self, workers: int | None = None, *, address: str | None = None, **init_options: Any
    ) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, _Pending] = {}  # by the ObjectRef of each task's result
        self._functions: ShippedFunctions[Any] = ShippedFunctions(_put_function)
        self._closed = False
        self._connection = _acquire(workers, address, init_options)  # None: the user's Ray
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
            argument,
            *remote_outputs,
        )
        ref, output = (refs[0], refs[1]) if task.keep_output else (refs, None)
        result: Future[TaskResult] = Future()
        result.set_running_or_notify_cancel()
        timer = None
        if task.timeout is not None:
            timer = expire_after(result, task.timeout, functools.partial(_cancel, ref))
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
        settle(pending.result, *_outcome(done, pending.output))

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
            settle(pending.result, error=TaskLost("the Ray engine was shut down"))
        self._functions.clear()  # drops the refs: Ray frees the pickled functions
        connection, self._connection = self._connection, None
        if connection is not None:
            _release(connection)


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


@dataclasses.dataclass
class _Connection:
    """The Ray cluster madhatter connected this process to, shared by every :class:`RayEngine`
    alive in the process (Ray connects a process to one cluster at a time), counted by ``users``.

    Attributes:
        address: what the first engine asked for; ``None`` for a local Ray.
        head: the local Ray madhatter started, to stop after disconnecting.
        environment: what ``ray.init`` changed in ``os.environ`` (see :func:`_changes`), to put
            back after disconnecting.
        dashboard: the cluster's dashboard URL, if it runs one.
        capacity: a local Ray's resources (it cannot grow), to refuse tasks it can never run.
    """

    address: str | None
    head: _LocalHead | None
    environment: dict[str, tuple[str | None, str | None]]
    dashboard: str | None = None
    capacity: dict[str, float] | None = None
    users: int = 1


_connection: _Connection | None = None
_connection_lock = threading.Lock()  # guards ``_connection``: connecting, joining, disconnecting


def _acquire(
    workers: int | None, address: str | None, init_options: Mapping[str, Any]
) -> _Connection | None:
    """The connection for a new engine: madhatter's, joined if it has one (an ``address`` must
    then be the one it connected to); none if the user initialised Ray themselves; else a new
    one, to ``address`` or to a local Ray started for it."""
    global _connection
    with _connection_lock:
        shared = _connection
        if shared is not None:
            if address is not None and address != shared.address:
                raise EngineError(
                    f"cannot connect to the Ray cluster at {address}: this process is connected "
                    f"to {shared.address or 'the local Ray madhatter started'} for another run, "
                    f"and Ray connects a process to one cluster at a time; run this after it "
                    f"ends, or in another process"
                )
            shared.users += 1
            return shared
        if ray.is_initialized():
            return None
        _connection = (
            _start_local(workers, init_options) if address is None else _connect(address, init_options)
        )
        return _connection


def _release(connection: _Connection) -> None:
    """An engine is done with ``connection``: the last one disconnects this process."""
    global _connection
    with _connection_lock:
        connection.users -= 1
        if not connection.users:
            _connection = None
            _disconnect(connection)


def _disconnect(connection: _Connection) -> None:
    """Disconnect this process from Ray, put back what ``ray.init`` changed in ``os.environ``,
    and stop a local Ray (after disconnecting from it)."""
    try:
        ray.shutdown()
    finally:
        _put_back(connection.environment)
        if connection.head is not None:
            connection.head.stop()


def _init(
    address: str, options: Mapping[str, Any], cluster: str
) -> tuple[Any, dict[str, tuple[str | None, str | None]]]:
    """``ray.init`` this process to the ``cluster`` at ``address``; also say what that changed in
    ``os.environ`` (Ray sets ``PYTHONBREAKPOINT`` for a driver and leaves it set), to put back
    when disconnecting."""
    before = dict(os.environ)
    try:
        context = ray.init(address=address, **options)
    except Exception as exc:
        if ray.is_initialized():
            ray.shutdown()
        _put_back(_changes(before))
        raise EngineError(f"cannot connect to {cluster}: {_reason(exc)}") from None
    return context, _changes(before)


def _changes(before: Mapping[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """The variables of ``os.environ`` that differ from ``before``: name -> (earlier value, value
    now), ``None`` where unset."""
    now = os.environ
    names = {name for name in {*before, *now} if before.get(name) != now.get(name)}
    return {name: (before.get(name), now.get(name)) for name in names}


def _put_back(changes: Mapping[str, tuple[str | None, str | None]]) -> None:
    """Undo :func:`_changes`: give each variable its earlier value, unless someone has changed it
    again since (then theirs stays)."""
    for name, (earlier, changed) in changes.items():
        if os.environ.get(name) != changed:
            continue
        if earlier is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = earlier


def _connect(address: str, init_options: Mapping[str, Any]) -> _Connection:
    """Connect to the cluster at ``address``, failing fast and clearly when it is not there."""
    _check_reachable(address)
    options = {"logging_level": logging.WARNING, **init_options}
    context, environment = _init(address, options, f"the Ray cluster at {address}")
    url = getattr(context, "dashboard_url", None)
    dashboard = (url if "://" in url else f"http://{url}") if url else None
    return _Connection(address, None, environment, dashboard)


def _check_reachable(address: str) -> None:
    """Open (and close) a TCP connection to the cluster's address: ``ray.init`` would otherwise
    wait minutes for an address where nothing listens. ``"auto"`` is checked when
    ``RAY_ADDRESS`` names the cluster; otherwise Ray looks for one started on this machine, and
    says at once if there is none."""
    target = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    if not target:
        return
    host, port = _host_and_port(target)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {target}: {exc} (is Ray running there? start it "
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
    """Run :func:`~._kit.worker_runtime` once on every live node and compare it with the
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
                f"{where} cannot run madhatter (is it installed there?): {_first_line(exc)}"
            ) from None
        check_runtime(where, tuple(found), remedy="on the nodes")


# -- a local Ray -----------------------------------------------------------------------------


_GUARD = """\
import signal, subprocess, sys, threading
head = subprocess.Popen([sys.executable, *sys.argv[1:]], stdin=subprocess.DEVNULL)
def stop(*_):
    head.terminate()
signal.signal(signal.SIGTERM, stop)
threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop()), daemon=True).start()
sys.exit(head.wait())
"""
"""Runs ``python ARGS...`` (``ray start --block``) and stops it on SIGTERM, or when its stdin
reaches its end: when the driver closes the pipe, or dies (``ray start --block`` then stops the
processes it started)."""


def _start_local(workers: int | None, init_options: Mapping[str, Any]) -> _Connection:
    """Start a local Ray (:class:`_LocalHead`) and connect this process to it."""
    options = {
        "logging_level": logging.WARNING,
        **init_options,
        "runtime_env": _workers_runtime_env(init_options.get("runtime_env")),
    }
    head = _LocalHead(workers or os.cpu_count() or 1)
    try:
        context, environment = _init(head.address, options, "the local Ray madhatter started")
    except BaseException:
        head.stop()
        raise
    connection = _Connection(None, head, environment)
    try:
        head.check_connected(context.address_info)
        connection.capacity = _largest_node()
    except BaseException:
        _disconnect(connection)
        raise
    return connection


def _workers_runtime_env(runtime_env: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``runtime_env`` of a run on a local Ray: the caller's, with the caller's proxy
    settings given back to the workers (a step may fetch URLs), whose raylet passes on the
    blackholed ones of :data:`LOCAL_RAY_ENV`. A name the caller has not set is set empty, which
    HTTP clients read as unset; the caller's own ``env_vars`` win."""
    given = dict(runtime_env or {})
    names = {name for name in (*LOCAL_RAY_ENV, *os.environ) if name.lower().endswith("_proxy")}
    proxies = {name: os.environ.get(name, "") for name in names}
    return {**given, "env_vars": {**proxies, **given.get("env_vars", {})}}


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (with ``--port=0`` Ray picks one, but no public API says
    which)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _client_server_flags() -> list[str]:
    """``ray start`` runs a Ray Client server on the fixed port 10001 when ``grpcio`` is
    installed, so two local Rays would collide there: give it a free port instead (the flag is
    an error without ``grpcio``)."""
    if importlib.util.find_spec("grpc") is None:
        return []
    return [f"--ray-client-server-port={_free_port()}"]


class _LocalHead:
    """A local Ray for this process: a head node started by ``ray start --head --block``, run by
    :data:`_GUARD` in a session of its own (so a Ctrl-C at the terminal does not stop it under
    the driver, which stops it after disconnecting), with its own temporary folder.

    Why every socket of it stays on 127.0.0.1, using only Ray's public interfaces: on Linux, Ray
    replaces a node address of 127.0.0.1 by the machine's outward IP, and its servers then listen
    there, unless it runs in its single-machine mode (the one it uses on macOS and Windows,
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), which keeps 127.0.0.1 and binds every server to it.
    Ray reads that switch when it is imported, so it cannot be set for a ``ray.init`` in this
    process without changing the process's environment for good (and the user's own Ray use
    with it); a process of its own gets it, with ``--node-ip-address=127.0.0.1``, from
    :data:`LOCAL_RAY_ENV`. The driver then connects to :data:`LOOPBACK`.

    Ray also starts a dashboard process without a dashboard (for its usage-statistics module),
    which probes cloud metadata services (169.254.169.254, ``metadata.google.internal``) and,
    for a ``ray start`` cluster, reports that statistics are off to Ray's server: a proxy that
    does not exist (:data:`LOCAL_RAY_ENV`) stops those requests before they leave the machine.
    Workers get the caller's proxy settings back (:func:`_workers_runtime_env`). Token
    authentication is off unless the caller's ``RAY_AUTH_MODE`` says otherwise (the driver's Ray
    reads the same variable).
    """

    def __init__(self, workers: int) -> None:
        # Under RAY_TMPDIR or /tmp, as Ray's own: short, for the unix sockets Ray makes in it
        self.folder = tempfile.mkdtemp(prefix="madhatter-ray-", dir=os.environ.get("RAY_TMPDIR", "/tmp"))
        self.port = _free_port()
        self.address = f"[{LOOPBACK}]:{self.port}"
        command = [
            sys.executable, "-c", _GUARD, "-m", "ray.scripts.scripts", "start", "--head",
            "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            f"--num-cpus={workers}", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={self.folder}", *_client_server_flags(),
        ]  # fmt: skip
        environment = {"RAY_AUTH_MODE": "disabled", **_without_proxies(os.environ), **LOCAL_RAY_ENV}
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    @property
    def _log(self) -> str:
        return os.path.join(self.folder, "ray-start.log")

    def _wait_until_listening(self) -> None:
        """Return once the head's GCS accepts connections; raise if ``ray start`` gave up."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self._process.poll() is not None:
                raise EngineError(f"the local Ray did not start: {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(
                    f"the local Ray did not start within {START_TIMEOUT_SECONDS:.0f}s: "
                    f"{self._log_tail()}"
                )
            time.sleep(0.1)

    def check_connected(self, address_info: Mapping[str, Any]) -> None:
        """Refuse a connection to another Ray than this one (which took the port between
        :func:`_free_port` and Ray binding it), or to one that is not on loopback."""
        session = str(address_info.get("session_dir", ""))
        node = str(address_info.get("node_ip_address", ""))
        if not session.startswith(self.folder + os.sep) or not _is_loopback(node):
            raise EngineError(
                f"the local Ray madhatter started did not answer at {self.address} (another "
                f"Ray on {node} did, from {session!r}); try again"
            )

    def _log_tail(self, lines: int = 15) -> str:
        """The end of ``ray start``'s output, for an error message."""
        try:
            with open(self._log, errors="replace") as log:
                return "".join(log.readlines()[-lines:]).strip() or "(ray start printed nothing)"
        except OSError as exc:
            return f"(no output from ray start: {exc})"

    def stop(self) -> None:
        """Stop this Ray and remove its folder: the guard has ``ray start`` stop the processes
        it started; whatever is left in its process group after that (or after
        :data:`STOP_TIMEOUT_SECONDS`) is killed."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _without_proxies(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` without its ``*_proxy`` variables (``grpc_proxy``, ``no_grpc_proxy`` and
    ``ALL_PROXY`` too: any of them could send a local Ray's own requests elsewhere)."""
    return {name: value for name, value in environment.items() if not name.lower().endswith("_proxy")}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


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
