"""What the driver learns from the cache before it launches a chunk (``driver/_stage_cache``):
per-item stages find each item at the deepest step known, whatever chunk it was filed with."""

from __future__ import annotations

import pathlib

from madhatter.cache import CacheStore
from madhatter.cache._keys import content_key, lineage
from madhatter.driver._chain import ChainCache, ChainOp, ChainTask
from madhatter.driver._stage_cache import StageCache


def double(x: int) -> int:
    return x * 2


def odd_tens(x: int) -> bool:
    return (x // 10) % 2 == 1


OPS = (ChainOp("double", "map", double), ChainOp("odd_tens", "filter", odd_tens))
FINGERPRINTS = ("a" * 32, "b" * 32)


def _fill(store: CacheStore, items: list[int]) -> None:
    """File ``items`` as a chain task run with the cache would (the worker's side)."""
    task = ChainTask("run", OPS, cache=ChainCache(FINGERPRINTS, store))
    task((0, items, 0, None, False))


def test_a_mixed_chunk_finds_known_items_runs_the_rest_and_merges_in_order(
    tmp_path: pathlib.Path,
) -> None:
    store = CacheStore.open(tmp_path)
    _fill(store, [0, 5, 6, 7])
    cache = StageCache(store, OPS, FINGERPRINTS)
    items = [5, 1, 6, 2, 7, 0]
    chunk = cache.look_up(items)
    assert chunk.positions == [1, 3]  # 1 and 2 are new
    assert chunk.items == [1, 2]
    assert chunk.start == 0
    assert chunk.nested
    assert sorted(chunk.found) == [0, 2, 4, 5]
    # the rest runs (per item, nested), and the outputs come back in input order
    task = ChainTask("run", OPS, cache=ChainCache(FINGERPRINTS, store))
    ran = task((0, chunk.items, chunk.start, chunk.keys, chunk.nested))
    assert ran.outputs == [[], []]  # 2 and 4 are filtered out
    assert chunk.merge(ran.outputs) == [x * 2 for x in items if odd_tens(x * 2)]
    assert chunk.counts[0] == (4, 4)  # the cache stood in for double on 4 items
    assert chunk.counts[1] == (4, sum(odd_tens(x * 2) for x in (5, 6, 7, 0)))


def test_an_item_known_through_the_first_step_only_runs_from_the_second(tmp_path: pathlib.Path) -> None:
    store = CacheStore.open(tmp_path)
    key = content_key(8)
    first_lineage = lineage(FINGERPRINTS)[0]
    assert first_lineage is not None
    store.write("double", first_lineage, [(key, [16])])  # filed under the step's lineage
    chunk = StageCache(store, OPS, FINGERPRINTS).look_up([8])
    assert (chunk.start, chunk.items, chunk.keys) == (1, [16], [key])


def test_a_stage_with_nothing_filed_leaves_the_hashing_to_the_workers(tmp_path: pathlib.Path) -> None:
    cache = StageCache(CacheStore.open(tmp_path), OPS, FINGERPRINTS)
    assert cache.empty
    chunk = cache.look_up([1, 2, 3])
    assert chunk.keys is None
    assert chunk.items == [1, 2, 3]
    assert not chunk.nested
