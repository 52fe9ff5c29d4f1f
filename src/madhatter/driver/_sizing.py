"""How big a chunk should be, and whether a step is worth shipping to workers at all.

Chunks are sized from measured time per item so that one task runs about the stage's
``EngineTraits.task_seconds``: long enough to amortise the hand-off (pickling, a pipe round trip),
short enough to balance load across workers. When the input's length is known, a chunk is also capped so
every worker gets several, so the last chunk never leaves the others idle for long.

A step whose work per item is cheaper than moving the item to a worker and back is run in the
driver instead ("inline"): shipping it could only make it slower. W2 of the benchmarks
(1,000,000 ``x*2+1``) is the case this exists for; W3 (10 us per item) is shipped.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from typing import Any

from ..engines import _shared_memory as shared_memory

PROBE_SECONDS = 0.002
"""Compute time measured in the driver before deciding where a step runs (W2/W5 benchmarks: a
probe this short costs nothing measurable, and times items to well under 10 %)."""

SHIP_FACTOR = 3.0
"""Ship only when an item's compute time exceeds this many times its pickling round trip: with
two workers, parallel time per item is about c/2 + s, which beats c by 20 % only from c > 3 s."""

MIN_SHIPPED_ITEM_SECONDS = 2e-6
"""Below this compute time per item, even a thread hand-off is not worth it."""

INLINE_TARGET_SECONDS = 0.005
"""Chunk length for steps run in the driver: fine-grained progress, negligible bookkeeping."""

MAX_CHUNK_ITEMS = 100_000
"""Upper bound on chunk length, bounding the memory a chunk holds (W5 streams 5M items)."""

CHUNKS_PER_WORKER = 4
"""With a known input length, each worker gets at least this many chunks (load balance)."""

SMOOTHING = 0.3
"""Weight of the newest measurement in the running per-item time."""


class ChunkSizer:
    """Chooses the next chunk length of one stage from measured time per item."""

    def __init__(self, *, fixed: int | None, target_seconds: float, workers: int) -> None:
        self.fixed = fixed
        self.target_seconds = target_seconds
        self.workers = workers
        self.per_item: float | None = None
        self.total: int | None = None

    def observe(self, items: int, seconds: float) -> None:
        if items <= 0:
            return
        sample = seconds / items
        if self.per_item is None:
            self.per_item = sample
        else:
            self.per_item += SMOOTHING * (sample - self.per_item)

    def next_size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        size = int(self.target_seconds / max(self.per_item, 1e-9))
        if self.total is not None:
            size = min(size, math.ceil(self.total / (self.workers * CHUNKS_PER_WORKER)))
        return max(1, min(size, MAX_CHUNK_ITEMS))


TRANSFER_SAMPLE_ITEMS = 1024
"""Items pickled to estimate the cost of shipping (a sample: pickling a whole probe chunk of 40k
items would cost W2 2 % of its run)."""


def transfer_seconds_per_item(inputs: list[Any], outputs: list[Any], *, shared: bool = False) -> float:
    """Time to pickle and unpickle ``inputs`` and ``outputs``, per input item (from a sample).

    With ``shared`` (the engine's ``shares_buffers`` trait), large buffers go the way the engine
    sends them: written once to shared memory and mapped, not copied through the stream.
    """
    if not inputs:
        return 0.0
    share = min(1.0, TRANSFER_SAMPLE_ITEMS / len(inputs))
    inputs = inputs[:TRANSFER_SAMPLE_ITEMS]
    outputs = outputs[: max(1, round(len(outputs) * share))]
    started = time.perf_counter()
    for value in (inputs, outputs):
        try:
            if shared:
                _round_trip_shared(value)
            else:
                pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # not plain-picklable: cloudpickle will be slower still; ship anyway
            return 0.0
    return (time.perf_counter() - started) / len(inputs)


def _round_trip_shared(value: Any) -> None:
    pickled = shared_memory.dumps(value)
    layout, fd = pickled.share()
    try:
        shared_memory.loads(pickled.message(layout), fd)
    finally:
        if fd is not None:
            os.close(fd)


def shipping_pays_off(compute_per_item: float, transfer_per_item: float) -> bool:
    """Whether sending items to workers can beat computing them in the driver."""
    return (
        compute_per_item >= MIN_SHIPPED_ITEM_SECONDS
        and compute_per_item > SHIP_FACTOR * transfer_per_item
    )
