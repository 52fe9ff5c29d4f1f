"""Chaos: a 2,000-chunk run while a seeded killer SIGKILLs workers at random moments, on the
processes engine, on a real Dask cluster, and through the service with two workers. The output
is exact (nothing lost, nothing doubled) and no process or /dev/shm file is left behind.

Each case makes at most ``MAX_KILLS`` kills, and its steps have ``retries=`` above that. The seed
is printed; ``MADHATTER_CHAOS_SEED=N`` replays it (see ``chaos_helpers``). Deselect with
``-m "not chaos"``.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
from chaos_helpers import (
    CHAOS,
    CHUNKS,
    EXPECTED,
    MAX_KILLS,
    SERVICE_PIPELINE,
    Killer,
    alive,
    case_rng,
    children,
    plan_kills,
)

from madhatter.events import ChunkDone
from madhatter.testing import RecordingListener
from process_helpers import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(150)]

WaitUntil = Callable[..., bool]


def _report(case: str, seed: int, killer: Killer, started: float) -> str:
    text = (
        f"{case}: seed {seed}, {len(killer.log)} kills in {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{kind} {pid} at {at}s" for at, kind, pid in killer.log)
    )
    print(text)
    return text


def _each_chunk_once(events: RecordingListener, step: str) -> bool:
    counts = Counter(e.chunk for e in events.of_type(ChunkDone) if e.step == step)  # type: ignore[attr-defined]
    return sorted(counts) == list(range(CHUNKS)) and set(counts.values()) == {1}


def test_processes_run_under_a_seeded_killer_is_exact(
    seed: int, child_pids: Callable[[], list[int]], wait_until: WaitUntil
) -> None:
    rng = case_rng(seed, "processes")
    plan = plan_kills(rng, special=None, first=1.0, gap=(0.1, 0.5))
    me = os.getpid()
    events = RecordingListener()
    started = time.monotonic()
    killer = Killer(plan, lambda kind: children(me))
    killer.start()
    try:
        result = CHAOS.run(engine="processes", workers=2, listeners=[events])
    finally:
        killer.stop()
    report = _report("processes", seed, killer, started)
    assert killer.error is None, report
    assert result == EXPECTED, report
    assert _each_chunk_once(events, "scramble"), report
    assert 1 <= len(killer.log) <= MAX_KILLS, report
    assert wait_until(lambda: not child_pids(), timeout=10), (child_pids(), report)


def test_dask_run_under_a_seeded_killer_is_exact(
    seed: int, nanny_dask_cluster: Any, child_pids: Callable[[], list[int]], wait_until: WaitUntil
) -> None:
    """Workers die under their nannies (which restart them) and Dask reruns their tasks; once,
    the victim is the worker holding the most kept outputs of ``scramble`` (``fuse=False``: they
    stay on the workers until ``not_thirds`` reads them), which Dask must recompute."""
    from distributed import Client

    cluster = nanny_dask_cluster
    rng = case_rng(seed, "dask")
    plan = plan_kills(rng, special="holder", first=2.0, gap=(0.3, 1.2))
    held: list[int] = []

    with Client(cluster.address, set_as_default=False, timeout=30) as client:

        def candidates(kind: str) -> list[int]:
            if kind == "worker":
                return cluster.worker_pids()
            kept = {
                address: sum(1 for key in keys if "/scramble/" in str(key) and "summary" not in str(key))
                for address, keys in client.has_what().items()
            }
            holders = sorted((count, address) for address, count in kept.items() if count)
            if not holders:
                return []
            count, address = holders[-1]
            pid = cluster.worker_pid(address)
            if pid is None:
                return []
            held.append(count)
            return [pid]

        events = RecordingListener()
        started = time.monotonic()
        killer = Killer(plan, candidates)
        killer.start()
        try:
            result = CHAOS.run(engine="dask", address=cluster.address, fuse=False, listeners=[events])
        finally:
            killer.stop()
    report = _report("dask", seed, killer, started) + f"; the holder held {held[-1:]} kept outputs"
    assert killer.error is None, report
    assert result == EXPECTED, report
    assert _each_chunk_once(events, "scramble"), report
    assert _each_chunk_once(events, "not_thirds"), report
    assert 1 <= len(killer.log) <= MAX_KILLS, report
    assert "holder" in killer.kinds(), report
    assert all(process.poll() is None for process in cluster.processes), cluster.logs()  # nannies live
    assert wait_until(
        lambda: not child_pids() or set(child_pids()) <= set(cluster.sessions()), timeout=10
    )


def test_service_run_under_a_seeded_killer_finishes_exactly_once(
    seed: int, tmp_path: pathlib.Path, session_pids: Callable[[int], list[int]], wait_until: WaitUntil
) -> None:
    """Two ``madhatter worker``s on one SQLite store; the killer SIGKILLs the engine's worker
    processes under the service worker running the run, and once that service worker itself
    (alone: its engine workers must notice and exit). The other one re-leases the run when the
    lease runs out and finishes it, exactly once, with the exact result."""
    from madhatter.service import open_store
    from madhatter.service._records import SUCCEEDED

    pytest.importorskip("fastapi", reason="the service needs the web extra")
    pipeline = tmp_path / "chaos_service.py"
    pipeline.write_text(SERVICE_PIPELINE)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(logs)
    options = (str(pipeline), "--engine", "processes", "--workers", "2", "--lease", "3")
    rng = case_rng(seed, "service")
    plan = plan_kills(rng, special="service", first=2.0, gap=(0.2, 0.8))
    dead: list[int] = []

    def candidates(kind: str) -> list[int]:
        living = [p.pid for p in workers.processes if alive(p.pid)]
        if kind == "worker":
            return [child for pid in living for child in children(pid)]
        return [pid for pid in living if children(pid)]  # the one running the run

    def on_kill(kind: str, pid: int) -> None:
        if kind == "service":
            dead.append(pid)

    try:
        for _ in range(2):
            workers.start(url, *options)
        with open_store(url) as store:
            run = store.submit("chaos_service", {})
            started = time.monotonic()
            killer = Killer(plan, candidates, patience=30, killed=on_kill)
            killer.start()
            try:
                finished = wait_until(
                    lambda: (r := store.get(run.id)) is not None and r.terminal, timeout=110
                )
            finally:
                killer.stop()
            report = _report("service", seed, killer, started)
            assert killer.error is None, report
            assert finished, report + "\n" + workers.logs()
            record = store.get(run.id)
            assert record is not None
            assert record.status == SUCCEEDED, (record, report, workers.logs())
            assert "service" in killer.kinds(), report
            assert (record.attempt, record.lost) == (2, 1), (record, report)
            assert not record.worker.endswith(f":{dead[0]}"), (record.worker, report)
            kind, body = store.result(run.id) or ("", b"")
            assert kind == "json", report
            assert json.loads(body) == EXPECTED, report
            finishes = [e for _, e in store.events(run.id) if e["type"] == "RunFinished"]
            assert [(e["status"], e["attempt"]) for e in finishes] == [("succeeded", 2)], report
        # The killed service worker's engine processes noticed and went.
        next(p for p in workers.processes if p.pid == dead[0]).wait(timeout=10)  # reap the zombie
        assert wait_until(lambda: not session_pids(dead[0]), timeout=15), (session_pids(dead[0]), report)
    finally:
        workers.stop_all()
    for process in workers.processes:
        assert process.returncode in (0, -signal.SIGKILL), workers.logs()
        assert wait_until(lambda pid=process.pid: not session_pids(pid), timeout=15), session_pids(
            process.pid
        )
