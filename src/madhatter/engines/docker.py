"""The ``docker`` engine: each task runs in a Docker container (``pip install 'madhatter[docker]'``).

A step asks for it with ``@parallel(image="my/image:tag", cpus=1, memory="512m")`` (or a whole run
with ``--engine docker --image ...``). Any image with the driver's Python major.minor as
``python3`` works, without madhatter installed in it: the container gets madhatter's runtime on
its standard input at start-up (``_bundle.py``), then tasks and results travel as framed messages
over the same attached streams (``_container.py``). The daemon is reached through the Docker
Engine API with the official SDK, honouring ``DOCKER_HOST``.

Two isolation modes, chosen per step with ``isolate=``:

* ``"container"`` (the default, *warm*): a container runs task after task of its step, so its
  start-up (~0.5 s) and the step's ``setup=`` are paid once per container, not per chunk;
* ``"task"``: a fresh container for every task, removed after it: the strongest isolation.

madhatter is only a simple scheduler here: at most ``workers`` containers run at once (and a
step's ``n`` caps its own share, through the runner's window), tasks wait in submission order for
a container of their kind (same image and limits), and an idle container of another kind is
retired to make room. Everything else is the host's and Docker's business.

A task whose container dies, is OOM-killed or runs past its timeout fails with
:class:`TaskLost` / :class:`TaskTimedOut` (the runner retries it if the step has ``retries=``);
the message gives the exit code, ``OOMKilled`` and the end of the container's stderr. Shutdown
removes every container the engine started, whether the run succeeded, failed or was cancelled;
containers are labelled so those of a driver that crashed can be removed with
``madhatter docker prune``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import queue
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from .._errors import EngineError
from . import _shared_memory as shared_memory
from ._base import Engine, EngineTraits, Task, TaskLost, TaskResult
from ._container import LABEL, RUN_LABEL, ContainerSpec, ContainerWorker
from ._registry import require_extra
from ._serialize import dumps_data, dumps_portable, pickle_portable
from ._shared_memory import in_stream
from .kit import ShippedFunctions, settle, worker_runtime

docker = require_extra("docker", extra="docker")

ISOLATE_MODES = ("container", "task")
RESOURCE_KEYS = frozenset(
    {"image", "memory", "cpus", "network", "isolate", "read_only", "python", "mounts"}
)
"""The resource requests a step may make of this engine (``@parallel(resources=...)`` or the
decorator's own ``image=``, ``cpus=``, ``memory=``, ``network=``, ``isolate=``)."""

FRESH_CONTAINER_TASK_SECONDS = 5.0
"""The automatic chunk length for ``isolate="task"`` steps: ten times a container's start-up."""

LINK_DIR_PREFIX = "madhatter-docker-"
"""Link directories are ``$TMPDIR/madhatter-docker-<driver pid>-<random>`` (see ``prune``)."""

_checked_runtimes: dict[tuple[str, str], str] = {}
"""(image id, python command) -> its Python's major.minor, checked once per driver process."""


@dataclasses.dataclass
class _QueuedTask:
    """A task waiting for (or running in) a container of its kind, with its pickled parts."""

    task: Task
    spec: ContainerSpec
    reusable: bool
    function: bytes  # pickled by value where the container cannot import it
    argument: shared_memory.Pickled  # its large buffers go to shared memory when linked
    future: Future[TaskResult] = dataclasses.field(default_factory=Future)


@dataclasses.dataclass(eq=False)
class _ContainerSlot:
    """One container's place in the engine: its thread, its inbox, whether it is working."""

    spec: ContainerSpec
    reusable: bool
    inbox: queue.SimpleQueue[_QueuedTask | None] = dataclasses.field(default_factory=queue.SimpleQueue)
    busy: bool = True
    retiring: bool = False  # told to stop, to make room for a container of another kind
    worker: ContainerWorker | None = None
    thread: threading.Thread | None = None


class DockerEngine(Engine):
    """Runs each task in a Docker container; at most ``workers`` containers at once.

    Args:
        workers: containers running at once (default: one per CPU core).
        image: the image for tasks whose step names none.
        memory, cpus, network, isolate, read_only, python: defaults for every step, which a step's
            own requests override (see docs/containers.md).
        mounts: host paths every container sees, read-only at the same path (for steps that
            read files by path; nothing else of the host is visible).
        base_url: the Docker daemon (default: ``DOCKER_HOST``, else the local socket).
        share_memory: with a daemon on this machine (a Unix-socket ``base_url``), tasks travel
            over a bind-mounted Unix socket, large buffers in shared memory (see
            ``_container.py``); ``False`` sends everything through the daemon's attach stream.
    """

    name = "docker"
    # own_environment: a step in a container may need the image's libraries
    traits = EngineTraits(task_seconds=0.5, own_environment=True)

    def __init__(
        self,
        workers: int | None = None,
        *,
        image: str | None = None,
        memory: str | int | None = None,
        cpus: float | None = None,
        network: str | None = None,
        isolate: str = "container",
        read_only: bool = True,
        python: str = "python3",
        mounts: Sequence[str] = (),
        base_url: str | None = None,
        share_memory: bool = True,
    ) -> None:
        self._size = workers or os.cpu_count() or 1
        self._defaults: dict[str, Any] = {
            "image": image,
            "memory": memory,
            "cpus": cpus,
            "network": network,
            "isolate": isolate,
            "read_only": read_only,
            "python": python,
            "mounts": tuple(mounts),
        }
        self._spec_of(self._defaults)  # fail on a bad default now, not at the first task
        try:
            self._client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
            self._client.ping()
        except docker.errors.DockerException as exc:
            where = base_url or os.environ.get("DOCKER_HOST") or "the local socket"
            raise EngineError(f"cannot reach the Docker daemon at {where}: {exc}") from None
        self._id = uuid.uuid4().hex[:12]
        self._labels = {
            LABEL: "docker",
            RUN_LABEL: self._id,
            "io.madhatter.driver": f"{socket.gethostname()}:{os.getpid()}",
        }
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: collections.deque[_QueuedTask] = collections.deque()
        self._slots: list[_ContainerSlot] = []
        self._functions: ShippedFunctions[bytes] = ShippedFunctions(_dumps_function)
        self._ready: set[tuple[str, str]] = set()  # (image, python) checked by this engine
        self._closing = False
        self._cancelling = False
        self._link_dir: str | None = None
        if share_memory and shared_memory.AVAILABLE and _daemon_is_local(self._client):
            self._link_dir = tempfile.mkdtemp(prefix=f"{LINK_DIR_PREFIX}{os.getpid()}-")
            os.chmod(self._link_dir, 0o711)  # enterable by a container's user, not listable

    @property
    def workers(self) -> int:
        return self._size

    # -- checks before the run -------------------------------------------------------------

    def prepare(self, resources: Mapping[str, Any]) -> EngineTraits:
        """Check, before any task runs, that the step's image exists and has a matching Python.

        Warm containers hand a task over in well under a millisecond: 0.5 s tasks balance load.
        A fresh container per task costs ~0.5 s to start: tasks of 5 s keep that under 10 %
        (when the input is long enough for such chunks)."""
        requests = {**self._defaults, **resources}
        spec, _ = self._spec_of(requests)
        self._check_runtime(spec)
        if requests.get("isolate") == "task":
            return dataclasses.replace(self.traits, task_seconds=FRESH_CONTAINER_TASK_SECONDS)
        return self.traits

    def _spec_of(self, requests: Mapping[str, Any]) -> tuple[ContainerSpec, bool]:
        unknown = set(requests) - RESOURCE_KEYS
        if unknown:
            raise EngineError(
                f"the docker engine does not know the resource request(s) {sorted(unknown)}; "
                f"it takes {', '.join(sorted(RESOURCE_KEYS))}"
            )
        if requests.get("isolate", "container") not in ISOLATE_MODES:
            raise EngineError(
                f"isolate must be one of {', '.join(map(repr, ISOLATE_MODES))}, "
                f"not {requests['isolate']!r}"
            )
        options = {key: requests[key] for key in ("memory", "cpus", "network") if key in requests}
        mounts = requests.get("mounts") or ()
        spec = ContainerSpec(
            image=requests.get("image") or "",
            read_only=bool(requests.get("read_only", True)),
            python=str(requests.get("python") or "python3"),
            mounts=tuple(os.path.abspath(os.path.expanduser(path)) for path in mounts),
            **options,
        )
        return spec, requests.get("isolate", "container") == "container"

    def _check_runtime(self, spec: ContainerSpec) -> None:
        if (spec.image, spec.python) in self._ready:
            return
        if not spec.image:
            raise EngineError(
                "the docker engine needs an image: @parallel(image='repo/name:tag') on the step, "
                "or --image (engine option image=) for the whole run"
            )
        try:
            image_id = self._client.images.get(spec.image).id
        except docker.errors.ImageNotFound:
            raise EngineError(
                f"Docker image {spec.image!r} is not on this machine; build it, or pull it "
                f"(docker pull {spec.image}) before the run"
            ) from None
        expected = _driver_python()
        found = _checked_runtimes.get((image_id, spec.python))
        if found is None:
            found = _checked_runtimes[(image_id, spec.python)] = self._probe_python(spec)
        if found != expected:
            raise EngineError(
                f"Docker image {spec.image!r} has Python {found} as {spec.python!r}, but the driver "
                f"runs Python {expected}; a step's code travels as pickled bytecode, which needs "
                f"the same major.minor version in the image"
            )
        self._ready.add((spec.image, spec.python))

    def _probe_python(self, spec: ContainerSpec) -> str:
        command = [spec.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        needs = f"madhatter needs Python {_driver_python()} in the image"
        container = None
        try:
            container = self._client.containers.create(
                spec.image, command, network_mode="none", labels=self._labels
            )
            container.start()
            status = container.wait(timeout=120).get("StatusCode")
            output = bytes(container.logs(stdout=True, stderr=False)).decode().strip()
            errors = bytes(container.logs(stdout=False, stderr=True)).decode().strip()
        except docker.errors.APIError as exc:
            raise EngineError(
                f"Docker image {spec.image!r} cannot run {spec.python!r} ({needs}): {exc}"
            ) from None
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except docker.errors.APIError:
                    pass
        if status != 0:
            raise EngineError(
                f"Docker image {spec.image!r} cannot run {spec.python!r} ({needs}): exit code "
                f"{status}: {errors[-500:]}"
            )
        return output

    # -- the driver's side -----------------------------------------------------------------

    def submit(self, task: Task) -> Future[TaskResult]:
        spec, reusable = self._spec_of({**self._defaults, **task.resources})
        self._check_runtime(spec)  # cached: a dict look-up after the first task of an image
        function = self._functions.handle(task)
        argument = _portable_argument(task.argument, shared=self._link_dir is not None)
        queued = _QueuedTask(task, spec, reusable, function, argument)
        queued.future.set_running_or_notify_cancel()
        with self._lock:
            if self._closing:
                raise RuntimeError("the docker engine is shut down")
            self._pending.append(queued)
            self._dispatch()
        return queued.future

    def _dispatch(self) -> None:
        """Give waiting tasks to idle containers of their kind, or start containers for them.

        Called with the lock held, whenever a task arrives or a container becomes free.
        """
        making_room = sum(1 for slot in self._slots if slot.retiring)
        for queued in list(self._pending):
            slot = next(
                (s for s in self._slots if not s.busy and s.reusable and s.spec == queued.spec), None
            )
            if slot is None and len(self._slots) >= self._size:
                if making_room:
                    making_room -= 1  # a container already on its way out will make room
                    continue
                idle = next((s for s in self._slots if not s.busy), None)
                if idle is not None:
                    self._retire(idle)  # an idle container of another kind makes room
                continue  # wait for a place
            self._pending.remove(queued)
            if slot is None:
                self._start_slot(queued)
            else:
                slot.busy = True
                slot.inbox.put(queued)

    def _retire(self, slot: _ContainerSlot) -> None:
        """Stop an idle container; it keeps its place (so the cap holds) until it is gone."""
        slot.busy = slot.retiring = True
        slot.inbox.put(None)

    def _start_slot(self, queued: _QueuedTask) -> None:
        slot = _ContainerSlot(queued.spec, queued.reusable)
        slot.thread = threading.Thread(
            target=self._serve, args=(slot, queued), name="madhatter-docker", daemon=True
        )
        self._slots.append(slot)
        slot.thread.start()

    # -- one container's thread ------------------------------------------------------------

    def _serve(self, slot: _ContainerSlot, queued: _QueuedTask | None) -> None:
        """Start a container, then run the tasks it is given until it is retired or dies.

        A task's future is resolved only once its container is free again (or gone, and its
        place given up): the runner submits the next task the moment it sees the result, and
        that task must find the container idle, or the step's ``n`` would not hold.
        """
        assert queued is not None
        try:
            worker = ContainerWorker(self._client, slot.spec, self._labels, self._link_dir)
        except Exception as exc:
            self._release(slot)
            lost = TaskLost(f"could not start a container ({slot.spec.describe()}): {exc}")
            settle(queued.future, error=lost)
            return
        with self._lock:
            slot.worker, cancelled = worker, self._cancelling
        try:
            while queued is not None and not cancelled:
                alive, outcome = self._run(worker, queued)
                if not (alive and slot.reusable):  # fresh per task, or dead: gone before the result
                    _stop_quietly(worker)
                    self._release(slot)
                    self._resolve(queued, outcome)
                    return
                with self._lock:
                    slot.busy = False
                    self._dispatch()
                    self._changed.notify_all()
                self._resolve(queued, outcome)
                queued = slot.inbox.get()
            if queued is not None and cancelled:
                settle(queued.future, error=TaskLost("the run was stopped before the task started"))
        finally:
            try:
                _stop_quietly(worker)
            finally:
                self._release(slot)

    def _run(
        self, worker: ContainerWorker, queued: _QueuedTask
    ) -> tuple[bool, TaskResult | BaseException]:
        """Run ``queued`` in ``worker``: ``(container still alive, result or error)``."""
        task = queued.task
        function = None if task.function_key in worker.functions else queued.function
        argument = queued.argument
        layout, fd = argument.share() if worker.link is not None else ((), None)
        message = dumps_data(
            (task.key, task.function_key, in_stream(function), argument.message(layout))
        )
        try:
            ok, value, started, seconds, received = worker.run(
                message, task.timeout, [] if fd is None else [fd], task.interim
            )
        except Exception as exc:  # TaskLost, TaskTimedOut: the container was killed or died
            return False, exc
        finally:
            if fd is not None:
                os.close(fd)
        worker.functions.add(task.function_key)
        if ok:
            name = f"container-{worker.name}"
            return True, TaskResult(value, name, started, seconds, argument.size, received)
        return True, value

    @staticmethod
    def _resolve(queued: _QueuedTask, outcome: TaskResult | BaseException) -> None:
        """Resolve the task's future with ``outcome``, unless a cancellation came first."""
        if isinstance(outcome, BaseException):
            settle(queued.future, error=outcome)
        else:
            settle(queued.future, outcome)

    def _release(self, slot: _ContainerSlot) -> None:
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
            if not self._closing:
                self._dispatch()
            self._changed.notify_all()

    # -- shutting down ---------------------------------------------------------------------

    def shutdown(self, *, cancel_pending: bool) -> None:
        with self._lock:
            if not cancel_pending:  # let every task finish first
                self._changed.wait_for(self._idle)
            self._closing = True
            self._cancelling = cancel_pending
            doomed, self._pending = list(self._pending), collections.deque()
            slots = list(self._slots)
            running = [slot.worker for slot in slots if slot.worker is not None]
            for slot in slots:
                slot.inbox.put(None)
        for queued in doomed:
            settle(queued.future, error=TaskLost("the run was stopped before the task started"))
        if cancel_pending:
            for worker in running:
                worker.kill()  # their threads see the container die, fail its task and remove it
        for slot in slots:
            if slot.thread is not None:
                slot.thread.join()
        try:
            self._remove_leftovers()
        finally:
            self._client.close()
            if self._link_dir is not None:
                shutil.rmtree(self._link_dir, ignore_errors=True)

    def _idle(self) -> bool:
        return not self._pending and not any(slot.busy for slot in self._slots)

    def _remove_leftovers(self) -> None:
        """Remove any container of this engine still there (one whose thread was still creating
        it when the run was cancelled, say). Errors here must not hide the run's own outcome."""
        mine = {"label": f"{RUN_LABEL}={self._id}"}
        try:
            for container in self._client.api.containers(all=True, filters=mine):
                try:
                    self._client.api.remove_container(container["Id"], force=True)
                except docker.errors.APIError:  # gone, or its removal already in progress
                    pass
        except docker.errors.DockerException:
            pass


def _daemon_is_local(client: Any) -> bool:
    """Whether the daemon is reached through a Unix socket, so it runs on this machine and can
    bind-mount a socket of ours into a container."""
    return str(client.api.base_url) == "http+docker://localhost"


def _portable_argument(argument: Any, *, shared: bool) -> shared_memory.Pickled:
    """A task's argument pickled for a container (see ``pickle_portable``), its large buffers out
    of the stream if ``shared``."""

    def once(by_value: bool) -> shared_memory.Pickled:
        return shared_memory.dumps(argument, function=by_value, shared=shared)

    return pickle_portable(once, lambda pickled: pickled.data)


def _dumps_function(function: Any) -> bytes:
    """A task function pickled for a container, which can import none of the driver's code."""
    return dumps_portable(function, function=True)


def _driver_python() -> str:
    """The driver's Python major.minor, which an image's must match (pickled bytecode)."""
    return worker_runtime()[1]


def _stop_quietly(worker: ContainerWorker) -> None:
    """Remove a container; a failure to (a daemon hiccup) is left for the final sweep."""
    try:
        worker.stop()
    except Exception:
        pass


def prune(*, include_running: bool = False, base_url: str | None = None) -> list[str]:
    """Remove containers that madhatter's docker engine left behind (a driver that crashed or was
    killed cannot clean up). Stopped ones by default; with ``include_running``, every madhatter
    container on the daemon, which stops runs in progress. Returns the removed containers' ids.
    Also removes the link directories of drivers that are no longer running."""
    _remove_dead_link_dirs()
    client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    removed = []
    try:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}=docker"}):
            if container.status not in ("exited", "dead") and not include_running:
                continue  # created, running or paused: it may belong to a live run
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                continue
            removed.append(container.short_id)
    finally:
        client.close()
    return removed


def _remove_dead_link_dirs() -> None:
    """Remove link directories whose driver (the pid in their name) is gone."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{LINK_DIR_PREFIX}*")):
        pid = os.path.basename(path)[len(LINK_DIR_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed driver not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): it exists
        return True
