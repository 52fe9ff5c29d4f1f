"""What a run's page shows, from its stored events: per-step progress, a timeline, the log, and
what the steps printed and logged (``ChunkOutput``, the first :data:`PAGE_OUTPUT_CHARACTERS`).

The per-step progress is the core's fold (:class:`madhatter._progress.RunProgress`, the same one
``madhatter run`` draws its bars from); this adds what only the page shows: the engine, the log
lines and one timeline bar per chunk. Only the events of the run's current attempt count (a run
re-queued after its worker died starts over); earlier attempts' log lines are kept, so the page
tells what happened. The fold is incremental (:meth:`RunView.add`), so the live stream updates it
as events arrive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .._events import (
    EVENT_TYPES,
    ChunkDone,
    ChunkOutput,
    ChunkRetried,
    ItemSkipped,
    RunFinished,
    RunStarted,
    event_from_dict,
)
from .._progress import RunProgress

PAGE_OUTPUT_CHARACTERS = 1024 * 1024
"""What a run's page shows of its steps' output (all of it is over the API's events)."""

TIMELINE_LIMIT = 2000
"""Bars kept for the timeline chart (the first ones; a huge run's chart would not be readable)."""


@dataclasses.dataclass(frozen=True)
class TimelineBar:
    """One chunk on one engine worker: a bar of the run page's timeline."""

    worker: str
    step: str
    chunk: int
    start: float
    seconds: float


class RunView:
    """The page's fold of one run's stored events (see the module docstring)."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.progress = RunProgress()
        self.bars: list[TimelineBar] = []
        self.logs: list[tuple[float, str]] = []
        self.outputs: list[tuple[str, int, str, str]] = []  # step, chunk, stream, text
        self.outputs_left_out = 0
        self.engine: str | None = None
        self._output_size = 0

    def add_all(self, events: Iterable[dict[str, Any]]) -> RunView:
        for event in events:
            self.add(event)
        return self

    def add(self, stored: dict[str, Any]) -> None:
        """Fold in one stored event: a worker's ``Log`` line, or a progress event as a dict."""
        kind = stored.get("type")
        if kind == "Log":
            self.logs.append((float(stored.get("at", 0.0)), str(stored.get("message", ""))))
            return
        cls = EVENT_TYPES.get(str(kind))
        if cls is None or stored.get("attempt", self.attempt) != self.attempt:
            return  # a kind this version does not know, or an earlier attempt's
        fields = {field.name for field in dataclasses.fields(cls)} | {"type"}
        try:  # without the store's own keys (its "attempt" tag, unless the event has one)
            event = event_from_dict({k: v for k, v in stored.items() if k in fields})
        except TypeError:
            return  # a field missing: a worker of another version wrote it
        self.progress.add(event)
        if isinstance(event, RunStarted):
            self.engine = f"{event.engine} ({event.workers} workers)"
        elif isinstance(event, RunFinished):
            error = f": {event.error}" if event.error else ""
            self.logs.append((event.at, f"run {event.status} after {event.seconds:.2f}s{error}"))
        elif isinstance(event, ChunkDone) and len(self.bars) < TIMELINE_LIMIT:
            bar = TimelineBar(event.worker, event.step, event.chunk, event.started_at, event.seconds)
            self.bars.append(bar)
        elif isinstance(event, ChunkRetried):
            self.logs.append((event.at, f"step {event.step} chunk {event.chunk} retried: {event.error}"))
        elif isinstance(event, ItemSkipped):
            self.logs.append((event.at, f"step {event.step} skipped item {event.item}: {event.error}"))
        elif isinstance(event, ChunkOutput):
            if self._output_size + len(event.text) > PAGE_OUTPUT_CHARACTERS:
                self.outputs_left_out += len(event.text)
                return
            self._output_size += len(event.text)
            key = (event.step, event.chunk, event.stream)
            if self.outputs and self.outputs[-1][:3] == key:  # a running chunk's next lines
                self.outputs[-1] = (*key, self.outputs[-1][3] + event.text)
            else:
                self.outputs.append((*key, event.text))

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The steps' progress as JSON-ready dicts, in plan order."""
        return [step.to_dict(now) for step in self.progress.steps.values()]


def cache_share(
    steps: Iterable[Mapping[str, Any]], cacheable: Collection[str] | None
) -> tuple[int, int]:
    """A run's line about the chunk cache: ``(found, of)``, the items found in the cache and the
    items in, summed over the steps the cache keeps (``cacheable``: the parallel steps not made
    with ``cache=False``; when the pipeline is not known, those with any found). Driver steps are
    left out: they always run, and would make a run found whole look half computed. ``steps`` are
    :meth:`RunView.snapshot`'s; ``static/run.js`` sums the same way."""
    found = of = 0
    for step in steps:
        if step["name"] in cacheable if cacheable is not None else step["cached"] > 0:
            found, of = found + step["cached"], of + step["done"]
    return found, of
