"""Load: 200 runs submitted at once to 2 real worker processes all complete, none twice, none lost,
on the SQLite and on the Redis back end."""

from __future__ import annotations

import collections
import pathlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_helpers import Workers, write_pipeline

from madhatter.service import Store, open_store
from madhatter.service._records import SUCCEEDED

pytestmark = pytest.mark.slow

RUNS = 200

TRIVIAL = """
from madhatter import depends, postprocess, preprocess

@preprocess
def numbers(n: int = 4):
    return list(range(n))

@depends(numbers)
@postprocess
def total(values):
    return sum(values)
"""


def test_200_runs_on_2_workers_each_complete_exactly_once(
    tmp_path: pathlib.Path,
    store: Store,
    store_url: str,
    workers: Workers,
    wait_until: Callable[..., bool],
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    for _ in range(2):
        workers.start(store_url, str(pipeline), "--engine", "serial")

    def submit(n: int) -> tuple[str, int]:
        with open_store(store_url) as mine:
            return mine.submit("trivial", {"n": n}).id, n

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # all at once, from several connections
        expected = dict(pool.map(submit, range(RUNS)))
    assert len(expected) == RUNS

    def all_done() -> bool:
        return store.list_runs(status=SUCCEEDED, limit=1)[1] == RUNS

    assert wait_until(all_done, timeout=150, every=0.2), workers.logs()
    seconds = time.monotonic() - started

    runs, total = store.list_runs(limit=RUNS + 1)
    assert total == RUNS
    by_worker = collections.Counter(run.worker for run in runs)
    for run in runs:
        assert (run.status, run.attempt, run.lost) == (SUCCEEDED, 1, 0), run
        n = expected[run.id]
        assert store.result(run.id) == ("json", str(n * (n - 1) // 2).encode())
        finished = [e for _, e in store.events(run.id) if e["type"] == "RunFinished"]
        assert len(finished) == 1  # executed once
    print(
        f"\n{RUNS} runs on 2 workers ({store_url.partition(':')[0]}): {seconds:.1f}s, {dict(by_worker)}"
    )
