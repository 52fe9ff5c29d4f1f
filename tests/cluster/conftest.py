"""Real clusters for the tests, started with the clusters' own CLIs as separate OS processes
listening on 127.0.0.1, as a user's cluster would be: a Dask scheduler and workers, and a Ray
head node. The tests connect to them by address.

Everything of the Ray cluster listens on 127.0.0.1 only: the head node runs in Ray's
single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which keeps a 127.0.0.1 node
address; on Linux Ray otherwise swaps it for the machine's outward IP and listens there), as the
engine's own local Rays do. The driver's Ray swaps ``127.0.0.1`` in an address it connects to just
the same, so the cluster's address is given as ``[::ffff:127.0.0.1]:port``, a spelling of
127.0.0.1 it leaves alone (``_ray_connection.LOOPBACK``). Ray's token authentication is turned
off while the cluster runs (``RAY_AUTH_MODE=disabled``): the driver reads that setting when ray is
imported, long before a fixture could hand it a token, and a loopback-only cluster that lives for
one test module does not need one.

Skipped when the ``dask`` or ``ray`` extra is missing; under ``MADHATTER_REQUIRE_ALL=1`` (CI) the
skip is a failure.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from cluster_helpers import in_session

from chaos.chaos_helpers import NannyDaskCluster
from process_helpers import scheduler_address

START_SECONDS = 60


class DaskCluster:
    """A scheduler process and worker processes (no nanny: a killed worker stays dead)."""

    def __init__(self, folder: pathlib.Path, workers: int) -> None:
        dask = shutil.which("dask")
        if dask is None:
            pytest.skip("the dask extra is not installed (pip install 'madhatter[dask]')")
        self._dask, self._folder = dask, folder
        self.processes: list[subprocess.Popen[bytes]] = []
        scheduler_file = folder / "scheduler.json"
        self._start(
            "scheduler",
            "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
            "--scheduler-file", str(scheduler_file),
        )  # fmt: skip
        self.address = scheduler_address(scheduler_file, START_SECONDS)
        self.workers = [self.add_worker(f"w{index}") for index in range(workers)]

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self._folder / f"{args[0]}-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [self._dask, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._start(
            "worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny",
            "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0",
            "--local-directory", str(self._folder / name),
        )  # fmt: skip

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=START_SECONDS) as client:
            client.wait_for_workers(count, timeout=START_SECONDS)

    def stop(self) -> None:
        """Workers first, then the scheduler: a worker whose scheduler went first can hang in its
        own close (``rpc.close``) until the 10 s deadline kills it."""
        scheduler, *workers = self.processes
        deadline = time.monotonic() + 10
        for group in (workers, [scheduler]):
            for process in group:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in group:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """Two single-threaded workers, shared by a test module."""
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"), workers=2)
    try:
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_dask_cluster(tmp_path: pathlib.Path) -> Iterator[DaskCluster]:
    """A cluster for one test that harms it (kills a worker)."""
    cluster = DaskCluster(tmp_path, workers=2)
    try:
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nanny_dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NannyDaskCluster]:
    """Two single-threaded workers under nannies, which restart a worker that dies (a segfault
    does not end the cluster), shared by a test module. The scheduler gives up on a task
    (``KilledWorker``) the first time a worker dies running it: a poison item's part is bisected
    at once instead of killing 4 workers per split."""
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    from distributed import Client

    cluster = NannyDaskCluster(tmp_path_factory.mktemp("nanny-dask"), allowed_failures=0)
    try:
        with Client(cluster.address, set_as_default=False, timeout=START_SECONDS) as client:
            client.wait_for_workers(2, timeout=START_SECONDS)
        yield cluster
    finally:
        cluster.stop()


class RayCluster:
    """A head node with 2 CPUs, started by ``ray start --head --block`` in its own session."""

    def __init__(self, folder: pathlib.Path) -> None:
        cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
        if cli is None:
            pytest.skip("the ray CLI is not installed (pip install 'madhatter[ray]')")
        from madhatter.engines._ray_connection import LOOPBACK

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
            self.address = f"[{LOOPBACK}]:{self._wait_for_port()}"
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
        for pid in in_session(self.session):  # anything that outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """One head node, shared by a test module. Its temp dir is short: Ray's unix sockets live
    there."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
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
