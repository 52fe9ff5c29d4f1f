"""A step that kills the driver's process never ends ``madhatter run`` in silence (issue 11).

Cheap steps run in the driver; ``madhatter run`` runs the driver under a supervisor that names the
step and chunk it was running when it died. Real processes: the ``madhatter`` script in its own
session, so that a leftover process of the run would be seen.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from process_helpers import MADHATTER

CRASH_PIPELINE = """
import os, signal, time
from madhatter import depends, parallel, postprocess, preprocess

HOW = os.environ.get("HOW", "exit")
MARKER = os.environ.get("MARKER", "")

@preprocess
def source():
    return list(range(100))

@depends(source)
@parallel(chunk_by=10, **OPTIONS)
def killer_step(chunk):
    if 50 in chunk and not (MARKER and os.path.exists(MARKER)):
        if MARKER:
            open(MARKER, "w").close()
        if HOW == "segfault":
            import ctypes
            ctypes.string_at(0)
        elif HOW == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif HOW == "sleep":
            time.sleep(60)
        os._exit(3)
    return [x * 2 for x in chunk]

@depends(killer_step)
@postprocess
def total(values):
    return sum(values)
"""
FULL = sum(x * 2 for x in range(100))
"""The result when no chunk is lost."""


def write_pipeline(tmp_path: pathlib.Path, options: str = "") -> pathlib.Path:
    script = tmp_path / "crash.py"
    script.write_text(CRASH_PIPELINE.replace("**OPTIONS", options))
    return script


def run_cli(
    script: pathlib.Path,
    session_pids: Callable[[int], list[int]],
    wait_until: Callable[..., bool],
    *options: str,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """``madhatter run SCRIPT -q`` on the default engine; checks that no process is left."""
    command = [str(MADHATTER), "run", str(script), "-q", *options]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **env},
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    assert wait_until(lambda: not session_pids(process.pid), timeout=10), session_pids(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("how", "cause", "status"),
    [("exit", "(exit code 3)", 3), ("segfault", "(killed by SIGSEGV)", 128 + signal.SIGSEGV)],
    ids=["os._exit", "segfault"],
)
def test_a_step_that_kills_the_driver_is_named(
    how: str,
    cause: str,
    status: int,
    tmp_path: pathlib.Path,
    session_pids: Callable[[int], list[int]],
    wait_until: Callable[..., bool],
) -> None:
    done = run_cli(write_pipeline(tmp_path), session_pids, wait_until, HOW=how)
    assert done.returncode == status, done.stderr
    assert done.stdout == ""
    assert "WorkerLost: the driver died running step 'killer_step' chunk 5" in done.stderr
    assert cause in done.stderr
    assert "--no-inline" in done.stderr
    assert "retries=" in done.stderr


def test_a_driver_killed_by_sigkill_says_so(
    tmp_path: pathlib.Path, session_pids: Callable[[int], list[int]], wait_until: Callable[..., bool]
) -> None:
    done = run_cli(write_pipeline(tmp_path), session_pids, wait_until, HOW="sigkill")
    assert done.returncode == 128 + signal.SIGKILL, done.stderr
    assert "step 'killer_step' chunk 5" in done.stderr
    assert "SIGKILL" in done.stderr or "out of memory" in done.stderr


def test_with_retries_the_crash_costs_one_worker(
    tmp_path: pathlib.Path, session_pids: Callable[[int], list[int]], wait_until: Callable[..., bool]
) -> None:
    marker = tmp_path / "died-once"
    script = write_pipeline(tmp_path, "retries=1")
    done = run_cli(script, session_pids, wait_until, MARKER=str(marker))
    assert marker.exists()  # the first attempt really died, in a worker
    assert (done.returncode, done.stdout.strip()) == (0, str(FULL)), done.stderr


def test_with_skip_the_lost_items_are_reported_skipped(
    tmp_path: pathlib.Path, session_pids: Callable[[int], list[int]], wait_until: Callable[..., bool]
) -> None:
    done = run_cli(write_pipeline(tmp_path, "on_error='skip'"), session_pids, wait_until)
    assert done.returncode == 0, done.stderr
    assert "skipped in step killer_step (chunk 5)" in done.stderr
    assert "WorkerLost" in done.stderr
    lost_at_most = sum(x * 2 for x in range(50, 60))  # the chunk, or only its poison item
    assert FULL - lost_at_most <= int(done.stdout) < FULL


def test_with_no_inline_the_worker_is_lost_not_the_driver(
    tmp_path: pathlib.Path, session_pids: Callable[[int], list[int]], wait_until: Callable[..., bool]
) -> None:
    done = run_cli(write_pipeline(tmp_path), session_pids, wait_until, "--no-inline")
    assert done.returncode == 1, done.stderr
    assert "WorkerLost: the worker running step 'killer_step' chunk 5 died" in done.stderr
    assert "the driver died" not in done.stderr


@pytest.mark.parametrize(
    ("sent", "status", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, -signal.SIGTERM, "")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_to_the_supervisor_alone_reaches_the_driver(
    sent: int,
    status: int,
    said: str,
    tmp_path: pathlib.Path,
    session_pids: Callable[[int], list[int]],
    wait_until: Callable[..., bool],
) -> None:
    """``kill -INT PID`` (not the process group, as a terminal does) still interrupts the run,
    and ``kill PID`` still ends it, with nothing left behind."""
    marker = tmp_path / "sleeping"
    command = [str(MADHATTER), "run", str(write_pipeline(tmp_path)), "-q"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, "HOW": "sleep", "MARKER": str(marker)},
    ) as process:
        try:
            assert wait_until(marker.exists, timeout=30), process.communicate(timeout=5)
            time.sleep(0.1)
            process.send_signal(sent)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    assert process.returncode == status, stderr
    assert said in stderr
    assert "the driver died" not in stderr
    assert stdout == ""
    assert wait_until(lambda: not session_pids(process.pid), timeout=10), session_pids(process.pid)
