"""Fold a run's progress events into per-step progress: the one account of how far a run got.

``madhatter run`` draws its bars and lines from it; the service's run page and live stream show
it, after reading the events back from the store. Both feed it the same events, so both show the
same numbers. Times are the events' own ``at`` (wall clock), so folding stored events later gives
what folding them live gave.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._events import (
    ChunkDone,
    ChunkRetried,
    Event,
    ItemSkipped,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    StepTotalKnown,
)


@dataclasses.dataclass
class StepProgress:
    """One step's progress: items done of total (when known), items out, work time, state."""

    name: str
    total: int | None = None
    done: int = 0
    items_out: int = 0
    work_seconds: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    retries: int = 0
    skipped: int = 0
    cached: int = 0  # of ``done``, found in the chunk cache

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def percent(self) -> float:
        """How much of the step is done, 0 to 100 (0 while its total is unknown)."""
        if self.finished:
            return 100.0
        if self.total:
            return min(100.0, 100.0 * self.done / self.total)
        return 0.0

    def rate(self, now: float) -> float:
        """Items per second since the step started (until it finished, once it has)."""
        if self.started_at is None:
            return 0.0
        elapsed = (self.finished_at or now) - self.started_at
        return self.done / elapsed if elapsed > 0 else 0.0

    def to_dict(self, now: float) -> dict[str, Any]:
        """The fields, with ``percent`` and ``rate``, as JSON values."""
        data = dataclasses.asdict(self)
        data["percent"] = round(self.percent, 1)
        data["rate"] = round(self.rate(now), 2)
        return data


class RunProgress:
    """The fold of one run's events: each step's progress, in plan order, and how the run ended."""

    def __init__(self) -> None:
        self.steps: dict[str, StepProgress] = {}
        self.status: str | None = None

    def add(self, event: Event) -> StepProgress | None:
        """Fold in one event; returns the step it is about, if it is about one."""
        if isinstance(event, RunStarted):
            for name in event.steps:
                self.steps.setdefault(name, StepProgress(name))
            return None
        if isinstance(event, RunFinished):
            self.status = event.status
            return None
        step_name = getattr(event, "step", None)
        if not isinstance(step_name, str):
            return None
        step = self.steps.setdefault(step_name, StepProgress(step_name))
        if isinstance(event, StepStarted):
            step.started_at, step.total = event.at, event.total
        elif isinstance(event, StepTotalKnown):
            step.total = event.total
        elif isinstance(event, ChunkDone):
            step.done += event.items_in
            step.cached += event.cached
            step.items_out += event.items_out
            step.work_seconds += event.seconds
            if step.started_at is None:
                step.started_at = event.started_at
        elif isinstance(event, ChunkRetried):
            step.retries += 1
        elif isinstance(event, ItemSkipped):
            step.skipped += 1
        elif isinstance(event, StepFinished):
            step.finished_at = event.at
            step.done = max(step.done, event.items_in)
            step.items_out = event.items_out
            if step.total is None:
                step.total = step.done
            if step.started_at is None:
                step.started_at = event.at - event.seconds
        return step


def format_rate(per_second: float) -> str:
    """Items per second, short: ``12.3/s``, ``4.5k/s``, ``6.7M/s`` (progress bars and displays)."""
    if per_second >= 1e6:
        return f"{per_second / 1e6:.1f}M/s"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f}k/s"
    return f"{per_second:.1f}/s"


def format_duration(seconds: float) -> str:
    """Whole seconds, or minutes and seconds past a minute: ``42s``, ``3m07s`` (ETAs)."""
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"
