"""A chunk's output reaches the run while the chunk still runs, on the engines that give a task a
channel to the driver: threads, processes, a real Dask cluster, docker.

Each chunk prints, then waits until a file appears that only the run's listener creates, on
seeing that line as a ``ChunkOutput`` event: the chunk can finish in time only if its line came
before its end."""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import cloudpickle
import pytest

from madhatter import depends, parallel, preprocess, run
from madhatter.events import ChunkDone, ChunkOutput, Event
from madhatter.testing import RecordingListener

# Dask workers and containers cannot import this module: its steps travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@preprocess
def three() -> list[int]:
    return [0, 1, 2]


@depends(three)
@parallel.map(chunk_by=1, timeout=60)  # a timeout: the chunks run on the engine, never inline
def waits_to_be_seen(x: int, marks: str = "") -> bool:
    print(f"waiting {x}")
    marker = pathlib.Path(marks, f"seen-{x}")
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"seen {x}")
    return marker.exists()


def mark_what_was_seen(marks: pathlib.Path) -> Any:
    """A listener that creates ``seen-<x>`` when it sees a chunk's line ``waiting <x>``."""

    def listener(event: Event) -> None:
        if isinstance(event, ChunkOutput) and event.text.startswith("waiting "):
            (marks / f"seen-{event.text.split()[1]}").touch()

    return listener


def assert_seen_live(result: list[bool], recorder: RecordingListener) -> None:
    assert result == [True, True, True]  # each chunk saw its own line arrive in the driver
    order: list[Any] = [e for e in recorder.events if isinstance(e, (ChunkOutput, ChunkDone))]
    for chunk in range(3):
        texts = [e.text for e in order if isinstance(e, ChunkOutput) and e.chunk == chunk]
        assert "".join(texts) == f"waiting {chunk}\nseen {chunk}\n"  # nothing lost or doubled
        first = next(k for k, e in enumerate(order) if isinstance(e, ChunkOutput) and e.chunk == chunk)
        done = next(k for k, e in enumerate(order) if isinstance(e, ChunkDone) and e.chunk == chunk)
        assert first < done


def run_seen(tmp_path: pathlib.Path, engine: str, **options: Any) -> None:
    recorder = RecordingListener()
    result = run(
        waits_to_be_seen,
        engine=engine,
        capture_output=True,
        params={"marks": str(tmp_path)},
        listeners=[mark_what_was_seen(tmp_path), recorder],
        **options,
    )
    assert_seen_live(result, recorder)


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_a_running_chunks_output_reaches_the_run_before_it_ends(
    engine: str, tmp_path: pathlib.Path
) -> None:
    run_seen(tmp_path, engine, workers=3)


@pytest.mark.slow
def test_on_dask_workers(tmp_path: pathlib.Path, dask_cluster: Any) -> None:
    run_seen(tmp_path, "dask", address=dask_cluster.address)


@pytest.mark.slow
@pytest.mark.usefixtures("madhatter_containers")
def test_in_containers(tmp_path: pathlib.Path, image: str) -> None:
    run_seen(tmp_path, "docker", image=image, workers=3, mounts=[str(tmp_path)])
