"""What steps print and log reaches the service's run: per step and chunk, over the API, from a
real worker process on the processes engine; a run that prints far more than the run's budget
(10 Mi characters) is cut with one mark, and the service stays up and keeps serving."""

from __future__ import annotations

import pathlib
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
@parallel.map(chunk_by=2)
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
def client(
    tmp_path: pathlib.Path, store_url: str, servers: Callable[..., Server], workers: Workers
) -> Client:
    """A server with the chatty pipeline, and one worker on the processes engine."""
    pipeline = write_pipeline(tmp_path, "chatty", PIPELINE)
    server = servers(str(pipeline), "--broker", store_url)
    workers.start(store_url, str(pipeline), "--engine", "processes", "--workers", "2")
    return Client(server.url)


def test_prints_and_logs_reach_the_run_under_their_step_and_chunk(client: Client) -> None:
    run = client.submit("chatty", {})
    assert client.wait(run["id"], timeout=120)["status"] == "succeeded"
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
