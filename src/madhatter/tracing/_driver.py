"""The driver's spans: the run, its stages and driver steps, retries as span events.

Imports ``opentelemetry`` only once ``start_run`` has found tracing on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .._version import __version__
from ._worker import Carrier, Spans, process_name

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..engines import TaskResult

TRACER = "madhatter"


def start_run(pipeline: str, engine: str) -> RunTrace | None:
    """The run's trace, or ``None`` when tracing is off: the caller never imported
    ``opentelemetry`` (then neither does madhatter), or set no tracer provider of its own."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return RunTrace(pipeline, engine)


class RunTrace:
    """The run's span (a child of the caller's current span, if any) and its stages' spans."""

    def __init__(self, pipeline: str, engine: str) -> None:
        from opentelemetry import trace

        self._tracer = trace.get_tracer(TRACER, __version__)
        attributes = {"madhatter.pipeline": pipeline, "madhatter.engine": engine}
        self.span = self._tracer.start_span(f"madhatter run {pipeline}", attributes=attributes)
        self._stages: list[StageTrace] = []

    def stage(self, name: str, steps: tuple[str, ...], engine: str) -> StageTrace:
        from opentelemetry import trace

        span = self._tracer.start_span(
            f"madhatter step {name}",
            context=trace.set_span_in_context(self.span),
            attributes={"madhatter.step": name, "madhatter.steps": steps, "madhatter.engine": engine},
        )
        stage = StageTrace(span, name, engine)
        self._stages.append(stage)
        return stage

    @contextlib.contextmanager
    def driver_step(self, name: str) -> Iterator[None]:
        """A span for a driver step (``@preprocess``, ``@postprocess``), current while it runs."""
        from opentelemetry import trace

        with self._tracer.start_as_current_span(
            f"madhatter step {name}",
            context=trace.set_span_in_context(self.span),
            attributes={"madhatter.step": name, "madhatter.steps": (name,)},
        ):
            yield

    def end(self, status: str, error: str | None) -> None:
        """End the run's span, and any stage's the run left open (it failed)."""
        from opentelemetry.trace import Status, StatusCode

        for stage in self._stages:
            stage.end()
        self.span.set_attribute("madhatter.status", status)
        if status != "succeeded":
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


def shipped(result: TaskResult) -> dict[str, int]:
    """A chunk span's attributes for the bytes its task's argument and answer took between the
    driver and the worker, as far as the engine measured them."""
    sizes = {"madhatter.bytes_sent": result.sent, "madhatter.bytes_received": result.received}
    return {key: size for key, size in sizes.items() if size is not None}


class StageTrace:
    """A stage's span, and the carrier that makes its chunks' spans its children."""

    def __init__(self, span: Span, name: str, engine: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.span, self.name, self.engine = span, name, engine
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        carrier.update({"madhatter.step": name, "madhatter.engine": engine})
        carrier["madhatter.driver"] = process_name()
        self.carrier: Carrier = tuple(sorted(carrier.items()))
        self._ended = False

    def retried(self, chunk: int, attempt: int, error: str) -> None:
        self.span.add_event(
            "madhatter.chunk.retry",
            {"madhatter.chunk": chunk, "madhatter.retry": attempt, "error.message": error},
        )

    def received(self, spans: Spans, chunk: tuple[int, int, TaskResult] | None = None) -> None:
        """Spans a worker in another process made, for the driver's span processors. ``chunk``
        (index, attempt, the engine's result) names the chunk whose result brought them: its span
        gets the bytes the task took (the worker could not know them)."""
        if not spans:
            return
        if chunk is not None:
            index, attempt, result = chunk
            for data in spans:
                attributes = data["attributes"]
                if (
                    data["name"] == f"madhatter chunk {self.name}"
                    and attributes.get("madhatter.chunk") == index
                    and attributes.get("madhatter.retry") == attempt
                ):
                    attributes.update(shipped(result))
        from ._sdk import export

        export(spans)

    def chunk_seen(
        self, chunk: int, attempt: int, items_in: int, items_out: int, result: TaskResult
    ) -> None:
        """The span of a chunk whose worker could not make it (a container without
        ``opentelemetry``), from the time the engine measured: no user spans under it."""
        from opentelemetry import trace

        start = int(result.started * 1e9)
        span = trace.get_tracer(TRACER, __version__).start_span(
            f"madhatter chunk {self.name}",
            context=trace.set_span_in_context(self.span),
            start_time=start,
            attributes={
                "madhatter.step": self.name,
                "madhatter.engine": self.engine,
                "madhatter.chunk": chunk,
                "madhatter.retry": attempt,
                "madhatter.items_in": items_in,
                "madhatter.items_out": items_out,
                "madhatter.worker": result.worker,
                **shipped(result),
            },
        )
        span.end(start + int(result.seconds * 1e9))

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()
