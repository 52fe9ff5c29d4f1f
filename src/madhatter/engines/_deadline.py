"""Interrupt a task that runs past its timeout, where the platform allows it.

On POSIX, in a process's main thread, a ``SIGALRM`` timer raises :class:`TaskTimedOut` inside the
running Python code. Elsewhere (other threads, Windows) the timer cannot be set and the task runs
on; engines that own their workers (processes, containers) then stop the worker itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from ._base import TaskTimedOut


def can_interrupt() -> bool:
    """True when :func:`deadline` can interrupt code running in the calling thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TaskTimedOut` in the block if it runs longer than ``seconds``."""
    if seconds is None or not can_interrupt():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TaskTimedOut(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
