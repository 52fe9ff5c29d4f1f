"""What steps print and log reaches the service's run: per step and chunk, over the API, from a
real worker process on the processes engine and on a real Dask cluster (a scheduler and workers
as separate OS processes, which cannot import the pipeline file: its steps travel by value); a run
that prints far more than the run's budget (10 Mi characters) is cut with one mark, and the
service stays up and keeps serving."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import pytest
from service_helpers import Server, Workers, write_pipeline

from madhatter.service import Client

pytestmark = pytest.mark.slow

PIPELINE = """
import logging
from madhatter import depends, parallel, preprocess

log = logging.getLogger("chatty")
log.setLevel(logging.INFO)  # the user's level, set in the driver: INFO records are kept

@preprocess
def numbers(count: int = 8):
    return list(range(count))

@depends(numbers)
@parallel.map(chunk_by=2, timeout=60)  # a timeout: chunks run on the engine, never inline
def talk(x, flood: int = 0):
    print(f"printed {x}")
    log.info("logged %d", x)
    if flood:
        print("y" * flood)
    return x * 10
"""


def _outputs(client: Client, run_id: str) -> list[dict[str, object]]:
    events = client.json("GET", f"/api/runs/{run_id}/events")["events"]
    return [e for e in events if e["type"] == "ChunkOutput"]


@pytest.fixture
def service_engine() -> str:
    """The worker's engine: processes, unless a test parametrizes it."""
    return "processes"


@pytest.fixture
def client(
    request: pytest.FixtureRequest,
    service_engine: str,
    tmp_path: pathlib.Path,
    store_url: str,
    servers: Callable[..., Server],
    workers: Workers,
) -> Client:
    """A server with the chatty pipeline, and one worker on the processes engine (two processes),
    or on dask: the module's real Dask cluster (two single-threaded worker processes)."""
    pipeline = write_pipeline(tmp_path, "chatty", PIPELINE)
    server = servers(str(pipeline), "--broker", store_url)
    if service_engine == "dask":
        cluster = request.getfixturevalue("dask_cluster")  # from tests/cluster/conftest.py
        workers.start(store_url, str(pipeline), "--engine", "dask", "--address", cluster.address)
    else:
        workers.start(store_url, str(pipeline), "--engine", "processes", "--workers", "2")
    return Client(server.url)


@pytest.mark.parametrize("service_engine", ["processes", "dask"])
def test_prints_and_logs_reach_the_run_under_their_step_and_chunk(
    client: Client, service_engine: str
) -> None:
    run = client.submit("chatty", {})
    assert client.wait(run["id"], timeout=120)["status"] == "succeeded"
    # every chunk ran on the engine's workers (a process, or a Dask worker of the cluster), none
    # inline in the service worker ("driver"): the lines crossed from there
    events = client.json("GET", f"/api/runs/{run['id']}/events")["events"]
    ran_on = {e["chunk"]: str(e["worker"]) for e in events if e["type"] == "ChunkDone"}
    assert sorted(ran_on) == [0, 1, 2, 3]
    where = "tcp://127.0.0.1:" if service_engine == "dask" else "pid-"
    assert all(worker.startswith(where) for worker in ran_on.values()), ran_on
    texts: dict[tuple[object, object, object], str] = {}
    for event in _outputs(client, run["id"]):
        key = (event["step"], event["chunk"], event["stream"])
        texts[key] = texts.get(key, "") + str(event["text"])
    for x in range(8):
        assert f"printed {x}\n" in texts[("talk", x // 2, "stdout")]
        assert f"INFO chatty: logged {x}\n" in texts[("talk", x // 2, "log")]


def test_a_run_that_prints_100_mb_is_cut_with_a_mark_and_the_service_stays_up(client: Client) -> None:
    flood = client.submit("chatty", {"count": 1600, "flood": 64 * 1024})  # 100 MiB printed
    assert client.wait(flood["id"], timeout=300)["status"] == "succeeded"
    outputs = _outputs(client, flood["id"])
    total = sum(len(str(e["text"])) for e in outputs)
    assert total <= 10 * 1024 * 1024 + 1000
    assert sum("the run's limit" in str(e["text"]) for e in outputs) == 1
    after = client.submit("chatty", {})  # the service still serves and runs
    assert client.wait(after["id"], timeout=120)["status"] == "succeeded"


PATIENT = """
import pathlib, time
from madhatter import depends, parallel, preprocess

@preprocess
def one():
    return [0]

@depends(one)
@parallel.map(timeout=60)  # a timeout: the chunk runs in a worker process, never inline
def patient(x, marks: str = ""):
    print("waiting to be seen", flush=True)
    marker = pathlib.Path(marks, "seen")
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return marker.exists()
"""


def test_a_running_chunks_lines_reach_the_api_while_it_runs(
    tmp_path: pathlib.Path, store_url: str, servers: Callable[..., Server], workers: Workers
) -> None:
    """The chunk waits for a file that the test creates only once the API shows the chunk's line:
    it succeeds with ``True`` only if its output was streamed while it ran."""
    pipeline = write_pipeline(tmp_path, "patient", PATIENT)
    server = servers(str(pipeline), "--broker", store_url)
    workers.start(store_url, str(pipeline), "--engine", "processes", "--workers", "1")
    client = Client(server.url)
    run = client.submit("patient", {"marks": str(tmp_path)})
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        if any("waiting to be seen" in str(e["text"]) for e in _outputs(client, run["id"])):
            (tmp_path / "seen").touch()
            break
        time.sleep(0.1)
    finished = client.wait(run["id"], timeout=60)
    assert finished["status"] == "succeeded"
    assert client.json("GET", f"/api/runs/{run['id']}/result") == [True]
