"""The store's guarantees, on SQLite and on a real Redis server alike: one holder per run, leases
that expire into the queue, fencing of stale workers, cancellation, events, results, listing."""

from __future__ import annotations

import threading

import pytest

from madhatter.service import Store, StoreError, open_store
from madhatter.service._records import (
    CANCELLED,
    FAILED,
    HEARTBEAT_CANCEL,
    HEARTBEAT_LOST,
    HEARTBEAT_OK,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Failure,
    Outcome,
)

EXPIRED = -1.0
"""A lease length that makes a lease expired from the start: expiry without waiting for a clock."""


def test_a_submitted_run_is_queued_then_leased_once(store: Store) -> None:
    run = store.submit("hello", {"n": 3}, submitted_by="me")
    assert (run.status, run.params, run.submitted_by, run.attempt) == (QUEUED, {"n": 3}, "me", 0)
    lease = store.lease("w1")
    assert lease is not None
    assert (lease.run.id, lease.run.status, lease.run.worker, lease.token) == (run.id, RUNNING, "w1", 1)
    assert store.lease("w2") is None  # nothing else is queued


def test_runs_are_leased_oldest_first(store: Store) -> None:
    ids = [store.submit("p", {"i": i}).id for i in range(5)]
    leased = []
    while (lease := store.lease("w")) is not None:
        leased.append(lease.run.id)
    assert leased == ids


def test_concurrent_workers_never_take_the_same_run(store_url: str) -> None:
    with open_store(store_url) as submitter:
        ids = {submitter.submit("p", {"i": i}).id for i in range(60)}
    taken: list[str] = []
    lock = threading.Lock()

    def take(name: str) -> None:
        with open_store(store_url) as mine:
            while (lease := mine.lease(name)) is not None:
                with lock:
                    taken.append(lease.run.id)

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken) == sorted(ids)  # every run once, none twice


def test_an_expired_lease_goes_back_to_the_queue_and_fences_the_stale_worker(store: Store) -> None:
    run = store.submit("p", {})
    stale = store.lease("dead", lease_seconds=EXPIRED)
    assert stale is not None
    fresh = store.lease("alive")
    assert fresh is not None
    assert fresh.run.id == run.id
    assert (fresh.token, fresh.run.lost, fresh.run.worker) == (2, 1, "alive")
    # The stale worker wakes up: every write it tries is refused, and changes nothing.
    assert store.heartbeat(run.id, stale.token) == HEARTBEAT_LOST
    assert not store.add_events(run.id, stale.token, [{"type": "Log", "message": "stale"}])
    assert not store.finish(run.id, stale.token, Outcome(FAILED, Failure("X", "stale result")))
    assert not store.release(run.id, stale.token)
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.worker, record.error) == (
        RUNNING,
        "alive",
        None,
    )
    # The current holder finishes it, once.
    assert store.add_events(run.id, fresh.token, [{"type": "Log", "message": "fresh"}])
    assert store.finish(run.id, fresh.token, Outcome(SUCCEEDED, None, "json", b"[1]", "[1]", 1))
    assert not store.finish(run.id, fresh.token, Outcome(FAILED, Failure("X", "twice")))
    done = store.get(run.id)
    assert done is not None
    assert (done.status, done.items, done.attempt) == (SUCCEEDED, 1, 2)
    assert store.result(run.id) == ("json", b"[1]")
    assert [e["message"] for _, e in store.events(run.id)] == ["fresh"]


def test_requeue_expired_is_explicit_too(store: Store) -> None:
    run = store.submit("p", {})
    assert store.lease("dead", lease_seconds=EXPIRED) is not None
    assert store.requeue_expired() == [run.id]
    record = store.get(run.id)
    assert record is not None
    assert (record.status, record.lost) == (QUEUED, 1)


def test_a_run_that_keeps_losing_its_worker_fails_visibly(store_url: str) -> None:
    with open_store(store_url, max_lost=2) as store:
        run = store.submit("p", {})
        assert store.lease("w1", lease_seconds=EXPIRED) is not None
        assert store.lease("w2", lease_seconds=EXPIRED) is not None
        assert store.lease("w3") is None  # the second expiry ended it
        record = store.get(run.id)
        assert record is not None
        assert (record.status, record.lost) == (FAILED, 2)
        assert record.error is not None
        assert record.error.type == "WorkerLost"
        assert "2 time(s)" in record.error.message
        assert record.finished_at is not None


def test_a_heartbeat_extends_the_lease(store: Store) -> None:
    run = store.submit("p", {})
    lease = store.lease("w", lease_seconds=EXPIRED)
    assert lease is not None
    assert store.heartbeat(run.id, lease.token, lease_seconds=600) == HEARTBEAT_OK
    assert store.lease("other") is None  # not expired any more, so not re-queued
    assert store.requeue_expired() == []


def test_cancelling_a_queued_run_ends_it_at_once(store: Store) -> None:
    run = store.submit("p", {})
    cancelled = store.cancel(run.id)
    assert cancelled is not None
    assert cancelled.status == CANCELLED
    assert cancelled.finished_at
    assert store.lease("w") is None


