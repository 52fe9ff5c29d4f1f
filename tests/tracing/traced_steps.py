"""Steps for the tracing tests beyond the span tree (which the conformance suite checks with its
own steps, in ``madhatter.testing._pipelines``): retries, failures, byte counts, and containers
without opentelemetry. They open no spans of their own."""

from __future__ import annotations

import pathlib

from madhatter import depends, parallel, preprocess

SIZE = 12
CHUNK = 4


@preprocess
def numbers() -> list[int]:
    return list(range(SIZE))


@depends(numbers)
@parallel.map(chunk_by=CHUNK)
def tripled(x: int) -> int:
    """No spans of its own: for workers without opentelemetry (a container)."""
    return 3 * x


@depends(numbers)
@parallel.map(chunk_by=CHUNK, retries=1, retry_delay=0)
def flaky(x: int, marks: str = "") -> int:
    """Fails the first time it meets item 0 (a file under ``marks`` remembers)."""
    mark = pathlib.Path(marks, "failed")
    if x == 0 and not mark.exists():
        mark.touch()
        raise RuntimeError("first time")
    return x


@depends(numbers)
@parallel.map(chunk_by=CHUNK)
def broken(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return x


BLOB = 1_500_000
"""Bytes per item of ``echoed``: over the 1 MiB from which buffers travel in shared memory."""


@preprocess
def blobs() -> list[bytes]:
    return [bytes([65 + k]) * BLOB for k in range(4)]


@depends(blobs)
@parallel.map(chunk_by=2)
def echoed(blob: bytes) -> bytes:
    return blob
