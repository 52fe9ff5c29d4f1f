"""Poison items on real clusters: a 1,000-item chunk with one item that segfaults its worker is
bisected on the cluster until that item is found -- skipped alone under ``on_error="skip"``,
named in the ``WorkerLost`` under ``"raise"`` -- on a Ray head node (whose raylet starts new
workers itself) and on Dask (a scheduler and workers under nannies, which restart a worker that
dies).

Dask's scheduler charges a worker's death to every task assigned to it, the one running and those
waiting behind it (``EngineTraits.pins_lost_tasks=False``), so the runner bisects one task at a
time there and names an item only after it killed a worker while running alone: otherwise good
parts waiting behind the poison would be taken for poison too."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import cloudpickle
import pytest

from madhatter import Pipeline, WorkerLost, depends, parallel, preprocess
from madhatter.events import ChunkSplit, ItemSkipped
from madhatter.testing import RecordingListener

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ITEMS = 1000
POISON = 271


@preprocess
def thousand() -> list[int]:
    return list(range(ITEMS))


@depends(thousand)
@parallel.map(chunk_by=ITEMS, on_error="skip")
def segfaults_skip(x: int) -> int:
    if x == POISON:
        ctypes.string_at(0)
    return x + 1


@depends(thousand)
@parallel.map(chunk_by=ITEMS)
def segfaults_raise(x: int) -> int:
    if x == POISON:
        ctypes.string_at(0)
    return x + 1


def _check_skipped(step: Any, **engine: Any) -> None:
    listener = RecordingListener()
    report = Pipeline([step]).execute(inline=False, listeners=[listener], **engine)
    assert report.result == [x + 1 for x in range(ITEMS) if x != POISON]
    assert [(s.step, s.chunk, s.item) for s in report.skipped] == [(step.__name__, 0, POISON)]
    assert report.skipped[0].error.startswith("WorkerLost: ")
    assert [e.item for e in listener.of_type(ItemSkipped)] == [repr(POISON)]
    assert 1 <= len(listener.of_type(ChunkSplit)) <= 11


def _check_named(step: Any, **engine: Any) -> None:
    with pytest.raises(WorkerLost) as caught:
        Pipeline([step]).execute(inline=False, **engine)
    assert (caught.value.step, caught.value.chunk, caught.value.item) == (step.__name__, 0, POISON)
    assert caught.value.item_preview == repr(POISON)


@pytest.mark.timeout(150)
def test_ray_skips_only_the_segfaulting_item(ray_cluster: Any) -> None:
    _check_skipped(segfaults_skip, engine="ray", address=ray_cluster.address, log_to_driver=False)


@pytest.mark.timeout(150)
def test_ray_names_the_segfaulting_item(ray_cluster: Any) -> None:
    _check_named(segfaults_raise, engine="ray", address=ray_cluster.address, log_to_driver=False)


@pytest.mark.timeout(60)
def test_dask_skips_only_the_segfaulting_item(nanny_dask_cluster: Any) -> None:
    _check_skipped(segfaults_skip, engine="dask", address=nanny_dask_cluster.address)


@pytest.mark.timeout(60)
def test_dask_names_the_segfaulting_item(nanny_dask_cluster: Any) -> None:
    _check_named(segfaults_raise, engine="dask", address=nanny_dask_cluster.address)
