"""One worker container of the ``docker`` engine: start it, hand it tasks, read why it died.

A :class:`ContainerWorker` is a container running ``_container_worker.main`` with its standard
input and output attached to the driver through the Docker Engine API: tasks go in as framed
messages, results come back the same way (Docker multiplexes the container's output into frames
of its own, which :class:`_OutputReader` takes apart). Nothing is mounted from the host and
nothing is written to the user's tree: the only host paths a container sees are those a step
names in ``mounts=`` (read-only, at the same path), for tasks that read files by path.

With a *link directory* (the engine gives one when the daemon runs on this machine), the
container instead connects to a Unix socket the worker listens on, bind-mounted read-only from
that directory under an unguessable name, and tasks travel over it (``_link.py``): large buffers
as shared-memory files, nothing through the daemon's stream relay (which moves 50-90 MB/s here).
No network is involved: a Unix socket is a file.

The container is created with the limits of its :class:`ContainerSpec` (no network unless one is
named, memory without extra swap so the limit is real, CPUs, a read-only root with a private
tmpfs ``/tmp``, no capabilities, no privilege escalation) and with labels, so leftovers of a
driver that crashed can be found and removed (``madhatter docker prune``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _shared_memory as shared_memory
from ._base import TaskLost, TaskTimedOut
from ._bundle import BOOTSTRAP, runtime_bundle
from ._container_worker import HEADER, LINK_ENVIRONMENT, frame
from ._link import Link
from ._serialize import loads
from ._worker import is_interim
from .kit import describe_exit

LABEL = "io.madhatter.engine"
"""Every container the engine starts carries this label (value ``docker``)."""
RUN_LABEL = "io.madhatter.engine-id"
"""Which engine instance (one per run) started the container."""

STDERR_TAIL_LINES = 20
"""How much of a failed container's stderr an error message shows."""
KILL_GRACE_SECONDS = 2.0
"""How long past its timeout a task may run (its own alarm should stop it) before its container
is killed."""


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """How a worker container is made. Tasks with equal specs may share a warm container."""

    image: str
    memory: str | int | None = None
    cpus: float | None = None
    network: str | None = None
    read_only: bool = True
    python: str = "python3"
    mounts: tuple[str, ...] = ()  # host paths, bind-mounted read-only at the same path

    def describe(self) -> str:
        limits = [f"memory {self.memory}"] if self.memory is not None else []
        limits += [f"{self.cpus} CPUs"] if self.cpus is not None else []
        return f"image {self.image!r}" + (f" ({', '.join(limits)})" if limits else "")


LINK_MOUNT = "/run/madhatter-link"
"""Where a container sees the engine's link directory (read-only)."""

LINK_CONNECT_SECONDS = 60.0
"""How long a started container may take to connect to its link socket."""


def host_config(client: Any, spec: ContainerSpec, link_dir: str | None = None) -> Any:
    """Docker's host configuration for ``spec``: limits, isolation, no network unless named,
    and the link directory mounted read-only if there is one."""
    options: dict[str, Any] = {
        "network_mode": spec.network or "none",
        "read_only": spec.read_only,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": 1024,
    }
    if spec.memory is not None:
        options["mem_limit"] = spec.memory
        options["memswap_limit"] = spec.memory  # no swap on top: the limit is the limit
    if spec.cpus is not None:
        options["nano_cpus"] = int(spec.cpus * 1e9)
    binds = {path: {"bind": path, "mode": "ro"} for path in spec.mounts}
    if link_dir is not None:
        binds[link_dir] = {"bind": LINK_MOUNT, "mode": "ro"}
    if binds:
        options["binds"] = binds
    return client.api.create_host_config(**options)


