"""Listeners that show a run's progress: live bars, plain lines, or a JSON-lines file.

``ProgressBars`` redraws one line per step on a terminal (items done / total when known, rate,
ETA), at most ten times a second. ``ProgressLines`` is for logs and pipes: a line when a step
starts and finishes, and a progress line per step at most every few seconds. ``EventsWriter``
writes every event as one JSON object per line, the format ``madhatter run --events`` promises.
"""

from __future__ import annotations

import json
import time
from typing import IO

from .. import events
from .._progress import RunProgress, StepProgress, format_duration, format_rate

REDRAW_SECONDS = 0.1
PLAIN_PROGRESS_SECONDS = 5.0
BAR_WIDTH = 24


def _line(step: StepProgress, width: int) -> str:
    """One step's progress as a line of text: name, bar, count, rate, ETA or done."""
    rate = step.rate(time.time())
    if step.total:
        filled = int(min(1.0, step.done / step.total) * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        count = f"{step.done}/{step.total}"
        remaining = step.total - step.done
        eta = f"eta {format_duration(remaining / rate)}" if rate and remaining > 0 else ""
    else:
        bar, count, eta = "", f"{step.done}", ""
    state = "done" if step.finished else eta
    extras = "".join(
        f" {n} {what}"
        for n, what in ((step.cached, "cached"), (step.retries, "retried"), (step.skipped, "skipped"))
        if n
    )
    return f"{step.name:<{width}} {bar} {count} items  {format_rate(rate)}  {state}{extras}".rstrip()


class ProgressBars:
    """Live per-step progress bars, redrawn in place on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._progress = RunProgress()
        self._drawn = 0
        self._last = 0.0

    def __call__(self, event: events.Event) -> None:
        self._progress.add(event)
        if isinstance(event, events.RunStarted) and event.dashboard:
            self._stream.write(f"{event.engine} dashboard: {event.dashboard}\n")
        final = isinstance(event, (events.RunFinished, events.StepFinished))
        now = time.monotonic()
        if final or now - self._last >= REDRAW_SECONDS:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        steps = list(self._progress.steps.values())
        if not steps:
            return
        width = max(len(step.name) for step in steps)
        out = "\x1b[F" * self._drawn  # back to the first bar's line
        out += "".join(f"\x1b[2K{_line(step, width)}\n" for step in steps)
        self._stream.write(out)
        self._stream.flush()
        self._drawn = len(steps)


class ProgressLines:
    """Plain progress lines, for logs and pipes."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._progress = RunProgress()
        self._last: dict[str, float] = {}

    def __call__(self, event: events.Event) -> None:
        step = self._progress.add(event)
        if isinstance(event, events.RunStarted) and event.dashboard:
            self._say(f"{event.engine} dashboard: {event.dashboard}")
        elif isinstance(event, events.StepStarted):
            total = f" ({event.total} items)" if event.total is not None else ""
            self._last[event.step] = time.monotonic()
            self._say(f"step {event.step} started{total}")
        elif isinstance(event, events.StepFinished):
            cached = step.cached if step is not None else 0
            from_cache = f" ({cached} from cache)" if cached else ""
            self._say(
                f"step {event.step} finished: {event.items_in} in{from_cache}, "
                f"{event.items_out} out, {event.seconds:.2f}s of work"
            )
        elif isinstance(event, events.ChunkRetried):
            self._say(f"step {event.step} chunk {event.chunk} retry {event.attempt}: {event.error}")
        elif isinstance(event, events.ItemSkipped):
            self._say(f"step {event.step} skipped item {event.item}: {event.error}")
        elif isinstance(event, events.RunFinished):
            self._say(f"run {event.status} in {event.seconds:.2f}s")
        elif step is not None and isinstance(event, events.ChunkDone):
            now = time.monotonic()
            if now - self._last.setdefault(step.name, now) >= PLAIN_PROGRESS_SECONDS:
                self._last[step.name] = now
                self._say(_line(step, len(step.name)))

    def _say(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class EventsWriter:
    """Writes each event as one JSON object per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: events.Event) -> None:
        self._stream.write(json.dumps(event.to_dict(), default=repr) + "\n")
        self._stream.flush()
