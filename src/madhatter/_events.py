"""Progress is a stream of frozen events sent to listeners.

The runner emits these as a run goes; the CLI's progress bars, the ``--events`` JSON-lines writer and
the service's worker are all listeners. A listener is any callable taking one event. A listener that
raises is logged and dropped, so a broken progress bar can never break a run.

Every event is a frozen dataclass whose fields are plain JSON values, so ``event.to_dict()`` and
``event_from_dict()`` move it across a process or a network unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger("madhatter")

Listener = Callable[["Event"], None]
"""Anything that takes an event: a function, or an object with ``__call__``."""


def _now() -> float:
    return time.time()


@dataclasses.dataclass(frozen=True)
class Event:
    """Base of all events. ``at`` is wall-clock time (seconds since the epoch)."""

    run_id: str
    at: float = dataclasses.field(default_factory=_now, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``type`` key naming the event class."""
        data = dataclasses.asdict(self)
        data["type"] = type(self).__name__
        return data


@dataclasses.dataclass(frozen=True)
class RunStarted(Event):
    """A run began. ``steps`` lists every step in the order they were planned; ``dashboard`` is
    the engine's own live view (e.g. Dask's), when it has one. ``edges`` are the graph's
    ``(upstream, step)`` pairs; ``params`` the run parameters given (as ``repr`` text);
    ``versions`` of Python, madhatter and the platform, for a report of the run."""

    pipeline: str
    engine: str
    workers: int
    steps: tuple[str, ...]
    dashboard: str | None = None
    edges: tuple[tuple[str, str], ...] = ()
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepStarted(Event):
    """A step began. ``total`` is the number of items it will receive, when known up front."""

    step: str
    total: int | None = None


@dataclasses.dataclass(frozen=True)
class StepTotalKnown(Event):
    """The number of items a step receives became known while it ran."""

    step: str
    total: int


@dataclasses.dataclass(frozen=True)
class ChunkDone(Event):
    """A step finished one chunk: ``items_in`` went in, ``items_out`` came out.

    ``seconds`` is the time the step's function spent on the chunk on the worker; ``worker`` names
    the worker (thread, process or cluster worker; ``"cache"`` when the whole chunk was found in
    the chunk cache) and ``started_at`` is when the task began there. ``cached`` of the
    ``items_in`` were found in the chunk cache, not run.
    """

    step: str
    chunk: int
    items_in: int
    items_out: int
    seconds: float
    worker: str
    started_at: float
    cached: int = 0


@dataclasses.dataclass(frozen=True)
class ChunkRetried(Event):
    """A chunk failed and will be tried again (``attempt`` counts from 1 for the first retry)."""

    step: str
    chunk: int
    attempt: int
    error: str


@dataclasses.dataclass(frozen=True)
class ChunkSplit(Event):
    """A chunk's items ``start:stop`` lost their worker or ran past the timeout (``error`` says
    which) with no retries left, so they are run again as two halves, on the engine, to find the
    items that fail (see docs/guide.md, "Errors and faults")."""

    step: str
    chunk: int
    start: int
    stop: int
    error: str


@dataclasses.dataclass(frozen=True)
class ConcurrencyReduced(Event):
    """A worker running the step was killed for lack of memory, so at most ``concurrency``
    chunks of the step now run at once (it was ``was``)."""

    step: str
    concurrency: int
    was: int
    error: str


@dataclasses.dataclass(frozen=True)
class ItemSkipped(Event):
    """An item failed in a step whose ``on_error="skip"``; it is left out and reported."""

    step: str
    chunk: int
    item: str
    error: str


@dataclasses.dataclass(frozen=True)
class ChunkOutput(Event):
    """What a step printed (``stream`` stdout or stderr) or logged (``log``) while it ran one
    chunk, when the run captures output (``Pipeline.execute(capture_output=True)``)."""

    step: str
    chunk: int
    stream: str
    text: str


@dataclasses.dataclass(frozen=True)
class StepFinished(Event):
    """A step has produced all its output."""

    step: str
    items_in: int
    items_out: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class RunFinished(Event):
    """A run ended. ``status`` is ``succeeded``, ``failed`` or ``cancelled``."""

    status: str
    seconds: float
    error: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        RunStarted,
        StepStarted,
        StepTotalKnown,
        ChunkDone,
        ChunkRetried,
        ChunkSplit,
        ConcurrencyReduced,
        ItemSkipped,
        ChunkOutput,
        StepFinished,
        RunFinished,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from ``Event.to_dict()`` output (e.g. a line of an ``--events`` file)."""
    fields = dict(data)
    cls = EVENT_TYPES[fields.pop("type")]
    if "steps" in fields:
        fields["steps"] = tuple(fields["steps"])
    if "edges" in fields:
        fields["edges"] = tuple(tuple(edge) for edge in fields["edges"])
    return cls(**fields)


class Emitter:
    """Sends each event to every listener; a listener that raises is logged and dropped."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners = list(listeners)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("progress listener %r raised; it will get no more events", listener)
                self._listeners.remove(listener)
