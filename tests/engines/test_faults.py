"""Faults with real worker processes: dying workers, remote errors, leftovers, Ctrl-C, cancellation.

Steps that kill their process run with ``inline=False``: a probe in the driver would kill pytest.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import madhatter
from madhatter import depends, parallel, preprocess
from madhatter._events import ChunkDone, Event, RunFinished
from madhatter.testing import RecordingListener
from process_helpers import MADHATTER, default_sigint


@preprocess
def items() -> list[int]:
    return list(range(12))


@depends(items)
@parallel.map(chunk_by=2)
def exits(x: int, marker: str = "") -> int:
    if x == 5 and not (marker and os.path.exists(marker)):
        if marker:
            pathlib.Path(marker).touch()
        os._exit(3)
    return x * 2


@depends(items)
@parallel.map(chunk_by=2)
def killed(x: int, marker: str = "") -> int:
    if x == 9 and not (marker and os.path.exists(marker)):
        if marker:
            pathlib.Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


@depends(items)
@parallel.map(chunk_by=3)
def boom(x: int) -> int:
    if x == 7:
        raise ValueError(f"cannot handle {x}")
    return x


def run_processes(step: Callable[..., Any], **options: Any) -> Any:
    return madhatter.run(step, engine="processes", workers=2, inline=False, **options)


@pytest.fixture
def no_children_left(child_pids: Callable[[], list[int]], wait_until: Callable[..., bool]) -> Any:
    """After the test, no worker process of ours remains (alive or zombie)."""
    yield
    # Workers are joined before run() returns; allow nothing but a moment for /proc to catch up.
    assert wait_until(lambda: not child_pids(), timeout=5), f"left behind: {child_pids()}"
    assert multiprocessing.active_children() == []


# -- workers that die --------------------------------------------------------------------------


@pytest.mark.usefixtures("no_children_left")
@pytest.mark.parametrize(
    ("step", "chunk", "how"),
    [(exits, 2, "exited with code 3"), (killed, 4, "killed by SIGKILL")],
    ids=["os._exit", "SIGKILL"],
)
def test_a_dying_worker_fails_the_run_naming_step_and_chunk(
    step: Callable[..., Any], chunk: int, how: str
) -> None:
    name = step.__name__
    with pytest.raises(madhatter.WorkerLost, match=rf"step '{name}' chunk {chunk} died") as caught:
        run_processes(step)
    assert (caught.value.step, caught.value.chunk) == (name, chunk)
    assert how in caught.value.detail


@pytest.mark.usefixtures("no_children_left")
@pytest.mark.parametrize("step", [exits, killed], ids=["os._exit", "SIGKILL"])
def test_a_dying_worker_is_retried(step: Callable[..., Any], tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "died-once"
    retrying = parallel.map(chunk_by=2, retries=1)(step)
    try:
        result = run_processes(retrying, params={"marker": str(marker)})
    finally:
        parallel.map(chunk_by=2)(step)
    assert marker.exists()  # a worker really died once
    assert result == [x * 2 for x in range(12)]


CRASH_SCRIPT = """
import os, pathlib, sys
import madhatter
from madhatter import depends, parallel, preprocess

marker = pathlib.Path(sys.argv[1])

@preprocess
def source():
    return list(range(12))

@depends(source)
@parallel.map(chunk_by=2, retries=int(sys.argv[2]))
def crash_once(x):
    if x == 5 and (not marker.exists() or sys.argv[2] == "0"):  # without retries: every time
        marker.touch()
        os._exit(3)
    return x * 2

if __name__ == "__main__":
    try:
        print(madhatter.run(crash_once, engine="processes", workers=2, inline=sys.argv[3] == "1"))
    except madhatter.WorkerLost as exc:
        print(f"WorkerLost {exc.step} {exc.chunk} {exc.item}")
