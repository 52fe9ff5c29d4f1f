"""The ray engine against a real Ray: the head node of ``conftest.py``, started with Ray's own CLI
as a separate process group, as a user's cluster would be, listening on 127.0.0.1 only (the
conftest says how). Local Rays the engine starts itself: test_ray_local.py. The shipped
conformance suite runs against the same kind of cluster in test_cluster_conformance.py.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import cloudpickle
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from cluster_helpers import alive, bound_sockets, is_loopback, numbers  # noqa: E402

import madhatter  # noqa: E402
from madhatter.engines import Task, TaskLost, TaskResult, TaskTimedOut, kit  # noqa: E402
from madhatter.engines import ray as ray_engine  # noqa: E402
from madhatter.engines._base import Remote  # noqa: E402
from madhatter.engines.ray import RayEngine  # noqa: E402

# The workers cannot import this test module: ship its functions by value, as a user would for a
# script the workers do not have (``madhatter run FILE`` does this for the file it runs).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def engine(ray_cluster: Any) -> Iterator[RayEngine]:
    """An engine connected to the module's cluster, for tests that submit tasks themselves."""
    connected = RayEngine(address=ray_cluster.address, log_to_driver=False)  # quiet crashes
    try:
        yield connected
    finally:
        connected.shutdown(cancel_pending=True)
    assert not ray.is_initialized()  # it disconnected: the next engine connects afresh


# -- tasks: kept outputs, retries, lost workers, timeouts ----------------------------------------


class Traced:
    """An item that writes the pid of every process that unpickles it to ``log``."""

    def __init__(self, value: int, log: str, payload: bytes) -> None:
        self.value, self.log, self.payload = value, log, payload

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_traced, (self.value, self.log, self.payload))


def _unpickle_traced(value: int, log: str, payload: bytes) -> Traced:
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    return Traced(value, log, payload)


def make_traced(argument: tuple[str, int]) -> tuple[str, list[Traced]]:
    """A keep_output task: a summary, and items (200 KB in all: beyond what Ray inlines)."""
    log, count = argument
    return "made", [Traced(i, log, b"x" * 20_000) for i in range(count)]


def sum_traced(argument: tuple[str, list[Traced]]) -> tuple[str, int, int]:
    label, items = argument
    return label, sum(item.value for item in items), os.getpid()


def test_a_kept_output_feeds_a_later_task_and_never_reaches_the_driver(
    engine: RayEngine, tmp_path: pathlib.Path
) -> None:
    assert engine.workers == 2  # the cluster's CPUs
    assert engine.dashboard_link is None  # the cluster runs no dashboard
    log = tmp_path / "unpickled-by.txt"
    log.touch()
    made = engine.submit(
        Task("t/make/0/0", make_traced, "t/make", (str(log), 10), keep_output=True)
    ).result(timeout=60)
    summary, remote = made.value
    assert summary == "made"
    assert isinstance(remote, Remote)
    assert isinstance(remote.handle, ray.ObjectRef)
    assert remote.count == 10  # counted on the worker, came back with the summary
    assert isinstance(ray.get(remote.handle), bytes)  # boxed: one object for Ray, pickled once

    summed = engine.submit(Task("t/sum/0/0", sum_traced, "t/sum", ("label", remote))).result(60)
    label, total, worker_pid = summed.value
    assert (label, total) == ("label", sum(range(10)))  # the tuple was rebuilt in order

    unpickled_by = {int(line) for line in log.read_text().split()}
    assert worker_pid in unpickled_by  # the second task's worker unpickled the items...
    assert os.getpid() not in unpickled_by  # ...and the driver never did


def fail_twice(argument: tuple[str]) -> int:
    counter = pathlib.Path(argument[0])
    attempt = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    if attempt < 3:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


