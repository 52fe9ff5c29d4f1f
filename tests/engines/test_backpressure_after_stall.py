"""Back-pressure holds after a stall: a step that must read one branch whole before the other
stalls the run once (every producer waits on a full buffer), and the buffers may grow only while
that stall lasts -- a stage streaming afterwards stays bounded (W5's memory bound)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from madhatter import Pipeline, depends, parallel, postprocess, preprocess

STREAMED = 20_000
CHUNK = 100
WORKERS = 2


class Lead:
    """How far the streamed step's producer got ahead of its consumer (threads engine)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.most = 0


lead = Lead()


@preprocess
def few() -> list[int]:
    return list(range(60))


@depends(few)
@parallel.map(chunk_by=1)
def shared(x: int) -> int:
    return x


@depends(shared)
@parallel.map(chunk_by=1)
def after_shared(x: int) -> int:
    return x


@depends(shared, after_shared)
@postprocess(stream=True)
def second_first(firsts: Iterable[int], seconds: Iterable[int]) -> int:
    # Reading the second branch whole first: ``shared`` fills its buffer for ``firsts``, which
    # nobody reads yet, and ``after_shared`` starves -- a stall the runner must relax.
    return sum(seconds) + sum(firsts)


@preprocess
def many() -> Iterator[int]:
    return iter(range(STREAMED))


@depends(many)
@parallel.map(chunk_by=CHUNK)
def produced(x: int) -> int:
    with lead.lock:
        lead.count += 1
    return x


@depends(produced, second_first)
@postprocess(stream=True)
def slow_reader(values: Iterable[int], total: int) -> tuple[int, int]:
    consumed = 0
    for _ in values:
        consumed += 1
        if consumed % CHUNK == 0:
            lead.most = max(lead.most, lead.count - consumed)
            time.sleep(0.002)  # a consumer slower than its producer
    return consumed, total


def test_buffers_stay_bounded_after_a_stall() -> None:
    lead.count = lead.most = 0
    consumed, total = Pipeline([slow_reader]).run(engine="threads", workers=WORKERS, inline=False)
    assert (consumed, total) == (STREAMED, 2 * sum(range(60)))
    # Bounded by the stage's window (a few chunks per worker), not by the stream's length.
    assert lead.most <= 16 * CHUNK * WORKERS, lead.most
