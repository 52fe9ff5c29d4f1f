"""A run as one self-contained HTML page: ``RunReport.to_html()``, ``madhatter run --report``, and
the service's report download.

The page is made from the run's progress events alone (:func:`render_events_html`), so a finished
run's report, a failed run's recorded events and a service's stored events all give the same page:
the graph, a timeline of chunks per worker, per-step statistics, skipped items with their errors,
retries, the parameters, the engine and the versions. See docs/reports.md.

The modules, each with one job::

    _summary.py   fold the events into the run, a row per step and the timeline's bars
    _dag.py       the graph as inline SVG, laid out by the graph renderer's layering
    _timeline.py  chunks per worker over time, as inline SVG
    _html.py      the page: inline CSS, no script, no URL, every user string escaped
    _text.py      control characters made visible, labels cut
"""

from __future__ import annotations

import pprint
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._events import Event, RunFinished
from ._html import page
from ._summary import events_from_dicts, summarize

if TYPE_CHECKING:
    from .._results import RunReport, StepStats

PREVIEW_CHARS = 4000
"""Characters of the result's ``pprint`` text a report shows."""


def result_preview(result: Any) -> str:
    """A short text view of a run's result, for its report."""
    try:
        text = pprint.pformat(result, sort_dicts=False, width=100)
    except Exception as exc:  # a user's __repr__ may raise
        text = f"<the result could not be shown: {type(exc).__name__}: {exc}>"
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "\n..."


def render_events_html(
    events: Iterable[Event],
    *,
    dropped: int = 0,
    stats: Mapping[str, StepStats] | None = None,
    status: str | None = None,
    seconds: float | None = None,
    error: str | None = None,
    traceback: str | None = None,
    result_preview: str | None = None,
    title: str | None = None,
) -> str:
    """The report page of a run from its progress events, in the order they were emitted.

    Args:
        events: the run's events (``RunReport.events``, a listener's, or a store's, rebuilt with
            :func:`events_from_dicts`).
        dropped: how many events were left out (the page says its timeline is incomplete).
        stats: the run's own per-step statistics, when known; they win over the events' sums.
        status, seconds, error: how the run ended, when no ``RunFinished`` event says so.
        traceback: the error's traceback, shown under it.
        result_preview: a text view of the result, shown at the end.
        title: the page's heading (default: ``Run <id> of <pipeline>``).

    Returns:
        A complete HTML document: no script, no external asset, no URL.
    """
    summary = summarize(
        events, dropped=dropped, stats=stats, status=status, seconds=seconds, error=error
    )
    return page(summary, result_preview=result_preview, traceback=traceback, title=title)


def render_html(report: RunReport) -> str:
    """The report page of a finished run (what ``RunReport.to_html()`` returns)."""
    finished = any(isinstance(event, RunFinished) for event in report.events)
    return render_events_html(
        report.events,
        dropped=report.events_dropped,
        stats=report.steps,
        status=None if finished else "succeeded",  # a report is made only for a run that did
        seconds=None if finished else report.seconds,
        result_preview=result_preview(report.result),
    )


__all__ = ["events_from_dicts", "render_events_html", "render_html", "result_preview"]