def test_ray_retries_a_failing_task_itself(engine: RayEngine, tmp_path: pathlib.Path) -> None:
    assert RayEngine.traits.retries
    enough = engine.submit(Task("t/r/0/0", fail_twice, "t/r", (str(tmp_path / "a"),), retries=2))
    assert enough.result(timeout=60).value == 3

    too_few = engine.submit(Task("t/r/1/0", fail_twice, "t/r", (str(tmp_path / "b"),), retries=1))
    error = too_few.exception(timeout=60)
    assert type(error) is RuntimeError  # the task's own exception, unwrapped from RayTaskError
    assert str(error) == "attempt 2 failed"


def exit_now(argument: Any) -> None:
    os._exit(3)


def test_a_dead_worker_is_a_lost_task(engine: RayEngine) -> None:
    future = engine.submit(Task("t/x/0/0", exit_now, "t/x", (None,)))
    error = future.exception(timeout=60)
    assert isinstance(error, TaskLost)
    assert "WorkerCrashedError" in error.detail


def sleep_long(argument: tuple[str]) -> int:
    pathlib.Path(argument[0]).write_text(str(os.getpid()))
    time.sleep(60)
    return os.getpid()


def pid_after_a_while(argument: Any) -> int:
    time.sleep(0.3)
    return os.getpid()


def _pid_in(path: pathlib.Path, wait_until: Callable[..., bool]) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip(), timeout=30)
    return int(path.read_text())


def deaf_to_alarms(argument: tuple[str]) -> int:
    """Blocks SIGALRM, as a call into C that never returns to Python would ignore it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    return sleep_long(argument)


def test_a_timeout_stops_the_task_on_its_worker(
    engine: RayEngine, tmp_path: pathlib.Path, wait_until: Callable[..., bool]
) -> None:
    """The worker's alarm stops the task ``timeout`` after it started; the worker lives on."""
    pid_file = tmp_path / "pid"
    future = engine.submit(Task("t/s/0/0", sleep_long, "t/s", (str(pid_file),), timeout=2.0))
    stuck = _pid_in(pid_file, wait_until)
    started = time.monotonic()
    error = future.exception(timeout=30)
    assert isinstance(error, TaskTimedOut)
    assert error.timeout == 2.0
    assert time.monotonic() - started < ray_engine._backstop(2.0, engine.traits.tasks_per_worker)
    assert alive(stuck)


def test_a_task_its_alarm_cannot_stop_is_killed_and_ray_starts_a_fresh_worker(
    engine: RayEngine, tmp_path: pathlib.Path, wait_until: Callable[..., bool]
) -> None:
    """The driver's backstop (``_backstop``: 8 s for a 1 s timeout) kills the worker."""
    pid_file = tmp_path / "pid"
    future = engine.submit(Task("t/d/0/0", deaf_to_alarms, "t/d", (str(pid_file),), timeout=1.0))
    stuck = _pid_in(pid_file, wait_until)
    error = future.exception(timeout=60)
    assert isinstance(error, TaskTimedOut)
    assert error.timeout == 1.0
    assert wait_until(lambda: not alive(stuck), timeout=20), "the worker was not killed"

    after = [engine.submit(Task(f"t/p/{i}/0", pid_after_a_while, "t/p", (i,))) for i in range(2)]
    pids = {f.result(timeout=60).value for f in after}
    assert stuck not in pids  # fresh workers ran them


def test_shutdown_cancels_running_tasks_and_returns_once_they_are_stopped(
    ray_cluster: Any, tmp_path: pathlib.Path, wait_until: Callable[..., bool]
) -> None:
    engine = RayEngine(address=ray_cluster.address)
    pid_file = tmp_path / "pid"
    future: Future[TaskResult] = engine.submit(Task("t/c/0/0", sleep_long, "t/c", (str(pid_file),)))
    stuck = _pid_in(pid_file, wait_until)
    started = time.monotonic()
    engine.shutdown(cancel_pending=True)
    assert time.monotonic() - started < 15
    assert isinstance(future.exception(timeout=0), TaskLost)
    assert wait_until(lambda: not alive(stuck), timeout=10), "the task's worker still runs"
    assert not ray.is_initialized()
    with pytest.raises(madhatter.EngineError, match="shut down"):
        engine.submit(Task("t/c/1/0", pid_after_a_while, "t/c", (1,)))
    assert not ray.is_initialized()  # Ray did not start one of its own for it


