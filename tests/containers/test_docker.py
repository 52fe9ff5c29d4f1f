"""The docker engine against a real Docker daemon, with real containers from a real image.

This module is *not* registered with cloudpickle to be pickled by value: the engine must find
out by itself that the containers cannot import it, and ship its steps by value.
"""

from __future__ import annotations

import glob
import inspect
import io
import os
import pathlib
import pkgutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from typing import Any

import pytest

from madhatter import (
    EngineError,
    Pipeline,
    RunCancelled,
    StepFailed,
    TaskTimeout,
    WorkerLost,
    depends,
    parallel,
    postprocess,
    preprocess,
)
from madhatter.engines import get_engine
from madhatter.events import ChunkRetried, Event, RunStarted
from madhatter.testing import RecordingListener

LABEL_FILTER = {"label": "io.madhatter.engine=docker"}

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _example(name: str) -> Pipeline:
    return Pipeline.from_module(str(ROOT / "examples" / f"{name}.py"))


# -- the examples, unchanged, in containers ---------------------------------------------------


@pytest.mark.parametrize(
    ("example", "params"),
    [("hello", {}), ("primes", {"limit": 1_000_000, "block": 50_000})],
)
def test_examples_give_the_serial_result_in_containers(
    image: str, madhatter_containers: Any, example: str, params: dict[str, Any]
) -> None:
    pipeline = _example(example)
    expected = pipeline.run(engine="serial", params=params)
    got = pipeline.run(engine="docker", image=image, workers=2, params=params)
    assert got == expected


def test_words_reads_its_files_through_a_read_only_mount(image: str, madhatter_containers: Any) -> None:
    pipeline = _example("words")
    expected = pipeline.run(engine="serial", params={"files": 30})
    corpus = pathlib.Path(tempfile.gettempdir()) / "madhatter-words-sample-30"  # the serial run wrote it
    got = pipeline.run(engine="docker", image=image, mounts=[str(corpus)], params={"files": 30})
    assert got == expected


# -- a pipeline that mixes container steps with local ones ------------------------------------


@preprocess
def numbers(count: int = 24) -> list[int]:
    return list(range(count))


@depends(numbers)
@parallel.map(chunk_by=4)
def local_square(x: int) -> tuple[int, str]:
    import socket

    return x * x, socket.gethostname()


@depends(local_square)
@parallel.map(n=2, chunk_by=3, image="madhatter-test/python:3.11", memory="128m")
def in_container(pair: tuple[int, str]) -> tuple[int, str, str, list[str], int]:
    import socket

    value, local_host = pair
    interfaces = sorted(os.listdir("/sys/class/net"))
    routes = len(pathlib.Path("/proc/net/route").read_text().splitlines()) - 1  # minus the header
    return value + 1, local_host, socket.gethostname(), interfaces, routes


@depends(in_container)
@postprocess
def collected(
    rows: list[tuple[int, str, str, list[str], int]],
) -> list[tuple[int, str, str, list[str], int]]:
    return rows


def test_a_pipeline_mixes_local_and_container_steps_without_network(
    image: str, madhatter_containers: Any
) -> None:
    import socket

    rows = Pipeline([numbers, local_square, in_container, collected]).run(inline=False)
    assert [row[0] for row in rows] == [x * x + 1 for x in range(24)]
    assert {row[1] for row in rows} == {socket.gethostname()}  # the first step ran on this host
    container_hosts = {row[2] for row in rows}
    assert socket.gethostname() not in container_hosts
    assert 1 <= len(container_hosts) <= 2  # warm: n=2 containers ran all 8 chunks
    assert {tuple(row[3]) for row in rows} == {("lo",)}  # no network interface but loopback
    assert {row[4] for row in rows} == {0}  # and no route anywhere


# -- the concurrency cap, observed ------------------------------------------------------------


