"""The chunk cache with steps in containers: a container cannot see the driver's folders, so the
driver files what the containers computed; a second run finds every item and starts no task."""

from __future__ import annotations

import pathlib
from typing import Any

from madhatter import Pipeline, depends, parallel, postprocess, preprocess
from madhatter.events import ChunkDone
from madhatter.testing import RecordingListener

IMAGE = "madhatter-test/python:3.11"


@preprocess
def words() -> list[str]:
    return [f"word-{i}" for i in range(60)]


@depends(words)
@parallel.map(chunk_by=8, image=IMAGE)
def shout(word: str) -> str:
    return word.upper()


@depends(shout)
@postprocess
def output(values: list[str]) -> list[str]:
    return values


def test_container_results_are_filed_by_the_driver_and_found_again(
    image: str, madhatter_containers: Any, tmp_path: pathlib.Path
) -> None:
    pipeline = Pipeline([words, shout, output])
    expected = [f"WORD-{i}" for i in range(60)]
    first, second = RecordingListener(), RecordingListener()
    cache = tmp_path / "cache"
    report = pipeline.execute(engine="docker", cache=str(cache), inline=False, listeners=[first])
    assert report.result == expected
    assert report.steps["shout"].cached == 0
    assert {e.worker for e in first.of_type(ChunkDone)} != {"cache"}  # ran in containers
    assert list(cache.rglob("*.mhc"))  # filed, though no container can reach the folder
    again = pipeline.execute(engine="docker", cache=str(cache), inline=False, listeners=[second])
    assert again.result == expected
    assert again.steps["shout"].cached == 60
    assert {e.worker for e in second.of_type(ChunkDone)} == {"cache"}
