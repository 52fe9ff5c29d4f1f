"""Progress events: what a listener sees during a run, on every engine."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess, preprocess
from madhatter._events import (
    EVENT_TYPES,
    ChunkDone,
    ChunkRetried,
    Event,
    ItemSkipped,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    StepTotalKnown,
    event_from_dict,
)
from madhatter.testing import RecordingListener

SIZE = 50


@preprocess
def numbers() -> list[int]:
    return list(range(SIZE))


@depends(numbers)
@parallel.map(chunk_by=4)
def doubled(x: int) -> int:
    return 2 * x


@depends(doubled)
@parallel.filter
def small(x: int) -> bool:
    return x < 60


@depends(small)
@parallel(chunk_by=5, ordered=False)  # not fused with small: a separate stage reading a channel
def labelled(chunk: list[int]) -> list[str]:
    return [f"#{x}" for x in chunk]


@depends(labelled)
@postprocess
def summary(values: list[str]) -> int:
    return len(values)


STEPS = ["numbers", "doubled", "small", "labelled", "summary"]
PARALLEL_INPUTS = {"doubled": SIZE, "small": SIZE, "labelled": 30}


@pytest.fixture
def recorded(engine: str) -> RecordingListener:
    listener = RecordingListener()
    assert madhatter.run(summary, engine=engine, workers=2, listeners=[listener]) == 30
    return listener


def of(listener: RecordingListener, kind: type[Event]) -> list[Any]:
    return listener.of_type(kind)


def test_run_started_first_and_run_finished_last(recorded: RecordingListener, engine: str) -> None:
    events = recorded.events
    assert isinstance(events[0], RunStarted)
    assert events[0].pipeline == "summary"
    assert events[0].engine == engine
    assert events[0].workers >= 1
    assert list(events[0].steps) == STEPS
    assert isinstance(events[-1], RunFinished)
    assert (events[-1].status, events[-1].error) == ("succeeded", None)
    assert recorded.types().count("RunStarted") == recorded.types().count("RunFinished") == 1
    assert len({event.run_id for event in events}) == 1
    assert all(a.at <= b.at for a, b in itertools.pairwise(events))


def test_each_step_starts_once_and_finishes_once_after_it_started(
    recorded: RecordingListener,
) -> None:
    started = [e.step for e in of(recorded, StepStarted)]
    finished = [e.step for e in of(recorded, StepFinished)]
    assert sorted(started) == sorted(finished) == sorted(STEPS)
    position = {id(event): k for k, event in enumerate(recorded.events)}
    for step in STEPS:
        [start] = [e for e in of(recorded, StepStarted) if e.step == step]
        [finish] = [e for e in of(recorded, StepFinished) if e.step == step]
        assert position[id(start)] < position[id(finish)]
        chunks = [e for e in of(recorded, ChunkDone) if e.step == step]
        assert all(position[id(start)] < position[id(c)] < position[id(finish)] for c in chunks)


def test_chunk_done_counts_add_up_to_each_steps_input(recorded: RecordingListener) -> None:
    for step, size in PARALLEL_INPUTS.items():
        chunks = [e for e in of(recorded, ChunkDone) if e.step == step]
        assert chunks, step
        assert sum(e.items_in for e in chunks) == size, step
        assert sorted(e.chunk for e in chunks) == list(range(len(chunks))), step
        [finished] = [e for e in of(recorded, StepFinished) if e.step == step]
        assert finished.items_in == size
        assert sum(e.items_out for e in chunks) == finished.items_out
        assert all(e.seconds >= 0 and e.worker for e in chunks)
    outs = {e.step: e.items_out for e in of(recorded, StepFinished)}
    assert (outs["doubled"], outs["small"], outs["labelled"]) == (SIZE, 30, 30)
    assert not any(e.step in ("numbers", "summary") for e in of(recorded, ChunkDone))


def test_totals_are_known_for_list_sources(recorded: RecordingListener) -> None:
    totals = {e.step: e.total for e in of(recorded, StepStarted)}
    assert totals["doubled"] == SIZE
    assert totals["small"] == SIZE  # fused behind a map: same count
    # labelled reads the filter's output: its total is known once that is complete.
    late = {e.step: e.total for e in of(recorded, StepTotalKnown)}
    assert totals["labelled"] == 30 or late.get("labelled") == 30


def test_events_round_trip_through_dicts_and_json(recorded: RecordingListener) -> None:
    assert recorded.events
    for event in recorded.events:
        data = event.to_dict()
        assert data["type"] == type(event).__name__
        assert event_from_dict(data) == event
        assert event_from_dict(json.loads(json.dumps(data))) == event


@pytest.mark.parametrize(
    "event",
    [
        RunStarted("r1", "p", "threads", 4, ("a", "b")),
        StepStarted("r1", "a", 10),
        StepTotalKnown("r1", "a", 10),
        ChunkDone("r1", "a", 3, 5, 4, 0.25, "pid-1", 12.5),
        ChunkRetried("r1", "a", 3, 1, "ValueError: x"),
        ItemSkipped("r1", "a", 3, "'item'", "KeyError: 'k'"),
        StepFinished("r1", "a", 10, 8, 1.5),
        RunFinished("r1", "failed", 2.0, "step 'a' failed"),
    ],
    ids=lambda event: type(event).__name__,
)
def test_every_event_type_round_trips(event: Event) -> None:
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_every_event_type_is_registered() -> None:
    assert set(EVENT_TYPES) == {cls.__name__ for cls in Event.__subclasses__()}


def test_a_listener_that_raises_is_dropped_and_the_run_succeeds(
    engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: Event) -> None:
        calls.append(type(event).__name__)
        raise RuntimeError("progress bar broke")

    good = RecordingListener()
    with caplog.at_level(logging.ERROR, logger="madhatter"):
        result = madhatter.run(summary, engine=engine, workers=2, listeners=[broken, good])
    assert result == 30
    assert calls == ["RunStarted"]  # dropped after its first failure
    assert good.types()[0] == "RunStarted"
    assert good.types()[-1] == "RunFinished"
    assert len(good.of_type(ChunkDone)) > 0
    assert "progress listener" in caplog.text
    assert "progress bar broke" in caplog.text


# -- failed and skipping runs ------------------------------------------------------------------


@depends(numbers)
@parallel.map(chunk_by=10)
def fails_on_33(x: int) -> int:
    if x == 33:
        raise ArithmeticError("thirty-three")
    return x


@depends(numbers)
@parallel.map(chunk_by=10, on_error="skip")
def skips_multiples_of_ten(x: int) -> int:
    if x % 10 == 0:
        raise ArithmeticError(f"skip {x}")
    return x


def test_a_failed_run_finishes_with_status_failed(engine: str) -> None:
    listener = RecordingListener()
    with pytest.raises(madhatter.StepFailed):
        madhatter.run(fails_on_33, engine=engine, workers=2, listeners=[listener])
    last = listener.events[-1]
    assert isinstance(last, RunFinished)
    assert last.status == "failed"
    assert last.error is not None
    assert "fails_on_33" in last.error
    assert listener.types()[0] == "RunStarted"


def test_skipped_items_are_events_too(engine: str) -> None:
    listener = RecordingListener()
    report = Pipeline([skips_multiples_of_ten]).execute(engine=engine, workers=2, listeners=[listener])
    skipped = of(listener, ItemSkipped)
    assert sorted(e.item for e in skipped) == ["0", "10", "20", "30", "40"]
    assert all(e.step == "skips_multiples_of_ten" for e in skipped)
    assert sorted(e.error for e in skipped) == sorted(
        f"ArithmeticError: skip {x}" for x in range(0, SIZE, 10)
    )
    assert len(report.skipped) == 5
    assert listener.events[-1].status == "succeeded"  # type: ignore[attr-defined]


def test_report_statistics_match_the_events(engine: str) -> None:
    listener = RecordingListener()
    report = Pipeline([summary]).execute(engine=engine, workers=2, listeners=[listener])
    assert report.result == 30
    assert report.run_id == listener.events[0].run_id
    for event in of(listener, StepFinished):
        stats = report.steps[event.step]
        assert (stats.items_in, stats.items_out) == (event.items_in, event.items_out)
    assert report.steps["labelled"].chunks == len(
        [e for e in of(listener, ChunkDone) if e.step == "labelled"]
    )
