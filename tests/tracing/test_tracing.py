"""Tracing beyond the span tree (which the conformance suite checks on every engine): retries,
failed runs, and opentelemetry imported without a provider."""

from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs madhatter[otel] and the SDK (test extra)")

import traced_steps as t
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from madhatter import Pipeline, StepFailed
from madhatter.testing import _pipelines as traced  # the suite's steps that open spans

ENGINES = ["serial", "threads", "processes"]


def test_untraced_without_a_provider() -> None:
    """opentelemetry imported but no provider set: no run span, and the run works."""
    report = Pipeline([traced.traced_total]).execute(engine="threads", workers=2, inline=False)
    assert report.result == sum(2 * x + 1 for x in range(traced.SIZE))


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


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_a_chunk_span_says_how_many_bytes_its_task_shipped(
    spans: InMemorySpanExporter, engine: str
) -> None:
    """Two 1.5 MB items per chunk, each way: on processes the span counts the shared-memory
    buffers they travel in; on threads nothing travels."""
    report = Pipeline([t.echoed]).execute(engine=engine, workers=2, inline=False)
    assert [len(blob) for blob in report.result] == [t.BLOB] * 4
    chunks = [
        dict(s.attributes or {})
        for s in spans.get_finished_spans()
        if s.name == "madhatter chunk echoed"
    ]
    assert len(chunks) == 2
    for attributes in chunks:
        sizes = attributes["madhatter.bytes_sent"], attributes["madhatter.bytes_received"]
        if engine == "threads":
            assert sizes == (0, 0)
        else:
            assert all(2 * t.BLOB <= size < 2 * t.BLOB + 10_000 for size in sizes), sizes
