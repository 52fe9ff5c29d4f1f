"""Real ``madhatter worker`` processes against a real store (SQLite file, or a real Redis server):
runs complete, failures are recorded with their step, a SIGKILLed worker's run is finished by
another exactly once, a stopping worker gives its run back, and cancel stops the engine's tasks."""

from __future__ import annotations

import json
import os
import pathlib
import signal
from collections.abc import Callable
from typing import Any

import pytest
from service_helpers import GATED, TRIVIAL, Workers, write_pipeline

from madhatter.service import Store
from madhatter.service._records import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED

pytestmark = pytest.mark.slow


FAILING = """
from madhatter import depends, parallel, preprocess

@preprocess
def numbers():
    return [1, 2, 3, 4]

@depends(numbers)
@parallel(chunk_by=1)
def explode(chunk):
    if chunk == [3]:
        raise ZeroDivisionError("cannot divide by item 3")
    return chunk
"""

GATED_TASK = """
import os, pathlib, time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def one():
    return [0]

@depends(one)
@parallel.map(timeout=600)  # a timeout keeps the step in the engine's worker processes
def gate(x, folder: str = ""):
    here = pathlib.Path(folder)
    (here / f"started-{os.getppid()}").touch()
    while not (here / "open").exists():
        time.sleep(0.02)
    return os.getppid()

@depends(gate)
@postprocess
def who(pids):
    return pids[0]
"""

SLOW = """
import time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def items(n: int = 2000):
    return list(range(n))

@depends(items)
@parallel.map(chunk_by=1, timeout=600)
def slow(x):
    time.sleep(0.05)
    return x

@depends(slow)
@postprocess
def count(values):
    return len(values)
"""

WaitUntil = Callable[..., bool]


def _submit_gated(
    tmp_path: pathlib.Path, store: Store, name: str, source: str
) -> tuple[pathlib.Path, pathlib.Path, Any]:
    """Write a gated pipeline, queue a run of it: ``(pipeline file, gate folder, run)``. The run
    marks ``started-PID`` in the gate and waits until the test creates ``gate/open``."""
    pipeline = write_pipeline(tmp_path, name, source)
    gate = tmp_path / "gate"
    gate.mkdir()
    return pipeline, gate, store.submit(name, {"folder": str(gate)})


def _finished(store: Store, run_id: str) -> bool:
    record = store.get(run_id)
    return record is not None and record.terminal


def test_a_worker_runs_a_queued_run_to_its_result(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    run = store.submit("trivial", {"n": 10})
    workers.start(store_url, str(pipeline), "--engine", "threads")
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.attempt, record.items, record.result_preview) == (
        SUCCEEDED,
        1,
        10,
        "90",
    )
    assert store.result(run.id) == ("json", b"90")
    types = [e["type"] for _, e in store.events(run.id)]
    assert types[0] == "Log"
    assert types[1] == "RunStarted"
    assert types[-1] == "RunFinished"
    assert "ChunkDone" in types or "StepFinished" in types


