"""Poison items on the processes engine: a chunk whose worker dies or times out is bisected on the
engine until the items that do it are found; only those are skipped (``on_error="skip"``) or
named in the error (``"raise"``).

The pipelines run with ``inline=False``: a chunk run in the driver would take pytest with it.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, preprocess
from madhatter._events import ChunkSplit, ItemSkipped
from madhatter.testing import RecordingListener

POISON = 613
ITEMS = 1000
HANG_CHUNK = 40


@preprocess
def thousand() -> list[int]:
    return list(range(ITEMS))


@depends(thousand)
@parallel.map(chunk_by=ITEMS, on_error="skip")
def segfaults_skip(x: int) -> int:
    if x == POISON:
        ctypes.string_at(0)  # a segfault, as a C extension on a malformed file does
    return x + 1


@depends(thousand)
@parallel.map(chunk_by=ITEMS)
def segfaults_raise(x: int) -> int:
    if x == POISON:
        ctypes.string_at(0)
    return x + 1


@depends(thousand)
@parallel(chunk_by=ITEMS, on_error="skip")
def exits_in_chunk_step(xs: list[int]) -> list[int]:
    if POISON in xs or 7 in xs:
        os._exit(3)
    return [x + 1 for x in xs]


@depends(thousand)
@parallel.map(chunk_by=HANG_CHUNK, timeout=1.0)
def hangs(x: int) -> int:
    if x == POISON:
        time.sleep(60)
    return x + 1


def _run(step: Callable[..., Any], listener: RecordingListener) -> madhatter.RunReport:
    pipeline = Pipeline([step])
    return pipeline.execute(engine="processes", workers=2, inline=False, listeners=[listener])


@pytest.mark.timeout(120)
def test_a_segfaulting_item_alone_is_skipped_and_reported() -> None:
    listener = RecordingListener()
    report = _run(segfaults_skip, listener)
    assert report.result == [x + 1 for x in range(ITEMS) if x != POISON]
    assert [(s.step, s.chunk, s.item) for s in report.skipped] == [("segfaults_skip", 0, POISON)]
    assert "SIGSEGV" in report.skipped[0].error
    assert [e.item for e in listener.of_type(ItemSkipped)] == [repr(POISON)]
    splits = listener.of_type(ChunkSplit)
    assert (splits[0].start, splits[0].stop) == (0, ITEMS)
    assert len(splits) <= 11  # one split per halving: log2(1000) of them, not one per item


@pytest.mark.timeout(120)
def test_a_segfaulting_item_is_named_in_the_error() -> None:
    with pytest.raises(madhatter.WorkerLost) as caught:
        _run(segfaults_raise, RecordingListener())
    error = caught.value
    assert (error.step, error.chunk, error.item, error.item_preview) == (
        "segfaults_raise",
        0,
        POISON,
        repr(POISON),
    )
    assert f"on item {POISON}: {POISON}" in str(error)


@pytest.mark.timeout(120)
def test_a_chunk_step_loses_only_the_items_that_kill_it() -> None:
    report = _run(exits_in_chunk_step, RecordingListener())
    assert report.result == [x + 1 for x in range(ITEMS) if x not in (7, POISON)]
    assert sorted(s.item for s in report.skipped) == [7, POISON]
    assert all("exited with code 3" in s.error for s in report.skipped)


@pytest.mark.timeout(120)
def test_an_item_that_hangs_past_the_timeout_is_named() -> None:
    with pytest.raises(madhatter.TaskTimeout) as caught:
        _run(hangs, RecordingListener())
    assert (caught.value.chunk, caught.value.item) == (POISON // HANG_CHUNK, POISON % HANG_CHUNK)
    assert caught.value.item_preview == repr(POISON)
