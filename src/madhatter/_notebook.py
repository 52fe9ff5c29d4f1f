"""Live progress of a run in a notebook: one display per run, updated in place; text elsewhere.

``Pipeline.execute(progress=None)`` (the default) shows a run's progress only in a Jupyter kernel
(Jupyter, JupyterLab, VS Code, ``jupyter console``, ``nbclient``): :class:`NotebookProgress`
creates one display with IPython's own ``display(obj, display_id=True)`` when the run starts and
replaces it in place as events arrive (at most every :data:`UPDATE_SECONDS`, and always when a step
or the run finishes, so the final state is exact). The displayed :class:`ProgressView` has an HTML
form (per-step bars, items, rate, ETA, cached, retried and skipped counts; inline styles, no
scripts, no widgets) and a plain text form, which front ends without HTML show instead.

Nowhere else does ``progress=None`` show anything: not in ``python script.py``, not in terminal
IPython, not in ``madhatter run`` (which draws its own bars) or the service's worker.
``progress=True`` shows the display in a kernel and :class:`TextProgress` on stderr anywhere else
(bars redrawn in place on a terminal, the final state once otherwise); ``progress=False`` never
shows anything.

IPython is never imported here: a kernel has already imported it, so when ``sys.modules`` has no
``IPython`` there is no kernel, and deciding costs nothing.
"""

from __future__ import annotations

import html
import importlib
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from ._events import Event, RunFinished, RunStarted, StepFinished
from ._progress import RunProgress, StepProgress, format_duration, format_rate

UPDATE_SECONDS = 0.25
"""The least time between two updates of a notebook display (a step or run finishing always
updates it)."""

TEXT_REDRAW_SECONDS = 0.1
BAR_WIDTH = 24


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (an IPython shell with a ``kernel``)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_listener(progress: bool | None) -> Callable[[Event], None] | None:
    """The listener ``Pipeline.execute(progress=...)`` adds, if any (see the module's docstring)."""
    if progress is False:
        return None
    if in_kernel():
        return NotebookProgress()
    if progress:
        return TextProgress(sys.stderr)
    return None


# -- what is shown ----------------------------------------------------------------------------


def _eta(step: StepProgress, rate: float) -> str:
    if step.finished:
        return "done"
    if step.total and rate:
        remaining = step.total - step.done
        if remaining > 0:
            return f"eta {format_duration(remaining / rate)}"
    return ""


def _extras(step: StepProgress) -> str:
    """The counts worth saying: items found in the cache, chunks retried, items skipped."""
    counts = ((step.cached, "cached"), (step.retries, "retried"), (step.skipped, "skipped"))
    return ", ".join(f"{n} {what}" for n, what in counts if n)


def step_cells(step: StepProgress, now: float) -> tuple[str, str, str, str, str, str]:
    """One step's columns as text: name, percent, items done/total, rate, ETA or done, extras."""
    rate = step.rate(now)
    count = f"{step.done}/{step.total}" if step.total is not None else f"{step.done}/?"
    shown_rate = format_rate(rate) if step.done else ""
    return (
        step.name,
        f"{step.percent:.0f}%",
        f"{count} items",
        shown_rate,
        _eta(step, rate),
        _extras(step),
    )


def text_bar(percent: float) -> str:
    filled = int(percent / 100 * BAR_WIDTH)
    return "#" * filled + "-" * (BAR_WIDTH - filled)