# -- connecting and starting -----------------------------------------------------------------


def test_a_node_with_another_madhatter_is_refused(
    ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kit, "worker_runtime", lambda: ("0.0.0", "2.7"))  # the driver's side
    with pytest.raises(
        madhatter.EngineError,
        match=r"Ray node 127\.0\.0\.1 .* runs madhatter .* but this driver runs madhatter 0\.0\.0 on "
        r"Python 2\.7",
    ):
        RayEngine(address=ray_cluster.address)
    assert not ray.is_initialized()


def test_a_ray_the_user_initialised_is_used_and_left_alone(
    ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)  # ray.init sets it: undone after the test
    ray.init(address=ray_cluster.address, logging_level="WARNING")
    try:
        engine = RayEngine()  # no address: it would start a local Ray, but one is there
        task = Task("t/u/0/0", pid_after_a_while, "t/u", (0,))
        assert engine.submit(task).result(timeout=60).worker.startswith("127.0.0.1/pid-")
        engine.shutdown(cancel_pending=False)
        assert ray.is_initialized()  # not its Ray to stop
    finally:
        ray.shutdown()


def test_engines_alive_at_once_share_the_connection_and_the_last_one_closes_it(
    ray_cluster: Any,
) -> None:
    first = RayEngine(address=ray_cluster.address)  # connects this process to Ray
    try:
        second = RayEngine()  # no address: it joins the connection there is
        task = Task("t/i/0/0", pid_after_a_while, "t/i", (0,))
        assert second.submit(task).result(timeout=60).worker.startswith("127.0.0.1/pid-")
        with pytest.raises(madhatter.EngineError, match="one cluster at a time"):
            RayEngine(address="127.0.0.1:9")  # another cluster, while this one is in use
        second.shutdown(cancel_pending=False)
        assert ray.is_initialized()  # the first engine still uses it
        assert first.submit(task).result(timeout=60).value > 0
    finally:
        first.shutdown(cancel_pending=False)
    assert not ray.is_initialized()


def test_an_unreachable_address_is_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(madhatter.EngineError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9\b"):
        madhatter.run(numbers, engine="ray", address="127.0.0.1:9", inline=False)
    assert time.monotonic() - started < 15  # ray.init alone would retry for minutes
    assert not ray.is_initialized()


def test_resources_become_ray_task_options() -> None:
    options = ray_engine._ray_options({"cpus": 2, "memory": "512m", "gpus": 0.5, "licence": 1})
    assert options == {
        "num_cpus": 2,
        "memory": 512 * 2**20,
        "num_gpus": 0.5,
        "resources": {"licence": 1.0},
    }
    assert ray_engine._ray_options({"memory": 1024}) == {"memory": 1024}
    assert ray_engine._ray_options({"memory": "1.5GiB"}) == {"memory": 3 * 2**29}
    with pytest.raises(madhatter.EngineError, match="is not a size"):
        ray_engine._ray_options({"memory": "lots"})
    with pytest.raises(madhatter.EngineError, match="needs a number"):
        ray_engine._ray_options({"image": "python:3.11"})


def test_a_task_no_node_of_a_local_ray_can_run_is_refused() -> None:
    capacity = {"CPU": 2.0, "memory": 2.0**30}
    ray_engine._check_feasible({"num_cpus": 2, "memory": 2**29}, capacity)
    with pytest.raises(madhatter.EngineError, match=r"asks for 1 GPU but the local Ray .* has 0"):
        ray_engine._check_feasible({"num_gpus": 1}, capacity)
    with pytest.raises(madhatter.EngineError, match="asks for 3 CPU"):
        ray_engine._check_feasible({"num_cpus": 3}, capacity)


def test_the_test_cluster_listens_on_loopback_only(
    ray_cluster: Any, session_pids: Callable[[int], list[int]]
) -> None:
    sockets = bound_sockets(set(session_pids(ray_cluster.session)))
    assert sockets
    assert all(is_loopback(address) for _, address in sockets), sockets
