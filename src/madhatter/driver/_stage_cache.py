"""The chunk cache as one stage sees it: before a chunk is launched, what is already known.

A stage whose steps all map or filter item by item is cached per item: for each item of a chunk
the driver finds the deepest step whose output for it is in the cache (lineage keys make that a
lookup per step, no value needed: ``madhatter.cache._keys``). Items known to the end are done;
the others run from the earliest step any of them needs, and their outputs, which come back per
item, are put together with the known ones in input order (:meth:`CachedChunk.merge`). So a
rerun with other chunk sizes, workers or engine still finds every item, and a run killed half
way recomputes only what was in flight.

A stage with a whole-chunk step (``@parallel``) is cached per chunk: its outputs cannot be told
apart per item, so a chunk is either found to the end or runs whole. Such hits need the chunk
boundaries of the run that filed them, so that run records where each chunk began and how long it
was, and an :class:`AligningReader` cuts a rerun's chunks the same way, whatever the chunk size
the run would have chosen: a chunk that begins at a recorded start takes its recorded length, and
a chunk ends before an item that began one.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..cache import CacheStore
from ..cache._fingerprint import Fingerprint, fingerprint_step
from ..cache._keys import chunk_key, chunk_start_key, content_key, derive, output_key
from ..graph import Graph, Step
from ._chain import ChainCache, ChainOp
from ._channel import Chunk
from ._readers import Reader


def step_fingerprint(step: Step, params: Mapping[str, Any]) -> Fingerprint:
    """What a step's outputs depend on besides its input: its code and what it uses, the run
    parameters it reads (as it sees them: given, or its defaults), its kind, its ``setup``'s
    code, and the user's ``cache_key=``."""
    signature = inspect.signature(step.func).parameters
    params = {name: params.get(name, signature[name].default) for name in step.param_names}
    extra: dict[str, Any] = {"kind": step.kind}
    if step.setup is not None:
        extra["setup"] = fingerprint_step(step.setup).digest
    if step.cache_key is not None:
        key = step.cache_key
        extra["cache_key"] = key() if callable(key) else key
    return fingerprint_step(step.func, params=params, extra=extra)


@dataclasses.dataclass
class CachedChunk:
    """What the cache knows of one chunk, and what is left to run.

    ``start``: the step the chain starts from for the items left (``items``, keyed ``keys`` as
    that step's input, at ``positions`` of the chunk). ``found``: the known outputs by position.
    ``counts``: per step, the items in and out that the cache stood in for."""

    start: int
    items: list[Any]
    keys: list[str]
    positions: list[int]
    found: dict[int, list[Any]]
    counts: list[tuple[int, int]]
    per_item: bool

    @property
    def complete(self) -> bool:
        return not self.items

    def merge(self, ran: list[Any]) -> list[Any]:
        """The chunk's outputs in input order: ``ran`` holds the run items' outputs (one list per
        item, in the order of ``positions``; flat when not ``per_item``)."""
        if not self.per_item:
            return ran if self.items else self.found.get(0, [])
        by_position = dict(self.found)
        by_position.update(zip(self.positions, ran, strict=True))
        return [output for position in sorted(by_position) for output in by_position[position]]


