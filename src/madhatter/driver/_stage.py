"""Running one parallel stage: chunk its input, run the chunks, re-assemble the output.

A :class:`StageRunner` is pumped by the evaluator (``_evaluator.py``): each pump reads input,
launches chunks while the stage has capacity, and writes finished chunks to the stage's output channel in
input order (or as they finish, when unordered). Capacity is the back-pressure: at most ``window``
chunks in flight (the step's ``n``, capped by the engine's workers), and no new chunk while too many
finished ones wait for a slow consumer.

Where a chunk runs -- in the driver or on the engine -- is the stage's :class:`~._placement.Placement`,
decided from measurements (``_placement.py``, ``_sizing.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

from .._errors import RunError, StepFailed, TaskTimeout, WorkerLost, first_line
from .._events import (
    ChunkDone,
    ChunkRetried,
    ChunkSplit,
    ConcurrencyReduced,
    ItemSkipped,
    StepFinished,
    StepStarted,
    StepTotalKnown,
)
from .._results import SkippedItem
from ..engines import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult, TaskTimedOut
from ..engines.kit import timed_call
from ..graph import Stage
from ..tracing import StageTrace
from . import _inline_watch as inline_watch
from ._bisect import Bisection, Part, may_bisect
from ._capture import Output
from ._chain import ChainTask, ChunkOutcome, KeepOutput, StepCount, preview, user_traceback
from ._channel import Channel, Chunk, chunk_size
from ._context import RunContext
from ._memory import killed_for_memory, lowered
from ._placement import Placement
from ._readers import Reader
from ._sizing import PROBE_SECONDS, ChunkSizer
from ._stage_cache import CachedChunk, CachedReader, StageCache

DRIVER = "driver"
"""The worker name of chunks run in the driver process."""
CACHE = "cache"
"""The worker name of chunks found whole in the chunk cache."""
OUTSTANDING_PER_WINDOW = 2
"""Finished-but-unread plus in-flight chunks a stage may hold, per slot of its window."""


def run_in_thread(task: Task, worker: str) -> Future[TaskResult]:
    """Run ``task`` on a new daemon thread; its future resolves when it is done (the probe)."""
    future: Future[TaskResult] = Future()
    future.set_running_or_notify_cancel()

    def target() -> None:
        try:
            future.set_result(timed_call(task.function, task.argument, worker, task.interim))
        except Exception as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name="madhatter-probe", daemon=True).start()
    return future


@dataclasses.dataclass
class Job:
    """One chunk of a stage, as launched (``attempt`` 0 first, then 1, 2, ... for retries).

    A job with a ``part`` runs only the items ``start:stop`` of chunk ``index``, while the chunk
    is bisected to find the items that kill their worker (``_bisect.py``).
    """

    index: int
    items: Chunk
    attempt: int = 0
    in_driver: bool = False  # running on the driver's probe thread, not on the engine
    shipped: bool = False  # last launched on the engine (which may retry it itself)
    part: Part | None = None  # the items start:stop of the chunk, while it is bisected
    window: int = 0  # the stage's concurrency when it was last launched on the engine
    cached: CachedChunk | None = None  # what the chunk cache knew of the chunk (``items``: the rest)
    alone: bool = False  # last launched while no other task of its stage was out
    suspect: bool = False  # one item that lost its worker on an engine that may blame it wrongly

    @property
    def count(self) -> int:
        return chunk_size(self.items)

    def argument(self) -> tuple[Any, ...]:
        """The chain task's argument: the chunk's index and items, and with the cache, the step to
        start from and the items' keys as its input (a part's share of them)."""
        cached = self.cached
        if cached is None:
            return (self.index, self.items)
        keys = cached.keys
        if keys is not None and self.part is not None:
            keys = keys[self.part[0] : self.part[1]]
        return (self.index, self.items, cached.start, keys, cached.nested)

    @property
    def local_items(self) -> list[Any]:
        """The items, for running in the driver (never a remote chunk: see ``inline_allowed``)."""
        if isinstance(self.items, Remote):
            raise RuntimeError("madhatter internal error: a remote chunk reached the driver")
        return self.items


class StageRunner:
    """Drives one parallel stage (a fused chain of steps) on one engine."""

    def __init__(
        self,
        stage: Stage,
        task: ChainTask,
        reader: Reader,
        output: Channel,
        engine: Engine,
        traits: EngineTraits,
        run: RunContext,
        *,
        inline_allowed: bool,
        keep_output: bool = False,
        cache: StageCache | None = None,
        trace: StageTrace | None = None,
    ) -> None:
        self.stage, self.task, self.reader, self.output = stage, task, reader, output
        self.trace = trace  # the stage's span, when the run is traced (``madhatter.tracing``)
        self.engine, self.traits, self.run = engine, traits, run
        self.cache = cache
        self.keep_output = keep_output  # leave outputs on the engine's cluster for the next stage
        if stage.n is not None and stage.n < engine.workers:
            self.window = stage.n  # exactly n in flight: the step's concurrency cap holds
        else:
            self.window = engine.workers * traits.tasks_per_worker
        concurrency = min(stage.n or engine.workers, engine.workers)
        self.sizer = ChunkSizer(fixed=stage.chunk_by, target_seconds=0.0, workers=concurrency)
        self.sizer.total = reader.total
        self.placement = Placement(
            self.sizer,
            # an engine whose tasks run in the caller anyway leaves nothing to probe
            probe=inline_allowed and not traits.runs_inline,
            ship_seconds=traits.task_seconds,
            ships_data=traits.ships_data,
            shares_buffers=traits.shares_buffers,
        )
        self.finished = False
        self._pumping = False
        self._next_index = 0
        self._next_emit = 0
        self._in_flight = 0
        self._in_driver = 0
        self._buffer: dict[int, Chunk] = {}
        self._retries: list[tuple[float, int, int, Job]] = []  # (due, index, sequence, job)
        self._sequence = itertools.count()  # breaks ties between parts of one chunk
        self._bisections: dict[int, Bisection] = {}
        self._suspects = 0  # single items queued to rerun alone (see ``_isolating``)
        self._input_done = False
        self._totals_known = reader.total is not None
        for position, step in enumerate(stage.steps):
            total = reader.total if self._map_only_before(position) else None
            run.emit(StepStarted(run.run_id, step.name, total))

    # -- pumping ---------------------------------------------------------------------------

    def pump(self) -> bool:
        """Do what can be done now without waiting; return whether anything happened.

        Not re-entrant: reading a stream-step's generator may drive the run again while this
        stage is mid-pump; the inner drive then leaves this stage alone.
        """
        if self.finished or self._pumping:
            return False
        self._pumping = True
        try:
            return self._pump()
        finally:
            self._pumping = False

    def _pump(self) -> bool:
        progressed = self._flush()
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now and self._has_capacity():
            self._launch(heapq.heappop(self._retries)[-1])
            progressed = True
        while not self._input_done and self._has_capacity():
            size = self.placement.next_size()
            if not self.reader.ready(size) and (self._in_flight or not self.reader.available()):
                break  # wait for a fuller chunk while the stage still has work out
            items = self.reader.read(size)
            if chunk_size(items) < size and self.reader.exhausted:
                self._input_done = True
                self._announce_totals()
            if not chunk_size(items):
                break
            self._launch(Job(self._next_index, items))
            self._next_index += 1
            progressed = True
            if not self.placement.shipping:
                break  # one chunk in the driver per pump, so other stages get their turn
        progressed = self._flush() or progressed
        if self._input_done and not (
            self._in_flight or self._in_driver or self._retries or self._buffer
        ):
            self._finish()
            progressed = True
        return progressed

    def next_retry_due(self) -> float | None:
        return self._retries[0][0] if self._retries else None

    def _has_capacity(self) -> bool:
        relaxed = self._relaxed()
        if not self.placement.shipping:
            return relaxed or self.output.pending() < OUTSTANDING_PER_WINDOW * self.window
        if self._in_flight >= self.window:
            return False
        if self._in_flight and self._isolating():
            return False
        held = self._in_flight + len(self._buffer) + (0 if relaxed else self.output.pending())
        return held < OUTSTANDING_PER_WINDOW * self.window + 1

    def _isolating(self) -> bool:
        """Whether the stage runs one task at a time, so that a lost worker blames the right task:
        while it hunts poison items on an engine that does not pin lost tasks on the one that
        was running (``EngineTraits.pins_lost_tasks``)."""
        return not self.traits.pins_lost_tasks and bool(self._bisections or self._suspects)

    def _relaxed(self) -> bool:
        """Whether this stage may outgrow its output bound now: the run is stalled, and a
        consumer waits on this stage (or, stalled still, on any)."""
        stall = self.run.stall
        return stall >= 2 or (stall == 1 and self.output.starving())

    # -- running chunks --------------------------------------------------------------------

    def _launch(self, job: Job) -> None:
        if self.cache is not None and job.attempt == 0 and job.part is None and job.cached is None:
            known = None
            if isinstance(self.reader, CachedReader):  # it looked them up to find the cut
                known = self.reader.cached_of(job.local_items)
            job.cached = known or self.cache.look_up(job.local_items)
            if job.cached.complete:
                self._completed(job, TaskResult(None, CACHE, time.time(), 0.0))
                return
            job.items = job.cached.items
        if self.placement.shipping or job.part is not None:  # a part always runs in a worker
            part = "" if job.part is None else f".{job.part[0]}-{job.part[1]}"
            task = Task(
                key=f"{self.run.run_id}/{self.stage.name}/{job.index}{part}/{job.attempt}",
                function=KeepOutput(self.task) if self.keep_output else self.task,
                function_key=f"{self.run.run_id}/{self.stage.name}",
                argument=self._argument(job),
                timeout=self.stage.first.timeout,
                resources=dict(self.stage.first.resources),
                # a part's chunk used up its retries already: bisection is the bounded rerun
                retries=self.stage.first.retries if self.traits.retries and not job.part else 0,
                keep_output=self.keep_output,
                interim=self._interim(job),
            )
            job.shipped, job.window, job.alone = True, self.window, self._in_flight == 0
            try:
                future = self.engine.submit(task)
            except Exception as exc:
                raise RunError(
                    f"chunk {job.index} of step {self.stage.name!r} (input {preview(job.items)}) "
                    f"cannot be sent to the {self.engine.name!r} engine: {type(exc).__name__}: {exc}"
                ) from exc
            self._in_flight += 1
            self.run.track(future, functools.partial(self.on_done, job))
            return
        if self.placement.first_probe:
            # The first item's cost is unknown: time-box it on a thread, so a slow item starts
            # the engine's workers at once instead of keeping them idle while the driver works.
            job.shipped = False
            task = Task(
                f"{self.run.run_id}/{self.stage.name}/probe",
                inline_watch.watched(self.task, self.stage.name, job.index),
                "",
                self._argument(job),
                interim=self._interim(job),
            )
            future = run_in_thread(task, DRIVER)
            if not wait([future], timeout=PROBE_SECONDS).done:
                self.placement.ship()
                job.in_driver = True
                self._in_driver += 1
                self.run.track(future, functools.partial(self.on_done, job))
                self.run.driver_threads.append(future)
                return
            error = future.exception()
            if error is not None:
                self._failed(job, error)
                return
            result = future.result()
        else:
            job.shipped = False
            started, clock = time.time(), time.perf_counter()
            slot = inline_watch.enter(self.stage.name, job.index)  # for madhatter run's supervisor
            try:
                outcome = self.task(self._argument(job))
            except Exception as exc:
                self._failed(job, exc)
                return
            finally:
                inline_watch.leave(slot)
            result = TaskResult(outcome, DRIVER, started, time.perf_counter() - clock)
        self._completed(job, result)
        outputs = result.value.outputs
        if result.value.nested:
            outputs = [output for per_item in outputs for output in per_item]
        self.placement.ran_in_driver(
            job.local_items, outputs, result.seconds, input_done=self._input_done
        )

    def _interim(self, job: Job) -> Callable[[Output], None] | None:
        """The channel for the output the chunk sends while it runs, if the run captures it."""
        return functools.partial(self.run.interim, job.index) if self.task.capture else None

    def _argument(self, job: Job) -> tuple[Any, ...]:
        """The chain task's argument for ``job``; a traced task's ends with the attempt."""
        return (*job.argument(), job.attempt) if self.task.trace else job.argument()

    def on_done(self, job: Job, future: Future[TaskResult]) -> None:
        """The one place a launched chunk's future is handled, once it has resolved."""
        if job.in_driver:
            self._in_driver -= 1
            job.in_driver = False
        else:
            self._in_flight -= 1
        if job.suspect:
            self._suspects -= 1
            job.suspect = False
        if future.cancelled():
            raise RunError(f"chunk {job.index} of step {self.stage.name!r} was cancelled")
        error = future.exception()
        if error is not None:
            self._failed(job, error)
        else:
            self._completed(job, future.result())

    def _completed(self, job: Job, result: TaskResult) -> None:
        outputs: Chunk
        if result.value is None:  # found whole in the cache
            outcome = ChunkOutcome([], tuple(StepCount(0, 0, 0.0) for _ in self.stage.steps))
            outputs = []
        elif job.shipped and self.keep_output:
            outcome, outputs = result.value  # the outputs stayed on the cluster: a Remote
        else:
            outcome = result.value
            outputs = outcome.outputs
        if outcome.output:
            self.run.output(job.index, outcome.output)
        if self.trace is not None:
            if outcome.spans is None:  # its worker has no opentelemetry: the driver's view of it
                counts = outcome.counts
                self.trace.chunk_seen(
                    job.index, job.attempt, counts[0].items_in, counts[-1].items_out, result
                )
            else:
                self.trace.received(outcome.spans, (job.index, job.attempt, result))
        if outcome.records and self.cache is not None:  # its worker could not reach the store
            for step_name, fingerprint, records in outcome.records:
                self.cache.store.write(step_name, fingerprint, records)
        if result.value is not None:
            self.sizer.observe(job.count, sum(count.seconds for count in outcome.counts))
        # the cache's share is counted once per chunk: with its whole run, or its first part's
        first = job.part is None or job.part[0] == 0
        found = job.cached.counts if job.cached is not None and first else None
        for position, (step, count) in enumerate(zip(self.stage.steps, outcome.counts, strict=True)):
            cached_in, cached_out = found[position] if found is not None else (0, 0)
            stats = self.run.stats(step.name)
            stats.items_in += count.items_in + cached_in
            stats.items_out += count.items_out + cached_out
            stats.cached += cached_in
            stats.chunks += 1
            stats.seconds += count.seconds
            if self.run.emitting:
                self.run.emit(
                    ChunkDone(
                        self.run.run_id,
                        step.name,
                        job.index,
                        count.items_in + cached_in,
                        count.items_out + cached_out,
                        count.seconds,
                        result.worker,
                        result.started,
                        cached_in,
                    )
                )
        if outcome.skipped:
            self.run.skip(outcome.skipped)
            for item in outcome.skipped:
                self.run.emit(
                    ItemSkipped(self.run.run_id, item.step, item.chunk, preview(item.item), item.error)
                )
        self._deliver(job, outputs)

    def _deliver(self, job: Job, outputs: Chunk) -> None:
        """Pass a chunk's outputs on: in input order, or as they come; a part's only once every
        part of its chunk is in."""
        if job.part is not None:
            bisection = self._bisections[job.index]
            if not isinstance(outputs, list) or not bisection.finished_part(job.part, outputs):
                return
            del self._bisections[job.index]
            outputs = bisection.outputs()
        if job.cached is not None and isinstance(outputs, list):
            outputs = job.cached.merge(outputs)
        if self.stage.first.ordered:
            self._buffer[job.index] = outputs
        else:
            self.output.write(outputs)

    def _failed(self, job: Job, error: BaseException) -> None:
        output = getattr(error, "output", None)
        if output:  # what the chunk printed before it failed
            self.run.output(job.index, output)
        spans = getattr(error, "spans", None)
        if spans and self.trace is not None:  # the failed chunk's, from another process
            self.trace.received(spans)
        public = self._public_error(job, error)
        if job.shipped and killed_for_memory(error) and self._lower_concurrency(job, public):
            self._queue(job, 0.0)  # not an attempt: the shortage was the stage's, maybe not the chunk's
            return
        retries = 0 if job.shipped and self.traits.retries else self.stage.first.retries
        if job.part is None and job.attempt < retries:
            job.attempt += 1
            self._queue(job, self.stage.first.retry_delay * 2 ** (job.attempt - 1))
            gist = public.cause_line if isinstance(public, StepFailed) else first_line(public)
            self.run.emit(ChunkRetried(self.run.run_id, self.stage.name, job.index, job.attempt, gist))
            if self.trace is not None:
                self.trace.retried(job.index, job.attempt, gist)
            return
        if may_bisect(error) and isinstance(job.items, list) and not self.keep_output:
            if job.count > 1:
                self._split(job, public)
                return
            if isinstance(error, TaskLost) and not self.traits.pins_lost_tasks and not job.alone:
                job.suspect = True  # maybe it only waited on a worker another task killed:
                self._suspects += 1  # rerun it alone before naming it
                self._queue(job, 0.0)
                return
            self._poisoned(job, error, public)
            return
        raise public from (error if public is not error else error.__cause__)

    def _queue(self, job: Job, delay: float) -> None:
        """Launch ``job`` again after ``delay`` seconds, when the stage has capacity."""
        entry = (time.monotonic() + delay, job.index, next(self._sequence), job)
        heapq.heappush(self._retries, entry)

    def _lower_concurrency(self, job: Job, public: BaseException) -> bool:
        """Run fewer chunks at once after ``job``'s worker was killed for lack of memory; whether
        the concurrency went down (at 1 already, the chunk fails as any other)."""
        window = lowered(self.window, job.window)
        if job.window <= 1:
            return False
        if window < self.window:
            was, self.window = self.window, window
            self.run.emit(
                ConcurrencyReduced(self.run.run_id, self.stage.name, window, was, first_line(public))
            )
        return True

    def _split(self, job: Job, public: BaseException) -> None:
        """Rerun the two halves of a failed chunk (or part) on the engine (see ``_bisect.py``)."""
        bisection = self._bisections.get(job.index)
        if bisection is None:
            bisection = self._bisections[job.index] = Bisection(job.local_items)
        start, stop = job.part or (0, job.count)
        self.run.emit(
            ChunkSplit(self.run.run_id, self.stage.name, job.index, start, stop, first_line(public))
        )
        for part in bisection.split(job.part):
            items = bisection.items[part[0] : part[1]]
            self._queue(Job(job.index, items, part=part, cached=job.cached), 0.0)

    def _poisoned(self, job: Job, error: BaseException, public: BaseException) -> None:
        """One item alone kills its worker or runs past the timeout: leave it out and report it
        (``on_error="skip"`` on every step of the stage), or fail the run naming it."""
        item = job.local_items[0]
        position = job.part[0] if job.part is not None else 0
        step = self.stage.first.name
        if isinstance(error, TaskTimedOut):
            named: RunError = TaskTimeout(step, job.index, error.timeout, position, preview(item))
        else:
            detail = error.detail if isinstance(error, TaskLost) else first_line(public)
            named = WorkerLost(step, job.index, detail, position, preview(item))
        if not all(s.on_error == "skip" for s in self.stage.steps):
            raise named from error
        cause = f"{type(named).__name__}: {first_line(named)}"
        self.run.skip((SkippedItem(step, job.index, item, cause, ""),))
        self.run.emit(ItemSkipped(self.run.run_id, step, job.index, preview(item), cause))
        self.run.stats(step).items_in += 1
        self._deliver(job, [[]] if job.cached is not None and job.cached.nested else [])

    def _public_error(self, job: Job, error: BaseException) -> BaseException:
        if isinstance(error, RunError):
            return error
        if isinstance(error, TaskLost):
            return WorkerLost(self.stage.name, job.index, error.detail)
        if isinstance(error, TaskTimedOut):
            return TaskTimeout(self.stage.name, job.index, error.timeout)
        return StepFailed(self.stage.name, job.index, preview(job.items), user_traceback(error))

    # -- output ----------------------------------------------------------------------------

    def _flush(self) -> bool:
        flushed = False
        while self._next_emit in self._buffer:
            self.output.write(self._buffer.pop(self._next_emit))
            self._next_emit += 1
            flushed = True
        return flushed

    def _announce_totals(self) -> None:
        total = self.reader.total
        if self._totals_known or total is None:
            return
        self._totals_known = True
        self.sizer.total = total
        for position, step in enumerate(self.stage.steps):
            if self._map_only_before(position):
                self.run.emit(StepTotalKnown(self.run.run_id, step.name, total))

    def _map_only_before(self, position: int) -> bool:
        return all(step.kind == "map" for step in self.stage.steps[:position])

    def _finish(self) -> None:
        self.finished = True
        self.output.close()
        for step in self.stage.steps:
            stats = self.run.stats(step.name)
            self.run.emit(
                StepFinished(self.run.run_id, step.name, stats.items_in, stats.items_out, stats.seconds)
            )
        if self.trace is not None:
            self.trace.end()
