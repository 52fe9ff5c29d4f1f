"""``madhatter run``'s driver runs in a child process, so that a crash in it is still explained.

Cheap steps run in the driver (``docs/guide.md``, "Where cheap steps run"), and code that kills its
process there (``os._exit``, a segfaulting C extension, the OOM killer) used to end the command
in silence. :func:`supervised` forks right after the command line is parsed (one ``fork``, no
second interpreter, no re-import): the child is the driver and runs the command as before; the
parent only waits. The two share a memory page (``driver/_inline_watch.py``) on which the driver
records the step and chunk it is running itself, and marks whether it ended in Python. If it did,
its exit status is passed on unchanged; if it died, the parent prints what it was running, how it
died and how to isolate the step, and exits non-zero.

Signals: a terminal's Ctrl-C reaches the whole process group, so the driver gets its ``SIGINT``
as before. The parent cannot tell that from a ``kill -INT`` sent to it alone, so it passes every
``SIGINT`` on as :data:`FORWARDED_INTERRUPT`, which the driver treats as Ctrl-C unless it is the
echo of a ``SIGINT`` it just had itself (so one Ctrl-C is one ``KeyboardInterrupt``, and two are
two, as before). ``SIGTERM`` and ``SIGHUP`` are passed on as they are, and the parent then ends
by the same signal. The driver is killed if the parent is (Linux).
"""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from ..driver import _inline_watch as inline_watch

FORWARDED_INTERRUPT = signal.SIGUSR2
"""The signal the parent sends the driver for a ``SIGINT`` it received."""
PASSED_ON = (signal.SIGTERM, signal.SIGHUP)
ECHO_SECONDS = 1.0
"""A ``SIGINT`` and a forwarded one this close together are one interrupt, not two."""
IN_DRIVER_ENGINES = frozenset({"serial", "threads"})
"""Engines whose tasks run in the driver's process: only another engine isolates a crash."""
_PR_SET_PDEATHSIG = 1


def supervised(command: Callable[[], int], *, engine: str = "") -> int:
    """Run ``command`` in a forked driver process, which returns its exit code; this process
    waits and then exits with the driver's status (it never returns).

    For a process that is only the command (``main()`` without arguments). ``engine`` (the
    run's engine name) picks the advice printed if the driver dies. Without ``fork`` (or once
    threads run, when forking is unsafe) ``command`` just runs here."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return command()
    page = inline_watch.share()
    kills_before = oom_kills()
    interrupts = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    handled = (signal.SIGINT, *PASSED_ON) if interrupts else PASSED_ON
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # the driver's collections then leave the parent's pages unshared (gc docs)
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, handled)  # until each side's handlers are set
    pid = os.fork()
    if pid == 0:
        return _drive(command, interrupts, parent, blocked)
    received: list[int] = []

    def pass_on(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):  # the driver just ended
            os.kill(pid, FORWARDED_INTERRUPT if signum == signal.SIGINT else signum)

    for signum in handled:
        signal.signal(signum, pass_on)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    _, status = os.waitpid(pid, 0)
    for signum in handled:  # the driver's pid may be reused from now on
        signal.signal(signum, signal.SIG_IGN)
    finished, running = inline_watch.read(page)
    code = os.waitstatus_to_exitcode(status)
    if code < 0 and -code in received:  # ended by a signal the parent was sent and passed on
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    if not finished or code < 0:
        cause = death_cause(code, kills_before, oom_kills())
        running = [record for record in running if record.pid == pid]
        print(f"madhatter: {death_message(cause, running, engine)}", file=sys.stderr)
        code = 128 - code if code < 0 else code or 1
    # This process is only the command's shell: the driver tore down the run's state; a second
    # interpreter teardown here would only cost time (~20 ms).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _drive(command: Callable[[], int], interrupts: bool, parent: int, blocked: set[int]) -> int:
    """The driver's side: run the command, marking on the shared page that it ended in Python."""
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor was killed before the line above
        os._exit(128 + signal.SIGKILL)
    if interrupts:
        _count_interrupts_once()
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        return command()
    finally:
        inline_watch.finished()


def _count_interrupts_once() -> None:
    """A ``SIGINT`` and its forwarded echo raise one ``KeyboardInterrupt``, whichever comes first."""
    unmatched: dict[int, float] = {}

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        other = signal.SIGINT if signum == FORWARDED_INTERRUPT else FORWARDED_INTERRUPT
        now = time.monotonic()
        if now - unmatched.pop(other, -ECHO_SECONDS) < ECHO_SECONDS:
            return  # the other half of an interrupt already raised
        unmatched[signum] = now
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(FORWARDED_INTERRUPT, on_interrupt)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # only here: a few milliseconds of start-up the parent does not pay

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        pass


def death_message(cause: str, running: list[inline_watch.Running], engine: str = "") -> str:
    """The line printed when the driver died: what it ran, how it died, how to isolate the step."""
    if engine in IN_DRIVER_ENGINES:
        isolate = f"the {engine} engine runs steps in the driver: use --engine processes"
    else:
        isolate = "run with --no-inline (or give the step retries=)"
    if running:
        where = " and ".join(f"step {r.step!r} chunk {r.chunk}" for r in running)
        return (
            f"WorkerLost: the driver died running {where} in the driver ({cause}); "
            f"{isolate} so such a crash costs one worker, not the run"
        )
    if engine in IN_DRIVER_ENGINES:
        return f"RunError: the driver died ({cause}); {isolate} so a crash costs one worker"
    return (
        f"RunError: the driver died ({cause}) outside the chunks it runs itself "
        "(in a @preprocess or @postprocess step, or in madhatter itself)"
    )


def death_cause(code: int, kills_before: int | None, kills_after: int | None) -> str:
    """How a process with exit code ``code`` (negative: killed by that signal) died."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code != signal.SIGKILL:
        return f"killed by {name}"
    if kills_before is None or kills_after is None:
        return "killed by SIGKILL (possibly the out-of-memory killer)"
    if kills_after > kills_before:
        return "out of memory: killed by the kernel's OOM killer"
    return "killed by SIGKILL"


def oom_kills(root: pathlib.Path = pathlib.Path("/")) -> int | None:
    """The ``oom_kill`` count of this process's cgroup (v2); None when it cannot be read."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
        path = next(line[3:] for line in lines if line.startswith("0::"))
        events = (root / "sys/fs/cgroup" / path.lstrip("/") / "memory.events").read_text()
    except (OSError, StopIteration):
        return None
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.isdigit():
            return int(value)
    return None
