"""Captured step output from cluster workers and containers: what a step prints on a Dask worker,
a Ray worker or in a container reaches the driver as ``ChunkOutput`` under its step and chunk."""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import pytest

from madhatter import Pipeline, depends, parallel, preprocess
from madhatter.events import ChunkOutput
from madhatter.testing import RecordingListener

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import us


@preprocess
def letters() -> list[str]:
    return list("abcdefgh")


@depends(letters)
@parallel.map(chunk_by=2)
def announce(letter: str) -> str:
    print(f"working on {letter}")
    return letter.upper()


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_cluster_workers_send_back_what_steps_print(engine: str, request: pytest.FixtureRequest) -> None:
    cluster: Any = request.getfixturevalue(f"{engine}_cluster")
    listener = RecordingListener()
    report = Pipeline([letters, announce]).execute(
        engine=engine,
        address=cluster.address,
        inline=False,
        capture_output=True,
        listeners=[listener],
    )
    assert report.result == list("ABCDEFGH")
    seen: dict[tuple[str, int], str] = {}
    for event in listener.of_type(ChunkOutput):
        seen[(event.step, event.chunk)] = seen.get((event.step, event.chunk), "") + event.text
    pairs = ["ab", "cd", "ef", "gh"]
    expected = {("announce", i): f"working on {a}\nworking on {b}\n" for i, (a, b) in enumerate(pairs)}
    assert seen == expected
