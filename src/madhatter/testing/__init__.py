"""Helpers for testing pipelines and engines (public, for users and for engine authors).

* ``RecordingListener`` keeps every event of a run;
* ``available_engines()`` lists the engines that can run here, so one test can be parametrised
  over all of them;
* ``EngineConformance`` is the engine conformance suite: a pytest test class an engine author
  subclasses in their own tests (it needs pytest, so it is imported on first use: the rest of
  this package, which the suite's workers import, does not);
* ``FakeClusterEngine`` is a cluster engine in one file, built from the engine contract and its
  kit alone, that passes the suite: the worked example of docs/engines.md;
* ``in_memory_spans()`` traces a block of code into OpenTelemetry's in-memory exporter, to test
  the spans of a run (``madhatter[otel]`` and ``opentelemetry-sdk``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .._errors import MissingExtraError
from .._events import Event
from ..engines import engine_class, engine_names
from ._fake import FakeClusterEngine
from ._tracing import in_memory_spans

if TYPE_CHECKING:
    from ._conformance import EngineConformance

__all__ = [
    "EngineConformance",
    "FakeClusterEngine",
    "RecordingListener",
    "available_engines",
    "in_memory_spans",
]


def __getattr__(name: str) -> Any:
    if name == "EngineConformance":
        from ._conformance import EngineConformance

        return EngineConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RecordingListener:
    """A listener that records every event it receives (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of_type(self, kind: type[Event]) -> list[Event]:
        """The recorded events of one class, in the order they came."""
        with self._lock:
            return [event for event in self.events if isinstance(event, kind)]

    def types(self) -> list[str]:
        """The class names of the recorded events, in order."""
        with self._lock:
            return [type(event).__name__ for event in self.events]


def available_engines() -> list[str]:
    """Names of the registered engines whose dependencies are installed here."""
    names = []
    for name in engine_names():
        try:
            engine_class(name)
        except (MissingExtraError, ImportError):
            continue
        names.append(name)
    return names