class ContainerWorker:
    """A started container that runs the tasks it is sent, one at a time, in order."""

    def __init__(
        self,
        client: Any,
        spec: ContainerSpec,
        labels: Mapping[str, str],
        link_dir: str | None = None,
    ) -> None:
        self.spec = spec
        self._client = client
        self.functions: set[str] = set()  # function keys this container has been sent
        self.link: Link | None = None  # the socket tasks travel over, if there is a link directory
        environment = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        listener = None
        if link_dir is not None:
            listener, name = _listen(link_dir)
            environment[LINK_ENVIRONMENT] = f"{LINK_MOUNT}/{name}"
        try:
            created = client.api.create_container(
                spec.image,
                command=[spec.python, "-c", BOOTSTRAP],
                stdin_open=True,
                detach=False,  # docker-py sets "stdin once" only so: stdin closes when we go away
                labels=dict(labels),
                host_config=host_config(client, spec, link_dir),
                environment=environment,
                working_dir="/tmp",
            )
            self.id: str = created["Id"]
            self.name = self.id[:12]
            try:
                attached = client.api.attach_socket(
                    self.id, params={"stdin": 1, "stdout": 1, "stream": 1}
                )
                self._attached = attached  # the SocketIO owning the connection: closed with it
                # a SocketIO over a plain socket; over TLS (an https:// DOCKER_HOST) the socket itself
                self._socket: socket.socket = getattr(attached, "_sock", attached)
                self._output = _OutputReader(self._socket)
                client.api.start(self.id)
                self._socket.sendall(frame(runtime_bundle()))
                if listener is not None:
                    self.link = self._accept(listener)
            except BaseException:
                self.remove()
                raise
        finally:
            if listener is not None:
                _close_listener(listener)

    def _accept(self, listener: socket.socket) -> Link:
        """The container's connection to its link socket; TaskLost if it dies before that."""
        deadline = time.monotonic() + LINK_CONNECT_SECONDS
        listener.settimeout(0.1)
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                running = self._client.api.inspect_container(self.id)["State"].get("Running")
                if not running or time.monotonic() > deadline:
                    raise TaskLost(
                        f"container {self.name} did not connect to its link socket: "
                        f"{self.diagnose() if not running else 'timed out'}"
                    ) from None
                continue
            connection.settimeout(None)
            return Link(connection)

    def run(
        self,
        message: bytes,
        timeout: float | None,
        fds: Sequence[int] = (),
        interim: Callable[[Any], None] | None = None,
    ) -> tuple[bool, Any, float, float, int]:
        """Send one task message and wait for its answer: ``(ok, value, started, seconds,
        received)``, ``received`` the bytes the answer took. What the task sends while it runs
        (``(key, INTERIM, message)``) goes to ``interim``.

        Raises :class:`TaskTimedOut` (the container is killed) past ``timeout`` plus a grace
        period, and :class:`TaskLost` saying why if the container dies first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout + KILL_GRACE_SECONDS
        reply_fds: list[int] = []
        try:
            if self.link is not None:
                self.link.send(message, fds)
            else:
                self._socket.settimeout(None)  # not the last read's deadline: sending is not the task
                self._socket.sendall(frame(message))
            while True:
                reply, reply_fds = self._receive(deadline)
                try:
                    decoded: Any = loads(reply)
                except Exception as exc:  # the answer cannot be loaded: said below
                    decoded = exc
                if not is_interim(decoded):
                    break
                if interim is not None:
                    interim(decoded[2])
        except TimeoutError:
            self.kill()
            raise TaskTimedOut(timeout or 0.0) from None
        except (EOFError, OSError):
            raise TaskLost(self.diagnose()) from None
        try:
            if isinstance(decoded, Exception):
                raise decoded
            _key, ok, answer, started, seconds = decoded
            value = shared_memory.loads(answer, reply_fds[0] if reply_fds else None)
        except Exception as exc:  # the container is fine; its answer cannot be read here
            error = RuntimeError(
                f"the task's result cannot be loaded in the driver: {type(exc).__name__}: {exc}"
            )
            return False, error, time.time(), 0.0, len(reply)  # not a result: not counted
        finally:
            for fd in reply_fds:  # mapped by now: the mapping keeps the pages
                os.close(fd)
        return ok, value, started, seconds, shared_memory.message_bytes(answer)

    def _receive(self, deadline: float | None) -> tuple[bytes | bytearray, list[int]]:
        """The container's next message (and the files that came with it), by ``deadline``."""
        if self.link is None:
            return self._output.read_frame(deadline), []
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self.link.poll(left):
            raise TimeoutError
        return self.link.receive()

    def stop(self) -> None:
        """Stop and remove the container. It holds no state worth a graceful exit, and killing
        it is ~80 ms faster than asking it to finish and waiting (a cost fresh-per-task
        containers pay on every task)."""
        self.remove()

    def kill(self) -> None:
        """Stop the container at once (it stays until :meth:`remove`, so it can be inspected)."""
        try:
            self._client.api.kill(self.id)
        except Exception:  # already stopped or gone
            pass

    def remove(self) -> None:
        """Kill and delete the container; safe to call more than once."""
        streams = (getattr(self, "_attached", None), getattr(self, "_socket", None), self.link)
        for stream in streams:
            try:
                if stream is not None:
                    stream.close()
            except Exception:
                pass
        try:
            self._client.api.remove_container(self.id, force=True)
        except Exception as exc:
            # 404: gone already; 409: its removal is already in progress
            if getattr(getattr(exc, "response", None), "status_code", None) not in (404, 409):
                raise

    def diagnose(self) -> str:
        """Why the container stopped answering: its exit code, OOM kill, and its stderr's end."""
        try:
            self._client.api.wait(self.id, timeout=10)
            state = self._client.api.inspect_container(self.id)["State"]
            stderr = self._client.api.logs(self.id, stdout=False, stderr=True, tail=STDERR_TAIL_LINES)
        except Exception as exc:
            return f"container {self.name} ({self.spec.describe()}) went away: {exc}"
        if state.get("OOMKilled"):
            cause = f"was OOMKilled: it used more than its memory limit ({self.spec.memory})"
        else:
            cause = _exit_cause(state)
        detail = f"container {self.name} ({self.spec.describe()}) {cause}"
        text = stderr.decode(errors="replace").strip()
        return f"{detail}; the end of its stderr:\n{text}" if text else detail