class StageCache:
    """Looks up a stage's chunks in the cache; the indexes are read once, when the stage starts."""

    def __init__(
        self, store: CacheStore, ops: Sequence[ChainOp], fingerprints: Sequence[str | None]
    ) -> None:
        self.store = store
        self.fingerprints = tuple(fingerprints)
        self.kinds = tuple(op.kind for op in ops)
        self.per_item = "chunks" not in self.kinds
        self._indexes = [
            store.index(op.step, fingerprint) if fingerprint is not None else None
            for op, fingerprint in zip(ops, fingerprints, strict=True)
        ]
        first = ChainCache.first_chunk_step(tuple(ops))
        self._starts = self._indexes[first] if first is not None else None

    def recorded_length(self, key: str) -> int | None:
        """How many items the chunk that began with the item keyed ``key`` held, if recorded."""
        index = self._starts
        found = index.get(chunk_start_key(key)) if index is not None else None
        return found[0] if found else None

    def look_up(self, items: list[Any], keys: list[str] | None = None) -> CachedChunk:
        """What is known of the chunk ``items`` (their ``keys``, when already computed)."""
        keys = keys if keys is not None else [content_key(item) for item in items]
        if self.per_item:
            return self._per_item(items, keys)
        return self._whole_chunk(items, keys)

    def _per_item(self, items: list[Any], keys: list[str]) -> CachedChunk:
        depth = len(self.kinds)
        cached = sum(f is not None for f in self.fingerprints)  # the cached steps come first
        counts = [[0, 0] for _ in range(depth)]
        found: dict[int, list[Any]] = {}
        levels: list[list[str]] = []  # per item: its key as the input of step 0, 1, ...
        reached: list[int] = []  # per item left: how many steps the cache knows it through
        left: list[int] = []
        for position, key in enumerate(keys):
            chain = [key]
            for fingerprint in self.fingerprints[:cached]:
                chain.append(derive(fingerprint, chain[-1]))  # type: ignore[arg-type]
            level, outputs = self._deepest(chain, cached)
            for step in range(level - 1):
                counts[step][0] += 1
                counts[step][1] += 1
            if level and (level == depth or not outputs):  # known to the end, or filtered out
                counts[level - 1][0] += 1
                counts[level - 1][1] += len(outputs)
                found[position] = outputs
                continue
            if level:  # known through step level-1, whose output this item passed on
                counts[level - 1][0] += 1
                counts[level - 1][1] += 1
            levels.append(chain)
            reached.append(level)
            left.append(position)
        if not left:
            return CachedChunk(depth, [], [], [], found, [tuple(c) for c in counts], True)  # type: ignore[misc]
        start = min(reached)
        values = self._values_at(start, [levels[i] for i in range(len(left))], items, left)
        while values is None:  # an entry went missing (cleared, corrupt): start earlier
            start -= 1
            values = self._values_at(start, levels, items, left)
        for level in reached:  # steps the run will redo were counted as found: take them back
            for step in range(start, level):
                counts[step][0] -= 1
                counts[step][1] -= 1
        keys_left = [chain[start] for chain in levels]
        final = [tuple(c) for c in counts]
        return CachedChunk(start, values, keys_left, left, found, final, True)  # type: ignore[arg-type]

    def _deepest(self, chain: list[str], cached: int) -> tuple[int, list[Any]]:
        """How many steps the cache knows an item through, and the last one's outputs."""
        for level in range(cached, 0, -1):
            index = self._indexes[level - 1]
            outputs = index.get(chain[level]) if index is not None else None
            if outputs is not None:
                return level, outputs
        return 0, []

    def _values_at(
        self, start: int, chains: list[list[str]], items: list[Any], positions: list[int]
    ) -> list[Any] | None:
        """The items' values as the input of step ``start``; ``None`` if one is not in the cache."""
        if start == 0:
            return [items[position] for position in positions]
        index = self._indexes[start - 1]
        values = []
        for chain in chains:
            outputs = index.get(chain[start]) if index is not None else None
            if not outputs:
                return None
            values.append(outputs[0])
        return values

    def _whole_chunk(self, items: list[Any], keys: list[str]) -> CachedChunk:
        """All or nothing: follow the chunk through every step; found only if found to the end."""
        counts: list[tuple[int, int]] = []
        units, outputs = keys, list(items)
        for kind, fingerprint, index in zip(self.kinds, self.fingerprints, self._indexes, strict=True):
            if fingerprint is None or index is None:
                break
            if kind == "chunks":
                key = chunk_key(fingerprint, units)
                found = index.get(key)
                if found is None:
                    break
                counts.append((len(units), len(found)))
                units, outputs = [output_key(key, i) for i in range(len(found))], found
                continue
            after_units: list[str] = []
            after: list[Any] = []
            for unit in units:
                unit_key = derive(fingerprint, unit)
                found = index.get(unit_key)
                if found is None:
                    break
                after_units.extend(unit_key for _ in found)
                after.extend(found)
            else:
                counts.append((len(units), len(after)))
                units, outputs = after_units, after
                continue
            break
        else:
            return CachedChunk(len(self.kinds), [], [], [], {0: outputs}, counts, False)
        no_counts = [(0, 0)] * len(self.kinds)
        return CachedChunk(0, list(items), keys, list(range(len(items))), {}, no_counts, False)


