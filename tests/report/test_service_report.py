"""The service's report download: ``GET /api/runs/{id}/report`` builds the page from the stored
events of the run's current attempt, with what the record knows, and the run page links to it."""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from madhatter._events import ChunkDone, RunFinished, RunStarted, StepFinished, StepStarted

pytest.importorskip("fastapi", reason="needs the web extra (pip install 'madhatter[web]')")
pytest.importorskip("jinja2", reason="needs the web extra (pip install 'madhatter[web]')")

from madhatter.service import Registry, Store, open_store
from madhatter.service._records import FAILED, Failure, Outcome

PIPELINE = """
from madhatter import depends, parallel, preprocess

@preprocess
def numbers(n: int = 4):
    return list(range(n))

@depends(numbers)
@parallel.map
def double(x):
    return 2 * x
"""


@pytest.fixture
def service(tmp_path: pathlib.Path) -> Iterator[tuple[Store, Any]]:
    from fastapi.testclient import TestClient

    from madhatter.service._app import create_app

    (tmp_path / "counting.py").write_text(textwrap.dedent(PIPELINE))
    registry = Registry.load([str(tmp_path / "counting.py")])
    with (
        open_store(f"sqlite:///{tmp_path / 'report.db'}") as store,
        TestClient(create_app(store, registry), base_url="http://127.0.0.1") as client,
    ):
        yield store, client


def test_a_failed_run_downloads_as_its_report(service: tuple[Store, Any]) -> None:
    store, client = service
    run = client.post("/api/runs", json={"pipeline": "counting"}).json()
    rid = run["id"]
    dead = store.lease("dies", lease_seconds=-1.0)  # a first attempt, whose worker died
    assert dead is not None
    lost = ChunkDone(rid, "double", 0, 2, 2, 0.2, "an-earlier-attempt", 0.5, at=0.7)
    assert store.add_events(rid, dead.token, [lost.to_dict()])
    assert store.requeue_expired() == [rid]
    lease = store.lease("test-worker")
    assert lease is not None
    assert lease.token == dead.token + 1
    events = [
        RunStarted(
            rid, "counting", "threads", 2, ("numbers", "double"), edges=(("numbers", "double"),), at=1.0
        ),
        StepStarted(rid, "numbers", at=1.0),
        StepFinished(rid, "numbers", 0, 4, 0.01, at=1.01),
        StepStarted(rid, "double", 4, at=1.02),
        ChunkDone(rid, "double", 0, 2, 2, 0.2, "thread-1", 1.02, at=1.22),
        RunFinished(rid, "failed", 0.5, "StepFailed: <boom>", at=1.5),
    ]
    stored = [e.to_dict() for e in events]
    stored.append({"type": "Log", "run_id": rid, "at": 1.6, "message": "a log line"})
    assert store.add_events(rid, lease.token, stored)
    failure = Failure("StepFailed", "<boom>", "double", 0, "Traceback ...\nZeroDivisionError: <x>")
    assert store.finish(rid, lease.token, Outcome(FAILED, failure))

    answer = client.get(f"/api/runs/{rid}/report")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-disposition"] == f'attachment; filename="counting-{rid}-report.html"'
    page = answer.text
    assert 'status-failed" id="status">failed' in page
    assert "ZeroDivisionError: &lt;x&gt;" in page  # the record's traceback
    assert page.count('class="dag-step"') == 2
    assert ">thread-1<" in page
    assert "an-earlier-attempt" not in page
    assert "://" not in page

    run_page = client.get(f"/runs/{rid}").text
    assert f'href="/api/runs/{rid}/report" download' in run_page


def test_a_queued_run_has_a_report_too_and_an_unknown_one_is_404(service: tuple[Store, Any]) -> None:
    _, client = service
    run = client.post("/api/runs", json={"pipeline": "counting"}).json()
    page = client.get(f"/api/runs/{run['id']}/report").text
    assert 'status-queued" id="status">queued' in page
    assert client.get("/api/runs/nope/report").status_code == 404