class _ContainerWatcher:
    """Counts madhatter's running worker containers every few milliseconds during a run."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._stop = threading.Event()
        self.most = 0
        self.seen: set[str] = set()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):  # after the image check's own probe container
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            # the low-level listing: one request, no inspection of containers that may be gone
            running = self._client.api.containers(filters={**LABEL_FILTER, "status": "running"})
            self.seen.update(c["Id"] for c in running)
            self.most = max(self.most, len(running))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@preprocess
def twelve() -> list[int]:
    return list(range(12))


def _sleepy(x: int) -> tuple[int, str, float, float]:
    import socket

    started = time.time()
    time.sleep(0.3)
    return x, socket.gethostname(), started, time.time()


def _most_at_once(rows: list[tuple[int, str, float, float]]) -> int:
    edges = sorted([(start, 1) for *_, start, _ in rows] + [(end, -1) for *_, end in rows])
    most = current = 0
    for _, change in edges:
        current += change
        most = max(most, current)
    return most


@pytest.mark.parametrize("isolate", ["container", "task"])
def test_at_most_n_containers_run_at_once(
    docker_client: Any, image: str, madhatter_containers: Any, isolate: str
) -> None:
    step = depends(twelve)(parallel.map(n=2, chunk_by=1, image=image, isolate=isolate)(_sleepy))
    watcher = _ContainerWatcher(docker_client)
    try:
        result = _through(twelve, step).run(workers=4, listeners=[watcher])
    finally:
        watcher.stop()
    assert [row[0] for row in result] == list(range(12))
    assert watcher.most == 2  # the engine had room for 4; the step's n=2 held, and was used
    assert _most_at_once(result) == 2  # the tasks' own clocks agree
    hosts = {row[1] for row in result}
    if isolate == "task":
        assert len(hosts) == 12  # a fresh container for every task
    else:
        assert len(hosts) == 2  # two warm containers ran all twelve
    assert len(watcher.seen) <= len(hosts)


# -- per-container setup in warm mode ---------------------------------------------------------


def _born() -> dict[str, Any]:
    import uuid

    return {"born": uuid.uuid4().hex}


@depends(twelve)
@parallel.map(n=2, chunk_by=2, image="madhatter-test/python:3.11", setup=_born)
def with_setup(x: int, born: str) -> tuple[str, str]:
    import socket

    return socket.gethostname(), born


@depends(with_setup)
@postprocess
def setups(rows: list[tuple[str, str]]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for host, born in rows:
        seen.setdefault(host, set()).add(born)
    return seen


def test_setup_runs_once_per_warm_container(image: str, madhatter_containers: Any) -> None:
    seen = Pipeline([twelve, with_setup, setups]).run()
    assert 1 <= len(seen) <= 2
    assert all(len(borns) == 1 for borns in seen.values())  # six chunks, one setup per container


# -- failures: a clear error, and no container left behind ------------------------------------


@depends(twelve)
@parallel.map(chunk_by=4, image="madhatter-test/python:3.11")
def fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"bad item {x}")
    return x


def _through(source: Any, step: Any) -> Pipeline:
    """``source -> step -> (the whole output)``: a pipeline to run one step in."""
    output = depends(step)(postprocess(name="output")(lambda values: values))
    return Pipeline([source, step, output])


def test_a_task_exception_carries_step_chunk_and_traceback(
    image: str, madhatter_containers: Any
) -> None:
    with pytest.raises(StepFailed) as caught:
        _through(twelve, fails_on_seven).run()
    error = caught.value
    assert error.step == "fails_on_seven"
    assert error.chunk == 1  # items 4..7
    assert "ValueError: bad item 7" in error.remote_traceback
    # The user's frame, by name and line (cloudpickle ships code without its file name), and
    # none of madhatter's own frames above it.
    lines, first = inspect.getsourcelines(fails_on_seven)
    raise_line = first + next(i for i, line in enumerate(lines) if "raise ValueError" in line)
    assert f"line {raise_line}, in fails_on_seven" in error.remote_traceback
    assert "_chain.py" not in error.remote_traceback


@depends(twelve)
@parallel(chunk_by=12, image="madhatter-test/python:3.11", memory="64m")
def hog(chunk: list[int]) -> list[int]:
    ballast = bytearray(300 * 1024 * 1024)  # well past the 64 MB limit
    return [len(ballast), *chunk]


def test_a_task_past_its_memory_limit_fails_as_oom_killed(image: str, madhatter_containers: Any) -> None:
    with pytest.raises(WorkerLost) as caught:
        _through(twelve, hog).run()
    assert caught.value.step == "hog"
    assert "OOMKilled" in str(caught.value)
    assert "64m" in str(caught.value)


@depends(twelve)
@parallel(chunk_by=12, image="madhatter-test/python:3.11", retries=2)
def crashes(chunk: list[int]) -> list[int]:
    print("about to crash", flush=True)
    os._exit(3)


def test_a_dead_container_is_retried_then_reported_with_exit_code_and_stderr(
    image: str, madhatter_containers: Any
) -> None:
    recorder = RecordingListener()
    with pytest.raises(WorkerLost) as caught:
        _through(twelve, crashes).run(listeners=[recorder])
    assert len(recorder.of_type(ChunkRetried)) == 2  # retries apply as on every engine
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "about to crash" in message  # the end of the container's stderr


@depends(twelve)
@parallel(chunk_by=12, image="madhatter-test/python:3.11", timeout=1)
def blocks_alarms(chunk: list[int]) -> list[int]:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # its own deadline cannot fire
    time.sleep(60)
    return chunk


def test_a_task_past_its_timeout_has_its_container_killed(image: str, madhatter_containers: Any) -> None:
    started = time.monotonic()
    with pytest.raises(TaskTimeout) as caught:
        _through(twelve, blocks_alarms).run()
    assert caught.value.step == "blocks_alarms"
    assert time.monotonic() - started < 50  # killed, not waited for


# -- checks before any task runs ---------------------------------------------------------------


_sources_run: list[str] = []


@preprocess
def recorded_source() -> list[int]:
    _sources_run.append("ran")
    return [1, 2, 3]


def _pipeline_on(image: str, **options: Any) -> Pipeline:
    step = depends(recorded_source)(parallel.map(image=image, name="step", **options)(lambda x: x))
    return _through(recorded_source, step)


def test_a_missing_image_is_an_error_before_any_work(
    docker_client: Any, madhatter_containers: Any
) -> None:
    _sources_run.clear()
    with pytest.raises(EngineError, match=r"image 'madhatter-test/no-such-image:1' is not on this"):
        _pipeline_on("madhatter-test/no-such-image:1").run()
    assert _sources_run == []


def test_an_image_with_another_python_is_an_error_before_any_work(
    wrong_python_image: str, madhatter_containers: Any
) -> None:
    _sources_run.clear()
    driver = rf"{sys.version_info[0]}\.{sys.version_info[1]}"
    expected = rf"has Python 3\.9 as 'python3', but the driver runs Python {driver}"
    with pytest.raises(EngineError, match=expected):
        _pipeline_on(wrong_python_image).run()
    assert _sources_run == []


def test_an_image_without_the_python_command_is_an_error_before_any_work(
    image: str, madhatter_containers: Any
) -> None:
    _sources_run.clear()
    with pytest.raises(EngineError, match=r"cannot run 'python9'"):
        _pipeline_on(image, resources={"python": "python9"}).run()
    assert _sources_run == []


def test_an_unknown_resource_request_is_an_error(image: str, madhatter_containers: Any) -> None:
    with pytest.raises(EngineError, match=r"does not know the resource request\(s\) \['gpus'\]"):
        _pipeline_on(image, resources={"gpus": 1}).run()


# -- what a container is sent --------------------------------------------------------------------


def test_the_runtime_bundle_holds_every_module_of_madhatter() -> None:
    """A task function may reference any of madhatter's modules (the run machinery included),
    so every one of them travels to the container, subpackages and all."""
    import madhatter
    from madhatter.engines._bundle import runtime_bundle

    modules = pkgutil.walk_packages(madhatter.__path__, "madhatter.")
    expected = {
        name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        for _, name, is_package in modules
    }
    with zipfile.ZipFile(io.BytesIO(runtime_bundle())) as bundle:
        names = set(bundle.namelist())
    assert {"madhatter/__init__.py", "madhatter/engines/_container_worker.py"} <= names
    assert expected - names == set()
    assert "cloudpickle/__init__.py" in names


# -- Ctrl-C, a killed driver, and prune --------------------------------------------------------

SLOW_SCRIPT = """
import time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def items():
    return list(range(8))

