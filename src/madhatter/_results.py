"""What a run hands back: the :class:`RunReport`, its per-step :class:`StepStats`, and the
:class:`SkippedItem` records of ``on_error="skip"`` steps.

Plain data, importable from anywhere (workers build ``SkippedItem`` records too), and exported
as ``madhatter.RunReport``, ``madhatter.StepStats`` and ``madhatter.SkippedItem``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ._events import Event

RECORDED_CHUNKS = 200_000
"""A report keeps at most this many ``ChunkDone`` events (its timeline); the rest are counted."""


@dataclasses.dataclass(frozen=True)
class SkippedItem:
    """An item a step with ``on_error="skip"`` left out: which, where, and why."""

    step: str
    chunk: int
    item: Any
    error: str
    traceback: str


@dataclasses.dataclass
class StepStats:
    """What one step did over the whole run."""

    items_in: int = 0
    items_out: int = 0
    chunks: int = 0
    seconds: float = 0.0
    cached: int = 0
    """Of ``items_in``, how many were found in the chunk cache instead of run."""


@dataclasses.dataclass(frozen=True)
class RunReport:
    """Everything a run produced: the result, the items it skipped, and per-step statistics."""

    run_id: str
    result: Any
    skipped: tuple[SkippedItem, ...]
    steps: Mapping[str, StepStats]
    seconds: float
    events: tuple[Event, ...] = ()
    """The run's progress events, for a report of it (``ChunkDone`` beyond
    :data:`RECORDED_CHUNKS` are left out; ``events_dropped`` counts them)."""
    events_dropped: int = 0

    def to_html(self) -> str:
        """The run as one self-contained HTML page (no external assets): its graph, a timeline
        of chunks per worker, per-step statistics, parameters, engine and versions."""
        from .report import render_html

        return render_html(self)
