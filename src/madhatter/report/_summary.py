"""Fold a run's events into what its report shows: the run, each step's row, the timeline's bars.

The per-step numbers are the core's fold (:class:`madhatter._progress.RunProgress`), the one the
progress bars and the service's run page use, so the report shows the same numbers they did. This
adds what only the report shows: chunks, splits and skipped items per step, and one timeline bar per
chunk (and one per driver step, on the lane ``driver``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .._events import (
    EVENT_TYPES,
    ChunkDone,
    ChunkRetried,
    ChunkSplit,
    ConcurrencyReduced,
    Event,
    ItemSkipped,
    RunFinished,
    RunStarted,
    StepFinished,
    event_from_dict,
)
from .._progress import RunProgress
from .._results import StepStats

TIMELINE_LIMIT = 20_000
"""Bars drawn on the timeline at most (the first ones): each is a few hundred bytes of SVG."""

SHORTEST_RATED = 0.005
"""A step's throughput is shown only when it took this many seconds or more (shorter is noise)."""

DRIVER_LANE = "driver"
"""The timeline lane of steps that run on the driver (``@preprocess``, ``@postprocess``)."""


@dataclasses.dataclass(frozen=True)
class Bar:
    """One chunk (or one driver step) on one worker: a bar of the timeline."""

    worker: str
    step: str
    chunk: int | None
    start: float
    seconds: float
    items: int
    cached: int = 0


@dataclasses.dataclass
class StepRow:
    """One step's line of the report's table."""

    name: str
    items_in: int = 0
    items_out: int = 0
    cached: int = 0
    chunks: int = 0
    work_seconds: float = 0.0
    wall_seconds: float | None = None
    retries: int = 0
    splits: int = 0
    started: bool = False
    finished: bool = False
    skipped: list[ItemSkipped] = dataclasses.field(default_factory=list)

    @property
    def throughput(self) -> float | None:
        """Items per second of the step's wall time (items in; out for a source), once it has
        one long enough to mean something (:data:`SHORTEST_RATED` seconds)."""
        if self.wall_seconds is None or self.wall_seconds < SHORTEST_RATED:
            return None
        return (self.items_in or self.items_out) / self.wall_seconds


@dataclasses.dataclass
class Summary:
    """Everything the report shows, folded from the events (see the module docstring)."""

    run_id: str = ""
    pipeline: str = ""
    engine: str = ""
    workers: int | None = None
    dashboard: str | None = None
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    edges: tuple[tuple[str, str], ...] = ()
    started: bool = False  # a RunStarted was seen
    started_at: float | None = None
    finished_at: float | None = None
    status: str = "running"
    seconds: float | None = None
    error: str | None = None
    steps: dict[str, StepRow] = dataclasses.field(default_factory=dict)
    bars: list[Bar] = dataclasses.field(default_factory=list)
    bars_left_out: int = 0
    incidents: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    events: int = 0
    dropped: int = 0


def summarize(
    events: Iterable[Event],
    *,
    dropped: int = 0,
    stats: Mapping[str, StepStats] | None = None,
    status: str | None = None,
    seconds: float | None = None,
    error: str | None = None,
) -> Summary:
    """Fold ``events`` (in the order they were emitted). ``stats``, a run report's own per-step
    statistics, win over the events' sums (they count the chunks whose events were dropped);
    ``status``, ``seconds`` and ``error`` stand in when no ``RunFinished`` event says how the run
    ended (a report is made before it is emitted; a service's record knows)."""
    summary = Summary(dropped=dropped)
    progress = RunProgress()
    finished_steps: dict[str, StepFinished] = {}
    for event in events:
        summary.events += 1
        progress.add(event)
        if not summary.run_id:
            summary.run_id = event.run_id
        if isinstance(event, RunStarted):
            summary.started, summary.started_at = True, event.at
            summary.pipeline, summary.engine, summary.workers = (
                event.pipeline,
                event.engine,
                event.workers,
            )
            summary.dashboard, summary.edges = event.dashboard, tuple(event.edges)
            summary.params, summary.versions = dict(event.params), dict(event.versions)
            for name in event.steps:  # the table in plan order
                _row(summary, name)
        elif isinstance(event, RunFinished):
            summary.finished_at, summary.status = event.at, event.status
            summary.seconds, summary.error = event.seconds, event.error
        elif isinstance(event, ChunkDone):
            _row(summary, event.step).chunks += 1
            if len(summary.bars) < TIMELINE_LIMIT:
                summary.bars.append(
                    Bar(
                        event.worker,
                        event.step,
                        event.chunk,
                        event.started_at,
                        event.seconds,
                        event.items_in,
                        event.cached,
                    )
                )
            else:
                summary.bars_left_out += 1
        elif isinstance(event, ItemSkipped):
            _row(summary, event.step).skipped.append(event)
        elif isinstance(event, ChunkRetried):
            text = f"step {event.step} chunk {event.chunk}: retry {event.attempt} after {event.error}"
            summary.incidents.append((event.at, text))
        elif isinstance(event, ChunkSplit):
            _row(summary, event.step).splits += 1
            text = (
                f"step {event.step} chunk {event.chunk}: items {event.start}:{event.stop} "
                f"split in two after {event.error}"
            )
            summary.incidents.append((event.at, text))
        elif isinstance(event, ConcurrencyReduced):
            text = (
                f"step {event.step}: at most {event.concurrency} chunks at once "
                f"(was {event.was}) after {event.error}"
            )
            summary.incidents.append((event.at, text))
        elif isinstance(event, StepFinished):
            finished_steps[event.step] = event
    if summary.finished_at is None:
        summary.status = status or summary.status
        summary.seconds = seconds
        summary.error = error
    for name, step in progress.steps.items():
        row = _row(summary, name)
        row.items_in, row.items_out, row.cached = step.done, step.items_out, step.cached
        row.work_seconds, row.retries = step.work_seconds, step.retries
        row.started, row.finished = step.started_at is not None, step.finished
        if step.started_at is not None and step.finished_at is not None:
            row.wall_seconds = max(step.finished_at - step.started_at, 0.0)
        done = finished_steps.get(name)
        if done is not None:
            row.work_seconds = max(row.work_seconds, done.seconds)
            if row.chunks == 0:  # a driver step: one call, drawn on the driver's lane
                row.chunks = 1
                if len(summary.bars) < TIMELINE_LIMIT:
                    start = done.at - done.seconds
                    summary.bars.append(Bar(DRIVER_LANE, name, None, start, done.seconds, done.items_in))
                else:
                    summary.bars_left_out += 1
        if stats and name in stats:
            own = stats[name]
            row.items_in, row.items_out, row.cached = own.items_in, own.items_out, own.cached
            row.chunks, row.work_seconds = own.chunks, own.seconds
    return summary


def _row(summary: Summary, step: str) -> StepRow:
    return summary.steps.setdefault(step, StepRow(step))


def events_from_dicts(stored: Iterable[Mapping[str, Any]]) -> list[Event]:
    """Events from their ``to_dict()`` form (an ``--events`` file, a store), in order; entries of
    a kind this version does not know, or missing a field, are left out, and keys an event does
    not have (a store's own tags) are ignored."""
    events: list[Event] = []
    for data in stored:
        cls = EVENT_TYPES.get(str(data.get("type")))
        if cls is None:
            continue
        fields = {field.name for field in dataclasses.fields(cls)} | {"type"}
        try:
            events.append(event_from_dict({k: v for k, v in data.items() if k in fields}))
        except (TypeError, ValueError):
            continue
    return events