class AligningReader:
    """A stage's reader that cuts chunks where the cached run cut them (whole-chunk stages).

    Items read past a cut wait here for the next chunk. The keys computed to find the cuts are
    kept for the chunk's lookup (:meth:`keys_of`), so no item is hashed twice."""

    def __init__(self, reader: Reader, cache: StageCache) -> None:
        self._reader, self._cache = reader, cache
        self._held: list[Any] = []
        self._held_keys: list[str] = []
        self._last: tuple[list[Any], list[str]] | None = None

    def ready(self, count: int) -> bool:
        return len(self._held) >= count or self._reader.ready(count - len(self._held))

    def available(self) -> int:
        return len(self._held) + self._reader.available()

    def read(self, count: int) -> Chunk:
        items, keys = self._take(count)
        recorded = self._cache.recorded_length(keys[0]) if keys else None
        if recorded is not None and recorded > len(items) and self._reader.ready(recorded - len(items)):
            more, more_keys = self._take(recorded - len(items))
            items, keys = items + more, keys + more_keys
        cut = recorded if recorded is not None and recorded <= len(items) else len(items)
        for position in range(1, cut):
            if self._cache.recorded_length(keys[position]) is not None:
                cut = position  # a recorded chunk begins here: end this one before it
                break
        self._held, self._held_keys = items[cut:] + self._held, keys[cut:] + self._held_keys
        items, keys = items[:cut], keys[:cut]
        self._last = (items, keys)
        return items

    def keys_of(self, items: list[Any]) -> list[str] | None:
        """The keys of ``items`` if it is the chunk this reader last returned."""
        return self._last[1] if self._last is not None and self._last[0] is items else None

    def _take(self, count: int) -> tuple[list[Any], list[str]]:
        items, keys = self._held[:count], self._held_keys[:count]
        del self._held[:count], self._held_keys[:count]
        if len(items) < count:
            fresh = self._reader.read(count - len(items))
            if not isinstance(fresh, list):
                raise RuntimeError("madhatter internal error: a remote chunk in a cached stage")
            items, keys = items + fresh, keys + [content_key(item) for item in fresh]
        return items, keys

    @property
    def exhausted(self) -> bool:
        return self._reader.exhausted and not self._held

    @property
    def total(self) -> int | None:
        return self._reader.total


def explain(store: CacheStore, graph: Graph, name: str, params: Mapping[str, Any]) -> list[str]:
    """Why step ``name`` would miss the cache now: sentences for ``madhatter cache explain``.

    A step misses when its fingerprint changed (which helper, parameter or library: compared with
    the last one recorded), or, with its own unchanged, when an earlier step's did (its outputs'
    keys derive from theirs) or its input holds items not seen before.
    """
    step = graph[name]
    if not step.is_parallel:
        return [f"step {name!r} runs in the driver and is not cached (only parallel steps are)"]
    if not step.cache:
        return [f"step {name!r} has cache=False: it always runs"]
    current = step_fingerprint(step, params)
    records = store.fingerprints(name)
    if not records:
        return [f"nothing is cached for step {name!r} yet"]
    if current.digest != records[0].fingerprint and all(
        r.fingerprint != current.digest for r in records
    ):
        newest = records[0]
        changes = current.changes(Fingerprint(newest.fingerprint, newest.parts))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest.last_used))
        lines = [f"step {name!r} changed since its last cached run ({when}):"]
        return lines + [f"  {change}" for change in changes or ["its fingerprint differs"]]
    lines = [f"step {name!r}: its code, helpers, parameters and libraries are unchanged"]
    changed = [
        upstream
        for upstream in _upstream_parallel(graph, name)
        if graph[upstream].cache
        and all(
            r.fingerprint != step_fingerprint(graph[upstream], params).digest
            for r in store.fingerprints(upstream)
        )
    ]
    if changed:
        names = ", ".join(repr(n) for n in changed)
        lines.append(f"  but earlier steps changed ({names}): what they feed it is new")
        lines.append("  ('madhatter cache explain' one of them says what changed)")
    else:
        lines.append("  items it misses are new inputs (or were evicted with cache clear)")
    return lines


def _upstream_parallel(graph: Graph, name: str) -> list[str]:
    """The parallel steps upstream of ``name``, nearest first."""
    found: list[str] = []
    pending = list(graph[name].upstreams)
    while pending:
        upstream = pending.pop(0)
        if upstream in found:
            continue
        if graph[upstream].is_parallel:
            found.append(upstream)
        pending.extend(graph[upstream].upstreams)
    return found