"""


@pytest.mark.parametrize(("retries", "inline"), [(0, False), (1, True)])
def test_a_crash_is_a_lost_worker_not_a_dead_driver(
    tmp_path: pathlib.Path, retries: int, inline: bool
) -> None:
    """A step that kills its process ends as WorkerLost, or is retried, and the driver lives on.

    Cheap steps may run in the driver (``inline=True``, the default) -- except steps that declare
    ``retries``, which stay in workers where a crash costs only a worker; with ``inline=False``
    nothing runs in the driver (docs/guide.md). In a subprocess, so a dying driver cannot take
    pytest with it."""
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    marker = tmp_path / "crashed-once"
    done = subprocess.run(
        [sys.executable, str(script), str(marker), str(retries), str(int(inline))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert marker.exists()
    assert done.returncode == 0, f"the driver died (exit code {done.returncode}): {done.stderr}"
    # without retries, the chunk [4, 5] is bisected down to its item 1, the 5 that kills
    expected = "WorkerLost crash_once 2 1" if retries == 0 else str([x * 2 for x in range(12)])
    assert done.stdout.strip() == expected


# -- errors from workers -----------------------------------------------------------------------


@pytest.mark.usefixtures("no_children_left")
def test_step_failed_carries_the_cause_and_the_remote_traceback() -> None:
    with pytest.raises(madhatter.StepFailed) as caught:
        run_processes(boom)
    error = caught.value
    assert (error.step, error.chunk, error.preview) == ("boom", 2, "[6, 7, 8]")
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "cannot handle 7"
    lines, first = inspect.getsourcelines(boom)
    raise_line = first + next(i for i, line in enumerate(lines) if "raise ValueError" in line)
    assert f'{__file__}", line {raise_line}, in boom' in error.remote_traceback
    assert "ValueError: cannot handle 7" in error.remote_traceback
    assert "_chain.py" not in error.remote_traceback  # only the user's frames
    assert str(error).startswith("step 'boom' failed on chunk 2 (input [6, 7, 8]), at item 1: 7\n")


AWKWARD_SCRIPT = """
import madhatter
from madhatter import depends, parallel, preprocess

class TwoPartError(Exception):
    # Pickles, but cannot be unpickled: pickle calls TwoPartError(message), one argument short.
    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")

@preprocess
def source():
    return list(range(12))

@depends(source)
@parallel.map(chunk_by=3)
def awkward(x):
    if x == 4:
        raise TwoPartError("item 4", "is awkward")
    return x

if __name__ == "__main__":
    try:
        madhatter.run(awkward, engine="processes", workers=2, inline=False)
    except madhatter.StepFailed as exc:
        print(exc)
"""


def test_an_error_that_cannot_be_unpickled_still_fails_the_step(tmp_path: pathlib.Path) -> None:
    # In a subprocess: if the driver hangs, this test must not leave workers in pytest's process.
    script = tmp_path / "awkward.py"
    script.write_text(AWKWARD_SCRIPT)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung: a worker's reply that cannot be unpickled was never answered")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("step 'awkward' failed on chunk 1 (input [3, 4, 5])")
    assert "TwoPartError: item 4: is awkward" in done.stdout


@pytest.mark.usefixtures("no_children_left")
def test_workers_are_gone_after_success_and_after_failure(child_pids: Callable[[], list[int]]) -> None:
    listener = RecordingListener()
    assert run_processes(items_doubled, listeners=[listener]) == [x * 2 for x in range(12)]
    workers = {e.worker for e in listener.of_type(ChunkDone)}  # type: ignore[attr-defined]
    assert workers
    assert all(name.startswith("pid-") for name in workers)
    assert child_pids() == []
    with pytest.raises(madhatter.StepFailed):
        run_processes(boom)
    assert child_pids() == []


@depends(items)
@parallel.map(chunk_by=2)
def items_doubled(x: int) -> int:
    return x * 2


# -- shipping ----------------------------------------------------------------------------------


def make_locked_step(log: pathlib.Path) -> Callable[..., Any]:
    lock = threading.Lock()

    @preprocess
    def logged_source() -> list[int]:
        log.write_text("the source ran")
        return [1, 2, 3]

    @depends(logged_source)
    @parallel.map
    def guarded(x: int) -> int:
        with lock:
            return x

    return guarded


@pytest.mark.usefixtures("no_children_left")
def test_an_unpicklable_step_is_refused_before_any_work(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "source.log"
    step = make_locked_step(log)
    with pytest.raises(
        madhatter.ShippingError,
        match=r"step 'guarded' cannot be sent to the 'processes' engine's workers: its function "
        r"cannot be pickled \(TypeError: .*lock",
    ) as caught:
        madhatter.run(step, engine="processes", workers=2)
    assert caught.value.step == "guarded"
    assert not log.exists()
    # The same step is fine where nothing is pickled.
    assert madhatter.run(step, engine="threads", workers=2) == [1, 2, 3]


MAIN_SCRIPT = """
import json, os, sys
import madhatter
from madhatter import depends, parallel, postprocess, preprocess

