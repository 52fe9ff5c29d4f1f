"""Large buffers between local processes through shared memory, not through a pipe.

A value going to or coming from a worker process is pickled with protocol 5. Its large buffers
(at least :data:`SHARED_MIN_BYTES`) stay out of the pickle stream: NumPy arrays, pandas and
Arrow data -- anything that offers pickle's out-of-band buffers -- and ``bytes``, ``bytearray``
and ``memoryview`` objects. The sender writes them once into an anonymous shared-memory file
(``memfd_create``), whose descriptor travels next to the message (``_link.py``); the receiver
maps the file and unpickles with those buffers, so an array comes to life in the shared pages
instead of being copied out of a pipe. A ``bytes`` object must own its memory and is copied once
out of the mapping; arrays and memoryviews are not copied at all.

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
from typing import Any

import cloudpickle

from ._serialize import FunctionPickler, dumps_function

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


def in_stream(data: bytes | None) -> Message | None:
    """Already-pickled ``data`` as a message with no shared buffers (for a channel that cannot
    carry descriptors, such as a container's stdin)."""
    return None if data is None else (data, (), 0)


def dumps(value: Any, *, function: bool = False, shared: bool = AVAILABLE) -> Pickled:
    """Pickle ``value`` (a task function with cloudpickle, data with the standard pickle first),
    leaving buffers of :data:`SHARED_MIN_BYTES` or more out of the stream when ``shared``.

    ``bytes``-like objects cannot leave the stream by pickle's own means: when the stream came
    out at :data:`SHARED_MIN_BYTES` or more, the value is pickled once more with those lifted out
    (a second pass only for values that large, so small messages pay nothing).
    """
    if not shared:
        return Pickled(_pickle(value, function, None))
    buffers: list[memoryview] = []
    data = _pickle(value, function, _out_of_band(buffers))
    if len(data) < SHARED_MIN_BYTES:
        return Pickled(data, buffers)
    buffers = []
    lifter = _Lifter(function, _out_of_band(buffers))
    data = lifter.pickle(value)
    return Pickled(data, buffers + lifter.views, len(lifter.views))


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


def _pickle(value: Any, function: bool, callback: Any) -> bytes:
    if function:
        return dumps_function(value, callback)
    try:
        return pickle.dumps(value, protocol=PROTOCOL, buffer_callback=callback)
    except (pickle.PicklingError, TypeError, AttributeError):
        result: bytes = cloudpickle.dumps(value, protocol=PROTOCOL, buffer_callback=callback)
        return result


def _out_of_band(buffers: list[memoryview]) -> Any:
    """pickle's ``buffer_callback``: keep buffers of the threshold's size or more out of the
    stream (collected in ``buffers``); smaller or non-contiguous ones stay in it."""

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it into the stream
            return True
        if view.nbytes < SHARED_MIN_BYTES:
            return True
        buffers.append(view)
        return False

    return keep


class _Lifter:
    """A pickler that also lifts ``bytes``, ``bytearray`` and ``memoryview`` objects of the
    threshold's size out of the stream, as persistent references to shared buffers."""

    def __init__(self, function: bool, callback: Any) -> None:
        self.views: list[memoryview] = []
        self._function, self._callback = function, callback

    def pickle(self, value: Any) -> bytes:
        stream = io.BytesIO()
        base = FunctionPickler if self._function else pickle.Pickler
        lifter = self

        class Pickler(base):  # type: ignore[misc, valid-type]
            def persistent_id(self, obj: Any) -> Any:
                return lifter.lift(obj)

        try:
            Pickler(stream, protocol=PROTOCOL, buffer_callback=self._callback).dump(value)
        except (pickle.PicklingError, TypeError, AttributeError):
            if self._function:
                raise
            self._function = True  # what plain pickle refuses, cloudpickle may take
            self.views = []
            return self.pickle(value)
        return stream.getvalue()

    def lift(self, obj: Any) -> Any:
        kind = type(obj)
        if kind not in _LIFTED_TYPES:
            return None
        view = memoryview(obj)
        if not view.c_contiguous or view.nbytes < SHARED_MIN_BYTES:
            return None
        self.views.append(view.cast("B"))
        return len(self.views) - 1, kind.__name__, view.format, view.shape


class _Unlifter(pickle.Unpickler):
    """Unpickles a stream whose lifted objects are persistent references to ``lifted``."""

    def __init__(self, data: bytes, buffers: list[memoryview], lifted: list[memoryview]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._lifted = lifted

    def persistent_load(self, pid: Any) -> Any:
        index, kind, format, shape = pid
        view = self._lifted[index]
        if kind == "bytes":
            return bytes(view)  # a bytes object owns its memory: one copy, out of the mapping
        if kind == "bytearray":
            return bytearray(view)
        return view.cast(format, shape) if (format, tuple(shape)) != ("B", (view.nbytes,)) else view


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