@depends(items)
@parallel.map(n=2, chunk_by=1, image={image!r})
def slow(x):
    time.sleep(60)
    return x

@depends(slow)
@postprocess
def done(xs):
    return xs
"""


def _start_slow_run(tmp_path: pathlib.Path, image: str) -> subprocess.Popen[str]:
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(SLOW_SCRIPT.format(image=image)))
    return subprocess.Popen(
        [sys.executable, "-m", "madhatter", "run", str(script), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_running(listing: Any, count: int, wait_until: Any) -> None:
    assert wait_until(lambda: sum(c["State"] == "running" for c in listing()) >= count, timeout=60)


def test_ctrl_c_stops_the_run_and_removes_every_container(
    tmp_path: pathlib.Path, image: str, madhatter_containers: Any, wait_until: Any
) -> None:
    driver = _start_slow_run(tmp_path, image)
    try:
        _wait_for_running(madhatter_containers, 2, wait_until)
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 130, stderr
    assert madhatter_containers() == []


def test_prune_removes_what_a_killed_driver_left(
    tmp_path: pathlib.Path, image: str, madhatter_containers: Any, wait_until: Any
) -> None:
    pattern = os.path.join(tempfile.gettempdir(), "madhatter-docker-*")
    before = set(glob.glob(pattern))
    driver = _start_slow_run(tmp_path, image)
    try:
        _wait_for_running(madhatter_containers, 2, wait_until)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # madhatter run's supervisor and the driver
        driver.communicate(timeout=30)
    link_dirs = sorted(set(glob.glob(pattern)) - before)
    assert len(link_dirs) == 1  # the killed driver's socket directory
    # Their stdin closed with the driver: the containers stop by themselves (once the task
    # they run returns), but only prune removes them.
    assert len(madhatter_containers()) == 2
    pruned = subprocess.run(
        [sys.executable, "-m", "madhatter", "docker", "prune", "--running"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "removed 2 container(s)" in pruned.stdout
    assert madhatter_containers() == []
    assert not os.path.exists(link_dirs[0])


# -- the run's engine options reach steps that name the engine ---------------------------------


def _hostname(x: int) -> str:
    import socket

    return socket.gethostname()


def test_a_step_naming_the_runs_engine_gets_the_runs_image(
    image: str, madhatter_containers: Any
) -> None:
    # isolate= picks the docker engine for the step; the image comes from the run
    step = depends(twelve)(parallel.map(isolate="task", chunk_by=6, name="fresh")(_hostname))
    hosts = _through(twelve, step).run(engine="docker", image=image, workers=2)
    assert len(hosts) == 12
    assert len(set(hosts)) == 2  # two chunks, a fresh container each


def test_an_engine_instance_keeps_its_warm_containers_across_runs(
    image: str, madhatter_containers: Any
) -> None:
    step = depends(twelve)(parallel.map(chunk_by=12, name="warm")(_hostname))
    pipeline = _through(twelve, step)
    with get_engine("docker", image=image, workers=1) as engine:
        first = pipeline.run(engine=engine)
        second = pipeline.run(engine=engine)
        assert len(madhatter_containers()) == 1  # still up between runs, until shutdown
    assert set(first) == set(second)
    assert len(set(first)) == 1
    # far too cheap to be worth shipping, but a container step never runs in the driver
    assert socket.gethostname() not in first


@depends(twelve)
@parallel.map(n=2, chunk_by=1, image="madhatter-test/python:3.11")
def sleeps_long(x: int) -> int:
    time.sleep(60)
    return x


def test_cancelling_a_run_stops_and_removes_its_containers(
    image: str, madhatter_containers: Any, wait_until: Any
) -> None:
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            _through(twelve, sleeps_long).run(cancel=cancel)
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        _wait_for_running(madhatter_containers, 2, wait_until)
    finally:
        cancel.set()
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert [type(error) for error in outcome] == [RunCancelled]
    assert madhatter_containers() == []
