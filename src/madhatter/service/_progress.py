"""Fold a run's stored events into what its page shows: per-step progress, a timeline, logs.

Only the events of the run's current attempt count (a run re-queued after its worker died starts
over); earlier attempts' log lines are kept, so the page tells what happened. The fold is
incremental (:meth:`RunProgress.add`), so the live stream updates it as events arrive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

TIMELINE_LIMIT = 2000
"""Tasks kept for the timeline chart (the first ones; a huge run's chart would not be readable)."""


@dataclasses.dataclass
class StepProgress:
    """One step's progress: items done of total (when known), work time, state."""

    name: str
    total: int | None = None
    done: int = 0
    items_out: int = 0
    work_seconds: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    retries: int = 0
    skipped: int = 0

    @property
    def percent(self) -> float:
        if self.finished_at is not None:
            return 100.0
        if self.total:
            return min(100.0, 100.0 * self.done / self.total)
        return 0.0

    def rate(self, now: float) -> float:
        """Items per second since the step started."""
        if self.started_at is None:
            return 0.0
        elapsed = (self.finished_at or now) - self.started_at
        return self.done / elapsed if elapsed > 0 else 0.0

    def to_dict(self, now: float) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["percent"] = round(self.percent, 1)
        data["rate"] = round(self.rate(now), 2)
        return data


@dataclasses.dataclass(frozen=True)
class Task:
    """One chunk on one engine worker, for the timeline."""

    worker: str
    step: str
    chunk: int
    start: float
    seconds: float


class RunProgress:
    """The fold of one run's events (see the module docstring)."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.steps: dict[str, StepProgress] = {}
        self.tasks: list[Task] = []
        self.logs: list[tuple[float, str]] = []
        self.engine: str | None = None
        self.last_at: float = 0.0

    def add_all(self, events: Iterable[dict[str, Any]]) -> RunProgress:
        for event in events:
            self.add(event)
        return self

    def add(self, event: dict[str, Any]) -> None:
        kind, at = event.get("type"), float(event.get("at", 0.0))
        if kind == "Log":
            self.logs.append((at, str(event.get("message", ""))))
            return
        if event.get("attempt", self.attempt) != self.attempt:
            return
        self.last_at = max(self.last_at, at)
        if kind == "RunStarted":
            self.engine = f"{event.get('engine')} ({event.get('workers')} workers)"
            for name in event.get("steps", ()):
                self.steps.setdefault(name, StepProgress(name))
            return
        if kind == "RunFinished":
            error = f": {event['error']}" if event.get("error") else ""
            self.logs.append(
                (at, f"run {event.get('status')} after {event.get('seconds', 0):.2f}s{error}")
            )
            return
        name = event.get("step")
        if not isinstance(name, str):
            return
        step = self.steps.setdefault(name, StepProgress(name))
        if kind == "StepStarted":
            step.started_at, step.total = at, event.get("total")
        elif kind == "StepTotalKnown":
            step.total = event.get("total")
        elif kind == "ChunkDone":
            step.done += int(event.get("items_in", 0))
            step.items_out += int(event.get("items_out", 0))
            step.work_seconds += float(event.get("seconds", 0.0))
            if step.started_at is None:
                step.started_at = float(event.get("started_at", at))
            if len(self.tasks) < TIMELINE_LIMIT:
                start = float(event.get("started_at", at))
                task = Task(
                    str(event.get("worker")),
                    name,
                    int(event.get("chunk", 0)),
                    start,
                    float(event.get("seconds", 0.0)),
                )
                self.tasks.append(task)
        elif kind == "ChunkRetried":
            step.retries += 1
            self.logs.append(
                (at, f"step {name} chunk {event.get('chunk')} retried: {event.get('error')}")
            )
        elif kind == "ItemSkipped":
            step.skipped += 1
            self.logs.append((at, f"step {name} skipped item {event.get('item')}: {event.get('error')}"))
        elif kind == "StepFinished":
            step.finished_at = at
            step.done = max(step.done, int(event.get("items_in", 0)))
            step.items_out = int(event.get("items_out", step.items_out))
            if step.total is None:
                step.total = step.done
            if step.started_at is None:
                step.started_at = at - float(event.get("seconds", 0.0))

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The steps' progress as JSON-ready dicts, in plan order."""
        return [step.to_dict(now) for step in self.steps.values()]
