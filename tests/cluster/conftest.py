"""A real Dask cluster for the tests: a scheduler and workers started with Dask's own CLI, as
separate OS processes listening on 127.0.0.1, as a user's cluster would be.

Skipped when the ``dask`` extra is missing; under ``MADHATTER_REQUIRE_ALL=1`` (CI) the skip is a
failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

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
        self.address = self._wait_for_address(scheduler_file)
        self.workers = [self.add_worker(f"w{index}") for index in range(workers)]

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self._folder / f"{args[0]}-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [self._dask, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def _wait_for_address(self, scheduler_file: pathlib.Path) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if scheduler_file.exists():
                try:
                    address: str = json.loads(scheduler_file.read_text())["address"]
                    return address
                except (ValueError, KeyError):
                    pass
            time.sleep(0.1)
        raise RuntimeError("the Dask scheduler did not start")

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
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes:
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
