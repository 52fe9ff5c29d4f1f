"""The dask engine against a real cluster: a scheduler and two workers as separate processes."""

from __future__ import annotations

import itertools
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import cloudpickle
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

import madhatter  # noqa: E402
from madhatter import Pipeline, depends, parallel, postprocess, preprocess  # noqa: E402
from madhatter.events import ChunkDone, Event  # noqa: E402
from madhatter.testing import RecordingListener  # noqa: E402

# The workers cannot import this test module: ship its functions by value, as a user would for a
# script the workers do not have (``madhatter run FILE`` does this for the file it runs).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _example(name: str) -> Pipeline:
    return Pipeline.from_module(str(ROOT / "examples" / f"{name}.py"))


@pytest.mark.parametrize(
    ("example", "params"),
    [("hello", {}), ("words", {"files": 40}), ("primes", {"limit": 1_000_000, "block": 50_000})],
)
def test_examples_match_the_serial_engine(
    dask_cluster: Any, example: str, params: dict[str, Any]
) -> None:
    pipeline = _example(example)
    expected = pipeline.run(engine="serial", params=params)
    got = pipeline.run(engine="dask", address=dask_cluster.address, params=params, inline=False)
    assert got == expected


@preprocess
def numbers() -> list[int]:
    return list(range(30))


@depends(numbers)
@parallel.map(chunk_by=4)
def squares(x: int) -> int:
    return x * x


@depends(numbers)
@parallel.filter(chunk_by=3)
def odd(x: int) -> bool:
    return x % 2 == 1


@depends(squares, odd)
@postprocess
def combined(all_squares: list[int], odds: list[int]) -> tuple[int, list[int]]:
    return sum(all_squares), odds


def test_fan_out_and_fan_in_match_serial(dask_cluster: Any) -> None:
    pipeline = Pipeline([numbers, squares, odd, combined])
    expected = pipeline.run(engine="serial")
    assert pipeline.run(engine="dask", address=dask_cluster.address, inline=False) == expected
    assert expected == (sum(x * x for x in range(30)), list(range(1, 30, 2)))


@depends(numbers)
@parallel.map(chunk_by=3)
def boom(x: int) -> int:
    if x == 7:
        raise ValueError("cannot handle 7")
    return x


def test_a_step_error_names_the_step_chunk_and_traceback(dask_cluster: Any) -> None:
    with pytest.raises(madhatter.StepFailed) as caught:
        madhatter.run(boom, engine="dask", address=dask_cluster.address, inline=False)
    error = caught.value
    assert (error.step, error.chunk, error.preview) == ("boom", 2, "[6, 7, 8]")
    assert "ValueError: cannot handle 7" in error.remote_traceback
    assert ", in boom" in error.remote_traceback
    assert isinstance(error.__cause__, ValueError)


@preprocess
def forty() -> list[int]:
    return list(range(40))


@depends(forty)
@parallel.map(chunk_by=1)
def slow_double(x: int) -> int:
    time.sleep(0.05)
    return 2 * x


class KillAfter:
    """A listener that SIGKILLs a worker process once ``after`` chunks are done."""

    def __init__(self, worker: subprocess.Popen[bytes], after: int) -> None:
        self.worker, self.after, self.done = worker, after, 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, ChunkDone):
            self.done += 1
            if self.done == self.after:
                os.kill(self.worker.pid, signal.SIGKILL)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(own_dask_cluster: Any) -> None:
    victim = own_dask_cluster.workers[0]
    events = RecordingListener()
    killer = KillAfter(victim, after=4)
    result = madhatter.run(
        slow_double,
        engine="dask",
        address=own_dask_cluster.address,
        inline=False,
        listeners=[killer, events],
    )
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert killer.done > killer.after  # the run went on after the kill
    assert result == [2 * x for x in range(40)]
    chunks = [e.chunk for e in events.of_type(ChunkDone)]  # type: ignore[attr-defined]
    assert sorted(chunks) == list(range(40))  # each chunk reported exactly once


@depends(numbers)
@parallel.map(chunk_by=30, timeout=0.3)
def too_slow(x: int) -> int:
    time.sleep(1.0)
    return x


def test_a_timeout_fails_the_chunk_with_task_timeout(own_dask_cluster: Any) -> None:
    with pytest.raises(madhatter.TaskTimeout, match="too_slow"):
        madhatter.run(too_slow, engine="dask", address=own_dask_cluster.address)


def test_a_local_cluster_is_started_for_the_run_and_stopped_after(
    child_pids: Any, wait_until: Any
) -> None:
    before = set(child_pids())  # the resource tracker is left out (tests/conftest.py)
    pipeline = Pipeline([numbers, squares, odd, combined])
    assert pipeline.run(engine="dask", workers=2, inline=False) == pipeline.run(engine="serial")
    assert wait_until(lambda: set(child_pids()) <= before, timeout=20), "local cluster left running"


