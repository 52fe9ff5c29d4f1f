"""The shipped conformance suite on the local engines and the fake cluster engine, and what only
local engines can show: cheap steps run in the driver, setup once per worker, the caller's alarm.

The suite (``madhatter.testing.EngineConformance``) runs every chunk on the engine; the tests here
leave ``inline`` at its default too, where the runner may keep cheap steps in the driver.
"""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import threading
import uuid
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess
from madhatter.engines import register_engine
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
