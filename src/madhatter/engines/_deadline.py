"""Interrupt a task that runs past its timeout, where the platform allows it.

On POSIX, in a process's main thread, a ``SIGALRM`` timer raises :class:`TaskTimedOut` inside the
running Python code; a timer the caller had set is put back afterwards. Elsewhere (other threads,
Windows) the timer cannot be set and the task runs on; engines that own their workers (processes,
containers) then stop the worker itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
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
    caller_left, caller_interval = signal.getitimer(signal.ITIMER_REAL)
    if caller_left and caller_left <= seconds:
        yield  # the caller's own alarm (e.g. pytest-timeout) fires first anyway: leave it alone
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TaskTimedOut(seconds)

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        except TaskTimedOut:  # the alarm fired as the block ended: it finished in time
            pass
        signal.signal(signal.SIGALRM, previous)
        if caller_left:  # put the caller's timer back, less the time we spent
            left = max(caller_left - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, caller_interval)
