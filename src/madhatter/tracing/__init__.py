"""OpenTelemetry spans for a run: ``pip install madhatter[otel]`` (docs/tracing.md).

Tracing is on when the caller has imported ``opentelemetry`` and set a real (SDK) tracer
provider; otherwise it is off and madhatter imports no ``opentelemetry`` module at all (the check
only reads ``sys.modules``).

* the driver (``_driver.py``): a span for the run; under it, one per stage (its fused steps) and
  one per driver step; retries are events on the stage's span;
* the worker (``_worker.py``): a span per chunk, a child of its stage's span through a W3C
  ``traceparent`` that travels in the chain task. It is the current span while the user's
  functions run, so spans they open nest under it. In the driver's own process (serial, threads,
  chunks run in the driver) it goes straight to the driver's provider; in any other process the
  worker's spans are collected and travel back with the chunk's outcome as plain data, which the
  driver hands to its provider's span processors (``_sdk.py``).
"""

from __future__ import annotations

from ._driver import RunTrace, StageTrace, start_run
from ._worker import Carrier, Spans, traced_chunk

__all__ = ["Carrier", "RunTrace", "Spans", "StageTrace", "start_run", "traced_chunk"]
