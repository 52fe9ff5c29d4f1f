"""The chunk cache in the service (issue 12), with real processes on a real store: a worker given
``--cache DIR`` (``madhatter worker``, or the one ``madhatter serve --with-worker`` starts) runs
every run with it, so a re-run of a cancelled or failed run, queued through the API, resumes
where that run stopped. The side-effect log shows that the items done before were not computed
again, and the run's progress (``GET /api/runs/{id}/progress``) and page say how many came from
the cache."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import urllib.request
from collections.abc import Callable

import pytest
from service_helpers import Server, Workers, write_pipeline

from madhatter.service import Client

pytestmark = pytest.mark.slow

WaitUntil = Callable[..., bool]

ITEMS = 40
HALF = 20
WORKERS = 2
"""The engine's pool: at most this many items are in flight when a run stops."""

PIPELINE = f"""
import pathlib, time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = {ITEMS}):
    return list(range(n))

@depends(numbers)
@parallel.map(chunk_by=1, timeout=600)  # a timeout keeps the step in the engine's processes
def square(x, folder: str = "", half: int = {HALF}):
    here = pathlib.Path(folder)
    while x >= half and not (here / "open").exists():  # the second half waits for the test
        if (here / "fail").exists():
            raise RuntimeError(f"item {{x}} failed on purpose")
        time.sleep(0.01)
    with open(here / "computed.log", "a") as log:  # the side effect: one line per item computed
        log.write(f"{{x}}\\n")
    return x * x

@depends(square)
@postprocess
def squares(values):
    return values
"""


def _computed(folder: pathlib.Path) -> collections.Counter[int]:
    log = folder / "computed.log"
    return (
        collections.Counter(int(line) for line in log.read_text().split())
        if log.exists()
        else (collections.Counter())
    )


def _first_run_stops_at_half_then_its_rerun_resumes(
    client: Client,
    folder: pathlib.Path,
    stop: Callable[[str], None],
    wait_until: WaitUntil,
    in_flight: int = WORKERS,
) -> dict[str, object]:
    """Submit a run, let it compute the first half (the second waits at the gate), ``stop`` it
    (cancel, or make it fail), then open the gate and re-run it through the API. Returns the
    re-run's progress, after checking its result and what each run computed; ``in_flight`` is
    the engine's pool size, the most items the re-run may compute again."""
    first = client.submit("halves", {"folder": str(folder)})
    assert wait_until(lambda: len(_computed(folder)) >= HALF, timeout=120), client.run(first["id"])
    stop(first["id"])
    stopped = client.wait(first["id"], timeout=120)
    before = _computed(folder)
    assert set(before) == set(range(HALF)), before  # the gate held the second half
    assert max(before.values()) == 1

    (folder / "open").touch()
    rerun = client.json("POST", f"/api/runs/{first['id']}/rerun")
    assert rerun["id"] != first["id"]
    assert rerun["params"] == first["params"]
    done = client.wait(rerun["id"], timeout=120)
    assert done["status"] == "succeeded", (stopped, done)
    content_type, data = client.result(rerun["id"])
    assert content_type.startswith("application/json")
    assert json.loads(data) == [x * x for x in range(ITEMS)]  # the exact output

    after = _computed(folder) - before  # what the re-run computed
    assert set(before) | set(after) == set(range(ITEMS))
    again = set(before) & set(after)
    assert len(again) <= in_flight, f"computed twice: {sorted(again)}"

    progress: dict[str, object] = client.json("GET", f"/api/runs/{rerun['id']}/progress")
    steps = {step["name"]: step for step in progress["steps"]}  # type: ignore[attr-defined]
    assert list(steps) == ["numbers", "square", "squares"]
    square = steps["square"]
    assert (square["done"], square["total"], square["items_out"]) == (ITEMS, ITEMS, ITEMS)
    assert HALF - in_flight <= square["cached"] <= HALF, square
    assert square["cached"] == ITEMS - sum(after.values())  # found = not computed
    assert steps["numbers"]["cached"] == 0  # driver steps are not cached

    events = client.json("GET", f"/api/runs/{rerun['id']}/events")["events"]
    chunks = [e for e in events if e["type"] == "ChunkDone" and e["step"] == "square"]
    assert sum(e["cached"] for e in chunks) == square["cached"]
    assert any(e["worker"] == "cache" for e in chunks)
    logs = [e["message"] for e in events if e["type"] == "Log"]
    assert any(f"chunk cache at {folder / 'cache'}" in line for line in logs), logs

    with urllib.request.urlopen(f"{client.url}/runs/{rerun['id']}", timeout=10) as page:
        html = page.read().decode()
    assert f"{square['cached']} of {ITEMS} items from cache" in html
    assert 'id="run-cached-fact" hidden' not in html
    return progress