def test_cancelling_a_running_run_reaches_its_worker_by_heartbeat(store: Store) -> None:
    run = store.submit("p", {})
    lease = store.lease("w")
    assert lease is not None
    assert store.heartbeat(run.id, lease.token) == HEARTBEAT_OK
    flagged = store.cancel(run.id)
    assert flagged is not None
    assert (flagged.status, flagged.cancel_requested) == (RUNNING, True)
    assert store.heartbeat(run.id, lease.token) == HEARTBEAT_CANCEL
    assert not store.release(run.id, lease.token)  # a cancelled run is not given back
    assert store.finish(run.id, lease.token, Outcome(CANCELLED, Failure("RunCancelled", "asked")))
    record = store.get(run.id)
    assert record is not None
    assert record.status == CANCELLED


def test_a_cancelled_run_whose_worker_died_ends_cancelled_not_requeued(store: Store) -> None:
    run = store.submit("p", {})
    assert store.lease("dead", lease_seconds=EXPIRED) is not None
    store.cancel(run.id)
    assert store.lease("w") is None
    record = store.get(run.id)
    assert record is not None
    assert record.status == CANCELLED


def test_finished_runs_ignore_cancel(store: Store) -> None:
    run = store.submit("p", {})
    lease = store.lease("w")
    assert lease is not None
    store.finish(run.id, lease.token, Outcome(SUCCEEDED, None, "json", b"1", "1"))
    record = store.cancel(run.id)
    assert record is not None
    assert (record.status, record.cancel_requested) == (SUCCEEDED, False)


def test_a_released_run_is_leased_again(store: Store) -> None:
    run = store.submit("p", {})
    first = store.lease("stopping")
    assert first is not None
    assert store.release(run.id, first.token)
    again = store.lease("next")
    assert again is not None
    assert (again.run.id, again.token) == (run.id, 2)


def test_events_come_back_in_order_after_a_cursor(store: Store) -> None:
    run = store.submit("p", {})
    lease = store.lease("w")
    assert lease is not None
    assert store.add_events(run.id, lease.token, [{"type": "Log", "message": str(i)} for i in range(3)])
    assert store.add_events(run.id, lease.token, [{"type": "Log", "message": "3"}])
    events = store.events(run.id)
    assert [e["message"] for _, e in events] == ["0", "1", "2", "3"]
    assert all(e["attempt"] == 1 for _, e in events)
    cursor = events[1][0]
    assert [e["message"] for _, e in store.events(run.id, after=cursor)] == ["2", "3"]
    assert store.events(run.id, after=events[-1][0]) == []


def test_failures_keep_step_chunk_and_traceback(store: Store) -> None:
    run = store.submit("p", {})
    lease = store.lease("w")
    assert lease is not None
    failure = Failure("StepFailed", "step 'x' failed", "x", 7, "Traceback ...\nZeroDivisionError")
    assert store.finish(run.id, lease.token, Outcome(FAILED, failure, items=12))
    record = store.get(run.id)
    assert record is not None
    assert (record.error, record.items) == (failure, 12)
    assert store.result(run.id) is None


def test_binary_results_survive(store: Store) -> None:
    run = store.submit("p", {})
    lease = store.lease("w")
    assert lease is not None
    data = bytes(range(256)) * 4
    store.finish(run.id, lease.token, Outcome(SUCCEEDED, None, "pickle", data, "{...}"))
    assert store.result(run.id) == ("pickle", data)


def test_listing_filters_and_pages_newest_first(store: Store) -> None:
    ids = [store.submit("a" if i % 2 else "b", {"i": i}).id for i in range(7)]
    store.cancel(ids[0])
    runs, total = store.list_runs()
    assert total == 7
    assert [r.id for r in runs] == ids[::-1]
    page, total = store.list_runs(offset=2, limit=2)
    assert total == 7
    assert [r.id for r in page] == ids[::-1][2:4]
    only_a, total_a = store.list_runs(pipeline="a")
    assert total_a == 3
    assert {r.pipeline for r in only_a} == {"a"}
    cancelled, total_c = store.list_runs(status=CANCELLED)
    assert total_c == 1
    assert [r.id for r in cancelled] == [ids[0]]
    assert store.list_runs(pipeline="b", status=QUEUED)[1] == 3


def test_unknown_runs_are_none(store: Store) -> None:
    assert store.get("nope") is None
    assert store.cancel("nope") is None
    assert store.events("nope") == []
    assert store.result("nope") is None


def test_settings_are_shared_through_the_store(store_url: str) -> None:
    with open_store(store_url) as one, open_store(store_url) as other:
        assert one.get_meta("pipelines") is None
        one.set_meta("pipelines", '["a=/x/a.py"]')
        assert other.get_meta("pipelines") == '["a=/x/a.py"]'


def test_a_bad_store_url_says_what_works() -> None:
    with pytest.raises(StoreError, match=r"sqlite:///FILE or redis://HOST:PORT/DB"):
        open_store("mysql://localhost/x")


def test_an_idle_redis_worker_is_woken_by_a_submission(redis_server: str) -> None:
    import redis

    url = f"{redis_server}/2"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    with open_store(url) as waiting, open_store(url) as submitting:
        woke = threading.Event()

        def idle() -> None:
            waiting.wait_for_work(120)  # far longer than the test may take
            woke.set()

        thread = threading.Thread(target=idle)
        thread.start()
        submitting.submit("p", {})
        assert woke.wait(60)
        thread.join()
        assert waiting.lease("w") is not None
