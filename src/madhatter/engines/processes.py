"""The ``processes`` engine: a pool of local worker processes that survives its workers dying.

Why not ``multiprocessing.Pool`` or ``ProcessPoolExecutor``? ``Pool`` hangs when a worker dies, and
``ProcessPoolExecutor`` breaks as a whole and cannot say which task killed the worker. Here each
worker has its own pipe and runs its tasks in the order it was sent them (one running, at most one
waiting in the pipe), so the pool always knows which task a dead worker held: that task fails with
:class:`TaskLost` (the runner retries or reports it), the waiting one goes back to the queue, a
fresh worker takes the dead one's place, and every other task carries on.

One management thread does all the talking: it sends queued tasks to idle workers, reads results,
watches the workers' sentinels, and stops a worker whose task overran its timeout (the task's own
``SIGALRM`` deadline fires first; the kill is the backstop for code stuck outside Python).

Large buffers (NumPy arrays and the like, of 1 MiB or more) never go through the worker's socket:
they travel in anonymous shared-memory files whose descriptors ride along (``_shared_memory.py``,
``_link.py``). A task's argument is written there when it is sent to a worker, not when it is
submitted, so the copies alive at once are bounded by the tasks in flight; a stage's function, with
any large run parameters in it, is written once and mapped by every worker.

On Linux, workers are forked while the driver has no other thread (nothing can then hold a lock
the child would inherit held: two workers in ~5 ms), so they start when the run prepares its
stages if the driver is single-threaded then (the usual ``madhatter run``), before a probe thread
runs the first item; otherwise on the first task, as fresh interpreters, which is safe with
threads (~0.13 s; ``_fresh_process.py`` says why not ``forkserver``). Replacement workers are
always fresh: they start from the management thread. Elsewhere, ``spawn``, on the first task.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import Future
from multiprocessing.connection import wait
from typing import Any

from . import _fresh_process as fresh_process
from . import _shared_memory as shared_memory
from ._base import Engine, EngineTraits, Task, TaskLost, TaskResult, TaskTimedOut
from ._link import Link
from ._serialize import dumps_data, loads
from ._worker import STOP, is_interim, worker_main
from .kit import describe_exit

KILL_GRACE_SECONDS = 1.0
"""How long past its timeout a task may run (its own alarm should have stopped it) before its
worker is killed."""


TASKS_PER_WORKER = 2
"""A worker holds its running task and the next one, waiting in its pipe, so it never idles
for a round trip through the driver between two tasks (W1/W3 of the benchmarks)."""

PREFETCH_MAX_BYTES = 32 * 1024
"""A waiting task must fit in the socket's buffer: a larger one would block the management thread
until the worker, still busy, read it. (Large buffers do not count: they travel beside the
message, in shared memory.)"""


@dataclasses.dataclass
class _Pending:
    task: Task
    future: Future[TaskResult]
    argument: shared_memory.Pickled
    sent: bool = False  # sent to a worker before (its future is already running)


@dataclasses.dataclass(frozen=True)
class _Function:
    """A stage's task function as every worker gets it: pickled once, its large buffers written
    once to a shared file that each worker maps (the descriptor is closed at shutdown)."""

    message: shared_memory.Message
    fd: int | None

    @classmethod
    def pickle(cls, function: Any) -> _Function:
        pickled = shared_memory.dumps(function, function=True)
        layout, fd = pickled.share()
        return cls(pickled.message(layout), fd)

    @property
    def size(self) -> int:
        return len(self.message[0])


@dataclasses.dataclass
class _Worker:
    process: Any  # a multiprocessing.Process (its type differs per start method) or FreshProcess
    link: Link
    tasks: collections.deque[_Pending] = dataclasses.field(default_factory=collections.deque)
    started: float = 0.0  # when tasks[0] started running
    functions: set[str] = dataclasses.field(default_factory=set)
    dead: bool = False  # killed by us; gets no more tasks while it is replaced

    @property
    def name(self) -> str:
        return f"pid-{self.process.pid}"

    @property
    def current(self) -> _Pending | None:
        """The task the worker is running (the first it was sent and has not answered)."""
        return self.tasks[0] if self.tasks else None


class ProcessesEngine(Engine):
    """Runs tasks in local worker processes (default: one per CPU core)."""

    name = "processes"
    traits = EngineTraits(
        ships_data=True,
        task_seconds=0.05,
        tasks_per_worker=TASKS_PER_WORKER,
        shares_buffers=shared_memory.AVAILABLE,
    )

    def __init__(self, workers: int | None = None, *, start_method: str | None = None) -> None:
        """``start_method``: ``None`` (fork while the driver has one thread, else a fresh
        interpreter; ``spawn`` where there is no ``pidfd_open``) or one of ``multiprocessing``'s,
        used for every worker."""
        self._size = workers or os.cpu_count() or 1
        if start_method is None and not fresh_process.AVAILABLE:
            start_method = "spawn"
        self._context = None if start_method is None else multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._workers: list[_Worker] = []
        self._functions: dict[str, _Function] = {}
        self._thread: threading.Thread | None = None
        self._wake_read, self._wake_write = -1, -1
        self._closing = False
        self._cancelling = False

    @property
    def workers(self) -> int:
        return self._size

    def prepare(self, resources: Mapping[str, Any]) -> EngineTraits:
        """Fork the workers now if the driver has no other thread yet: later, a probe thread may
        be running the user's first item (an import, a lock) and the workers would have to start
        as fresh interpreters (~0.13 s instead of ~5 ms). A run whose steps all stay in the
        driver pays those 5 ms too."""
        if self._thread is None and self._context is None and threading.active_count() == 1:
            self._start()
        return self.traits

    # -- the driver's side -----------------------------------------------------------------

    def submit(self, task: Task) -> Future[TaskResult]:
        if self._closing:
            raise RuntimeError("the processes engine is shut down")
        if task.function_key not in self._functions:
            self._functions[task.function_key] = _Function.pickle(task.function)
        pending = _Pending(task, Future(), shared_memory.dumps(task.argument))
        with self._lock:
            self._queue.append(pending)
        if self._thread is None:
            self._start()
        self._wake()
        return pending.future

    def shutdown(self, *, cancel_pending: bool) -> None:
        with self._lock:
            self._closing = True
            self._cancelling = self._cancelling or cancel_pending
            if cancel_pending:
                while self._queue:
                    self._queue.popleft().future.cancel()
        if self._thread is None:
            return
        self._wake()
        self._thread.join()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        self._thread = None
        for function in self._functions.values():
            if function.fd is not None:
                os.close(function.fd)
        self._functions.clear()

    def _start(self) -> None:
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._workers = [self._spawn() for _ in range(self._size)]
        self._thread = threading.Thread(target=self._manage, name="madhatter-processes", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except (BlockingIOError, OSError):  # full (already woken) or closed (shut down)
            pass

    def _spawn(self) -> _Worker:
        ours, theirs = Link.pair()
        process: Any
        if self._context is None and threading.active_count() > 1:
            process = fresh_process.FreshProcess(theirs, os.getpid())
        else:
            context = self._context or multiprocessing.get_context("fork")
            process = context.Process(  # type: ignore[attr-defined]
                target=worker_main, args=(theirs, os.getpid()), name="madhatter-worker", daemon=True
            )
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() in a process with threads: only a start method
                # the user chose can fork with threads (the default forks single-threaded only).
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
        theirs.close()
        return _Worker(process, ours)

    # -- the management thread -------------------------------------------------------------

    def _manage(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug here must fail the run, never hang it
            with self._lock:
                self._closing = self._cancelling = True
                doomed = [p.future for p in self._queue] + [
                    p.future for w in self._workers for p in w.tasks
                ]
                self._queue.clear()
            for future in doomed:
                if not future.done():
                    future.set_exception(TaskLost(f"the processes engine failed: {exc!r}"))
            raise
        finally:
            self._stop_workers()

    def _step(self) -> bool:
        """One round of dispatch, wait and collect; False once the engine can stop."""
        self._dispatch()
        with self._lock:
            busy = [w for w in self._workers if w.current is not None]
            if self._closing and not busy and (not self._queue or self._cancelling):
                return False
            if self._cancelling:
                for worker in busy:
                    while worker.tasks:
                        self._fail_first(worker, TaskLost("the run was cancelled"))
                    worker.dead = True
                    self._kill(worker)
                return True
        waitables: list[Any] = [self._wake_read]
        for worker in self._workers:
            waitables.append(worker.process.sentinel)
            if worker.current is not None:
                waitables.append(worker.link)
        ready: list[Any] = wait(waitables, timeout=self._next_deadline())
        if self._wake_read in ready:
            os.read(self._wake_read, 4096)
        for worker in list(self._workers):
            while worker.tasks and (worker.link in ready or worker.link.poll()):
                if not self._collect(worker):
                    break
                ready = [r for r in ready if r is not worker.link]
            if worker.process.sentinel in ready or not worker.process.is_alive():
                self._replace(worker)
        self._enforce_timeouts()
        return True

    def _dispatch(self) -> None:
        """Idle workers first get a task each; then each gets one more to hold in its socket.

        Assignments are made under the lock, messages built and sent after it: ``send`` to a busy
        worker must never block (it would wait for a worker that waits to answer us), so only a
        message that fits the socket's buffer is sent to a worker that is still busy.
        """
        sends: list[tuple[_Worker, _Pending, bool]] = []
        with self._lock:
            for depth in range(TASKS_PER_WORKER):
                for worker in self._workers:
                    if not self._queue or len(worker.tasks) != depth or worker.dead:
                        continue
                    pending = self._queue[0]
                    with_function = pending.task.function_key not in worker.functions
                    if depth and self._message_size(pending, with_function) > PREFETCH_MAX_BYTES:
                        continue
                    self._queue.popleft()
                    if not (pending.sent or pending.future.set_running_or_notify_cancel()):
                        continue  # cancelled while queued
                    worker.functions.add(pending.task.function_key)
                    pending.sent = True
                    worker.tasks.append(pending)
                    if len(worker.tasks) == 1:
                        worker.started = time.monotonic()
                    sends.append((worker, pending, with_function))
        for worker, pending, with_function in sends:
            self._send(worker, pending, with_function)

    def _message_size(self, pending: _Pending, with_function: bool) -> int:
        function = self._functions[pending.task.function_key].size if with_function else 0
        return len(pending.argument.data) + function

    def _send(self, worker: _Worker, pending: _Pending, with_function: bool) -> None:
        """Send an assigned task: its argument's large buffers go to a new shared file now (not
        at submit, so only the tasks in flight hold copies), whose descriptor goes with it."""
        task = pending.task
        try:
            layout, argument_fd = pending.argument.share()
        except OSError as exc:  # no memory or descriptors left for the file: fail this task only
            with self._lock:
                worker.tasks.remove(pending)
                worker.started = time.monotonic()
            pending.future.set_exception(exc)
            return
        function = self._functions[task.function_key] if with_function else None
        message = dumps_data(
            (
                task.key,
                task.function_key,
                None if function is None else function.message,
                pending.argument.message(layout),
            )
        )
        fds = [fd for fd in (function.fd if function else None, argument_fd) if fd is not None]
        try:
            worker.link.send(message, fds)
        except OSError:
            pass  # the worker is dead; its sentinel says so and _replace fails the task
        finally:
            if argument_fd is not None:
                os.close(argument_fd)  # the worker has its own descriptor now (or never will)

    def _collect(self, worker: _Worker) -> bool:
        """Read the answer to the worker's running task; False if the worker died instead."""
        try:
            message, fds = worker.link.receive()
        except (EOFError, OSError):
            return False  # died while answering: _replace reports it
        try:
            decoded: Any = loads(message)
        except Exception as exc:  # reported as the running task's answer, below
            decoded = exc
        if is_interim(decoded):
            interim = worker.tasks[0].task.interim  # the running task sent it (with no files)
            if interim is not None:
                interim(decoded[2])
            return True
        pending = worker.tasks.popleft()
        worker.started = time.monotonic()  # the next task, if any, starts now
        try:
            if isinstance(decoded, Exception):
                raise decoded
            _key, ok, answer, started, seconds = decoded
            value = shared_memory.loads(answer, fds[0] if fds else None)
        except Exception as exc:  # e.g. an exception class whose __init__ rejects its own args
            error = RuntimeError(
                f"the worker's answer could not be unpickled in the driver: {type(exc).__name__}: {exc}"
            )
            if not pending.future.done():
                pending.future.set_exception(error)
            return True
        finally:
            for fd in fds:  # the value's buffers are mapped: the mapping keeps them
                os.close(fd)
        if pending.future.done():
            return True
        if ok:
            sizes = pending.argument.size, shared_memory.message_bytes(answer)
            pending.future.set_result(TaskResult(value, worker.name, started, seconds, *sizes))
        else:
            pending.future.set_exception(value)
        return True

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(timeout=1)
        detail = f"worker {worker.name} {describe_exit(worker.process.exitcode)}"
        if worker.dead:
            detail = f"worker {worker.name} was stopped by madhatter"
        with self._lock:
            if worker.tasks:
                self._fail_first(worker, TaskLost(detail))
            self._requeue(worker)
        worker.link.close()
        with contextlib.suppress(ValueError):  # (still running: the collector closes it)
            worker.process.close()  # its sentinel's descriptor, now rather than when collected
        with self._lock:
            index = self._workers.index(worker)
            if self._closing and (self._cancelling or not self._queue):
                del self._workers[index]
            else:
                self._workers[index] = self._spawn()

    def _fail_first(self, worker: _Worker, error: BaseException) -> None:
        pending = worker.tasks.popleft()
        if not pending.future.done():
            pending.future.set_exception(error)

    def _requeue(self, worker: _Worker) -> None:
        """Put the tasks waiting in a lost worker's pipe back at the front of the queue."""
        while worker.tasks:
            self._queue.appendleft(worker.tasks.pop())

    def _kill(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()

    def _next_deadline(self) -> float | None:
        deadlines = [
            w.started + w.current.task.timeout + KILL_GRACE_SECONDS - time.monotonic()
            for w in self._workers
            if w.current is not None and w.current.task.timeout is not None
        ]
        return max(0.0, min(deadlines)) if deadlines else None

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            pending = worker.current
            if pending is None or pending.task.timeout is None:
                continue
            if now - worker.started > pending.task.timeout + KILL_GRACE_SECONDS:
                with self._lock:
                    self._fail_first(worker, TaskTimedOut(pending.task.timeout))
                    self._requeue(worker)
                    worker.dead = True
                self._kill(worker)
                self._replace(worker)

    def _stop_workers(self) -> None:
        for worker in self._workers:
            try:
                worker.link.send(STOP)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.link.close()
            worker.process.close()
        self._workers = []
