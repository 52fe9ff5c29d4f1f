"""The chunk's span, made in the worker (a thread of the driver, another process or a container).

Imports ``opentelemetry`` only when the chunk carries a trace context; a worker without it
(a container image without ``madhatter[otel]``) runs the chunk untraced.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..driver._chain import ChunkOutcome

Carrier = tuple[tuple[str, str], ...]
"""The stage span's W3C trace context (``traceparent``) and what the chunk's span says of it."""
Spans = tuple[dict[str, Any], ...]
"""Finished spans as plain data (``_sdk.plain``), back from a worker in another process."""


def process_name() -> str:
    """This process, told apart from the driver's: a forked child's pid differs, and a
    container's or another machine's host name (a container's pids may repeat the driver's)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def traced_chunk(
    carrier: Carrier, argument: tuple[Any, ...], call: Callable[[tuple[Any, ...]], ChunkOutcome]
) -> ChunkOutcome:
    """``call(argument)`` in a chunk span. ``argument`` ends with the chunk's attempt (0, 1, ...),
    which ``call`` is not given."""
    *rest, attempt = argument
    argument = tuple(rest)
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the driver makes the chunk's span from what it saw (``spans=None``)
        return dataclasses.replace(call(argument), spans=None)
    fields = dict(carrier)
    collector = None
    if process_name() != fields["madhatter.driver"]:
        try:
            from ._sdk import worker_collector
        except ImportError:  # the API without the SDK: as without opentelemetry
            return dataclasses.replace(call(argument), spans=None)
        collector = worker_collector()
    items = argument[1]
    attributes = {
        "madhatter.step": fields["madhatter.step"],
        "madhatter.engine": fields["madhatter.engine"],
        "madhatter.chunk": argument[0],
        "madhatter.retry": attempt,
        "madhatter.items_in": len(items) if isinstance(items, list) else -1,
        "process.pid": os.getpid(),
        "thread.name": threading.current_thread().name,
    }
    if collector is None:  # in the driver's process: nothing travelled
        attributes.update({"madhatter.bytes_sent": 0, "madhatter.bytes_received": 0})
    tracer = trace.get_tracer("madhatter")
    context = TraceContextTextMapPropagator().extract(fields)
    name = f"madhatter chunk {fields['madhatter.step']}"
    try:
        with tracer.start_as_current_span(name, context=context, attributes=attributes) as span:
            outcome = call(argument)
            outputs = outcome.outputs
            count = sum(map(len, outputs)) if outcome.nested else len(outputs)
            span.set_attribute("madhatter.items_out", count)
    except Exception as exc:
        if collector is not None:
            exc.spans = collector.drain()  # type: ignore[attr-defined]  # the driver exports them
        raise
    if collector is None:
        return outcome
    return dataclasses.replace(outcome, spans=collector.drain())
