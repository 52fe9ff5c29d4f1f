"""The pipelines of the engine conformance suite (:mod:`._conformance`).

They live in a module of the package, not in the test class, so that they pickle by reference:
a cluster's workers import them from their own madhatter, and a container gets them with the
madhatter the docker engine ships to it. Nothing here imports more than the standard library and
madhatter, for the same reason; the tracing steps import ``opentelemetry`` when they run (only
the tracing test runs them, and it asks the workers for OpenTelemetry).

State that must cross processes travels in return values, or in files under a path the run
passes as a parameter. Two helpers fail inside the standard library (``ipaddress``) rather than
in these steps: madhatter leaves its own frames out of the tracebacks it reports, and these steps
are madhatter's code, so only a frame outside the package shows that the worker's traceback
arrived whole.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import pathlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .. import depends, parallel, postprocess, preprocess

SIZE = 40


@preprocess
def numbers() -> list[int]:
    return list(range(SIZE))


# -- fan-out / fan-in: map, filter and whole-chunk steps ---------------------------------------


@depends(numbers)
@parallel.map(chunk_by=3)
def tripled(x: int) -> int:
    return 3 * x


@depends(numbers)
@parallel.filter
def odd(x: int) -> bool:
    return x % 2 == 1


@depends(tripled)
@parallel
def pairs(chunk: list[int]) -> list[tuple[int, int]]:
    return [(x, x + 1) for x in chunk]


@depends(pairs, odd, numbers)
@postprocess
def gathered(p: list[tuple[int, int]], o: list[int], n: list[int]) -> dict[str, Any]:
    return {"pairs": p, "odd": o, "count": len(n)}


# -- a diamond: one parallel step's output read by two others -----------------------------------


@depends(tripled)
@parallel.map
def left(x: int) -> int:
    return x + 1


@depends(tripled)
@parallel.map(chunk_by=7)
def right(x: int) -> int:
    return -x


@depends(left, right)
@postprocess
def diamond(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


# -- generator sources -------------------------------------------------------------------------


@preprocess
def generated(count: int = 30) -> Iterator[int]:
    yield from range(count)


@depends(generated)
@parallel.map(chunk_by=4)
def squared(x: int) -> int:
    return x * x


@depends(generated)
@parallel.filter
def multiples_of_three(x: int) -> bool:
    return x % 3 == 0


@depends(squared, multiples_of_three)
@postprocess
def both_branches(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    return a, b


def _runs_dry() -> Iterator[int]:
    yield 1
    yield 2
    raise LookupError("the source ran dry")


@preprocess
def drying_source() -> Iterator[int]:
    return _runs_dry()


@depends(drying_source)
@parallel.map
def passthrough(x: int) -> int:
    return x


# -- order -------------------------------------------------------------------------------------


def _uneven_work(x: int) -> int:
    time.sleep(0.002 * (x % 4))  # later chunks can finish first
    return x * 7


@depends(numbers)
@parallel.map(chunk_by=2)
def in_order(x: int) -> int:
    return _uneven_work(x)


@depends(numbers)
@parallel.map(chunk_by=2, ordered=False)
def any_order(x: int) -> int:
    return _uneven_work(x)


# -- a chain of parallel steps, fused into one task per chunk or not ----------------------------


@depends(numbers)
@parallel.filter(chunk_by=6)
def not_seven(x: int) -> bool:
    return x % 7 != 0


@depends(not_seven)
@parallel.map
def halved(x: int) -> float:
    return x / 2


@depends(halved)
@parallel
def labelled(chunk: list[float]) -> list[str]:
    return [f"v{x}" for x in chunk]


# -- run parameters ----------------------------------------------------------------------------


@preprocess
def ranged(stop: int = 5) -> list[int]:
    return list(range(stop))


@depends(ranged)
@parallel.map
def scaled(x: int, factor: int = 2, label: str = "x") -> str:
    return f"{label}{x * factor}"


# -- failures ----------------------------------------------------------------------------------


def address_of(x: int) -> int:
    """Fails on 7, inside the standard library: ``ValueError: 'item 7' does not appear to be an
    IPv4 or IPv6 address``, raised in ``ipaddress.ip_address``."""
    return x if x != 7 else int(ipaddress.ip_address(f"item {x}"))


@depends(numbers)
@parallel.map(chunk_by=3)
def boom(x: int) -> int:
    return address_of(x)


@depends(numbers)
@parallel.map(chunk_by=4, on_error="skip")
def fragile(x: int) -> int:
    if x % 5 == 3:
        raise ValueError(f"bad item {x}")
    return x * 10


@depends(fragile)
@parallel(on_error="skip")
def fragile_chunks(chunk: list[int]) -> list[int]:
    if 60 in chunk:
        raise KeyError("sixty")
    return [x + 1 for x in chunk]


def fail_once(x: int, marker: str) -> int:
    """Fails on item 21 until ``marker`` exists. When the runner retries, the suite's listener
    leaves the marker on the ``ChunkRetried`` event, so a worker that may only read the folder
    (a container's) passes on the rerun. An engine that reruns the task itself (``retries``)
    sends no event: only the failing call can leave the marker, so that engine's workers must
    be able to write in the folder."""
    if x == 21 and not os.path.exists(marker):
        with contextlib.suppress(OSError):
            pathlib.Path(marker).touch()
        raise ConnectionError("flaky on 21")
    return x + 100


@depends(numbers)
@parallel.map(chunk_by=4)
def flaky(x: int, marker: str = "") -> int:
    return fail_once(x, marker)


@depends(numbers)
@parallel.map(chunk_by=4, retries=1)
def flaky_with_a_retry(x: int, marker: str = "") -> int:
    return fail_once(x, marker)


@preprocess
def few() -> list[int]:
    return [0, 1, 2, 3]


@depends(few)
@parallel.map(chunk_by=1, timeout=0.5)
def sleepy(x: int) -> int:
    if x == 2:
        time.sleep(0.8)
    return x


# -- nothing keeps running ---------------------------------------------------------------------

RUNNING: set[int] = set()
"""Items whose call has begun and not ended, in this process (seen only by in-process engines)."""
_running_lock = threading.Lock()


@depends(numbers)
@parallel.map(chunk_by=1)
def slow_first_then_fail(x: int) -> int:
    with _running_lock:
        RUNNING.add(x)
    try:
        if x == 0:
            time.sleep(0.5)  # still busy when item 3 fails
        if x == 3:
            raise ValueError("three")
        return x
    finally:
        with _running_lock:
            RUNNING.discard(x)


class Dawdling:
    """How many items ``as_many_as_asked`` yields. The source runs in the driver and is first
    pulled after ``RunStarted``, so the cancel test sets this from the width the run reports."""

    items = 12


@preprocess
def as_many_as_asked() -> Iterator[int]:
    yield from range(Dawdling.items)


@depends(as_many_as_asked)
@parallel.map(chunk_by=1)
def dawdle(x: int) -> int:
    time.sleep(0.2)
    return x


# -- output kept on the engine's cluster --------------------------------------------------------


class Tracked:
    """An item that counts how often it is unpickled, in each process separately."""

    unpickled = 0  # in this process

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_tracked, (self.value,))


def _unpickle_tracked(value: int) -> Tracked:
    Tracked.unpickled += 1
    return Tracked(value)


@depends(numbers)
@parallel.map(chunk_by=5)
def wrap(x: int) -> Tracked:
    return Tracked(x)


@depends(wrap)
@parallel.map(chunk_by=3)  # another chunk size: not fused with wrap, a stage of its own
def unwrap(item: Tracked) -> int:
    return item.value * 2


# -- streaming ---------------------------------------------------------------------------------

STREAM_CHUNK = 10
STREAM_TAKEN = 500


class Pulled:
    """How many items the endless source has yielded (it runs in the driver)."""

    count = 0


@preprocess
def endless() -> Iterator[int]:
    def generate() -> Iterator[int]:
        for item in itertools.count():
            Pulled.count += 1
            yield item

    return generate()


@depends(endless)
@parallel.map(chunk_by=STREAM_CHUNK)
def tripled_stream(x: int) -> int:
    return 3 * x


@depends(tripled_stream)
@postprocess(stream=True)
def first_few(values: Iterable[int]) -> list[int]:
    return list(itertools.islice(values, STREAM_TAKEN))


# -- tracing: steps that open spans of their own -----------------------------------------------

TRACED_CHUNK = 8


@depends(numbers)
@parallel.map(chunk_by=TRACED_CHUNK)
def traced_doubled(x: int) -> int:
    from opentelemetry import trace  # when it runs: only the tracing test runs it

    with trace.get_tracer("user").start_as_current_span("user double"):
        return 2 * x


@depends(traced_doubled)
@parallel.map
def traced_incremented(x: int) -> int:
    return x + 1


@depends(traced_incremented)
@postprocess
def traced_total(values: list[int]) -> int:
    from opentelemetry import trace

    with trace.get_tracer("user").start_as_current_span("user total"):
        return sum(values)
