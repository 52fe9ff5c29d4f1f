"""The span tree of a run: run -> steps -> chunks -> the user's spans, on each engine."""

from __future__ import annotations

import os
import pathlib

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs madhatter[otel] and the SDK (test extra)")

import traced_steps as t
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from madhatter import Pipeline, StepFailed

ENGINES = ["serial", "threads", "processes"]


def _tree(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    """The spans by name, after checking they all are of one trace and nest under the run."""
    assert len({s.context.trace_id for s in finished if s.context}) == 1
    by_id = {s.context.span_id: s for s in finished if s.context}
    named: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
        if span.parent is not None:
            assert span.parent.span_id in by_id, f"{span.name}: parent not exported"
    return named


def _parent(span: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> str:
    assert span.parent is not None
    return next(s.name for s in finished if s.context and s.context.span_id == span.parent.span_id)


@pytest.mark.parametrize("engine", ENGINES)
def test_span_tree(spans: InMemorySpanExporter, engine: str) -> None:
    report = Pipeline([t.total]).execute(engine=engine, workers=2, inline=False)
    assert_span_tree(spans, report.result, engine, in_driver=engine != "processes")


def assert_span_tree(spans: InMemorySpanExporter, result: int, engine: str, *, in_driver: bool) -> None:
    """run -> its stage's and driver steps' spans -> a span per chunk -> the user's spans."""
    assert result == sum(2 * x + 1 for x in range(t.SIZE))
    finished = spans.get_finished_spans()
    named = _tree(finished)
    (run,) = named["madhatter run total"]
    assert run.parent is None
    assert run.attributes is not None
    assert run.attributes["madhatter.engine"] == engine
    stage = "doubled+incremented"
    (step,) = named[f"madhatter step {stage}"]
    assert _parent(step, finished) == "madhatter run total"
    assert step.attributes is not None
    assert step.attributes["madhatter.steps"] == (
        "doubled",
        "incremented",
    )
    for driver_step in ("numbers", "total"):
        (span,) = named[f"madhatter step {driver_step}"]
        assert _parent(span, finished) == "madhatter run total"
    chunks = named[f"madhatter chunk {stage}"]
    assert len(chunks) == t.SIZE // t.CHUNK
    attributes = [dict(c.attributes or {}) for c in chunks]
    assert sorted(a["madhatter.chunk"] for a in attributes) == list(range(t.SIZE // t.CHUNK))
    for chunk, a in zip(chunks, attributes, strict=True):
        assert _parent(chunk, finished) == f"madhatter step {stage}"
        assert a["madhatter.items_in"] == a["madhatter.items_out"] == t.CHUNK
        assert a["madhatter.engine"] == engine
        assert a["madhatter.retry"] == 0
        assert (a["process.pid"] == os.getpid()) == in_driver
    users = named["user double"]
    assert len(users) == t.SIZE
    assert {_parent(u, finished) for u in users} == {f"madhatter chunk {stage}"}
    (user_total,) = named["user total"]
    assert _parent(user_total, finished) == "madhatter step total"
    assert all(s.end_time is not None for s in finished)


def test_untraced_without_a_provider() -> None:
    """opentelemetry imported but no provider set: no run span, and the run works."""
    report = Pipeline([t.total]).execute(engine="threads", workers=2, inline=False)
    assert report.result == sum(2 * x + 1 for x in range(t.SIZE))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_retry_is_an_event_and_an_attempt(
    spans: InMemorySpanExporter, engine: str, tmp_path: pathlib.Path
) -> None:
    report = Pipeline([t.flaky]).execute(engine=engine, workers=2, params={"marks": str(tmp_path)})
    assert report.result == list(range(t.SIZE))
    finished = spans.get_finished_spans()
    (step,) = [s for s in finished if s.name == "madhatter step flaky"]
    (event,) = step.events
    assert event.name == "madhatter.chunk.retry"
    assert dict(event.attributes or {})["madhatter.chunk"] == 0
    chunks = [dict(s.attributes or {}) for s in finished if s.name == "madhatter chunk flaky"]
    first = sorted(a["madhatter.retry"] for a in chunks if a["madhatter.chunk"] == 0)
    assert first == [0, 1]  # the failed attempt's span is exported too, with an error status
    (failed,) = [
        s for s in finished if s.name == "madhatter chunk flaky" and s.status.status_code.name == "ERROR"
    ]
    assert dict(failed.attributes or {})["madhatter.retry"] == 0


def test_a_failed_run_ends_its_spans_with_an_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(StepFailed):
        Pipeline([t.broken]).execute(engine="threads", workers=2, inline=False)
    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name == "madhatter run broken"]
    assert run.status.status_code.name == "ERROR"
    assert dict(run.attributes or {})["madhatter.status"] == "failed"
    assert any(s.name == "madhatter step broken" for s in finished)
