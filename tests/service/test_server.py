"""The whole service as people start it: real ``madhatter serve`` and ``worker`` processes, driven
by the ``submit``, ``runs`` and ``status`` commands and over HTTP; the server restarted mid-run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import signal
import socket
import sqlite3
import textwrap
import urllib.request
from collections.abc import Callable

import pytest
from service_helpers import GATED, TRIVIAL, Server, Workers, cli, free_port, get_json, write_pipeline

pytestmark = pytest.mark.slow


def test_one_command_serves_and_works_and_the_cli_talks_to_it(
    tmp_path: pathlib.Path, servers: Callable[..., Server]
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    server = servers(str(pipeline), "--broker", broker, "--with-worker", "--engine", "threads")

    done = cli("submit", "trivial", "--param", "n=5", "--wait", url=server.url)
    assert (done.returncode, done.stdout) == (0, "20\n"), done.stderr
    queued = cli("submit", "trivial", "--param", "n=nope", url=server.url)
    assert queued.returncode == 1
    assert "n: parameter 'n' expects int" in queued.stderr
    unknown = cli("submit", "missing", url=server.url)
    assert unknown.returncode == 1
    assert "no pipeline named 'missing'" in unknown.stderr

    listing = cli("runs", url=server.url)
    assert listing.returncode == 0
    (row,) = listing.stdout.splitlines()[1:]
    run_id = row.split()[0]
    assert row.split()[1:4] == ["trivial", "succeeded", "5"]
    status = cli("status", run_id, url=server.url)
    assert status.returncode == 0
    assert "status: succeeded" in status.stdout
    assert 'params: {"n": 5}' in status.stdout
    assert cli("status", "nope", url=server.url).returncode == 1
    submitted_by = get_json(f"{server.url}/api/runs/{run_id}")["submitted_by"]
    assert submitted_by.endswith(f"@{socket.gethostname()}")


def test_the_with_worker_worker_runs_on_the_engine_options_given_to_serve(
    tmp_path: pathlib.Path, servers: Callable[..., Server]
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    options = ["--engine", "processes", "--engine-option", "start_method=nonesuch"]
    server = servers(str(pipeline), "--broker", broker, "--with-worker", *options)
    done = cli("submit", "trivial", "--wait", url=server.url)
    assert done.returncode == 1  # the engine got the option: it has no such start method
    assert "cannot find context for 'nonesuch'" in done.stderr


def test_a_server_with_a_token_refuses_clients_without_it(
    tmp_path: pathlib.Path, servers: Callable[..., Server]
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    server = servers(str(pipeline), "--broker", broker, "--token", "s3cret-token")
    refused = cli("runs", url=server.url)
    assert refused.returncode == 1
    assert "401 a token is required" in refused.stderr
    assert cli("runs", "--token", "wrong", url=server.url).returncode == 1
    allowed = cli("submit", "trivial", "--token", "s3cret-token", url=server.url)
    assert allowed.returncode == 0, allowed.stderr
    server.stop()
    assert "s3cret-token" not in server.log.read_text()  # never logged
    with contextlib.closing(sqlite3.connect(tmp_path / "madhatter.db")) as db:  # nor stored as is
        stored = db.execute("SELECT value FROM meta WHERE key = 'token_sha256'").fetchone()[0]
    assert stored == hashlib.sha256(b"s3cret-token").hexdigest()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_server_restarted_mid_run_loses_nothing(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    servers: Callable[..., Server],
    workers: Workers,
    wait_until: Callable[..., bool],
) -> None:
    if backend == "redis":
        broker = f"{request.getfixturevalue('redis_server')}/1"
        import redis

        with redis.Redis.from_url(broker) as client:
            client.flushdb()
    else:
        broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    pipeline = write_pipeline(tmp_path, "gated", GATED)
    gate = tmp_path / "gate"
    gate.mkdir()
    port = free_port()
    server = servers(str(pipeline), "--broker", broker, port=port)
    workers.start(broker, "--engine", "serial")  # the pipelines the server recorded in the store
    submitted = cli("submit", "gated", "--param", f"folder={gate}", url=server.url)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert wait_until(lambda: list(gate.glob("started-*")), timeout=60), workers.logs()

    server.kill()
    again = servers(str(pipeline), "--broker", broker, port=port)
    assert get_json(f"{again.url}/api/runs/{run_id}")["status"] == "running"
    (gate / "open").touch()

    def status() -> str:
        return str(get_json(f"{again.url}/api/runs/{run_id}")["status"])

    assert wait_until(lambda: status() == "succeeded", timeout=60), workers.logs()
    run = get_json(f"{again.url}/api/runs/{run_id}")
    assert (run["attempt"], run["lost"]) == (1, 0)  # the worker never noticed the restart
    with urllib.request.urlopen(f"{again.url}/runs/{run_id}", timeout=10) as page:
        html = page.read().decode()
    assert "status-succeeded" in html
    assert 'id="result-preview"' in html


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_the_with_worker_worker_stops_when_serve_is_killed(
    tmp_path: pathlib.Path, servers: Callable[..., Server], wait_until: Callable[..., bool]
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    server = servers(str(pipeline), "--broker", broker, "--with-worker", "--engine", "threads")
    assert server.process is not None
    serve_pid = server.process.pid
    children = [
        int(entry.name)
        for entry in pathlib.Path("/proc").iterdir()
        if entry.name.isdigit()
        and _alive(int(entry.name))
        and pathlib.Path(entry, "stat").read_text().rpartition(")")[2].split()[1] == str(serve_pid)
    ]
    assert len(children) == 1  # the worker
    os.kill(serve_pid, signal.SIGKILL)  # serve only, not its process group: no chance to clean up
    server.process.wait()
    assert wait_until(lambda: not _alive(children[0]), timeout=20)


def test_the_with_worker_worker_takes_the_parent_pid_out_of_the_environment_before_importing_pipelines(
    tmp_path: pathlib.Path, servers: Callable[..., Server]
) -> None:
    """A process a pipeline module starts at import must not inherit the variable that tells a
    worker to follow its serve (it would follow a serve that is not its parent)."""
    record = tmp_path / "imports"
    recording = f"import os\nwith open({str(record)!r}, 'a') as out:\n"
    recording += "    print(os.getpid(), os.environ.get('MADHATTER_PARENT_PID'), file=out)\n"
    pipeline = write_pipeline(tmp_path, "trivial", recording + textwrap.dedent(TRIVIAL))
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    server = servers(str(pipeline), "--broker", broker, "--with-worker", "--engine", "threads")
    done = cli("submit", "trivial", "--wait", url=server.url)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in record.read_text().splitlines()]
    assert len({pid for pid, _ in lines}) >= 2  # serve and its worker both imported the pipeline
    assert {seen for _, seen in lines} == {"None"}
