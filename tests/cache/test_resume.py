"""A run killed with SIGKILL at about 60 % resumes from the cache: the same command again gives
the uncached output and recomputes at most what was running when the run died."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

from cache_helpers import PIPELINE, Runs, expected, write_pipeline

from process_helpers import MADHATTER, in_session

ITEMS = 2000  # one item per chunk: a 2,000-chunk run
WORKERS = 2
SLOW = PIPELINE.replace('note("a", x)', 'note("a", x)\n    import time; time.sleep(0.004)')


def test_a_run_killed_at_60_percent_resumes_where_it_stopped(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=1, text=SLOW)
    runs.log.write_text("")
    command = [
        str(MADHATTER), "run", str(pipeline), "--cache", str(runs.cache), "--quiet",
        "--engine", "processes", "--workers", str(WORKERS),
    ]  # fmt: skip
    env = {**os.environ, "MH_LOG": str(runs.log), "MH_ITEMS": str(ITEMS)}
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while runs.log.read_text().count("\nc ") < 0.6 * ITEMS:
            assert first.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach 60 % in time"
            time.sleep(0.01)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole run: supervisor, driver and workers
        first.wait()
    deadline = time.monotonic() + 10
    while in_session(first.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not in_session(first.pid)
    before = runs.log.read_text().splitlines()
    assert 0.6 * ITEMS <= sum(line.startswith("c ") for line in before) < ITEMS

    resumed = runs.run(pipeline, "--engine", "processes", "--workers", str(WORKERS), items=ITEMS)
    assert resumed.result == expected(ITEMS)
    after = runs.log.read_text().splitlines()
    for step in "abc":
        done_before = {line for line in before if line.startswith(f"{step} ")}
        done_after = {line for line in after if line.startswith(f"{step} ")}
        assert done_before | done_after >= {f"{step} {x}" for x in _inputs(step)}
        twice = done_before & done_after
        assert len(twice) <= WORKERS, (
            f"step {step}: {len(twice)} items computed twice: {sorted(twice)[:5]}"
        )
    assert resumed.cached["c"] >= 0.6 * ITEMS - WORKERS


def _inputs(step: str) -> list[int]:
    """What ``step`` receives for each of the run's items."""
    return {
        "a": list(range(ITEMS)),
        "b": [x * 2 for x in range(ITEMS)],
        "c": [x * 2 + 1 for x in range(ITEMS)],
    }[step]
