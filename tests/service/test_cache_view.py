"""What the service shows of the chunk cache, in process (the real app over a real SQLite store):
the fold counts the items each step found in the cache, ``GET /api/runs/{id}/progress`` and the
stream carry them per step as the OpenAPI schema says, and the run page says how many items came
from the cache, per step and for the run. And the worker's ``cache`` option, in process."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from service_helpers import write_pipeline

from madhatter._events import ChunkDone, Event, RunFinished, RunStarted, StepFinished, StepStarted
from madhatter.service import Registry, Store, Worker, open_store
from madhatter.service._progress import RunView, cache_share
from madhatter.service._records import SUCCEEDED, Outcome

PIPELINE = """
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 10):
    return list(range(n))

@depends(numbers)
@parallel.map
def double(x):
    return 2 * x

@depends(double)
@parallel.map(cache=False)
def shout(x):
    return x

@depends(shout)
@postprocess
def total(values):
    return sum(values)
"""

STEPS = ("numbers", "double", "shout", "total")


def events(run_id: str) -> list[Event]:
    """A re-run that found 6 of ``double``'s 10 items in the cache: one chunk of 4 whole (its
    worker "cache"), and 2 of another chunk of 4."""
    return [
        RunStarted(run_id, pipeline="cached", engine="threads", workers=2, steps=STEPS, at=10.0),
        StepStarted(run_id, step="numbers", total=None, at=10.0),
        StepFinished(run_id, "numbers", 0, 10, 0.01, at=10.0),
        StepStarted(run_id, step="double", total=10, at=10.0),
        ChunkDone(run_id, "double", 0, 4, 4, 0.0, "cache", 10.0, 4, at=10.0),
        ChunkDone(run_id, "double", 1, 4, 4, 0.2, "thread-1", 10.0, 2, at=10.2),
        ChunkDone(run_id, "double", 2, 2, 2, 0.2, "thread-2", 10.0, at=10.2),
        StepFinished(run_id, "double", 10, 10, 0.4, at=10.2),
        StepStarted(run_id, step="shout", total=10, at=10.0),
        ChunkDone(run_id, "shout", 0, 10, 10, 0.1, "thread-1", 10.2, at=10.3),
        StepFinished(run_id, "shout", 10, 10, 0.1, at=10.3),
        StepStarted(run_id, step="total", total=10, at=10.3),
        StepFinished(run_id, "total", 10, 1, 0.0, at=10.3),
        RunFinished(run_id, "succeeded", 0.3, at=10.3),
    ]


def test_the_fold_counts_what_each_step_found_in_the_cache() -> None:
    view = RunView(attempt=1).add_all({**e.to_dict(), "attempt": 1} for e in events("r"))
    steps = view.snapshot(20.0)
    assert [(s["name"], s["done"], s["cached"]) for s in steps] == [
        ("numbers", 0, 0),
        ("double", 10, 6),
        ("shout", 10, 0),
        ("total", 10, 0),
    ]
    # the run's line: over the steps the cache keeps, not the driver's (or shout, cache=False)
    assert cache_share(steps, ["double"]) == (6, 10)
    assert cache_share(steps, ["double", "shout"]) == (6, 20)
    assert cache_share(steps, None) == (6, 10)  # pipeline unknown: the steps that found any
    assert cache_share(steps, []) == (0, 0)


@pytest.fixture
def sqlite_store(tmp_path: pathlib.Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'cache-view.db'}") as store:
        yield store


@pytest.fixture
def client(tmp_path: pathlib.Path, sqlite_store: Store) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from madhatter.service._app import create_app

    registry = Registry.load([f"cached={write_pipeline(tmp_path, 'cached', PIPELINE)}"])
    with TestClient(create_app(sqlite_store, registry), base_url="http://127.0.0.1") as test_client:
        yield test_client


def _run_as_a_worker_with_a_cache(store: Store, run_id: str) -> None:
    lease = store.lease("test-worker")
    assert lease is not None
    assert store.add_events(run_id, lease.token, [e.to_dict() for e in events(run_id)])
    assert store.finish(run_id, lease.token, Outcome(SUCCEEDED, None, "json", b"90", "90", 10))


def test_the_progress_api_and_the_stream_carry_what_came_from_the_cache(
    client: Any, sqlite_store: Store
) -> None:
    run = client.post("/api/runs", json={"pipeline": "cached"}).json()
    queued = client.get(f"/api/runs/{run['id']}/progress")
    assert queued.status_code == 200
    assert queued.json() == {"status": "queued", "items": 0, "steps": []}
    _run_as_a_worker_with_a_cache(sqlite_store, run["id"])

    progress = client.get(f"/api/runs/{run['id']}/progress").json()
    assert (progress["status"], progress["items"]) == ("succeeded", 10)
    double = next(s for s in progress["steps"] if s["name"] == "double")
    assert (double["done"], double["total"], double["cached"], double["percent"]) == (10, 10, 6, 100.0)

    with client.stream("GET", f"/api/runs/{run['id']}/stream") as answer:
        text = "".join(answer.iter_text())
    streamed = json.loads(text.split("event: progress\ndata: ")[1].split("\n")[0])
    assert [s["cached"] for s in streamed["steps"]] == [s["cached"] for s in progress["steps"]]

    assert client.get("/api/runs/nope/progress").status_code == 404


def test_the_schema_documents_the_progress_with_its_cached_counts(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/api/runs/{run_id}/progress"]["get"]
    assert operation["operationId"] == "get_run_progress"
    assert set(operation["responses"]) >= {"200", "404"}
    step = schema["components"]["schemas"]["StepProgressOut"]
    assert "chunk cache" in step["properties"]["cached"]["description"]
    assert set(step["required"]) >= {"name", "done", "cached", "total", "percent", "rate"}
    links = schema["paths"]["/api/runs"]["post"]["responses"]["201"]["links"]
    assert links["GetRunProgress"]["operationId"] == "get_run_progress"


def test_the_run_page_says_how_much_came_from_the_cache(client: Any, sqlite_store: Store) -> None:
    run = client.post("/api/runs", json={"pipeline": "cached"}).json()
    waiting = client.get(f"/runs/{run['id']}").text
    assert 'id="run-cached-fact" hidden' in waiting
    assert "data-cacheable='[\"double\"]'" in waiting  # shout (cache=False) and driver steps are not
    _run_as_a_worker_with_a_cache(sqlite_store, run["id"])
    page = client.get(f"/runs/{run['id']}").text
    assert "6 of 10 items from cache" in page  # double's row
    assert page.count("items from cache") == 2  # double's row and the run's line, no other row
    assert 'id="run-cached-fact" hidden' not in page
    assert "6 of 10 items from cache, over the parallel steps (60%)" in page
    assert "on the lane <code>cache</code>" in page  # the timeline's lane of chunks found whole


def test_the_worker_keeps_its_caches_location_absolute_and_has_none_by_default(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    registry = Registry.load([])
    assert Worker("sqlite:///x.db", registry).cache is None
    assert Worker("sqlite:///x.db", registry, cache="here").cache == str(tmp_path / "here")
    assert Worker("sqlite:///x.db", registry, cache="file:///srv/c").cache == "file:///srv/c"