class ProgressView:
    """A snapshot of a run's progress with an HTML form (``_repr_html_``) and a text form."""

    def __init__(
        self,
        progress: RunProgress,
        *,
        pipeline: str = "",
        engine: str = "",
        workers: int | None = None,
        seconds: float = 0.0,
        dashboard: str | None = None,
        now: float | None = None,
    ) -> None:
        self.now = time.time() if now is None else now
        self.steps = [StepProgress(**_fields(step)) for step in progress.steps.values()]
        self.status = progress.status or "running"
        self.pipeline, self.engine, self.workers = pipeline, engine, workers
        self.seconds, self.dashboard = seconds, dashboard

    @property
    def skipped(self) -> int:
        return sum(step.skipped for step in self.steps)

    def _title(self) -> str:
        on = f" on {self.engine}" if self.engine else ""
        workers = f" ({self.workers} workers)" if self.workers else ""
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"{self.pipeline}{on}{workers}: {self.status} {self.seconds:.1f}s{skipped}"

    def __repr__(self) -> str:
        rows = [step_cells(step, self.now) for step in self.steps]
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
        lines = [self._title()]
        for step, (name, percent, count, rate, eta, extras) in zip(self.steps, rows, strict=True):
            parts = [
                name.ljust(widths[0]),
                text_bar(step.percent),
                percent.rjust(widths[1]),
                count.rjust(widths[2]),
                rate.rjust(widths[3]),
                eta,
                extras,
            ]
            lines.append("  ".join(parts).rstrip())
        if self.dashboard:
            lines.append(f"dashboard: {self.dashboard}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = {"succeeded": "#15803d", "failed": "#b91c1c", "cancelled": "#a16207"}
        title = html.escape(self._title())
        rows = "".join(self._row(step) for step in self.steps)
        dashboard = ""
        if self.dashboard:
            link = html.escape(self.dashboard)
            if self.dashboard.startswith(("http://", "https://")):
                link = f'<a href="{link}" target="_blank" rel="noopener">{link}</a>'
            dashboard = f'<div style="margin-top:4px">dashboard: {link}</div>'
        return (
            '<div class="madhatter-progress" style="font-family:monospace;font-size:12px">'
            f'<div style="font-weight:bold;color:{colour.get(self.status, "inherit")}">{title}</div>'
            f'<table style="border-collapse:collapse;margin-top:4px">{rows}</table>{dashboard}</div>'
        )

    def _row(self, step: StepProgress) -> str:
        name, percent, count, rate, eta, extras = (html.escape(c) for c in step_cells(step, self.now))
        fill = "#16a34a" if step.finished else "#4f46e5"
        if self.status in ("failed", "cancelled") and not step.finished:
            fill = "#dc2626"
        bar = (
            '<div style="width:160px;height:10px;background:#e5e7eb;border-radius:3px;overflow:hidden">'
            f'<div style="width:{step.percent:.1f}%;height:100%;background:{fill}"></div></div>'
        )
        if step.skipped:  # failures stand out
            extras = f'<span style="color:#b91c1c">{extras}</span>'
        left = '<td style="padding:1px 8px 1px 0;text-align:left;white-space:nowrap">'
        right = '<td style="padding:1px 8px 1px 0;text-align:right;white-space:nowrap">'
        cells = [left + name, left + bar, right + percent, right + count, right + rate]
        cells += [left + eta, left + extras]
        return "<tr>" + "".join(f"{cell}</td>" for cell in cells) + "</tr>"


def _fields(step: StepProgress) -> dict[str, Any]:
    return {name: getattr(step, name) for name in step.__dataclass_fields__}


# -- listeners --------------------------------------------------------------------------------


class _Shown:
    """What every progress listener keeps: the fold of the events and the run's description."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress = RunProgress()
        self._started: RunStarted | None = None
        self._seconds: float | None = None

    def _fold(self, event: Event) -> None:
        self._progress.add(event)
        if isinstance(event, RunStarted):
            self._started = event
        elif isinstance(event, RunFinished):
            self._seconds = event.seconds

    def view(self) -> ProgressView:
        started = self._started
        now = time.time()
        seconds = self._seconds
        if seconds is None:
            seconds = now - started.at if started is not None else 0.0
        return ProgressView(
            self._progress,
            pipeline=started.pipeline if started is not None else "",
            engine=started.engine if started is not None else "",
            workers=started.workers if started is not None else None,
            seconds=seconds,
            dashboard=started.dashboard if started is not None else None,
            now=now,
        )


class NotebookProgress(_Shown):
    """A listener showing one live display per run in a Jupyter kernel, updated in place."""

    def __init__(self, update_seconds: float = UPDATE_SECONDS) -> None:
        super().__init__()
        self._update_seconds = update_seconds
        self._handle: Any = None
        self._last = 0.0
        self.updates = 0  # how many times the display was replaced

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._fold(event)
            if isinstance(event, RunStarted):
                self._handle = _display(self.view())
                self._last = time.monotonic()
                return
            if self._handle is None:  # the run failed before it started
                return
            now = time.monotonic()
            final = isinstance(event, (StepFinished, RunFinished))
            if final or now - self._last >= self._update_seconds:
                self._last = now
                self._handle.update(self.view())
                self.updates += 1


def _display(shown: object) -> Any:
    """IPython's ``display(shown, display_id=True)``: a handle whose ``update`` replaces it."""
    display = importlib.import_module("IPython.display").display  # typed or not, as Any
    return display(shown, display_id=True)


class TextProgress(_Shown):
    """A listener writing the progress as text: redrawn in place on a terminal, else once at the
    end (``progress=True`` outside a kernel)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self._stream = stream
        try:
            self._live = stream.isatty()
        except (AttributeError, ValueError):
            self._live = False
        self._drawn = 0
        self._last = 0.0

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._fold(event)
            if isinstance(event, RunFinished):
                if self._started is not None:
                    self._draw()
                return
            if not self._live or self._started is None:
                return
            now = time.monotonic()
            if isinstance(event, StepFinished) or now - self._last >= TEXT_REDRAW_SECONDS:
                self._last = now
                self._draw()

    def _draw(self) -> None:
        lines = repr(self.view()).split("\n")
        if self._live:
            out = "\x1b[F" * self._drawn + "".join(f"\x1b[2K{line}\n" for line in lines)
            self._drawn = len(lines)
        else:
            out = "".join(f"{line}\n" for line in lines)
        self._stream.write(out)
        self._stream.flush()
