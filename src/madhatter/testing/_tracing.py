"""OpenTelemetry's in-memory exporter for a block of code: for tests of traced runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextlib.contextmanager
def in_memory_spans() -> Iterator[InMemorySpanExporter]:
    """Trace the block: the SDK's in-memory exporter behind a global tracer provider of the SDK,
    set for the block and taken down after it, so code after it runs untraced again.

    OpenTelemetry lets a process set its global provider once; this undoes that as its own test
    utilities do (``opentelemetry.test.globals_test.reset_trace_globals``, a package of its own).
    Needs ``opentelemetry-sdk``.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_global_provider()


def _reset_global_provider() -> None:
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()  # private: the one way to set a provider again
    trace._TRACER_PROVIDER = None