def _listen(link_dir: str) -> tuple[socket.socket, str]:
    """A listening socket in ``link_dir`` under a random name: the directory can be entered but
    not listed, so only the container told the name can connect (the socket itself is open to
    any user, as the container's may not be the driver's)."""
    name = f"{secrets.token_hex(16)}.sock"
    path = os.path.join(link_dir, name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o666)
        listener.listen(1)
    except BaseException:
        listener.close()
        raise
    return listener, name


def _close_listener(listener: socket.socket) -> None:
    """Close a link listener and remove its socket file: the connection, if any, lives on."""
    path = listener.getsockname()
    listener.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


def _exit_cause(state: Mapping[str, Any]) -> str:
    """How a container ended, in :func:`describe_exit`'s words, keeping its exit code as Docker
    gave it: a code of ``128 + N`` also names signal ``N``, which it usually means (as in a shell),
    though the process may have exited with that code itself."""
    if state.get("Running"):
        return describe_exit(None)
    code = int(state.get("ExitCode") or 0)
    cause = describe_exit(code)
    if 128 < code < 128 + signal.NSIG:
        with contextlib.suppress(ValueError):  # a number no signal has
            cause += f" (128 + {signal.Signals(code - 128).name}: usually killed by that signal)"
    return cause


class _OutputReader:
    """Reads framed messages from a container's attached stdout.

    Docker wraps everything the container writes in frames of its own (an 8-byte header: stream
    number, then payload size); inside those, our messages carry their own length prefix.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._buffer = bytearray()

    def read_frame(self, deadline: float | None) -> bytes:
        while True:
            if len(self._buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buffer)
                end = HEADER.size + size
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[HEADER.size : end])
                    del self._buffer[:end]
                    return payload
            header = self._receive(8, deadline)
            stream, size = struct.unpack(">BxxxL", header)
            payload = self._receive(size, deadline)
            if stream not in (0, 1):  # 1 is stdout; 3 is the daemon reporting an error
                raise EOFError(f"Docker sent stream {stream}: {payload[:200]!r}")
            self._buffer += payload

    def _receive(self, size: int, deadline: float | None) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._socket.settimeout(left)
            else:
                self._socket.settimeout(None)
            data = self._socket.recv(min(size - len(chunks), 1 << 20))
            if not data:
                raise EOFError("the container's output closed")
            chunks += data
        return bytes(chunks)
