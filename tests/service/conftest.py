"""Fixtures of the service tests: a real ``redis-server``, stores on both back ends, real workers,
and (from the cluster tests) a real Dask cluster.

The Redis server is Debian's ``redis-server`` binary, started once per session on a free port of
127.0.0.1 with persistence off; without the binary, Redis tests skip with the reason (and fail
under ``MADHATTER_REQUIRE_ALL=1``). Workers are real ``madhatter worker`` processes, each in its
own session so a test can SIGKILL one and the fixture can clean up whatever is left.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from service_helpers import Server, Workers, free_port

from madhatter.service import Store, open_store

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(autouse=True)
def web_extra() -> None:
    """Skip (at run time, so CI's MADHATTER_REQUIRE_ALL=1 turns it into a failure) without the
    ``web`` extra."""
    for module in ("fastapi", "uvicorn", "jinja2", "redis", "multipart"):
        pytest.importorskip(module, reason=f"the service needs {module}: pip install 'madhatter[web]'")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT`` of a real Redis server for this test session."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is part of madhatter[web]")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    client.close()
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A fresh, empty store on each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    server: str = request.getfixturevalue("redis_server")
    import redis

    with redis.Redis.from_url(f"{server}/0") as client:
        client.flushdb()
    return f"{server}/0"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def workers(tmp_path: pathlib.Path) -> Iterator[Workers]:
    folder = tmp_path / "worker-logs"
    folder.mkdir()
    started = Workers(folder)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def servers(tmp_path: pathlib.Path) -> Iterator[Callable[..., Server]]:
    """``servers(*serve_args, port=None)``: a real ``madhatter serve`` started (and answering),
    stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str, port: int | None = None) -> Server:
        server = Server(list(args), port or free_port(), tmp_path / f"server-{len(started)}.log")
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def run_status(store_url: str) -> Iterator[Callable[[str], str | None]]:
    """A function giving a run's status, from a connection of the test's own."""
    with open_store(store_url) as reader:

        def status(run_id: str) -> str | None:
            record = reader.get(run_id)
            return None if record is None else record.status

        yield status


# The cluster tests' real Dask cluster (a scheduler and workers as separate OS processes), for what
# steps print on Dask workers (test_step_output.py, test_browser.py); cluster_helpers, which its
# conftest imports, lives in the cluster tests' folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "cluster"))
from cluster.conftest import dask_cluster  # noqa: E402, F401