def test_a_worker_loads_the_pipelines_serve_recorded(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    store.set_meta("pipelines", json.dumps([f"renamed={pipeline}"]))
    run = store.submit("renamed", {"n": 3})
    workers.start(store_url, "--engine", "serial")
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    assert store.result(run.id) == ("json", b"6")


def test_a_failing_step_is_recorded_with_step_chunk_and_traceback(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "failing", FAILING)
    run = store.submit("failing", {})
    workers.start(store_url, str(pipeline), "--engine", "threads")
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    record = store.get(run.id)
    assert record is not None
    assert record.status == FAILED
    assert record.error is not None
    assert (record.error.type, record.error.step, record.error.chunk) == ("StepFailed", "explode", 2)
    assert record.error.traceback is not None
    assert "ZeroDivisionError: cannot divide by item 3" in (record.error.traceback)
    assert store.result(run.id) is None


LOGGING = """
import logging
from madhatter import depends, postprocess, preprocess

@preprocess
def files(n: int = 3):
    logging.getLogger("reader").warning("reading %d files", n)
    return list(range(n))

@depends(files)
@postprocess
def count(values):
    logging.getLogger("reader").debug("not shown: below the root logger's level")
    return len(values)
"""


def test_log_records_of_a_run_go_to_its_log(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "logging_steps", LOGGING)
    run = store.submit("logging_steps", {"n": 5})
    workers.start(store_url, str(pipeline), "--engine", "serial")
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    logs = [e["message"] for _, e in store.events(run.id) if e["type"] == "Log"]
    assert "WARNING reader: reading 5 files" in logs
    assert not any("not shown" in line for line in logs)


UNSTORABLE = """
import threading
from madhatter import depends, postprocess, preprocess

@preprocess
def one():
    return [1]

@depends(one)
@postprocess
def lock(values):
    return threading.Lock()  # neither JSON nor picklable
"""


def test_a_result_that_cannot_be_stored_fails_the_run_once(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "unstorable", UNSTORABLE)
    run = store.submit("unstorable", {})
    workers.start(store_url, str(pipeline), "--engine", "serial")
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.attempt) == (FAILED, 1)
    assert record.error is not None
    assert record.error.type == "ResultError"
    assert "cannot pickle '_thread.lock' object" in record.error.message


def test_unknown_pipelines_and_bad_params_fail_the_run_not_the_worker(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    unknown = store.submit("not_registered_here", {})
    bad = store.submit("trivial", {"n": "many"})
    good = store.submit("trivial", {"n": 2})
    workers.start(store_url, str(pipeline), "--engine", "serial")
    assert wait_until(lambda: all(_finished(store, r.id) for r in (unknown, bad, good)), timeout=60)
    first, second, third = (store.get(r.id) for r in (unknown, bad, good))
    assert first is not None
    assert first.error is not None
    assert first.status == FAILED
    assert "no pipeline named 'not_registered_here'" in first.error.message
    assert second is not None
    assert second.error is not None
    assert second.status == FAILED
    assert "'many'" in second.error.message
    assert third is not None
    assert third.status == SUCCEEDED


def test_a_sigkilled_workers_run_is_requeued_and_finished_by_another_exactly_once(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline, gate, run = _submit_gated(tmp_path, store, "gated", GATED)
    options = (str(pipeline), "--engine", "serial", "--lease", "1")
    first = workers.start(store_url, *options)
    assert wait_until(lambda: list(gate.glob("started-*")), timeout=60), workers.logs()
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.attempt) == (RUNNING, 1)

    os.killpg(first.pid, signal.SIGKILL)  # no goodbye: only the lease can tell
    first.wait()
    (gate / "open").touch()
    second = workers.start(store_url, *options)
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()

    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.attempt, record.lost) == (SUCCEEDED, 2, 1)
    assert store.result(run.id) == ("json", str(second.pid).encode())  # the second one finished it
    assert sorted(p.name for p in gate.glob("started-*")) == sorted(
        [f"started-{first.pid}", f"started-{second.pid}"]
    )  # started once by each, never a third time
    finished = [e for _, e in store.events(run.id) if e["type"] == "RunFinished"]
    assert [(e["status"], e["attempt"]) for e in finished] == [("succeeded", 2)]


