"""The state of one run that every stage shares: events, statistics, skipped items, cancellation,
and the futures in flight.

Each future in flight has exactly one owner: the callback registered with :meth:`RunContext.track`
when it was launched. Futures may resolve on any thread (an engine's management thread, a Dask
or Ray callback thread); their completions are queued here and handed to their owners only on the
driver's thread, by :meth:`RunContext.dispatch_completed`, so no stage is ever called
concurrently.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from threading import Event as ThreadingEvent
from typing import Any, NamedTuple

from .._errors import RunCancelled
from .._events import ChunkDone, ChunkOutput, Emitter, Event
from .._results import RECORDED_CHUNKS, RunReport, SkippedItem, StepStats
from ..engines import TaskResult
from ._capture import Output

RUN_OUTPUT_CHARACTERS = 10 * 1024 * 1024
"""What a run keeps of its steps' captured output in all (a run printing 100 MB keeps 10)."""

CANCEL_POLL_SECONDS = 0.1
"""How often a run with a cancel event looks at it while waiting for tasks."""

OnDone = Callable[[Future[TaskResult]], None]


class _Interim(NamedTuple):
    """Output a chunk sent while it ran, waiting for the driver's thread."""

    chunk: int
    output: Output


class Recorder:
    """A listener that keeps a run's events for its report (``RunReport.events``), with at most
    :data:`~madhatter._results.RECORDED_CHUNKS` ``ChunkDone`` events."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.dropped = 0
        self._chunks = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, ChunkDone):
            self._chunks += 1
            if self._chunks > RECORDED_CHUNKS:
                self.dropped += 1
                return
        self.events.append(event)


class RunContext:
    """One run's shared state (see the module docstring)."""

    def __init__(
        self,
        run_id: str,
        emitter: Emitter,
        cancel: ThreadingEvent | None,
        recorder: Recorder | None = None,
    ) -> None:
        self.run_id = run_id
        self._recorder = recorder
        self._output_left = RUN_OUTPUT_CHARACTERS
        # How stalled the run is: 0 not; 1 producers a consumer waits on may outgrow their bound
        # (one round); 2 every producer may (see ``Evaluator.drive``). Progress resets it to 0.
        self.stall = 0
        self._emitter = emitter
        self._cancel = cancel
        self._skipped: list[SkippedItem] = []
        self._stats: dict[str, StepStats] = {}
        self.driver_threads: list[Future[TaskResult]] = []
        # finished futures, and output that running chunks sent (``interim``), in arrival order
        self._completed: queue.SimpleQueue[Future[TaskResult] | _Interim] = queue.SimpleQueue()
        self._owners: dict[Future[TaskResult], OnDone] = {}

    # -- events, statistics, skipped items -------------------------------------------------

    @property
    def emitting(self) -> bool:
        """Whether anyone listens (hot paths skip building events otherwise)."""
        return bool(self._emitter)

    def emit(self, event: Event) -> None:
        if self._emitter:
            self._emitter.emit(event)

    def output(self, chunk: int, output: Output) -> None:
        """Emit a chunk's captured output as ``ChunkOutput`` events, within the run's budget of
        :data:`RUN_OUTPUT_CHARACTERS` (past it: one mark, then nothing)."""
        for step, stream, text in output:
            if self._output_left <= 0:
                return
            if len(text) > self._output_left:
                text = text[: self._output_left] + (
                    f"\n[madhatter: output truncated: the run's limit of {RUN_OUTPUT_CHARACTERS} "
                    "characters is reached; later output is dropped]\n"
                )
                self._output_left = 0
            else:
                self._output_left -= len(text)
            self.emit(ChunkOutput(self.run_id, step, chunk, stream, text))

    def skip(self, items: tuple[SkippedItem, ...]) -> None:
        self._skipped.extend(items)

    def stats(self, step: str) -> StepStats:
        return self._stats.setdefault(step, StepStats())

    def report(self, result: Any, seconds: float) -> RunReport:
        recorded = self._recorder
        return RunReport(
            self.run_id,
            result,
            tuple(self._skipped),
            dict(self._stats),
            seconds,
            tuple(recorded.events) if recorded else (),
            recorded.dropped if recorded else 0,
        )

    # -- futures in flight -----------------------------------------------------------------

    def track(self, future: Future[TaskResult], on_done: OnDone) -> None:
        """Hand ``future``'s completion to ``on_done``, on the driver's thread, exactly once."""
        self._owners[future] = on_done
        future.add_done_callback(self._completed.put)

    @property
    def in_flight(self) -> int:
        return len(self._owners)

    def interim(self, chunk: int, output: Output) -> None:
        """Output a running chunk sent (a ``Task.interim`` channel, on an engine's thread): it
        is emitted on the driver's thread, in order with the chunks' completions."""
        self._completed.put(_Interim(chunk, output))

    def dispatch_completed(self, timeout: float | None, *, block: bool) -> None:
        """Hand every future that finished since the last call to its owner, and emit the output
        running chunks sent; with ``block``, first wait up to ``timeout`` for one of either.
        O(1) per completion, unlike ``concurrent.futures.wait`` (O(futures) per call, which cost
        W4's 64 threads a fifth of their time)."""
        try:
            if block:
                self._dispatch(self._completed.get(timeout=timeout))
            while True:
                self._dispatch(self._completed.get_nowait())
        except queue.Empty:
            pass

    def _dispatch(self, done: Future[TaskResult] | _Interim) -> None:
        if isinstance(done, _Interim):
            self.output(done.chunk, done.output)
        else:
            self._owners.pop(done)(done)

    # -- cancellation ----------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Wait for a retry's delay, waking up early if the run is cancelled."""
        if self._cancel is not None:
            self._cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def check_cancelled(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise RunCancelled("cancel requested")

    @property
    def poll_seconds(self) -> float | None:
        return CANCEL_POLL_SECONDS if self._cancel is not None else None
