"""The loop a worker runs: receive a task, run it, send the result back.

Tasks run in the order they arrive (the driver sends at most one ahead), so when a worker dies the
driver knows exactly which task it was running. Functions arrive once per worker (keyed by the
task's ``function_key``) and are cached. The worker ignores SIGINT (the driver handles Ctrl-C and
stops the workers itself) and, on Linux, asks the kernel to kill it if the driver dies, so a worker
can never outlive its driver.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _shared_memory as shared_memory
from ._link import Link
from ._serialize import dumps_data, loads
from .kit import timed_call

STOP = b"stop"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - alive, another user's (a reused pid)
        return True
    return os.getppid() != 1  # reparented to init: whoever forked us is gone


def _result_message(
    key: str, ok: bool, value: Any, started: float, seconds: float, shared: bool
) -> tuple[bytes, int | None]:
    """The answer to a task, and the shared file holding its large buffers (or ``None``)."""
    if ok:
        try:
            answer = shared_memory.dumps(value, shared=shared)
            layout, fd = answer.share()
            return dumps_data((key, ok, answer.message(layout), started, seconds)), fd
        except Exception as exc:
            value = TypeError(
                f"the task's output cannot be sent back to the driver: {type(exc).__name__}: {exc}"
            )
    error = shared_memory.Pickled(dumps_data(_portable_error(value))).message(())
    return dumps_data((key, False, error, started, seconds)), None


def _portable_error(error: BaseException) -> BaseException:
    """``error`` if it survives a pickle round trip; else the same without the user's exception
    as ``__cause__`` (a StepFailed keeps its traceback text); else a RuntimeError with its text."""
    for attempt in range(2):
        try:
            loads(dumps_data(error))
            return error
        except Exception:
            if attempt == 0 and error.__cause__ is not None:
                error.__cause__ = None
            else:
                break
    return RuntimeError(f"{type(error).__name__}: {error}")


def _load_function(message: shared_memory.Message, fd: int | None) -> Any:
    """The task function; if it cannot be unpickled here, one that raises why for every task.
    Its shared buffers are mapped copy-on-write: every worker maps the same file."""
    try:
        return shared_memory.loads(message, fd, private=True)
    except Exception as exc:
        error = RuntimeError(
            f"the step's code cannot be loaded in the worker process: {type(exc).__name__}: {exc}"
        )

        def unloadable(argument: Any) -> Any:
            raise error

        return unloadable


def worker_main(link: Link, driver_pid: int) -> None:
    """Serve tasks from ``link`` until told to stop or the driver goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()  # our parent: the driver, or the fork server that ends with it
    if not _alive(driver_pid):  # the driver died before we asked to die with our parent
        return
    serve(link.receive, link.send, shared=shared_memory.AVAILABLE)


def fresh_worker_main() -> None:
    """The entry point of a worker started as a fresh interpreter (``_fresh_process.py``)."""
    import json
    import socket

    from ._fresh_process import STATE_VARIABLE

    state = json.loads(os.environ.pop(STATE_VARIABLE))
    sys.path[:], sys.argv[:] = state["sys_path"], state["sys_argv"]
    worker_main(Link(socket.socket(fileno=state["fd"])), state["driver_pid"])


Receive = Callable[[], tuple[bytes | bytearray, list[int]]]
"""The next message and the descriptors that came with it; ``EOFError`` at the channel's end."""

Send = Callable[[bytes, Sequence[int]], None]
"""Send a message with descriptors (a channel that cannot carry any is never given some)."""


INTERIM = "interim"
"""Marks a message a task sent while it ran, ``(key, INTERIM, message)``, from a task's answer
``(key, ok, answer, started, seconds)``."""


def is_interim(decoded: Any) -> bool:
    """Whether a worker's unpickled message is one its running task sent, not the answer."""
    return isinstance(decoded, tuple) and len(decoded) == 3 and decoded[1] == INTERIM


def serve(receive: Receive, send: Send, *, shared: bool) -> None:
    """Run tasks as they arrive through ``receive`` and answer each through ``send``, until a
    ``STOP`` message or the end of the channel. Shared by local worker processes (a socket that
    carries shared-memory files: ``shared``) and container workers (stdin and stdout).

    While a task runs, what it sends through ``kit.interim_sender`` goes out at once as
    ``(key, INTERIM, message)``, from whichever thread sends it: the answer goes out only after
    the task's function returned, when nothing sends for it any more."""
    functions: dict[str, Any] = {}
    while True:
        try:
            message, fds = receive()
        except (EOFError, OSError):
            return
        if message == STOP:
            return
        key, function_key, function_message, argument_message = loads(message)
        started, clock = time.time(), time.perf_counter()
        function_fd, argument_fd = _descriptors_for(fds, function_message, argument_message)

        def interim(message: Any, key: str = key) -> None:
            send(dumps_data((key, INTERIM, message)), [])

        try:
            if function_message is not None:
                functions[function_key] = _load_function(function_message, function_fd)
            argument = shared_memory.loads(argument_message, argument_fd)
            value, ok = timed_call(functions[function_key], argument, "", interim).value, True
        except Exception as exc:
            value, ok = exc, False
        finally:
            for fd in fds:  # mapped by now, or not needed: the mapping keeps the pages
                os.close(fd)
        argument = None  # its mapping goes with the last reference to it
        reply, reply_fd = _result_message(key, ok, value, started, time.perf_counter() - clock, shared)
        del value
        try:
            send(reply, [] if reply_fd is None else [reply_fd])
        except (BrokenPipeError, OSError):
            return
        finally:
            if reply_fd is not None:
                os.close(reply_fd)


def _descriptors_for(fds: list[int], *messages: shared_memory.Message | None) -> list[int | None]:
    """Each message's shared file: descriptors come in message order, one per message that has
    buffers outside its stream."""
    remaining = iter(fds)
    return [next(remaining) if message is not None and message[1] else None for message in messages]
