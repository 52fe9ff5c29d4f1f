"""The one place madhatter uses the OpenTelemetry SDK (not only the API), and why.

A worker in another process (processes, Dask, Ray) cannot export to the driver's provider: its
exporters live in the driver (an in-memory exporter, a batch processor's queue). So a worker
collects its finished spans -- the chunk's and those the user's code opened under it -- with a
span processor of its own and sends them back with the chunk's outcome as plain data, and the
driver hands them, rebuilt as SDK ``ReadableSpan`` objects, to its provider's span processors:
they are exported as if made in the driver. The API has no way to do either, hence the SDK here
(and two of its private attributes, marked below).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

if TYPE_CHECKING:
    from ._worker import Spans


def plain(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as picklable data (SDK spans hold locks)."""
    context = span.context
    assert context is not None
    scope = span.instrumentation_scope
    return {
        "name": span.name,
        "trace_id": context.trace_id,
        "span_id": context.span_id,
        "flags": int(context.trace_flags),
        "parent": None if span.parent is None else (span.parent.span_id, span.parent.is_remote),
        "kind": span.kind.value,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "status": (span.status.status_code.value, span.status.description),
        "scope": (scope.name, scope.version) if scope is not None else ("madhatter", None),
    }


def readable(data: dict[str, Any], provider: TracerProvider) -> ReadableSpan:
    trace_id, flags = data["trace_id"], TraceFlags(data["flags"])
    parent = None
    if data["parent"] is not None:
        parent = SpanContext(trace_id, data["parent"][0], data["parent"][1], flags)
    return ReadableSpan(
        name=data["name"],
        context=SpanContext(trace_id, data["span_id"], False, flags),
        parent=parent,
        resource=provider.resource,
        attributes=data["attributes"],
        events=[Event(name, attributes, timestamp) for name, attributes, timestamp in data["events"]],
        kind=SpanKind(data["kind"]),
        status=Status(StatusCode(data["status"][0]), data["status"][1]),
        start_time=data["start"],
        end_time=data["end"],
        instrumentation_scope=InstrumentationScope(*data["scope"]),
    )


def export(spans: Spans) -> None:
    """Hand a worker's spans to the driver's span processors."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        processor = provider._active_span_processor  # private: the provider's processors, as one
        for data in spans:
            processor.on_end(readable(data, provider))


class Collector(SpanProcessor):
    """Keeps this worker process's finished spans until the chunk that made them returns."""

    def __init__(self) -> None:
        self._spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        data = plain(span)
        with self._lock:
            self._spans.append(data)

    def drain(self) -> Spans:
        """The spans ended so far (a chunk running at the same time in this process may take
        some of another's: they all reach the driver)."""
        with self._lock:
            spans, self._spans = tuple(self._spans), []
        return spans


_collector: tuple[int, Collector] | None = None
_lock = threading.Lock()


def worker_collector() -> Collector:
    """This process's collector, set up once per process: the global tracer provider sends every
    span to it alone. A provider inherited from a forked driver keeps its tracers, but its
    exporters, copies of the driver's, are dropped (what they export would be lost or doubled)."""
    global _collector
    with _lock:
        if _collector is not None and _collector[0] == os.getpid():
            return _collector[1]
        collector = Collector()
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            # private: every tracer of the provider holds this multi-processor; replace its members
            provider._active_span_processor._span_processors = (collector,)
        else:
            # no resource: the driver's replaces it (``readable``), and detecting one takes time
            provider = TracerProvider(resource=Resource.get_empty())
            provider.add_span_processor(collector)
            trace.set_tracer_provider(provider)
        _collector = (os.getpid(), collector)
        return collector
