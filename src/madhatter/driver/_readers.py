"""A parallel stage's input, and a driver step's whole input: readers over a source.

* :class:`IterableReader` reads a driver step's value (a list, or any iterable, however long);
* :class:`ChannelReader` reads a parallel stage's output :class:`~._channel.Channel` through one
  cursor of its own;
* :class:`Collector` drains a channel into a list, for a step that wants its input whole.

Readers never wait: they hand over what is there, and the evaluator drives the run until more is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sized
from typing import Any, Protocol

from .._errors import StepFailed
from ..engines import Remote
from ._chain import user_traceback
from ._channel import Channel, Chunk


class Reader(Protocol):
    """A stage's input: items read in order, without waiting where possible."""

    def ready(self, count: int) -> bool:
        """Whether ``count`` items (or the rest of a finished input) can be read now."""

    def available(self) -> int:
        """Items readable right now (a lower bound)."""

    def read(self, count: int) -> Chunk:
        """Up to ``count`` items (or a remote chunk, whole)."""

    @property
    def exhausted(self) -> bool:
        """True once everything has been read."""

    @property
    def total(self) -> int | None:
        """The number of items in the whole input, once known."""


class IterableReader:
    """Reads a driver step's value (a list, or any iterable, however long).

    An exception raised while iterating (a generator source failing midway) becomes a
    :class:`StepFailed` naming the step that produced the iterable.
    """

    def __init__(self, iterable: Iterable[Any], step: str) -> None:
        self._step = step
        self._total = len(iterable) if isinstance(iterable, Sized) else None
        self._iterator: Iterator[Any] = iter(iterable)
        self._done = False
        self._count = 0

    def ready(self, count: int) -> bool:
        return True

    def available(self) -> int:
        return 0 if self._done else 1

    def read(self, count: int) -> list[Any]:
        try:
            items = list(itertools.islice(self._iterator, count))
        except Exception as exc:
            where = f"after {self._count} items"
            raise StepFailed(self._step, 0, where, user_traceback(exc)) from exc
        self._count += len(items)
        if len(items) < count:
            self._done = True
        return items

    @property
    def exhausted(self) -> bool:
        return self._done

    @property
    def total(self) -> int | None:
        return self._count if self._done else self._total


class ChannelReader:
    """Reads a parallel stage's output channel through one of its cursors."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._reader = channel.claim_reader()

    def ready(self, count: int) -> bool:
        return self._channel.closed or self._channel.available(self._reader) >= count

    def available(self) -> int:
        return self._channel.available(self._reader)

    def read(self, count: int) -> Chunk:
        return self._channel.read(self._reader, count)

    def read_chunk(self) -> list[Any] | None:
        return self._channel.read_chunk(self._reader)

    @property
    def exhausted(self) -> bool:
        return self._channel.exhausted(self._reader)

    @property
    def total(self) -> int | None:
        return self._channel.count if self._channel.closed else None


class Collector:
    """Drains a reader into a list, for a step that wants its input whole."""

    def __init__(self, reader: ChannelReader) -> None:
        self.reader = reader
        self.items: list[Any] = []

    def pump(self) -> bool:
        """Take whatever is readable now; return whether anything was."""
        if self.reader.exhausted:
            return False
        items = self.reader.read(max(1, self.reader.available()))
        if isinstance(items, Remote):
            raise RuntimeError("madhatter internal error: a driver-side reader got a remote chunk")
        self.items.extend(items)
        return bool(items)

    @property
    def done(self) -> bool:
        return self.reader.exhausted
