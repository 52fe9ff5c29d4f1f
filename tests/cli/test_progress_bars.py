"""``madhatter run``'s progress displays, drawn from the core's fold of the events."""

from __future__ import annotations

import io

from madhatter._events import ChunkDone, RunFinished, RunStarted, StepFinished, StepStarted
from madhatter.cli._progress import ProgressBars, ProgressLines

EVENTS = [
    RunStarted("r", pipeline="p", engine="dask", workers=2, steps=("work",), dashboard="http://d"),
    StepStarted("r", step="work", total=4, at=10.0),
    ChunkDone("r", "work", 0, 2, 2, 0.5, "w1", 10.0, at=10.5),
    StepFinished("r", "work", 4, 4, 1.0, at=11.0),
    RunFinished("r", "succeeded", 1.0, at=11.0),
]


def test_bars_are_redrawn_in_place_and_end_done() -> None:
    stream = io.StringIO()
    bars = ProgressBars(stream)
    for event in EVENTS:
        bars(event)
    text = stream.getvalue()
    assert text.startswith("dask dashboard: http://d\n")
    last = text.split("\x1b[2K")[-1]
    assert last == "work ######################## 4/4 items  4.0/s  done\n"
    assert "\x1b[F" in text  # back up over the bars already drawn


def test_lines_say_when_steps_start_and_finish() -> None:
    stream = io.StringIO()
    lines = ProgressLines(stream)
    for event in EVENTS:
        lines(event)
    assert stream.getvalue().splitlines() == [
        "dask dashboard: http://d",
        "step work started (4 items)",
        "step work finished: 4 in, 4 out, 1.00s of work",
        "run succeeded in 1.00s",
    ]
