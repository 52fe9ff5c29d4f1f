"""The dask engine against a real cluster: a scheduler and two workers as separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import cloudpickle
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from cluster_helpers import FAN_IN, numbers, squares  # noqa: E402

import madhatter  # noqa: E402
from madhatter import depends, parallel, preprocess  # noqa: E402
from madhatter.events import ChunkDone, Event  # noqa: E402
from madhatter.testing import RecordingListener  # noqa: E402

# The workers cannot import this test module: ship its functions by value, as a user would for a
# script the workers do not have (``madhatter run FILE`` does this for the file it runs).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


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


def test_a_local_cluster_is_started_for_the_run_and_stopped_after(
    child_pids: Any, wait_until: Any
) -> None:
    before = set(child_pids())  # the resource tracker is left out (tests/conftest.py)
    assert FAN_IN.run(engine="dask", workers=2, inline=False) == FAN_IN.run(engine="serial")
    assert wait_until(lambda: set(child_pids()) <= before, timeout=20), "local cluster left running"


def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    with pytest.raises(madhatter.EngineError, match="cannot reach the Dask scheduler"):
        madhatter.run(numbers, engine="dask", address="tcp://127.0.0.1:9", inline=False)


def test_the_run_reports_the_dask_dashboard(dask_cluster: Any) -> None:
    from madhatter.events import RunStarted

    events = RecordingListener()
    madhatter.run(squares, engine="dask", address=dask_cluster.address, inline=False, listeners=[events])
    (started,) = events.of_type(RunStarted)
    assert started.engine == "dask"  # type: ignore[attr-defined]
    assert started.workers == 2  # type: ignore[attr-defined]
    assert started.dashboard.startswith("http://127.0.0.1:")  # type: ignore[attr-defined]


def test_workers_with_another_madhatter_or_python_are_refused() -> None:
    """The check itself, against a stand-in client (a real mismatched worker would need a second
    installation of madhatter): the first differing worker is named with both versions."""
    from madhatter.engines.dask import DaskEngine
    from madhatter.engines.kit import worker_runtime

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


# -- data by reference: what Dask itself sees of madhatter's tasks ------------------------------


class TaskSpy(distributed.WorkerPlugin):
    """Records, on each worker, what Dask holds for madhatter's tasks: the argument of each task
    as it starts (the types of the elements of its first argument, or of that argument itself),
    and each result as it is stored (its type, and for a kept output that of the output)."""

    name = "madhatter-task-spy"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        worker.madhatter_spy = []

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not str(key).startswith("madhatter-") or str(key).startswith("madhatter-function-"):
            return  # not a chunk's task (a stage's function is the output of a task of its own)
        if finish == "executing":
            first = self.worker.state.tasks[key].run_spec.args[0]
            shape = [type(e).__name__ for e in first] if type(first) is tuple else type(first).__name__
            self.worker.madhatter_spy.append(("argument", str(key), shape))
        elif finish == "memory" and start == "executing":  # computed here, not fetched
            value = self.worker.data[key]
            kept = type(value.value[1]).__name__ if type(value.value) is tuple else None
            self.worker.madhatter_spy.append(("result", str(key), (type(value).__name__, kept)))


@pytest.fixture
def spied(dask_cluster: Any) -> Any:
    """A client on the module's cluster with :class:`TaskSpy` on every worker; yields a function
    that returns every record of the workers, and unregisters the plugin after."""
    with distributed.Client(dask_cluster.address, set_as_default=False) as client:
        client.register_plugin(TaskSpy())

        def records() -> list[tuple[str, str, Any]]:
            found = client.run(lambda dask_worker: list(dask_worker.madhatter_spy))
            return [record for worker in found.values() for record in worker]

        yield records
        client.unregister_worker_plugin(TaskSpy.name)


@preprocess
def words() -> list[str]:
    return [f"word{i}" for i in range(60)]


@depends(words)
@parallel.map(chunk_by=20)
def shout(word: str) -> str:
    return word.upper()


@depends(shout)
@parallel.map(chunk_by=20)
def exclaim(word: str) -> str:
    return word + "!"


TWO_STEPS = madhatter.Pipeline([words, shout, exclaim])


def test_a_chunk_reaches_dask_as_one_pickled_object(spied: Any, dask_cluster: Any) -> None:
    """Dask walks lists and tuples of a task's arguments item by item (and its scheduler rebuilds
    them): a chunk goes as the driver's pickle of it, one ``bytes`` object."""
    result = madhatter.run(shout, engine="dask", address=dask_cluster.address, inline=False)
    assert result == [f"WORD{i}" for i in range(60)]
    arguments = [shape for kind, _, shape in spied() if kind == "argument"]
    assert arguments == [["bytes", "bytes"]] * 3  # (chunk index, items) of each of 3 chunks


def test_output_kept_on_the_cluster_is_one_boxed_object(spied: Any, dask_cluster: Any) -> None:
    """Unfused, the first step's outputs stay on the cluster, boxed (Dask moves a list item by
    item), with one small task per chunk picking out the summary for the driver: two Dask tasks
    per kept chunk, one per chunk whose output comes back."""
    result = TWO_STEPS.run(engine="dask", address=dask_cluster.address, inline=False, fuse=False)
    assert result == [f"WORD{i}!" for i in range(60)]
    records = spied()
    kept = sorted(key for kind, key, shape in records if kind == "result" and shape[1] == "_Box")
    assert [key.split("/")[1:] for key in kept] == [["shout", str(i), "0"] for i in range(3)]
    keys = {key for _, key, _ in records}
    assert len(keys) == 3 * 2 + 3
    later = [shape for kind, key, shape in records if kind == "argument" and "/exclaim/" in key]
    assert later == ["Tuple"] * 3  # Dask's node for a tuple holding a reference: the kept output


@pytest.mark.parametrize("fuse", [True, False])
def test_the_output_is_the_processes_engines(dask_cluster: Any, fuse: bool) -> None:
    expected = TWO_STEPS.run(engine="processes", workers=2, inline=False, fuse=fuse)
    found = TWO_STEPS.run(engine="dask", address=dask_cluster.address, inline=False, fuse=fuse)
    assert found == expected


@preprocess
def ten() -> list[int]:
    return list(range(10))


@depends(ten)
@parallel.map(chunk_by=1, timeout=1.0)
def queued_behind_others(x: int) -> int:
    time.sleep(0.3)
    return x


def test_a_timeout_counts_from_the_start_on_the_worker_not_the_submission(dask_cluster: Any) -> None:
    """Ten 0.3 s tasks, all submitted at once to two single-threaded workers: the last ones wait
    1.2 s on their worker before they start, past the 1 s timeout, and must not be failed for
    it (timed from submission, they were: seen in CI)."""
    listener = RecordingListener()
    result = madhatter.Pipeline([queued_behind_others]).run(
        engine="dask", address=dask_cluster.address, listeners=[listener], inline=False
    )
    assert result == list(range(10))
    chunks = listener.of_type(ChunkDone)
    assert len(chunks) == 10
    starts = sorted(c.started_at for c in chunks)
    assert starts[-1] - starts[0] > 1.0  # the test's premise: some waited longer than the timeout
