"""The ray engine against a real Ray: a head node started with Ray's own CLI as a separate process
group, as a user's cluster would be. (Local Rays the engine starts itself: test_ray_local.py.)

Everything listens on 127.0.0.1 only: the head node runs in Ray's single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which keeps a 127.0.0.1 node address; on Linux Ray
otherwise swaps it for the machine's outward IP and listens there), as the engine's own local Rays
do. The driver's Ray swaps ``127.0.0.1`` in an address it connects to just the same, so the tests
give the cluster's address as ``[::ffff:127.0.0.1]:port``, a spelling of 127.0.0.1 it leaves alone
(``_ray_connection.LOOPBACK``). Ray's token authentication is turned off for the module
(``RAY_AUTH_MODE=disabled``): the driver reads that setting when ray is imported, long before a
fixture could hand it a token, and a loopback-only cluster that lives for one module does not need
one.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import cloudpickle
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

import madhatter  # noqa: E402
from madhatter import Pipeline, depends, parallel, postprocess, preprocess  # noqa: E402
from madhatter.engines import Task, TaskLost, TaskResult, TaskTimedOut, kit  # noqa: E402
from madhatter.engines import _ray_connection as ray_connection  # noqa: E402
from madhatter.engines import ray as ray_engine  # noqa: E402
from madhatter.engines._base import Remote  # noqa: E402
from madhatter.engines.ray import RayEngine  # noqa: E402

# The workers cannot import this test module: ship its functions by value, as a user would for a
# script the workers do not have (``madhatter run FILE`` does this for the file it runs).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_SECONDS = 60


# -- the cluster -----------------------------------------------------------------------------


class RayCluster:
    """A head node with 2 CPUs, started by ``ray start --head --block`` in its own session."""

    def __init__(self, folder: pathlib.Path) -> None:
        cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
        if cli is None:
            pytest.skip("the ray CLI is not installed (pip install 'madhatter[ray]')")
        self.folder = folder
        env = {
            **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 (see the module docstring)
            "RAY_USAGE_STATS_ENABLED": "0",
            # A `ray start` cluster with statistics off still sends a notice saying so: to nowhere.
            "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
            # Its dashboard process probes cloud metadata services (169.254.169.254) regardless:
            # through a proxy that does not exist. Upper case: Python reads it, gRPC does not.
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "RAY_AUTH_MODE": "disabled",
        }
        with open(folder / "ray-start.log", "wb") as log:
            self.process = subprocess.Popen(
                [
                    cli, "start", "--head", "--block", "--port=0", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}",
                ],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        self.session = self.process.pid  # every process of the cluster stays in this session
        try:
            self.address = f"[{ray_connection.LOOPBACK}]:{self._wait_for_port()}"
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self) -> int:
        """The GCS port Ray picked (``--port=0``), once the GCS accepts connections. In Ray's
        single-machine mode ``ray start`` prints no address; the session folder records it."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.folder / "ray-start.log").read_text(errors="replace")
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{log}")
            for path in self.folder.glob("session_latest/gcs_server_port_*"):
                text = path.read_text().strip()
                if text.isdigit():
                    try:
                        socket.create_connection(("127.0.0.1", int(text)), timeout=1).close()
                    except OSError:
                        break
                    return int(text)
            time.sleep(0.1)
        raise RuntimeError("the Ray head node did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # ray start --block stops its processes
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in _in_session(self.session):  # anything that outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """One head node for the module. Its temp dir is short: Ray's unix sockets live there."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="mh-ray-", dir="/tmp"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_AUTH_MODE", "disabled")  # the driver's side (see the docstring)
            patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
            cluster = RayCluster(folder)
            try:
                yield cluster
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def engine(ray_cluster: RayCluster) -> Iterator[RayEngine]:
    """An engine connected to the module's cluster, for tests that submit tasks themselves."""
    connected = RayEngine(address=ray_cluster.address, log_to_driver=False)  # quiet crashes
    try:
        yield connected
    finally:
        connected.shutdown(cancel_pending=True)
    assert not ray.is_initialized()  # it disconnected: the next engine connects afresh


# -- processes and sockets, from /proc ---------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent, session, state) of a process, or None if it is gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[3]), fields[0]


def _pids() -> list[int]:
    return [int(entry.name) for entry in pathlib.Path("/proc").iterdir() if entry.name.isdigit()]


def _in_session(session: int) -> list[int]:
    return [pid for pid in _pids() if (stat := _stat(pid)) is not None and stat[1] == session]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6} (hex, in host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def _bound_sockets(pids: set[int], skip: set[str] | None = None) -> list[tuple[int, str]]:
    """(pid, address) of every listening TCP socket and bound UDP socket these processes hold
    (but the socket inodes in ``skip``)."""
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid) - (skip or set())}
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = pathlib.Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in owners and (state == "0A" or table.startswith("udp")):  # 0A: LISTEN
                address, _, port = local.rpartition(":")
                found.append((owners[inode], f"{_address(address)} port {int(port, 16)}"))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split()[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, an IPv6 socket reachable only through 127.0.0.1
    return ip.is_loopback


def _alive(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has)."""
    stat = _stat(pid)
    return stat is not None and stat[2] != "Z"


# -- pipelines -------------------------------------------------------------------------------


def _example(name: str) -> Pipeline:
    return Pipeline.from_module(str(ROOT / "examples" / f"{name}.py"))


@pytest.mark.parametrize(
    ("example", "params"),
    [("hello", {}), ("words", {"files": 40}), ("primes", {"limit": 1_000_000, "block": 50_000})],
)
def test_examples_match_the_serial_engine(
    ray_cluster: RayCluster, example: str, params: dict[str, Any]
) -> None:
    pipeline = _example(example)
    expected = pipeline.run(engine="serial", params=params)
    got = pipeline.run(engine="ray", address=ray_cluster.address, params=params, inline=False)
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


def test_fan_out_and_fan_in_match_serial(ray_cluster: RayCluster) -> None:
    pipeline = Pipeline([numbers, squares, odd, combined])
    expected = pipeline.run(engine="serial")
    assert pipeline.run(engine="ray", address=ray_cluster.address, inline=False) == expected
    assert expected == (sum(x * x for x in range(30)), list(range(1, 30, 2)))


@depends(numbers)
@parallel.map(chunk_by=3)
def boom(x: int) -> int:
    if x == 7:
        raise ValueError("cannot handle 7")
    return x


def test_a_step_error_names_the_step_chunk_and_traceback(ray_cluster: RayCluster) -> None:
    with pytest.raises(madhatter.StepFailed) as caught:
        madhatter.run(boom, engine="ray", address=ray_cluster.address, inline=False)
    error = caught.value
    assert (error.step, error.chunk, error.preview) == ("boom", 2, "[6, 7, 8]")
    assert "ValueError: cannot handle 7" in error.remote_traceback
    assert ", in boom" in error.remote_traceback
    assert isinstance(error.__cause__, ValueError)  # the user's own, not Ray's RayTaskError
    assert str(error.__cause__) == "cannot handle 7"


def test_the_cli_runs_on_a_ray_cluster(ray_cluster: RayCluster) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "madhatter", "run", str(ROOT / "examples" / "hello.py"),
            "--engine", "ray", "--address", ray_cluster.address, "--no-inline", "--quiet",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 3, 4]"


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


def test_a_timeout_kills_the_worker_and_ray_starts_a_fresh_one(
    engine: RayEngine, tmp_path: pathlib.Path, wait_until: Callable[..., bool]
) -> None:
    pid_file = tmp_path / "pid"
    future = engine.submit(Task("t/s/0/0", sleep_long, "t/s", (str(pid_file),), timeout=2.0))
    stuck = _pid_in(pid_file, wait_until)
    error = future.exception(timeout=30)
    assert isinstance(error, TaskTimedOut)
    assert error.timeout == 2.0
    assert wait_until(lambda: not _alive(stuck), timeout=20), "the worker was not killed"

    after = [engine.submit(Task(f"t/p/{i}/0", pid_after_a_while, "t/p", (i,))) for i in range(2)]
    pids = {f.result(timeout=60).value for f in after}
    assert stuck not in pids  # fresh workers ran them


def test_shutdown_cancels_running_tasks_and_returns_once_they_are_stopped(
    ray_cluster: RayCluster, tmp_path: pathlib.Path, wait_until: Callable[..., bool]
) -> None:
    engine = RayEngine(address=ray_cluster.address)
    pid_file = tmp_path / "pid"
    future: Future[TaskResult] = engine.submit(Task("t/c/0/0", sleep_long, "t/c", (str(pid_file),)))
    stuck = _pid_in(pid_file, wait_until)
    started = time.monotonic()
    engine.shutdown(cancel_pending=True)
    assert time.monotonic() - started < 15
    assert isinstance(future.exception(timeout=0), TaskLost)
    assert wait_until(lambda: not _alive(stuck), timeout=10), "the task's worker still runs"
    assert not ray.is_initialized()
    with pytest.raises(madhatter.EngineError, match="shut down"):
        engine.submit(Task("t/c/1/0", pid_after_a_while, "t/c", (1,)))
    assert not ray.is_initialized()  # Ray did not start one of its own for it


# -- connecting and starting -----------------------------------------------------------------


def test_a_node_with_another_madhatter_is_refused(
    ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch
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
    ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch
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
    ray_cluster: RayCluster,
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


def test_the_test_cluster_listens_on_loopback_only(ray_cluster: RayCluster) -> None:
    sockets = _bound_sockets(set(_in_session(ray_cluster.session)))
    assert sockets
    assert all(_is_loopback(address) for _, address in sockets), sockets