def test_the_cli_runs_on_a_dask_cluster(dask_cluster: Any) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "madhatter", "run", str(ROOT / "examples" / "hello.py"),
            "--engine", "dask", "--address", dask_cluster.address, "--no-inline", "--quiet",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 3, 4]"


def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    with pytest.raises(madhatter.EngineError, match="cannot reach the Dask scheduler"):
        madhatter.run(numbers, engine="dask", address="tcp://127.0.0.1:9", inline=False)


class Tracked:
    """An item that writes the pid of every process that unpickles it to a log file."""

    def __init__(self, value: int, log: str) -> None:
        self.value, self.log = value, log

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_tracked, (self.value, self.log))


def _unpickle_tracked(value: int, log: str) -> Tracked:
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    return Tracked(value, log)


@preprocess
def logged_values(log: str = "") -> list[tuple[int, str]]:
    return [(i, log) for i in range(20)]


@depends(logged_values)
@parallel.map(chunk_by=5)
def wrap(pair: tuple[int, str]) -> Tracked:
    return Tracked(*pair)


@depends(wrap)
@parallel.map(chunk_by=3)  # another chunk size: not fused with wrap, a separate stage
def unwrap(item: Tracked) -> int:
    return item.value * 2


@pytest.mark.parametrize("engine", ["dask", "processes"])
def test_output_between_unfused_steps_stays_on_the_cluster(
    dask_cluster: Any, engine: str, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "unpickled-by.log"
    log.touch()
    pipeline = Pipeline([logged_values, wrap, unwrap])
    assert [stage.name for stage in pipeline.plan().stages] == ["logged_values", "wrap", "unwrap"]
    options = {"address": dask_cluster.address} if engine == "dask" else {"workers": 2}
    result = pipeline.run(engine=engine, inline=False, params={"log": str(log)}, **options)
    assert result == [2 * i for i in range(20)]
    unpickled_in_driver = str(os.getpid()) in log.read_text().split()
    # The processes engine brings every chunk back to the driver (the control); Dask must not.
    assert unpickled_in_driver == (engine == "processes")


def test_the_run_reports_the_dask_dashboard(dask_cluster: Any) -> None:
    from madhatter.events import RunStarted

    events = RecordingListener()
    madhatter.run(squares, engine="dask", address=dask_cluster.address, inline=False, listeners=[events])
    (started,) = events.of_type(RunStarted)
    assert started.engine == "dask"  # type: ignore[attr-defined]
    assert started.workers == 2  # type: ignore[attr-defined]
    assert started.dashboard.startswith("http://127.0.0.1:")  # type: ignore[attr-defined]


class PullCounter:
    pulled = 0


@preprocess
def endless_counted() -> Any:
    def generate() -> Any:
        for item in itertools.count():
            PullCounter.pulled += 1
            yield item

    return generate()


@depends(endless_counted)
@parallel.map(chunk_by=10)
def tripled(x: int) -> int:
    return 3 * x


@depends(tripled)
@postprocess(stream=True)
def first_500(values: Any) -> list[int]:
    return list(itertools.islice(values, 500))


def test_an_endless_source_streams_through_the_cluster_in_bounded_memory(dask_cluster: Any) -> None:
    PullCounter.pulled = 0
    result = madhatter.run(first_500, engine="dask", address=dask_cluster.address, inline=False)
    assert result == [3 * x for x in range(500)]
    # Two tasks per worker in flight and as many finished ahead: a few dozen chunks, not the stream.
    assert PullCounter.pulled <= 500 + 10 * (2 * 2 * 2 + 1) + 10


def test_workers_with_another_madhatter_or_python_are_refused() -> None:
    """The check itself, against a stand-in client (a real mismatched worker would need a second
    installation of madhatter): the first differing worker is named with both versions."""
    from madhatter.engines._kit import worker_runtime
    from madhatter.engines.dask import DaskEngine

    class OtherWorkers:
        def wait_for_workers(self, count: int, timeout: float) -> None:
            pass

        def run(self, function: Any) -> dict[str, tuple[str, str]]:
            assert function is worker_runtime
            return {"tcp://127.0.0.1:1": worker_runtime(), "tcp://127.0.0.1:2": ("0.0.1", "3.9")}

    engine = DaskEngine.__new__(DaskEngine)
    engine._client = OtherWorkers()
    with pytest.raises(
        madhatter.EngineError, match=r"tcp://127.0.0.1:2 runs madhatter 0.0.1 on Python 3.9"
    ):
        engine._check_workers()
