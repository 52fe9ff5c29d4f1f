"""Retention, on SQLite and a real Redis server: ``Store.prune``, ``madhatter runs prune`` and
``madhatter serve --keep`` remove old finished runs with their events and results, and never a
queued or running run, nor one that finished recently."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import pytest
from service_helpers import Server

from madhatter.service import Store, open_store
from madhatter.service._processes import prune_interval
from madhatter.service._records import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Failure, Outcome

DAY = 86400.0


def _backdate(store_url: str, run_id: str, seconds: float) -> None:
    """Test-only: move a finished run's end ``seconds`` into the past, in the store itself."""
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE runs SET finished_at = finished_at - ? WHERE id = ?", (seconds, run_id))
        return
    import redis

    with redis.Redis.from_url(store_url) as client:
        key = f"madhatter:run:{run_id}"
        finished = float(client.hget(key, "finished_at") or 0)
        client.hset(key, "finished_at", finished - seconds)


def _finished(store: Store, status: str, *, events: int = 2) -> str:
    """A run taken through the workers' API to ``status``, with events and (succeeded) a result."""
    run = store.submit("p", {"status": status})
    lease = store.lease("w")
    assert lease is not None
    assert lease.run.id == run.id
    store.add_events(run.id, lease.token, [{"type": "Log", "message": str(i)} for i in range(events)])
    if status == SUCCEEDED:
        outcome = Outcome(
            SUCCEEDED, result_kind="json", result=b"[1, 2]", result_preview="[1, 2]", items=2
        )
    else:
        outcome = Outcome(status, Failure("Boom", "it broke"))
    assert store.finish(run.id, lease.token, outcome)
    return run.id


def _cancelled_queued(store: Store) -> str:
    run = store.submit("p", {"cancelled": True})
    cancelled = store.cancel(run.id)
    assert cancelled is not None
    assert cancelled.status == CANCELLED
    return run.id


def _gone(store: Store, run_id: str) -> bool:
    return store.get(run_id) is None and store.events(run_id) == [] and store.result(run_id) is None


def test_prune_removes_old_finished_runs_with_their_events_and_results(
    store: Store, store_url: str
) -> None:
    old = [_finished(store, SUCCEEDED), _finished(store, FAILED), _cancelled_queued(store)]
    recent = _finished(store, SUCCEEDED)
    for run_id in old:
        _backdate(store_url, run_id, 40 * DAY)
    assert store.result(old[0]) is not None
    assert len(store.events(old[0])) == 2
    # A run that is running and one that is queued, both submitted long before the cut-off.
    running = store.submit("p", {"running": True})
    queued = store.submit("p", {"queued": True})
    lease = store.lease("w")
    assert lease is not None
    assert lease.run.id == running.id
    store.add_events(running.id, lease.token, [{"type": "Log", "message": "busy"}])

    assert store.prune(30 * DAY) == 3

    for run_id in old:
        assert _gone(store, run_id), run_id
    kept = store.get(recent)
    assert kept is not None
    assert kept.status == SUCCEEDED
    assert store.result(recent) == ("json", b"[1, 2]")
    assert len(store.events(recent)) == 2
    running_now, queued_now = store.get(running.id), store.get(queued.id)
    assert running_now is not None
    assert running_now.status == RUNNING
    assert queued_now is not None
    assert queued_now.status == QUEUED
    assert len(store.events(running.id)) == 1
    runs, total = store.list_runs()
    assert total == 3
    assert {r.id for r in runs} == {recent, running.id, queued.id}
    # The queue and the leases still work: the queued run is leased next, the running one finishes.
    assert store.heartbeat(running.id, lease.token) == "ok"
    assert store.finish(running.id, lease.token, Outcome(SUCCEEDED, result_kind="json", result=b"1"))
    nxt = store.lease("w2")
    assert nxt is not None
    assert nxt.run.id == queued.id
    assert store.prune(30 * DAY) == 0  # nothing more is old enough


def test_prune_keeps_a_run_that_ended_just_inside_the_window(store: Store, store_url: str) -> None:
    edge = _finished(store, FAILED)
    _backdate(store_url, edge, 29 * DAY)
    assert store.prune(30 * DAY) == 0
    assert store.get(edge) is not None
    assert store.prune(28 * DAY) == 1
    assert _gone(store, edge)


def test_prune_with_no_runs_removes_nothing(store: Store) -> None:
    assert store.prune(0) == 0


def test_prune_of_many_runs_goes_in_batches(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_url.startswith("redis"):
        import madhatter.service._redis as redis_store

        monkeypatch.setattr(redis_store, "PRUNE_BATCH", 7)  # 30 runs: five scripts, one partial
    ids = [_finished(store, SUCCEEDED, events=1) for _ in range(30)]
    for run_id in ids[:20]:
        _backdate(store_url, run_id, 2 * DAY)
    assert store.prune(DAY) == 20
    runs, total = store.list_runs(limit=100)
    assert total == 10
    assert {r.id for r in runs} == set(ids[20:])
    assert all(_gone(store, run_id) for run_id in ids[:20])


def _madhatter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "madhatter", *args], capture_output=True, text=True, timeout=60
    )


def test_runs_prune_command_removes_old_runs(store: Store, store_url: str) -> None:
    old, recent = _finished(store, SUCCEEDED), _finished(store, FAILED)
    queued = store.submit("p", {}).id
    _backdate(store_url, old, 10.0)

    done = _madhatter("runs", "prune", "--older-than", "5s", "--broker", store_url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed 1 run from ")
    assert _gone(store, old)
    assert store.get(recent) is not None
    assert store.get(queued) is not None


def test_runs_prune_command_needs_a_valid_age(store_url: str) -> None:
    missing = _madhatter("runs", "prune", "--broker", store_url)
    assert missing.returncode != 0
    assert "--older-than" in missing.stderr
    bad = _madhatter("runs", "prune", "--older-than", "soon", "--broker", store_url)
    assert bad.returncode != 0
    assert "30m, 12h, 7d" in bad.stderr
    other = _madhatter("runs", "purge")
    assert other.returncode == 2
    assert "invalid choice" in other.stderr


def test_serve_keep_prunes_in_the_background(
    store: Store, store_url: str, servers: Callable[..., Server]
) -> None:
    old, recent = _finished(store, SUCCEEDED), _finished(store, SUCCEEDED)
    _backdate(store_url, old, 3600.0)
    server = servers("--broker", store_url, "--keep", "10m")
    deadline = time.monotonic() + 20
    while store.get(old) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(store, old)
    assert store.get(recent) is not None
    # A run that ages past the window while the server runs goes at a later pass (every second
    # here: the interval is a quarter of a 4 s --keep).
    server.stop()
    server = servers("--broker", store_url, "--keep", "4s")
    deadline = time.monotonic() + 20
    while store.get(recent) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(store, recent)
    with urllib.request.urlopen(f"{server.url}/api/runs") as response:
        assert json.load(response)["total"] == 0


def test_prune_interval_is_a_quarter_of_keep_within_a_second_and_an_hour() -> None:
    assert prune_interval(30 * DAY) == 3600
    assert prune_interval(4) == 1
    assert prune_interval(0.5) == 1
    assert prune_interval(400) == 100


@pytest.mark.parametrize("listing", [["runs"], ["runs", "--limit", "5"]])
def test_runs_without_an_action_still_lists_over_the_api(
    listing: list[str], store_url: str, servers: Callable[..., Server]
) -> None:
    with open_store(store_url) as store:
        run_id = store.submit("p", {}).id
    server = servers("--broker", store_url)
    done = _madhatter(*listing, "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert run_id in done.stdout