def test_a_paused_worker_that_wakes_after_its_run_was_re_leased_overwrites_nothing(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline, gate, run = _submit_gated(tmp_path, store, "gated", GATED)
    options = (str(pipeline), "--engine", "serial", "--lease", "1")
    stale = workers.start(store_url, *options)
    assert wait_until(lambda: list(gate.glob("started-*")), timeout=60), workers.logs()
    os.killpg(stale.pid, signal.SIGSTOP)  # paused (a long GC, a frozen VM): it misses heartbeats
    try:
        fresh = workers.start(store_url, *options)
        assert wait_until(lambda: (gate / f"started-{fresh.pid}").exists(), timeout=60), workers.logs()
        (gate / "open").touch()
        assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    finally:
        os.killpg(stale.pid, signal.SIGCONT)  # it wakes, its gate is open, and it finishes too
    assert wait_until(lambda: "lease lost" in workers.logs(), timeout=60), workers.logs()

    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.attempt, record.lost) == (SUCCEEDED, 2, 1)
    assert store.result(run.id) == ("json", str(fresh.pid).encode())  # the fresh worker's
    attempts = {e["attempt"] for _, e in store.events(run.id) if e["type"] != "Log"}
    assert attempts == {2}  # nothing from the stale attempt was written after it lost the lease
    finished = [e for _, e in store.events(run.id) if e["type"] == "RunFinished"]
    assert len(finished) == 1


def test_a_stopping_worker_gives_its_run_back_for_another_to_finish(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline, gate, run = _submit_gated(tmp_path, store, "gated_task", GATED_TASK)
    first = workers.start(store_url, str(pipeline), "--engine", "processes", "--workers", "1")
    assert wait_until(lambda: list(gate.glob("started-*")), timeout=60), workers.logs()

    first.send_signal(signal.SIGTERM)  # stop: the run's task is stopped and the run given back
    assert first.wait(timeout=60) == 0
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.lost, record.attempt) == (QUEUED, 0, 1), workers.logs()

    (gate / "open").touch()
    second = workers.start(store_url, str(pipeline), "--engine", "processes", "--workers", "1")
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.attempt) == (SUCCEEDED, 2)
    assert store.result(run.id) == ("json", str(second.pid).encode())


def test_a_worker_runs_concurrency_runs_at_once(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "gated", GATED)
    gates = [tmp_path / "one", tmp_path / "two"]
    runs = []
    for gate in gates:
        gate.mkdir()
        runs.append(store.submit("gated", {"folder": str(gate)}))
    workers.start(store_url, str(pipeline), "--engine", "serial", "--concurrency", "2")
    # each run blocks until its gate opens: both can only have started if they run side by side
    assert wait_until(lambda: all(list(g.glob("started-*")) for g in gates), timeout=60), workers.logs()
    for gate in gates:
        (gate / "open").touch()
    assert wait_until(lambda: all(_finished(store, r.id) for r in runs), timeout=60)
    records = [store.get(r.id) for r in runs]
    assert all(r is not None and r.status == SUCCEEDED for r in records)
    assert len({r.worker for r in records if r is not None}) == 2  # two slots: host:pid/0 and /1


def _children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            if parent == pid and b"resource_tracker" not in cmdline:
                found.append(int(entry.name))
    return found


def test_cancel_reaches_the_worker_and_stops_the_runs_tasks_on_its_engine(
    tmp_path: pathlib.Path, store: Store, store_url: str, workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "slow", SLOW)
    trivial = write_pipeline(tmp_path, "trivial", TRIVIAL)
    run = store.submit("slow", {})
    worker = workers.start(
        store_url, str(pipeline), str(trivial), "--engine", "processes", "--workers", "2"
    )

    def chunks_done() -> int:
        return sum(e["type"] == "ChunkDone" for _, e in store.events(run.id))

    assert wait_until(lambda: chunks_done() > 0, timeout=60), workers.logs()
    assert _children(worker.pid), "the processes engine should have worker processes while it runs"
    store.cancel(run.id)
    assert wait_until(lambda: _finished(store, run.id), timeout=60), workers.logs()

    record = store.get(run.id)
    assert record is not None
    assert record.status == CANCELLED
    assert record.error is not None
    assert record.error.type == "RunCancelled"
    assert chunks_done() < 2000
    assert wait_until(lambda: not _children(worker.pid), timeout=30), "engine processes left running"
    # and the worker goes on to the next run
    after = store.submit("trivial", {"n": 3})
    assert wait_until(lambda: _finished(store, after.id), timeout=60), workers.logs()
    assert store.result(after.id) == ("json", b"6")
