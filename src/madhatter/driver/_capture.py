"""What a chunk's steps print and log, captured where the chunk runs, for the run's log.

With ``Pipeline.execute(capture_output=True)`` (the service's workers run so), each chunk's
writes to ``sys.stdout`` and ``sys.stderr`` and the ``logging`` records that reach the root
logger (at the levels the user configured) are kept, per step, up to :data:`CHUNK_OUTPUT_BYTES`
per chunk, and travel back with the chunk's outcome (or with its error, so what a chunk printed
before it failed is not lost). The driver turns them into ``ChunkOutput`` events.

Logging levels are the user's, as configured in the driver: the levels set there (the root
logger's, and those of named loggers) travel with the task (:func:`driver_levels`) and are
applied in a worker process to loggers it has not configured itself (:func:`apply_levels`), so a
``logging.basicConfig(level=logging.INFO)`` in the pipeline file keeps INFO records from worker
processes too.

Capture is per thread: ``sys.stdout``/``sys.stderr`` are replaced, while any chunk captures, by
a :class:`_ThreadTee` that sends a write to the capture of the thread that made it, or else to
the stream it replaced; so chunks running at once on the threads engine keep their own output,
and the driver's own prints pass through. Output written to the file descriptors directly (a C
extension's ``printf``, a subprocess) is not captured.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

CHUNK_OUTPUT_BYTES = 64 * 1024
"""What one chunk may keep of its output; the rest is dropped with a mark."""

Output = tuple[tuple[str, str, str], ...]
"""Captured output: ``(step, stream, text)`` in order; ``stream`` is stdout, stderr or log."""

_local = threading.local()
_install_lock = threading.Lock()
_active = 0


class Capture:
    """One chunk's captured output, bounded by ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.step = ""
        self._parts: list[tuple[str, str, str]] = []

    def write(self, stream: str, text: str) -> None:
        room = self.limit - self.size
        if len(text) > room:
            self.dropped += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if not text:
            return
        self.size += len(text)
        if self._parts and self._parts[-1][:2] == (self.step, stream):
            step, _, before = self._parts[-1]
            self._parts[-1] = (step, stream, before + text)
        else:
            self._parts.append((self.step, stream, text))

    def output(self) -> Output:
        """What was captured, with a mark where the chunk's limit cut it short."""
        parts = list(self._parts)
        if self.dropped:
            mark = f"\n[madhatter: {self.dropped} more characters of this chunk's output dropped]\n"
            parts.append((self.step, "stderr", mark))
        return tuple(parts)


class _ThreadTee:
    """Stands in for ``sys.stdout``/``sys.stderr``: a write goes to the writing thread's capture,
    if it has one, else to the stream it replaced."""

    def __init__(self, original: TextIO, stream: str) -> None:
        self.original, self.stream = original, stream

    def write(self, text: str) -> int:
        capture: Capture | None = getattr(_local, "capture", None)
        if capture is None:
            return self.original.write(text)
        capture.write(self.stream, text)
        return len(text)

    def flush(self) -> None:
        if getattr(_local, "capture", None) is None:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class _Handler(logging.Handler):
    """Adds the records that reach the root logger to the logging thread's capture."""

    def emit(self, record: logging.LogRecord) -> None:
        capture: Capture | None = getattr(_local, "capture", None)
        if capture is not None:
            capture.write("log", self.format(record) + "\n")


_handler = _Handler()
_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def _install() -> None:
    global _active
    with _install_lock:
        _active += 1
        if _active == 1:
            sys.stdout = _ThreadTee(sys.stdout, "stdout")
            sys.stderr = _ThreadTee(sys.stderr, "stderr")
            logging.getLogger().addHandler(_handler)


def _uninstall() -> None:
    global _active
    with _install_lock:
        _active -= 1
        if _active == 0:
            for name in ("stdout", "stderr"):
                current = getattr(sys, name)
                if isinstance(current, _ThreadTee):  # unless someone replaced it since
                    setattr(sys, name, current.original)
            logging.getLogger().removeHandler(_handler)


@contextlib.contextmanager
def capturing(limit: int) -> Iterator[Capture]:
    """Capture this thread's output until the block ends."""
    capture = Capture(limit)
    _install()
    _local.capture = capture
    try:
        yield capture
    finally:
        _local.capture = None
        _uninstall()


Levels = tuple[tuple[str, int], ...]
"""Logging levels by logger name (``""``: the root logger)."""


def driver_levels() -> Levels:
    """The levels configured in this process: the root logger's, and named loggers' own."""
    named = [
        (name, logger.level)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    ]
    return (("", logging.getLogger().level), *sorted(named))


_applied: set[Levels] = set()


def apply_levels(levels: Levels) -> None:
    """Give loggers this process has not configured the levels ``levels`` names (once)."""
    if levels in _applied:
        return
    _applied.add(levels)
    for name, level in levels:
        logger = logging.getLogger(name or None)
        if logger.level == logging.NOTSET or (not name and not logger.handlers):
            logger.setLevel(level)


def in_step(step: str) -> None:
    """Attribute what this thread writes from now on to ``step`` (if it captures)."""
    capture: Capture | None = getattr(_local, "capture", None)
    if capture is not None:
        capture.step = step
