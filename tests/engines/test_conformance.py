"""The shipped conformance suite on the local engines and the fake cluster engine, and what only
local engines can show: cheap steps run in the driver, setup once per worker, the caller's alarm.

The suite also runs on engines that differ from these where a third-party engine may: one that
hands answers back in batches, one whose ``prepare`` gives other traits than its class, and one
that retries tasks itself (whose workers must be able to write in ``tmp_path``).

The suite (``madhatter.testing.EngineConformance``) runs every chunk on the engine; the tests here
leave ``inline`` at its default too, where the runner may keep cheap steps in the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import signal
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess
from madhatter.engines import EngineTraits, Task, TaskLost, TaskResult, register_engine
from madhatter.engines.kit import settle
from madhatter.engines.threads import ThreadsEngine
from madhatter.events import ChunkDone
from madhatter.testing import EngineConformance, FakeClusterEngine, RecordingListener
from madhatter.testing import _pipelines as p

HELLO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "hello.py"

register_engine("fake", FakeClusterEngine)


class TestSerial(EngineConformance):
    engine = "serial"


class TestThreads(EngineConformance):
    engine = "threads"


class TestProcesses(EngineConformance):
    engine = "processes"


class TestFake(EngineConformance):
    engine = "fake"


# -- the suite itself: what an engine author's engine may differ in ----------------------------


class BatchingThreads(ThreadsEngine):
    """The threads engine, answering as a cluster may: in batches. Each answer is held until no
    task is left running, then all are handed over at once."""

    name = "batching-threads"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers)
        self._lock = threading.Lock()
        self._running = 0
        self._held: list[tuple[Future[TaskResult], Future[TaskResult]]] = []

    def submit(self, task: Task) -> Future[TaskResult]:
        answer: Future[TaskResult] = Future()
        answer.set_running_or_notify_cancel()
        with self._lock:
            self._running += 1
        super().submit(task).add_done_callback(lambda done: self._hold(done, answer))
        return answer

    def _hold(self, done: Future[TaskResult], answer: Future[TaskResult]) -> None:
        with self._lock:
            self._running -= 1
            self._held.append((done, answer))
            if self._running:
                return
            batch, self._held = self._held, []
        for done, answer in batch:
            if done.cancelled():
                settle(answer, error=TaskLost("the task was cancelled before it started"))
            elif (error := done.exception()) is not None:
                settle(answer, error=error)
            else:
                settle(answer, done.result())


register_engine("batching-threads", BatchingThreads)


class TestWideBatchingThreads(EngineConformance):
    """An engine wider than the suite's inputs (32 tasks out at once) that answers in batches:
    the cancel test sizes its input from the run's width, so the chunks handed over together
    when the run is cancelled are never all of them."""

    engine = "batching-threads"
    workers = 16


class PreparedThreads(ThreadsEngine):
    """The threads engine, whose class claims other traits than ``prepare`` gives its stages:
    the suite must go by ``prepare``, as the runner does."""

    name = "prepared-threads"
    traits = dataclasses.replace(ThreadsEngine.traits, ships_data=True, tasks_per_worker=1)

    def prepare(self, resources: Mapping[str, Any]) -> EngineTraits:
        return ThreadsEngine.traits


register_engine("prepared-threads", PreparedThreads)


class TestPreparedThreads(EngineConformance):
    engine = "prepared-threads"


def _with_retries(function: Callable[[Any], Any], retries: int, argument: Any) -> Any:
    for _ in range(retries):
        try:
            return function(argument)
        except Exception:
            pass  # rerun it
    return function(argument)


class RetryingThreads(ThreadsEngine):
    """The threads engine, rerunning a failed task itself (``traits.retries``)."""

    name = "retrying-threads"
    traits = dataclasses.replace(ThreadsEngine.traits, retries=True)

    def submit(self, task: Task) -> Future[TaskResult]:
        function = functools.partial(_with_retries, task.function, task.retries)
        return super().submit(dataclasses.replace(task, function=function))


register_engine("retrying-threads", RetryingThreads)


class RetryingSuite(EngineConformance):  # not collected: run by the test below
    engine = "retrying-threads"


def test_an_engine_that_retries_needs_workers_that_write_in_tmp_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = RetryingSuite()
    suite._options = {"workers": 2}
    (tmp_path / "writable").mkdir()
    suite.test_retries_recover_a_flaky_step(tmp_path / "writable")

    def read_only(path: pathlib.Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(pathlib.Path, "touch", read_only)
    (tmp_path / "read-only").mkdir()
    with pytest.raises(pytest.fail.Exception, match=r"must be able to write in tmp_path"):
        suite.test_retries_recover_a_flaky_step(tmp_path / "read-only")


# -- cheap steps in the driver -----------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False])
def test_hello_example(engine: str, inline: bool) -> None:
    hello = Pipeline.from_module(HELLO)
    assert madhatter.run(hello, engine=engine, workers=2, inline=inline) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("step", "params"),
    [(p.diamond, {}), (p.both_branches, {}), (p.labelled, {}), (p.scaled, {"factor": "10"})],
    ids=["diamond", "generator", "fused-chain", "params"],
)
def test_runs_that_may_stay_in_the_driver_match_serial(
    engine: str, step: Any, params: dict[str, str]
) -> None:
    got = madhatter.run(step, engine=engine, workers=2, params=params)
    assert got == madhatter.run(step, engine="serial", params=params)


def test_skipping_in_the_driver_collects_the_failing_items(engine: str) -> None:
    report = Pipeline([p.fragile]).execute(engine=engine, workers=2)
    assert report.result == [x * 10 for x in range(p.SIZE) if x % 5 != 3]
    assert sorted(item.item for item in report.skipped) == list(range(3, p.SIZE, 5))


@depends(p.generated)
@postprocess
def whole_of_generated(values: list[int]) -> tuple[str, int]:
    return type(values).__name__, sum(values)


def test_a_postprocess_after_a_generator_source_gets_a_list(engine: str) -> None:
    # "@postprocess -- called once in the driver with the whole upstream result (a list ...)"
    assert madhatter.run(whole_of_generated, engine=engine, workers=2) == ("list", sum(range(30)))


@depends(p.numbers)
@parallel.map(chunk_by=5)
def where(x: int) -> tuple[int, int, int]:
    return x, os.getpid(), threading.get_ident()


def test_processes_run_chunks_in_worker_processes() -> None:
    listener = RecordingListener()
    result = madhatter.run(where, engine="processes", workers=2, inline=False, listeners=[listener])
    assert os.getpid() not in {pid for _, pid, _ in result}
    assert all(event.worker.startswith("pid-") for event in listener.of_type(ChunkDone))  # type: ignore[attr-defined]


def test_threads_run_chunks_in_worker_threads() -> None:
    result = madhatter.run(where, engine="threads", workers=2, inline=False)
    assert threading.get_ident() not in {tid for _, _, tid in result}


def test_inline_true_lets_cheap_steps_start_in_the_driver(engine: str) -> None:
    listener = RecordingListener()
    result = madhatter.run(where, engine=engine, workers=2, listeners=[listener])
    assert [x for x, _, _ in result] == list(range(p.SIZE))
    first = listener.of_type(ChunkDone)[0]
    # The serial engine runs every chunk in the caller ("main"); no probe is needed to decide.
    assert first.worker == ("main" if engine == "serial" else "driver")  # type: ignore[attr-defined]
    assert result[0][1] == os.getpid()


# -- per-worker setup --------------------------------------------------------------------------


def identity() -> str:
    return f"{os.getpid()}-{threading.get_ident()}"


def record_setup(directory: str) -> dict[str, str]:
    me = identity()
    pathlib.Path(directory, f"{me}-{uuid.uuid4().hex}").touch()
    return {"tag": me}


@depends(p.numbers)
@parallel.map(chunk_by=1)
def tagged(x: int, tag: str) -> tuple[int, str, str]:
    return x, tag, identity()


def test_setup_runs_once_per_worker(engine: str, tmp_path: pathlib.Path) -> None:
    setup = functools.partial(record_setup, str(tmp_path))
    step = parallel.map(chunk_by=1, setup=setup)(tagged)
    try:
        result = madhatter.run(step, engine=engine, workers=2)
    finally:
        parallel.map(chunk_by=1)(tagged)  # leave the module-level step as it was
    assert [x for x, _, _ in result] == list(range(p.SIZE))
    assert all(tag == me for _, tag, me in result)  # each worker got its own setup's values
    setups = [name.rsplit("-", 1)[0] for name in os.listdir(tmp_path)]
    workers = {me for _, _, me in result}
    assert sorted(setups) == sorted(workers)  # once per worker: no worker twice, none missing
    assert len(setups) <= 2


# -- the caller's alarm ------------------------------------------------------------------------


@depends(p.ranged)
@parallel.map(chunk_by=1, timeout=5.0)
def doubled_in_time(x: int) -> int:
    return 2 * x


def test_timeout_leaves_the_callers_alarm_running(engine: str) -> None:
    """A step's timeout must not cancel an alarm the caller set (e.g. pytest-timeout's)."""
    fired: list[int] = []
    previous_handler = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    previous_timer = signal.setitimer(signal.ITIMER_REAL, 60.0)
    try:
        assert madhatter.run(doubled_in_time, engine=engine, workers=2) == [0, 2, 4, 6, 8]
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous_timer)
        signal.signal(signal.SIGALRM, previous_handler)
    assert fired == []
    assert remaining > 0, "the caller's ITIMER_REAL was cancelled by the run"
