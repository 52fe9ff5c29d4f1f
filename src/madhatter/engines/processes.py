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

Workers start on the first task (a run whose steps all stay in the driver never starts any), by
``fork`` where the platform has it: forking two workers costs ~10 ms, a ``forkserver`` start ~150.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any

from ._base import Engine, EngineTraits, Task, TaskLost, TaskResult, TaskTimedOut
from ._serialize import dumps_data, dumps_function, loads
from ._worker import STOP, worker_main
from .kit import describe_exit

KILL_GRACE_SECONDS = 1.0
"""How long past its timeout a task may run (its own alarm should have stopped it) before its
worker is killed."""


TASKS_PER_WORKER = 2
"""A worker holds its running task and the next one, waiting in its pipe, so it never idles
for a round trip through the driver between two tasks (W1/W3 of the benchmarks)."""

PREFETCH_MAX_BYTES = 32 * 1024
"""A waiting task must fit in the pipe's buffer: a larger one would block the management thread
until the worker, still busy, read it."""


@dataclasses.dataclass
class _Pending:
    task: Task
    future: Future[TaskResult]
    argument: bytes
    sent: bool = False  # sent to a worker before (its future is already running)


@dataclasses.dataclass
class _Worker:
    process: Any  # multiprocessing.Process (its type differs per start method)
    conn: Connection
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
    traits = EngineTraits(ships_data=True, task_seconds=0.05, tasks_per_worker=TASKS_PER_WORKER)

    def __init__(self, workers: int | None = None, *, start_method: str | None = None) -> None:
        self._size = workers or os.cpu_count() or 1
        if start_method is None:
            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self._context = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._workers: list[_Worker] = []
        self._functions: dict[str, bytes] = {}
        self._thread: threading.Thread | None = None
        self._wake_read, self._wake_write = -1, -1
        self._closing = False
        self._cancelling = False

    @property
    def workers(self) -> int:
        return self._size

    # -- the driver's side -----------------------------------------------------------------

    def submit(self, task: Task) -> Future[TaskResult]:
        if self._closing:
            raise RuntimeError("the processes engine is shut down")
        function_bytes = self._functions.get(task.function_key)
        if function_bytes is None:
            function_bytes = self._functions[task.function_key] = dumps_function(task.function)
        pending = _Pending(task, Future(), dumps_data(task.argument))
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
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(theirs, os.getpid()), name="madhatter-worker", daemon=True
        )
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads. Replacement workers are
            # forked from the management thread; the child only runs the worker loop, which takes
            # none of the parent's locks (the import lock is re-initialised after fork).
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
                waitables.append(worker.conn)
        ready = wait(waitables, timeout=self._next_deadline())
        if self._wake_read in ready:
            os.read(self._wake_read, 4096)
        for worker in list(self._workers):
            while worker.tasks and (worker.conn in ready or worker.conn.poll()):
                if not self._collect(worker):
                    break
                ready = [r for r in ready if r is not worker.conn]
            if worker.process.sentinel in ready or not worker.process.is_alive():
                self._replace(worker)
        self._enforce_timeouts()
        return True

    def _dispatch(self) -> None:
        """Idle workers first get a task each; then each gets one more to hold in its pipe.

        Assignments are made under the lock, messages sent after it: ``send_bytes`` to a busy
        worker must never block (it would wait for a worker that waits to answer us), so only a
        message that fits the pipe's buffer is sent to a worker that is still busy.
        """
        sends: list[tuple[_Worker, bytes]] = []
        with self._lock:
            for depth in range(TASKS_PER_WORKER):
                for worker in self._workers:
                    if not self._queue or len(worker.tasks) != depth or worker.dead:
                        continue
                    if depth and len(self._queue[0].argument) > PREFETCH_MAX_BYTES:
                        continue  # its message cannot fit either: do not pickle it to find out
                    message = self._message(worker, self._queue[0])
                    if depth and len(message) > PREFETCH_MAX_BYTES:
                        continue
                    pending = self._queue.popleft()
                    if not (pending.sent or pending.future.set_running_or_notify_cancel()):
                        continue  # cancelled while queued
                    worker.functions.add(pending.task.function_key)
                    pending.sent = True
                    worker.tasks.append(pending)
                    if len(worker.tasks) == 1:
                        worker.started = time.monotonic()
                    sends.append((worker, message))
        for worker, message in sends:
            try:
                worker.conn.send_bytes(message)
            except OSError:
                pass  # the worker is dead; its sentinel says so and _replace fails the task

    def _message(self, worker: _Worker, pending: _Pending) -> bytes:
        task = pending.task
        function_bytes = None
        if task.function_key not in worker.functions:
            function_bytes = self._functions[task.function_key]
        return dumps_data((task.key, task.function_key, function_bytes, pending.argument))

    def _collect(self, worker: _Worker) -> bool:
        """Read the answer to the worker's running task; False if the worker died instead."""
        try:
            message = worker.conn.recv_bytes()
        except (EOFError, OSError):
            return False  # died while answering: _replace reports it
        pending = worker.tasks.popleft()
        worker.started = time.monotonic()  # the next task, if any, starts now
        try:
            _key, ok, value, started, seconds = loads(message)
        except Exception as exc:  # e.g. an exception class whose __init__ rejects its own args
            error = RuntimeError(
                f"the worker's answer could not be unpickled in the driver: {type(exc).__name__}: {exc}"
            )
            if not pending.future.done():
                pending.future.set_exception(error)
            return True
        if pending.future.done():
            return True
        if ok:
            pending.future.set_result(TaskResult(value, worker.name, started, seconds))
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
        worker.conn.close()
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
                worker.conn.send_bytes(STOP)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []
