"""What a chunk's steps print and log, captured where the chunk runs, for the run's log.

With ``Pipeline.execute(capture_output=True)`` (the service's workers run so), each chunk's
writes to ``sys.stdout`` and ``sys.stderr`` and the ``logging`` records that reach the root
logger (at the levels the user configured) are kept, per step, up to :data:`CHUNK_OUTPUT_BYTES`
per chunk, and travel back with the chunk's outcome (or with its error, so what a chunk printed
before it failed is not lost). The driver turns them into ``ChunkOutput`` events.

Live: where the engine gives the task a channel to the driver (``kit.interim_sender``: threads,
processes, Dask, docker), a flusher thread sends what a running chunk wrote so far every
:data:`FLUSH_SECONDS`, so a long chunk's lines reach the run while it runs; the outcome then
carries only the rest. The thread runs only while such a chunk captures (a driver with an extra
thread would start its processes workers fresh rather than forked).

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
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

CHUNK_OUTPUT_BYTES = 64 * 1024
"""What one chunk may keep of its output; the rest is dropped with a mark."""

FLUSH_SECONDS = 0.5
"""How often a running chunk's new output is sent to the driver, where the engine can."""

Output = tuple[tuple[str, str, str], ...]
"""Captured output: ``(step, stream, text)`` in order; ``stream`` is stdout, stderr or log."""

_local = threading.local()
_install_lock = threading.Lock()
_active = 0


class Capture:
    """One chunk's captured output, bounded by ``limit`` characters; with ``send``, what it has
    not sent yet (:meth:`flush`)."""

    def __init__(self, limit: int, send: Callable[[Output], None] | None = None) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.step = ""
        self.send = send
        self._parts: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()  # writes on the chunk's thread, flushes on the flusher's

    def write(self, stream: str, text: str) -> None:
        with self._lock:
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

    def flush(self) -> None:
        """Send what was written since the last flush (the lock is held while sending, so no
        flush is under way once :meth:`close` returns)."""
        with self._lock:
            if self._parts and self.send is not None:
                parts, self._parts = tuple(self._parts), []
                self.send(parts)

    def close(self) -> None:
        """No more flushes: the rest travels with the chunk's outcome (:meth:`output`)."""
        with self._lock:
            self.send = None

    def output(self) -> Output:
        """What was captured and not sent, with a mark where the chunk's limit cut it short."""
        with self._lock:
            parts = list(self._parts)
        if self.dropped:
            mark = f"\n[madhatter: {self.dropped} more characters of this chunk's output dropped]\n"
            parts.append((self.step, "stderr", mark))
        return tuple(parts)


class _Flusher:
    """The thread that sends the output of running chunks that have a channel, every
    :data:`FLUSH_SECONDS`, while there is any such chunk (it ends with the last)."""

    def __init__(self) -> None:
        self._captures: set[Capture] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, capture: Capture) -> None:
        with self._changed:
            self._captures.add(capture)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="madhatter-output-flusher", daemon=True
                )
                self._thread.start()

    def remove(self, capture: Capture) -> None:
        capture.close()
        with self._changed:
            self._captures.discard(capture)
            self._changed.notify_all()

    def _loop(self) -> None:
        while True:
            with self._changed:
                if not self._captures:
                    self._thread = None
                    return
                self._changed.wait(FLUSH_SECONDS)
                captures = list(self._captures)
            for capture in captures:
                try:
                    capture.flush()
                except Exception:  # the channel broke (the driver went away): keep the rest
                    capture.close()


_flusher = _Flusher()


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own flusher when needed.
    A process a step forks is not the chunk: its output goes to the stream, not to a copy of
    the chunk's capture (whose lock the parent's flusher may have held at the fork)."""
    global _flusher
    _flusher = _Flusher()
    _local.capture = None


os.register_at_fork(after_in_child=_after_fork_in_child)


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
def capturing(limit: int, send: Callable[[Output], None] | None = None) -> Iterator[Capture]:
    """Capture this thread's output until the block ends; with ``send``, send it as it comes
    (every :data:`FLUSH_SECONDS`), leaving only the rest for the block's end."""
    capture = Capture(limit, send)
    _install()
    _local.capture = capture
    if send is not None:
        _flusher.add(capture)
    try:
        yield capture
    finally:
        if send is not None:
            _flusher.remove(capture)
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