def test_a_rerun_of_a_cancelled_run_resumes_from_the_workers_cache(
    tmp_path: pathlib.Path,
    store_url: str,
    servers: Callable[..., Server],
    workers: Workers,
    wait_until: WaitUntil,
) -> None:
    pipeline = write_pipeline(tmp_path, "halves", PIPELINE)
    server = servers(str(pipeline), "--broker", store_url)
    options = ("--engine", "processes", "--workers", str(WORKERS))
    workers.start(store_url, str(pipeline), *options, "--cache", str(tmp_path / "cache"))
    client = Client(server.url)

    def cancel(run_id: str) -> None:
        assert client.json("POST", f"/api/runs/{run_id}/cancel")["cancel_requested"]

    _first_run_stops_at_half_then_its_rerun_resumes(client, tmp_path, cancel, wait_until)
    assert "chunk cache " + str(tmp_path / "cache") in workers.logs()  # said when it started
    assert list((tmp_path / "cache").rglob("*.mhc"))


def test_a_rerun_of_a_failed_run_resumes_from_the_cache_of_serves_worker(
    tmp_path: pathlib.Path, servers: Callable[..., Server], wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "halves", PIPELINE)
    broker = f"sqlite:///{tmp_path / 'runs.db'}"
    server = servers(
        str(pipeline),
        "--broker",
        broker,
        "--with-worker",
        "--engine",
        "processes",  # as many worker processes as CPUs: serve has no --workers
        "--cache",
        str(tmp_path / "cache"),
    )
    client = Client(server.url)

    def fail(run_id: str) -> None:
        (tmp_path / "fail").touch()  # the items waiting at the gate raise

    in_flight = os.cpu_count() or 1
    _first_run_stops_at_half_then_its_rerun_resumes(client, tmp_path, fail, wait_until, in_flight)
    failed = client.runs(status="failed")["runs"]
    assert len(failed) == 1
    assert failed[0]["error"]["step"] == "square"
    assert re.search(r"RuntimeError: item 2\d failed on purpose", failed[0]["error"]["traceback"])


def test_without_a_cache_a_rerun_computes_everything_again(
    tmp_path: pathlib.Path, servers: Callable[..., Server], workers: Workers, wait_until: WaitUntil
) -> None:
    pipeline = write_pipeline(tmp_path, "halves", PIPELINE)
    broker = f"sqlite:///{tmp_path / 'runs.db'}"
    server = servers(str(pipeline), "--broker", broker)
    workers.start(broker, str(pipeline), "--engine", "threads", "--workers", str(WORKERS))
    client = Client(server.url)
    (tmp_path / "open").touch()
    first = client.submit("halves", {"folder": str(tmp_path), "n": 6})
    assert client.wait(first["id"], timeout=60)["status"] == "succeeded"
    rerun = client.json("POST", f"/api/runs/{first['id']}/rerun")
    assert client.wait(rerun["id"], timeout=60)["status"] == "succeeded"
    assert _computed(tmp_path) == collections.Counter(dict.fromkeys(range(6), 2))
    progress = client.json("GET", f"/api/runs/{rerun['id']}/progress")
    assert [step["cached"] for step in progress["steps"]] == [0, 0, 0]
    assert not (tmp_path / "cache").exists()
