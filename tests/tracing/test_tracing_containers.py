"""What the driver makes of chunks run in containers without opentelemetry (the test image):
their spans, from the times the engine measured."""

from __future__ import annotations

import cloudpickle
import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs madhatter[otel] and the SDK (test extra)")

import traced_steps as t
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from madhatter import Pipeline

# the workers have no tests/ folder to import the steps from
cloudpickle.register_pickle_by_value(t)

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("madhatter_containers")
def test_chunk_spans_from_the_driver_on_docker(spans: InMemorySpanExporter, image: str) -> None:
    """The test image has no opentelemetry: each chunk's span is the driver's, from the time the
    engine measured (so no user span can nest under it)."""
    report = Pipeline([t.tripled]).execute(engine="docker", image=image, workers=2, inline=False)
    assert report.result == [3 * x for x in range(t.SIZE)]
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished if s.context}
    chunks = [s for s in finished if s.name == "madhatter chunk tripled"]
    assert len(chunks) == t.SIZE // t.CHUNK
    for chunk in chunks:
        assert chunk.parent is not None
        assert by_id[chunk.parent.span_id].name == "madhatter step tripled"
        attributes = dict(chunk.attributes or {})
        assert attributes["madhatter.engine"] == "docker"
        assert attributes["madhatter.items_in"] == attributes["madhatter.items_out"] == t.CHUNK
        assert attributes["madhatter.worker"]
        # the pickled chunk of 4 ints each way (the envelope of the task is not counted)
        assert 4 < attributes["madhatter.bytes_sent"] < 2_000
        assert 4 < attributes["madhatter.bytes_received"] < 2_000
        assert chunk.start_time is not None
        assert chunk.end_time is not None
        assert chunk.start_time < chunk.end_time
    (run,) = [s for s in finished if s.name == "madhatter run tripled"]
    assert run.parent is None
