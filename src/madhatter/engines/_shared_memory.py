"""Large buffers between local processes through shared memory, not through a pipe.

A value going to or coming from a worker process is pickled with protocol 5. Its large buffers
(at least :data:`SHARED_MIN_BYTES`) stay out of the pickle stream: NumPy arrays, pandas and
Arrow data -- anything that offers pickle's out-of-band buffers -- and ``bytes``, ``bytearray``
and ``memoryview`` objects. The sender writes them once into an anonymous shared-memory file
(``memfd_create``), whose descriptor travels next to the message (``_link.py``); the receiver
maps the file and unpickles with those buffers, so an array comes to life in the shared pages
instead of being copied out of a pipe. A ``bytes`` object must own its memory and is copied once
out of the mapping (a ``memoryview`` arrives as ``bytes``, as cloudpickle always sends it);
arrays, and ``pickle.PickleBuffer`` objects, which arrive as memoryviews, are not copied at all.

Why an anonymous file and not a named segment in ``/dev/shm`` (``multiprocessing.shared_memory``,
joblib's memory maps)? It has no name that anything could forget to unlink: the kernel frees it
when the last descriptor and mapping are gone, whoever dies in between -- driver or worker,
SIGKILL, the OOM killer. There is no resource tracker to start and no cleanup pass to run.

The mapping a receiver makes is writable and its own: arguments and results get a private file
each (shared, so no page is copied to map it), and a function's buffers, which every worker of a
stage maps from the same file, are mapped copy-on-write, so one worker's writes never reach
another.

Linux only (``memfd_create``); elsewhere every value travels in the pickle stream.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
from collections.abc import Sequence
from typing import IO, Any

from ._serialize import FunctionPickler

SHARED_MIN_BYTES = 1 << 20
"""Buffers from this size on travel through shared memory (joblib's memory-mapping threshold):
below it, creating, filling and mapping a file costs more than the pipe."""

AVAILABLE = hasattr(os, "memfd_create")
"""Whether this platform has anonymous shared-memory files (Linux)."""

PROTOCOL = 5
_ALIGNMENT = 64  # each buffer starts on a cache line (and any NumPy dtype's alignment)
_LIFTED_TYPES = (bytes, bytearray, memoryview)

Layout = tuple[tuple[int, int], ...]
"""Where each buffer lies in the shared file: ``(offset, length)`` pairs, in pickle's order."""

Message = tuple[bytes, Layout, int]
"""A value as it travels: the pickle stream, its buffers' layout, how many of them are lifted."""


class Pickled:
    """A value pickled for a local process, its large buffers not yet written anywhere.

    ``data`` is the pickle stream. ``buffers`` are views of the sender's own objects (no copy
    yet); the last ``lifted`` of them are lifted ``bytes``-like objects rather than pickle's
    out-of-band buffers. :meth:`share` writes them into a new shared file.
    """

    __slots__ = ("buffers", "data", "lifted")

    def __init__(self, data: bytes, buffers: Sequence[memoryview] = (), lifted: int = 0) -> None:
        self.data = data
        self.buffers = list(buffers)
        self.lifted = lifted

    @property
    def size(self) -> int:
        """The bytes this value travels as: its stream and its shared buffers."""
        return len(self.data) + self.shared_bytes

    @property
    def shared_bytes(self) -> int:
        """How many bytes travel through shared memory rather than in ``data``."""
        return sum(view.nbytes for view in self.buffers)

    def share(self) -> tuple[Layout, int | None]:
        """Write the buffers into a new shared file: their layout and the file's descriptor,
        which the caller closes once it has sent it (``((), None)`` if there are no buffers)."""
        if not self.buffers:
            return (), None
        layout: list[tuple[int, int]] = []
        offset = 0
        for view in self.buffers:
            layout.append((offset, view.nbytes))
            offset += -(-view.nbytes // _ALIGNMENT) * _ALIGNMENT
        fd = os.memfd_create("madhatter", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(offset, 1))
            for view, (start, _length) in zip(self.buffers, layout, strict=False):
                _write_all(fd, view, start)
        except BaseException:
            os.close(fd)
            raise
        return tuple(layout), fd

    def message(self, layout: Layout) -> Message:
        """What travels in the message for this value (its descriptor travels beside it)."""
        return self.data, layout, self.lifted


def message_bytes(message: Message) -> int:
    """The bytes a value travelled as: its stream and its shared buffers."""
    data, layout, _lifted = message
    return len(data) + sum(length for _offset, length in layout)


def in_stream(data: bytes | None) -> Message | None:
    """Already-pickled ``data`` as a message with no shared buffers (for a channel that cannot
    carry descriptors, such as a container's stdin)."""
    return None if data is None else (data, (), 0)


def dumps(value: Any, *, function: bool = False, shared: bool = AVAILABLE) -> Pickled:
    """Pickle ``value`` (a task function with cloudpickle, data with the standard pickle first),
    leaving buffers of :data:`SHARED_MIN_BYTES` or more out of the stream when ``shared``.

    ``bytes``-like objects cannot leave the stream by pickle's own means. The first pass stops as
    soon as its stream passes :data:`SHARED_MIN_BYTES`; only then is the value pickled again with
    those objects lifted out, so small messages pay nothing and a large one wastes at most a
    megabyte of pickling.
    """
    if not shared:
        stream = io.BytesIO()
        _dump(value, stream, function, None, None)
        return Pickled(stream.getvalue())
    collected = _OutOfBand()
    capped = _CappedStream(SHARED_MIN_BYTES)
    try:
        _dump(value, capped, function, collected, None)
        return Pickled(capped.getvalue(), collected.views)
    except _StreamTooLarge:
        pass
    collected, lifter, stream = _OutOfBand(), _Lifter(), io.BytesIO()
    _dump(value, stream, function, collected, lifter)
    return Pickled(stream.getvalue(), collected.views + lifter.views, len(lifter.views))


def loads(message: Message, fd: int | None = None, *, private: bool = False) -> Any:
    """Unpickle a :meth:`Pickled.message`, its buffers mapped from the shared file ``fd``
    (which stays the caller's to close). ``private`` maps it copy-on-write, for a file that
    other processes map too."""
    data, layout, lifted = message
    if fd is None or not layout:
        return pickle.loads(data)
    views = _map(fd, layout, private)
    count = len(views) - lifted
    if not lifted:
        return pickle.loads(data, buffers=views)
    return _Unlifter(data, views[:count], views[count:]).load()


def _dump(
    value: Any, stream: IO[bytes], function: bool, collected: _OutOfBand | None, lifter: _Lifter | None
) -> None:
    """Pickle ``value`` into ``stream``: a function with :class:`FunctionPickler`, data with the
    standard pickler first (fast for plain data) and that one for what the standard one refuses."""
    bases: list[type[pickle.Pickler]] = (
        [FunctionPickler] if function else [pickle.Pickler, FunctionPickler]
    )
    for attempt, base in enumerate(bases):
        cls = base if lifter is None else lifter.pickler_class(base)
        try:
            cls(stream, protocol=PROTOCOL, buffer_callback=collected).dump(value)
            return
        except (pickle.PicklingError, TypeError, AttributeError):
            if attempt == len(bases) - 1:
                raise
            stream.seek(0)
            stream.truncate()
            for part in (collected, lifter):
                if part is not None:
                    part.views.clear()


class _OutOfBand:
    """pickle's ``buffer_callback``: keeps buffers of the threshold's size or more out of the
    stream (in :attr:`views`); smaller or non-contiguous ones stay in it."""

    def __init__(self) -> None:
        self.views: list[memoryview] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it into the stream
            return True
        if view.nbytes < SHARED_MIN_BYTES:
            return True
        self.views.append(view)
        return False


class _StreamTooLarge(Exception):
    """The first pass's stream passed the threshold: pickle again, lifting bytes-like objects."""


class _CappedStream(io.BytesIO):
    """A stream that refuses to grow past ``limit`` bytes (the pickler writes it frame by frame,
    and a large ``bytes`` object in one call, before copying it anywhere)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + memoryview(data).nbytes > self._limit:
            raise _StreamTooLarge
        return super().write(data)


class _Lifter:
    """Lifts ``bytes``, ``bytearray`` and ``memoryview`` objects of the threshold's size out of
    the stream (into :attr:`views`), as persistent references to shared buffers."""

    def __init__(self) -> None:
        self.views: list[memoryview] = []

    def pickler_class(self, base: type[pickle.Pickler]) -> type[pickle.Pickler]:
        lift = self.lift

        class LiftingPickler(base):  # type: ignore[misc, valid-type]
            def persistent_id(self, obj: Any) -> Any:
                return lift(obj)

        return LiftingPickler

    def lift(self, obj: Any) -> Any:
        kind = type(obj)
        if kind not in _LIFTED_TYPES:
            return None
        view = memoryview(obj)
        if not view.c_contiguous or view.nbytes < SHARED_MIN_BYTES:
            return None
        self.views.append(view.cast("B"))
        return len(self.views) - 1, kind is bytearray


class _Unlifter(pickle.Unpickler):
    """Unpickles a stream whose lifted objects are persistent references to ``lifted``."""

    def __init__(self, data: bytes, buffers: list[memoryview], lifted: list[memoryview]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._lifted = lifted

    def persistent_load(self, pid: Any) -> Any:
        index, is_bytearray = pid
        view = self._lifted[index]  # copied once out of the mapping: these types own their memory
        return bytearray(view) if is_bytearray else bytes(view)


def _map(fd: int, layout: Layout, private: bool) -> list[memoryview]:
    start, length = layout[-1]
    size = max(start + length, 1)
    if private:  # copy-on-write; prefaulting would copy every page
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)
    else:
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
    whole = memoryview(mapping)
    return [whole[offset : offset + length] for offset, length in layout]


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    written = 0
    while written < view.nbytes:
        written += os.pwrite(fd, view[written:], offset + written)
