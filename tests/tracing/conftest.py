"""Each tracing test (``spans``) gets the SDK's in-memory exporter behind the global tracer provider, and
leaves the process as it found it (no provider), so other tests run untraced."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest


def _reset_provider() -> None:
    """What ``opentelemetry.test.globals_test.reset_trace_globals`` does (test-utils package)."""
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans() -> Iterator[Any]:
    """The SDK's in-memory exporter (an ``InMemorySpanExporter``), behind a provider of the SDK."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_provider()


# The real clusters and the Docker image of the cluster and container tests, for the span tree
# on their workers (test_tracing_remote.py); cluster_helpers lives in the cluster tests' folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "cluster"))
from cluster.conftest import dask_cluster, ray_cluster  # noqa: E402, F401
from containers.conftest import docker_client, image, madhatter_containers  # noqa: E402, F401
