"""The run page's view of a run: the same per-step fold as ``madhatter run``'s, from stored events,
plus the timeline and the log; only the current attempt's events count."""

from __future__ import annotations

from typing import Any

from madhatter._events import (
    ChunkDone,
    ChunkOutput,
    ChunkRetried,
    Event,
    ItemSkipped,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from madhatter._progress import RunProgress
from madhatter.service._progress import RunView, TimelineBar

EVENTS: list[Event] = [
    RunStarted("r", pipeline="p", engine="threads", workers=2, steps=("load", "work"), at=10.0),
    StepStarted("r", step="work", total=4, at=10.0),
    ChunkDone("r", "work", 0, 2, 2, 0.5, "thread-1", 10.0, at=10.5),
    ChunkRetried("r", "work", 1, 1, "ValueError: once", at=10.6),
    ItemSkipped("r", "work", 1, "3", "ValueError: bad", at=10.7),
    ChunkDone("r", "work", 1, 2, 1, 0.25, "thread-2", 10.5, at=11.0),
    StepFinished("r", "work", 4, 3, 0.75, at=11.0),
    RunFinished("r", "succeeded", 1.0, at=11.0),
]


def stored(events: list[Event], attempt: int) -> list[dict[str, Any]]:
    return [{**event.to_dict(), "attempt": attempt} for event in events]


def test_the_page_shows_what_the_terminal_shows() -> None:
    live = RunProgress()
    for event in EVENTS:
        live.add(event)
    view = RunView(attempt=1).add_all(stored(EVENTS, 1))
    assert view.snapshot(20.0) == [step.to_dict(20.0) for step in live.steps.values()]
    work = view.snapshot(20.0)[1]
    assert (work["done"], work["total"], work["items_out"], work["percent"]) == (4, 4, 3, 100.0)
    assert (work["retries"], work["skipped"], work["rate"]) == (1, 1, 4.0)
    assert live.status == "succeeded"


def test_the_page_adds_the_engine_the_timeline_and_the_log() -> None:
    view = RunView(attempt=1).add_all(stored(EVENTS, 1))
    assert view.engine == "threads (2 workers)"
    assert view.bars == [
        TimelineBar("thread-1", "work", 0, 10.0, 0.5),
        TimelineBar("thread-2", "work", 1, 10.5, 0.25),
    ]
    assert [line for _, line in view.logs] == [
        "step work chunk 1 retried: ValueError: once",
        "step work skipped item 3: ValueError: bad",
        "run succeeded after 1.00s",
    ]


def test_only_the_current_attempt_counts_and_unreadable_events_are_left_out() -> None:
    log = {"type": "Log", "at": 1.0, "message": "attempt 1 started", "attempt": 1}
    unknown = {"type": "FromTheFuture", "at": 2.0, "attempt": 2}
    view = RunView(attempt=2).add_all([log, *stored(EVENTS, 1), unknown, *stored(EVENTS[:3], 2)])
    assert [line for _, line in view.logs] == ["attempt 1 started"]  # earlier attempts' logs stay
    work = view.snapshot(20.0)[1]
    assert (work["done"], work["total"], work["percent"]) == (2, 4, 50.0)
    assert len(view.bars) == 1


def test_a_running_chunks_pieces_of_output_are_one_block_on_the_page() -> None:
    """A long chunk's output comes in pieces (every 0.5 s while it runs): one head, its text whole;
    another chunk's or stream's output gets its own."""
    pieces = [
        ChunkOutput("r", "work", 0, "stdout", "a\n", at=10.1),
        ChunkOutput("r", "work", 0, "stdout", "b\n", at=10.6),
        ChunkOutput("r", "work", 1, "stdout", "c\n", at=10.7),
        ChunkOutput("r", "work", 1, "log", "INFO x: d\n", at=10.8),
        ChunkOutput("r", "work", 0, "stdout", "e\n", at=10.9),
    ]
    view = RunView(attempt=1).add_all(stored(pieces, 1))
    assert view.outputs == [
        ("work", 0, "stdout", "a\nb\n"),
        ("work", 1, "stdout", "c\n"),
        ("work", 1, "log", "INFO x: d\n"),
        ("work", 0, "stdout", "e\n"),
    ]
