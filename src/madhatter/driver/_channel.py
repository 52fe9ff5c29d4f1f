"""A channel: the ordered output of one stage, read by one cursor per consumer.

Items are written in chunks (lists) and read by each reader at its own pace; a chunk is dropped as
soon as every reader has passed it, so memory holds only what some consumer has yet to read.
``pending()`` -- the chunks the slowest reader has not finished -- is what producers check for
back-pressure.

A chunk may also be a :class:`~madhatter.engines.Remote`: output left on a cluster, which only the same
engine's tasks read. A reader gets a remote chunk whole, on its own, never cut or merged.
"""

from __future__ import annotations

import collections
from typing import Any

from ..engines import Remote

Chunk = list[Any] | Remote


def chunk_size(chunk: Chunk) -> int:
    """The number of items in a chunk, local or remote."""
    return chunk.count if isinstance(chunk, Remote) else len(chunk)


class Channel:
    """Ordered chunks of items with independent readers."""

    def __init__(self, readers: int) -> None:
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._first = 0  # absolute index of self._chunks[0]
        self._cursors = [[0, 0] for _ in range(readers)]  # [absolute chunk index, offset]
        self._claimed = 0
        self.closed = False
        self.count = 0

    def claim_reader(self) -> int:
        """Hand out the next unused reader index (one per consuming edge)."""
        reader, self._claimed = self._claimed, self._claimed + 1
        if reader >= len(self._cursors):
            raise RuntimeError("more readers claimed than the channel was made for")
        return reader

    def write(self, items: Chunk) -> None:
        if self.closed:
            raise RuntimeError("write to a closed channel")
        if chunk_size(items):
            self._chunks.append(items)
            self.count += chunk_size(items)

    def close(self) -> None:
        self.closed = True

    def pending(self) -> int:
        """How many chunks the slowest reader has not finished reading."""
        if not self._cursors:
            return 0
        slowest = min(chunk for chunk, _ in self._cursors)
        return self._first + len(self._chunks) - slowest

    def starving(self) -> bool:
        """Whether a reader has read everything written so far: a consumer waits on this channel
        (while another reader, lagging, may hold it full)."""
        end = self._first + len(self._chunks)
        return not self.closed and any(chunk >= end for chunk, _ in self._cursors)

    def available(self, reader: int) -> int:
        """How many items ``reader`` could read right now."""
        chunk, offset = self._cursors[reader]
        total = -offset
        for index in range(chunk - self._first, len(self._chunks)):
            total += chunk_size(self._chunks[index])
        return total

    def exhausted(self, reader: int) -> bool:
        """True once the channel is closed and ``reader`` has read everything."""
        chunk, _ = self._cursors[reader]
        return self.closed and chunk >= self._first + len(self._chunks)

    def read(self, reader: int, limit: int) -> Chunk:
        """Up to ``limit`` items for ``reader``, without waiting (possibly none); or, when the next
        chunk is a :class:`Remote`, that chunk whole, whatever ``limit`` says."""
        cursor = self._cursors[reader]
        out: list[Any] = []
        shared = False  # ``out`` is a chunk still owned by the channel: copy before extending
        while len(out) < limit and cursor[0] < self._first + len(self._chunks):
            chunk = self._chunks[cursor[0] - self._first]
            if isinstance(chunk, Remote):
                if out:
                    break  # a remote chunk goes out on its own
                cursor[0] += 1
                self._trim()
                return chunk
            if cursor[1] == 0 and not out and len(chunk) <= limit:
                # Hand the whole chunk over without copying, unless another reader shares it.
                out, shared = (chunk, True) if len(self._cursors) == 1 else (list(chunk), False)
                cursor[0] += 1
                continue
            if shared:
                out, shared = list(out), False
            take = chunk[cursor[1] : cursor[1] + limit - len(out)]
            out.extend(take)
            cursor[1] += len(take)
            if cursor[1] >= len(chunk):
                cursor[0], cursor[1] = cursor[0] + 1, 0
        self._trim()
        return out

    def read_chunk(self, reader: int) -> list[Any] | None:
        """The rest of the next chunk for ``reader``, or ``None`` if nothing is ready.

        For readers in the driver, which never see remote chunks (the runner keeps output on a
        cluster only when every reader is a task of the same engine)."""
        cursor = self._cursors[reader]
        if cursor[0] >= self._first + len(self._chunks):
            return None
        chunk = self._chunks[cursor[0] - self._first]
        if isinstance(chunk, Remote):
            raise RuntimeError("madhatter internal error: a driver-side reader got a remote chunk")
        if cursor[1]:
            out = chunk[cursor[1] :]
        else:
            out = chunk if len(self._cursors) == 1 else list(chunk)
        cursor[0], cursor[1] = cursor[0] + 1, 0
        self._trim()
        return out

    def _trim(self) -> None:
        slowest = min(chunk for chunk, _ in self._cursors)
        while self._first < slowest and self._chunks:
            self._chunks.popleft()
            self._first += 1
