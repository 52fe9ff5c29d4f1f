"""Poison items in containers: a 1,000-item chunk where one item needs more memory than the
container's ``memory=`` limit. The OOM kill first halves the step's concurrency, then the chunk is
bisected in containers until that item is found: skipped alone, or named in the error."""

from __future__ import annotations

from typing import Any

import pytest

from madhatter import Pipeline, WorkerLost, depends, parallel, postprocess, preprocess
from madhatter.events import ChunkSplit, ConcurrencyReduced, ItemSkipped
from madhatter.testing import RecordingListener

IMAGE = "madhatter-test/python:3.11"
ITEMS = 1000
POISON = 388


@preprocess
def thousand() -> list[int]:
    return list(range(ITEMS))


def _hog(x: int) -> int:
    if x == POISON:
        return len(bytearray(300 * 1024 * 1024))  # well past the 64 MB limit
    return x + 1


@depends(thousand)
@parallel.map(chunk_by=ITEMS, image=IMAGE, memory="64m", on_error="skip")
def hog_skip(x: int) -> int:
    return _hog(x)


@depends(thousand)
@parallel.map(chunk_by=ITEMS, image=IMAGE, memory="64m")
def hog_raise(x: int) -> int:
    return _hog(x)


def _run(step: Any, listener: RecordingListener) -> Any:
    output = depends(step)(postprocess(name="output")(lambda values: values))
    pipeline = Pipeline([thousand, step, output])
    return pipeline.execute(engine="docker", image=IMAGE, workers=2, listeners=[listener])


@pytest.mark.timeout(180)
def test_an_item_past_the_memory_limit_alone_is_skipped(image: str, madhatter_containers: Any) -> None:
    listener = RecordingListener()
    report = _run(hog_skip, listener)
    assert report.result == [x + 1 for x in range(ITEMS) if x != POISON]
    assert [(s.step, s.item) for s in report.skipped] == [("hog_skip", POISON)]
    assert "OOMKilled" in report.skipped[0].error
    assert [e.item for e in listener.of_type(ItemSkipped)] == [repr(POISON)]
    reduced = listener.of_type(ConcurrencyReduced)
    assert [(e.was, e.concurrency) for e in reduced] == [(2, 1)]
    assert 1 <= len(listener.of_type(ChunkSplit)) <= 11


@pytest.mark.timeout(180)
def test_an_item_past_the_memory_limit_is_named(image: str, madhatter_containers: Any) -> None:
    with pytest.raises(WorkerLost) as caught:
        _run(hog_raise, RecordingListener())
    assert (caught.value.step, caught.value.item) == ("hog_raise", POISON)
    assert "OOMKilled" in str(caught.value)
    assert f"on item {POISON}: {POISON}" in str(caught.value)