def make_adder(k):
    @parallel.map(name="add_k")
    def add(x):
        return x + k
    return add

@preprocess
def source():
    return list(range(10))

add = depends(source)(make_adder(100))
square = depends(add)(parallel.map(name="square", chunk_by=3)(lambda x: (x * x, os.getpid())))

@depends(square)
@postprocess
def collect(pairs):
    return {"values": [v for v, _ in pairs], "pids": sorted({p for _, p in pairs})}

if __name__ == "__main__":
    result = madhatter.run(collect, engine="processes", workers=2, inline=False)
    result["driver"] = os.getpid()
    print(json.dumps(result))
"""


def test_main_closures_and_lambdas_work_on_processes(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "pipeline_main.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["values"] == [(x + 100) ** 2 for x in range(10)]
    assert result["driver"] not in result["pids"]


# -- Ctrl-C and cancellation -------------------------------------------------------------------

SLOW_PIPELINE = """
import time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def many():
    return list(range(2000))

@depends(many)
@parallel.map(chunk_by=1)
def slow(x):
    time.sleep(0.05)
    return x

@depends(slow)
@postprocess
def done(values):
    return len(values)
"""


def read_events(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


@pytest.mark.parametrize("options", [["--no-inline"], []], ids=["no-inline", "default"])
def test_ctrl_c_stops_every_process_and_exits_130(
    options: list[str],
    tmp_path: pathlib.Path,
    session_pids: Callable[[int], list[int]],
    wait_until: Callable[..., bool],
) -> None:
    pipeline = tmp_path / "slow_pipeline.py"
    pipeline.write_text(SLOW_PIPELINE)
    events = tmp_path / "events.jsonl"
    command = [str(MADHATTER), "run", str(pipeline), "--engine", "processes", "--workers", "2"]
    command += [*options, "--events", str(events)]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    ) as process:
        try:
            started = wait_until(
                lambda: (
                    process.poll() is not None
                    or any(e["type"] == "ChunkDone" for e in read_events(events))
                ),
                timeout=60,
            )
            assert started, "no ChunkDone event within the deadline"
            assert process.poll() is None, f"the run ended before Ctrl-C: {process.communicate()}"
            # the driver and its two workers
            assert wait_until(lambda: len(session_pids(process.pid)) >= 3, timeout=10)
            os.killpg(process.pid, signal.SIGINT)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert stdout == ""
    assert wait_until(lambda: not session_pids(process.pid), timeout=10), session_pids(process.pid)
    finished = [e for e in read_events(events) if e["type"] == "RunFinished"]
    assert [e["status"] for e in finished] == ["cancelled"]


@depends(items)
@parallel.map(chunk_by=1)
def dawdle(x: int) -> int:
    time.sleep(0.2)
    return x


@pytest.mark.usefixtures("no_children_left")
def test_cancel_event_stops_the_run(engine: str) -> None:
    cancel = threading.Event()
    first_chunk = threading.Event()

    def listener(event: Event) -> None:
        if isinstance(event, ChunkDone):
            first_chunk.set()

    def canceller() -> None:
        if first_chunk.wait(timeout=60):
            cancel.set()

    recorder = RecordingListener()
    thread = threading.Thread(target=canceller)
    thread.start()
    try:
        with pytest.raises(madhatter.RunCancelled, match="run cancelled"):
            madhatter.run(
                dawdle, engine=engine, workers=2, cancel=cancel, listeners=[listener, recorder]
            )
    finally:
        first_chunk.set()
        thread.join()
    assert cancel.is_set()
    done = recorder.of_type(ChunkDone)
    assert 0 < len(done) < 12
    finished = recorder.of_type(RunFinished)
    assert [e.status for e in finished] == ["cancelled"]  # type: ignore[attr-defined]
