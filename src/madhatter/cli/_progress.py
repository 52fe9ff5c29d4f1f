"""Listeners that show a run's progress: live bars, plain lines, or a JSON-lines file.

``ProgressBars`` redraws one line per step on a terminal (items done / total when known, rate,
ETA), at most ten times a second. ``ProgressLines`` is for logs and pipes: a line when a step
starts and finishes, and a progress line per step at most every few seconds. ``EventsWriter``
writes every event as one JSON object per line, the format ``madhatter run --events`` promises.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import IO

from .._events import (
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

REDRAW_SECONDS = 0.1
PLAIN_PROGRESS_SECONDS = 5.0
BAR_WIDTH = 24


@dataclasses.dataclass
class _StepProgress:
    name: str
    total: int | None = None
    done: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    finished: float | None = None
    retries: int = 0
    skipped: int = 0

    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, width: int) -> str:
        rate = self.rate()
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            count = f"{self.done}/{self.total}"
            remaining = self.total - self.done
            eta = f"eta {_duration(remaining / rate)}" if rate and remaining > 0 else ""
        else:
            bar, count, eta = "", f"{self.done}", ""
        state = "done" if self.finished is not None else eta
        extras = "".join(
            f" {n} {what}" for n, what in ((self.retries, "retried"), (self.skipped, "skipped")) if n
        )
        text = f"{self.name:<{width}} {bar} {count} items  {_rate(rate)}  {state}{extras}"
        return text.rstrip()


def _rate(per_second: float) -> str:
    if per_second >= 1e6:
        return f"{per_second / 1e6:.1f}M/s"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f}k/s"
    return f"{per_second:.1f}/s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Tracker:
    """Keeps per-step counts from the event stream; the two displays share it."""

    def __init__(self) -> None:
        self.steps: dict[str, _StepProgress] = {}
        self.status: str | None = None

    def update(self, event: Event) -> _StepProgress | None:
        if isinstance(event, RunStarted):
            for step_name in event.steps:
                self.steps.setdefault(step_name, _StepProgress(step_name))
            return None
        if isinstance(event, RunFinished):
            self.status = event.status
            return None
        name: str | None = getattr(event, "step", None)
        if name is None:
            return None
        step = self.steps.setdefault(name, _StepProgress(name))
        if isinstance(event, StepStarted):
            step.total, step.started = event.total, time.monotonic()
        elif isinstance(event, StepTotalKnown):
            step.total = event.total
        elif isinstance(event, ChunkDone):
            step.done += event.items_in
        elif isinstance(event, ChunkRetried):
            step.retries += 1
        elif isinstance(event, ItemSkipped):
            step.skipped += 1
        elif isinstance(event, StepFinished):
            step.finished = time.monotonic()
            step.done = max(step.done, event.items_in)
            if step.total is None:
                step.total = step.done or None
        return step


class ProgressBars:
    """Live per-step progress bars, redrawn in place on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tracker = _Tracker()
        self._drawn = 0
        self._last = 0.0

    def __call__(self, event: Event) -> None:
        self._tracker.update(event)
        if isinstance(event, RunStarted) and event.dashboard:
            self._stream.write(f"{event.engine} dashboard: {event.dashboard}\n")
        final = isinstance(event, (RunFinished, StepFinished))
        now = time.monotonic()
        if final or now - self._last >= REDRAW_SECONDS:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        steps = list(self._tracker.steps.values())
        if not steps:
            return
        width = max(len(step.name) for step in steps)
        out = "\x1b[F" * self._drawn  # back to the first bar's line
        out += "".join(f"\x1b[2K{step.line(width)}\n" for step in steps)
        self._stream.write(out)
        self._stream.flush()
        self._drawn = len(steps)


class ProgressLines:
    """Plain progress lines, for logs and pipes."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tracker = _Tracker()
        self._last: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        step = self._tracker.update(event)
        if isinstance(event, RunStarted) and event.dashboard:
            self._say(f"{event.engine} dashboard: {event.dashboard}")
        elif isinstance(event, StepStarted):
            total = f" ({event.total} items)" if event.total is not None else ""
            self._say(f"step {event.step} started{total}")
        elif isinstance(event, StepFinished):
            self._say(
                f"step {event.step} finished: {event.items_in} in, {event.items_out} out, "
                f"{event.seconds:.2f}s of work"
            )
        elif isinstance(event, ChunkRetried):
            self._say(f"step {event.step} chunk {event.chunk} retry {event.attempt}: {event.error}")
        elif isinstance(event, ItemSkipped):
            self._say(f"step {event.step} skipped item {event.item}: {event.error}")
        elif isinstance(event, RunFinished):
            self._say(f"run {event.status} in {event.seconds:.2f}s")
        elif step is not None and isinstance(event, ChunkDone):
            now = time.monotonic()
            if now - self._last.get(step.name, step.started) >= PLAIN_PROGRESS_SECONDS:
                self._last[step.name] = now
                self._say(step.line(len(step.name)))

    def _say(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class EventsWriter:
    """Writes each event as one JSON object per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        self._stream.write(json.dumps(event.to_dict(), default=repr) + "\n")
        self._stream.flush()
