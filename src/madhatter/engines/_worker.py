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
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ._serialize import dumps_data, loads

STOP = b"stop"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass


def _result_message(key: str, ok: bool, value: Any, started: float, seconds: float) -> bytes:
    if ok:
        try:
            return dumps_data((key, ok, value, started, seconds))
        except Exception as exc:
            value = TypeError(
                f"the task's output cannot be sent back to the driver: {type(exc).__name__}: {exc}"
            )
    return dumps_data((key, False, _portable_error(value), started, seconds))


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


def _load_function(function_bytes: bytes) -> Any:
    """The task function; if it cannot be unpickled here, one that raises why for every task."""
    try:
        return loads(function_bytes)
    except Exception as exc:
        error = RuntimeError(
            f"the step's code cannot be loaded in the worker process: {type(exc).__name__}: {exc}"
        )

        def unloadable(argument: Any) -> Any:
            raise error

        return unloadable


def worker_main(conn: Connection, parent_pid: int) -> None:
    """Serve tasks from ``conn`` until told to stop or the driver goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:  # the driver died before we asked to die with it
        return
    serve(conn.recv_bytes, conn.send_bytes)


def serve(receive: Callable[[], bytes], send: Callable[[bytes], None]) -> None:
    """Run tasks as they arrive through ``receive`` and answer each through ``send``, until a
    ``STOP`` message or the end of the channel. Shared by local worker processes (a pipe) and
    container workers (the container's stdin and stdout)."""
    functions: dict[str, Any] = {}
    while True:
        try:
            message = receive()
        except (EOFError, OSError):
            return
        if message == STOP:
            return
        key, function_key, function_bytes, argument_bytes = loads(message)
        started, clock = time.time(), time.perf_counter()
        try:
            if function_bytes is not None:
                functions[function_key] = _load_function(function_bytes)
            value, ok = functions[function_key](loads(argument_bytes)), True
        except Exception as exc:
            value, ok = exc, False
        reply = _result_message(key, ok, value, started, time.perf_counter() - clock)
        try:
            send(reply)
        except (BrokenPipeError, OSError):
            return
