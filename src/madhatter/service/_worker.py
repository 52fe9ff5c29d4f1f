"""``Worker``: takes runs off the store's queue and executes them on an engine.

A worker process runs ``concurrency`` *slots* (threads), each looping: lease the oldest queued run,
execute it with :meth:`Pipeline.execute`, write its outcome. One heartbeat thread renews the leases
of every run in flight a few times per lease period. The heartbeat's answer drives the run:

* ``cancel`` (someone cancelled it): the run's cancel event is set; the runner stops its tasks on
  the engine and the run ends ``cancelled``.
* ``lost`` (the lease expired and the run went to another worker, or it was finished): the run is
  stopped too, and nothing more is written about it -- the store would refuse it anyway (fencing).

Progress events go to the store in small batches (every :data:`FLUSH_SECONDS`, and at the end), so
the web page follows a run live without a write per chunk. A worker asked to stop (SIGTERM, Ctrl-C)
stops its runs and gives them back to the queue, for another worker to start again.

A worker started without pipelines of its own *follows* the store: it loads the pipelines ``serve``
recorded there, when it starts (there may be none yet: it waits), every :data:`FOLLOW_SECONDS` while
idle, and at once when it leases a run of a pipeline it does not know. So workers and ``serve`` start
in any order, and a worker learns the pipelines of a ``serve`` restarted with more.

A worker given a chunk cache (``cache=``, ``madhatter worker --cache DIR_OR_URL``) runs every run
with it (:meth:`Pipeline.execute`'s ``cache=``): results of steps whose code, parameters and input
are unchanged are found instead of computed, and each finished chunk is filed. Workers sharing one
cache (a shared folder, or an fsspec URL such as ``s3://bucket/prefix``) share what they computed,
so a re-run of a failed or cancelled run resumes where it stopped, on whichever worker takes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import RunCancelled, RunError, StepFailed, first_line
from .._events import ChunkDone, Event, RunFinished, StepFinished
from .._pipeline import DEFAULT_ENGINE
from ..cache import CacheStore
from . import _results
from ._records import (
    CANCELLED,
    FAILED,
    HEARTBEAT_CANCEL,
    HEARTBEAT_LOST,
    SUCCEEDED,
    Failure,
    Lease,
    Outcome,
    RunRecord,
)
from ._registry import Registry, recorded_targets
from ._store import DEFAULT_LEASE_SECONDS, Store
from ._stores import open_store

logger = logging.getLogger("madhatter.service")

FLUSH_SECONDS = 0.25
"""Most time a progress event waits in the worker before it reaches the store."""
FOLLOW_SECONDS = 1.0
"""How often an idle worker that follows the store looks for pipelines ``serve`` registered since."""
MAX_HEARTBEAT_SECONDS = 1.0
"""Heartbeats come three times per lease, and at least this often: it bounds how long a cancel
takes to reach a running run."""


@dataclasses.dataclass
class _Active:
    """A run in flight in this worker, as the heartbeat thread sees it."""

    run_id: str
    token: int
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancel_requested: bool = False
    lost: bool = False
    shutdown: bool = False
    sink: _EventSink | None = None  # its events, flushed by the heartbeat thread when quiet


class _EventSink:
    """The listener of one run: batches its events into the store and counts items processed."""

    def __init__(self, store: Store, active: _Active) -> None:
        self._store, self._active = store, active
        self._pending: list[dict[str, Any]] = []
        self._last = time.monotonic()
        self._items: dict[str, int] = {}
        # The run's thread adds and flushes; the heartbeat thread flushes what waits through a
        # quiet stretch. One lock keeps the batches whole and in order.
        self._lock = threading.Lock()

    @property
    def items(self) -> int:
        return max(self._items.values(), default=0)

    def __call__(self, event: Event) -> None:
        data = event.to_dict()
        data["run_id"] = self._active.run_id  # the store's id, not the runner's own
        with self._lock:
            self._pending.append(data)
        if isinstance(event, ChunkDone):
            self._items[event.step] = self._items.get(event.step, 0) + event.items_in
        elif isinstance(event, StepFinished):
            self._items[event.step] = max(self._items.get(event.step, 0), event.items_in)
        if isinstance(event, RunFinished) or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

    def log(self, message: str) -> None:
        with self._lock:
            self._pending.append(
                {"type": "Log", "run_id": self._active.run_id, "at": time.time(), "message": message}
            )

    def flush(self, store: Store | None = None) -> None:
        """Write what waits, through ``store`` (another thread's connection) or the run's."""
        with self._lock:
            self._last = time.monotonic()
            if not self._pending or self._active.lost:
                return
            batch, self._pending = self._pending, []
            try:
                written = (store or self._store).add_events(
                    self._active.run_id, self._active.token, batch
                )
            except BaseException:
                self._pending[:0] = batch  # nothing lost: the next flush tries again
                raise
            if not written:
                self._active.lost = True
                self._active.cancel.set()

    def flush_if_waiting(self, store: Store) -> None:
        """From the heartbeat thread: write events that have waited :data:`FLUSH_SECONDS` (the
        run's thread writes only when a new event comes, and a long chunk brings none)."""
        if self._pending and time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush(store)


class _RunLogHandler(logging.Handler):
    """Copies log records made in one thread (a run's driver thread, where its ``@preprocess``
    and ``@postprocess`` steps and inline chunks run) into the run's log. Records are filtered by
    the loggers' levels as usual (the root logger passes WARNING and above unless configured)."""

    def __init__(self, sink: _EventSink) -> None:
        super().__init__()
        self._sink, self._thread = sink, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self._sink.log(f"{record.levelname} {record.name}: {record.getMessage()}")


class Worker:
    """Executes queued runs of registered pipelines (see the module docstring).

    Args:
        store_url: the store to take runs from (each slot opens its own connection).
        registry: the pipelines this worker can run.
        name: shown on runs it holds (default: ``host:pid``).
        concurrency: runs executed at once.
        engine, workers, engine_options: where and how wide each run executes.
        lease_seconds: a lease's length; a worker dead this long loses its runs to others.
        poll_seconds: how long an idle slot waits before asking the queue again.
        follow: also run the pipelines ``serve`` records in the store, now and later (see the
            module docstring); for a worker started without pipelines of its own.
        announce: where the worker says which pipelines it learned, or could not load (by default
            the ``madhatter.service`` logger; :func:`work` points it at its own ``announce``).
        cache: the chunk cache every run uses (see the module docstring): a folder (made absolute
            here) or an fsspec URL; None (the default) for none.
    """

    def __init__(
        self,
        store_url: str,
        registry: Registry,
        *,
        name: str | None = None,
        concurrency: int = 1,
        engine: str = DEFAULT_ENGINE,
        workers: int | None = None,
        engine_options: Mapping[str, Any] | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = 0.1,
        follow: bool = False,
        announce: Callable[[str], None] = logger.info,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store_url = store_url
        self.registry = registry
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = max(1, concurrency)
        self.engine, self.workers = engine, workers
        self.engine_options = dict(engine_options or {})
        self.lease_seconds, self.poll_seconds = lease_seconds, poll_seconds
        self.follow, self.announce = follow, announce
        self.cache = None if cache is None else CacheStore.open(cache).location
        """The chunk cache's location (an absolute folder, or a URL), or None."""
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._learning = threading.Lock()
        self._learned_at = -FOLLOW_SECONDS
        self._recorded: list[str] | None = None

    def learn(self, store: Store | None = None, *, now: bool = True, quiet: bool = False) -> list[str]:
        """For a worker that follows the store: load the pipelines ``serve`` recorded that this
        worker does not have yet, and say so (unless ``quiet``: failures are said anyway); returns
        their names. With ``now=False``, only if :data:`FOLLOW_SECONDS` have passed since the last
        look and the recorded list changed (an idle slot's check). A no-op for a worker with
        pipelines of its own."""
        if not self.follow:
            return []
        with self._learning:  # one slot at a time; the others find the work done
            if not now and time.monotonic() - self._learned_at < FOLLOW_SECONDS:
                return []
            self._learned_at = time.monotonic()
            if store is None:
                with open_store(self.store_url) as opened:
                    recorded = recorded_targets(opened)
            else:
                recorded = recorded_targets(store)
            if recorded == self._recorded and not now:
                return []  # nothing new recorded; failed targets are retried when a run needs them
            self._recorded = recorded
            added, failed = self.registry.extend(recorded)
        for name, why in failed.items():
            self.announce(f"worker {self.name} cannot load pipeline {name!r} recorded by serve: {why}")
        if added and not quiet:
            self.announce(f"worker {self.name} now also runs {', '.join(added)} (registered by serve)")
        return added

    def serve(self, stop: threading.Event) -> None:
        """Execute runs until ``stop`` is set; then stop the runs in flight and requeue them."""
        slots = [
            threading.Thread(target=self._slot, args=(i, stop), name=f"madhatter-slot-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        beat = threading.Thread(
            target=self._heartbeats, args=(stop,), name="madhatter-heartbeat", daemon=True
        )
        for thread in [*slots, beat]:
            thread.start()
        stop.wait()
        with self._lock:
            for active in self._active.values():
                active.shutdown = True
                active.cancel.set()
        for thread in [*slots, beat]:
            thread.join()

    # -- slots -------------------------------------------------------------------------------

    def _slot(self, index: int, stop: threading.Event) -> None:
        name = self.name if self.concurrency == 1 else f"{self.name}/{index}"
        store = open_store(self.store_url)
        try:
            while not stop.is_set():
                try:
                    lease = store.lease(name, lease_seconds=self.lease_seconds)
                    if lease is None:
                        self.learn(store, now=False)  # idle: pipelines serve registered since
                        store.wait_for_work(self.poll_seconds)
                        continue
                except Exception:
                    logger.exception("cannot reach the store at %s; retrying", self.store_url)
                    stop.wait(1.0)
                    continue
                try:
                    self._execute(store, lease)
                except Exception:  # the store failed mid-run: its lease expires, and it is re-queued
                    logger.exception(
                        "run %s: the store failed; another worker will take it", lease.run.id
                    )
        finally:
            store.close()

    def _execute(self, store: Store, lease: Lease) -> None:
        run = lease.run
        active = _Active(run.id, lease.token)
        with self._lock:
            self._active[run.id] = active
        sink = active.sink = _EventSink(store, active)
        cache = f", chunk cache at {self.cache}" if self.cache is not None else ""
        sink.log(f"attempt {lease.token} started on worker {run.worker} (engine {self.engine}{cache})")
        handler = _RunLogHandler(sink)
        logging.getLogger().addHandler(handler)
        try:
            outcome = self._run(store, run, active, sink)
        finally:
            logging.getLogger().removeHandler(handler)
            with self._lock:
                del self._active[run.id]
        sink.flush()
        if active.lost:
            logger.warning("run %s: lease lost (re-queued elsewhere or ended); result dropped", run.id)
            return
        if (
            active.shutdown
            and outcome.status == CANCELLED
            and not active.cancel_requested
            and store.release(run.id, lease.token)
        ):
            logger.info("run %s: given back to the queue (worker stopping)", run.id)
            return
        if not store.finish(run.id, lease.token, outcome):
            logger.warning("run %s: lease lost before it could finish; result dropped", run.id)

    def _run(self, store: Store, run: RunRecord, active: _Active, sink: _EventSink) -> Outcome:
        try:
            if run.pipeline not in self.registry:
                self.learn(store)  # a pipeline serve registered after this worker last looked
            pipeline = self.registry.get(run.pipeline)
            report = pipeline.execute(
                engine=self.engine,
                workers=self.workers,
                params=run.params,
                listeners=[sink],
                cancel=active.cancel,
                cache=self.cache,
                capture_output=True,  # what steps print and log goes to the run's events
                progress=False,  # the run page shows progress, never a notebook display
                **self.engine_options,
            )
        except RunCancelled:
            return Outcome(CANCELLED, Failure("RunCancelled", "cancelled on request"), items=sink.items)
        except StepFailed as exc:
            failure = Failure(
                type(exc).__name__, first_line(exc), exc.step, exc.chunk, exc.remote_traceback
            )
            return Outcome(FAILED, failure, items=sink.items)
        except Exception as exc:
            step, chunk = getattr(exc, "step", None), getattr(exc, "chunk", None)
            text = None if isinstance(exc, RunError) else traceback.format_exc()
            failure = Failure(type(exc).__name__, first_line(exc), step, chunk, text)
            return Outcome(FAILED, failure, items=sink.items)
        if report.skipped:
            sink.log(f"{len(report.skipped)} item(s) failed and were skipped (see ItemSkipped events)")
        try:
            kind, data = _results.encode(report.result)
        except Exception as exc:  # e.g. a result holding a lock or an open file
            message = f"the result cannot be stored: {type(exc).__name__}: {first_line(exc)}"
            return Outcome(FAILED, Failure("ResultError", message), items=sink.items)
        return Outcome(SUCCEEDED, None, kind, data, _results.preview(report.result), sink.items)

    # -- heartbeats --------------------------------------------------------------------------

    def _heartbeats(self, stop: threading.Event) -> None:
        every = min(self.lease_seconds / 3, MAX_HEARTBEAT_SECONDS)
        store = open_store(self.store_url)
        beaten = time.monotonic()
        try:
            while not stop.wait(min(every, FLUSH_SECONDS)):
                with self._lock:
                    active = list(self._active.values())
                for run in active:
                    if run.sink is not None:
                        try:
                            run.sink.flush_if_waiting(store)
                        except Exception:
                            logger.exception(
                                "events of run %s could not be written; will retry", run.run_id
                            )
                if time.monotonic() - beaten < every:
                    continue
                beaten = time.monotonic()
                for run in active:
                    try:
                        answer = store.heartbeat(run.run_id, run.token, lease_seconds=self.lease_seconds)
                    except Exception:
                        logger.exception("heartbeat for run %s failed; will retry", run.run_id)
                        continue
                    if answer == HEARTBEAT_CANCEL:
                        run.cancel_requested = True
                        run.cancel.set()
                    elif answer == HEARTBEAT_LOST:
                        run.lost = True
                        run.cancel.set()
        finally:
            store.close()
