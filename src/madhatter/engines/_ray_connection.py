"""Connecting this process to Ray, for the ``ray`` engine: a cluster at an address, or a local
Ray started for the run, shared by every engine alive in the process.

Ray connects a process to one cluster at a time, so the connection is one value per process
(:class:`Connection`), counted by its users under a lock: engines alive at once share it, and the
last one out disconnects, puts back what ``ray.init`` changed in ``os.environ``, and stops the
local Ray if madhatter started one. A Ray the user initialised themselves is theirs: engines use
it and leave it alone.

A local Ray is started with Ray's own CLI in a process of its own (:class:`_LocalHead`, which says
why that keeps every socket on 127.0.0.1 and why it cannot be ``ray.init`` in this process). Only
Ray's public interfaces are used. The engine's options are ``ray.init``'s: the start-time ones
(:data:`START_FLAGS`), which ``ray.init`` refuses when it joins a running Ray, become flags of that
``ray start``; the others go to ``ray.init`` (:func:`split_options`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

from .._errors import EngineError
from ._ray_start_options import (
    LOCAL_RAY_SETS,
    listed_options,
    local_start_flags,
    split_options,
    start_flags,
)
from ._registry import require_extra

ray = require_extra("ray", extra="ray")

CONNECT_TIMEOUT_SECONDS = 5.0
"""How long the engine tries to open a TCP connection to a cluster's address before calling it
unreachable (``ray.init`` itself retries an unreachable address for minutes)."""


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


# -- the connection, shared ------------------------------------------------------------------


@dataclasses.dataclass
class Connection:
    """The Ray cluster madhatter connected this process to, shared by every :class:`RayEngine`
    alive in the process (Ray connects a process to one cluster at a time), counted by ``users``.

    Attributes:
        address: what the first engine asked for; ``None`` for a local Ray.
        head: the local Ray madhatter started, to stop after disconnecting.
        environment: what ``ray.init`` changed in ``os.environ`` (see :func:`_changes`), to put
            back after disconnecting.
        dashboard: the cluster's dashboard URL, if it runs one.
        capacity: a local Ray's resources (it cannot grow), to refuse tasks it can never run.
        started_with: the ``ray start`` flags of each start-time option a local Ray was started
            with (``num_cpus`` always), by option: an engine that joins it may only repeat them.
    """

    address: str | None
    head: _LocalHead | None
    environment: dict[str, tuple[str | None, str | None]]
    dashboard: str | None = None
    capacity: dict[str, float] | None = None
    started_with: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    users: int = 1


_connection: Connection | None = None


_connection_lock = threading.Lock()  # guards ``_connection``: connecting, joining, disconnecting


def acquire(
    workers: int | None, address: str | None, init_options: Mapping[str, Any]
) -> Connection | None:
    """The connection for a new engine: madhatter's, joined if it has one (an ``address`` must
    then be the one it connected to, and start-time options the ones its local Ray was started
    with); none if the user initialised Ray themselves; else a new one, to ``address`` or to a
    local Ray started for it (see :func:`split_options` for which options go where).

    Raises:
        EngineError: start-time options for a Ray that is running already, options the local
            Ray cannot take, or a cluster that cannot be reached or started.
    """
    global _connection
    start, connect = split_options(init_options)
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
            _check_joinable(shared, start)
            shared.users += 1
            return shared
        if ray.is_initialized():
            if start:
                raise EngineError(
                    f"the {listed_options(start)} cannot apply: Ray is initialised in this process "
                    f"already (by your ray.init); give it to the ray.init that starts Ray"
                )
            return None
        if address is None:
            _connection = _start_local(workers, start, connect)
        else:
            if start:
                raise EngineError(
                    f"the {listed_options(start)} cannot apply to the Ray cluster at {address}, which "
                    f"runs already: give it to the cluster's `ray start` (start-time options "
                    f"apply only to the local Ray madhatter starts, with no address)"
                )
            _connection = _connect(address, connect)
        return _connection


def _check_joinable(shared: Connection, start: Mapping[str, Any]) -> None:
    """Refuse the start-time options of an engine that joins ``shared``, unless it is a local Ray
    started with the same (a run repeating the options of a run alive at once is fine)."""
    if not start:
        return
    if shared.head is None:
        raise EngineError(
            f"the {listed_options(start)} cannot apply: this process is connected to the Ray cluster at "
            f"{shared.address} for another run, and Ray connects a process to one cluster at a "
            f"time; run this after it ends, or in another process"
        )
    given = start_flags(start)
    differ = {name: start[name] for name in start if given[name] != shared.started_with.get(name)}
    if differ:
        flags = " ".join(flag for flags in shared.started_with.values() for flag in flags)
        raise EngineError(
            f"the {listed_options(differ)} cannot apply: this process runs the local Ray another run "
            f"started (ray start {flags}), and Ray connects a process to one cluster at a time; "
            f"give the same start-time options or none, or run this after it ends, or in "
            f"another process"
        )


def release(connection: Connection) -> None:
    """An engine is done with ``connection``: the last one disconnects this process."""
    global _connection
    with _connection_lock:
        connection.users -= 1
        if not connection.users:
            _connection = None
            _disconnect(connection)


def _disconnect(connection: Connection) -> None:
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


def _connect(address: str, init_options: Mapping[str, Any]) -> Connection:
    """Connect to the cluster at ``address``, failing fast and clearly when it is not there."""
    _check_reachable(address)
    options = {"logging_level": logging.WARNING, **init_options}
    context, environment = _init(address, options, f"the Ray cluster at {address}")
    url = getattr(context, "dashboard_url", None)
    dashboard = (url if "://" in url else f"http://{url}") if url else None
    return Connection(address, None, environment, dashboard)


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


def _start_local(
    workers: int | None, start: Mapping[str, Any], connect: Mapping[str, Any]
) -> Connection:
    """Start a local Ray (:class:`_LocalHead`) with the ``start``-time options and connect this
    process to it with the ``connect``-time ones."""
    refused = {name: why for name, why in LOCAL_RAY_SETS.items() if name in connect}
    if refused:
        name, why = next(iter(refused.items()))
        raise EngineError(
            f"{name}={connect[name]!r}: the local Ray madhatter starts cannot take it ({why}); "
            f"to set it, start Ray yourself (ray start --head ...) and pass address="
        )
    flags = local_start_flags(workers, start)
    options = {
        "logging_level": logging.WARNING,
        **connect,
        "runtime_env": _workers_runtime_env(connect.get("runtime_env")),
    }
    head = _LocalHead([flag for option in flags.values() for flag in option])
    try:
        context, environment = _init(head.address, options, "the local Ray madhatter started")
    except BaseException:
        head.stop()
        raise
    connection = Connection(None, head, environment, started_with=flags)
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

    def __init__(self, flags: list[str]) -> None:
        """Start it, with these ``ray start`` flags besides madhatter's own (see
        :func:`local_start_flags`); raise :class:`EngineError` if it does not start."""
        # Under RAY_TMPDIR or /tmp, as Ray's own: short, for the unix sockets Ray makes in it
        self.folder = tempfile.mkdtemp(prefix="madhatter-ray-", dir=os.environ.get("RAY_TMPDIR", "/tmp"))
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self.port = _free_port()
            self.address = f"[{LOOPBACK}]:{self.port}"
            command = [
                sys.executable, "-c", _GUARD, "-m", "ray.scripts.scripts", "start", "--head",
                "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.folder}",
                *_client_server_flags(), *flags,
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
            self._wait_until_listening(self._process)
        except BaseException as exc:
            self.stop()  # and remove the folder, whatever failed
            if isinstance(exc, OSError):  # no free port, no log file, no process
                raise EngineError(f"the local Ray did not start: {exc}") from exc
            raise

    @property
    def _log(self) -> str:
        return os.path.join(self.folder, "ray-start.log")

    def _wait_until_listening(self, process: subprocess.Popen[bytes]) -> None:
        """Return once the head's GCS accepts connections; raise if ``ray start`` gave up."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
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
        process = self._process
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
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


def _largest_node() -> dict[str, float]:
    """The most of each resource one live node has (a task must fit on one node)."""
    most: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for name, amount in node.get("Resources", {}).items():
                most[name] = max(most.get(name, 0.0), float(amount))
    return most


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
