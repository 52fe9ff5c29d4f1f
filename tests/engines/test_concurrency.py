"""What the engines promise about concurrency and about which chunk a dead worker held.

Steps record when each item ran (CLOCK_MONOTONIC is one clock for all processes on Linux), so the
tests observe the overlap instead of assuming it.
"""

from __future__ import annotations

import os
import pathlib
import time

import pytest

import madhatter
from madhatter import depends, parallel, preprocess
from madhatter.events import ChunkRetried
from madhatter.testing import RecordingListener

RECORDS = "MADHATTER_TEST_RECORDS"


@preprocess
def eight() -> list[int]:
    return list(range(8))


def _record(x: int) -> int:
    started = time.monotonic()
    time.sleep(0.1)
    folder = pathlib.Path(os.environ[RECORDS])
    (folder / f"{x}").write_text(f"{started} {time.monotonic()}")
    return x


@depends(eight)
@parallel.map(n=1, chunk_by=1)
def one_at_a_time(x: int) -> int:
    return _record(x)


@depends(eight)
@parallel.map(n=2, chunk_by=1)
def two_at_a_time(x: int) -> int:
    return _record(x)


def _most_at_once(folder: pathlib.Path) -> int:
    spans = [tuple(map(float, path.read_text().split())) for path in folder.iterdir()]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("engine", ["threads", "processes"])
@pytest.mark.parametrize(("step", "cap"), [(one_at_a_time, 1), (two_at_a_time, 2)])
def test_n_caps_how_many_chunks_run_at_once(
    engine: str, step: object, cap: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RECORDS, str(tmp_path))
    result = madhatter.run(step, engine=engine, workers=4, inline=False)  # type: ignore[arg-type]
    assert result == list(range(8))
    assert len(list(tmp_path.iterdir())) == 8
    assert _most_at_once(tmp_path) == cap


@depends(eight)
@parallel.map(chunk_by=1, retries=1)
def dies_on_three(x: int) -> int:
    marker = pathlib.Path(os.environ[RECORDS]) / "died"
    if x == 3 and not marker.exists():
        marker.touch()
        os._exit(9)
    time.sleep(0.02)  # long enough that other chunks wait in the workers' pipes
    return x * 10


def test_only_the_running_chunk_of_a_dead_worker_is_retried(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker holds its running chunk and the next one; when it dies, the next one is handed
    to another worker as it is, not failed and not counted as a retry."""
    monkeypatch.setenv(RECORDS, str(tmp_path))
    events = RecordingListener()
    result = madhatter.run(
        dies_on_three, engine="processes", workers=2, inline=False, listeners=[events]
    )
    assert result == [x * 10 for x in range(8)]
    retried = events.of_type(ChunkRetried)
    assert [(e.chunk, e.attempt) for e in retried] == [(3, 1)]  # type: ignore[attr-defined]
    assert "died" in retried[0].error  # type: ignore[attr-defined]
