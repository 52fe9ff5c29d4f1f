"""Each tracing test (``spans``) gets the SDK's in-memory exporter behind the global tracer
provider, and leaves the process as it found it (no provider), so other tests run untraced.

The span tree itself is checked on every engine by the shipped conformance suite
(``EngineConformance.test_spans_nest_run_steps_chunks_and_the_users_own``); the tests here are
the rest: retries, failures, no provider, no import, containers without OpenTelemetry.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from madhatter.testing import in_memory_spans


@pytest.fixture
def spans() -> Iterator[Any]:
    """The SDK's in-memory exporter (an ``InMemorySpanExporter``), behind a provider of the SDK."""
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs madhatter[otel] and the SDK")
    with in_memory_spans() as exporter:
        yield exporter


# The Docker image of the container tests, for chunks run in containers without OpenTelemetry
# (test_tracing_remote.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from containers.conftest import docker_client, image, madhatter_containers  # noqa: E402, F401
