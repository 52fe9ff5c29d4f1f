"""Which step and chunk the driver is running itself, for a supervisor that outlives a crash.

A chunk run in the driver ("inline", see ``_placement.py``) shares the driver's fate: if its code
kills the process (``os._exit``, a segfault, the OOM killer), nothing of the driver is left to say
what happened. ``madhatter run`` therefore runs the driver as a child of a small supervisor
(``cli/_supervisor.py``) that shares one anonymous memory page with it: :func:`share` creates it
before the fork, :func:`enter` and :func:`leave` record there the step and chunk the driver is
running (one slice assignment each: no system call, nothing measurable per chunk), and
:func:`finished` marks a driver that ended by returning or raising, not by dying. When no
supervisor asked (library use), the page is absent and every call returns at once.

Layout: byte 0 is the "finished" flag; :data:`SLOTS` records of :data:`SLOT_SIZE` bytes follow,
slot 0 for the driver's main thread and slot 1 for the probe thread (``_stage.run_in_thread``),
each a 4-byte length then ``pid\\tchunk\\tstep`` in UTF-8. The pid lets the supervisor ignore
records left by a forked worker that ran a nested pipeline.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

SLOT_SIZE = 256
SLOTS = 2
_LENGTH = struct.Struct("<I")
_page: mmap.mmap | None = None

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Running:
    """A chunk the driver was running when it was last looked at."""

    pid: int
    step: str
    chunk: int


def share() -> mmap.mmap:
    """Create the shared page (in the supervisor, before it forks the driver) and use it."""
    global _page
    _page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED)
    return _page


def enter(step: str, chunk: int) -> int:
    """Record that this thread starts running ``chunk`` of ``step`` in the driver; returns its slot."""
    page = _page
    if page is None:
        return -1
    slot = 0 if threading.current_thread() is threading.main_thread() else 1
    payload = f"{os.getpid()}\t{chunk}\t{step}".encode()[: SLOT_SIZE - _LENGTH.size]
    offset = 1 + slot * SLOT_SIZE
    page[offset : offset + _LENGTH.size + len(payload)] = _LENGTH.pack(len(payload)) + payload
    return slot


def leave(slot: int) -> None:
    """Clear the record :func:`enter` made: the chunk ended (done or raised)."""
    page = _page
    if page is not None and slot >= 0:
        offset = 1 + slot * SLOT_SIZE
        page[offset : offset + _LENGTH.size] = b"\0\0\0\0"


def watched(function: Callable[[T], Any], step: str, chunk: int) -> Callable[[T], Any]:
    """``function``, recording ``step`` and ``chunk`` while it runs (for the probe's thread)."""
    if _page is None:
        return function

    def run(argument: T) -> Any:
        slot = enter(step, chunk)
        try:
            return function(argument)
        finally:
            leave(slot)

    return run


def finished() -> None:
    """Mark that the driver ended in Python (returned or raised), not by dying."""
    if _page is not None:
        _page[0] = 1


def read(page: mmap.mmap) -> tuple[bool, list[Running]]:
    """What the supervisor finds on the page: whether the driver finished, and what it ran."""
    running = []
    for slot in range(SLOTS):
        offset = 1 + slot * SLOT_SIZE
        (length,) = _LENGTH.unpack_from(page, offset)
        if not 0 < length <= SLOT_SIZE - _LENGTH.size:
            continue
        start = offset + _LENGTH.size
        try:
            pid, chunk, step = page[start : start + length].decode(errors="replace").split("\t", 2)
            running.append(Running(int(pid), step, int(chunk)))
        except ValueError:  # a record torn by a crash mid-write: nothing to name
            continue
    return page[0] == 1, running
